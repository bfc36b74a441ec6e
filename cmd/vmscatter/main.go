// Command vmscatter moves many live QEMU/KVM VMs from one source host to several targets at once, sending each
// distinct page of guest memory once. Run `vmscatter receive` on every target and `vmscatter send` on the source;
// `vmscatter --help` lists the commands.
package main

import "os"

func main() {
	os.Exit(exitCode(Run(os.Args), os.Stderr))
}
