// Package config reads, defaults and validates cio-relay's settings.
//
// # Model
//
// Every setting is an environment variable. Every setting that is not a
// secret also has a command-line flag named after it: lower-cased, '_'
// turned into '-', and the RELAY_ prefix dropped, so RELAY_BATCH_MAX_BYTES is
// -batch-max-bytes and NATS_URL is -nats-url. A flag wins over its variable,
// and a variable wins over the default. Whitespace around a value is trimmed,
// and an empty value counts as unset.
//
// Secrets (NATS_PASSWORD, NATS_TOKEN and the Customer.io API keys) come only
// from the environment, never from flags, which ps would show: either NAME
// holds the secret, or NAME_FILE names a file holding it, as a mounted
// Kubernetes secret does. Setting both is an error. A secret is held in a
// [Secret], which prints as "[redacted]" in every format (fmt, JSON, log/slog)
// and gives up its value only through [Secret.Reveal]; [Secret.Reload]
// re-reads a file-backed secret so a rotated key is picked up without a
// restart.
//
// One table (variables.go) lists every setting once, with its default, its
// help text and how it is parsed and checked. That table drives the reading
// of the environment, the flags, [Usage] and [Config.Redacted], so a setting
// cannot be documented without being read, or read without being documented.
//
// [Load] checks every setting on its own (form and range), then the rules
// that tie settings together (say RELAY_FLUSH_INTERVAL against
// RELAY_ACK_WAIT), and reports every problem at once with [errors.Join]. Each
// problem names its variable, says what is wrong and what was given (but
// never a secret), so one failed start is enough to fix a deployment.
package config
