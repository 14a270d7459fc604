package publish

import (
	"errors"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrAckTimeout is the failure of an attempt whose PubAck did not come
// within [Options.AckTimeout]. The call may or may not be stored: it is
// sent again with the same Nats-Msg-Id, which the stream de-duplicates.
var ErrAckTimeout = errors.New("no PubAck within the ack timeout")

// Server error codes of a stream between leaders (nats-server's
// JSClusterNotAvailErr, JSClusterNotLeaderErr, JSStreamOfflineErr).
const (
	errCodeClusterNotAvailable jetstream.ErrorCode = 10008
	errCodeClusterNotLeader    jetstream.ErrorCode = 10009
	errCodeStreamOffline       jetstream.ErrorCode = 10118
)

// Retryable reports whether a failed publish may succeed if the call is
// sent again, unchanged: no PubAck in time (the call may have been stored;
// the duplicate window drops the copy), no responders (no stream leader at
// the moment), a cluster between leaders, or a connection that lost its
// server and is reconnecting (the calls awaiting a PubAck fail with it). A rejection of the call itself (another stream, too large,
// limits) or a closed connection is not.
func Retryable(err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, ErrAckTimeout),
		errors.Is(err, jetstream.ErrAsyncPublishTimeout),
		errors.Is(err, nats.ErrTimeout),
		errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrNoResponders),
		errors.Is(err, nats.ErrDisconnected),
		errors.Is(err, nats.ErrReconnectBufExceeded),
		errors.Is(err, jetstream.ErrTooManyStalledMsgs):
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case errCodeClusterNotAvailable, errCodeClusterNotLeader, errCodeStreamOffline:
			return true
		}
		return apiErr.Code == 503
	}
	return false
}
