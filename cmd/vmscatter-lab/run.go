package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/vmscatter/vmscatter/cmd/internal/cliapp"
)

// Run runs the vmscatter-lab command line and returns the error that decides the exit code.
func Run(args []string) error {
	return newApp(os.Stdout, os.Stderr).Run(args)
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return cliapp.New(&cli.App{
		Name:  "vmscatter-lab",
		Usage: "vmscatter's development and measurement lab: real guests on network-namespace hosts (needs root)",
		Description: `For development and measurement only; hosts run the vmscatter binary, not this one. Both commands
   build a lab of network namespaces on this machine (a source host and target hosts), boot guests from the
   fixture under TCG and move them with the vmscatter binary: 'vmscatter receive' on the targets, 'vmscatter send'
   on the source. That binary is --vmscatter, else the vmscatter next to vmscatter-lab (make build puts both in
   bin/), else the one on $PATH.
     vmscatter-lab demo --dir out/demo                  # what 'make demo' runs
     vmscatter-lab bench --quick --out out/bench-quick  # does the bench work? ('make bench-quick')
     vmscatter-lab bench --out out/bench                # side by side with QEMU's own migration (docs/benchmarks.md)`,
		Commands: []*cli.Command{demoCommand(), benchCommand()},
	}, stdout, stderr, exitCodesHelp)
}

// vmscatterFlag names the vmscatter binary the lab's hosts run.
var vmscatterFlag = &cli.StringFlag{Name: "vmscatter", TakesFile: true,
	Usage: "the vmscatter `binary` the lab's hosts run (default: the vmscatter next to vmscatter-lab, else the one on $PATH)"}

// vmscatterBin is the absolute path of the vmscatter binary the lab's hosts run (the namespaces' commands need it
// absolute): --vmscatter, else vmscatter next to this executable, else vmscatter on PATH.
func vmscatterBin(c *cli.Context) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", withCode(ExitError, err)
	}
	bin, err := findVmscatter(c.String(vmscatterFlag.Name), filepath.Dir(self))
	if err != nil {
		return "", withCode(ExitError, err)
	}
	return bin, nil
}

func findVmscatter(given, selfDir string) (string, error) {
	path := given
	if path != "" {
		if !isExecutable(path) {
			return "", fmt.Errorf("--vmscatter %s: not an executable file", path)
		}
	} else if path = filepath.Join(selfDir, "vmscatter"); !isExecutable(path) {
		var err error
		if path, err = exec.LookPath("vmscatter"); err != nil {
			return "", errors.New("no vmscatter binary next to vmscatter-lab or on PATH: run 'make build' or give --vmscatter FILE")
		}
	}
	return filepath.Abs(path)
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}
