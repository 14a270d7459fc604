package natstest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/wait"
)

// probeTimeout bounds the check for a Docker engine. A local engine answers
// in milliseconds; a socket whose daemon hangs must not stall every test.
const probeTimeout = 5 * time.Second

// containerLabel marks the containers this package starts, so that a CI
// run can remove any that a killed test binary left behind.
const containerLabel = "io.cio-relay.natstest"

// startAttempts is how many ports the first start of a container tries. The
// port is picked before the container binds it, so another process can take
// it in between; the container then exits at once and a new port is tried.
const startAttempts = 3

var errExited = errors.New("container exited")

// probeDocker reports whether a Docker engine answers, once per process,
// the way testcontainers-go finds it (DOCKER_HOST, docker context,
// ~/.testcontainers.properties, the default socket, ...).
var probeDocker = sync.OnceValues(func() (engine string, err error) {
	// testcontainers-go panics in some discovery paths instead of returning
	// an error; either way, there is no engine to use.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("docker discovery panicked: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return "", fmt.Errorf("testcontainers-go found none (tried DOCKER_HOST, docker context, ~/.testcontainers.properties, /var/run/docker.sock, rootless socket): %w", err)
	}
	defer cli.Close()
	info, err := cli.Info(ctx, client.InfoOptions{})
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("Docker engine %s at %s (API %s)", info.Info.ServerVersion, cli.DaemonHost(), cli.ClientVersion()), nil
})

// imagePresent reports whether image is in the local image store.
func imagePresent(image string) error {
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	if _, err := cli.ImageInspect(ctx, image); err != nil {
		if errdefs.IsNotFound(err) {
			return errors.New("not found")
		}
		return err
	}
	return nil
}

// containerBackend runs nats-server in a container with host networking.
//
// Host networking keeps the URL the same for both backends and across a
// restart: a published port would be remapped when the container starts
// again, and the engine here runs without a bridge network.
type containerBackend struct {
	t        testing.TB
	image    string
	node     *clusterNode // nil for a lone server
	listen   listen
	ctr      *testcontainers.DockerContainer
	provider *testcontainers.DockerProvider
	lastLog  string // log of the last container that failed to start
}

func newContainerBackend(t testing.TB, image string, node *clusterNode) *containerBackend {
	return &containerBackend{t: t, image: image, node: node}
}

func (b *containerBackend) start(ctx context.Context) (listen, error) {
	if b.ctr != nil {
		// The same container keeps its filesystem, and so the JetStream
		// store, across stop and start. Start runs the wait strategy again.
		if err := b.ctr.Start(ctx); err != nil {
			return listen{}, fmt.Errorf("starting container %s again: %w", shortID(b.ctr), err)
		}
		return b.listen, nil
	}

	var errs []error
	for range startAttempts {
		l, err := freePorts(b.node)
		if err != nil {
			return listen{}, err
		}
		ctr, err := b.run(ctx, l)
		if err == nil {
			b.ctr, b.listen = ctr, l
			return l, nil
		}
		errs = append(errs, fmt.Errorf("ports %s: %w", l, err))
		if ctr != nil {
			b.lastLog = containerLog(ctx, ctr)
			if termErr := ctr.Terminate(ctx); termErr != nil {
				errs = append(errs, fmt.Errorf("removing failed container: %w", termErr))
			}
		}
		if !errors.Is(err, errExited) {
			break
		}
	}
	return listen{}, fmt.Errorf("running image %s: %w", b.image, errors.Join(errs...))
}

// args are nats-server's arguments for a server listening on l.
func (b *containerBackend) args(l listen) []string {
	args := []string{"-js", "-a", host, "-p", strconv.Itoa(l.client), "-sd", "/data"}
	if n := b.node; n != nil {
		args = append(args, "--server_name", n.name, "--cluster_name", n.cluster,
			"--cluster", "nats://"+net.JoinHostPort(host, strconv.Itoa(l.cluster)))
		args = append(args, "--routes", strings.Join(n.routesFor(l.cluster), ","))
	}
	return args
}

func (b *containerBackend) run(ctx context.Context, l listen) (*testcontainers.DockerContainer, error) {
	if b.provider == nil {
		// Naming host as the default network stops testcontainers-go from
		// attaching its own: without a "bridge" network (the engine may run
		// with --bridge=none) it would create a bridge network named
		// reaper_default, and host networking cannot be combined with any
		// other network.
		p, err := testcontainers.NewDockerProvider(
			testcontainers.WithLogger(tclog.TestLogger(b.t)),
			testcontainers.WithDefaultBridgeNetwork(network.NetworkHost),
		)
		if err != nil {
			return nil, fmt.Errorf("connecting to Docker: %w", err)
		}
		b.provider = p
	}

	url := "nats://" + net.JoinHostPort(host, strconv.Itoa(l.client))
	// A lone server is ready when JetStream answers; a cluster node when it
	// takes clients, as JetStream needs a meta leader, and so the other
	// nodes (see StartCluster).
	what, probe := "JetStream at "+url, func(ctx context.Context) error { return pingJetStream(ctx, url) }
	if b.node != nil {
		what, probe = "clients at "+url, func(ctx context.Context) error { return pingClient(ctx, url) }
	}
	ready := wait.ForNop(func(ctx context.Context, target wait.StrategyTarget) error {
		return waitReady(ctx, what, probe, func(ctx context.Context) error {
			state, err := target.State(ctx)
			if err != nil {
				return fmt.Errorf("inspecting container: %w", err)
			}
			if !state.Running {
				return fmt.Errorf("%w: status %s, exit code %d", errExited, state.Status, state.ExitCode)
			}
			return nil
		})
	})
	ctr, err := b.provider.RunContainer(ctx, testcontainers.ContainerRequest{
		Image: b.image,
		// The image's entrypoint is nats-server (ours is FROM scratch, with
		// no shell), so these are its arguments.
		Cmd: b.args(l),
		HostConfigModifier: func(hc *container.HostConfig) {
			hc.NetworkMode = network.NetworkHost
		},
		Labels: map[string]string{containerLabel: "true"},
		// "Server is ready" in the log would do for the first start, but
		// after a restart the old line is still in the log. Connecting and
		// asking JetStream works for both, and runs again on every Start.
		WaitingFor: ready,
	})
	dc, _ := ctr.(*testcontainers.DockerContainer)
	return dc, err
}

func (b *containerBackend) stop(ctx context.Context) error {
	timeout := stopTimeout
	if err := b.ctr.Stop(ctx, &timeout); err != nil {
		return fmt.Errorf("stopping container %s: %w", shortID(b.ctr), err)
	}
	return nil
}

// kill sends SIGKILL and waits until the container has exited. Its
// filesystem, and so the JetStream store, stays for the next start.
func (b *containerBackend) kill(ctx context.Context) error {
	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return fmt.Errorf("connecting to Docker: %w", err)
	}
	defer cli.Close()
	if _, err := cli.ContainerKill(ctx, b.ctr.GetContainerID(), client.ContainerKillOptions{Signal: "KILL"}); err != nil {
		return fmt.Errorf("killing container %s: %w", shortID(b.ctr), err)
	}
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		state, err := b.ctr.State(ctx)
		if err != nil {
			return fmt.Errorf("inspecting container %s: %w", shortID(b.ctr), err)
		}
		if !state.Running {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("container %s still running after SIGKILL: %w", shortID(b.ctr), ctx.Err())
		case <-tick.C:
		}
	}
}

func (b *containerBackend) remove(ctx context.Context) error {
	var errs []error
	if b.ctr != nil {
		errs = append(errs, b.ctr.Terminate(ctx))
		b.ctr = nil
	}
	if b.provider != nil {
		errs = append(errs, b.provider.Close())
		b.provider = nil
	}
	return errors.Join(errs...)
}

func (b *containerBackend) log(ctx context.Context) string {
	if b.ctr == nil {
		return b.lastLog
	}
	return containerLog(ctx, b.ctr)
}

func containerLog(ctx context.Context, ctr *testcontainers.DockerContainer) string {
	rc, err := ctr.Logs(ctx)
	if err != nil {
		return fmt.Sprintf("(reading container log: %v)", err)
	}
	defer rc.Close()
	out, err := io.ReadAll(io.LimitReader(rc, maxLogBytes))
	if err != nil {
		return fmt.Sprintf("%s\n(reading container log: %v)", out, err)
	}
	return string(out)
}

func shortID(ctr *testcontainers.DockerContainer) string {
	id := ctr.GetContainerID()
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
