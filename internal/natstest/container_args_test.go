package natstest

import (
	"flag"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// TestContainerArgsParseAsNatsServerFlags checks the container's command
// with nats-server's own flag parser, so a misspelt flag fails here, where
// no Docker engine is needed, instead of as a container that exits in CI.
//
// Neither this test nor TestContainerArgsStartAJetStreamNode runs in
// parallel: server.ConfigureOptions writes a package variable of
// nats-server's (FlagSnapshot), a data race when two tests call it at once.
func TestContainerArgsParseAsNatsServerFlags(t *testing.T) {
	tests := []struct {
		name       string
		node       *clusterNode
		l          listen
		wantRoutes int
	}{
		{name: "lone server", l: listen{client: 4222}},
		// JetStream needs a configured route: the first node routes to itself.
		{name: "first node", node: &clusterNode{cluster: "c", name: "n0"}, l: listen{client: 4222, cluster: 6222}, wantRoutes: 1},
		{name: "third node", node: &clusterNode{cluster: "c", name: "n2",
			routes: []string{"nats://127.0.0.1:6222", "nats://127.0.0.1:6223"}}, l: listen{client: 4224, cluster: 6224}, wantRoutes: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newContainerBackend(t, "img", tt.node)
			fs := flag.NewFlagSet("nats-server", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			noop := func() {}
			opts, err := server.ConfigureOptions(fs, b.args(tt.l), noop, noop, noop)
			if err != nil {
				t.Fatalf("nats-server rejects %q: %v", b.args(tt.l), err)
			}
			if !opts.JetStream || opts.Host != host || opts.Port != tt.l.client || opts.StoreDir != "/data" {
				t.Fatalf("JetStream %v, listen %s:%d, store %q; want JetStream on %s:%d in /data",
					opts.JetStream, opts.Host, opts.Port, opts.StoreDir, host, tt.l.client)
			}
			if tt.node == nil {
				if opts.Cluster.Port != 0 || opts.ServerName != "" {
					t.Fatalf("lone server has cluster port %d, name %q", opts.Cluster.Port, opts.ServerName)
				}
				return
			}
			if opts.ServerName != tt.node.name || opts.Cluster.Name != tt.node.cluster ||
				opts.Cluster.Host != host || opts.Cluster.Port != tt.l.cluster {
				t.Fatalf("name %q, cluster %q on %s:%d; want %q, %q on %s:%d", opts.ServerName, opts.Cluster.Name,
					opts.Cluster.Host, opts.Cluster.Port, tt.node.name, tt.node.cluster, host, tt.l.cluster)
			}
			if len(opts.Routes) != tt.wantRoutes {
				t.Fatalf("%d routes %v, want %d", len(opts.Routes), opts.Routes, tt.wantRoutes)
			}
		})
	}
}

// TestContainerArgsStartAJetStreamNode starts nats-server in-process with
// the options the container's command parses to (the store moved to a temp
// dir): JetStream must start, which a cluster node without a configured
// route would not do.
func TestContainerArgsStartAJetStreamNode(t *testing.T) {
	b := newContainerBackend(t, "img", &clusterNode{cluster: "c", name: "n0"})
	l, err := freePorts(b.node)
	if err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("nats-server", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	noop := func() {}
	opts, err := server.ConfigureOptions(fs, b.args(l), noop, noop, noop)
	if err != nil {
		t.Fatal(err)
	}
	opts.StoreDir, opts.NoSigs = t.TempDir(), true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	srv.SetLoggerV2(logs, false, false, false)
	srv.Start()
	defer func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	}()
	if !srv.ReadyForConnections(10*time.Second) || !srv.JetStreamEnabled() {
		t.Fatalf("nats-server %q did not start with JetStream; log:\n%s", b.args(l), logs)
	}
}
