package dest

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/bench/datapath"
	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// The receiver's data path on recorded streams: the rebuilder as it runs for a VM (open each frame, parse the page
// records, decompress literals, look references up in the content store, encode the QEMU stream), fed the frames the
// sender's pump sends for the stream (datapath.SenderFrames, held to the pump by scatter/source's tests) and writing
// into memory instead of the destination QEMU's socket. GB/s/core is guest RAM per second of the process's CPU time;
// sealing the input happens with the timer stopped.
//
//	go test ./scatter/dest -run '^$' -bench Rebuild -benchtime 10x

var benchKey = bytes.Repeat([]byte{7}, 32)

// rebuildInput is what one rebuild of mix's stream needs: the sender's frames, literals compressed with codec, and
// the target's content store.
func rebuildInput(tb testing.TB, mix datapath.Mix, codec dedup.Codec) (*datapath.Stream, []datapath.Frame, *dedup.ContentStore) {
	tb.Helper()
	st, err := datapath.Generate(mix)
	if err != nil {
		tb.Fatal(err)
	}
	frames, err := datapath.SenderFrames(st.QEMU, st.HeldIndex(dedup.NewDigester([32]byte{})), codec)
	if err != nil {
		tb.Fatal(err)
	}
	store, err := st.Store()
	if err != nil {
		tb.Fatal(err)
	}
	return st, frames, store
}

// sealed returns the receiver's end of a fresh connection with frames on its wire, and the wire's bytes.
func sealed(tb testing.TB, frames []datapath.Frame) (*secure.Conn, int) {
	tb.Helper()
	var onWire bytes.Buffer
	sc, rc, err := datapath.Pair(benchKey, &onWire, &onWire)
	if err != nil {
		tb.Fatal(err)
	}
	if err := datapath.Seal(sc, frames); err != nil {
		tb.Fatal(err)
	}
	return rc, onWire.Len()
}

func BenchmarkRebuild(b *testing.B) {
	for _, mix := range []datapath.Mix{datapath.ReferenceHeavy, datapath.LiteralHeavy} {
		for _, codec := range []dedup.Codec{dedup.CodecZstd, dedup.CodecS2} {
			b.Run(mix.Name+"/"+codec.String(), func(b *testing.B) {
				st, frames, store := rebuildInput(b, mix, codec)
				wireBytes := benchRebuild(b, st.RAMBytes(), frames, store)
				b.ReportMetric(float64(wireBytes)/float64(st.RAMBytes()), "wire/RAM")
			})
		}
	}
}

// benchRebuild times the rebuild of frames from store b.N times (sealing them anew each time, untimed) and reports
// the CPU per GiB of guest RAM. It returns the sealed stream's bytes.
func benchRebuild(b *testing.B, ramBytes int64, frames []datapath.Frame, store *dedup.ContentStore) (wireBytes int) {
	ctx := context.Background()
	b.SetBytes(ramBytes)
	var cpu datapath.CPU
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		var rc *secure.Conn
		rc, wireBytes = sealed(b, frames)
		rb := newRebuilder(&datapath.MemConn{}, store, time.Second)
		b.StartTimer()
		cpu.Start()
		err := rebuildAll(ctx, rb, rc)
		cpu.Stop()
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cpu.Report(b, ramBytes, b.N)
	return wireBytes
}

// rebuildAll feeds the rebuilder every frame of rc until STREAM_END, as a VM connection's reader does.
func rebuildAll(ctx context.Context, rb *rebuilder, rc *secure.Conn) error {
	for {
		t, b, err := rc.Recv()
		if err != nil {
			return err
		}
		if !isStreamFrame(t) {
			return fmt.Errorf("%s in the stream", t)
		}
		if err := rb.frame(ctx, t, b); err != nil || t == wire.FrameStreamEnd {
			return err
		}
	}
}

// TestRebuildRestoresStream checks the benchmark's path end to end: the rebuilder turns the sender's frames back
// into the very QEMU stream they were made from.
func TestRebuildRestoresStream(t *testing.T) {
	for _, mix := range []datapath.Mix{{Name: "references", Pages: 1500, Held: 0.9}, {Name: "literals", Pages: 1500, Held: 0.1}} {
		t.Run(mix.Name, func(t *testing.T) {
			st, frames, store := rebuildInput(t, mix, dedup.CodecZstd)
			var out bytes.Buffer
			rb := newRebuilder(&datapath.MemConn{W: &out}, store, time.Second)
			rc, _ := sealed(t, frames)
			if err := rebuildAll(context.Background(), rb, rc); err != nil {
				t.Fatal(err)
			}
			if rb.pages != mix.Pages || rb.refs != len(st.Held) {
				t.Errorf("%d pages, %d references; want %d and %d", rb.pages, rb.refs, mix.Pages, len(st.Held))
			}
			if !bytes.Equal(out.Bytes(), st.QEMU) {
				t.Fatalf("the rebuilt stream (%d bytes) differs from the source's (%d bytes)", out.Len(), len(st.QEMU))
			}
		})
	}
}
