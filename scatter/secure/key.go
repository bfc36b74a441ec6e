package secure

import (
	"bufio"
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// MinKeyLen is the shortest shared key accepted, in bytes (the key file holds twice as many hex digits).
const MinKeyLen = 32

// Credentials are what one side of a connection proves and accepts in the handshake.
type Credentials struct {
	// Key is the shared key, known to every host of the installation: at least MinKeyLen bytes.
	Key []byte
	// Host is this host's own key pair (`vmscatter keygen --host`); nil means the shared key alone. With it, Peers
	// must list the hosts this side accepts, and the other side must use host keys too.
	Host *HostKey
	// Peers are the public keys of the hosts this side accepts: a receiver lists its senders, a sender its receivers.
	Peers *Peers
}

// Check says what is wrong with the credentials, if anything: a short key, or host keys without peers.
func (cr Credentials) Check() error {
	if len(cr.Key) < MinKeyLen {
		return fmt.Errorf("the shared key has %d bytes, at least %d are needed: create one with `vmscatter keygen --out FILE`", len(cr.Key), MinKeyLen)
	}
	if (cr.Host == nil) != (cr.Peers == nil || cr.Peers.Len() == 0) {
		return errors.New("host keys need both this host's key (--host-key) and the peers it accepts (--allow-peers)")
	}
	return nil
}

func (cr Credentials) mode() byte {
	if cr.Host != nil {
		return modeHostKeys
	}
	return modeSharedKey
}

// LoadKey reads the shared key file: hex digits (as `vmscatter keygen` writes them) of at least MinKeyLen bytes,
// surrounding white space ignored; anything else is refused. A file readable by others than its owner is refused
// too: the key admits anyone to run QEMU on the targets.
func LoadKey(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("no key file: pass --key-file (create one with `vmscatter keygen --out FILE`)")
	}
	b, err := readPrivateFile(path, "key file")
	if err != nil {
		return nil, err
	}
	k, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(k) < MinKeyLen {
		return nil, fmt.Errorf("key file %s does not hold a key of at least %d bytes in hex: create one with `vmscatter keygen --out FILE` and copy it to every host", path, MinKeyLen)
	}
	return k, nil
}

// readPrivateFile reads a file that must be readable by its owner alone.
func readPrivateFile(path, what string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (create one with `vmscatter keygen`)", what, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s %s is readable by group or others (mode %v): chmod 600 %s", what, path, st.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return b, nil
}

// WriteNewKey creates a key file with 32 random bytes in hex, mode 0600. It refuses to overwrite a file.
func WriteNewKey(path string) error {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return err
	}
	return writeNew(path, hex.EncodeToString(k)+"\n", 0o600)
}

func writeNew(path, content string, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// HostKey is one host's X25519 key pair, its identity in handshakes with host keys.
type HostKey struct {
	Private, Public [32]byte
}

// LoadHostKey reads a host's private key file (64 hex digits, mode 0600, as `vmscatter keygen --host` writes it).
func LoadHostKey(path string) (*HostKey, error) {
	b, err := readPrivateFile(path, "host key")
	if err != nil {
		return nil, err
	}
	k, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(k) != 32 {
		return nil, fmt.Errorf("host key %s does not hold 32 bytes in hex: create one with `vmscatter keygen --host --out FILE`", path)
	}
	return hostKeyFrom(k)
}

func hostKeyFrom(priv []byte) (*HostKey, error) {
	sk, err := ecdh.X25519().NewPrivateKey(priv)
	if err != nil {
		return nil, err
	}
	h := &HostKey{Private: [32]byte(priv), Public: [32]byte(sk.PublicKey().Bytes())}
	return h, nil
}

// NewHostKey makes a fresh host key pair.
func NewHostKey() (*HostKey, error) {
	sk, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return hostKeyFrom(sk.Bytes())
}

// WriteNewHostKey creates a host key pair: the private key in path (hex, mode 0600) and the public key in path.pub
// (hex, then name, mode 0644), the line other hosts put in their --allow-peers file. It refuses to overwrite either
// file and returns the public line.
func WriteNewHostKey(path, name string) (string, error) {
	if strings.ContainsAny(name, "\n\r") {
		return "", errors.New("a host key's name is one line")
	}
	h, err := NewHostKey()
	if err != nil {
		return "", err
	}
	line := strings.TrimSpace(hex.EncodeToString(h.Public[:]) + " " + name)
	if _, err := os.Stat(path + ".pub"); err == nil {
		return "", fmt.Errorf("key file: %s.pub exists", path)
	}
	if err := writeNew(path, hex.EncodeToString(h.Private[:])+"\n", 0o600); err != nil {
		return "", err
	}
	if err := writeNew(path+".pub", line+"\n", 0o644); err != nil {
		return "", err
	}
	return line, nil
}

// Peers is an allow-list of host public keys, each with a name for the logs. It is read-only once loaded and safe
// for concurrent use.
type Peers struct {
	names map[[32]byte]string
}

// Add puts a public key on the list.
func (p *Peers) Add(pub [32]byte, name string) {
	if p.names == nil {
		p.names = map[[32]byte]string{}
	}
	p.names[pub] = name
}

// Len is the number of keys on the list.
func (p *Peers) Len() int { return len(p.names) }

// lookup returns the name of an allowed public key.
func (p *Peers) lookup(pub []byte) (string, bool) {
	if p == nil || len(pub) != 32 {
		return "", false
	}
	name, ok := p.names[[32]byte(pub)]
	if ok && name == "" {
		name = keyID(pub)
	}
	return name, ok
}

// keyID is how a public key is named when it has no name: its first 8 bytes in hex.
func keyID(pub []byte) string { return "key " + hex.EncodeToString(pub[:min(8, len(pub))]) }

// MaxPeers bounds an allow-list file.
const MaxPeers = 4096

// LoadPeers reads an allow-list file: one public key per line in hex (the .pub file `vmscatter keygen --host`
// writes), optionally followed by a name; blank lines and lines starting with # are ignored.
func LoadPeers(path string) (*Peers, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("allowed peers: %w", err)
	}
	p := &Peers{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		hexKey, name, _ := strings.Cut(line, " ")
		k, err := hex.DecodeString(hexKey)
		if err != nil || len(k) != 32 {
			return nil, fmt.Errorf("allowed peers %s line %d: not a public key (64 hex digits, then a name)", path, n)
		}
		if p.Len() >= MaxPeers {
			return nil, fmt.Errorf("allowed peers %s: more than %d keys", path, MaxPeers)
		}
		p.Add([32]byte(k), strings.TrimSpace(name))
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("allowed peers %s: %w", path, err)
	}
	if p.Len() == 0 {
		return nil, fmt.Errorf("allowed peers %s lists no key", path)
	}
	return p, nil
}
