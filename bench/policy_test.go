package bench

import (
	"strings"
	"testing"
	"time"
)

// The matrix's table shows the whole send's time next to the migration's, and says whether the prime ran.
func TestPolicyMarkdown(t *testing.T) {
	cfg := PolicyConfig{MemoryMiB: 128, WSS: 16 << 20, UplinkBps: 24e6, Deadline: time.Minute, Dedup: true}
	md := PolicyMarkdown([]PolicyRun{
		{Policy: "timebound", DirtyRate: 12000, Pattern: "random", Status: "migrated", TotalMS: 58400, PrimeMS: 11900,
			MigrationMS: 45100, DowntimeMS: 2100, GuestDowntimeMS: 2300, WireBytes: 150 << 20, LinkBytes: 170 << 20, Iterations: 3, GuestOK: true},
		{Policy: "precopy", DirtyRate: 12000, Pattern: "random", Status: "rolled_back", MigrationMS: 120000, GuestDowntimeMS: -1},
	}, cfg)
	for _, want := range []string{"scan, seed and prime included", "| send time | prime | migration time |", "| bytes (migration) | bytes (link) |",
		"| 12000 | random | timebound | migrated | 58.4 s | 11.9 s | 45.1 s | 2100 ms | 2300 ms | 150.0 MiB | 170.0 MiB | 3 | true |",
		"| 12000 | random | precopy | rolled_back | – | 0.0 s | 120.0 s | 0 ms | – | 0.0 MiB | – |"} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q:\n%s", want, md)
		}
	}
}
