package bench

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	// A command name with a space and a parenthesis; utime 250, stime 50, cutime 7, cstime 3 ticks.
	line := "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 9 0 100 1000 50 18446744073709551615\n"
	self, children, err := parseStat(line)
	if err != nil {
		t.Fatal(err)
	}
	if self != 3*time.Second || children != 100*time.Millisecond {
		t.Errorf("self %v children %v, want 3s and 100ms", self, children)
	}
	for _, bad := range []string{"", "4242 qemu S 1", "4242 (qemu) S 1 2 3", "4242 (q) S 1 4242 4242 0 -1 4194560 100 0 0 0 x 50 7 3 20"} {
		if _, _, err := parseStat(bad); err == nil {
			t.Errorf("parseStat(%q) took it", bad)
		}
	}
	if _, _, err := procCPU(os.Getpid()); err != nil {
		t.Errorf("our own /proc/PID/stat: %v", err)
	}
}

// childCPU reads a running child from /proc and a reaped one from wait4's rusage; both ways work.
func TestChildCPU(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skip(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	if d := childCPU(cmd, done); d < 0 {
		t.Errorf("running child: %v", d)
	}
	cmd.Process.Kill()
	<-done
	if cmd.ProcessState == nil || childCPU(cmd, done) < 0 {
		t.Errorf("reaped child: %v", cmd.ProcessState)
	}
}

func TestParseHWM(t *testing.T) {
	status := "Name:\tvmscatter\nVmPeak:\t 2000000 kB\nVmHWM:\t  123456 kB\nVmRSS:\t  100000 kB\n"
	if n, err := parseHWM(status); err != nil || n != 123456<<10 {
		t.Fatalf("%d, %v", n, err)
	}
	for _, bad := range []string{"", "Name:\tkthreadd\n", "VmHWM:\t12 MB\n", "VmHWM:\tx kB\n"} {
		if n, err := parseHWM(bad); err == nil {
			t.Errorf("parseHWM(%q) = %d", bad, n)
		}
	}
	// This process's own peak is at least what it holds now.
	hold := make([]byte, 32<<20)
	for i := range hold {
		hold[i] = 1
	}
	if n, err := peakRSS(os.Getpid()); err != nil || n < int64(len(hold)) {
		t.Fatalf("own peak %d bytes, %v; want at least %d", n, err, len(hold))
	}
	hold[len(hold)-1] = 2
}
