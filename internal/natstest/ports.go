package natstest

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// Ports a test server listens on are picked below the kernel's ephemeral
// range, the range outgoing connections take their local port from. A port
// picked inside it can be taken by any client connection of any process
// while its server is down, and a restarted node that keeps its ports (as
// a cluster's must, for the others' routes to find it) would then fail to
// bind. Below the range only another listener that picks a port the same
// way can collide, and it must do so while the port is free.
const (
	// lowestPort is the bottom of the range ports are picked from: above
	// the registered ports most services listen on.
	lowestPort = 20000
	// defaultEphemeralLow is Linux's default lower bound of the ephemeral
	// range, used when /proc does not say.
	defaultEphemeralLow = 32768
	// pickAttempts bounds the random picks before falling back to a port
	// the kernel chooses.
	pickAttempts = 64
)

// ephemeralLow returns the lowest port of the kernel's ephemeral range.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return defaultEphemeralLow
	}
	fields := strings.Fields(string(b))
	if len(fields) != 2 {
		return defaultEphemeralLow
	}
	low, err := strconv.Atoi(fields[0])
	if err != nil || low <= lowestPort {
		return defaultEphemeralLow
	}
	return low
}

// freePort returns a port on 127.0.0.1 that nothing listens on right now,
// below the ephemeral range when it can. Another process may still take it
// before the server binds it; both backends retry a first start with new
// ports when that happens.
func freePort() (int, error) {
	high := ephemeralLow()
	for range pickAttempts {
		port := lowestPort + rand.IntN(high-lowestPort)
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err == nil {
			l.Close()
			return port, nil
		}
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// freePorts picks the ports of a first start: the client port, and for a
// cluster node the route port too.
func freePorts(node *clusterNode) (listen, error) {
	var l listen
	var err error
	if l.client, err = freePort(); err != nil {
		return listen{}, err
	}
	if node != nil {
		if l.cluster, err = freePort(); err != nil {
			return listen{}, err
		}
	}
	return l, nil
}
