//go:build !linux

package probe

// Spiral runs on Linux only: its probes read /proc and netlink sock_diag,
// and its faults use Linux socket options (IP_LOCAL_PORT_RANGE) and memory
// cgroups. Elsewhere the build stops here with this identifier in the error.
var _ = Spiral_runs_on_Linux_only__see_README
