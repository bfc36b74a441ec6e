package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"testing"
)

// FuzzStreamRoundTrip decodes arbitrary bytes. Decoding either fails with a typed error or yields events that the
// encoder writes back into a stream that decodes to the same events.
func FuzzStreamRoundTrip(f *testing.F) {
	for _, path := range realStreamSeeds() {
		if seed, err := os.ReadFile(path); err == nil {
			f.Add(seed)
		}
	}
	f.Add(validStream())
	f.Add(new(sb).header().u8(secSubsection).str("configuration/capabilities").be32(1).be32(1).str(capIgnoreShared).
		ramStart([]RAMBlock{{ID: "a", Length: PageSize, Addr: 1 << 20}}, true).section(secEnd).zero("a", 0).eos().
		u8(secEOF).bytes())
	f.Add(upToRAM().section(secPart).be64(ramFlagXBZRLE).bytes())
	// Records of later QEMU versions: SWITCHOVER_START (10.0), the stray MULTIFD_FLUSH (8.1.0-8.1.2), mapped-ram
	// (9.0), and a second SWITCHOVER_START, which is malformed.
	f.Add(stream10())
	f.Add(stream81(true))
	f.Add(new(sb).header().u8(secSubsection).str("configuration/capabilities").be32(1).be32(1).str(capMappedRAM).bytes())
	f.Add(upToRAM().command(cmdSwitchoverStart, nil).command(cmdSwitchoverStart, nil).bytes())
	f.Fuzz(func(t *testing.T, in []byte) {
		evs, err := decodeAll(bytes.NewReader(in))
		// Reads of a few bytes at a time (a socket) give the same events and the same error.
		small, smallErr := decodeAll(&smallReader{r: bytes.NewReader(in), n: 1 + len(in)%13})
		if !reflect.DeepEqual(normalize(small), normalize(evs)) || fmt.Sprint(smallErr) != fmt.Sprint(err) {
			t.Fatalf("small reads decode differently: %v vs %v", smallErr, err)
		}
		if err != nil {
			var se *StreamError
			var ue *UnsupportedError
			if !errors.As(err, &se) && !errors.As(err, &ue) {
				t.Fatalf("untyped error %T: %v", err, err)
			}
			return
		}
		out := encodeAll(t, evs)
		again, err := decodeAll(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("re-encoded stream does not decode: %v", err)
		}
		if !reflect.DeepEqual(normalize(evs), normalize(again)) {
			t.Fatalf("events differ after re-encoding:\n%s\n---\n%s", describe(normalize(evs)),
				describe(normalize(again)))
		}
	})
}

// smallReader returns at most n bytes per Read.
type smallReader struct {
	r io.Reader
	n int
}

func (s *smallReader) Read(p []byte) (int, error) { return s.r.Read(p[:min(len(p), s.n)]) }

// syntheticStream is a stream of n pages of pc.ram in sections of 256 pages; every zeroEvery-th page is a zero
// page (0: none).
func syntheticStream(n, zeroEvery int) []byte {
	var out bytes.Buffer
	enc := NewEncoder(&out)
	enc.WritePrefix(new(sb).header().command(cmdOpenReturnPath, nil).bytes())
	enc.StartRAM(RAMStart{SectionID: testRAMID, VersionID: ramVersion,
		Blocks: []RAMBlock{{ID: "pc.ram", Length: uint64(n) * PageSize}}})
	data := make([]byte, PageSize)
	for i := range n {
		if i%256 == 0 {
			if i > 0 {
				enc.EndSection()
			}
			enc.BeginSection(SectionKindPart)
		}
		if zeroEvery > 0 && i%zeroEvery == 0 {
			enc.WritePage(Page{Offset: RAMOffset(i) * PageSize, Zero: true})
			continue
		}
		binary.LittleEndian.PutUint64(data, uint64(i))
		enc.WritePage(Page{Offset: RAMOffset(i) * PageSize, Data: data})
	}
	enc.EndSection()
	enc.WriteTail(testTail)
	return out.Bytes()
}

// BenchmarkDecode measures decode throughput in stream bytes (MB/s) on 64 MiB of pages, all data or a quarter
// zero pages. Page data is not copied, as in a proxy that hashes or forwards it.
func BenchmarkDecode(b *testing.B) {
	for _, c := range []struct {
		name      string
		zeroEvery int
	}{{"data", 0}, {"quarter-zero", 4}} {
		in := syntheticStream(16384, c.zeroEvery)
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				d := NewDecoder(bytes.NewReader(in))
				pages := 0
				for {
					ev, err := d.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					if _, ok := ev.(Page); ok {
						pages++
					}
				}
				if pages != 16384 {
					b.Fatalf("%d pages", pages)
				}
			}
		})
	}
}
