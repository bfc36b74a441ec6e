package wire

// LibvirtOpenMsg opens a VM connection for a libvirt-managed migration (LIBVIRT_OPEN, instead of OPEN): libvirt
// starts the destination QEMU (its Prepare) and owns the migration's lifecycle; the receiver starts nothing. It makes
// sure Socket's directory exists, answers READY, and once the stream's first frame arrives connects to Socket in
// its own mount namespace (libvirt's destination QEMU listens there), rebuilds the stream into it and relays the
// return path back as RETURN_PATH frames, an empty one when the destination closed its side. At the stream's end and
// the return path's, it answers LIBVIRT_DONE.
type LibvirtOpenMsg struct {
	Session SessionID `json:"session"`
	VM      string    `json:"vm"`     // the domain's name
	Slot    int       `json:"slot"`   // the VM's index in the sender's list, as in CONTENT records
	Socket  string    `json:"socket"` // /run/vmscatter/RUN/DOM.sock: the same path on both hosts
	// Argv is the source QEMU's command line as libvirt built it, and Disks the identities of the images it opens:
	// the receiver checks them against its own files before the stream flows (shared storage), as for OPEN.
	Argv  []string  `json:"argv"`
	Disks []DiskMsg `json:"disks,omitempty"`
}

// LibvirtDoneMsg is the receiver's account of a libvirt-managed stream (LIBVIRT_DONE): what it rebuilt, and the
// error that ended it, if any. libvirt, not vmscatter, says whether the migration completed.
type LibvirtDoneMsg struct {
	Pages      int    `json:"pages"`
	Referenced int    `json:"referenced"`
	Error      string `json:"error,omitempty"`
}
