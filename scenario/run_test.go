package scenario_test

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
)

func TestMain(m *testing.M) { fixtures.Main(m) }

// stubFault is a fault that acts on nothing and counts its calls; it stands
// in for a real one where what is tested is the runner's handling of a
// fault's errors. injectErr and recoverErr are returned by every call.
type stubFault struct {
	name                  string
	injectErr, recoverErr error
	injects, recovers     atomic.Int32
}

func (f *stubFault) Name() string { return f.name }

func (f *stubFault) Inject(context.Context) error {
	f.injects.Add(1)
	return f.injectErr
}

func (f *stubFault) Recover(context.Context) error {
	f.recovers.Add(1)
	return f.recoverErr
}

func stubScenario(name string, fs ...*stubFault) scenario.Scenario {
	sc := scenario.Scenario{
		Name:       name,
		Config:     dataplane.DefaultConfig(),
		Background: []faults.LoadProfile{faults.Background},
		Phases:     scenario.Phases{Baseline: 300 * time.Millisecond, Inject: 300 * time.Millisecond, Recover: 300 * time.Millisecond},
	}
	for _, f := range fs {
		sc.Faults = append(sc.Faults, func(scenario.Harness) (faults.Fault, error) { return f, nil })
	}
	return sc
}

// A fault that fails to recover fails the run, names itself, and does not
// stop the other faults from being recovered; the result still carries the
// timeline for a report.
func TestRunRecoversEveryFaultAndReportsTheOneThatFailed(t *testing.T) {
	env := fixtures.Shared(t)
	first := &stubFault{name: "first"}
	stuck := &stubFault{name: "stuck", recoverErr: errors.New("backend still paused")}
	res, err := scenario.Run(t.Context(), env, stubScenario("recover-fails", first, stuck))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "recover stuck")
	assert.Contains(t, err.Error(), "backend still paused")
	assert.Positive(t, first.recovers.Load(), "the fault injected before the stuck one is recovered too")
	require.NotNil(t, res)
	assert.NotNil(t, res.Timeline, "a failed run keeps its timeline for the report")
	assert.Contains(t, res.Error, "recover stuck")
}

// A run that stops part-way (a fault that can't be injected) recovers the
// faults already in place and returns what it saw.
func TestRunStoppedPartWayRecoversAndKeepsTheResult(t *testing.T) {
	env := fixtures.Shared(t)
	ok := &stubFault{name: "ok"}
	bad := &stubFault{name: "bad", injectErr: errors.New("no such backend")}
	res, err := scenario.Run(t.Context(), env, stubScenario("inject-fails", ok, bad))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "inject bad")
	assert.EqualValues(t, 1, ok.injects.Load())
	assert.Positive(t, ok.recovers.Load(), "the injected fault is recovered")
	require.NotNil(t, res)
	assert.NotNil(t, res.Timeline)
	assert.NotEmpty(t, res.LoadSummary, "the everyday load is in the result")
	assert.Contains(t, res.Error, "inject bad")
}

// A clean run recovers each fault and returns no error. Its pollers, the
// built-in goroutines_peak and a probe.Peak among the scenario's probes,
// poll while it runs and are stopped when it returns.
func TestRunRecoversFaults(t *testing.T) {
	env := fixtures.Shared(t)
	f := &stubFault{name: "f"}
	var polls atomic.Int64
	extra, err := probe.NewPeak("polls", time.Millisecond, func(context.Context) (float64, error) {
		return float64(polls.Add(1)), nil
	})
	require.NoError(t, err)
	sc := stubScenario("clean", f)
	sc.Probes = func(scenario.Harness) []probe.Source { return []probe.Source{extra} }
	res, err := scenario.Run(t.Context(), env, sc)
	require.NoError(t, err)
	assert.EqualValues(t, 1, f.injects.Load())
	assert.Positive(t, f.recovers.Load())
	assert.Empty(t, res.Error)
	assert.True(t, res.Validated, res.ValidateError)

	assert.NotContains(t, goroutineStacks(), "probe.(*Peak).poll", "no poller outlives Run")
	assert.Greater(t, polls.Load(), int64(2*len(res.Timeline.Samples)), "Run started the scenario's Peak: it polled between samples")
	require.ErrorContains(t, extra.Start(t.Context()), "stopped", "Run stopped it")
	// The plain count is read a few µs before the peak's own reading; a
	// goroutine or two may end in between.
	const slack = 10
	for _, ph := range []string{scenario.PhaseBaseline, scenario.PhaseInject, scenario.PhaseRecover} {
		assert.GreaterOrEqual(t, res.Peaks[probe.MetricGoroutinesPeak][ph], res.Peaks[probe.MetricGoroutines][ph]-slack,
			"goroutines_peak in %s is at least the plain count's peak", ph)
	}
}

// goroutineStacks returns every goroutine's stack.
func goroutineStacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}
