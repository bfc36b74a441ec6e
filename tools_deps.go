//go:build tools

// Package vmscatter pins the project's direct dependencies before code uses them.
package vmscatter

import (
	_ "github.com/cespare/xxhash/v2"
	_ "github.com/klauspost/compress/s2"
	_ "github.com/klauspost/compress/zstd"
	_ "github.com/klauspost/reedsolomon"
	_ "github.com/urfave/cli/v2"
	_ "golang.org/x/net/ipv4"
	_ "golang.org/x/sync/errgroup"
	_ "golang.org/x/sys/unix"
)
