package stream

// Records that QEMU versions after 7.2 send, for the versions this machine cannot run (8.1, 8.2, 9.x). They are
// built from reading QEMU's source:
//   - QEMU v10.0.2 (Debian's qemu_10.0.2+ds.orig.tar.xz, the source of the 10.0 build the real-QEMU tests run):
//     migration/savevm.c (enum qemu_vm_cmd, mig_cmd_args, should_validate_capability, qemu_savevm_state_setup),
//     migration/ram.c (ram_save_setup, save_zero_page, ram_load_precopy), migration/multifd.c (MultiFDInit_t,
//     multifd_recv_sync_main), migration/multifd-nocomp.c (multifd_ram_flush_and_sync), hw/virtio/virtio-mem.c, and
//     hw/core/machine.c, whose hw_compat_8_0 .. hw_compat_9_2 arrays say which stream changes the machine types of
//     8.1, 8.2, 9.0, 9.1 and 9.2 turned on;
//   - for 8.1's stray MULTIFD_FLUSH: the qemu-devel thread of October 2023 on Juan Quintela's fix "migration: Non
//     multifd migration don't care about multifd flushes" (Fixes: 294e5a4034, "multifd: Only flush once each full
//     round of memory"), whose diff against migration/ram.c shows the three places 8.1.0-8.1.2 write the record.

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

// TestCommandNumbers pins the command table to QEMU's enum qemu_vm_cmd (migration/savevm.c, v10.0.2) by number, so
// that a wrong constant cannot hide behind tests that use the constants.
func TestCommandNumbers(t *testing.T) {
	for _, c := range []struct {
		cmd     uint16
		name    string
		feature string // refused as; "" when allowed
	}{
		{3, "POSTCOPY_ADVISE", FeaturePostcopy},
		{4, "POSTCOPY_LISTEN", FeaturePostcopy},
		{5, "POSTCOPY_RUN", FeaturePostcopy},
		{6, "POSTCOPY_RAM_DISCARD", FeaturePostcopy},
		{7, "PACKAGED", FeaturePostcopy},
		{8, "ENABLE_COLO", FeatureCOLO},
		{9, "POSTCOPY_RESUME", FeaturePostcopy},
		{10, "RECV_BITMAP", FeaturePostcopy},
		{11, "SWITCHOVER_START", ""},
	} {
		if got := commandFeature(c.cmd); got != c.feature {
			t.Errorf("command %d (%s): feature %q, want %q", c.cmd, c.name, got, c.feature)
		}
		if c.feature == "" {
			continue
		}
		// Refused the same way in the prefix and between RAM sections.
		for where, in := range map[string][]byte{
			"prefix":  new(sb).header().command(c.cmd, nil).bytes(),
			"between": upToRAM().command(c.cmd, nil).bytes(),
		} {
			_, err := decodeAll(bytes.NewReader(in))
			var ue *UnsupportedError
			if !errors.As(err, &ue) || ue.Feature != c.feature {
				t.Errorf("command %d (%s) in the %s: %v, want feature %q", c.cmd, c.name, where, err, c.feature)
			}
		}
	}
	if cmdOpenReturnPath != 1 || cmdPing != 2 || cmdSwitchoverStart != 11 {
		t.Fatal("OPEN_RETURN_PATH is 1, PING 2, SWITCHOVER_START 11")
	}
}

// stream10 is a stream as a QEMU 10.0 source with machine type pc-i440fx-10.0 sends it (return-path on): after the
// last PART, the VM stops, migration_switchover_start sends SWITCHOVER_START, then qemu_savevm_state_complete_precopy
// writes END(ram) and the device state.
func stream10() []byte {
	s := new(sb).be32(streamMagic).be32(streamVersion).u8(secConfig).be32(14).raw([]byte("pc-i440fx-10.0"))
	s.command(cmdOpenReturnPath, nil).command(cmdPing, []byte{0, 0, 0, 1})
	s.ramStart(testBlocks, false)
	s.section(secPart).page("pc.ram", 0, 1).zero("", PageSize).eos()
	s.command(cmdSwitchoverStart, nil)
	s.section(secEnd).page("pc.ram", PageSize, 2).eos()
	return s.raw(testTail).bytes()
}

func TestSwitchoverStartRoundTrip(t *testing.T) {
	in := stream10()
	evs, err := decodeAll(bytes.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, ev := range evs {
		switch e := ev.(type) {
		case SwitchoverStart:
			kinds = append(kinds, "switchover")
		case SectionBegin:
			kinds = append(kinds, e.Kind.String())
		}
	}
	if want := []string{"part", "switchover", "end"}; !reflect.DeepEqual(kinds, want) {
		t.Fatalf("sections and commands %v, want %v", kinds, want)
	}
	// Every section starts with a named block here, so the encoder writes the same bytes back.
	if out := encodeAll(t, evs); !bytes.Equal(out, in) {
		t.Fatalf("re-encoded stream differs:\n%x\n%x", out, in)
	}
	// Regrouping moves pages between sections but not across SWITCHOVER_START.
	var out bytes.Buffer
	enc := NewEncoder(&out)
	must(t, enc.WriteEvent(evs[0]))
	must(t, enc.WriteEvent(evs[1]))
	must(t, enc.BeginSection(SectionKindPart))
	must(t, enc.WritePage(Page{Block: 0, Offset: 0, Data: fill(1)}))
	must(t, enc.EndSection())
	must(t, enc.BeginSection(SectionKindPart))
	must(t, enc.WritePage(Page{Block: 0, Offset: PageSize, Zero: true}))
	must(t, enc.EndSection())
	must(t, enc.WriteSwitchoverStart())
	must(t, enc.BeginSection(SectionKindEnd))
	must(t, enc.WritePage(Page{Block: 0, Offset: PageSize, Data: fill(2)}))
	must(t, enc.EndSection())
	must(t, enc.WriteTail(testTail))
	again, err := decodeAll(bytes.NewReader(out.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := again[8].(SwitchoverStart); !ok {
		t.Fatalf("event 8 is %T, want SwitchoverStart:%s", again[8], describe(again))
	}
}

func TestEncoderSwitchoverStartOrder(t *testing.T) {
	start := RAMStart{SectionID: testRAMID, VersionID: ramVersion, Blocks: testBlocks}
	ready := func() *Encoder {
		enc := NewEncoder(io.Discard)
		must(t, enc.WritePrefix(new(sb).header().bytes()))
		must(t, enc.StartRAM(start))
		return enc
	}
	for name, call := range map[string]func() error{
		"before StartRAM": func() error {
			enc := NewEncoder(io.Discard)
			must(t, enc.WritePrefix(new(sb).header().bytes()))
			return enc.WriteSwitchoverStart()
		},
		"inside a section": func() error {
			enc := ready()
			must(t, enc.BeginSection(SectionKindPart))
			return enc.WriteSwitchoverStart()
		},
		"twice": func() error {
			enc := ready()
			must(t, enc.WriteSwitchoverStart())
			return enc.WriteSwitchoverStart()
		},
		"after the tail": func() error {
			enc := ready()
			must(t, enc.WriteTail([]byte{secEOF}))
			return enc.WriteSwitchoverStart()
		},
	} {
		if err := call(); !errors.Is(err, ErrEncoderState) {
			t.Errorf("%s: %v, want ErrEncoderState", name, err)
		}
	}
	// Right after StartRAM (a migration that stops the VM before any PART) it is in order.
	if err := ready().WriteSwitchoverStart(); err != nil {
		t.Fatal(err)
	}
}

// stream81 is a stream as QEMU 8.1.0-8.1.2 send it with machine type pc-i440fx-8.1 and multifd off: the machine type
// lacks hw_compat_8_0's multifd-flush-after-each-section=on, and those versions test only that property before
// writing RAM_SAVE_FLAG_MULTIFD_FLUSH (ram.c: ram_save_setup before EOS, find_dirty_block after each full pass over
// RAM, ram_save_complete before EOS). withFlush false gives the same stream without the records.
func stream81(withFlush bool) []byte {
	flush := func(s *sb) *sb {
		if withFlush {
			s.be64(ramFlagMultifdFlush)
		}
		return s
	}
	s := new(sb).be32(streamMagic).be32(streamVersion).u8(secConfig).be32(13).raw([]byte("pc-i440fx-8.1"))
	s.startHeader(secStart, testRAMID, "ram", 0, ramVersion).be64(20*PageSize | ramFlagMemSize).
		str("pc.ram").be64(16 * PageSize).str("pc.bios").be64(4 * PageSize)
	flush(s).be64(ramFlagEOS).footer(testRAMID)
	s.section(secPart).page("pc.ram", 15*PageSize, 1).zero("pc.bios", 3*PageSize)
	flush(s).zero("pc.ram", 0).page("", PageSize, 2).eos() // a new pass starts over at the first block
	s.section(secEnd).page("pc.ram", 2*PageSize, 3)
	flush(s).eos()
	return s.raw(testTail).bytes()
}

func TestStrayMultifdFlushIsDropped(t *testing.T) {
	want, err := decodeAll(bytes.NewReader(stream81(false)))
	if err != nil {
		t.Fatal(err)
	}
	in := stream81(true)
	for name, r := range map[string]io.Reader{
		"whole":      bytes.NewReader(in),
		"small bits": &smallReader{r: bytes.NewReader(in), n: 3},
	} {
		d := NewDecoder(r)
		var evs []StreamEvent
		for {
			ev, err := d.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			switch e := ev.(type) {
			case Page:
				e.Data = bytes.Clone(e.Data)
				ev = e
			case Tail:
				ev = Tail{Raw: bytes.Clone(e.Raw)}
			}
			evs = append(evs, ev)
		}
		// The events are those of the stream without the records, Prefix.Raw and all.
		if !reflect.DeepEqual(normalize(evs), normalize(want)) {
			t.Fatalf("%s: events differ:\n%s\n---\n%s", name, describe(normalize(evs)), describe(normalize(want)))
		}
		if d.MultifdFlushes() != 3 {
			t.Fatalf("%s: %d flushes dropped, want 3", name, d.MultifdFlushes())
		}
		if d.InputOffset() != int64(len(in)) {
			t.Fatalf("%s: consumed %d of %d bytes", name, d.InputOffset(), len(in))
		}
	}
	// The encoder's output has no 0x200 record, so a QEMU 7.2 or 8.0 destination loads it too.
	out := encodeAll(t, want)
	d := NewDecoder(bytes.NewReader(out))
	for {
		if _, err := d.Next(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if d.MultifdFlushes() != 0 || len(out) != len(stream81(false)) {
		t.Fatalf("the re-encoded stream holds %d MULTIFD_FLUSH records, %d bytes", d.MultifdFlushes(), len(out))
	}
}

// TestDecodeRecordsOfUnrunVersions decodes what 8.2 and 9.x sources send that 7.2 does not, read in v10.0.2's source
// (see the top of this file).
func TestDecodeRecordsOfUnrunVersions(t *testing.T) {
	hdr := func(machine string) *sb {
		return new(sb).be32(streamMagic).be32(streamVersion).u8(secConfig).be32(uint32(len(machine))).raw([]byte(machine))
	}

	// 8.2 and later with multifd, on the main channel: no pages (they go to the multifd channels), a MULTIFD_FLUSH
	// before EOS in START (ram_save_setup via multifd_ram_flush_and_sync) and after each pass. The decoder lets the
	// main channel through; each multifd channel starts with MultiFDInit_t (be32 magic 0x11223344, be32 version 1,
	// uuid[16], u8 id, 7 + 32 reserved bytes), which the decoder refuses.
	t.Run("8.2 multifd", func(t *testing.T) {
		main := hdr("pc-i440fx-8.2").startHeader(secStart, testRAMID, "ram", 0, ramVersion).
			be64(PageSize | ramFlagMemSize).str("pc.ram").be64(PageSize).be64(ramFlagMultifdFlush).eos().
			section(secPart).be64(ramFlagMultifdFlush).eos().section(secEnd).eos().u8(secEOF).bytes()
		d := NewDecoder(bytes.NewReader(main))
		pages := 0
		for {
			ev, err := d.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := ev.(Page); ok {
				pages++
			}
		}
		if pages != 0 || d.MultifdFlushes() != 2 {
			t.Fatalf("%d pages, %d flushes", pages, d.MultifdFlushes())
		}
		channel := new(sb).be32(multifdMagic).be32(1).raw(make([]byte, 16)).u8(0).raw(make([]byte, 7+32)).bytes()
		_, err := decodeAll(bytes.NewReader(channel))
		var ue *UnsupportedError
		if !errors.As(err, &ue) || ue.Feature != FeatureMultifd {
			t.Fatalf("multifd channel: %v", err)
		}
	})

	// 9.0 and later, zero-page-detection=none (a migration parameter; machine types 9.0+ default to "multifd",
	// which on a non-multifd stream still sends ZERO records, hw_compat_8_2 keeps "legacy"): save_zero_page returns
	// at once, so zero pages come as PAGE records of 4096 zero bytes.
	t.Run("9.0 zero-page-detection none", func(t *testing.T) {
		in := hdr("pc-i440fx-9.0").ramStart(testBlocks, false).section(secEnd).page("pc.ram", 0, 0).eos().u8(secEOF).bytes()
		evs, err := decodeAll(bytes.NewReader(in))
		if err != nil {
			t.Fatal(err)
		}
		if p := evs[3].(Page); p.Zero || !bytes.Equal(p.Data, make([]byte, PageSize)) {
			t.Fatalf("page %+v", p)
		}
	})

	// 9.0 and later validate the mapped-ram capability (should_validate_capability), so configuration/capabilities
	// names it; with it, each block in the ram START section is followed by a MappedRamHeader and pages live at
	// file offsets. File migration only, refused by name.
	t.Run("9.0 mapped-ram", func(t *testing.T) {
		in := hdr("pc-i440fx-9.0").u8(secSubsection).str("configuration/capabilities").be32(1).be32(1).
			str(capMappedRAM).ramStart(testBlocks, false).bytes()
		_, err := decodeAll(bytes.NewReader(in))
		var ue *UnsupportedError
		if !errors.As(err, &ue) || ue.Feature != FeatureMappedRAM {
			t.Fatalf("got %v", err)
		}
	})

	// 9.1 removed the compress capability: RAM_SAVE_FLAG_COMPRESS_PAGE (0x100) is no longer defined in ram.h, and a
	// 9.1+ destination rejects it as an unknown combination. Sources up to 9.0 may send it; still refused.
	t.Run("9.0 compress", func(t *testing.T) {
		in := hdr("pc-i440fx-9.0").ramStart(testBlocks, false).section(secPart).be64(ramFlagCompress).bytes()
		_, err := decodeAll(bytes.NewReader(in))
		var ue *UnsupportedError
		if !errors.As(err, &ue) || ue.Feature != FeatureCompress {
			t.Fatalf("got %v", err)
		}
	})

	// 8.0 and later: a vmsd with early_setup (virtio-mem's "virtio-mem-device-early") is saved as a FULL section in
	// qemu_savevm_state_setup, before the ram START section.
	t.Run("8.2 virtio-mem early state", func(t *testing.T) {
		in := hdr("pc-i440fx-8.2").startHeader(secFull, 0, "0000:00:03.0/virtio-mem-device-early", 0, 1).bytes()
		_, err := decodeAll(bytes.NewReader(in))
		var ue *UnsupportedError
		if !errors.As(err, &ue) || ue.Feature != FeatureEarlyDevice {
			t.Fatalf("got %v", err)
		}
	})

	// 9.x with x-ignore-shared: ram_save_setup writes MEM_SIZE as ram_bytes_total_with_ignored and each block's
	// mr->addr, as 7.2 does; the capability is in configuration/capabilities.
	t.Run("9.2 x-ignore-shared", func(t *testing.T) {
		blocks := []RAMBlock{{ID: "pc.ram", Length: 2 * PageSize, Addr: 0}, {ID: "pc.bios", Length: PageSize, Addr: 0xfffc0000}}
		in := hdr("pc-i440fx-9.2").u8(secSubsection).str("configuration/capabilities").be32(1).be32(1).
			str(capIgnoreShared).ramStart(blocks, true).section(secEnd).eos().u8(secEOF).bytes()
		evs, err := decodeAll(bytes.NewReader(in))
		if err != nil {
			t.Fatal(err)
		}
		if s := evs[1].(RAMStart); !s.IgnoreShared || !reflect.DeepEqual(s.Blocks, blocks) {
			t.Fatalf("got %+v", s)
		}
	})
}
