package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"

	"github.com/vmscatter/vmscatter/dedup"
	"github.com/vmscatter/vmscatter/qemu/stream"
)

// Mix describes a synthetic stream: how many pages it carries and what share of them the target holds.
type Mix struct {
	Name  string
	Pages int     // pages of guest RAM in the stream, each sent once
	Held  float64 // share of the pages whose exact content the target holds; the rest are text-like literals
}

// The two streams of the data-path benchmarks: 64 MiB of guest RAM each, no zero pages.
var (
	// ReferenceHeavy is a stream whose contents the prime brought almost entirely: 90% references.
	ReferenceHeavy = Mix{Name: "reference-heavy", Pages: 16384, Held: 0.9}
	// LiteralHeavy is a stream of pages the target has never seen: 90% literals.
	LiteralHeavy = Mix{Name: "literal-heavy", Pages: 16384, Held: 0.1}
)

// Stream is a generated QEMU migration stream and what its target holds.
type Stream struct {
	Mix
	QEMU []byte   // the stream as a QEMU 7.2 source writes it: prefix, ram START, PART sections, END, device state
	Held [][]byte // the contents the target holds, by dedup.ContentID; the stream holds each once
}

// RAMBytes is the guest RAM the stream carries.
func (s *Stream) RAMBytes() int64 { return int64(s.Pages) * dedup.PageSize }

// HeldIndex is the sender's index of what the target holds, under digester d.
func (s *Stream) HeldIndex(d *dedup.Digester) *dedup.HeldIndex {
	h := dedup.NewHeldIndex(nil, d)
	h.Grow(len(s.Held))
	for id, page := range s.Held {
		h.AddPage(dedup.ContentID(id), page)
	}
	return h
}

// Store is the receiver's content store holding what the target holds.
func (s *Stream) Store() (*dedup.ContentStore, error) {
	st := dedup.NewContentStore(int64(len(s.Held)+1)*dedup.PageSize, nil)
	for id, page := range s.Held {
		if err := st.Put(dedup.ContentID(id), page); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// Stream layout, as QEMU 7.2 numbers and sizes it.
const (
	ramSectionID   = 2   // QEMU 7.2 gives the ram section id 2
	ramVersion     = 4   // the ram section's version
	pagesPerPart   = 512 // pages per PART section (2 MiB)
	endPages       = 64  // pages sent in the END section, after the VM stopped
	machine        = "pc-i440fx-7.2"
	ramBlock       = "pc.ram"
	deviceStateLen = 4096 // bytes of the stand-in device state
)

var (
	genMu    sync.Mutex
	genCache = map[Mix]*Stream{}
)

// Generate returns mix's stream. The same mix always gives the same bytes; streams are generated once per process
// and shared, so callers must not modify them.
func Generate(mix Mix) (*Stream, error) {
	genMu.Lock()
	defer genMu.Unlock()
	if s := genCache[mix]; s != nil {
		return s, nil
	}
	s, err := generate(mix)
	if err != nil {
		return nil, err
	}
	genCache[mix] = s
	return s, nil
}

func generate(mix Mix) (*Stream, error) {
	if mix.Pages <= endPages || mix.Held < 0 || mix.Held > 1 {
		return nil, fmt.Errorf("datapath: mix %+v", mix)
	}
	s := &Stream{Mix: mix}
	var out bytes.Buffer
	out.Grow(mix.Pages*(dedup.PageSize+16) + 1<<20)
	enc := stream.NewEncoder(&out)
	if err := enc.WritePrefix(prefix()); err != nil {
		return nil, err
	}
	err := enc.StartRAM(stream.RAMStart{SectionID: ramSectionID, VersionID: ramVersion,
		Blocks: []stream.RAMBlock{{ID: ramBlock, Length: uint64(mix.Pages) * dedup.PageSize}}})
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(uint64(mix.Pages), uint64(mix.Held*1e6)))
	tw := newTextWriter(rng)
	page := make([]byte, dedup.PageSize)
	for i := range mix.Pages {
		if i == 0 || i%pagesPerPart == 0 || i == mix.Pages-endPages {
			if i > 0 {
				if err := enc.EndSection(); err != nil {
					return nil, err
				}
			}
			kind := stream.SectionKindPart
			if i >= mix.Pages-endPages {
				kind = stream.SectionKindEnd
			}
			if err := enc.BeginSection(kind); err != nil {
				return nil, err
			}
		}
		held := rng.Float64() < mix.Held
		tw.page(page, uint64(i), held)
		if held {
			s.Held = append(s.Held, bytes.Clone(page))
		}
		if err := enc.WritePage(stream.Page{Offset: stream.RAMOffset(i) * dedup.PageSize, Data: page}); err != nil {
			return nil, err
		}
	}
	if err := enc.EndSection(); err != nil {
		return nil, err
	}
	if err := enc.WriteTail(tail(rng)); err != nil {
		return nil, err
	}
	if err := enc.Flush(); err != nil {
		return nil, err
	}
	s.QEMU = out.Bytes()
	return s, nil
}

// prefix is a QEMU 7.2 stream's header: magic, version and the configuration section naming the machine.
func prefix() []byte {
	b := binary.BigEndian.AppendUint32(nil, 0x5145564D) // "QEVM"
	b = binary.BigEndian.AppendUint32(b, 3)
	b = append(b, 0x07) // QEMU_VM_CONFIGURATION
	b = binary.BigEndian.AppendUint32(b, uint32(len(machine)))
	return append(b, machine...)
}

// tail stands in for the device state: one FULL section of random bytes, EOF and an empty VMDESCRIPTION.
func tail(rng *rand.Rand) []byte {
	const id, idstr = 3, "timer"
	b := append([]byte{0x04}, 0, 0, 0, id, byte(len(idstr))) // QEMU_VM_SECTION_FULL, section id, idstr
	b = append(b, idstr...)
	b = binary.BigEndian.AppendUint32(b, 0) // instance
	b = binary.BigEndian.AppendUint32(b, 2) // version
	for range deviceStateLen / 8 {
		b = binary.BigEndian.AppendUint64(b, rng.Uint64())
	}
	b = append(b, 0x7E, 0, 0, 0, id) // footer
	b = append(b, 0x00)              // QEMU_VM_EOF
	b = append(b, 0x06, 0, 0, 0, 2)  // QEMU_VM_VMDESCRIPTION, length
	return append(b, "{}"...)
}

// textWriter fills pages with text-like bytes: lines of words from a fixed vocabulary, drawn with Zipf's law over
// letters of English frequencies, as a guest's page cache or heap of strings holds them. Every page is distinct (it
// starts with its own number); zstd at its fastest level compresses such a page alone to about half, as it does the
// distinct non-zero pages of the fixture's guests (0.546, docs/benchmarks.md).
type textWriter struct {
	words [][]byte
	zipf  *rand.Zipf
	buf   []byte
}

// letters are weighted by their frequency in English text, per mille.
var letterFreq = [26]int{82, 15, 28, 43, 127, 22, 20, 61, 70, 2, 8, 40, 24, 67, 75, 19, 1, 60, 63, 91, 28, 10, 24, 2, 20, 1}

func newTextWriter(rng *rand.Rand) *textWriter {
	var letters []byte
	for i, f := range letterFreq {
		for range f {
			letters = append(letters, byte('a'+i))
		}
	}
	vocab := rand.New(rand.NewPCG(17, 4))
	tw := &textWriter{zipf: rand.NewZipf(rng, 1.1, 8, 1<<14-1)}
	for range 1 << 14 {
		w := make([]byte, 1+vocab.IntN(5)+vocab.IntN(5))
		for i := range w {
			w[i] = letters[vocab.IntN(len(letters))]
		}
		tw.words = append(tw.words, w)
	}
	return tw
}

// page fills p: its number, whether it is held (so that held and literal contents never coincide), then words.
func (tw *textWriter) page(p []byte, n uint64, held bool) {
	kind := "literal"
	if held {
		kind = "held"
	}
	b := fmt.Appendf(tw.buf[:0], "%s page %d\n", kind, n)
	col := 0
	for len(b) < len(p) {
		w := tw.words[tw.zipf.Uint64()]
		switch {
		case col+len(w) > 72:
			b, col = append(b, '\n'), 0
		case col > 0:
			b, col = append(b, ' '), col+1
		}
		b, col = append(b, w...), col+len(w)
	}
	copy(p, b[:len(p)]) // the last word may run past the page: cut it
	tw.buf = b
}
