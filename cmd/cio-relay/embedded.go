package main

import (
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/cio-relay/cio-relay/config"
)

// startEmbedded starts the in-process JetStream server used when NATS_URL is
// unset. It listens on cfg.Listen so applications and the nats CLI can
// publish to it.
func startEmbedded(cfg config.Embedded, log *slog.Logger) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("RELAY_EMBEDDED_LISTEN: %w", err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("RELAY_EMBEDDED_LISTEN: port %q: %w", portStr, err)
	}
	srv, err := server.NewServer(&server.Options{
		ServerName: "cio-relay-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.DataDir,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, fmt.Errorf("embedded NATS server did not start listening on %s within 10s (is the port in use? set RELAY_EMBEDDED_LISTEN)", cfg.Listen)
	}
	log.Info("embedded NATS JetStream server started (NATS_URL is unset)", "url", srv.ClientURL(), "data_dir", cfg.DataDir)
	return srv, nil
}
