package main

import (
	"io"
	"log/slog"
	"os"

	"github.com/lmittmann/tint"
	"golang.org/x/term"

	"github.com/cio-relay/cio-relay/config"
)

// newLogger returns the process logger: tint's coloured text for a person at
// a terminal, JSON for a log collector.
func newLogger(ops config.Ops, w io.Writer) *slog.Logger {
	format := ops.LogFormat
	if format == "auto" {
		format = "json"
		if isTerminal(w) {
			format = "text"
		}
	}
	if format == "text" {
		return slog.New(tint.NewTextHandler(w, &tint.Options{Level: ops.LogLevel, NoColor: !isTerminal(w)}))
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: ops.LogLevel}))
}

// isTerminal reports whether f (standard input, output or error) is a
// terminal. A character device is not enough: /dev/null is one, and is
// where a Kubernetes Job's standard input points, with nobody to answer.
func isTerminal(f any) bool {
	file, ok := f.(*os.File)
	return ok && term.IsTerminal(int(file.Fd()))
}
