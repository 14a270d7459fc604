// Package event turns the body of a NATS message into the exact bytes of one
// Customer.io CDP call, or says precisely why it cannot.
//
// The model is Segment's: a call is a JSON object with camelCase fields
// (userId, anonymousId, traits, properties, event, name, groupId, previousId,
// context, integrations, timestamp, messageId) and a type taken from the
// subject it was published on (cio.track → track). Prepare validates a body
// with Customer.io's documented rules (required fields per type, and the
// types its reference gives traits, properties, context, integrations —
// objects — and timestamp, sentAt, originalTimestamp — RFC 3339 date-time
// strings) and returns its wire form: the body compacted (insignificant
// whitespace removed, nothing else changed), with "type" and "messageId"
// inserted when absent. PrepareAt also inserts the publish time as
// "timestamp" when the body has none, so an event keeps the time it
// happened however long it waited in the queue. Unknown fields pass through
// byte for byte and the call is never decoded into a map or re-encoded, so
// its size is known exactly and HTML-sensitive characters (<, >, &) keep
// their original, shorter form.
package event
