// Command vmscatter-lab is vmscatter's development and measurement binary: `vmscatter-lab demo` boots real guests
// on network-namespace hosts and scatters them with the vmscatter binary; `vmscatter-lab bench` measures vmscatter
// against QEMU's own migration. It carries the namespace lab, tc shaping and the guest fixture, which the vmscatter
// binary installed on hosts does not; it is not installed on hosts. `vmscatter-lab --help` lists the commands.
package main

import "os"

func main() {
	os.Exit(exitCode(Run(os.Args), os.Stderr))
}
