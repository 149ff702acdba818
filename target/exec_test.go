package target_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/target"
)

func TestMain(m *testing.M) { fixtures.Main(m) }

// The bundled data plane as a child-process target: it serves on the
// address the target chose, answers a batch, exports the data plane's and
// the Go runtime's figures, is probed as its own process, is restarted on
// the same address when killed, and leaves no process when stopped. The
// same process, named by URL and pid, is an endpoint target.
func TestExecTargetRunsTheBundledDataPlane(t *testing.T) {
	env := fixtures.Shared(t)
	bin, err := target.BuildDataPlane(t.Context(), t.TempDir())
	require.NoError(t, err)
	tgt, err := target.NewExec(target.ExecConfig{Path: bin, Args: []string{"-listen", target.AddrArg, "-log", "discard"}, Env: []string{"GOGC=200"}})
	require.NoError(t, err)
	require.NoError(t, tgt.Start(t.Context(), target.BackendsOf(env)))
	t.Cleanup(func() { _ = tgt.Stop(context.Background()) })
	assert.Regexp(t, `^exec:.*/dataplane -listen \{addr\} -log discard$`, tgt.Name())

	pid := tgt.PID()
	require.Positive(t, pid)
	assert.NotEqual(t, os.Getpid(), pid)
	c := &dataplane.Client{URL: tgt.URL(), Name: "target-test"}
	posts, err := c.GetPostRecords(t.Context(), fixtures.PostURIs(0, 3))
	require.NoError(t, err)
	assert.Len(t, posts, 3)
	require.NoError(t, tgt.Health(t.Context()))

	m, err := tgt.Metrics(t.Context())
	require.NoError(t, err)
	assert.Positive(t, m.Sum("requests_total", "client", "target-test"), "the data plane's own figures")
	for _, name := range []string{"go_goroutines", "go_memory_classes_heap_objects_bytes", "go_gc_heap_goal_bytes",
		"go_gc_cycles_total_gc_cycles_total", "go_cpu_classes_gc_total_cpu_seconds_total", "go_cpu_classes_total_cpu_seconds_total"} {
		_, ok := m.Total(name)
		assert.True(t, ok, "the runtime figure %s is exported", name)
	}
	_, ok := m.Total(target.PeakGoroutinesMetric)
	assert.False(t, ok, "the goroutine high-water mark only for a scrape that asks for its window")
	pm, err := tgt.Metrics(target.WithPeakWindow(t.Context()))
	require.NoError(t, err)
	peak, ok := pm.Total(target.PeakGoroutinesMetric)
	require.True(t, ok, "a scrape asking for the window gets the high-water mark")
	storePeak, ok := pm.Total(target.PeakStoreMetric)
	assert.True(t, ok, "and the store queries' high-water mark")
	assert.GreaterOrEqual(t, storePeak, 0.0)
	goroutines, _ := pm.Total("go_goroutines")
	assert.GreaterOrEqual(t, peak, goroutines-2, "the peak since the last window is at least about the count now")
	// The runner's scrape asks for the families it reads alone: each is
	// there, and nothing else.
	fm, err := tgt.Metrics(target.WithFamilies(t.Context(), scenario.TargetFamilies...))
	require.NoError(t, err)
	names := map[string]bool{}
	for _, sm := range fm {
		names[sm.Name] = true
	}
	asked := func(name string) bool {
		for _, f := range scenario.TargetFamilies {
			if name == f || strings.HasPrefix(name, f+"_") { // a summary's _sum and _count
				return true
			}
		}
		return false
	}
	for _, sm := range m { // a counter vector shows once it has counted
		assert.Equal(t, asked(sm.Name), names[sm.Name], "%s: in the filtered scrape if and only if asked for", sm.Name)
	}
	assert.True(t, names["go_goroutines"] && names["spiral_dataplane_lookups_in_flight"])
	st, err := probe.ReadProcess(t.Context(), pid)
	require.NoError(t, err)
	assert.Positive(t, st.Threads, "the child's own threads")

	// The same process as an endpoint.
	ep, err := target.NewEndpoint(tgt.URL(), pid)
	require.NoError(t, err)
	require.NoError(t, ep.Start(t.Context(), target.Backends{}))
	assert.Equal(t, "url:"+tgt.URL()+",pid="+strconv.Itoa(pid), ep.Name())
	em, err := ep.Metrics(t.Context())
	require.NoError(t, err)
	assert.InDelta(t, m.Sum("requests_total", "client", "target-test"), em.Sum("requests_total", "client", "target-test"), 0)
	require.NoError(t, ep.Stop(t.Context()))
	require.NoError(t, tgt.Health(t.Context()), "stopping an endpoint leaves the service running")

	// Killed, it comes back on the same address.
	url := tgt.URL()
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	require.Eventually(t, func() bool { return tgt.Restarts() == 1 && tgt.Health(t.Context()) == nil }, 20*time.Second, 50*time.Millisecond)
	assert.Equal(t, url, tgt.URL())
	assert.NotEqual(t, pid, tgt.PID())

	last := tgt.PID()
	require.NoError(t, tgt.Stop(t.Context()))
	assert.Equal(t, target.NoProcess, tgt.PID())
	assert.ErrorIs(t, syscall.Kill(last, 0), syscall.ESRCH, "no child left")
}

// An endpoint that never answers fails Start with the reason, within its
// bound; one named with a pid that does not exist fails at once.
func TestEndpointThatIsNotThere(t *testing.T) {
	ep, err := target.NewEndpoint("http://127.0.0.1:1", target.NoProcess)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	require.ErrorContains(t, ep.Start(ctx, target.Backends{}), "connection refused")

	ep, err = target.NewEndpoint("http://127.0.0.1:1", 1<<22+1) // above pid_max's ceiling
	require.NoError(t, err)
	assert.ErrorContains(t, ep.Start(t.Context(), target.Backends{}), "no such file")
}

// A binary that exits at once fails Start, and the error carries its output.
func TestExecTargetThatDiesSaysWhy(t *testing.T) {
	bin := t.TempDir() + "/dies"
	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\necho cannot reach memcached at $SPIRAL_MEMCACHED_ADDRS >&2\nexit 3\n"), 0o755))
	tgt, err := target.NewExec(target.ExecConfig{Path: bin, MaxRestarts: -1})
	require.NoError(t, err)
	err = tgt.Start(t.Context(), target.Backends{MemcachedAddrs: []string{"127.0.0.1:9"}, CQLHosts: []string{"127.0.0.1:9"}, Keyspace: "k"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "cannot reach memcached at 127.0.0.1:9")
	assert.Equal(t, target.NoProcess, tgt.PID())
}
