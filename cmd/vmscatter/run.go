package main

import (
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
	"github.com/vmscatter/vmscatter/scatter/secure"
	"github.com/vmscatter/vmscatter/scatter/source"

	"github.com/vmscatter/vmscatter/cmd/internal/cliapp"
)

// Run runs the vmscatter command line and returns the error that decides the exit code.
func Run(args []string) error {
	return newApp(os.Stdout, os.Stderr).Run(args)
}

func newApp(stdout, stderr io.Writer) *cli.App {
	return cliapp.New(&cli.App{
		Name:  "vmscatter",
		Usage: "live-migrate many QEMU/KVM VMs from one host to several, each distinct page sent once",
		Description: `On every target host run the receiver as a daemon:
     vmscatter receive --listen :7400 --data-dir /var/lib/vmscatter --key-file /etc/vmscatter/key
   On the source host move the VMs:
     vmscatter send --vms web1=/run/qemu/web1.qmp,web2=/run/qemu/web2.qmp \
                    --targets hostA:7400,hostB:7400 --key-file /etc/vmscatter/key --report run.json
   Create the shared key once with 'vmscatter keygen --out FILE' and copy it to every host (mode 0600).`,
		Commands: []*cli.Command{sendCommand(), receiveCommand(), planCommand(), recoverCommand(), statusCommand(), keygenCommand()},
		Action: func(c *cli.Context) error {
			if name := c.Args().First(); name == "demo" || name == "bench" {
				return usageError("%s is a command of vmscatter-lab, the development and measurement binary (vmscatter-lab %s --help)", name, name)
			}
			return cliapp.UnknownCommand(c)
		},
	}, stdout, stderr, exitCodesHelp)
}

// logger builds the structured logger for --log-level, writing to stderr.
func logger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageError("--log-level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

var logLevelFlag = &cli.StringFlag{Name: "log-level", Value: "info", Usage: "log detail: debug, info, warn, error"}

// parsePairs parses NAME=VALUE,NAME=VALUE lists.
func parsePairs(flag string, items []string) ([][2]string, error) {
	var out [][2]string
	seen := map[string]bool{}
	for _, item := range items {
		for _, part := range strings.Split(item, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			k, v, ok := strings.Cut(part, "=")
			if !ok || k == "" || v == "" {
				return nil, usageError("--%s: %q is not NAME=VALUE", flag, part)
			}
			if seen[k] {
				return nil, usageError("--%s: %s is given twice", flag, k)
			}
			seen[k] = true
			out = append(out, [2]string{k, v})
		}
	}
	return out, nil
}

func splitList(items []string) []string {
	var out []string
	for _, item := range items {
		for _, p := range strings.Split(item, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// baseSendConfig reads what `send` and `plan` share: the logger, the key, the VMs, the targets, the pins and the
// placement algorithm.
func baseSendConfig(c *cli.Context) (source.Config, error) {
	var cfg source.Config
	log, err := logger(c.String("log-level"), c.App.ErrWriter)
	if err != nil {
		return cfg, err
	}
	key, err := secure.LoadKey(c.String("key-file"))
	if err != nil {
		return cfg, withCode(ExitError, err)
	}
	pairs, err := parsePairs("vms", c.StringSlice("vms"))
	if err != nil {
		return cfg, err
	}
	var pinArgs []string
	for _, a := range c.StringSlice("placement") {
		if a != "auto" { // auto: the planner places every VM (the default)
			pinArgs = append(pinArgs, a)
		}
	}
	pins, err := parsePairs("placement", pinArgs)
	if err != nil {
		return cfg, err
	}
	hostKey, peers, err := loadHostKeys(c)
	if err != nil {
		return cfg, err
	}
	cfg = source.Config{Targets: splitList(c.StringSlice("targets")), Key: key, HostKey: hostKey, Peers: peers,
		Algorithm: c.String("algorithm"), Log: log}
	for _, p := range pairs {
		cfg.VMs = append(cfg.VMs, source.VMSpec{Name: p[0], QMP: p[1]})
	}
	if len(pins) > 0 {
		cfg.Placement = map[string]string{}
		for _, p := range pins {
			cfg.Placement[p[0]] = p[1]
		}
	}
	return cfg, nil
}
