// Package soak runs the fixed data plane through cycle after cycle of
// faults (batch floods, memcached paused, memcached killed and restarted)
// under everyday traffic, and checks that every cycle holds its budgets
// (every everyday request answered among them), that every load of every
// cycle was answered and finished, and that nothing accumulates from cycle
// to cycle: goroutines, OS threads and heap after recovery stay where the
// first cycle left them.
//
// Quick mode (make test) runs one short cycle of each fault; full mode two
// of each; soak mode (make soak) cycles until SPIRAL_SOAK_DURATION (default
// 2h) has passed.
package soak

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/metrics"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/load"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/suites/internal/suite"
)

func TestMain(m *testing.M) { fixtures.Main(m) }

const posts = 20_000

// budgets hold in every cycle, whatever its fault.
// From the fixed data plane's envelope over every kind of cycle (5 quick
// and 3 full runs, 2026-12-02): about twice the highest peak, or the peak
// plus a stated floor.
var budgets = []probe.Budget{
	// OS threads at work peaked at 5; the live count's growth across
	// cycles is checked apart.
	probe.Limit(probe.MetricThreadsBusy, suite.ThreadsBusyBudget),
	// A bounded data plane never needs one goroutine per key, judged on
	// the high-water mark polled between samples: 347 at most (a paused
	// memcached: requests wait out its timeout), 75-135 otherwise.
	probe.Limit(probe.MetricGoroutinesPeak, 700),
	// The fixed data plane closes no memcached connection into TIME_WAIT
	// under a flood (0 in every flood cycle); a killed and restarted
	// memcached leaves 3-16 of a cycle's own. Twice the highest.
	probe.Limit(scenario.MetricMemcachedTimeWaitAdded, 32),
	// GC's share of CPU peaked at 0.016-0.304 an interval (the floods).
	probe.Limit(probe.MetricGCCPUFraction, 0.6, scenario.PhaseInject, scenario.PhaseObserve),
	// Everyday traffic is answered through every fault: from the store
	// while memcached is away.
	probe.Limit(scenario.MetricEverydayErrors, 0),
}

// growthFactor bounds how far the figures after recovery may drift from the
// first cycle's: more than double is accumulation, not noise.
const growthFactor = 2.0

// liveHeap is the heap still reachable after a full GC: what a leak grows.
const liveHeap = "live_heap_bytes"

// liveHeapBytes collects garbage and returns the live heap. The data plane
// runs in this process, so this is its heap (and the test's, which holds
// only the cycles' results).
func liveHeapBytes() float64 {
	runtime.GC()
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return float64(s[0].Value.Uint64())
}

type kind struct {
	name  string
	fault scenario.FaultFunc
	// p99 bounds everyday latency during the fault (inject and observe):
	// twice the highest p99 of a second's everyday requests the fixed
	// data plane showed in the kind's cycles over 5 quick runs.
	p99 float64
}

func kinds(phases scenario.Phases, seed uint64) []kind {
	flood := load.InternalBatch
	flood.BatchMin, flood.BatchMax, flood.KeySpace = 15_000, 15_000, posts
	flood.Rate, flood.MaxInFlight, flood.MaxRequests = 1, 2, 1_000
	flood.Duration, flood.Seed = phases.Inject, seed
	return []kind{
		// p99 21-53 ms.
		{"flood", func(h scenario.Harness) (faults.Fault, error) { return h.Flood(flood) }, 0.11},
		// p99 0.52-0.70 s: requests wait out memcached's 500 ms timeout,
		// then read the store.
		{"pause-memcached", func(h scenario.Harness) (faults.Fault, error) {
			return faults.NewContainerFault(h.Env.Memcached, faults.ContainerPause), nil
		}, 1.4},
		// p99 28-85 ms: connections refused at once.
		{"kill-memcached", func(h scenario.Harness) (faults.Fault, error) {
			return faults.NewContainerFault(h.Env.Memcached, faults.ContainerKill), nil
		}, 0.17},
	}
}

func TestSoak(t *testing.T) {
	env := fixtures.Shared(t)
	seed := scenario.SeedFromEnv(11)
	rng := rand.New(rand.NewPCG(seed, 0))

	phases := scenario.Phases{Baseline: 2 * time.Second, Inject: 4 * time.Second, Observe: time.Second, Recover: 4 * time.Second}
	cycles, until := 3, time.Time{}
	interval := 100 * time.Millisecond
	switch scenario.Mode() {
	case "full":
		phases = scenario.Phases{Baseline: 5 * time.Second, Inject: 15 * time.Second, Observe: 5 * time.Second, Recover: 10 * time.Second}
		cycles = 6
	case "soak":
		d, err := time.ParseDuration(os.Getenv("SPIRAL_SOAK_DURATION"))
		if err != nil || d <= 0 {
			d = 2 * time.Hour
		}
		phases = scenario.Phases{Baseline: 10 * time.Second, Inject: 60 * time.Second, Observe: 10 * time.Second, Recover: 30 * time.Second}
		cycles, until, interval = 1<<30, time.Now().Add(d), time.Second
		t.Logf("soak: cycling faults for %v (until %s)", d, until.Format(time.TimeOnly))
	}
	bg := load.Background
	bg.Rate, bg.KeySpace = 50, posts

	var first map[string]float64
	for c := 0; c < cycles; c++ {
		if !until.IsZero() && time.Now().After(until) {
			break
		}
		ks := kinds(phases, seed+uint64(c))
		if env.MemcachedUpstreams != nil {
			// A memcached paused through Spiral's proxy holds each
			// connection the data plane gives up on in FIN_WAIT2, as a
			// paused container does, but closes it when the pause ends,
			// which puts it in TIME_WAIT; a thawed memcached answers the
			// request it was sent, and the closed socket's RST leaves
			// nothing (5 of 5 connections each way, 2026-12-06). Under
			// the timeout toxic used before, 227 sockets in one quick
			// cycle (2026-12-02), against the TIME_WAIT budget measured
			// on the container. Judged on the container only.
			ks = slices.DeleteFunc(ks, func(k kind) bool { return k.name == "pause-memcached" })
		}
		k := ks[c%len(ks)]
		if c >= len(ks) {
			k = ks[rng.IntN(len(ks))]
		}
		name := fmt.Sprintf("soak/cycle-%03d-%s", c, k.name)
		ok := t.Run(fmt.Sprintf("cycle-%03d-%s", c, k.name), func(t *testing.T) {
			res := suite.RunUnderTest(t, env, scenario.Scenario{
				Name: name, Config: suite.FixedConfig(t), Seed: seed + uint64(c),
				Data: fixtures.SeedSpec{Posts: posts}, WarmPosts: posts,
				Background: []load.Profile{bg},
				Faults:     []scenario.FaultFunc{k.fault},
				Phases:     phases, Interval: interval,
				Budgets: append(slices.Clip(budgets),
					probe.Limit(scenario.MetricEverydayLatencyP99, k.p99, scenario.PhaseInject, scenario.PhaseObserve)),
			})
			assert.Empty(t, res.Violations, "cycle %d (%s) must hold every budget", c, k.name)
			assert.True(t, res.Validated, "the data plane answers after cycle %d: %s", c, res.ValidateError)
			t.Logf("  peak %s: %v", probe.MetricGoroutinesPeak, res.Peaks[probe.MetricGoroutinesPeak])
			t.Logf("  peak %s: %v", probe.MetricGoroutines, res.Peaks[probe.MetricGoroutines])
			if assert.NotEmpty(t, res.LoadSummary, "cycle %d ran no load", c) {
				for _, l := range res.LoadSummary {
					assert.Positive(t, l.Stats.OK, "cycle %d: load %s was answered: a cycle without load proves nothing", c, l.Client)
					assert.False(t, l.Failed, "cycle %d: load %s finished: %s", c, l.Client, l.Error)
				}
			}
			after := map[string]float64{}
			for _, m := range []string{probe.MetricGoroutines, probe.MetricThreads} {
				after[m] = res.Peaks[m][scenario.PhaseValidate]
			}
			after[liveHeap] = liveHeapBytes()
			if first == nil {
				first = after
				return
			}
			for m, v := range after {
				// Small figures (a few dozen goroutines, a few MiB) get a
				// floor of slack.
				slack := 50.0
				if m == liveHeap {
					slack = 16 << 20
				}
				assert.LessOrEqual(t, v, growthFactor*first[m]+slack,
					"%s after recovery grew from %v (first cycle) to %v by cycle %d", m, first[m], v, c)
			}
		})
		if !ok && scenario.Mode() == "soak" {
			t.Logf("soak: stopping at the first failed cycle (%d)", c)
			break
		}
	}
}
