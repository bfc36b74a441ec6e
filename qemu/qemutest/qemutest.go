// Package qemutest finds the QEMU binaries that tests run against. It is for tests only: it imports testing.
package qemutest

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/vmscatter/vmscatter/qemu/qmp"
)

// Require returns the path of qemu-system-x86_64, or skips the test with a reason when QEMU is not installed.
func Require(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed (make deps installs it)")
	}
	return bin
}

// DialWhenReady connects to a QMP socket that a QEMU just started is about to create, failing the test when ctx
// ends first.
func DialWhenReady(ctx context.Context, t testing.TB, sock string) *qmp.Client {
	t.Helper()
	for {
		if _, err := os.Stat(sock); err == nil {
			q, err := qmp.Dial(ctx, sock)
			if err == nil {
				return q
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("QMP socket %s never answered", sock)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ReadFile reads a file or fails the test.
func ReadFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
