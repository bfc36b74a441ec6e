package qemu

import "strings"

// SerialLogPath returns the file the guest's first serial port writes to (-serial file:PATH, or a -chardev file
// backend behind -serial chardev:ID), or "" when it is not a file.
func SerialLogPath(argv []string) string {
	chardevs := map[string]string{} // id -> path of file chardevs
	var serial string
	for i := 1; i+1 < len(argv); i++ {
		opt := strings.TrimPrefix(argv[i], "-")
		switch opt {
		case "-chardev", "chardev":
			parts := strings.Split(argv[i+1], ",")
			if parts[0] != "file" {
				continue
			}
			var id, path string
			for _, kv := range parts[1:] {
				if v, ok := strings.CutPrefix(kv, "id="); ok {
					id = v
				}
				if v, ok := strings.CutPrefix(kv, "path="); ok {
					path = v
				}
			}
			chardevs[id] = path
		case "-serial", "serial":
			if serial == "" {
				serial = argv[i+1]
			}
		}
	}
	if p, ok := strings.CutPrefix(serial, "file:"); ok {
		return p
	}
	if id, ok := strings.CutPrefix(serial, "chardev:"); ok {
		return chardevs[id]
	}
	return ""
}
