package virt

import (
	"encoding/xml"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrParse says virsh printed something this package cannot read.
var ErrParse = errors.New("libvirt: cannot parse")

// maxXML bounds a domain XML this package parses.
const maxXML = 4 << 20

// Domain is what vmscatter reads of a domain's XML.
type Domain struct {
	Name     string
	UUID     string
	Type     string // "kvm" or "qemu" (TCG)
	MemoryKB int64  // <memory>, in KiB
	VCPUs    int
	Machine  string // <os><type machine=...>: the concrete machine type libvirt chose, e.g. pc-i440fx-7.2
	Emulator string
	Disks    []Disk
}

// Disk is one <disk> of a domain.
type Disk struct {
	Type      string // file, block, network, volume
	Device    string // disk, cdrom, floppy, lun
	Format    string // <driver type=...>: qcow2, raw
	Source    string // the file or device path, or the network name
	Target    string // <target dev=...>
	Shareable bool
	ReadOnly  bool
}

type xmlDomain struct {
	XMLName xml.Name `xml:"domain"`
	Type    string   `xml:"type,attr"`
	Name    string   `xml:"name"`
	UUID    string   `xml:"uuid"`
	Memory  struct {
		Unit  string `xml:"unit,attr"`
		Value string `xml:",chardata"`
	} `xml:"memory"`
	VCPU struct {
		Value string `xml:",chardata"`
	} `xml:"vcpu"`
	OS struct {
		Type struct {
			Machine string `xml:"machine,attr"`
		} `xml:"type"`
	} `xml:"os"`
	Devices struct {
		Emulator string `xml:"emulator"`
		Disks    []struct {
			Type   string `xml:"type,attr"`
			Device string `xml:"device,attr"`
			Driver struct {
				Type string `xml:"type,attr"`
			} `xml:"driver"`
			Source struct {
				File   string `xml:"file,attr"`
				Dev    string `xml:"dev,attr"`
				Name   string `xml:"name,attr"`
				Pool   string `xml:"pool,attr"`
				Volume string `xml:"volume,attr"`
			} `xml:"source"`
			Target struct {
				Dev string `xml:"dev,attr"`
			} `xml:"target"`
			Shareable *struct{} `xml:"shareable"`
			ReadOnly  *struct{} `xml:"readonly"`
		} `xml:"disk"`
	} `xml:"devices"`
}

var memUnits = map[string]int64{"": 1, "b": 0, "bytes": 0, "k": 1, "kib": 1, "kb": 1, "m": 1 << 10, "mib": 1 << 10,
	"mb": 1 << 10, "g": 1 << 20, "gib": 1 << 20, "gb": 1 << 20, "t": 1 << 30, "tib": 1 << 30, "tb": 1 << 30}

// ParseDomain reads a domain XML (virsh dumpxml).
func ParseDomain(b []byte) (*Domain, error) {
	if len(b) > maxXML {
		return nil, fmt.Errorf("%w: domain XML of %d bytes (at most %d)", ErrParse, len(b), maxXML)
	}
	var x xmlDomain
	if err := xml.Unmarshal(b, &x); err != nil {
		return nil, fmt.Errorf("%w: domain XML: %v", ErrParse, err)
	}
	if x.Name == "" {
		return nil, fmt.Errorf("%w: domain XML without a name", ErrParse)
	}
	d := &Domain{Name: x.Name, UUID: strings.TrimSpace(x.UUID), Type: x.Type, Machine: x.OS.Type.Machine,
		Emulator: strings.TrimSpace(x.Devices.Emulator)}
	if v := strings.TrimSpace(x.Memory.Value); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		mult, ok := memUnits[strings.ToLower(x.Memory.Unit)]
		if err != nil || n < 0 || !ok {
			return nil, fmt.Errorf("%w: <memory unit=%q>%s</memory>", ErrParse, x.Memory.Unit, v)
		}
		if mult == 0 { // bytes
			d.MemoryKB = n >> 10
		} else {
			if n > (1<<62)/mult {
				return nil, fmt.Errorf("%w: <memory> %s %s is too large", ErrParse, v, x.Memory.Unit)
			}
			d.MemoryKB = n * mult
		}
	}
	if v := strings.TrimSpace(x.VCPU.Value); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%w: <vcpu>%s</vcpu>", ErrParse, v)
		}
		d.VCPUs = n
	}
	for _, xd := range x.Devices.Disks {
		disk := Disk{Type: xd.Type, Device: xd.Device, Format: xd.Driver.Type, Target: xd.Target.Dev,
			Shareable: xd.Shareable != nil, ReadOnly: xd.ReadOnly != nil}
		switch {
		case xd.Source.File != "":
			disk.Source = xd.Source.File
		case xd.Source.Dev != "":
			disk.Source = xd.Source.Dev
		case xd.Source.Name != "":
			disk.Source = xd.Source.Name
		case xd.Source.Volume != "":
			disk.Source = xd.Source.Pool + "/" + xd.Source.Volume
		}
		d.Disks = append(d.Disks, disk)
	}
	return d, nil
}

// State is a domain's state as domstate prints it.
type State string

// The states vmscatter acts on; libvirt has more (blocked, crashed, pmsuspended).
const (
	StateRunning  State = "running"
	StatePaused   State = "paused"
	StateShutOff  State = "shut off"
	StateShutdown State = "in shutdown"
)

// ParseState reads domstate's output: one line, the state.
func ParseState(out string) (State, error) {
	s := strings.TrimSpace(out)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	if s == "" || len(s) > 64 {
		return "", fmt.Errorf("%w: domstate printed %q", ErrParse, out)
	}
	return State(s), nil
}

// ParseKeyValues reads virsh's "Key:   value" listings (dominfo, domjobinfo). Lines without a colon are skipped;
// the last of a repeated key wins.
func ParseKeyValues(out string) map[string]string {
	kv := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		if k = strings.TrimSpace(k); k != "" {
			kv[k] = strings.TrimSpace(v)
		}
	}
	return kv
}

// JobInfo is what vmscatter reads of domjobinfo.
type JobInfo struct {
	Type          string // None, Unbounded (under way), Completed, Failed, Cancelled
	Operation     string // Outgoing migration, Incoming migration
	ElapsedMS     int64
	DowntimeMS    int64 // "Total downtime"; -1 when not given
	DataProcessed int64 // bytes, "Data processed"; -1 when not given
	MemoryTotal   int64 // bytes; -1 when not given
}

// ParseJobInfo reads domjobinfo's listing. Absent or unreadable figures are -1 (ElapsedMS 0).
func ParseJobInfo(out string) JobInfo {
	kv := ParseKeyValues(out)
	j := JobInfo{Type: kv["Job type"], Operation: kv["Operation"], DowntimeMS: -1, DataProcessed: -1, MemoryTotal: -1}
	if v, ok := msValue(kv["Time elapsed"]); ok {
		j.ElapsedMS = v
	}
	if v, ok := msValue(kv["Total downtime"]); ok {
		j.DowntimeMS = v
	}
	if v, ok := sizeValue(kv["Data processed"]); ok {
		j.DataProcessed = v
	}
	if v, ok := sizeValue(kv["Memory total"]); ok {
		j.MemoryTotal = v
	}
	return j
}

// msValue reads "123          ms".
func msValue(s string) (int64, bool) {
	f := strings.Fields(s)
	if len(f) != 2 || f[1] != "ms" {
		return 0, false
	}
	n, err := strconv.ParseInt(f[0], 10, 64)
	return n, err == nil && n >= 0
}

var sizeMult = map[string]float64{"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}

// sizeValue reads "12.345 MiB".
func sizeValue(s string) (int64, bool) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, false
	}
	m, ok := sizeMult[f[1]]
	n, err := strconv.ParseFloat(f[0], 64)
	if !ok || err != nil || n < 0 || n > 1<<50 {
		return 0, false
	}
	return int64(n * m), true
}
