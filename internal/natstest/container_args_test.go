package natstest

import (
	"flag"
	"io"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// TestContainerArgsParseAsNatsServerFlags checks the container's command
// with nats-server's own flag parser, so a misspelt flag fails here, where
// no Docker engine is needed, instead of as a container that exits in CI.
func TestContainerArgsParseAsNatsServerFlags(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		node       *clusterNode
		l          listen
		wantRoutes int
	}{
		{name: "lone server", l: listen{client: 4222}},
		{name: "first node", node: &clusterNode{cluster: "c", name: "n0"}, l: listen{client: 4222, cluster: 6222}},
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
