package natstest

import (
	"errors"
	"net"
	"strconv"
	"testing"
)

func TestFreePortIsBelowTheEphemeralRange(t *testing.T) {
	high := ephemeralLow()
	for range 20 {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		if port < lowestPort || port >= high {
			t.Fatalf("freePort() = %d, want in [%d, %d): a port an outgoing connection can take is lost to a restarted node", port, lowestPort, high)
		}
	}
}

// A node restarted on its ports while another process holds one (here the
// route port, the failure CI saw) must fail at once with errBind, not wait
// out startTimeout while its peers keep waiting for a route.
func TestInProcessRestartOnATakenPortFailsAtOnce(t *testing.T) {
	b := newInProcessBackend(t.TempDir(), &clusterNode{cluster: clusterName, name: "n0"})
	l, err := b.start(t.Context())
	if err != nil {
		t.Fatalf("first start: %v", err)
	}
	if err := b.stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(l.cluster)))
	if err != nil {
		t.Fatalf("taking the route port %d: %v", l.cluster, err)
	}
	defer taken.Close()

	_, err = b.start(t.Context())
	if !errors.Is(err, errBind) {
		t.Fatalf("restart with route port %d taken: err = %v, want errBind", l.cluster, err)
	}
	if b.srv != nil {
		t.Fatal("the failed server was kept")
	}
	taken.Close()
	if _, err := b.start(t.Context()); err != nil {
		t.Fatalf("restart once the port is free: %v", err)
	}
	defer b.stop(t.Context())
}
