package host

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// IfaceFor returns the name of the local interface that holds addr (the local address of a connection), so that
// multicast goes out and comes in where the control traffic does.
func IfaceFor(addr net.Addr) (string, error) {
	var ip net.IP
	switch a := addr.(type) {
	case *net.TCPAddr:
		ip = a.IP
	case *net.UDPAddr:
		ip = a.IP
	default:
		return "", fmt.Errorf("no IP in %v", addr)
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return "", err
	}
	for _, ifi := range ifs {
		addrs, _ := ifi.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				return ifi.Name, nil
			}
		}
	}
	return "", fmt.Errorf("no interface holds %v (give --iface)", ip)
}

// TxBytes reads an interface's transmitted-bytes counter.
func TxBytes(iface string) (int64, error) {
	b, err := os.ReadFile("/sys/class/net/" + iface + "/statistics/tx_bytes")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// IfaceRate measures an interface's transmit rate between start and rate, from its counters: what left the host,
// not what waited in socket buffers or what a shaper dropped.
type IfaceRate struct {
	Iface    string
	MinBytes int64         // a smaller sample measures set-up more than the link
	MinTime  time.Duration // and so does a shorter one
	at       time.Time
	tx       int64
	started  bool
}

// Start begins the sample; later calls do nothing.
func (r *IfaceRate) Start() {
	if r.started || r.Iface == "" {
		return
	}
	if tx, err := TxBytes(r.Iface); err == nil {
		r.at, r.tx, r.started = time.Now(), tx, true
	}
}

// Rate returns the rate since start in bytes per second, or 0 when the sample is too small or unreadable.
func (r *IfaceRate) Rate() float64 {
	if !r.started {
		return 0
	}
	tx, err := TxBytes(r.Iface)
	d := time.Since(r.at)
	if err != nil || tx-r.tx < r.MinBytes || d < r.MinTime {
		return 0
	}
	return float64(tx-r.tx) / d.Seconds()
}
