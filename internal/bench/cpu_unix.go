//go:build unix

package bench

import (
	"runtime"
	"syscall"
	"time"
)

type cpuTimes struct{ user, sys time.Duration }

// processCPU returns the CPU time the whole process has used.
func processCPU() cpuTimes {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return cpuTimes{}
	}
	return cpuTimes{user: time.Duration(ru.Utime.Nano()), sys: time.Duration(ru.Stime.Nano())}
}

// maxRSS returns the process's peak RSS over its whole life, in bytes.
func maxRSS() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	if runtime.GOOS == "darwin" || runtime.GOOS == "ios" {
		return int64(ru.Maxrss) // bytes there, kilobytes elsewhere
	}
	return int64(ru.Maxrss) << 10
}

// syncDisk flushes every dirty page to disk. The publish phase leaves
// hundreds of megabytes dirty; left to the kernel's writeback they stall
// whatever phase comes next at random (an ext4 rename of the consumer's
// state file waits for a journal commit that writes them), and the two
// consume phases would not start from the same disk state.
func syncDisk() { syscall.Sync() }
