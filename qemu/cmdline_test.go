package qemu

import (
	"reflect"
	"strings"
	"testing"
)

func TestWithMachineType(t *testing.T) {
	const typ = "pc-i440fx-7.2"
	for _, c := range []struct{ in, want string }{
		{"qemu -m 64", "qemu -m 64 -machine pc-i440fx-7.2"},
		{"qemu -machine pc -m 64", "qemu -machine pc-i440fx-7.2 -m 64"},
		{"qemu -M pc", "qemu -M pc-i440fx-7.2"},
		{"qemu --machine pc,accel=kvm", "qemu --machine pc-i440fx-7.2,accel=kvm"},
		{"qemu -machine type=pc,accel=tcg", "qemu -machine type=pc-i440fx-7.2,accel=tcg"},
		{"qemu -machine accel=kvm,type=pc,dump-guest-core=off", "qemu -machine accel=kvm,type=pc-i440fx-7.2,dump-guest-core=off"},
		// No type named: the default type, made explicit in the first -machine.
		{"qemu -machine accel=kvm -machine smm=off", "qemu -machine pc-i440fx-7.2,accel=kvm -machine smm=off"},
		{"qemu -machine accel=tcg -M pc", "qemu -machine accel=tcg -M pc-i440fx-7.2"},
		{"qemu -machine pc -machine accel=tcg", "qemu -machine pc-i440fx-7.2 -machine accel=tcg"},
		{"qemu -machine pc-i440fx-7.2,accel=kvm", "qemu -machine pc-i440fx-7.2,accel=kvm"},
		// ",," is a literal comma inside a property.
		{"qemu -machine pc,dumpdtb=/tmp/a,,b.dtb", "qemu -machine pc-i440fx-7.2,dumpdtb=/tmp/a,,b.dtb"},
		{"qemu -machine dumpdtb=/tmp/pc,,x", "qemu -machine pc-i440fx-7.2,dumpdtb=/tmp/pc,,x"},
		// Values of other options are not options, even when they look like one.
		{"qemu -name -machine -append -M", "qemu -name -machine -append -M -machine pc-i440fx-7.2"},
		{"qemu -machine", "qemu -machine"}, // broken: left for RewriteCommandLine to refuse
	} {
		in := strings.Fields(c.in)
		got := WithMachineType(in, typ)
		if want := strings.Fields(c.want); !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %q\nwant %q", c.in, got, want)
		}
		if strings.Join(in, " ") != c.in {
			t.Errorf("%s: the input was modified: %q", c.in, in)
		}
	}
	if got := WithMachineType([]string{"qemu", "-M", "pc"}, ""); !reflect.DeepEqual(got, []string{"qemu", "-M", "pc"}) {
		t.Errorf("no type: %q", got)
	}
	// An empty -machine value gets the type.
	if got := WithMachineType([]string{"qemu", "-machine", ""}, typ); !reflect.DeepEqual(got, []string{"qemu", "-machine", typ}) {
		t.Errorf("empty value: %q", got)
	}
}

func TestSplitOptions(t *testing.T) {
	for in, want := range map[string][]string{
		"":              {""},
		"pc":            {"pc"},
		"pc,accel=kvm":  {"pc", "accel=kvm"},
		"a=x,,y,b":      {"a=x,,y", "b"},
		"a=x,,,b":       {"a=x,,", "b"},
		",":             {"", ""},
		"type=pc,,q,,r": {"type=pc,,q,,r"},
	} {
		if got := splitOptions(in); !reflect.DeepEqual(got, want) {
			t.Errorf("splitOptions(%q) = %q, want %q", in, got, want)
		}
	}
}
