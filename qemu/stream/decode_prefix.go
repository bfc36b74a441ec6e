package stream

import (
	"bytes"
	"encoding/binary"
)

// The stream's prefix: the header, the configuration section and the commands before RAM.

func (d *Decoder) readPrefix() (StreamEvent, error) {
	d.in.recording = true
	defer func() { d.in.recording = false }()
	hdr, err := d.take(8, "header")
	if err != nil {
		return nil, err
	}
	switch magic := binary.BigEndian.Uint32(hdr); magic {
	case streamMagic:
	case multifdMagic:
		return nil, unsupported(0, FeatureMultifd, "this connection is a multifd channel")
	default:
		return nil, malformed(0, ErrBadHeader, "magic %#08x, want %#08x (QEVM)", magic, streamMagic)
	}
	if v := binary.BigEndian.Uint32(hdr[4:]); v != streamVersion {
		return nil, malformed(4, ErrBadHeader, "version %d, want %d", v, streamVersion)
	}
	p := Prefix{}
	if err := d.readConfiguration(&p); err != nil {
		return nil, err
	}
	for {
		at := d.in.off
		if len(d.in.rec) > maxPrefix {
			return nil, malformed(at, ErrTooLong, "more than %d bytes before the ram section", maxPrefix)
		}
		t, err := d.peekByte("section type")
		if err != nil {
			return nil, err
		}
		switch t {
		case secStart:
			p.Raw = bytes.Clone(d.in.rec)
			d.state = stRAMStart
			return p, nil
		case secCommand:
			if err := d.readPrefixCommand(&p); err != nil {
				return nil, err
			}
		case secFull:
			return nil, unsupported(at, FeatureEarlyDevice, "a FULL section comes before the ram START section")
		default:
			return nil, malformed(at, ErrBadSection, "section type %#02x before the ram START section", t)
		}
	}
}

func (d *Decoder) readConfiguration(p *Prefix) error {
	at := d.in.off
	t, err := d.u8("configuration section")
	if err != nil {
		return err
	}
	if t != secConfig {
		return malformed(at, ErrBadConfiguration, "section type %#02x where the configuration section belongs", t)
	}
	n, err := d.be32("machine name length")
	if err != nil {
		return err
	}
	if n > maxMachineName {
		return malformed(at, ErrTooLong, "machine name of %d bytes (limit %d)", n, maxMachineName)
	}
	name, err := d.take(int(n), "machine name")
	if err != nil {
		return err
	}
	p.Machine = string(name)
	seen := map[string]bool{}
	for {
		t, err := d.peekByte("section type")
		if err != nil {
			return err
		}
		if t != secSubsection {
			return nil
		}
		at := d.in.off
		d.in.take(1)
		raw, err := d.counted("subsection name")
		if err != nil {
			return err
		}
		sub := string(raw)
		if seen[sub] {
			return malformed(at, ErrBadConfiguration, "subsection %q twice", sub)
		}
		seen[sub] = true
		ver, err := d.be32("subsection version")
		if err != nil {
			return err
		}
		switch sub {
		case "configuration/target-page-bits", "configuration/capabilities", "configuration/uuid":
		default:
			return malformed(at, ErrUnknownSubsection, "%q", sub)
		}
		if ver != 1 {
			return malformed(at, ErrBadConfiguration, "subsection %q version %d, want 1", sub, ver)
		}
		switch sub {
		case "configuration/target-page-bits":
			bits, err := d.be32("target page bits")
			if err != nil {
				return err
			}
			if bits != PageBits {
				return unsupported(at, FeaturePageSize, "target page bits %d, this codec handles %d", bits, PageBits)
			}
		case "configuration/capabilities":
			count, err := d.be32("capability count")
			if err != nil {
				return err
			}
			if count > maxCapabilities {
				return malformed(at, ErrTooLong, "%d capabilities (limit %d)", count, maxCapabilities)
			}
			for range count {
				c, err := d.counted("capability")
				if err != nil {
					return err
				}
				p.Capabilities = append(p.Capabilities, string(c))
				switch string(c) {
				case capIgnoreShared:
					d.ignoreShared = true
				case capMappedRAM:
					return unsupported(at, FeatureMappedRAM, "capability %q (file migration: each ram START block carries "+
						"a header and the pages live at fixed file offsets)", c)
				}
			}
		case "configuration/uuid":
			if _, err := d.take(16, "uuid"); err != nil {
				return err
			}
		}
	}
}

// commandLen is the fixed payload length of the commands allowed before RAM (mig_cmd_args in savevm.c).
var commandLen = map[uint16]uint16{cmdOpenReturnPath: 0, cmdPing: 4}

func (d *Decoder) readCommandHeader() (cmd uint16, data []byte, err error) {
	if _, err = d.take(1, "command"); err != nil {
		return
	}
	if cmd, err = d.be16("command"); err != nil {
		return
	}
	var n uint16
	if n, err = d.be16("command length"); err != nil {
		return
	}
	data, err = d.take(int(n), "command data")
	return
}

func (d *Decoder) readPrefixCommand(p *Prefix) error {
	at := d.in.off
	cmd, data, err := d.readCommandHeader()
	if err != nil {
		return err
	}
	if f := commandFeature(cmd); f != "" {
		return unsupported(at, f, "command %d", cmd)
	}
	want, ok := commandLen[cmd]
	if !ok {
		return malformed(at, ErrBadCommand, "unknown command %d", cmd)
	}
	if len(data) != int(want) {
		return malformed(at, ErrBadCommand, "command %d with %d bytes of data, want %d", cmd, len(data), want)
	}
	if cmd == cmdOpenReturnPath {
		p.ReturnPath = true
	}
	return nil
}
