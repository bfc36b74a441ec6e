package qemu

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// optList is one QEMU option value in either of QEMU's syntaxes: QemuOpts ("tap,id=n0,script=no": a leading
// positional value, then key=value pairs, ",," for a comma inside a value) or JSON ("{"driver": "file", ...}", which
// -device, -object, -blockdev, -netdev and -audiodev accept). JSON objects are flattened to dotted keys
// ("file.filename"), so both syntaxes are checked by the same rules.
type optList struct {
	implied string // the positional first value ("tap", "virtio-net-pci"); "" if none
	kvs     []optKV
	json    map[string]any // non-nil when the value was JSON
}

type optKV struct{ key, val string }

// parseOpts parses one option value. implied names the key of a positional first value ("type", "driver",
// "qom-type", "backend"); with JSON that key is read from the object instead.
func parseOpts(val, implied string) (*optList, error) {
	if strings.HasPrefix(strings.TrimSpace(val), "{") {
		var m map[string]any
		if err := json.Unmarshal([]byte(val), &m); err != nil {
			return nil, fmt.Errorf("JSON value does not parse: %v", err)
		}
		o := &optList{json: m}
		flattenJSON("", m, &o.kvs)
		if implied != "" {
			if v, ok := m[implied].(string); ok {
				o.implied = v
			}
		}
		return o, nil
	}
	o := &optList{}
	for i, part := range splitOptValue(val) {
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			if i == 0 && implied != "" {
				o.implied = part
				continue
			}
			// A bare key is a boolean flag ("server", "nowait"): QEMU reads it as key=on.
			v = "on"
		}
		if implied != "" && k == implied && ok {
			o.implied = v
			continue
		}
		o.kvs = append(o.kvs, optKV{k, v})
	}
	return o, nil
}

// splitOptValue splits a QemuOpts value at single commas; ",," is a literal comma.
func splitOptValue(val string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(val); i++ {
		if val[i] == ',' {
			if i+1 < len(val) && val[i+1] == ',' {
				cur.WriteByte(',')
				i++
				continue
			}
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(val[i])
	}
	return append(parts, cur.String())
}

func flattenJSON(prefix string, v any, out *[]optKV) {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			name := k
			if prefix != "" {
				name = prefix + "." + k
			}
			flattenJSON(name, x[k], out)
		}
	case []any:
		for i, e := range x {
			flattenJSON(prefix+"."+strconv.Itoa(i), e, out)
		}
	case string:
		*out = append(*out, optKV{prefix, x})
	case bool:
		*out = append(*out, optKV{prefix, map[bool]string{true: "on", false: "off"}[x]})
	case nil:
		*out = append(*out, optKV{prefix, ""})
	default:
		*out = append(*out, optKV{prefix, fmt.Sprint(x)})
	}
}

// get returns the value of key (the last one, as QEMU takes it).
func (o *optList) get(key string) (string, bool) {
	v, found := "", false
	for _, kv := range o.kvs {
		if kv.key == key {
			v, found = kv.val, true
		}
	}
	return v, found
}

// set sets key to val, replacing every earlier value, and returns the option value in its original syntax (a
// positional first value stays positional).
func (o *optList) set(key, val string) string {
	if o.json != nil {
		o.json[key] = val
		b, _ := json.Marshal(o.json)
		return string(b)
	}
	kept := o.kvs[:0]
	for _, kv := range o.kvs {
		if kv.key != key {
			kept = append(kept, kv)
		}
	}
	o.kvs = append(kept, optKV{key, val})
	var parts []string
	if o.implied != "" {
		parts = append(parts, escapeOpt(o.implied))
	}
	for _, kv := range o.kvs {
		parts = append(parts, kv.key+"="+escapeOpt(kv.val))
	}
	return strings.Join(parts, ",")
}

func escapeOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }
