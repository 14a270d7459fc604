package config

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// value parses a setting into its Config field and prints it back.
type value interface {
	// set parses s (trimmed, not empty) into the field. Its error says what
	// is wrong and what was given, without the variable's name.
	set(s string) error
	// String prints the field as a user would write it.
	String() string
	// isBool reports whether the flag may be given without a value.
	isBool() bool
}

// field binds a setting to a Config field of type T.
type field[T any] struct {
	p     *T
	parse func(string) (T, error) // says what form is expected
	show  func(T) string
	echo  func(string) string // quotes a rejected input back; strconv.Quote if nil
	rules []rule[T]           // checks on the parsed value, e.g. ranges
}

// rule returns what is wrong with a parsed value, or "" if nothing is.
type rule[T any] func(T) string

func (f *field[T]) set(s string) error {
	x, err := f.parse(s)
	if err != nil {
		echo := f.echo
		if echo == nil {
			echo = strconv.Quote
		}
		return fmt.Errorf("%w, got %s", err, echo(s))
	}
	for _, r := range f.rules {
		if problem := r(x); problem != "" {
			// s parsed, so it is a plain number or duration: no quotes needed.
			return fmt.Errorf("%s, got %s", problem, s)
		}
	}
	*f.p = x
	return nil
}

func (f *field[T]) String() string { return f.show(*f.p) }

func (f *field[T]) isBool() bool {
	_, ok := any(*f.p).(bool)
	return ok
}

// showing sets how the field is printed, for values whose zero has a name.
func (f *field[T]) showing(show func(T) string) *field[T] {
	f.show = show
	return f
}

// echoing sets how a rejected input is quoted back in an error.
func (f *field[T]) echoing(echo func(string) string) *field[T] {
	f.echo = echo
	return f
}

func intField(p *int, rules ...rule[int]) *field[int] {
	return &field[int]{p: p, parse: parseInt, show: strconv.Itoa, rules: rules}
}

func durationField(p *time.Duration, rules ...rule[time.Duration]) *field[time.Duration] {
	return &field[time.Duration]{p: p, parse: parseDuration, show: time.Duration.String, rules: rules}
}

func boolField(p *bool) *field[bool] {
	return &field[bool]{p: p, parse: parseBool, show: strconv.FormatBool}
}

// stringField binds a string; parse checks and normalises it, nil takes it
// as it is.
func stringField(p *string, parse func(string) (string, error)) *field[string] {
	if parse == nil {
		parse = func(s string) (string, error) { return s, nil }
	}
	return &field[string]{p: p, parse: parse, show: func(s string) string { return s }}
}

func levelField(p *slog.Level) *field[slog.Level] {
	levels := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}
	return &field[slog.Level]{
		p: p,
		parse: func(s string) (slog.Level, error) {
			l, ok := levels[strings.ToLower(s)]
			if !ok {
				return 0, errors.New("must be one of debug, info, warn, error")
			}
			return l, nil
		},
		show: func(l slog.Level) string { return strings.ToLower(l.String()) },
	}
}

func parseInt(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, errors.New("must be a whole number in digits, such as 2000")
	}
	return n, nil
}

func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, errors.New("must be a duration with a unit, such as 500ms, 30s or 2m")
	}
	return d, nil
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "true", "1", "yes":
		return true, nil
	case "false", "0", "no":
		return false, nil
	}
	return false, errors.New("must be true or false (also 1/0, yes/no)")
}

// atLeast requires x >= limit; why, if not empty, says why.
func atLeast[T cmp.Ordered](limit T, why string) rule[T] {
	return func(x T) string {
		if x < limit {
			return fmt.Sprintf("must be at least %v%s", limit, because(why))
		}
		return ""
	}
}

// atMost requires x <= limit; why, if not empty, says why.
func atMost[T cmp.Ordered](limit T, why string) rule[T] {
	return func(x T) string {
		if x > limit {
			return fmt.Sprintf("must be at most %v%s", limit, because(why))
		}
		return ""
	}
}

func positive[T int | time.Duration]() rule[T] {
	return func(x T) string {
		if x <= 0 {
			return "must be greater than 0"
		}
		return ""
	}
}

func nonNegative[T int | time.Duration]() rule[T] {
	return func(x T) string {
		if x < 0 {
			return "must not be negative"
		}
		return ""
	}
}

func because(why string) string {
	if why == "" {
		return ""
	}
	return " (" + why + ")"
}

// oneOf accepts one of choices, in any case, and returns it lower-cased.
func oneOf(choices ...string) func(string) (string, error) {
	return func(s string) (string, error) {
		s = strings.ToLower(s)
		for _, c := range choices {
			if s == c {
				return s, nil
			}
		}
		return "", fmt.Errorf("must be one of %s", strings.Join(choices, ", "))
	}
}

// streamName accepts a JetStream stream or consumer name.
func streamName(s string) (string, error) {
	const limit = 255 // JetStream's limit on stream and consumer names
	bad := strings.ContainsFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r) || strings.ContainsRune(`.*>/\`, r)
	})
	if bad || len(s) > limit {
		return "", fmt.Errorf(`must be a JetStream name: at most %d characters, none of them whitespace or . * > / \`, limit)
	}
	return s, nil
}

// hostPort accepts a listen address, such as 127.0.0.1:4222 or :9090.
func hostPort(s string) (string, error) {
	_, port, err := net.SplitHostPort(s)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		return "", errors.New("must be host:port with a numeric port, such as 127.0.0.1:4222 or :9090")
	}
	return s, nil
}

// listenOrOff accepts a listen address, or "off", which it returns as "".
func listenOrOff(s string) (string, error) {
	if strings.EqualFold(s, "off") {
		return "", nil
	}
	if _, err := hostPort(s); err != nil {
		return "", errors.New(`must be host:port with a numeric port, such as :9090, or "off"`)
	}
	return s, nil
}

// showOff prints the "" of listenOrOff as the "off" that produced it.
func showOff(s string) string {
	if s == "" {
		return "off"
	}
	return s
}

// stdoutOrPath accepts a file path, or "-", which it returns as "" (stdout).
func stdoutOrPath(s string) (string, error) {
	if s == "-" {
		return "", nil
	}
	return s, nil
}

// showStdout prints the "" of stdoutOrPath as "-".
func showStdout(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// existingFile accepts the path of a file that can be opened. It only opens
// it: the NATS client reads it when it connects.
func existingFile(s string) (string, error) {
	f, err := os.Open(s)
	if err != nil {
		return "", fmt.Errorf("must name a readable file: %w", pathless(err))
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.IsDir() {
		return "", errors.New("must name a readable file, not a directory")
	}
	return s, nil
}

// natsURLs accepts a comma-separated list of NATS server URLs and returns
// it with the spaces around entries removed.
func natsURLs(s string) (string, error) {
	const want = "must be a comma-separated list of nats://, tls://, ws:// or wss:// URLs with a host"
	entries := strings.Split(s, ",")
	for i, e := range entries {
		e = strings.TrimSpace(e)
		u, err := parseURL(e)
		switch {
		case err != nil:
			return "", fmt.Errorf("%s (%q: %w)", want, redactURL(e), err)
		case u.Scheme != "nats" && u.Scheme != "tls" && u.Scheme != "ws" && u.Scheme != "wss":
			return "", fmt.Errorf("%s (%q has scheme %q)", want, redactURL(e), u.Scheme)
		case u.User != nil:
			return "", fmt.Errorf("must not hold credentials (%q); set NATS_USER and NATS_PASSWORD, or NATS_TOKEN", redactURL(e))
		}
		entries[i] = e
	}
	return strings.Join(entries, ","), nil
}

// apiURL accepts the absolute http(s) base URL of a Customer.io API and
// returns it without a trailing '/', as paths are appended to it.
func apiURL(s string) (string, error) {
	const want = "must be an absolute http:// or https:// URL, such as https://cdp.customer.io/v1"
	u, err := parseURL(s)
	switch {
	case err != nil:
		return "", fmt.Errorf("%s (%w)", want, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return "", fmt.Errorf("%s (scheme is %q)", want, u.Scheme)
	case u.User != nil:
		return "", errors.New("must not hold credentials; the API keys are set with CIO_CDP_API_KEY, CIO_APP_API_KEY and CIO_TRACK_API_KEY")
	case u.RawQuery != "" || u.Fragment != "" || strings.HasSuffix(s, "?") || strings.HasSuffix(s, "#"):
		return "", errors.New("must not have a query or fragment, as API paths are appended to it")
	}
	return strings.TrimRight(s, "/"), nil
}

// parseURL parses s and requires a host name. Its errors leave out s, which
// may hold a password.
func parseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if strings.Contains(s, "@") || !errors.As(err, &ue) {
			// The details could quote part of a password, such as a bad
			// %-escape in it.
			return nil, errors.New("not a valid URL")
		}
		return nil, ue.Err
	}
	if u.Hostname() == "" {
		return nil, errors.New("no host")
	}
	return u, nil
}

// redactURL hides anything before an '@' in the authority of each
// comma-separated URL in s, for quoting a rejected URL in an error.
func redactURL(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		at := strings.LastIndex(p, "@")
		if at < 0 {
			continue
		}
		start := 0
		if j := strings.Index(p, "://"); j >= 0 && j < at {
			start = j + len("://")
		}
		parts[i] = p[:start] + redacted + p[at:]
	}
	return strings.Join(parts, ",")
}
