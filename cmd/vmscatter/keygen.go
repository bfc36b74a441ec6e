package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
	"github.com/vmscatter/vmscatter/scatter/secure"
)

func keygenCommand() *cli.Command {
	return &cli.Command{
		Name:  "keygen",
		Usage: "create the shared key file, or a host key pair (--host)",
		Description: `vmscatter keygen --out /etc/vmscatter/key
   writes the shared key (copy it to every host, mode 0600).
   vmscatter keygen --host --out /etc/vmscatter/host.key [--name NAME]
   writes this host's key pair: host.key (private, mode 0600, stays here) and host.key.pub (one line: the public
   key and NAME, by default the host name). Put the sources' .pub lines in each receiver's --allow-peers file, and
   the receivers' in each source's: then a receiver admits only the sources it lists, and a stolen shared key alone
   opens no target.`,
		ArgsUsage: " ",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "out", Required: true, Usage: "key file to create (never overwritten)"},
			&cli.BoolFlag{Name: "host", Usage: "create a host key pair (FILE and FILE.pub) instead of the shared key"},
			&cli.StringFlag{Name: "name", Usage: "with --host: the name other hosts log for this key (default: the host name)"},
		},
		Action: func(c *cli.Context) error {
			out := c.String("out")
			if c.Bool("host") {
				name := c.String("name")
				if name == "" {
					name, _ = os.Hostname()
				}
				line, err := secure.WriteNewHostKey(out, name)
				if err != nil {
					return withCode(ExitError, err)
				}
				fmt.Fprintf(c.App.Writer, "wrote %s and %s.pub; its line for the peers' --allow-peers files:\n%s\n", out, out, line)
				return nil
			}
			if err := secure.WriteNewKey(out); err != nil {
				return withCode(ExitError, err)
			}
			fmt.Fprintf(c.App.Writer, "wrote %s\n", out)
			return nil
		},
	}
}

// hostKeyFlag and allowPeersFlag are the flags of `receive`, `send` and `plan` that turn on host keys.
func hostKeyFlag() cli.Flag {
	return &cli.StringFlag{Name: "host-key", Usage: "this host's private key `FILE` (vmscatter keygen --host); needs --allow-peers"}
}

func allowPeersFlag() cli.Flag {
	return &cli.StringFlag{Name: "allow-peers", Usage: "`FILE` of the peers' public keys (their .pub lines) this host accepts; needs --host-key"}
}

// loadHostKeys reads --host-key and --allow-peers: both or neither.
func loadHostKeys(c *cli.Context) (*secure.HostKey, *secure.Peers, error) {
	keyFile, peersFile := c.String("host-key"), c.String("allow-peers")
	if keyFile == "" && peersFile == "" {
		return nil, nil, nil
	}
	if keyFile == "" || peersFile == "" {
		return nil, nil, usageError("--host-key and --allow-peers go together")
	}
	h, err := secure.LoadHostKey(keyFile)
	if err != nil {
		return nil, nil, withCode(ExitError, err)
	}
	p, err := secure.LoadPeers(peersFile)
	if err != nil {
		return nil, nil, withCode(ExitError, err)
	}
	return h, p, nil
}
