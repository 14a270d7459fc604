// Package trigger validates API-triggered broadcast requests and paces
// them to Customer.io's limit of one trigger per broadcast every 10
// seconds. It knows nothing of NATS or HTTP: the worker hands it message
// bodies and its own handles for them, sends what it releases with
// sink.App, and acks every handle of a request once that request is
// answered 2xx.
//
// # Requests
//
// [Parse] reads a trigger body: Customer.io's parameter names plus
// broadcast_id, which goes in the URL rather than the body sent. A body
// that can never succeed is an *event.InvalidError with one of this
// package's Reason constants. Customer.io's documented limits (10,000 ids
// or emails, 10,000 per_user_data entries, 50,000 bytes of data, 25 MB in
// all) are enforced here, because Customer.io fails a request over them.
//
// # Pacing
//
// Customer.io answers a second trigger of the same broadcast within 10
// seconds with 429, and keeps at most five triggers queued. A [Pacer]
// keeps pending triggers per broadcast and releases, for each broadcast,
// one request at a time: the next is released no sooner than Interval
// after the previous one was answered ([Pacer.Done], [Pacer.Retry]), and
// no sooner than a Retry-After asks ([Pacer.Defer]). The interval runs
// from the answer, not from the release, because Customer.io counts from
// the request's arrival, which lies between the two: counting from the
// answer can never be early, whatever the network does. Broadcasts are
// independent: a trigger for broadcast 7 never waits behind broadcast 8.
// A Pacer paces one process; the worker also takes the broadcast's turn
// across replicas before sending each request a Pacer releases.
//
// A Pacer has no clock and no goroutine. The caller passes the time in:
// [Pacer.Ready] returns the requests that may be sent at that time and
// [Pacer.Next] when to call it again, so a worker drives it from one timer
// and a test from a fake clock, deterministically.
//
// A Pacer is bounded ([PacerOptions].MaxPending, MaxPendingBytes): when
// [Pacer.Full], the caller stops consuming, and [Pacer.Add] refuses with
// [ErrFull]. Triggers count until their request is answered, each by its
// [Request.MemoryCost]: every copy of it held, not only its body, so the
// byte bound is a memory bound.
//
// # Rejected requests
//
// When Customer.io rejects a merged request, one of its triggers may have
// spoiled it for the rest. [Pacer.Split] puts its triggers back as two
// halves, each released as a request of its own that is never merged
// again and waits its broadcast's turn like any other; a rejected half is
// split again, so a bad trigger among n is isolated in about 2·log2(n)
// requests, and a single trigger rejected is the caller's to give up on.
// [Pacer.Withdraw] takes back a released request that was never sent (some
// of its triggers turned out to be sent already) without using up the
// broadcast's turn.
//
// # Coalescing
//
// When a broadcast's turn comes, its oldest pending trigger (the head)
// always goes. A younger pending trigger of the same broadcast joins the
// head's request exactly when all of these hold, checked in arrival order:
//
//  1. Both audiences are ids, or both emails, or both per_user_data.
//     recipients (a filter), data_file_url (a file) and no audience never
//     coalesce: they cannot be combined without changing who receives
//     what.
//  2. Everything else is the same: every member other than broadcast_id
//     and the audience list (data, id_ignore_missing,
//     email_ignore_missing, email_add_duplicates and any member this
//     package does not know) has the same bytes once insignificant
//     whitespace is removed. A flag set to false counts as absent, false
//     being its documented default; data with its keys in another order is
//     different.
//  3. A missing person cannot spread: a trigger of ids has
//     id_ignore_missing true, of emails email_ignore_missing true, and of
//     per_user_data the flag for each kind of identifier its entries use.
//     Without the flag, Customer.io fails the whole trigger when one
//     person does not exist, and in a merged request that one person would
//     fail everyone else's message too.
//  4. Per-user data does not conflict: a per_user_data trigger that names
//     a person already in the request with a different entry does not
//     join; it stays pending and is sent in a later request, so both
//     messages go. A trigger that names one person twice with different
//     entries never coalesces.
//  5. The merged list stays within [PacerOptions].MaxRecipients and the
//     body within MaxBodyBytes (default: Customer.io's limits).
//
// A merged request is the union of the lists, then the head's other
// members in their order. The list names each person once, in first-seen
// order, so a person asked for twice with the same data gets one message. People are compared as Customer.io
// identifies them: ids as written (a string and a number with the same
// digits are the same id), emails case-insensitively, per_user_data
// entries by their id or email. A request of one trigger is sent with
// exactly that trigger's [Request.Body].
//
// A trigger is never split across requests, so a request's handles can be
// acked together (Split divides a request's triggers, never a trigger). A trigger that does not join keeps its place: the next
// request starts with the oldest pending trigger, so none waits forever,
// though a younger trigger that joins a request overtakes any that could
// not.
package trigger
