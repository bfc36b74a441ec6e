package scatter

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// ifaceFor returns the name of the local interface that holds addr (the local address of a connection), so that
// multicast goes out and comes in where the control traffic does.
func ifaceFor(addr net.Addr) (string, error) {
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

// txBytes reads an interface's transmitted-bytes counter.
func txBytes(iface string) (int64, error) {
	b, err := os.ReadFile("/sys/class/net/" + iface + "/statistics/tx_bytes")
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// ifaceRate measures an interface's transmit rate between start and rate, from its counters: what left the host,
// not what waited in socket buffers or what a shaper dropped.
type ifaceRate struct {
	iface    string
	minBytes int64         // a smaller sample measures set-up more than the link
	minTime  time.Duration // and so does a shorter one
	at       time.Time
	tx       int64
	started  bool
}

// start begins the sample; later calls do nothing.
func (r *ifaceRate) start() {
	if r.started || r.iface == "" {
		return
	}
	if tx, err := txBytes(r.iface); err == nil {
		r.at, r.tx, r.started = time.Now(), tx, true
	}
}

// rate returns the rate since start in bytes per second, or 0 when the sample is too small or unreadable.
func (r *ifaceRate) rate() float64 {
	if !r.started {
		return 0
	}
	tx, err := txBytes(r.iface)
	d := time.Since(r.at)
	if err != nil || tx-r.tx < r.minBytes || d < r.minTime {
		return 0
	}
	return float64(tx-r.tx) / d.Seconds()
}
