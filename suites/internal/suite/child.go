package suite

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/proc"
)

// MemoryCgroup creates a memory cgroup of limit bytes for a child target,
// closed when t ends. Where
// the machine can't give one it skips t, unless this process runs as root
// on a kernel with a cgroup v1 memory hierarchy: there a cgroup must be
// had, and failing to get one fails t.
func MemoryCgroup(t *testing.T, limit int64) *proc.MemoryCgroup {
	t.Helper()
	cg, err := proc.NewMemoryCgroup(limit)
	if errors.Is(err, proc.ErrCgroupUnavailable) {
		if os.Geteuid() == 0 && hasV1Memory() {
			t.Fatalf("memory cgroup: this process runs as root with a cgroup v1 memory hierarchy (/proc/self/cgroup), so the suite must get one: %v", err)
		}
		t.Skipf("this suite needs a memory cgroup: %v", err)
	}
	require.NoError(t, err, "memory cgroup")
	t.Cleanup(func() { assert.NoError(t, cg.Close(), "remove the cgroup") })
	return cg
}

// MetricOOMKills is the kernel's count of OOM kills in a child's memory
// cgroup since the cgroup was created ("oom_kill" in memory.oom_control or
// memory.events).
const MetricOOMKills = "oom_kills"

// OOMKills returns a source of MetricOOMKills for cg.
func OOMKills(cg *proc.MemoryCgroup) probe.Source {
	return probe.FuncErr(MetricOOMKills, func(context.Context) (float64, error) {
		n, err := cg.OOMKills()
		return float64(n), err
	})
}

// hasV1Memory reports whether this process sits in a cgroup v1 memory
// hierarchy: a line "ID:...memory...:path" of /proc/self/cgroup.
func hasV1Memory() bool {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		parts := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(parts) == 3 && parts[1] != "" {
			for c := range strings.SplitSeq(parts[1], ",") {
				if c == "memory" {
					return true
				}
			}
		}
	}
	return false
}

// ListenAddr returns a free loopback address for the child, on a port
// outside the ephemeral range: each restarted child listens there again,
// and no client socket (the incident's thousands of memcached connections
// among them) can be holding it as its local port.
func ListenAddr(t *testing.T) string {
	t.Helper()
	eph, err := probe.EphemeralRange()
	require.NoError(t, err)
	const first = 1024 // above the privileged ports
	below := max(int(eph.Low)-first, 0)
	n := below + 65535 - int(eph.High)
	require.Positive(t, n, "no port outside the ephemeral range %v", eph)
	// Start from a point that differs between concurrent test binaries.
	start := os.Getpid() * 7919
	for i := range min(n, 1000) {
		k := (start + i) % n
		port := first + k
		if k >= below {
			port = int(eph.High) + 1 + (k - below)
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		require.NoError(t, ln.Close())
		return addr
	}
	t.Fatalf("no free port outside the ephemeral range %v", eph)
	return ""
}
