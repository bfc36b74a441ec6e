package qemu

import (
	"slices"
	"strings"
)

// WithMachineType returns a copy of argv that starts the VM with machine type typ, its other machine properties
// kept. A short name such as "pc" or "q35", or no -machine at all (the default type), stands for the newest
// versioned type of the binary that reads the command line: a destination on another QEMU version must be given the
// source's concrete type ("pc-i440fx-7.2"), as libvirt does. So:
//
//   - every -machine or -M option that names a type (the first, unnamed property, or type=) names typ instead;
//   - if none names one, typ goes first in the first -machine option (QEMU merges them all);
//   - if there is none, "-machine typ" is appended.
//
// A command line whose last option lacks its value comes back unchanged: RewriteCommandLine refuses it.
func WithMachineType(argv []string, typ string) []string {
	out := slices.Clone(argv)
	if typ == "" {
		return out
	}
	first, named := -1, false
	for i := 1; i < len(out); i++ {
		name := out[i]
		if strings.HasPrefix(name, "--") {
			name = name[1:] // QEMU accepts both -opt and --opt
		}
		if !optionsWithArg[name] {
			continue
		}
		if i+1 >= len(out) {
			return slices.Clone(argv)
		}
		i++
		if name != "-machine" && name != "-M" {
			continue
		}
		if first < 0 {
			first = i
		}
		if v, ok := setMachineType(out[i], typ, false); ok {
			out[i], named = v, true
		}
	}
	switch {
	case named:
	case first >= 0:
		out[first], _ = setMachineType(out[first], typ, true)
	default:
		out = append(out, "-machine", typ)
	}
	return out
}

// setMachineType sets the type in one -machine value ("pc,accel=kvm", "type=pc,accel=kvm", "accel=kvm"), in QEMU's
// option syntax: comma-separated properties, ",," a literal comma, and a first property without "=" meaning type=.
// It reports whether the value named a type; if not, typ is put first only when add is set.
func setMachineType(val, typ string, add bool) (string, bool) {
	props := splitOptions(val)
	found := false
	for i, p := range props {
		switch {
		case i == 0 && !strings.Contains(p, "="):
			props[i], found = typ, true
		case strings.HasPrefix(p, "type="):
			props[i], found = "type="+typ, true
		}
	}
	if !found && add {
		if val == "" {
			return typ, false
		}
		props = append([]string{typ}, props...)
	}
	return strings.Join(props, ","), found
}

// splitOptions splits a QEMU option value at its single commas; ",," stays, escaped, inside its property.
func splitOptions(val string) []string {
	var props []string
	start := 0
	for i := 0; i < len(val); i++ {
		if val[i] != ',' {
			continue
		}
		if i+1 < len(val) && val[i+1] == ',' {
			i++
			continue
		}
		props = append(props, val[start:i])
		start = i + 1
	}
	return append(props, val[start:])
}
