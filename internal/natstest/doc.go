// Package natstest gives a test a real NATS server with JetStream.
//
// Anything in cio-relay that acks, naks or dead-letters is tested against a
// real server, not a fake: the interesting failures (redelivery after a
// restart, a publish while the server is down) only happen in a real one.
// [Start] returns a [Server] that belongs to one test: it listens on
// 127.0.0.1 only, keeps its JetStream store on disk, and is removed by
// t.Cleanup. [Server.Restart] stops it and starts it again on the same port
// with the same store, so a test can check what survives a restart;
// [Server.Stop] leaves it down for tests of NATS-down behaviour.
//
// # Clusters
//
// [StartCluster] starts a JetStream cluster of n nodes (3 for R3 streams),
// each a [Server] with its own ports and store, and returns once a meta
// leader is elected. [Cluster.URL] lists every node for a client that fails
// over, [Cluster.ConnectTo] a client that starts on a given node;
// [Cluster.Node] gives one node to Stop, Kill and Restart; StreamLeader,
// ConsumerLeader, StepDownStream, StepDownConsumer, MoveStreamLeader and
// MoveConsumerLeader find and move the leaders, so a test can take down
// exactly the node that matters. [Server.Kill] is SIGKILL in a container
// (no leader steps down, no client is told) and a clean stop in-process,
// which has no abrupt way out: a test of a crash is only as hard as that
// on the in-process path. Node i
// routes to the nodes started before it (the others learn of it from
// them; the first routes to itself, as JetStream needs a configured
// route), so every port is picked when its node first starts.
//
// Ports are picked below the kernel's ephemeral range, which outgoing
// connections draw from: a port there could be taken by any client while
// its node is down, and the restart, which must keep the port, would fail.
//
// # Where the server runs
//
// The environment variable CIO_RELAY_NATS chooses how the servers are run
// (a cluster's nodes all the same way):
//
//   - "container": in a Docker container through testcontainers-go, with host
//     networking. The test fails if no Docker engine answers; it never falls
//     back, so CI can insist on the path it pays for.
//   - "inprocess": an embedded nats-server (github.com/nats-io/nats-server/v2)
//     in the test binary, with its store under t.TempDir().
//   - "" or "auto": the container when a Docker engine answers and the image
//     is already present locally, else in-process. Auto mode does not pull:
//     on a machine without a registry a pull would fail the test instead of
//     falling back.
//
// CIO_RELAY_NATS_IMAGE names the image for the container path (default
// nats:2.15.2, the version go.mod pins for the embedded server). .ci/run
// builds cio-relay-nats:local from the pinned module, FROM scratch, so no
// registry is needed. Where no registry is reachable, also set
// TESTCONTAINERS_RYUK_DISABLED=true: the Ryuk reaper is an image too.
//
// Every Start logs which path it took and why, with t.Logf, and each
// distinct choice is printed once per test binary on stderr, so a CI log
// shows which server the tests really ran against.
//
// The server's own log is kept out of test output unless the test fails.
package natstest
