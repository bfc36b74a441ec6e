package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
	"github.com/vmscatter/vmscatter/scatter/secure"
)

func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:      "keygen",
		Usage:     "create a shared key file (copy it to every host, mode 0600)",
		ArgsUsage: " ",
		Flags:     []cli.Flag{&cli.StringFlag{Name: "out", Required: true, Usage: "key file to create (never overwritten)"}},
		Action: func(c *cli.Context) error {
			if err := secure.WriteNewKey(c.String("out")); err != nil {
				return withCode(ExitError, err)
			}
			fmt.Fprintf(c.App.Writer, "wrote %s\n", c.String("out"))
			return nil
		},
	}
}
