package main

import (
	"io"

	"github.com/vmscatter/vmscatter/cmd/internal/cliapp"
)

// Exit codes, documented in `vmscatter-lab --help`.
const (
	ExitOK    = cliapp.ExitOK    // the demo's guests all verified at their targets / the bench wrote its results
	ExitError = cliapp.ExitError // the run failed or could not start; the message says why
	ExitUsage = cliapp.ExitUsage // bad command line
)

const exitCodesHelp = `EXIT CODES:
   0  done: the demo's guests all run verified at their targets, or the bench wrote its results
   1  the run failed or could not start; the message says why
   2  bad command line`

// withCode and usageError are cliapp's, by the names the commands here use.
var (
	withCode   = cliapp.WithCode
	usageError = cliapp.UsageError
)

// exitCode prints err for the operator and maps it to the process's exit code.
func exitCode(err error, stderr io.Writer) int { return cliapp.Code("vmscatter-lab", err, stderr) }
