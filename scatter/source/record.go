package source

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qmp"
	"github.com/vmscatter/vmscatter/scatter/commit"
	"github.com/vmscatter/vmscatter/scatter/journal"
)

// The sender's journal (docs/commit.md): under --state-dir, one directory per run, named by its session id, with
// the run's record ("run") and one record per VM ("vm-NAME"), each rewritten durably before every irreversible
// step of that VM's migration. `vmscatter recover` and `vmscatter status` read it; `send` refuses a VM whose last
// run left it unsettled.

// DefaultStateDir is where the sender journals its runs unless --state-dir says otherwise.
const DefaultStateDir = "/var/lib/vmscatter/send"

// RunRecord is a run's record: what recover needs to reach every VM's two ends.
type RunRecord struct {
	Session string      `json:"session"`
	Started time.Time   `json:"started"`
	Targets []string    `json:"targets"`
	VMs     []RunVMSpec `json:"vms"`
}

// RunVMSpec names one VM of a run and where its source QEMU was.
type RunVMSpec struct {
	Name string `json:"name"`
	QMP  string `json:"qmp"`
}

// VMRecord is one VM's journal record on the sender's side.
type VMRecord struct {
	VM         string    `json:"vm"`
	Epoch      uint64    `json:"epoch"`
	Phase      string    `json:"phase"` // commit.Phase's name
	Target     string    `json:"target,omitempty"`
	QMP        string    `json:"qmp"`
	PID        int       `json:"pid,omitempty"`
	WasRunning bool      `json:"was_running"`
	Saved      *Settings `json:"saved,omitempty"` // the source's settings before the migration, for a rollback
	// Linger: rolled back without the receiver's word that its destination is gone; recover tidies it.
	Linger  bool      `json:"linger,omitempty"`
	Status  string    `json:"status,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Updated time.Time `json:"updated"`
}

// Settings are the source QEMU's migration settings as vmscatter found them.
type Settings struct {
	Capabilities map[string]bool         `json:"capabilities,omitempty"`
	Parameters   qmp.MigrationParameters `json:"parameters"`
}

// Entry is the record's journal entry, as the commit machines read it.
func (r VMRecord) Entry() (commit.Entry, error) {
	p, ok := commit.ParsePhase(r.Phase)
	if !ok {
		return commit.Entry{}, fmt.Errorf("journal of %s: unknown phase %q", r.VM, r.Phase)
	}
	return commit.Entry{Phase: p, Epoch: r.Epoch}, nil
}

func vmRecordName(vm string) string { return "vm-" + vm }

// Run is one journaled run: its directory, record and VMs' records.
type Run struct {
	Dir    string
	Record RunRecord
	VMs    []VMRecord
}

// Unsettled lists the run's VMs whose last phase is not terminal: their migration was interrupted.
func (r Run) Unsettled() []VMRecord {
	var out []VMRecord
	for _, v := range r.VMs {
		if e, err := v.Entry(); err != nil || !e.Phase.Terminal() || e.Phase == commit.Unresolved || v.Linger ||
			v.Status == "unresolved" {
			out = append(out, v)
		}
	}
	return out
}

// Runs reads every run journaled under stateDir, oldest first. A state dir that does not exist holds none.
func Runs(stateDir string) ([]Run, error) {
	ents, err := os.ReadDir(stateDir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	var runs []Run
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		j, err := journal.Open(filepath.Join(stateDir, e.Name()))
		if err != nil {
			return nil, err
		}
		run := Run{Dir: j.Path()}
		if ok, err := j.Get("run", &run.Record); err != nil || !ok {
			continue // not a run's directory, or one that crashed before its record: nothing was touched
		}
		names, err := j.Names()
		if err != nil {
			return nil, err
		}
		for _, n := range names {
			var v VMRecord
			if n == "run" {
				continue
			}
			if ok, err := j.Get(n, &v); err != nil {
				return nil, err
			} else if ok {
				run.VMs = append(run.VMs, v)
			}
		}
		runs = append(runs, run)
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].Record.Started.Before(runs[j].Record.Started) })
	return runs, nil
}

// openJournal reads the runs journaled before, picks this run's epoch (greater than any its VMs had), and starts
// this run's directory. It returns the VMs that an earlier run left unsettled, with the reason they are refused:
// only `vmscatter recover` may touch them.
func (s *sender) openJournal(start time.Time) (held map[string]string, err error) {
	dir := s.cfg.StateDir
	if dir == "" {
		dir = DefaultStateDir
	}
	runs, err := Runs(dir)
	if err != nil {
		return nil, fmt.Errorf("%w (--state-dir %s)", err, dir)
	}
	mine := map[string]bool{}
	for _, v := range s.cfg.VMs {
		mine[v.Name] = true
	}
	held = map[string]string{}
	var last uint64
	for _, run := range runs {
		for _, v := range run.VMs {
			if mine[v.VM] {
				last = max(last, v.Epoch)
			}
		}
		for _, v := range run.Unsettled() {
			if mine[v.VM] {
				held[v.VM] = fmt.Sprintf("an earlier run (%s) left this VM unsettled in phase %s: run `vmscatter recover "+
					"--state-dir %s` first", filepath.Base(run.Dir), v.Phase, dir)
			}
		}
	}
	s.epoch = max(uint64(start.UnixNano()), last+1)
	if s.journal, err = journal.Open(filepath.Join(dir, s.session.String())); err != nil {
		return nil, fmt.Errorf("%w (--state-dir)", err)
	}
	rec := RunRecord{Session: s.session.String(), Started: start.UTC(), Targets: s.cfg.Targets}
	for _, v := range s.cfg.VMs {
		rec.VMs = append(rec.VMs, RunVMSpec{Name: v.Name, QMP: v.QMP})
	}
	if err := s.journal.Put("run", rec); err != nil {
		return nil, err
	}
	return held, nil
}
