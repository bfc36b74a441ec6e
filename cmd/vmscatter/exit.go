package main

import (
	"io"

	"github.com/vmscatter/vmscatter/cmd/internal/cliapp"
)

// Exit codes, documented in the README and in `vmscatter --help`. Scripts rely on them.
const (
	ExitOK         = cliapp.ExitOK    // every VM migrated
	ExitError      = cliapp.ExitError // the run could not start (configuration, receivers, inventory, placement); no VM was touched
	ExitUsage      = cliapp.ExitUsage // bad command line
	ExitRolledBack = 3                // some VMs rolled back: their sources run on at the source; safe to retry
	ExitFailed     = 4                // some VM is in a state that needs an operator (see the report's error)
)

const exitCodesHelp = `EXIT CODES:
   0  every VM migrated
   1  the run could not start (configuration, receivers, inventory, no target that can run a VM); no VM was touched
   2  bad command line
   3  some VMs rolled back: their source VMs run on at the source; safe to retry
   4  some VM needs an operator: see "error" in the report`

// withCode and usageError are cliapp's, by the names the commands here use.
var (
	withCode   = cliapp.WithCode
	usageError = cliapp.UsageError
)

// exitCode prints err for the operator and maps it to the process's exit code.
func exitCode(err error, stderr io.Writer) int { return cliapp.Code("vmscatter", err, stderr) }
