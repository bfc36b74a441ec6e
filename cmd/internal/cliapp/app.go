package cliapp

import (
	"bytes"
	"io"

	"github.com/urfave/cli/v2"
)

// New completes app (its Name, Usage, Description and Commands set) with what every vmscatter command does alike:
// output to stdout and stderr, --help/-h, no version, short options, the exit codes exitHelp documents appended to
// --help, bad flags and unknown commands as usage errors, and no exiting inside urfave/cli (Code decides the exit
// code, in one place).
func New(app *cli.App, stdout, stderr io.Writer, exitHelp string) *cli.App {
	cli.HelpFlag = &cli.BoolFlag{Name: "help", Aliases: []string{"h"}, Usage: "show help"}
	app.Writer, app.ErrWriter = stdout, stderr
	app.HideVersion = true
	app.UseShortOptionHandling = true
	app.CustomAppHelpTemplate = cli.AppHelpTemplate + "\n" + exitHelp + "\n"
	app.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
		return UsageError("%v (see --help)", err)
	}
	app.ExitErrHandler = func(*cli.Context, error) {} // exit codes are decided in one place: Code
	if app.Action == nil {
		app.Action = UnknownCommand
	}
	for _, cmd := range app.Commands {
		cmd.OnUsageError = app.OnUsageError
	}
	return app
}

// UnknownCommand is the app's action: with no arguments it shows the help, with any it is a usage error (urfave/cli
// calls it when the first argument names no command).
func UnknownCommand(c *cli.Context) error {
	if !c.Args().Present() {
		return cli.ShowAppHelp(c)
	}
	return UsageError("no command %q (see --help)", c.Args().First())
}

// RunCaptured runs a command line in-process, for tests: the app newApp builds, with args after its name. It returns
// the exit code Code gives and what the app wrote to stdout and stderr.
func RunCaptured(newApp func(stdout, stderr io.Writer) *cli.App, args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	app := newApp(&out, &errb)
	err := app.Run(append([]string{app.Name}, args...))
	return Code(app.Name, err, &errb), out.String(), errb.String()
}
