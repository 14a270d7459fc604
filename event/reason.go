package event

// Reason names why a message was given up on and dead-lettered. Reasons are
// stable identifiers: they label metrics, the Cio-Relay-Reason header of a
// dead letter and the dlq tools' --reason filter.
//
// Every reason of every package is declared here, once: the calls' own
// (below), the broadcast triggers' (package trigger), the Track API calls'
// (package sink) and the delivery outcomes the worker ends with. This is
// the lowest package that refuses messages, so trigger, sink and
// deadletter (whose Reason is this type) all share it without any of them
// importing another, or NATS reaching sink through it. README's table of
// dead-letter reasons has a row for each, which a test checks.
type Reason string

// The reasons, in the order of README's table.
const (
	// A call (cio.identify, cio.track, …) that is not one Customer.io
	// would accept; found by Preparer before it is ever sent.
	ReasonInvalidJSON     Reason = "invalid_json"
	ReasonInvalidUTF8     Reason = "invalid_utf8"
	ReasonUnknownType     Reason = "unknown_type"
	ReasonTypeMismatch    Reason = "type_mismatch"
	ReasonInvalidField    Reason = "invalid_field"
	ReasonMissingUser     Reason = "missing_user"
	ReasonMissingEvent    Reason = "missing_event"
	ReasonMissingName     Reason = "missing_name"
	ReasonMissingGroupID  Reason = "missing_group_id"
	ReasonMissingPrevious Reason = "missing_previous_id"
	ReasonTooLarge        Reason = "too_large"

	// A broadcast trigger (cio.broadcast) that cannot be sent (see
	// trigger.ParseRequest); its syntax faults use the reasons above.
	ReasonInvalidBroadcastID Reason = "invalid_broadcast_id"
	ReasonAudience           Reason = "audience" // no audience, or more than one
	ReasonInvalidDataFileURL Reason = "invalid_data_file_url"
	ReasonTooManyRecipients  Reason = "too_many_recipients"

	// A Track API call (suppression, unsubscribe, metric) that cannot be
	// sent (see sink.ParseSuppression, ParseUnsubscribe, ParseMetric).
	ReasonInvalidIdentifier Reason = "invalid_identifier"
	ReasonInvalidDeliveryID Reason = "invalid_delivery_id"
	ReasonInvalidMetric     Reason = "invalid_metric"
	ReasonInvalidTimestamp  Reason = "invalid_timestamp"

	// How a delivery ended: not a verdict on the message's bytes, so a
	// replay may succeed (see deadletter.Replayable).
	ReasonRejected         Reason = "rejected"          // Customer.io refused the call on its own (4xx)
	ReasonRetriesExhausted Reason = "retries_exhausted" // transient failures on every one of RELAY_MAX_DELIVER deliveries
	ReasonAmbiguous        Reason = "ambiguous"         // a broadcast trigger that may have been sent: never retried blindly
)

// Reasons returns every reason, in the order of README's table.
func Reasons() []Reason {
	return []Reason{
		ReasonInvalidJSON, ReasonInvalidUTF8, ReasonUnknownType, ReasonTypeMismatch, ReasonInvalidField,
		ReasonMissingUser, ReasonMissingEvent, ReasonMissingName, ReasonMissingGroupID, ReasonMissingPrevious,
		ReasonTooLarge,
		ReasonInvalidBroadcastID, ReasonAudience, ReasonInvalidDataFileURL, ReasonTooManyRecipients,
		ReasonInvalidIdentifier, ReasonInvalidDeliveryID, ReasonInvalidMetric, ReasonInvalidTimestamp,
		ReasonRejected, ReasonRetriesExhausted, ReasonAmbiguous,
	}
}

// String returns the reason as it appears in headers and metric labels.
func (r Reason) String() string { return string(r) }
