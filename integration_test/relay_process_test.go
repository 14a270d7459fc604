package integration_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestMain removes the cio-relay binary the tests built, if any.
func TestMain(m *testing.M) {
	code := m.Run()
	if relayBuild.dir != "" {
		_ = os.RemoveAll(relayBuild.dir)
	}
	os.Exit(code)
}

// relayBuild is the cio-relay binary, built once per test binary by the
// first test that runs it.
var relayBuild struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// relayBinary builds ./cmd/cio-relay once and returns its path.
func relayBinary(t *testing.T) string {
	t.Helper()
	relayBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "cio-relay-bin-")
		if err != nil {
			relayBuild.err = err
			return
		}
		relayBuild.dir = dir
		goTool, err := exec.LookPath("go")
		if err != nil {
			relayBuild.err = fmt.Errorf("the go command is needed to build cio-relay: %w", err)
			return
		}
		path := filepath.Join(dir, "cio-relay")
		began := time.Now()
		cmd := exec.Command(goTool, "build", "-buildvcs=false", "-o", path, "github.com/cio-relay/cio-relay/cmd/cio-relay")
		if out, err := cmd.CombinedOutput(); err != nil {
			relayBuild.err = fmt.Errorf("go build ./cmd/cio-relay: %w\n%s", err, out)
			return
		}
		relayBuild.path = path
		fmt.Fprintf(os.Stderr, "integration_test: built cio-relay in %v\n", time.Since(began).Round(time.Millisecond))
	})
	if relayBuild.err != nil {
		t.Fatal(relayBuild.err)
	}
	return relayBuild.path
}

// relayEnv is the environment of a cio-relay process delivering from natsURL
// to cdpURL with the API key in keyFile: JSON logs, metrics and health on a
// port of its choosing, and failure handling in milliseconds. extra adds or
// overrides settings.
func relayEnv(natsURL, cdpURL, keyFile string, extra map[string]string) map[string]string {
	env := map[string]string{
		"NATS_URL":                     natsURL,
		"CIO_CDP_URL":                  cdpURL,
		"CIO_CDP_API_KEY_FILE":         keyFile,
		"RELAY_HTTP_ADDR":              "127.0.0.1:0",
		"RELAY_LOG_FORMAT":             "json",
		"RELAY_LOG_LEVEL":              "info",
		"RELAY_ACK_WAIT":               "5s",
		"RELAY_FLUSH_INTERVAL":         "20ms",
		"RELAY_NAK_DELAY":              "50ms",
		"RELAY_RETRY_INITIAL_INTERVAL": "10ms",
		"RELAY_RETRY_MAX_INTERVAL":     "100ms",
		"RELAY_SHUTDOWN_TIMEOUT":       "5s",
	}
	for k, v := range extra {
		env[k] = v
	}
	return env
}

// relayProc is one cio-relay process.
type relayProc struct {
	name string
	cmd  *exec.Cmd
	logs *logLines
	done chan struct{} // closed once the process has exited
	err  error         // Wait's result, once done
	addr string        // host:port of /metrics, /healthz and /readyz
}

// startRelay starts cio-relay with exactly env (nothing is inherited, so a
// RELAY_ or NATS_ variable of the test's own environment cannot leak in) and
// returns once it consumes: bound to its consumer, with its HTTP listener
// up. The process is killed when the test ends; if the test failed, its log
// is shown.
func startRelay(t *testing.T, name string, env map[string]string) *relayProc {
	t.Helper()
	cmd := exec.Command(relayBinary(t))
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &relayProc{name: name, cmd: cmd, logs: newLogLines(), done: make(chan struct{})}
	out, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr // nothing is written there unless dry-running
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting cio-relay: %v", err)
	}
	go func() {
		p.logs.read(out)
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill(t)
		if t.Failed() {
			t.Logf("cio-relay %s (pid %d, %v) log, last lines:\n%s", p.name, cmd.Process.Pid, p.err, p.logs.tail(150))
		}
	})

	ready := p.waitLog(t, 60*time.Second, "serving metrics and health")
	p.addr, _ = ready["addr"].(string)
	if p.addr == "" {
		t.Fatalf("cio-relay %s: no addr in %v", name, ready)
	}
	p.waitLog(t, 60*time.Second, "consuming")
	return p
}

// kill sends SIGKILL, as a node failure or the OOM killer would, and waits
// for the process to be gone.
func (p *relayProc) kill(t *testing.T) {
	t.Helper()
	select {
	case <-p.done:
		return
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("killing cio-relay %s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Errorf("cio-relay %s still running 30s after SIGKILL", p.name)
	}
}

// stop sends SIGTERM and returns the exit code once the process is gone.
func (p *relayProc) stop(t *testing.T, timeout time.Duration) int {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("signalling cio-relay %s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("cio-relay %s did not exit within %v of SIGTERM", p.name, timeout)
	}
	return p.cmd.ProcessState.ExitCode()
}

// waitLog waits for a log record whose msg is msg and returns it. It fails
// the test if the process exits first or timeout passes.
func (p *relayProc) waitLog(t *testing.T, timeout time.Duration, msg string) map[string]any {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		rec, changed := p.logs.find(msg)
		if rec != nil {
			return rec
		}
		select {
		case <-changed:
		case <-p.done:
			if rec, _ := p.logs.find(msg); rec != nil {
				return rec
			}
			t.Fatalf("cio-relay %s exited (%v) before logging %q", p.name, p.err, msg)
		case <-deadline.C:
			t.Fatalf("cio-relay %s did not log %q within %v", p.name, msg, timeout)
		}
	}
}

// get fetches path from the process's HTTP listener.
func (p *relayProc) get(t *testing.T, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s from cio-relay %s: %v", path, p.name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s from cio-relay %s: %v", path, p.name, err)
	}
	return resp.StatusCode, string(b)
}

// metric returns the value of the sample named series (with its labels as
// exposed, e.g. `cio_relay_auth_paused{api="cdp"}`) from /metrics, and
// whether it is there.
func (p *relayProc) metric(t *testing.T, series string) (float64, bool) {
	t.Helper()
	_, text := p.get(t, "/metrics")
	for line := range strings.Lines(text) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", series, err)
			}
			return f, true
		}
	}
	return 0, false
}

// logLines keeps a process's log lines and wakes those waiting for one.
type logLines struct {
	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced on every new line
}

func newLogLines() *logLines { return &logLines{changed: make(chan struct{})} }

func (l *logLines) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		l.mu.Lock()
		l.lines = append(l.lines, sc.Text())
		close(l.changed)
		l.changed = make(chan struct{})
		l.mu.Unlock()
	}
}

// find returns the first JSON record whose msg is msg, or nil and a channel
// closed when another line arrives.
func (l *logLines) find(msg string) (map[string]any, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if !strings.Contains(line, msg) {
			continue
		}
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			return rec, nil
		}
	}
	return nil, l.changed
}

// count returns how many JSON records have a msg starting with prefix.
func (l *logLines) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		var rec struct{ Msg string }
		if strings.Contains(line, prefix) && json.Unmarshal([]byte(line), &rec) == nil && strings.HasPrefix(rec.Msg, prefix) {
			n++
		}
	}
	return n
}

// byLevel counts the JSON records of the given levels by msg.
func (l *logLines) byLevel(levels ...string) map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	counts := map[string]int{}
	for _, line := range l.lines {
		var rec struct{ Level, Msg string }
		if json.Unmarshal([]byte(line), &rec) == nil && slices.Contains(levels, rec.Level) {
			counts[rec.Msg]++
		}
	}
	return counts
}

// contains reports whether any line contains s.
func (l *logLines) contains(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, s) {
			return true
		}
	}
	return false
}

// tail returns the last n lines.
func (l *logLines) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b bytes.Buffer
	if len(l.lines) > n {
		fmt.Fprintf(&b, "[%d earlier lines]\n", len(l.lines)-n)
	}
	for _, line := range l.lines[max(0, len(l.lines)-n):] {
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

// writeFileAtomic replaces path's content at once, as a Kubernetes secret
// volume does: a reader sees the old key or the new one, never a torn one.
func writeFileAtomic(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
