package dlqcli

import (
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cio-relay/cio-relay/deadletter"
)

// Letter is one message of the dead-letter stream, as a walk reads it.
type Letter struct {
	deadletter.Letter     // its Body is nil when the walk reads headers only
	Size              int // of the body, also when it was not read
}

func newLetter(seq uint64, subject string, stored time.Time, h nats.Header, body []byte, size int) *Letter {
	rec, _ := deadletter.ParseRecord(h)
	return &Letter{Letter: deadletter.Letter{Seq: seq, Subject: subject, Stored: stored, Header: h, Body: body, Record: rec}, Size: size}
}

// letterOf reads a message delivered by a walk.
func letterOf(m jetstream.Msg, meta *jetstream.MsgMetadata) *Letter {
	h := m.Headers()
	size := len(m.Data())
	if v := h.Get(msgSizeHeader); v != "" { // a headers-only walk
		if n, err := strconv.Atoi(v); err == nil {
			size = n
		}
		h = withoutKeys(h, msgSizeHeader)
	}
	return newLetter(meta.Sequence.Stream, m.Subject(), meta.Timestamp, h, m.Data(), size)
}

// Time is when the message was dead-lettered: its Cio-Relay-Dead-Lettered
// header, or when the dead-letter stream stored it if that is missing.
func (l *Letter) Time() time.Time {
	if !l.Record.DeadLettered.IsZero() {
		return l.Record.DeadLettered
	}
	return l.Stored
}

// matches applies the filters the server does not: reason, excluded
// subjects and time. The
// subject filter was applied by the walk's consumer.
func (l *Letter) matches(f Filter, now time.Time) bool {
	if len(f.Reasons) > 0 && !slices.Contains(f.Reasons, string(l.Record.Reason)) {
		return false
	}
	for _, x := range f.Excluded {
		if subjectMatches(x, l.OriginalSubject()) {
			return false
		}
	}
	t := l.Time()
	if !f.Since.IsZero() && t.Before(f.Since.Time(now)) {
		return false
	}
	if !f.Until.IsZero() && !t.Before(f.Until.Time(now)) {
		return false
	}
	return true
}

// jsonLetter is a Letter as list --json and show --json print it. Every
// field is always present, so a script can rely on the keys, except the
// body, which is body when it is valid UTF-8 and body_b64 otherwise.
type jsonLetter struct {
	Seq             uint64     `json:"seq"`
	Subject         string     `json:"subject"`
	OriginalSubject string     `json:"original_subject"`
	Reason          string     `json:"reason"`
	Status          int        `json:"status"` // 0: no HTTP answer involved
	Error           string     `json:"error"`
	Deliveries      uint64     `json:"deliveries"`
	Stream          string     `json:"stream"`
	StreamSeq       uint64     `json:"stream_seq"`
	FirstSeen       *time.Time `json:"first_seen"` // null when unknown
	DeadLettered    time.Time  `json:"dead_lettered"`
	MessageID       string     `json:"message_id"`
	Body            *string    `json:"body,omitempty"`
	BodyB64         []byte     `json:"body_b64,omitempty"` // encoding/json writes []byte as base64
}

func (l *Letter) json() jsonLetter {
	r := l.Record
	j := jsonLetter{
		Seq: l.Seq, Subject: l.Subject, OriginalSubject: l.OriginalSubject(),
		Reason: string(r.Reason), Status: r.Status, Error: r.Detail, Deliveries: r.Deliveries,
		Stream: r.Stream, StreamSeq: r.StreamSeq, DeadLettered: l.Time().UTC(), MessageID: r.MessageID,
	}
	if !r.FirstSeen.IsZero() {
		t := r.FirstSeen.UTC()
		j.FirstSeen = &t
	}
	if utf8.Valid(l.Body) {
		s := string(l.Body)
		j.Body = &s
	} else {
		j.BodyB64 = l.Body
	}
	return j
}

// withoutKeys returns h without the given keys, leaving h as it is.
func withoutKeys(h nats.Header, keys ...string) nats.Header {
	out := make(nats.Header, len(h))
	for k, v := range h {
		if !slices.Contains(keys, k) {
			out[k] = v
		}
	}
	return out
}

// oneLine makes text safe to print on one line of a terminal: invalid UTF-8
// becomes U+FFFD, control characters (escape sequences included) and runs
// of white space become one space, and the result is cut to at most max
// bytes, with "…" when it was cut.
func oneLine(b []byte, max int) string {
	var sb strings.Builder
	space := false
	cut := false
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		b = b[n:]
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			if space {
				continue
			}
			r, space = ' ', true
		} else {
			space = false
		}
		if sb.Len()+utf8.RuneLen(r) > max {
			cut = true
			break
		}
		sb.WriteRune(r)
	}
	if cut {
		return strings.TrimRight(sb.String(), " ") + "…"
	}
	return sb.String()
}

// printable escapes the control characters of text meant for a terminal,
// keeping newlines and tabs, so a dead letter cannot move the cursor or
// change colours; invalid UTF-8 becomes U+FFFD.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) && r != '\n' && r != '\t' {
			return '�'
		}
		return r
	}, strings.ToValidUTF8(s, "�"))
}

// age writes d in its largest whole unit: 45s, 12m, 3h, 2d.
func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d/time.Hour)) + "h"
	}
	return strconv.Itoa(int(d/(24*time.Hour))) + "d"
}

// subjectMatches reports whether subject matches pattern, with NATS's
// wildcards: * one token, > the rest (one token or more).
func subjectMatches(pattern, subject string) bool {
	p, s := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, t := range p {
		switch {
		case t == ">":
			return len(s) > i
		case i >= len(s):
			return false
		case t != "*" && t != s[i]:
			return false
		}
	}
	return len(p) == len(s)
}
