package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// Exit codes, documented in the README and in `vmscatter --help`. Scripts rely on them.
const (
	ExitOK         = 0 // every VM migrated
	ExitError      = 1 // the run could not start (configuration, receivers, inventory); no VM was touched
	ExitUsage      = 2 // bad command line
	ExitRolledBack = 3 // some VMs rolled back: their sources run on at the source; safe to retry
	ExitFailed     = 4 // some VM is in a state that needs an operator (see the report's error)
)

const exitCodesHelp = `EXIT CODES:
   0  every VM migrated
   1  the run could not start (configuration, receivers, inventory); no VM was touched
   2  bad command line
   3  some VMs rolled back: their source VMs run on at the source; safe to retry
   4  some VM needs an operator: see "error" in the report`

// exitError carries an exit code through urfave/cli.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error { return &exitError{code: code, err: err} }

func usageError(format string, args ...any) error {
	return withCode(ExitUsage, fmt.Errorf(format, args...))
}

// exitCode prints err for the operator and maps it to the process's exit code.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil && ee.err.Error() != "" {
			fmt.Fprintln(stderr, "vmscatter:", ee.err)
		}
		return ee.code
	}
	if strings.HasPrefix(err.Error(), "Required flag") { // urfave/cli's missing-flag error has no exported type
		fmt.Fprintf(stderr, "vmscatter: %v (see --help)\n", err)
		return ExitUsage
	}
	fmt.Fprintln(stderr, "vmscatter:", err)
	return ExitError
}
