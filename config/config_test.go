package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// getenv returns a getenv that looks up env instead of the process's.
func getenv(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

// mustLoad loads args and env and fails the test on an error.
func mustLoad(t *testing.T, args []string, env map[string]string) *Config {
	t.Helper()
	c, err := Load(args, getenv(env))
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

// writeFile writes content to name in a fresh temporary directory and
// returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// problems splits a Load error into its problems, one per line.
func problems(err error) []string {
	if err == nil {
		return nil
	}
	return strings.Split(err.Error(), "\n")
}

func TestLoadDefaults(t *testing.T) {
	c := mustLoad(t, nil, nil)
	want := &Config{
		NATS:     NATS{},
		Embedded: Embedded{DataDir: "./data", Listen: "127.0.0.1:4222"},
		Queue: Queue{
			Stream: "CIO", Consumer: "cio-relay", DLQStream: "CIO_DLQ", DLQMaxAge: 720 * time.Hour, Replicas: 1, ManageStreams: true,
			AckWait: 30 * time.Second, MaxAckPending: 20000, MaxDeliver: 20, NakDelay: 30 * time.Second,
		},
		Batch: Batch{MaxBytes: 500000, MaxCalls: 2000, FlushInterval: time.Second},
		Send: Send{
			Concurrency: 4, Ordering: true, HTTPTimeout: 30 * time.Second,
			RetryInitialInterval: 500 * time.Millisecond, RetryMaxInterval: 30 * time.Second, RetryMaxElapsed: 2 * time.Minute,
		},
		Ops: Ops{HTTPAddr: ":9090", LogFormat: "auto", LogLevel: slog.LevelInfo, ShutdownTimeout: 25 * time.Second},
		CIO: CIO{
			Region:   "us",
			CDPURL:   "https://cdp.customer.io/v1",
			TrackURL: "https://track.customer.io/api/v1",
			AppURL:   "https://api.customer.io/v1",
			// Customer.io's permissive default loses refused calls.
			CDPStrict: true,
		},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
	if !c.NATS.Embedded() {
		t.Error("NATS.Embedded() = false with no NATS_URL")
	}
	if !c.DryRun() {
		t.Error("DryRun() = false with no CIO_CDP_API_KEY")
	}
}

func TestLoadAcceptsWhitespaceAndEmpty(t *testing.T) {
	c := mustLoad(t, nil, map[string]string{
		"RELAY_BATCH_MAX_BYTES": "  100000\n",
		"RELAY_STREAM":          "   ", // empty after trimming: the default
		"NATS_URL":              " nats://a:4222 , tls://b.example:4443 ",
		"CIO_CDP_API_KEY":       " key\n",
		"RELAY_DRY_RUN_FILE":    "calls.ndjson",
	})
	if c.Send.DryRunFile != "calls.ndjson" || !strings.Contains(c.Redacted(), "RELAY_DRY_RUN_FILE=calls.ndjson\n") {
		t.Errorf("DryRunFile = %q", c.Send.DryRunFile)
	}
	if c.Batch.MaxBytes != 100000 || c.Queue.Stream != "CIO" {
		t.Errorf("MaxBytes, Stream = %d, %q; want 100000, CIO", c.Batch.MaxBytes, c.Queue.Stream)
	}
	if c.NATS.URL != "nats://a:4222,tls://b.example:4443" || c.NATS.Embedded() {
		t.Errorf("NATS.URL = %q, Embedded() = %v", c.NATS.URL, c.NATS.Embedded())
	}
	if c.CIO.CDPAPIKey.Reveal() != "key" || c.DryRun() {
		t.Errorf("CDPAPIKey = %q, DryRun() = %v; want key, false", c.CIO.CDPAPIKey.Reveal(), c.DryRun())
	}
}

func TestLoadSpecialValues(t *testing.T) {
	c := mustLoad(t, nil, map[string]string{
		"RELAY_HTTP_ADDR":      "OFF",
		"RELAY_DRY_RUN_FILE":   "-",
		"RELAY_LOG_LEVEL":      "WARN",
		"RELAY_LOG_FORMAT":     "Json",
		"RELAY_MANAGE_STREAMS": "no",
	})
	if c.Ops.HTTPAddr != "" || c.Send.DryRunFile != "" || c.Ops.LogLevel != slog.LevelWarn || c.Ops.LogFormat != "json" || c.Queue.ManageStreams {
		t.Errorf("got HTTPAddr %q, DryRunFile %q, LogLevel %v, LogFormat %q, ManageStreams %v",
			c.Ops.HTTPAddr, c.Send.DryRunFile, c.Ops.LogLevel, c.Ops.LogFormat, c.Queue.ManageStreams)
	}
	r := c.Redacted()
	for _, line := range []string{"RELAY_HTTP_ADDR=off\n", "RELAY_DRY_RUN_FILE=-\n", "RELAY_LOG_LEVEL=warn\n"} {
		if !strings.Contains(r, line) {
			t.Errorf("Redacted() lacks %q:\n%s", line, r)
		}
	}
}

func TestBoolForms(t *testing.T) {
	for in, want := range map[string]bool{"true": true, "TRUE": true, "1": true, "Yes": true, "false": false, "0": false, "NO": false} {
		c := mustLoad(t, nil, map[string]string{"RELAY_MANAGE_STREAMS": in})
		if c.Queue.ManageStreams != want {
			t.Errorf("RELAY_MANAGE_STREAMS=%s: got %v, want %v", in, c.Queue.ManageStreams, want)
		}
	}
}

// TestLoadRejects has a row per rule: the problem must be reported on a line
// that starts with the variable(s) named in prefix, and contain fragment.
func TestLoadRejects(t *testing.T) {
	file := writeFile(t, "some.creds", "creds")
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	empty := writeFile(t, "empty", " \n")
	const url = "nats://nats.example:4222"

	tests := []struct {
		name     string
		env      map[string]string
		args     []string
		prefix   string
		fragment string
	}{
		{"nats url scheme", map[string]string{"NATS_URL": "http://nats.example:4222"}, nil, "NATS_URL:", `has scheme "http"`},
		{"nats url without scheme", map[string]string{"NATS_URL": "nats.example:4222"}, nil, "NATS_URL:", "nats://, tls://, ws:// or wss://"},
		{"nats url without host", map[string]string{"NATS_URL": "nats://:4222"}, nil, "NATS_URL:", "no host"},
		{"nats url bad port", map[string]string{"NATS_URL": "nats://nats.example:port"}, nil, "NATS_URL:", `invalid port`},
		{"nats url empty entry", map[string]string{"NATS_URL": url + ",,tls://b:4222"}, nil, "NATS_URL:", "no host"},
		{"nats url credentials", map[string]string{"NATS_URL": "nats://u:pw@nats.example:4222"}, nil, "NATS_URL:", "set NATS_USER and NATS_PASSWORD, or NATS_TOKEN"},
		{"nats creds missing", map[string]string{"NATS_URL": url, "NATS_CREDS": missing}, nil, "NATS_CREDS:", "no such file"},
		{"nats nkey directory", map[string]string{"NATS_URL": url, "NATS_NKEY": dir}, nil, "NATS_NKEY:", "not a directory"},
		{"nats ca missing", map[string]string{"NATS_URL": url, "NATS_CA": missing}, nil, "NATS_CA:", missing},
		{"nats user without password", map[string]string{"NATS_URL": url, "NATS_USER": "u"}, nil, "NATS_USER:", "together with NATS_PASSWORD"},
		{"nats password without user", map[string]string{"NATS_URL": url, "NATS_PASSWORD": "p"}, nil, "NATS_PASSWORD:", "together with NATS_USER"},
		{"nats two auth methods", map[string]string{"NATS_URL": url, "NATS_CREDS": file, "NATS_TOKEN": "t"}, nil, "NATS_CREDS, NATS_TOKEN:", "at most one"},
		{"nats three auth methods", map[string]string{"NATS_URL": url, "NATS_NKEY": file, "NATS_USER": "u", "NATS_PASSWORD": "p", "NATS_TOKEN": "t"}, nil,
			"NATS_NKEY, NATS_USER/NATS_PASSWORD, NATS_TOKEN:", "got 3"},
		{"nats cert without key", map[string]string{"NATS_URL": url, "NATS_CERT": file}, nil, "NATS_CERT:", "together with NATS_KEY"},
		{"nats key without cert", map[string]string{"NATS_URL": url, "NATS_KEY": file}, nil, "NATS_KEY:", "together with NATS_CERT"},
		{"nats auth while embedded", map[string]string{"NATS_TOKEN": "t"}, nil, "NATS_TOKEN:", "NATS_URL is unset"},
		{"nats tls while embedded", map[string]string{"NATS_CA": file, "NATS_CERT": file, "NATS_KEY": file}, nil, "NATS_CA, NATS_CERT, NATS_KEY:", "NATS_URL is unset"},
		{"embedded listen without port", map[string]string{"RELAY_EMBEDDED_LISTEN": "localhost"}, nil, "RELAY_EMBEDDED_LISTEN:", "host:port"},
		{"embedded listen port not a number", map[string]string{"RELAY_EMBEDDED_LISTEN": "localhost:nats"}, nil, "RELAY_EMBEDDED_LISTEN:", "numeric port"},
		{"stream with dot", map[string]string{"RELAY_STREAM": "a.b"}, nil, "RELAY_STREAM:", "JetStream name"},
		{"stream with space", map[string]string{"RELAY_STREAM": "a b"}, nil, "RELAY_STREAM:", `got "a b"`},
		{"stream too long", map[string]string{"RELAY_STREAM": strings.Repeat("s", 256)}, nil, "RELAY_STREAM:", "at most 255"},
		// Config's name rule lets a quote through; the worker's (a stream
		// name is part of every derived messageId) does not.
		{"stream with a quote", map[string]string{"RELAY_STREAM": `a"b`}, nil, "RELAY_STREAM:", "messageId"},
		{"consumer with wildcard", map[string]string{"RELAY_CONSUMER": "a*"}, nil, "RELAY_CONSUMER:", "JetStream name"},
		{"consumer with slash", map[string]string{"RELAY_CONSUMER": `a\b`}, nil, "RELAY_CONSUMER:", "JetStream name"},
		{"dlq stream with gt", map[string]string{"RELAY_DLQ_STREAM": "a>"}, nil, "RELAY_DLQ_STREAM:", "JetStream name"},
		{"dlq stream is the stream", map[string]string{"RELAY_DLQ_STREAM": "CIO"}, nil, "RELAY_DLQ_STREAM:", "must differ from RELAY_STREAM"},
		{"manage streams not a bool", map[string]string{"RELAY_MANAGE_STREAMS": "maybe"}, nil, "RELAY_MANAGE_STREAMS:", `true or false (also 1/0, yes/no), got "maybe"`},
		{"ack wait too short", map[string]string{"RELAY_ACK_WAIT": "4s"}, nil, "RELAY_ACK_WAIT:", "must be at least 5s"},
		{"ack wait without unit", map[string]string{"RELAY_ACK_WAIT": "30"}, nil, "RELAY_ACK_WAIT:", "duration with a unit"},
		{"max ack pending zero", map[string]string{"RELAY_MAX_ACK_PENDING": "0"}, nil, "RELAY_MAX_ACK_PENDING:", "at least 1, got 0"},
		{"max ack pending not a number", map[string]string{"RELAY_MAX_ACK_PENDING": "20k"}, nil, "RELAY_MAX_ACK_PENDING:", `whole number`},
		{"max ack pending below batches", map[string]string{"RELAY_MAX_ACK_PENDING": "5000"}, nil, "RELAY_MAX_ACK_PENDING:", "= 2000 × 5 = 10000"},
		{"max deliver one", map[string]string{"RELAY_MAX_DELIVER": "1"}, nil, "RELAY_MAX_DELIVER:", "at least 2"},
		{"batch bytes over limit", map[string]string{"RELAY_BATCH_MAX_BYTES": "600000"}, nil,
			"RELAY_BATCH_MAX_BYTES:", "RELAY_BATCH_MAX_BYTES: must be at most 500000 (Customer.io's batch limit), got 600000"},
		{"batch bytes under a call", map[string]string{"RELAY_BATCH_MAX_BYTES": "32099"}, nil, "RELAY_BATCH_MAX_BYTES:", "at least 32100"},
		{"batch calls zero", map[string]string{"RELAY_BATCH_MAX_CALLS": "0"}, nil, "RELAY_BATCH_MAX_CALLS:", "at least 1"},
		{"batch calls too many", map[string]string{"RELAY_BATCH_MAX_CALLS": "100001"}, nil, "RELAY_BATCH_MAX_CALLS:", "at most 100000"},
		{"flush interval zero", map[string]string{"RELAY_FLUSH_INTERVAL": "0s"}, nil, "RELAY_FLUSH_INTERVAL:", "at least 1ms"},
		{"flush interval over half ack wait", map[string]string{"RELAY_FLUSH_INTERVAL": "16s"}, nil, "RELAY_FLUSH_INTERVAL:", "half of RELAY_ACK_WAIT (15s)"},
		{"send concurrency zero", map[string]string{"RELAY_SEND_CONCURRENCY": "0"}, nil, "RELAY_SEND_CONCURRENCY:", "at least 1"},
		{"send concurrency too high", map[string]string{"RELAY_SEND_CONCURRENCY": "65"}, nil, "RELAY_SEND_CONCURRENCY:", "at most 64"},
		{"http timeout zero", map[string]string{"RELAY_HTTP_TIMEOUT": "0s"}, nil, "RELAY_HTTP_TIMEOUT:", "greater than 0"},
		{"retry max elapsed negative", map[string]string{"RELAY_RETRY_MAX_ELAPSED": "-1s"}, nil, "RELAY_RETRY_MAX_ELAPSED:", "not be negative"},
		{"retry max interval zero", map[string]string{"RELAY_RETRY_MAX_INTERVAL": "0s"}, nil, "RELAY_RETRY_MAX_INTERVAL:", "greater than 0"},
		{"retry initial interval zero", map[string]string{"RELAY_RETRY_INITIAL_INTERVAL": "0s"}, nil, "RELAY_RETRY_INITIAL_INTERVAL:", "greater than 0"},
		{"retry initial over max", map[string]string{"RELAY_RETRY_INITIAL_INTERVAL": "1m"}, nil, "RELAY_RETRY_INITIAL_INTERVAL:", "at most RELAY_RETRY_MAX_INTERVAL (30s), got 1m0s"},
		{"nak delay negative", map[string]string{"RELAY_NAK_DELAY": "-1s"}, nil, "RELAY_NAK_DELAY:", "not be negative"},
		{"dlq max age too short", map[string]string{"RELAY_DLQ_MAX_AGE": "10m"}, nil, "RELAY_DLQ_MAX_AGE:", "at least 1h"},
		{"stream replicas zero", map[string]string{"NATS_URL": url, "RELAY_STREAM_REPLICAS": "0"}, nil, "RELAY_STREAM_REPLICAS:", "at least 1, got 0"},
		{"stream replicas over JetStream's limit", map[string]string{"NATS_URL": url, "RELAY_STREAM_REPLICAS": "6"}, nil,
			"RELAY_STREAM_REPLICAS:", "at most 5 (JetStream's limit), got 6"},
		{"stream replicas not a number", map[string]string{"NATS_URL": url, "RELAY_STREAM_REPLICAS": "three"}, nil, "RELAY_STREAM_REPLICAS:", "whole number"},
		{"stream replicas on the embedded server", map[string]string{"RELAY_STREAM_REPLICAS": "3"}, nil,
			"RELAY_STREAM_REPLICAS:", "must be 1 with the embedded server (NATS_URL unset), a single node; more replicas need a JetStream cluster, got 3"},
		{"shutdown timeout zero", map[string]string{"RELAY_SHUTDOWN_TIMEOUT": "0s"}, nil, "RELAY_SHUTDOWN_TIMEOUT:", "greater than 0"},
		{"http addr without port", map[string]string{"RELAY_HTTP_ADDR": "9090"}, nil, "RELAY_HTTP_ADDR:", `or "off"`},
		{"log format", map[string]string{"RELAY_LOG_FORMAT": "xml"}, nil, "RELAY_LOG_FORMAT:", "auto, text, json"},
		{"log level", map[string]string{"RELAY_LOG_LEVEL": "trace"}, nil, "RELAY_LOG_LEVEL:", "debug, info, warn, error"},
		{"region", map[string]string{"CIO_REGION": "ap"}, nil, "CIO_REGION:", `one of us, eu, got "ap"`},
		{"cdp url scheme", map[string]string{"CIO_CDP_URL": "ftp://cdp.example"}, nil, "CIO_CDP_URL:", `scheme is "ftp"`},
		{"cdp url relative", map[string]string{"CIO_CDP_URL": "cdp.customer.io/v1"}, nil, "CIO_CDP_URL:", "absolute"},
		{"cdp url query", map[string]string{"CIO_CDP_URL": "https://cdp.example/v1?x=1"}, nil, "CIO_CDP_URL:", "query"},
		{"track url credentials", map[string]string{"CIO_TRACK_URL": "https://u:p@track.example"}, nil, "CIO_TRACK_URL:", "credentials"},
		{"app url without host", map[string]string{"CIO_APP_URL": "https:///v1"}, nil, "CIO_APP_URL:", "no host"},
		{"site id without track key", map[string]string{"CIO_SITE_ID": "site"}, nil, "CIO_SITE_ID:", "together with CIO_TRACK_API_KEY"},
		{"track key without site id", map[string]string{"CIO_TRACK_API_KEY": "k"}, nil, "CIO_TRACK_API_KEY:", "together with CIO_SITE_ID"},
		{"secret and its file", map[string]string{"CIO_CDP_API_KEY": "k", "CIO_CDP_API_KEY_FILE": file}, nil, "CIO_CDP_API_KEY, CIO_CDP_API_KEY_FILE:", "set only one"},
		{"secret file missing", map[string]string{"CIO_APP_API_KEY_FILE": missing}, nil, "CIO_APP_API_KEY_FILE:", missing},
		{"secret file empty", map[string]string{"CIO_APP_API_KEY_FILE": empty}, nil, "CIO_APP_API_KEY_FILE:", empty + " is empty"},
		{"secret file is a directory", map[string]string{"NATS_URL": url, "NATS_TOKEN_FILE": dir}, nil, "NATS_TOKEN_FILE:", "is a directory"},
		{"bad flag value", nil, []string{"-batch-max-bytes=600000"}, "RELAY_BATCH_MAX_BYTES (flag -batch-max-bytes):", "at most 500000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(tt.args, getenv(tt.env))
			if err == nil {
				t.Fatalf("Load succeeded, want a problem starting %q", tt.prefix)
			}
			if c != nil {
				t.Error("Load returned a Config with its error")
			}
			for _, p := range problems(err) {
				if strings.HasPrefix(p, tt.prefix) && strings.Contains(p, tt.fragment) {
					return
				}
			}
			t.Errorf("no problem starts %q and contains %q in:\n%v", tt.prefix, tt.fragment, err)
		})
	}
}

func TestLoadReportsEveryProblem(t *testing.T) {
	_, err := Load(nil, getenv(map[string]string{
		"RELAY_BATCH_MAX_BYTES":  "600000",
		"RELAY_ACK_WAIT":         "soon",
		"CIO_REGION":             "mars",
		"NATS_URL":               "nats://nats.example:4222",
		"NATS_USER":              "u",
		"RELAY_MAX_ACK_PENDING":  "1",
		"RELAY_SEND_CONCURRENCY": "100",
	}))
	var joined interface{ Unwrap() []error }
	if !errors.As(err, &joined) {
		t.Fatalf("Load error %v does not join its problems", err)
	}
	// RELAY_MAX_ACK_PENDING is not checked against batches, as
	// RELAY_SEND_CONCURRENCY was rejected; RELAY_FLUSH_INTERVAL is not
	// checked against RELAY_ACK_WAIT, which was rejected.
	want := []string{"RELAY_ACK_WAIT:", "RELAY_BATCH_MAX_BYTES:", "RELAY_SEND_CONCURRENCY:", "CIO_REGION:", "NATS_USER:"}
	got := problems(err)
	if len(got) != len(want) || len(joined.Unwrap()) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(got), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w) {
			t.Errorf("problem %d = %q, want it to start %q", i, got[i], w)
		}
	}
}

func TestSecretFromFile(t *testing.T) {
	path := writeFile(t, "cdp-key", "  cdp-key-value \n")
	c := mustLoad(t, nil, map[string]string{"CIO_CDP_API_KEY_FILE": path, "CIO_APP_API_KEY": "app-key-value"})
	tests := []struct {
		name       string
		s          Secret
		value, src string
	}{
		{"from file", c.CIO.CDPAPIKey, "cdp-key-value", "file " + path},
		{"from env", c.CIO.AppAPIKey, "app-key-value", "env CIO_APP_API_KEY"},
		{"unset", c.CIO.TrackAPIKey, "", ""},
	}
	for _, tt := range tests {
		if got := tt.s.Reveal(); got != tt.value {
			t.Errorf("%s: Reveal() = %q, want %q", tt.name, got, tt.value)
		}
		if got := tt.s.Source(); got != tt.src {
			t.Errorf("%s: Source() = %q, want %q", tt.name, got, tt.src)
		}
		if got := tt.s.IsSet(); got != (tt.value != "") {
			t.Errorf("%s: IsSet() = %v", tt.name, got)
		}
		if want := map[bool]string{true: "[redacted]", false: ""}[tt.value != ""]; tt.s.String() != want {
			t.Errorf("%s: String() = %q, want %q", tt.name, tt.s.String(), want)
		}
	}
	r := c.Redacted()
	for _, line := range []string{
		"CIO_CDP_API_KEY=[redacted] (file " + path + ")\n",
		"CIO_APP_API_KEY=[redacted] (env CIO_APP_API_KEY)\n",
		"CIO_TRACK_API_KEY=(unset)\n",
	} {
		if !strings.Contains(r, line) {
			t.Errorf("Redacted() lacks %q:\n%s", line, r)
		}
	}
}

func TestSecretFileMissingIsNotExist(t *testing.T) {
	_, err := Load(nil, getenv(map[string]string{"CIO_CDP_API_KEY_FILE": filepath.Join(t.TempDir(), "nope")}))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load error %v is not fs.ErrNotExist", err)
	}
}

func TestSecretFileTooLarge(t *testing.T) {
	path := writeFile(t, "big", strings.Repeat("k", maxSecretFile+1))
	_, err := Load(nil, getenv(map[string]string{"CIO_CDP_API_KEY_FILE": path}))
	if err == nil || !strings.Contains(err.Error(), "CIO_CDP_API_KEY_FILE: cannot read file "+path+": larger than") {
		t.Errorf("Load error = %v, want a too-large file", err)
	}
}

func TestReload(t *testing.T) {
	path := writeFile(t, "key", "old-key\n")
	c := mustLoad(t, nil, map[string]string{"CIO_CDP_API_KEY_FILE": path, "CIO_APP_API_KEY": "env-key"})

	if err := os.WriteFile(path, []byte("new-key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := c.CIO.CDPAPIKey.Reload()
	if err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if s.Reveal() != "new-key" || s.Source() != "file "+path {
		t.Errorf("reloaded %q from %q, want new-key from file %s", s.Reveal(), s.Source(), path)
	}
	if c.CIO.CDPAPIKey.Reveal() != "old-key" {
		t.Errorf("Reload changed the original to %q", c.CIO.CDPAPIKey.Reveal())
	}
	if s, err := s.Reload(); err != nil || s.Reveal() != "new-key" {
		t.Errorf("reloading a reloaded secret: %q, %v", s.Reveal(), err)
	}

	if s, err := c.CIO.AppAPIKey.Reload(); err != nil || s != c.CIO.AppAPIKey {
		t.Errorf("Reload of an env secret = %v, %v; want it unchanged", s.Source(), err)
	}
	if s, err := c.CIO.TrackAPIKey.Reload(); err != nil || s.IsSet() {
		t.Errorf("Reload of an unset secret = %v, %v; want it unset", s.IsSet(), err)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, err = c.CIO.CDPAPIKey.Reload()
	if err == nil || !strings.HasPrefix(err.Error(), "CIO_CDP_API_KEY_FILE: cannot read file "+path) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Reload of a removed file: %v", err)
	}
}

func TestFlagsOverrideEnv(t *testing.T) {
	env := map[string]string{
		"RELAY_BATCH_MAX_BYTES": "100000",
		"RELAY_STREAM":          "FROM_ENV",
		"RELAY_MANAGE_STREAMS":  "false",
		"NATS_URL":              "nats://env.example:4222",
		"CIO_REGION":            "us",
		"CIO_CDP_URL":           "https://cdp.env.example/v1",
	}
	c := mustLoad(t, []string{
		"-batch-max-bytes", "200000",
		"--stream=", // empty: unset, so the variable holds
		"-manage-streams",
		"-nats-url=nats://flag.example:4222",
		"-cio-region=eu",
		"-cio-cdp-url", "https://cdp.flag.example/v1/",
	}, env)
	if c.Batch.MaxBytes != 200000 {
		t.Errorf("MaxBytes = %d, want the flag's 200000", c.Batch.MaxBytes)
	}
	if c.Queue.Stream != "FROM_ENV" {
		t.Errorf("Stream = %q, want the variable's FROM_ENV", c.Queue.Stream)
	}
	if !c.Queue.ManageStreams {
		t.Error("ManageStreams = false, want true from a bare -manage-streams")
	}
	if c.NATS.URL != "nats://flag.example:4222" {
		t.Errorf("NATS.URL = %q", c.NATS.URL)
	}
	if c.CIO.Region != "eu" || c.CIO.CDPURL != "https://cdp.flag.example/v1" || c.CIO.AppURL != "https://api-eu.customer.io/v1" {
		t.Errorf("CIO = %+v", c.CIO)
	}
	if c := mustLoad(t, []string{"-manage-streams=false"}, nil); c.Queue.ManageStreams {
		t.Error("-manage-streams=false left ManageStreams true")
	}
}

func TestFlagErrors(t *testing.T) {
	const secret = "flag-secret-3f9a"
	tests := []struct {
		name string
		args []string
		want string
		help bool
	}{
		{"help", []string{"-h"}, "", true},
		{"long help", []string{"--help"}, "", true},
		{"unknown flag", []string{"-batch-size=5"}, "-batch-size", false},
		{"env name as flag", []string{"-RELAY_STREAM=x"}, "RELAY_STREAM", false},
		{"positional argument", []string{"-stream=A", "extra"}, `unexpected argument "extra"`, false},
		{"secret flag", []string{"-cio-cdp-api-key=" + secret}, "set CIO_CDP_API_KEY or CIO_CDP_API_KEY_FILE in the environment", false},
		{"secret flag, value apart", []string{"--nats-token", secret}, "NATS_TOKEN", false},
		{"secret file flag", []string{"-nats-password-file=/run/secret"}, "NATS_PASSWORD_FILE", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(tt.args, getenv(nil))
			if err == nil {
				t.Fatal("Load succeeded")
			}
			if got := errors.Is(err, flag.ErrHelp); got != tt.help {
				t.Errorf("errors.Is(%v, flag.ErrHelp) = %v", err, got)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q reveals the secret", err)
			}
		})
	}
}

func TestRegion(t *testing.T) {
	tests := []struct {
		name                string
		env                 map[string]string
		cdp, track, app, rg string
	}{
		{"us by default", nil,
			"https://cdp.customer.io/v1", "https://track.customer.io/api/v1", "https://api.customer.io/v1", "us"},
		{"eu", map[string]string{"CIO_REGION": "eu"},
			"https://cdp-eu.customer.io/v1", "https://track-eu.customer.io/api/v1", "https://api-eu.customer.io/v1", "eu"},
		{"eu in capitals", map[string]string{"CIO_REGION": "EU"},
			"https://cdp-eu.customer.io/v1", "https://track-eu.customer.io/api/v1", "https://api-eu.customer.io/v1", "eu"},
		{"explicit url wins over region", map[string]string{"CIO_REGION": "eu", "CIO_CDP_URL": "http://127.0.0.1:8080/v1//"},
			"http://127.0.0.1:8080/v1", "https://track-eu.customer.io/api/v1", "https://api-eu.customer.io/v1", "eu"},
		{"explicit urls", map[string]string{"CIO_TRACK_URL": "https://track.example", "CIO_APP_URL": "https://app.example/"},
			"https://cdp.customer.io/v1", "https://track.example", "https://app.example", "us"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustLoad(t, nil, tt.env)
			got := CIO{Region: c.CIO.Region, CDPURL: c.CIO.CDPURL, TrackURL: c.CIO.TrackURL, AppURL: c.CIO.AppURL}
			want := CIO{Region: tt.rg, CDPURL: tt.cdp, TrackURL: tt.track, AppURL: tt.app}
			if got != want {
				t.Errorf("got %+v\nwant %+v", got, want)
			}
		})
	}
}

// TestSecretsNeverPrinted sets every secret to a distinctive value and
// looks for it in every way a Config or Secret gets printed.
func TestSecretsNeverPrinted(t *testing.T) {
	const mark = "s3cr3t-0b5e55ed"
	env := map[string]string{
		"NATS_URL":               "nats://nats.example:4222",
		"NATS_USER":              "relay",
		"NATS_PASSWORD_FILE":     writeFile(t, "password", mark+"-nats-password\n"),
		"CIO_CDP_API_KEY":        mark + "-cdp",
		"CIO_APP_API_KEY_FILE":   writeFile(t, "app", mark+"-app"),
		"CIO_SITE_ID":            "site-1",
		"CIO_TRACK_API_KEY":      mark + "-track",
		"RELAY_HTTP_ADDR":        ":0",
		"RELAY_SEND_CONCURRENCY": "2",
	}
	c := mustLoad(t, nil, env)
	// NATS_TOKEN cannot be set with NATS_PASSWORD; copy one in to cover
	// every field.
	c.NATS.Token = c.CIO.CDPAPIKey
	for _, s := range []Secret{c.NATS.Password, c.NATS.Token, c.CIO.CDPAPIKey, c.CIO.AppAPIKey, c.CIO.TrackAPIKey} {
		if !strings.HasPrefix(s.Reveal(), mark) {
			t.Fatalf("secret %s not loaded: %q", s.Source(), s.Reveal())
		}
	}

	printed := map[string]string{"Redacted()": c.Redacted()}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
		printed[verb+" of Config"] = fmt.Sprintf(verb, *c)
		printed[verb+" of *Config"] = fmt.Sprintf(verb, c)
		printed[verb+" of Secret"] = fmt.Sprintf(verb, c.CIO.CDPAPIKey)
		printed[verb+" of *Secret"] = fmt.Sprintf(verb, &c.CIO.CDPAPIKey)
	}
	printed["GoString"] = c.CIO.CDPAPIKey.GoString()
	printed["Sprint"] = fmt.Sprint(c, c.NATS, c.CIO)
	for name, v := range map[string]any{"Config": c, "CIO": c.CIO, "Secret": c.CIO.CDPAPIKey} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("json.Marshal(%s): %v", name, err)
		}
		printed["json of "+name] = string(b)
	}
	var text, js bytes.Buffer
	for _, l := range []*slog.Logger{slog.New(slog.NewTextHandler(&text, nil)), slog.New(slog.NewJSONHandler(&js, nil))} {
		l.Info("start", "config", c, "cio", c.CIO, "key", c.CIO.CDPAPIKey)
		l.Info("start", slog.Any("config", *c), slog.Group("g", "password", c.NATS.Password))
	}
	printed["slog text"], printed["slog json"] = text.String(), js.String()

	for how, out := range printed {
		if strings.Contains(out, mark) {
			t.Errorf("%s reveals a secret:\n%s", how, out)
		}
	}
	for _, how := range []string{"Redacted()", "%+v of Config", "json of Config", "slog text", "slog json"} {
		if !strings.Contains(printed[how], "[redacted]") {
			t.Errorf("%s does not show [redacted]:\n%s", how, printed[how])
		}
	}
	if got := printed["json of Secret"]; got != `"[redacted]"` {
		t.Errorf(`json of Secret = %s, want "[redacted]"`, got)
	}
	if got, _ := json.Marshal(Secret{}); string(got) != `""` {
		t.Errorf(`json of an unset Secret = %s, want ""`, got)
	}
}

func TestErrorsNeverQuoteSecrets(t *testing.T) {
	const mark = "s3cr3t-e44a"
	_, err := Load(nil, getenv(map[string]string{
		"NATS_URL":             "nats://relay:" + mark + "@nats.example:4222,tls://x:" + mark + "@:1",
		"CIO_CDP_URL":          "https://key:" + mark + "%zz@cdp.example/v1",
		"CIO_APP_URL":          "ftp://key:" + mark + "@app.example",
		"CIO_CDP_API_KEY":      mark,
		"CIO_CDP_API_KEY_FILE": writeFile(t, "k", mark),
		"NATS_TOKEN":           mark,
		"NATS_USER":            "u",
	}))
	if err == nil {
		t.Fatal("Load succeeded")
	}
	if strings.Contains(err.Error(), mark) {
		t.Errorf("error reveals a secret:\n%v", err)
	}
	for _, name := range []string{"NATS_URL:", "CIO_CDP_URL:", "CIO_APP_URL:", "CIO_CDP_API_KEY, CIO_CDP_API_KEY_FILE:"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error lacks %s:\n%v", name, err)
		}
	}
}

func TestFlagName(t *testing.T) {
	for name, want := range map[string]string{
		"RELAY_BATCH_MAX_BYTES": "batch-max-bytes",
		"NATS_URL":              "nats-url",
		"CIO_REGION":            "cio-region",
		"CIO_CDP_URL":           "cio-cdp-url",
	} {
		if got := flagName(name); got != want {
			t.Errorf("flagName(%s) = %q, want %q", name, got, want)
		}
	}
}

// TestEveryVariable checks the table's promises for each setting: it has
// help, its default loads, it is in Usage and Redacted, and it can be set by
// its flag or, for a secret, not.
func TestEveryVariable(t *testing.T) {
	usage := Usage()
	redacted := mustLoad(t, nil, nil).Redacted()
	names := make(map[string]bool)
	for _, v := range new(Config).variables() {
		if names[v.name] {
			t.Errorf("%s is listed twice", v.name)
		}
		names[v.name] = true
		if v.help == "" || v.section == "" {
			t.Errorf("%s has no help or section", v.name)
		}
		if (v.secret == nil) == (v.value == nil) {
			t.Errorf("%s must have either a value or a secret", v.name)
		}
		if !strings.Contains(redacted, "\n"+v.name+"=") && !strings.HasPrefix(redacted, v.name+"=") {
			t.Errorf("Redacted() lacks %s", v.name)
		}
		if v.secret != nil {
			if !strings.Contains(usage, v.name+" or "+v.name+"_FILE (secret: environment only)") {
				t.Errorf("Usage() lacks secret %s", v.name)
			}
			if strings.Contains(usage, "-"+flagName(v.name)) {
				t.Errorf("Usage() offers a flag for secret %s", v.name)
			}
			continue
		}
		if !strings.Contains(usage, v.name+", -"+flagName(v.name)+" (default "+v.defaultDoc()+")") {
			t.Errorf("Usage() lacks %s with its flag and default", v.name)
		}
		if _, err := Load([]string{"-" + flagName(v.name) + "=" + v.value.String()}, nil); errors.Is(err, flag.ErrHelp) ||
			(err != nil && strings.Contains(err.Error(), "parsing flags")) {
			t.Errorf("flag -%s: %v", flagName(v.name), err)
		}
	}
	for _, w := range []string{"terminationGracePeriodSeconds", "Default for us: https://cdp.customer.io/v1, eu: https://cdp-eu.customer.io/v1.", "NAME_FILE"} {
		if !strings.Contains(strings.Join(strings.Fields(usage), " "), w) {
			t.Errorf("Usage() lacks %q", w)
		}
	}
	for _, line := range strings.Split(strings.TrimSuffix(usage, "\n"), "\n") {
		if len(line) > 80 {
			t.Errorf("Usage() line longer than 80 columns: %q", line)
		}
	}
}

func TestCheckRunRefusesASilentDryRun(t *testing.T) {
	const url = "nats://127.0.0.1:4222"
	tests := []struct {
		name    string
		env     map[string]string
		wantErr bool
		dryRun  bool
	}{
		{"embedded server without a key: dry run", nil, false, true},
		{"real NATS without a key: refused", map[string]string{"NATS_URL": url}, true, true},
		{"real NATS, dry run asked for", map[string]string{"NATS_URL": url, "RELAY_DRY_RUN": "true"}, false, true},
		{"real NATS with a key", map[string]string{"NATS_URL": url, "CIO_CDP_API_KEY": "k"}, false, false},
		{"key and dry run asked for", map[string]string{"NATS_URL": url, "CIO_CDP_API_KEY": "k", "RELAY_DRY_RUN": "yes"}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustLoad(t, nil, tt.env)
			err := c.CheckRun()
			if (err != nil) != tt.wantErr {
				t.Fatalf("CheckRun = %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "CIO_CDP_API_KEY") {
				t.Errorf("error %q does not name CIO_CDP_API_KEY", err)
			}
			if c.DryRun() != tt.dryRun {
				t.Errorf("DryRun = %v, want %v", c.DryRun(), tt.dryRun)
			}
		})
	}
}

func TestStreamReplicasWithACluster(t *testing.T) {
	c := mustLoad(t, nil, map[string]string{"NATS_URL": "nats://a:4222,nats://b:4222,nats://c:4222", "RELAY_STREAM_REPLICAS": "3"})
	if c.Queue.Replicas != 3 {
		t.Fatalf("Queue.Replicas = %d, want 3", c.Queue.Replicas)
	}
	if r := c.Redacted(); !strings.Contains(r, "RELAY_STREAM_REPLICAS=3\n") {
		t.Errorf("Redacted() lacks RELAY_STREAM_REPLICAS=3:\n%s", r)
	}
}
