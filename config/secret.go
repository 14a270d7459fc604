package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"strings"
)

// redacted is what a set Secret prints as, whatever the format.
const redacted = "[redacted]"

// maxSecretFile bounds how much of a _FILE secret is read. Keys and tokens
// are well under a kilobyte; the bound turns a path to the wrong file (a log,
// /dev/zero) into an error instead of an unbounded read.
const maxSecretFile = 64 << 10

// Secret holds a credential. Every way of printing it (String, GoString,
// Format, MarshalJSON, LogValue) gives "[redacted]", or "" when it is unset;
// only Reveal returns the value.
type Secret struct {
	value string
	name  string // the variable it was read from, without _FILE
	path  string // the file it was read from; "" when it came from the environment
}

// Reveal returns the secret's value, "" when unset.
func (s Secret) Reveal() string { return s.value }

// IsSet reports whether the secret has a value.
func (s Secret) IsSet() bool { return s.value != "" }

// Source says where the secret came from: "env NAME", "file /path", or ""
// when unset. The path of a secret file is not itself secret.
func (s Secret) Source() string {
	switch {
	case s.path != "":
		return "file " + s.path
	case s.value != "":
		return "env " + s.name
	}
	return ""
}

// String returns "[redacted]", or "" when the secret is unset.
func (s Secret) String() string {
	if !s.IsSet() {
		return ""
	}
	return redacted
}

// GoString returns the same as String, so %#v does not reveal the secret.
func (s Secret) GoString() string { return s.String() }

// Format writes the same as String for every verb, so no fmt verb (%v, %+v,
// %#v, %s, %q, %x, ...) reveals the secret, also when it is a field of a
// printed struct.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.String()) }

// MarshalJSON encodes the secret as the JSON string "[redacted]" or "".
func (s Secret) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(s.String())), nil }

// LogValue implements [slog.LogValuer], logging "[redacted]" or "".
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// Reload re-reads a secret that came from a NAME_FILE file and returns it,
// so a key rotated in a mounted Kubernetes secret takes effect without a
// restart. A secret from the environment, or an unset one, cannot change
// while the process runs and is returned as it is.
func (s Secret) Reload() (Secret, error) {
	if s.path == "" {
		return s, nil
	}
	return readSecretFile(s.name, s.path)
}

// loadSecret reads the secret NAME from NAME or from the file NAME_FILE
// names, whichever is set; both set is an error.
func loadSecret(name string, getenv func(string) string) (Secret, error) {
	value := strings.TrimSpace(getenv(name))
	path := strings.TrimSpace(getenv(name + "_FILE"))
	switch {
	case value != "" && path != "":
		return Secret{}, fmt.Errorf("%s, %s_FILE: both are set; set only one (the secret itself, or the file holding it)", name, name)
	case path != "":
		return readSecretFile(name, path)
	case value != "":
		return Secret{value: value, name: name}, nil
	}
	return Secret{}, nil
}

// readSecretFile reads the secret NAME from path, trimmed of surrounding
// whitespace as a mounted Kubernetes secret often ends in a newline.
func readSecretFile(name, path string) (Secret, error) {
	b, err := readLimited(path, maxSecretFile)
	if err != nil {
		return Secret{}, fmt.Errorf("%s_FILE: cannot read file %s: %w", name, path, err)
	}
	value := strings.TrimSpace(string(b))
	if value == "" {
		return Secret{}, fmt.Errorf("%s_FILE: file %s is empty", name, path)
	}
	return Secret{value: value, name: name, path: path}, nil
}

// readLimited reads at most limit bytes of the file at path, failing if
// there are more. Errors leave out the path, which the caller names.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, pathless(err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, pathless(err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("larger than %d bytes, which no key is; is it the right file?", limit)
	}
	return b, nil
}

// pathless strips the operation and path from a file error, for messages
// that name the path themselves; errors.Is(err, fs.ErrNotExist) still holds.
func pathless(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
