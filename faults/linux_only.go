//go:build !linux

package faults

// Spiral runs on Linux only: its probes read /proc and netlink sock_diag,
// and its faults read /proc and /proc/PID/task. Elsewhere the build stops
// here with this identifier in the error.
var _ = Spiral_runs_on_Linux_only__see_README
