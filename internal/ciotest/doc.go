// Package ciotest is a stand-in for Customer.io's HTTP APIs, for tests that
// cannot reach the real service.
//
// It is not a mock that accepts anything: it keeps the documented behaviour
// of the three Customer.io APIs cio-relay calls and records everything it
// receives, so an end-to-end
// test that publishes tens of thousands of events can count exactly what
// arrived, what was lost and why. [NewServer] starts one on 127.0.0.1 for
// the length of a test; point the relay at [Server.CDPURL],
// [Server.TrackURL] and [Server.AppURL].
//
// # CDP (Data Pipelines) API
//
// POST /v1/batch takes {"batch":[call,…]} (other top-level members such as
// sentAt, context and messageId are allowed and ignored); POST
// /v1/{identify,track,page,screen,group,alias} take one call. Auth is HTTP
// Basic with the API key as user and a blank password.
//
// The size limits are enforced as Customer.io enforces them, in bytes read
// strictly ([MaxBatchBytes] = 500,000 for a batch body, [MaxCallBytes] =
// 32,000 for each call as its bytes appear in the batch array, and for a
// single-call body): an over-limit request is answered 200 and nothing in it
// is delivered. That silent 200 is the point: a packing bug shows up as
// calls missing from [Server.Delivered], and [Request.Calls] of the dropped
// request names them.
//
// A request that passes the limits fails validation when the body is not
// valid UTF-8 or not valid JSON, or when any call breaks Customer.io's
// rules: type missing or unknown; identify/track/page/screen without userId
// or anonymousId; track without event; screen without name; group without
// groupId or without userId or anonymousId; alias without userId or
// previousId; traits, properties, context or integrations present but not
// an object; timestamp, sentAt or originalTimestamp present but not an ISO
// 8601 date-time string (read as RFC 3339, the OpenAPI's date-time). The
// batch envelope's own context, integrations and sentAt have the same
// types. Identifiers may be non-empty strings or numbers; event and name
// must be non-empty strings. Options.Rule adds a rule of the test's own,
// for a call only Customer.io refuses. A call without messageId is
// accepted, as Customer.io accepts it, and counted in
// [Stats.CallsWithoutMessageID].
//
// What happens to a request that fails validation depends on its mode, as
// on Customer.io:
//
//   - Strict, with the header X-Strict-Mode: 1 ([StrictModeHeader]): 400
//     with {"meta":{"errors":["…"]}} (the OpenAPI's shape; one entry per
//     failing call, named by index and messageId) and nothing in the
//     request delivered.
//   - Permissive, without the header or with any other value: 200 {}, the
//     valid calls delivered and the invalid ones silently dropped. That
//     silent 200 is the unfriendly part a test must be able to see: the
//     dropped calls carry their [Call.Problem], are listed by
//     [Server.DroppedInvalid] and counted in [Stats.CallsDroppedInvalid].
//
// # Track API
//
// POST /api/v1/customers/{identifier}/suppress and /unsuppress, Basic auth
// with the site id and Track API key. The identifier is taken from the
// escaped path and unescaped once, so one containing "/", "+", "@" or any
// Unicode arrives exactly as the client meant it; see [Server.Suppressions].
//
// POST /unsubscribe/{delivery_id} at the host root (not under /api/v1),
// body {"unsubscribe":bool}, and POST /api/v1/metrics, body delivery_id and
// metric (one of [Metrics]) required, timestamp (integer unix seconds;
// 10^10 or more, such as milliseconds, is 400), recipient (a string, or a
// whole number: the reference types an SMS recipient, the phone number, as
// an integer), reason, href (strings) and metadata (an object) optional,
// any other member 400. Both
// need no Authorization and ignore credentials sent anyway. A delivery id
// that is not base64 text (standard or URL alphabet, at most 200 bytes) is
// malformed (400): Customer.io documents 400 for a malformed id without
// saying what one is. The deprecated /api/v1/push/events is not served
// (404). See [Server.Unsubscribes] and [Server.Metrics].
//
// # App API
//
// POST /v1/campaigns/{broadcast_id}/triggers, Bearer auth with the App API
// key. The id must be a positive integer (else 404); the body a JSON object
// with at most one of recipients, ids, emails, per_user_data and
// data_file_url (else 400). One trigger per broadcast is accepted in any
// [BroadcastInterval] (10 s), measured with Options.Now; another within it
// is answered 429 with Retry-After giving the whole seconds left, rounded
// up, and does not restart the interval. Other broadcasts are unaffected.
// An accepted trigger is answered {"id":n} with n increasing from 1; see
// [Server.Triggers].
//
// The App API's reads (segments, messages, newsletters, a broadcast's
// triggers and their errors, …; see appread.go) answer GET with what
// [Server.SetAppData] gave them, paged with opaque start/next cursors and
// limited to [AppReadLimit] reads per [AppReadWindow] (429 with
// Retry-After beyond).
//
// # Stricter than Customer.io
//
// Where the documentation is silent the stand-in refuses rather than
// guesses, so a test passing here does not rely on leniency:
//
//   - Every body read as JSON must be sent with Content-Type
//     application/json (charset, if given, utf-8) and without
//     Content-Encoding (400, in either CDP mode).
//   - A batch must contain at least one call, and "batch" must appear once
//     (400).
//   - A call naming one of type, messageId, userId, anonymousId, event,
//     name, groupId or previousId twice is rejected (400): which copy wins
//     depends on the parser. messageId, when present, must be a string.
//   - A single-call endpoint accepts a call without type, taking it from
//     the path, but rejects one whose type disagrees (400).
//   - Trigger bodies: each audience field must have its documented shape
//     (ids, emails and per_user_data non-empty arrays, data_file_url an
//     http(s) URL, data and recipients objects, the *_ignore_missing and
//     email_add_duplicates flags booleans), and an audience field set to
//     null counts as given.
//   - A request that is both over a size limit and invalid is answered as
//     over the limit (200, dropped): the limit is checked first, as the
//     real service drops such requests before reading them.
//
// Not modelled: the Track API's fair-use rate limit, trigger processing
// (422 for unknown recipients), gzip bodies, and any endpoint not named
// above (404). Use Options.Fault to inject 429s, 5xx answers, delays,
// connection resets and redirects (a 3xx [Fault] with a Location, e.g. to
// [Server.MovedURL], which answers 200 to anything and delivers nothing:
// what a client that follows redirects takes for success), and answers
// lost after Customer.io acted (Fault.AfterApplying: the trigger is
// created, the calls delivered, and the client sees only a 504 or a reset,
// as behind a gateway that timed out). [FailCalls]
// makes every request carrying given calls fail, however they are batched:
// one call Customer.io keeps answering 500 for.
//
// Error bodies are {"meta":{"error":"…"}}, the shape the Track and App APIs
// use, and {"meta":{"errors":["…"]}} for the CDP API; clients should treat
// them as opaque text.
//
// # Records
//
// Every request is recorded ([Server.Requests]) with its outcome, status,
// body and, for CDP, its parsed calls. Calls keep their exact bytes as
// slices of the request body, so a million calls cost their own bytes plus a
// small record each. [Server.WaitDelivered] blocks until a number of calls
// have been delivered, for tests that must not poll.
package ciotest
