// Package bench measures cio-relay end to end on one machine: a real
// nats-server with JetStream file storage, the real worker, and a lean
// Customer.io stand-in on 127.0.0.1. `cio-relay bench` runs it and prints a
// table (or JSON); BenchmarkEndToEnd and TestBenchSmall run it from go test.
//
// # The model
//
// The server runs as a user runs it: nats-server in its own process (a
// binary given, else built from the module go.mod pins, else the one on
// PATH), on the same machine, competing for the same cores. Config.InProcess
// runs it inside the bench process instead (the old setup, kept as a second
// row: cheaper messaging, no process boundary, flattering), Config.NATSURL
// uses one already running.
//
// One run publishes a backlog of N calls (a fixed mix of types and sizes
// drawn from a seeded generator) to the stream, then drains that same
// backlog twice, each time with its own durable consumer:
//
//  1. the bare limit: a plain pull consumer (the worker's consumer settings
//     and pull size) that acks every message and does nothing else, until
//     the server holds no unacked message. No relay can consume faster.
//  2. cio-relay: worker.New with its default options, delivering every call
//     to the stand-in, timed from worker start until the stand-in has
//     accepted the last call. That is the headline ratio. The rate up to
//     the last full batch ("while the backlog lasted") is reported beside
//     it: the difference is how long the backlog's last, partial batch
//     waited to be sent.
//
// Then, with the worker still running, latency scenarios publish at fixed
// rates (5,000 and 50 events/s by default), each with the bench's calls and
// with ~100-byte ones, and measure each call's publish → accepted time and
// the requests per second it cost.
//
// # What is measured, and what it includes
//
// CPU (getrusage), peak RSS (VmHWM, reset before each phase) and
// allocations (runtime.MemStats) are the bench process's: the worker, the
// publisher, the bare consumer and the stand-in. The stand-in's handlers
// are measured apart (each request on a locked thread, its thread CPU
// clock), so "relay CPU" is the worker's own. The nats-server's CPU and
// peak RSS come from /proc/<pid> when the bench started it (or was given
// its pid); in-process they are inside the process's figures. Each phase
// also reports the CPU the rest of the machine used meanwhile (/proc/stat,
// less this process and the server): on a shared machine that number says
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
