package config_test

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"

	"github.com/cio-relay/cio-relay/config"
)

func ExampleLoad() {
	env := map[string]string{
		"CIO_REGION":      "eu",
		"CIO_CDP_API_KEY": "cdp-key",
	}
	cfg, err := config.Load([]string{"-batch-max-bytes=250000"}, func(k string) string { return env[k] })
	if errors.Is(err, flag.ErrHelp) {
		fmt.Print(config.Usage()) // and exit 0
		return
	}
	if err != nil {
		fmt.Println(err) // and exit 2
		return
	}
	fmt.Println(cfg.CIO.CDPURL, cfg.Batch.MaxBytes, cfg.DryRun(), cfg.NATS.Embedded())
	fmt.Println(cfg.CIO.CDPAPIKey, cfg.CIO.CDPAPIKey.Source())
	// Output:
	// https://cdp-eu.customer.io/v1 250000 false true
	// [redacted] env CIO_CDP_API_KEY
}

func ExampleLoad_problems() {
	env := map[string]string{
		"RELAY_BATCH_MAX_BYTES": "600000",
		"RELAY_ACK_WAIT":        "30",
		"CIO_SITE_ID":           "site-1",
	}
	_, err := config.Load(nil, func(k string) string { return env[k] })
	fmt.Println(err)
	// Output:
	// RELAY_ACK_WAIT: must be a duration with a unit, such as 500ms, 30s or 2m, got "30"
	// RELAY_BATCH_MAX_BYTES: must be at most 500000 (Customer.io's batch limit), got 600000
	// CIO_SITE_ID: must be set together with CIO_TRACK_API_KEY, which is unset
}

func ExampleSecret() {
	env := map[string]string{"CIO_APP_API_KEY": "app-key"}
	cfg, _ := config.Load(nil, func(k string) string { return env[k] })
	key := cfg.CIO.AppAPIKey
	b, _ := json.Marshal(key)
	fmt.Printf("%v %#v %s\n", key, key, b)
	fmt.Println(key.Reveal())
	// Output:
	// [redacted] [redacted] "[redacted]"
	// app-key
}
