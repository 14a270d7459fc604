package integration_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// senders attributes the stand-in's requests to the relay processes that
// sent them, so that a failure report can say which replica sent what. The
// stand-in records each request's client address; the process that owns
// the socket with that local port is found in /proc (Linux: the socket's
// inode in /proc/net/tcp, and the process whose file descriptors include
// it). It is looked up while the request is being handled, when its sender
// is alive (a SIGKILLed process's sockets are gone), and remembered by port.
// Where /proc cannot say (another OS), a request's sender is "?".
type senders struct {
	mu     sync.Mutex
	procs  map[int]string    // pid → relay process name
	byPort map[string]string // client address → relay process name
}

func newSenders() *senders {
	return &senders{procs: map[int]string{}, byPort: map[string]string{}}
}

// add registers a relay process.
func (s *senders) add(p *relayProc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.procs[p.cmd.Process.Pid] = p.name
}

// observe resolves the sender of a request from remote, its client
// address, while the request is in progress.
func (s *senders) observe(remote string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byPort[remote]; ok {
		return
	}
	s.byPort[remote] = s.ownerLocked(remote)
}

// of is the sender observed for remote: a relay process's name, or "?".
func (s *senders) of(remote string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if name, ok := s.byPort[remote]; ok {
		return name
	}
	return "?"
}

func (s *senders) ownerLocked(remote string) string {
	_, portText, err := net.SplitHostPort(remote)
	if err != nil {
		return "?"
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return "?"
	}
	inodes := socketInodes(uint16(port))
	if len(inodes) == 0 {
		return "?"
	}
	for pid, name := range s.procs {
		fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
		for _, fd := range fds {
			link, err := os.Readlink(fd)
			if err == nil && inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] {
				return name
			}
		}
	}
	return "?"
}

// socketInodes returns the inodes of the TCP sockets whose local port is
// port, from /proc/net/tcp and /proc/net/tcp6.
func socketInodes(port uint16) map[string]bool {
	out := map[string]bool{}
	want := fmt.Sprintf(":%04X", port)
	for _, path := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) > 9 && strings.HasSuffix(fields[1], want) {
				out[fields[9]] = true
			}
		}
		_ = f.Close()
	}
	return out
}
