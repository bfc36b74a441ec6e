// Package cliapp holds what vmscatter's commands (cmd/vmscatter, cmd/vmscatter-lab) share: the urfave/cli app
// set-up, the mapping of errors to exit codes, and the size and rate flag values.
package cliapp

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// The exit codes every command shares; a command documents these and its own in its exit.go and --help.
const (
	ExitOK    = 0 // done
	ExitError = 1 // failed; the message says why
	ExitUsage = 2 // bad command line
)

// exitError carries an exit code through urfave/cli.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// WithCode makes err end the process with code.
func WithCode(code int, err error) error { return &exitError{code: code, err: err} }

// UsageError is a bad command line: exit code ExitUsage.
func UsageError(format string, args ...any) error {
	return WithCode(ExitUsage, fmt.Errorf(format, args...))
}

// Code prints err for the operator, prefixed with the command's name prog, and maps it to the process's exit code:
// the code given with WithCode, ExitUsage for a missing required flag, ExitError for any other error.
func Code(prog string, err error, stderr io.Writer) int {
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintf(stderr, "%s: %v\n", prog, ee.err)
		}
		return ee.code
	}
	if strings.HasPrefix(err.Error(), "Required flag") { // urfave/cli's missing-flag error has no exported type
		fmt.Fprintf(stderr, "%s: %v (see --help)\n", prog, err)
		return ExitUsage
	}
	fmt.Fprintf(stderr, "%s: %v\n", prog, err)
	return ExitError
}
