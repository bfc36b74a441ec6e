package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// keygen writes a shared key and a host key pair that receive, send and plan load; the host-key flags go together.
func TestKeygenAndHostKeyFlags(t *testing.T) {
	dir := t.TempDir()
	if code, out, errs := run("keygen", "--out", filepath.Join(dir, "key")); code != 0 || !strings.Contains(out, "wrote") {
		t.Fatalf("keygen: exit %d %s %s", code, out, errs)
	}
	host := filepath.Join(dir, "host.key")
	code, out, errs := run("keygen", "--host", "--name", "source-1", "--out", host)
	if code != 0 || !strings.Contains(out, "source-1") {
		t.Fatalf("keygen --host: exit %d %s %s", code, out, errs)
	}
	pub, err := os.ReadFile(host + ".pub")
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(pub)), " source-1") || len(strings.Fields(string(pub))[0]) != 64 {
		t.Fatalf("host.key.pub: %q %v", pub, err)
	}
	if st, err := os.Stat(host); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("host.key mode: %v", err)
	}
	if code, _, errs := run("keygen", "--host", "--out", host); code == 0 {
		t.Fatalf("keygen --host overwrote a key: %s", errs)
	}
	if code, _, errs := run("send", "--vms", "a=/x", "--targets", "h:1", "--key-file", filepath.Join(dir, "key"), "--host-key", host); code != ExitUsage || !strings.Contains(errs, "go together") {
		t.Fatalf("--host-key alone: exit %d %s", code, errs)
	}
	if code, _, errs := run("receive", "--key-file", filepath.Join(dir, "key"), "--allow-peers", host+".pub", "--data-dir", dir); code != ExitUsage || !strings.Contains(errs, "go together") {
		t.Fatalf("--allow-peers alone: exit %d %s", code, errs)
	}
}
