package commit_test

import (
	"fmt"

	"github.com/vmscatter/vmscatter/scatter/commit"
)

// Example wires both sides together as two drivers would, with QEMU's outcomes scripted: the happy path.
func Example() {
	const epoch = 3
	src, dst := commit.NewSource(epoch, true), commit.NewDest(epoch)
	var toDest, toSource []commit.Event // frames in flight
	var srcOut, dstOut []commit.Event   // what each QEMU answers to an action
	carry := func(side string, acts []commit.Action) {
		for _, a := range acts {
			fmt.Printf("%-6s %v\n", side, a)
			switch a.Kind {
			case commit.Send:
				ev := commit.Received(a.Frame, a.Epoch, a.Reason)
				if side == "source" {
					toDest = append(toDest, ev)
				} else {
					toSource = append(toSource, ev)
				}
			case commit.StartSourceMigration: // the pump ends the stream with STREAM_END
				toDest = append(toDest, commit.Received(commit.FrameStreamEnd, epoch, ""))
				srcOut = append(srcOut, commit.Event{Kind: commit.SrcCompleted}, commit.Event{Kind: commit.SrcPaused})
			case commit.QuitSource:
				srcOut = append(srcOut, commit.Event{Kind: commit.SrcExited})
			case commit.LaunchDest:
				dstOut = append(dstOut, commit.Event{Kind: commit.DestReady})
			case commit.StartDest:
				dstOut = append(dstOut, commit.Event{Kind: commit.DestStarted})
			}
		}
	}
	pop := func(q *[]commit.Event) commit.Event { ev := (*q)[0]; *q = (*q)[1:]; return ev }
	carry("source", src.Step(commit.Event{Kind: commit.Connected}))
	for !src.Phase().Terminal() || !dst.Phase().Terminal() {
		switch {
		case len(toDest) > 0:
			ev := pop(&toDest)
			carry("dest", dst.Step(ev))
			if ev.Frame == commit.FrameStreamEnd { // the destination QEMU has the whole stream
				dstOut = append(dstOut, commit.Event{Kind: commit.DestLoaded})
			}
		case len(dstOut) > 0:
			carry("dest", dst.Step(pop(&dstOut)))
		case len(toSource) > 0:
			carry("source", src.Step(pop(&toSource)))
		case len(srcOut) > 0:
			carry("source", src.Step(pop(&srcOut)))
		}
	}
	// Output:
	// source journal Prepare e=3
	// source send OPEN e=3
	// dest   journal Prepare e=3
	// dest   launch-dest
	// dest   send READY e=3
	// source journal Perform e=3
	// source start-source-migration
	// dest   journal Loaded e=3
	// dest   send LOADED e=3
	// source journal Finish e=3
	// source send START e=3
	// dest   journal Finish e=3
	// dest   start-dest
	// dest   send RUNNING e=3
	// source journal Confirm e=3
	// source quit-source
	// source send COMMIT e=3
	// dest   journal Committed e=3
	// dest   send DONE e=3
	// dest   report migrated "the destination runs"
	// source journal Committed e=3
	// source report migrated "the destination runs and the source QEMU has quit"
}
