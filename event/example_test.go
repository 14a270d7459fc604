package event_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/cio-relay/cio-relay/event"
)

// PrepareAt turns a message body into the exact bytes of one CDP call: the
// body compacted, unknown fields and HTML-sensitive characters kept as
// written, and in front of them what the body lacks: "type" from the
// subject, a messageId derived from the stream sequence, the publish time
// as "timestamp". A body Customer.io would refuse is an *InvalidError with a stable
// reason, the one its dead letter carries.
func ExamplePreparer_PrepareAt() {
	var p event.Preparer
	published := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	id := event.ID{Prefix: "CIO-tp8abc-", Seq: 42}
	call, stamp, err := p.PrepareAt(nil, event.TypeOfSubject("cio.track"),
		[]byte(`{ "userId": "u-1", "event": "Signed <Up>", "plan": "pro" }`), id, published)
	fmt.Println(string(call), stamp, err)

	_, _, err = p.PrepareAt(nil, event.Track, []byte(`{"userId":"u-1"}`), id, published)
	var ie *event.InvalidError
	if errors.As(err, &ie) {
		fmt.Println(ie.Reason, "-", err)
	}
	// Output:
	// {"type":"track","messageId":"CIO-tp8abc-42","timestamp":"2026-06-01T12:00:00.000Z","userId":"u-1","event":"Signed <Up>","plan":"pro"} inserted <nil>
	// missing_event - invalid call (missing_event): track needs event, a non-empty string
}
