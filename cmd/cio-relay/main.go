// Command cio-relay consumes customer events from NATS JetStream and delivers
// them to Customer.io.
//
// Usage:
//
//	cio-relay [run] [flags]   run the worker (the default)
//	cio-relay dlq COMMAND     inspect, replay, purge and resolve the dead-letter stream
//	cio-relay cio COMMAND     read from Customer.io's App API (segments, triggers, messages, ...)
//	cio-relay publish [FILE]  publish NDJSON calls to the queue
//	cio-relay bench           measure throughput, batch fill and latency
//	cio-relay version         print the version
//
// Every setting is an environment variable with a matching flag; run
// `cio-relay run -h` for the list.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run dispatches to a subcommand and returns the process exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "run":
		return runWorker(ctx, args, getenv, stdout, stderr)
	case "dlq":
		return runDLQ(ctx, args, getenv, os.Stdin, stdout, stderr)
	case "cio":
		return runCIO(ctx, args, getenv, stdout, stderr)
	case "publish":
		return runPublish(ctx, args, getenv, os.Stdin, stdout, stderr)
	case "bench":
		return runBench(ctx, args, getenv, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "cio-relay", version())
		return 0
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "cio-relay: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
}

const usage = `cio-relay delivers customer events from NATS JetStream to Customer.io.

Commands:
  run       run the worker (default); "cio-relay run -h" lists every setting
  dlq       inspect, replay, purge and resolve the dead-letter stream ("cio-relay dlq -h")
  cio       read from Customer.io's App API: segments, triggers, messages, ... ("cio-relay cio -h")
  publish   publish NDJSON calls to the queue ("cio-relay publish -h")
  bench     measure throughput, batch fill and latency on this machine ("cio-relay bench -h")
  version   print the version
  help      print this help
`

// version names the build: the module version, or the VCS revision for a
// development build.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		v = "dev"
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += "-" + s.Value[:12]
			}
		}
	}
	return v
}
