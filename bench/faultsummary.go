package bench

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
)

// momentOrder sorts the moments a fault struck at (Where.Label: the sender's part, then the receiver's) in the order
// a migration passes them.
var (
	momentOrder = []string{"Begin", "Prepare", "Perform, priming", "Perform, streaming", "Perform, source completed", "Finish",
		"Confirm", "Committed", "RollingBack", "RolledBack", "Unresolved", "not reached"}
	receiverOrder = []string{"", "Prepare", "Loaded", "Finish", "Confirm", "Committed", "RollingBack", "RolledBack", "Unresolved"}
)

func momentRank(m string) int {
	sender, receiver, _ := strings.Cut(m, " · receiver ")
	rank := func(order []string, x string) int {
		if i := slices.Index(order, x); i >= 0 {
			return i
		}
		return len(order)
	}
	return rank(momentOrder, sender)*100 + rank(receiverOrder, receiver)
}

var kindOrder = []FaultKind{SenderKill, SenderHUP, ReceiverKill, DestKill, PartitionSrc, SenderDiskFull, ReceiverDiskFull}

// summaryRow adds up the trials of one fault at one moment.
type summaryRow struct {
	trials, vms, onSource, onTarget, lost, doubled, faulty, killed int
	recoverWork                                                    int         // trials where recover found VMs to settle
	recoverRuns                                                    map[int]int // runs needed → trials (0: never settled)
	notIdempotent                                                  int
	sendExits                                                      map[string]int
}

func (r *summaryRow) add(t *TrialResult, src string) {
	r.trials++
	for _, v := range t.VMs {
		r.vms++
		switch v.Verdict {
		case VerdictLost:
			r.lost++
		case VerdictDoubled:
			r.doubled++
		case VerdictFaulty:
			r.faulty++
		case VerdictKilled:
			r.killed++
		}
		switch {
		case v.Verdict != VerdictOK:
		case v.Host == src:
			r.onSource++
		default:
			r.onTarget++
		}
	}
	if len(t.Recovers) > 0 && len(t.Recovers[0].VMs) > 0 {
		r.recoverWork++
	}
	if r.recoverRuns == nil {
		r.recoverRuns, r.sendExits = map[int]int{}, map[string]int{}
	}
	r.recoverRuns[t.RecoverRuns]++
	if !t.Idempotent {
		r.notIdempotent++
	}
	exit := fmt.Sprint(t.Send.Exit)
	if t.Send.Killed != "" {
		exit = "killed"
	}
	if t.Send.Hung {
		exit = "hung"
	}
	r.sendExits[exit]++
}

func sortedKeys[V any](m map[string]V) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func counts(m map[string]int) string {
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s×%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func runsCell(m map[int]int) string {
	var parts []string
	for _, k := range []int{1, 2, 3} {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%d run×%d", k, m[k]))
		}
	}
	if m[0] > 0 {
		parts = append(parts, fmt.Sprintf("unsettled×%d", m[0]))
	}
	return strings.Join(parts, ", ")
}

// WriteSummary writes the campaign's figures as Markdown: one row per fault and moment struck (the victim's, as
// Where.Label names it), the totals, and every trial that found a problem.
func WriteSummary(w io.Writer, results []*TrialResult, src string) {
	rows := map[FaultKind]map[string]*summaryRow{}
	var total summaryRow
	for _, t := range results {
		m := t.Moment
		if !t.Reached {
			m = "not reached"
		}
		if rows[t.Spec.Kind] == nil {
			rows[t.Spec.Kind] = map[string]*summaryRow{}
		}
		if rows[t.Spec.Kind][m] == nil {
			rows[t.Spec.Kind][m] = &summaryRow{}
		}
		rows[t.Spec.Kind][m].add(t, src)
		total.add(t, src)
	}
	fmt.Fprintln(w, "| fault | struck at (victim's phase) | trials | VMs | on source | on target | killed with their destination | lost | doubled | other problems | recover found work | recover runs to settle | send exit |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
	for _, k := range kindOrder {
		var moments []string
		for m := range rows[k] {
			moments = append(moments, m)
		}
		sort.Slice(moments, func(i, j int) bool { return momentRank(moments[i]) < momentRank(moments[j]) })
		for _, m := range moments {
			r := rows[k][m]
			fmt.Fprintf(w, "| %s | %s | %d | %d | %d | %d | %d | %d | %d | %d | %d | %s | %s |\n", k, m, r.trials, r.vms, r.onSource,
				r.onTarget, r.killed, r.lost, r.doubled, r.faulty, r.recoverWork, runsCell(r.recoverRuns), counts(r.sendExits))
		}
	}
	fmt.Fprintf(w, "| **all** | | **%d** | **%d** | %d | %d | %d | **%d** | **%d** | **%d** | %d | %s | %s |\n", total.trials, total.vms,
		total.onSource, total.onTarget, total.killed, total.lost, total.doubled, total.faulty, total.recoverWork,
		runsCell(total.recoverRuns), counts(total.sendExits))
	fmt.Fprintf(w, "\nOne more run of recover changed no copy and left what it had left in %d of %d trials.\n",
		total.trials-total.notIdempotent, total.trials)
	var cut []string
	for _, t := range results {
		if t.RecoverCut == nil {
			continue
		}
		var vms []string
		for _, name := range sortedKeys(t.RecoverCut.VMs) {
			vms = append(vms, name+" "+t.RecoverCut.VMs[name])
		}
		cut = append(cut, fmt.Sprintf("- trial %d (%s, struck at %s): exit %d; %s", t.Spec.N, t.Spec.Point, t.Moment,
			t.RecoverCut.Exit, strings.Join(vms, "; ")))
	}
	if len(cut) > 0 {
		fmt.Fprintf(w, "\nRecover while the partition still held (it may only wait, or act where no receiver's word is needed):\n\n%s\n",
			strings.Join(cut, "\n"))
	}
	var killed []string
	for _, t := range results {
		for _, v := range t.VMs {
			if v.Verdict == VerdictKilled {
				last := t.Recovers[len(t.Recovers)-1].VMs[v.Name]
				killed = append(killed, fmt.Sprintf("- trial %d (%s at %s, receiver then %s): %s; recover: %s", t.Spec.N, t.Spec.Kind,
					t.Moment, t.ReceiverAfter, v.Name, orNone(last)))
			}
		}
	}
	var stale []string
	for _, t := range results {
		for _, v := range t.VMs {
			if v.Stale != "" {
				stale = append(stale, fmt.Sprintf("- trial %d (%s at %s): beside %s on %s: %s", t.Spec.N, t.Spec.Kind, t.Moment,
					v.Name, v.Host, v.Stale))
			}
		}
	}
	if len(stale) > 0 {
		fmt.Fprintf(w, "\nStale copies beside a VM's one copy after recover, which went by themselves:\n\n%s\n",
			strings.Join(stale, "\n"))
	}
	if len(killed) > 0 {
		fmt.Fprintf(w, "\nVMs that died with the destination the fault killed:\n\n%s\n", strings.Join(killed, "\n"))
	}
	var bad []*TrialResult
	for _, t := range results {
		if t.Problem() {
			bad = append(bad, t)
		}
	}
	if len(bad) == 0 {
		return
	}
	fmt.Fprintf(w, "\nTrials with a problem:\n\n")
	for _, t := range bad {
		fmt.Fprintf(w, "- %s, struck at %s (%s): %s\n", t.Spec, t.Moment, t.At, t.Injected)
		for _, v := range t.VMs {
			if v.Problem != "" {
				fmt.Fprintf(w, "  - %s: %s (copies %v; reported %s)\n", v.Name, v.Problem, v.Copies, orNone(v.Reports))
			}
		}
		for _, n := range t.Notes {
			fmt.Fprintf(w, "  - %s\n", n)
		}
		if t.Dir != "" {
			fmt.Fprintf(w, "  - files: %s\n", t.Dir)
		}
	}
}
