// Package bench measures cio-relay end to end on one machine: a real
// nats-server with JetStream file storage, the real worker, and a lean
// Customer.io stand-in on 127.0.0.1. `cio-relay bench` runs it and prints a
// table (or JSON); BenchmarkEndToEnd and TestBenchSmall run it from go test.
//
// # The model
//
// One run publishes a backlog of N calls (a fixed mix of types and sizes
// drawn from a seeded generator) to the stream, then drains that same
// backlog twice, each time with its own durable consumer:
//
//  1. the bare limit: a plain pull consumer (the worker's consumer settings
//     and pull size) that acks every message and does nothing else. No relay
//     can consume faster than this on this machine.
//  2. cio-relay: worker.New with its default options, delivering every call
//     to the stand-in, timed from worker start until the stand-in has every
//     call.
//
// Then, with the worker still running, a latency phase publishes at a fixed
// rate and measures each call's publish→arrival time at the stand-in.
//
// The backlog's last batch is never full, so the worker sends it only when
// the flush interval expires: up to a second of waiting that says nothing
// about throughput. The ratio to the bare limit therefore uses the worker's
// rate up to its last full batch ("while the backlog lasted"); the rate up
// to the very last call is reported beside it.
//
// # What is measured, and what it includes
//
// CPU (getrusage), peak RSS (VmHWM, reset before each phase) and
// allocations (runtime.MemStats) are the whole process's: unless --nats-url
// names an external server they include the in-process nats-server, and for
// the worker phase the stand-in too. Both consume phases pay for the same
// server work (reading the stream, processing acks), so their ratio is fair;
// the stand-in's cost (reading and scanning every body, about 5% of the
// phase's CPU) is charged to the worker phase only, which makes the ratio
// slightly pessimistic. Each phase also reports the CPU the rest of the
// machine used meanwhile (/proc/stat): on a shared machine that number says
// how far to trust the rates.
//
// Publishing leaves hundreds of megabytes of dirty pages. Left to the
// kernel's writeback they stall whichever phase comes next, at random (an
// ext4 rename of a consumer's state file waits for a journal commit that
// writes them out), so the run flushes them before each consume phase,
// outside the timed spans.
//
// The stand-in is not internal/ciotest: that one records every request and
// call, which is right for correctness tests and far too heavy for a million
// events. This one checks what matters for throughput claims — Basic auth,
// body ≤ 500,000 bytes, each call ≤ 32,000 bytes — counts calls and bytes,
// marks each messageId in a bitmap, and records an arrival time per
// messageId only while latency is being measured. Like Customer.io it
// answers an over-limit request 200 and delivers nothing in it, so a packing
// bug shows up as calls that never arrive (the run then fails).
package bench
