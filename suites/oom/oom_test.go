// Package oom is the postmortem's last step as a suite: "very aggressively
// tuned GOGC and GOMEMLIMIT environment variable values and memory limits
// meant that our data plane was actually OOM'ing every so often", then
// restarted. "OOMs are obviously bad (we should have zero of them)".
//
// The data plane runs out of process, as in production: a child process
// (this test binary run again, see child_test.go) in a memory-limited
// cgroup, with GOGC off and GOMEMLIMIT a little under the cgroup's limit,
// supervised and restarted when it dies (proc.Supervisor). OOM kills are
// counted from the kernel's own record for the cgroup. Everyday traffic and
// the postmortem's batch flood (a few requests of 20k URIs, the upper end
// of its 15-20k) reach it over HTTP on a fixed loopback port that each
// restarted child listens on again.
//
//   - incident (dataplane.IncidentConfig): one goroutine, one memcached
//     connection and its buffers per URI. A single batch needs more memory
//     than the cgroup allows; the runtime's collector can't free memory
//     that is live, and the kernel kills the child. It must be caught by
//     the OOM kill budget; the supervisor must still bring it back to
//     healthy (data plane built, memcached and the CQL store answering)
//     within restartBudget after every kill.
//   - fixed (dataplane.DefaultConfig): bounded, chunked lookups under the
//     same limits and load: no OOM kill, no failed request, every budget
//     holds.
//
// Each arm is an ordinary scenario on a child-process target
// (target.Exec) in a memory cgroup of its own: the bundled data plane's
// binary (cmd/dataplane), or, for the fixed arm, the binary
// $SPIRAL_TARGET names (exec:<path> [args]). The runner probes the child's
// own threads, RSS and fds and reads its goroutines and GC share from its
// /metrics; this suite adds the kernel's OOM kills, the cgroup's memory and
// the time from a kill to a healthy child.
package oom

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/load"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/proc"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/suites/internal/suite"
	"github.com/spiral-chaos/spiral/target"
)

func TestMain(m *testing.M) { fixtures.Main(m) }

// Metrics of this suite's timeline, beside the load's (scenario.LoadSource)
// and memcached's TIME_WAIT sockets
// (scenario.MetricMemcachedTimeWait).
const (
	// metricDown is the time since the data plane was last healthy, in
	// seconds, or 0 while it is: a restart's recovery, as it happens.
	metricDown = "child_down_seconds"
	// metricCgroupUsage is the memory charged to the child's cgroup.
	metricCgroupUsage = "cgroup_usage_bytes"
	// metricCgroupPeak is the most memory ever charged to the child's
	// cgroup, the kernel's own high-water mark (MemoryCgroup.Peak): the
	// incident's memory climbs to the limit and is killed within a few
	// hundred milliseconds, between two samples of metricCgroupUsage more
	// often than not (one sample in 107 over the budget in one quick run,
	// none in the next).
	metricCgroupPeak = "cgroup_peak_bytes"
)

// posts is how many posts are seeded and cached. The flood's 15-20k URIs
// are drawn from them, repeats included, so every lookup is a cache hit and
// a batch costs the data plane its goroutines, connections and buffers, not
// store reads.
const posts = 2_000

// The child's memory limits: tight like the postmortem's. Measured here in
// a 1 GiB cgroup with GOGC off and GOMEMLIMIT=16MiB (so that the peak is
// about what is live): one batch of 20k URIs costs the fixed data plane
// 20-23 MiB, the incident 52-83 MiB (one goroutine, one connection and its
// buffers per URI).
const (
	// cgroupLimit is the child's memory cgroup limit: room for the fixed
	// data plane's two batches at once, not for the incident's one.
	cgroupLimit = 80 << 20
	// childGOMEMLIMIT leaves faults.TightMemory's headroom (32 MiB) between
	// the Go runtime's soft limit and the kernel's hard one.
	childGOMEMLIMIT = cgroupLimit - 32<<20
	// childGOGC turns the collector off but for the memory limit, as
	// faults.TightMemory does (GCPercent -1): the heap rides up to
	// GOMEMLIMIT before anything is collected.
	childGOGC = "off"
)

// memoryBudget bounds the memory charged to the child's cgroup: the Go
// runtime keeps its total under GOMEMLIMIT while what is live fits below it
// (GOGC is off, so the heap rides up to the limit); 16 MiB above it is
// memory the collector could not free. Measured under this suite's load
// as the kernel's high-water mark (metricCgroupPeak), 3 quick runs and 1
// full, 2026-12-02: the fixed data plane peaks at 45.3-48.8 MiB, the
// incident at the 80 MiB limit in every run (killed, after seconds of
// collecting without end).
const memoryBudget = childGOMEMLIMIT + 16<<20

// restartBound is how long a supervised restart may take from the kill to
// a healthy data plane ("restart must reach healthy within a bound"): a Go
// process start, a CQL session and a memcached round trip, measured at
// 0.2-0.4 s here. The bound leaves room for a loaded 2-core CI machine and
// is also the child's start timeout; restartBudget is what a restart is
// judged against.
const restartBound = 20 * time.Second

// restartBudget bounds child_down_seconds, the time from a kill to a
// healthy data plane: the incident's restarts took 0.1-0.4 s (5 quick runs
// and earlier full ones, 2026-12-02; the fixed arm is never down), twice
// that plus a floor of 1.2 s for a CQL session's handshake on a loaded
// 2-core machine. A restart ten times slower than measured is caught.
const restartBudget = 2 * time.Second

// validateTimeout bounds how long the data plane may take to answer a small
// batch after recover.
const validateTimeout = 10 * time.Second

// budgets must all hold for the fixed data plane.
var budgets = []probe.Budget{
	// "OOMs are obviously bad (we should have zero of them)".
	probe.Limit(suite.MetricOOMKills, 0),
	// Live memory fits under the runtime's limit, at its highest.
	probe.Limit(metricCgroupPeak, memoryBudget),
	// A restart reaches healthy within its budget.
	probe.Limit(metricDown, restartBudget.Seconds()),
	// Everyday traffic and the flood keep being answered.
	probe.Limit(scenario.MetricLoadErrors, 0),
}

// profile is one mode's load and phases.
type profile struct {
	phases      scenario.Phases
	background  load.Profile
	flood       load.Profile
	maxRestarts int
}

func newProfile(mode string, seed uint64) profile {
	p := profile{
		phases:     scenario.Phases{Baseline: 2 * time.Second, Inject: 6 * time.Second, Observe: 2 * time.Second, Recover: 3 * time.Second},
		background: load.Background,
		flood:      load.InternalBatch,
	}
	p.background.Rate, p.background.KeySpace = 20, posts
	// The postmortem's internal client: under 3 requests a second of
	// 15-20k URIs, here the upper end, every time: the incident's memory
	// for one batch varies by half from run to run (the dials' timing
	// decides how many goroutines and connections live at once), and the
	// largest batch gives the kill the widest margin. Two at a time at
	// most, as in the batch-flood suite.
	p.flood.BatchMin, p.flood.BatchMax = dataplane.PostmortemBatchSize, dataplane.PostmortemBatchSize
	p.flood.KeySpace, p.flood.Rate, p.flood.MaxInFlight, p.flood.MaxRequests = posts, 2, 2, 8
	if mode != "quick" {
		p.phases = scenario.Phases{Baseline: 5 * time.Second, Inject: 30 * time.Second, Observe: 5 * time.Second, Recover: 10 * time.Second}
		p.background.Rate = 100
		p.flood.MaxRequests = 40
	}
	ph := p.phases
	p.background.Duration = ph.Baseline + ph.Inject + ph.Observe + ph.Recover
	p.background.MaxRequests = int(p.background.Rate * p.background.Duration.Seconds() * 2)
	p.background.Seed, p.flood.Seed = seed, seed+100
	p.flood.Duration = ph.Inject
	// Every flood request may cost the incident one kill; the restart
	// budget must outlast them all.
	p.maxRestarts = p.flood.MaxRequests + 5
	return p
}

// TestOOM runs the fixed arm, then the incident arm, each in a cgroup of
// its own.
func TestOOM(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector's shadow memory (several times the heap) does not fit the child's cgroup: the fixed data plane would be OOM-killed too; run without -race")
	}
	env := fixtures.Shared(t)
	seed := scenario.SeedFromEnv(5)
	p := newProfile(scenario.Mode(), seed)
	bin, err := target.BuildDataPlane(t.Context(), t.TempDir())
	require.NoError(t, err)
	bundled := func(config ...string) target.ExecConfig {
		// Lines are counted and discarded: this suite is about memory,
		// the log storm has its own.
		return target.ExecConfig{Path: bin, Args: append([]string{"-listen", target.AddrArg, "-log", "discard"}, config...)}
	}

	t.Run("fixed", func(t *testing.T) {
		exe := bundled(suite.FixedArgs(t)...)
		spec, err := target.FromEnv()
		require.NoError(t, err)
		switch spec.Kind {
		case target.KindExec:
			exe = target.ExecConfig{Path: spec.Path, Args: spec.Args}
		case target.KindURL:
			t.Skipf("%s=%s: a running service can't be put in a memory cgroup; name its binary (exec:<path>) instead", target.EnvTarget, spec)
		}
		r := runArm(t, env, "fixed", suite.FixedConfig(t), exe, p, seed)
		res := r.res
		assert.Empty(t, res.Violations, "the fixed data plane must hold every budget under tight memory and the flood")
		assert.True(t, res.Validated, res.ValidateError)
		assert.Zero(t, r.kernelKills, "kernel oom_kill counter of the child's cgroup")
		assert.Equal(t, 1, r.stats.Starts, "the child never restarted: %v", r.exits)
		require.Len(t, res.LoadSummary, 2)
		for _, l := range res.LoadSummary {
			assert.Positive(t, l.Stats.OK, "load %s was answered: a run without load proves nothing", l.Client)
		}
	})

	t.Run("incident", func(t *testing.T) {
		r := runArm(t, env, "incident", dataplane.IncidentConfig(), bundled("-config", "incident"), p, seed)
		res := r.res
		if res == nil {
			return // caught by the abort limits
		}
		// Killed while it served the flood's batch, the child never counted
		// its keys; the load generator's own record names the flood.
		suite.AssertTopClient(t, res, load.InternalBatch.Client)
		assert.True(t, res.Violated(suite.MetricOOMKills),
			"the incident data plane must be caught OOM-killed; peaks %v", res.Peaks[suite.MetricOOMKills])
		assert.True(t, res.Violated(metricCgroupPeak),
			"the incident data plane must be caught with more live memory than GOMEMLIMIT; peaks %v", res.Peaks[metricCgroupPeak])
		assert.Positive(t, r.kernelKills, "the kernel counted the kills")
		assert.False(t, res.Violated(metricDown),
			"every restart reaches healthy within %v; peaks %v", restartBudget, res.Peaks[metricDown])
		// A kill of a healthy child begins an outage; its Recovery is the
		// time to the next healthy child (a child killed before its first
		// health check adds to the outage instead).
		outages := 0
		for _, e := range r.exits {
			if !e.OOMKilled || e.HealthyAt.IsZero() {
				continue
			}
			outages++
			assert.Positive(t, e.Recovery, "a restart after %s reached healthy", e)
			assert.Less(t, e.Recovery, restartBudget, "kill to healthy after %s", e)
		}
		assert.Positive(t, outages, "the supervisor saw healthy children OOM-killed: %v", r.exits)
		assert.True(t, res.Validated, "the incident data plane answers again once the flood stops: %s", res.ValidateError)
	})
}

// armRun is what one arm saw.
type armRun struct {
	res         *scenario.Result
	stats       proc.SupervisorStats
	exits       []proc.ChildExit
	kernelKills uint64
}

// runArm runs one arm: exe as a supervised child in a fresh cgroup, under
// GOMEMLIMIT and GOGC, through the scenario runner (everyday traffic from
// baseline, the flood injected and recovered, the data plane validated,
// the report written); then checks nothing is left behind. cfg is the
// bundled configuration exe serves, for the report.
func runArm(t *testing.T, env *fixtures.Env, arm string, cfg dataplane.Config, exe target.ExecConfig, p profile, seed uint64) armRun {
	t.Helper()
	cg := suite.MemoryCgroup(t, cgroupLimit)
	exe.Cgroup, exe.Addr = cg, suite.ListenAddr(t)
	exe.MaxRestarts, exe.StartTimeout = p.maxRestarts, restartBound
	gomemlimit := fmt.Sprintf("%dMiB", childGOMEMLIMIT>>20)
	exe.Env = append(exe.Env, "GOMEMLIMIT="+gomemlimit, "GOGC="+childGOGC)
	tgt, err := target.NewExec(exe)
	require.NoError(t, err)
	t.Cleanup(func() { _ = tgt.Stop(context.Background()) }) // before the cgroup's Close, registered earlier
	progress("oom/%s: cgroup v%d %s, limit %d MiB; child GOMEMLIMIT=%s GOGC=%s on %s",
		arm, cg.Version(), cg.Dir(), cg.Limit()>>20, gomemlimit, childGOGC, exe.Addr)

	flood := p.flood
	runner := suite.Run
	if arm != "fixed" {
		runner = suite.RunControl // nil when the abort limits stopped it
	}
	res := runner(t, env, scenario.Scenario{
		Name:       "oom/" + arm,
		Config:     cfg,
		Target:     tgt,
		Seed:       seed,
		Data:       fixtures.SeedSpec{Posts: posts},
		WarmPosts:  posts,
		Background: []load.Profile{p.background},
		Faults: []scenario.FaultFunc{func(h scenario.Harness) (faults.Fault, error) {
			return h.Flood(flood)
		}},
		Probes: func(scenario.Harness) []probe.Source {
			return []probe.Source{&childSource{sup: tgt.Supervisor(), cg: cg}}
		},
		Phases:          p.phases,
		Budgets:         budgets,
		ValidateTimeout: validateTimeout,
	})
	sup := tgt.Supervisor()
	run := armRun{res: res, stats: sup.Stats(), exits: sup.Exits()}
	run.kernelKills, err = cg.OOMKills()
	require.NoError(t, err)
	if res != nil {
		logRun(t, run)
	}
	require.NoError(t, sup.Err(), "supervision went on to the end")
	requireNothingLeft(t, sup, cg)
	return run
}

// childSource reads the supervised child's figures the runner does not:
// the kernel's OOM kills, the time since it was last healthy and its
// cgroup's memory, now and at its highest.
type childSource struct {
	sup *proc.Supervisor
	cg  *proc.MemoryCgroup
}

func (s *childSource) Metrics() []string {
	return []string{suite.MetricOOMKills, metricDown, metricCgroupUsage, metricCgroupPeak}
}

func (s *childSource) Read(_ context.Context, dst []float64) error {
	kills, err := s.cg.OOMKills()
	if err != nil {
		return err
	}
	usage, err := s.cg.Usage()
	if err != nil {
		return err
	}
	down := 0.0
	if !s.sup.Stats().Healthy {
		// The outage began when the last child that had been healthy
		// exited; children that died before their first health check
		// belong to it.
		exits := s.sup.Exits()
		for i := len(exits) - 1; i >= 0; i-- {
			if !exits[i].HealthyAt.IsZero() {
				down = time.Since(exits[i].ExitedAt).Seconds()
				break
			}
		}
	}
	peak, err := s.cg.Peak()
	if err != nil {
		return err
	}
	dst[0], dst[1], dst[2], dst[3] = float64(kills), down, float64(usage), float64(peak)
	return nil
}

// requireNothingLeft stops the supervisor and checks that no child process
// and no spiral-oom-* cgroup of this process is left.
func requireNothingLeft(t *testing.T, sup *proc.Supervisor, cg *proc.MemoryCgroup) {
	t.Helper()
	sup.Stop()
	procs, err := cg.Procs()
	require.NoError(t, err)
	assert.Empty(t, procs, "processes left in %s", cg.Dir())
	for _, e := range sup.Exits() {
		if e.Pid > 0 {
			require.ErrorIs(t, syscall.Kill(e.Pid, 0), syscall.ESRCH, "child pid %d still exists", e.Pid)
		}
	}
	require.NoError(t, cg.Close())
	left, err := proc.ListMemoryCgroups()
	require.NoError(t, err)
	assert.Empty(t, left, "spiral-oom-* cgroups left")
}

func logRun(t *testing.T, r armRun) {
	t.Helper()
	res := r.res
	t.Logf("%s: %d violation(s); validated=%v; kernel oom_kill=%d; starts=%d exits=%d",
		res.Scenario, len(res.Violations), res.Validated, r.kernelKills, r.stats.Starts, r.stats.Exits)
	for _, v := range res.Violations {
		t.Logf("  %v", v)
	}
	for _, e := range r.exits {
		t.Logf("  %s; kill to healthy %v", e, e.Recovery.Round(time.Millisecond))
	}
	for _, l := range res.LoadSummary {
		t.Logf("  load %s: sent %d ok %d errors %d skipped %d p99 %v outcomes %v", l.Client, l.Stats.Sent, l.Stats.OK, l.Stats.Errors, l.Stats.Skipped, l.P99, l.Outcomes)
	}
	mib := func(m map[string]float64) string {
		var parts []string
		for _, ph := range []string{scenario.PhaseBaseline, scenario.PhaseInject, scenario.PhaseObserve, scenario.PhaseRecover, scenario.PhaseValidate} {
			if v, ok := m[ph]; ok {
				parts = append(parts, fmt.Sprintf("%s:%.0f", ph, v/(1<<20)))
			}
		}
		return strings.Join(parts, " ")
	}
	t.Logf("  peak cgroup MiB %s; child RSS MiB %s; child threads %v; down s %v; memcached TIME_WAIT %v",
		mib(res.Peaks[metricCgroupUsage]), mib(res.Peaks[probe.MetricRSS]), res.Peaks[probe.MetricThreads], res.Peaks[metricDown], res.Peaks[scenario.MetricMemcachedTimeWait])
}

func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "spiral: "+format+"\n", args...)
}
