package scatter

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
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
