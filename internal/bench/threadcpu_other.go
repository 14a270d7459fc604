//go:build !linux

package bench

import "time"

// threadCPU is not measured on this platform: the stand-in's CPU then
// counts as the relay's.
func threadCPU() time.Duration { return 0 }
