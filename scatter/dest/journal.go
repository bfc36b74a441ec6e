package dest

import (
	"os"
	"path/filepath"
	"time"

	"github.com/vmscatter/vmscatter/scatter/commit"
	"github.com/vmscatter/vmscatter/scatter/journal"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// recordName is the VM's commit record in its directory: DATA-DIR/<vm>/commit.json.
const recordName = "commit"

// record is what the receiver journals for a VM (docs/commit.md, "The journal"): its last commit phase and the
// migration's epoch, and what a restarted receiver needs to carry on: whether the source ran (a restored Finish
// `cont`s only then).
type record struct {
	Phase   string         `json:"phase"` // scatter/commit's phase names
	Epoch   uint64         `json:"epoch"`
	Session wire.SessionID `json:"session"`
	Run     bool           `json:"run"` // the source ran: StartDest `cont`s the destination
	Updated time.Time      `json:"updated"`
}

// entry is the record as the machines read it; ok is false when the phase is not one of commit's names.
func (rec record) entry() (commit.Entry, bool) {
	p, ok := commit.ParsePhase(rec.Phase)
	return commit.Entry{Phase: p, Epoch: rec.Epoch}, ok
}

// putRecord makes rec durable in dir (scatter/journal: written whole, fsynced, renamed, directory fsynced).
func putRecord(dir string, rec record) error {
	jd, err := journal.Open(dir)
	if err != nil {
		return err
	}
	return jd.Put(recordName, rec)
}

// records reads the commit record of every VM directory under dataDir, by VM name. A directory without one (a VM
// never opened here, or files of an older receiver) is left out; a record that cannot be read is returned in bad.
func records(dataDir string) (recs map[string]record, bad map[string]error) {
	recs, bad = map[string]record{}, map[string]error{}
	ents, err := os.ReadDir(dataDir)
	if err != nil {
		bad[dataDir] = err
		return recs, bad
	}
	for _, e := range ents {
		if !e.IsDir() || wire.CheckVMName(e.Name()) != nil {
			continue
		}
		dir := filepath.Join(dataDir, e.Name())
		if _, err := os.Stat(filepath.Join(dir, recordName+".json")); err != nil {
			continue
		}
		jd, err := journal.Open(dir)
		if err != nil {
			bad[e.Name()] = err
			continue
		}
		var rec record
		if ok, err := jd.Get(recordName, &rec); err != nil {
			bad[e.Name()] = err
		} else if ok {
			recs[e.Name()] = rec
		}
	}
	return recs, bad
}
