package secure

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
)

// MinKeyLen is the shortest shared key accepted, in bytes.
const MinKeyLen = 16

// LoadKey reads the shared key file: hex (as `vmscatter keygen` writes it) or raw bytes, surrounding white space
// ignored. A file readable by others than its owner is refused: the key admits anyone to run QEMU on the target.
func LoadKey(path string) ([]byte, error) {
	if path == "" {
		return nil, fmt.Errorf("no key file: pass --key-file (create one with `vmscatter keygen --out FILE`)")
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w (create one with `vmscatter keygen --out %s` and copy it to every host)", err, path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key file %s is readable by group or others (mode %v): chmod 600 %s", path, st.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if k, err := hex.DecodeString(s); err == nil && len(k) >= MinKeyLen {
		return k, nil
	}
	if len(s) < MinKeyLen {
		return nil, fmt.Errorf("key file %s holds %d bytes; at least %d are needed (vmscatter keygen)", path, len(s), MinKeyLen)
	}
	return []byte(s), nil
}

// WriteNewKey creates a key file with 32 random bytes in hex, mode 0600. It refuses to overwrite a file.
func WriteNewKey(path string) error {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	if _, err := f.WriteString(hex.EncodeToString(k) + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
