package virt

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// A domain as libvirt 9.0's dumpxml prints it for the lab's guests (shortened).
const labDomainXML = `<domain type='qemu' id='1'>
  <name>lv1</name>
  <uuid>5f0c3c35-7b1e-4a57-9d2f-6a5b3c1e2d11</uuid>
  <memory unit='KiB'>131072</memory>
  <currentMemory unit='KiB'>131072</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>/root/.cache/vmscatter/fixture/vmlinuz</kernel>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source file='/srv/shared/lv1/disk.qcow2' index='1'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='network' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source protocol='nbd' name='iso'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
      <shareable/>
    </disk>
  </devices>
</domain>`

func TestParseDomain(t *testing.T) {
	d, err := ParseDomain([]byte(labDomainXML))
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "lv1" || d.Type != "qemu" || d.MemoryKB != 131072 || d.VCPUs != 1 || d.Machine != "pc-i440fx-7.2" ||
		d.Emulator != "/usr/bin/qemu-system-x86_64" || d.UUID != "5f0c3c35-7b1e-4a57-9d2f-6a5b3c1e2d11" {
		t.Fatalf("%+v", d)
	}
	if len(d.Disks) != 2 {
		t.Fatalf("disks %+v", d.Disks)
	}
	want := Disk{Type: "file", Device: "disk", Format: "qcow2", Source: "/srv/shared/lv1/disk.qcow2", Target: "vda"}
	if d.Disks[0] != want {
		t.Errorf("disk 0 %+v, want %+v", d.Disks[0], want)
	}
	if c := d.Disks[1]; c.Source != "iso" || !c.ReadOnly || !c.Shareable || c.Type != "network" {
		t.Errorf("disk 1 %+v", c)
	}
}

func TestParseDomainMemoryUnits(t *testing.T) {
	for _, c := range []struct {
		unit, value string
		kb          int64
	}{{"KiB", "4", 4}, {"MiB", "128", 128 << 10}, {"GiB", "2", 2 << 20}, {"bytes", "1048576", 1024}, {"", "7", 7}} {
		d, err := ParseDomain([]byte("<domain><name>x</name><memory unit='" + c.unit + "'>" + c.value + "</memory></domain>"))
		if err != nil || d.MemoryKB != c.kb {
			t.Errorf("%s %s: %d KiB, %v; want %d", c.value, c.unit, d.MemoryKB, err, c.kb)
		}
	}
	for _, bad := range []string{
		"<domain><name>x</name><memory unit='parsec'>1</memory></domain>",
		"<domain><name>x</name><memory>-1</memory></domain>",
		"<domain><name>x</name><memory unit='TiB'>99999999999999</memory></domain>",
		"<domain><memory>1</memory></domain>",
		"<domain><name>x</name><vcpu>many</vcpu></domain>",
		"not xml",
	} {
		if _, err := ParseDomain([]byte(bad)); !errors.Is(err, ErrParse) {
			t.Errorf("%q: %v, want ErrParse", bad, err)
		}
	}
}

func TestParseState(t *testing.T) {
	for in, want := range map[string]State{"running\n\n": StateRunning, "shut off\n": StateShutOff, " paused ": StatePaused} {
		if got, err := ParseState(in); err != nil || got != want {
			t.Errorf("%q: %q, %v", in, got, err)
		}
	}
	if _, err := ParseState("\n"); !errors.Is(err, ErrParse) {
		t.Errorf("empty: %v", err)
	}
}

// domjobinfo as libvirt 9.0 prints it, under way on the source and completed on the destination.
const jobUnderWay = `Job type:         Unbounded
Operation:        Outgoing migration
Time elapsed:     2158         ms
Data processed:   20.432 MiB
Data remaining:   96.810 MiB
Data total:       128.000 MiB
Memory processed: 20.432 MiB
Memory total:     128.000 MiB
`

const jobCompleted = `Job type:         Completed
Operation:        Incoming migration
Time elapsed:     10788        ms
Time elapsed w/o network: 10780        ms
Total downtime:   586          ms
Downtime w/o network: 578          ms
`

func TestParseJobInfo(t *testing.T) {
	j := ParseJobInfo(jobUnderWay)
	if j.Type != "Unbounded" || j.Operation != "Outgoing migration" || j.ElapsedMS != 2158 || j.DowntimeMS != -1 ||
		j.DataProcessed != 21424504 || j.MemoryTotal != 128<<20 {
		t.Errorf("under way: %+v", j)
	}
	j = ParseJobInfo(jobCompleted)
	if j.Type != "Completed" || j.DowntimeMS != 586 || j.ElapsedMS != 10788 || j.DataProcessed != -1 {
		t.Errorf("completed: %+v", j)
	}
	if j := ParseJobInfo("Job type: None\n"); j.Type != "None" || j.DowntimeMS != -1 {
		t.Errorf("none: %+v", j)
	}
}

func TestMigrateArgs(t *testing.T) {
	o := MigrateOptions{DestURI: "qemu+tls://b.example/system", Socket: "/run/vmscatter/0123456789abcdef/web1.sock", AutoConverge: true,
		Timeout: 90 * time.Second}
	args, err := MigrateArgs("web1", o)
	if err != nil {
		t.Fatal(err)
	}
	want := "migrate --live --p2p --persistent --undefinesource --auto-converge --timeout 90 --timeout-suspend --domain web1 " +
		"--desturi qemu+tls://b.example/system --migrateuri unix:///run/vmscatter/0123456789abcdef/web1.sock"
	if got := strings.Join(args, " "); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	for name, bad := range map[string]MigrateOptions{
		"parallel":   {Parallel: true},
		"compressed": {Compressed: true},
		"postcopy":   {Postcopy: true},
		"copy":       {CopyStore: true},
		"tunnelled":  {Tunnelled: true},
		"no uri":     {Socket: o.Socket},
		"no socket":  {DestURI: o.DestURI},
		"elsewhere":  {DestURI: o.DestURI, Socket: "/tmp/web1.sock"},
		"dotdot":     {DestURI: o.DestURI, Socket: "/run/vmscatter/../libvirt/libvirt-sock"},
		"long":       {DestURI: o.DestURI, Socket: "/run/vmscatter/" + strings.Repeat("x", 100) + ".sock"},
	} {
		if _, err := MigrateArgs("web1", bad); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: %v, want ErrRefused", name, err)
		}
	}
}

// FuzzParseDomain: any input gives a domain or ErrParse, never a panic; a parsed domain's figures are sane.
func FuzzParseDomain(f *testing.F) {
	f.Add([]byte(labDomainXML))
	f.Add([]byte("<domain><name>x</name><memory unit='GiB'>1</memory><vcpu>2</vcpu></domain>"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := ParseDomain(b)
		if err != nil {
			if !errors.Is(err, ErrParse) {
				t.Fatalf("error %v is not ErrParse", err)
			}
			return
		}
		if d.Name == "" || d.MemoryKB < 0 || d.VCPUs < 0 {
			t.Fatalf("%+v", d)
		}
	})
}

// FuzzParseJobInfo: any listing parses; every figure is -1 (absent) or non-negative, and a listing that
// ParseKeyValues reads back the same way gives the same JobInfo (the round trip through the key-value form).
func FuzzParseJobInfo(f *testing.F) {
	f.Add(jobUnderWay)
	f.Add(jobCompleted)
	f.Fuzz(func(t *testing.T, s string) {
		j := ParseJobInfo(s)
		if j.ElapsedMS < 0 || j.DowntimeMS < -1 || j.DataProcessed < -1 || j.MemoryTotal < -1 {
			t.Fatalf("%+v", j)
		}
		var b strings.Builder
		for k, v := range ParseKeyValues(s) {
			b.WriteString(k + ": " + v + "\n")
		}
		if j2 := ParseJobInfo(b.String()); j2 != j {
			t.Fatalf("round trip: %+v, then %+v", j, j2)
		}
	})
}
