package qemu

import (
	"encoding/json"
	"fmt"
	"strings"
)

// QEMU's option syntaxes, as the disk options use them: QemuOpts (-drive) and keyval or JSON (-blockdev).

// parseBlockdev reads a -blockdev value: JSON when it starts with '{', else keyval (key=value, ",," for a comma,
// dotted keys for nested options, a first element without '=' for the driver).
func parseBlockdev(val string) (map[string]any, error) {
	if strings.HasPrefix(strings.TrimSpace(val), "{") {
		var n map[string]any
		if err := json.Unmarshal([]byte(val), &n); err != nil {
			return nil, fmt.Errorf("-blockdev %s: %w", val, err)
		}
		return n, nil
	}
	n := map[string]any{}
	for i, kv := range splitOpts(val) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			if i != 0 {
				return nil, fmt.Errorf("-blockdev %s: %q has no value", val, kv)
			}
			k, v = "driver", kv
		}
		if err := setDotted(n, k, v); err != nil {
			return nil, fmt.Errorf("-blockdev %s: %w", val, err)
		}
	}
	return n, nil
}

// setDotted sets a.b.c=v in a tree of maps.
func setDotted(n map[string]any, key string, v string) error {
	parts := strings.Split(key, ".")
	for _, part := range parts[:len(parts)-1] {
		sub, ok := n[part].(map[string]any)
		if !ok {
			if _, exists := n[part]; exists {
				return fmt.Errorf("option %q is both a value and an object", part)
			}
			sub = map[string]any{}
			n[part] = sub
		}
		n = sub
	}
	n[parts[len(parts)-1]] = v
	return nil
}

// splitOpts splits QEMU's comma-separated options, where ",," is a comma inside a value.
func splitOpts(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			out = append(out, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(s[i])
	}
	if cur.Len() > 0 || len(out) > 0 {
		out = append(out, cur.String())
	}
	return out
}

// parseBool reads QEMU's spellings of a boolean (JSON true, on/off, yes/no, true/false).
func parseBool(v any) (value, ok bool) {
	switch v := v.(type) {
	case bool:
		return v, true
	case string:
		switch v {
		case "on", "yes", "true", "y":
			return true, true
		case "off", "no", "false", "n":
			return false, true
		}
	}
	return false, false
}
