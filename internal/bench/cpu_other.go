//go:build !unix

package bench

import "time"

type cpuTimes struct{ user, sys time.Duration }

// processCPU is not measured on this platform.
func processCPU() cpuTimes { return cpuTimes{} }

// maxRSS is not measured on this platform.
func maxRSS() int64 { return 0 }

// syncDisk is a no-op on this platform.
func syncDisk() {}
