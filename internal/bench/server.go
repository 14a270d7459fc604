package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// natsModule is the package path of the nats-server binary, built at the
// version go.mod pins.
const natsModule = "github.com/nats-io/nats-server/v2"

// findServerBinary returns a nats-server binary to start and how it was
// found: bin when given; else one built into dir from the module go.mod
// pins (the build cache makes that a link, a second or two), or, outside
// this module's tree, `go install` of the version linked into the bench;
// else the first nats-server on PATH.
func findServerBinary(ctx context.Context, bin, dir string) (string, string, error) {
	if bin != "" {
		return bin, "given", nil
	}
	var buildErr error
	if goBin, err := exec.LookPath("go"); err == nil {
		out := filepath.Join(dir, "nats-server")
		msg, err := exec.CommandContext(ctx, goBin, "build", "-o", out, natsModule).CombinedOutput()
		if err == nil {
			return out, "built from the module in go.mod", nil
		}
		buildErr = fmt.Errorf("go build %s: %w: %s", natsModule, err, strings.TrimSpace(string(msg)))
		install := exec.CommandContext(ctx, goBin, "install", natsModule+"@v"+server.VERSION)
		install.Env = append(os.Environ(), "GOBIN="+dir)
		if msg, err := install.CombinedOutput(); err == nil {
			return out, "go install " + natsModule + "@v" + server.VERSION, nil
		} else {
			buildErr = errors.Join(buildErr, fmt.Errorf("go install: %w: %s", err, strings.TrimSpace(string(msg))))
		}
	} else {
		buildErr = errors.New("no go toolchain on PATH to build it")
	}
	if p, err := exec.LookPath("nats-server"); err == nil {
		return p, "found on PATH", nil
	}
	return "", "", fmt.Errorf("no nats-server binary: %w; pass --nats-server PATH, --nats-url or --inprocess", buildErr)
}

// serverProcess is a nats-server in its own process, as a user runs it.
type serverProcess struct {
	cmd     *exec.Cmd
	url     string
	version string
	exited  chan struct{} // closed when the process has exited
	mu      sync.Mutex
	tail    []string // its latest log lines, for an error
}

// startServerProcess starts bin with JetStream file storage in storeDir on
// a port of its choosing on 127.0.0.1, and returns once its log says it is
// ready (and on which port it listens).
func startServerProcess(ctx context.Context, bin, storeDir string) (*serverProcess, error) {
	p := &serverProcess{exited: make(chan struct{})}
	if out, err := exec.CommandContext(ctx, bin, "--version").Output(); err == nil {
		p.version = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(out)), "nats-server:"))
	}
	p.cmd = exec.Command(bin, "-js", "-sd", storeDir, "-a", "127.0.0.1", "-p", "-1", "-n", "cio-relay-bench")
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	addr := make(chan string, 1)
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		var once sync.Once
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.tail = append(p.tail, line)
			if len(p.tail) > 20 {
				p.tail = p.tail[1:]
			}
			p.mu.Unlock()
			if _, a, ok := strings.Cut(line, "Listening for client connections on "); ok {
				select {
				case addr <- strings.TrimSpace(a):
				default:
				}
			}
			if strings.Contains(line, "Server is ready") {
				once.Do(func() { close(ready) })
			}
		}
	}()
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case <-ready:
	case <-p.exited:
		return nil, fmt.Errorf("nats-server exited at start: %s", p.log())
	case <-timer.C:
		p.stop()
		return nil, fmt.Errorf("nats-server not ready within 30s: %s", p.log())
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
	select {
	case a := <-addr:
		p.url = "nats://" + a
	default:
		p.stop()
		return nil, fmt.Errorf("nats-server did not say where it listens: %s", p.log())
	}
	return p, nil
}

func (p *serverProcess) pid() int { return p.cmd.Process.Pid }

func (p *serverProcess) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// stop asks the server to shut down cleanly (SIGINT) and kills it after
// 15s.
func (p *serverProcess) stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}
