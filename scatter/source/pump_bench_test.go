package source

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/vmscatter/vmscatter/bench/datapath"
	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/scatter/report"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/wire"
)

// The sender's data path on recorded streams: the pump as it runs in a migration (decode the QEMU stream, one
// dedup.AppendPage per page, the report's final image, PAGES frames sealed by secure.Conn), with the source QEMU's
// socket and the receiver's replaced by memory. GB/s/core is guest RAM per second of the process's CPU time.
//
//	go test ./scatter/source -run '^$' -bench Pump -benchtime 10x

// benchKey is the shared key of the benchmarks' connections.
var benchKey = bytes.Repeat([]byte{7}, 32)

// pumpFor builds one VM's migration whose target holds st's held contents (as the prime leaves them: contents this
// VM held at the scan), compressing literals with codec (--compress), and whose stream connection sends into w; the
// receiver's end of it reads from r.
func pumpFor(tb testing.TB, st *datapath.Stream, codec dedup.Codec, w io.Writer, r io.Reader) (*vmMigration, *secure.Conn) {
	return adaptivePumpFor(tb, st, codec, false, 0, w, r)
}

// adaptivePumpFor is pumpFor with --compress auto when adaptive, the stream's share of the link being link bytes/s.
func adaptivePumpFor(tb testing.TB, st *datapath.Stream, codec dedup.Codec, adaptive bool, link float64, w io.Writer, r io.Reader) (*vmMigration, *secure.Conn) {
	tb.Helper()
	var salt [32]byte
	t := &targetConn{addr: "bench", held: st.HeldIndex(dedup.NewDigester(salt))}
	mine := make([]dedup.ContentID, len(st.Held))
	for i := range mine {
		mine[i] = dedup.ContentID(i)
	}
	vm := &sourceVM{spec: VMSpec{Name: "bench"}, target: t, report: &report.VMReport{Name: "bench"}}
	s := &sender{codec: codec, adaptive: adaptive, linkRate: link, progress: newProgress(nil), targets: []*targetConn{t}, vms: []*sourceVM{vm},
		sharing: &dedup.SharingMap{PerVM: [][]dedup.ContentID{mine}}, costs: make([]uint32, len(st.Held)), primed: make(chan struct{})}
	close(s.primed)
	sc, rc, err := datapath.Pair(benchKey, w, r)
	if err != nil {
		tb.Fatal(err)
	}
	return &vmMigration{s: s, vm: vm, sc: sc, log: slog.New(slog.DiscardHandler)}, rc
}

// pumpCompress are the benchmark's --compress settings: fixed codecs, and auto at two links, a stream's share of
// the bench's 200 Mbit/s uplink (four streams) and a 10 Gbit/s link of its own.
var pumpCompress = []struct {
	name     string
	codec    dedup.Codec
	adaptive bool
	link     float64 // bytes/s
}{
	{"zstd", dedup.CodecZstd, false, 0},
	{"s2", dedup.CodecS2, false, 0},
	{"auto-50Mbit", dedup.CodecZstd, true, 50e6 / 8},
	{"auto-10Gbit", dedup.CodecZstd, true, 10e9 / 8},
}

func BenchmarkPump(b *testing.B) {
	for _, mix := range []datapath.Mix{datapath.ReferenceHeavy, datapath.LiteralHeavy} {
		for _, pc := range pumpCompress {
			b.Run(mix.Name+"/"+pc.name, func(b *testing.B) {
				st, err := datapath.Generate(mix)
				if err != nil {
					b.Fatal(err)
				}
				m, _ := adaptivePumpFor(b, st, pc.codec, pc.adaptive, pc.link, io.Discard, nil)
				ctx := context.Background()
				b.SetBytes(st.RAMBytes())
				var cpu datapath.CPU
				b.ResetTimer()
				cpu.Start()
				for range b.N {
					m.src = &datapath.MemConn{R: bytes.NewReader(st.QEMU)}
					if err := m.pump(ctx); err != nil {
						b.Fatal(err)
					}
				}
				cpu.Stop()
				b.StopTimer()
				cpu.Report(b, st.RAMBytes(), b.N)
				b.ReportMetric(float64(m.sc.BytesOut())/float64(b.N)/float64(st.RAMBytes()), "wire/RAM")
				if pc.adaptive {
					b.Logf("literals ended with %v", m.lastMethod)
				}
			})
		}
	}
}

// TestPumpSendsSenderFrames holds datapath.SenderFrames, the receiver benchmark's input, to what the pump sends.
func TestPumpSendsSenderFrames(t *testing.T) {
	for _, mix := range []datapath.Mix{{Name: "references", Pages: 1500, Held: 0.9}, {Name: "literals", Pages: 1500, Held: 0.1}} {
		t.Run(mix.Name, func(t *testing.T) {
			st, err := datapath.Generate(mix)
			if err != nil {
				t.Fatal(err)
			}
			var onWire bytes.Buffer
			m, rc := pumpFor(t, st, dedup.CodecZstd, &onWire, &onWire)
			m.src = &datapath.MemConn{R: bytes.NewReader(st.QEMU)}
			if err := m.pump(context.Background()); err != nil {
				t.Fatal(err)
			}
			if m.pages.Total != int64(mix.Pages) || m.pages.Referenced != int64(len(st.Held)) {
				t.Fatalf("pages %+v, want %d of which %d referenced", m.pages, mix.Pages, len(st.Held))
			}
			var sent []datapath.Frame
			for {
				typ, payload, err := rc.Recv()
				if err != nil {
					t.Fatalf("after %d frames: %v", len(sent), err)
				}
				sent = append(sent, datapath.Frame{Type: typ, Payload: bytes.Clone(payload)})
				if typ == wire.FrameStreamEnd {
					break
				}
			}
			want, err := datapath.SenderFrames(st.QEMU, st.HeldIndex(dedup.NewDigester([32]byte{})), dedup.CodecZstd)
			if err != nil {
				t.Fatal(err)
			}
			if len(sent) != len(want) {
				t.Fatalf("the pump sent %d frames, datapath.SenderFrames makes %d: update it to the pump's rules", len(sent), len(want))
			}
			for i := range sent {
				if sent[i].Type != want[i].Type || !bytes.Equal(sent[i].Payload, want[i].Payload) {
					t.Fatalf("frame %d: the pump sent %s of %d bytes, datapath.SenderFrames makes %s of %d: update it to the pump's rules",
						i, sent[i].Type, len(sent[i].Payload), want[i].Type, len(want[i].Payload))
				}
			}
		})
	}
}

// TestPumpAdaptsLiterals runs the pump with --compress auto on the literal-heavy stream: behind a slow link it keeps
// zstd, behind a 10 Gbit/s link of its own it sends literals raw, whose records the receiver decodes like any other.
func TestPumpAdaptsLiterals(t *testing.T) {
	st, err := datapath.Generate(datapath.Mix{Name: "literals", Pages: 1500, Held: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		link float64 // bytes/s
		want dedup.Method
	}{{5e6 / 8, dedup.MethodZstd}, {10e9 / 8, dedup.MethodNone}} {
		var onWire bytes.Buffer
		m, rc := adaptivePumpFor(t, st, dedup.CodecZstd, true, c.link, &onWire, &onWire)
		m.src = &datapath.MemConn{R: bytes.NewReader(st.QEMU)}
		if err := m.pump(context.Background()); err != nil {
			t.Fatal(err)
		}
		if m.lastMethod != c.want {
			t.Errorf("link %.0f bytes/s: literals ended with %v, want %v", c.link, m.lastMethod, c.want)
		}
		codecs := map[dedup.Codec]int{}
		page := make([]byte, dedup.PageSize)
		for {
			typ, payload, err := rc.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if typ == wire.FrameStreamEnd {
				break
			}
			if typ == wire.FramePagesZ {
				if payload, err = dedup.DecodeRecords(nil, payload); err != nil {
					t.Fatal(err)
				}
			} else if typ != wire.FramePages {
				continue
			}
			err = dedup.ParseRecords(payload, func(r dedup.PageRecord) error {
				if r.Kind == dedup.RecordLiteral {
					codecs[r.Codec]++
					return r.Codec.Decode(page, r.Data)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		if want := c.want.Codec(); codecs[want] == 0 || codecs[want] < int(m.pages.Literal)/2 {
			t.Errorf("link %.0f bytes/s: literal records by codec %v, want most of %d in %v", c.link, codecs, m.pages.Literal, want)
		}
	}
}
