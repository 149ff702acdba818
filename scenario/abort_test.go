package scenario_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/load"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/scenario/report"
	"github.com/spiral-chaos/spiral/target"
)

// ownedEnv is bareEnv as if Spiral had started its backends: not external.
func ownedEnv() *fixtures.Env {
	env := bareEnv()
	env.Flavor = fixtures.FlavorScylla
	return env
}

// floodTarget is a fake target that counts the batches of each kind of
// client and fails the everyday ones (load.Background's client) while
// broken is set.
type floodTarget struct {
	*fakeTarget
	broken          atomic.Bool
	everyday, flood atomic.Int64
}

func newFloodTarget() *floodTarget {
	ft := &floodTarget{}
	ft.fakeTarget = &fakeTarget{pid: target.Self, log: &events{}, xrpc: func(w http.ResponseWriter, r *http.Request) {
		switch r.Header.Get(dataplane.ClientHeader) {
		case load.Background.Client:
			ft.everyday.Add(1)
			if ft.broken.Load() {
				http.Error(w, `{"error":"store unavailable"}`, http.StatusServiceUnavailable)
				return
			}
		case floodProfile.Client:
			ft.flood.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"posts":[],"profiles":[],"counts":[]}`))
	}}
	return ft
}

// breakEveryday is a fault that fails ft's everyday requests while
// injected: what a flood that overwhelms a backend does to them.
type breakEveryday struct{ ft *floodTarget }

func (breakEveryday) Name() string                    { return "break everyday" }
func (b breakEveryday) Inject(context.Context) error  { b.ft.broken.Store(true); return nil }
func (b breakEveryday) Recover(context.Context) error { b.ft.broken.Store(false); return nil }
func (b breakEveryday) fault() scenario.FaultFunc {
	return func(scenario.Harness) (faults.Fault, error) { return b, nil }
}
func floodFault(h scenario.Harness) (faults.Fault, error) { return h.Flood(floodProfile) }

// floodProfile is a batch flood of tiny batches, 100 a second: a request
// sent after the abort would show at once.
var floodProfile = func() load.Profile {
	p := load.InternalBatch
	p.BatchMin, p.BatchMax, p.Rate, p.MaxInFlight = 5, 5, 100, 16
	p.Duration, p.MaxRequests = 10*time.Second, 10_000
	return p
}()

// floodScenario runs ft with the everyday load, everyday requests broken
// at inject and a flood.
func floodScenario(name string, ft *floodTarget) scenario.Scenario {
	sc := stubScenario(name, ft)
	sc.Phases.Inject, sc.Phases.Observe = 3*time.Second, time.Second
	sc.Faults = []scenario.FaultFunc{breakEveryday{ft}.fault(), floodFault}
	return sc
}

// unsetAbortEnv clears the variables these tests set, for the test.
func unsetAbortEnv(t *testing.T) {
	t.Helper()
	for _, v := range []string{scenario.EnvAllowExternalFlood, scenario.EnvAbortErrorRate, scenario.EnvAbortP99, scenario.EnvAbortWindow} {
		t.Setenv(v, "")
		require.NoError(t, os.Unsetenv(v)) // restored by Setenv's cleanup
	}
}

// Against backends Spiral does not own, a flood (a load.Flood, or a
// batch load among the background ones) is refused before anything is
// sent unless the user said 1; the error names the variable, the floods
// and the backends, and says whether the refusal was the user's own (0).
func TestRunRefusesExternalFloodsWithoutLeave(t *testing.T) {
	for _, tc := range []struct {
		name, value string
		batchLoad   bool
		declined    bool
	}{
		{name: "unset"},
		{name: "unset, batch load", batchLoad: true},
		{name: "declined", value: "0", declined: true},
		{name: "declined false", value: "false", declined: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			unsetAbortEnv(t)
			if tc.value != "" {
				t.Setenv(scenario.EnvAllowExternalFlood, tc.value)
			}
			env := bareEnv()
			env.MemcachedUpstreams = []string{"10.0.0.5:11211"}
			ft := newFloodTarget()
			sc := floodScenario("refused", ft)
			if tc.batchLoad {
				sc.Faults = nil
				sc.Background = append(sc.Background, floodProfile)
			}
			res, err := scenario.Run(t.Context(), env, sc)
			require.Error(t, err)
			assert.Nil(t, res)
			fe, ok := errors.AsType[*scenario.ExternalFloodError](err)
			require.True(t, ok, "%v", err)
			assert.Equal(t, tc.declined, fe.Declined)
			assert.Contains(t, err.Error(), "internal-batch (5-5 keys a batch, 100 a second)")
			assert.Contains(t, err.Error(), "memcached 10.0.0.5:11211, CQL 127.0.0.1:2")
			if tc.declined {
				assert.Contains(t, err.Error(), "SPIRAL_ALLOW_EXTERNAL_FLOOD=0")
			} else {
				assert.Contains(t, err.Error(), "set SPIRAL_ALLOW_EXTERNAL_FLOOD=1")
			}
			assert.Zero(t, ft.everyday.Load()+ft.flood.Load(), "nothing was sent")
			assert.EqualValues(t, 1, ft.stopped.Load(), "the target is stopped")
		})
	}
}

// A malformed answer is an error that says what is wanted, from Run and
// from CheckEnv, which reports every malformed variable at once.
func TestMalformedFloodAndAbortVariables(t *testing.T) {
	noLeaks(t)
	unsetAbortEnv(t)
	t.Setenv(scenario.EnvAllowExternalFlood, "maybe")
	ft := newFloodTarget()
	_, err := scenario.Run(t.Context(), bareEnv(), floodScenario("malformed", ft))
	require.ErrorContains(t, err, `SPIRAL_ALLOW_EXTERNAL_FLOOD="maybe": want 1`)
	assert.Zero(t, ft.flood.Load())

	t.Setenv(scenario.EnvAbortErrorRate, "lots")
	t.Setenv(scenario.EnvAbortP99, "fast")
	t.Setenv(scenario.EnvAbortWindow, "10ms")
	err = scenario.CheckEnv()
	require.Error(t, err)
	for _, want := range []string{`SPIRAL_ALLOW_EXTERNAL_FLOOD="maybe"`, `SPIRAL_ABORT_ERROR_RATE="lots"`, `SPIRAL_ABORT_P99="fast"`, `SPIRAL_ABORT_WINDOW="10ms"`} {
		assert.Contains(t, err.Error(), want)
	}
}

func TestAbortLimitsFor(t *testing.T) {
	ext := load.ExternalAbort
	for _, tc := range []struct {
		name    string
		owned   bool
		abort   *load.AbortLimits
		env     map[string]string
		want    load.AbortLimits
		wantErr string
	}{
		{name: "owned: off", owned: true},
		{name: "external: ExternalAbort", want: ext},
		{name: "owned, a rate set", owned: true, env: map[string]string{scenario.EnvAbortErrorRate: "10%"}, want: load.AbortLimits{ErrorRate: 0.1}},
		{name: "external, p99 off", env: map[string]string{scenario.EnvAbortP99: "off"}, want: load.AbortLimits{ErrorRate: 0.05, Window: ext.Window, MinRequests: ext.MinRequests}},
		{name: "external, every variable", env: map[string]string{scenario.EnvAbortErrorRate: " 0.02 ", scenario.EnvAbortP99: "500ms", scenario.EnvAbortWindow: "2s"},
			want: load.AbortLimits{ErrorRate: 0.02, P99: 500 * time.Millisecond, Window: 2 * time.Second, MinRequests: ext.MinRequests}},
		{name: "scenario's own", abort: &load.AbortLimits{P99: time.Second}, want: load.AbortLimits{P99: time.Second}},
		{name: "scenario's off, external", abort: &load.AbortLimits{}},
		{name: "variable over the scenario's", abort: &load.AbortLimits{P99: time.Second}, env: map[string]string{scenario.EnvAbortP99: "2s"}, want: load.AbortLimits{P99: 2 * time.Second}},
		{name: "rate 0", env: map[string]string{scenario.EnvAbortErrorRate: "0"}, wantErr: `SPIRAL_ABORT_ERROR_RATE="0": want a share of requests above 0 and below 1`},
		{name: "rate 100%", env: map[string]string{scenario.EnvAbortErrorRate: "100%"}, wantErr: `SPIRAL_ABORT_ERROR_RATE="100%"`},
		{name: "rate 1.5", env: map[string]string{scenario.EnvAbortErrorRate: "1.5"}, wantErr: `SPIRAL_ABORT_ERROR_RATE="1.5"`},
		{name: "rate NaN", env: map[string]string{scenario.EnvAbortErrorRate: "NaN"}, wantErr: `SPIRAL_ABORT_ERROR_RATE="NaN"`},
		{name: "p99 negative", env: map[string]string{scenario.EnvAbortP99: "-1s"}, wantErr: `SPIRAL_ABORT_P99="-1s": want a latency such as 3s`},
		{name: "p99 without unit", env: map[string]string{scenario.EnvAbortP99: "3"}, wantErr: `SPIRAL_ABORT_P99="3"`},
		{name: "window off", env: map[string]string{scenario.EnvAbortWindow: "off"}, wantErr: `SPIRAL_ABORT_WINDOW="off": want a duration of at least 100ms`},
		{name: "window too short", env: map[string]string{scenario.EnvAbortWindow: "50ms"}, wantErr: `SPIRAL_ABORT_WINDOW="50ms"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			unsetAbortEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			env := bareEnv()
			if tc.owned {
				env = ownedEnv()
			}
			got, err := scenario.AbortLimitsFor(env, scenario.Scenario{Name: "x", Abort: tc.abort})
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				require.ErrorContains(t, scenario.CheckEnv(), tc.wantErr, "CheckEnv reports it too")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

// Against backends Spiral does not own, with leave, the abort stops the
// floods once everyday requests fail: no flood request leaves after it
// trips, the run skips what is left of inject and observe and goes on to
// recover and validate, and Run returns the result with an error that
// says why, when and in which phase. The report says so too.
func TestRunAbortStopsTheFloodsAndGoesOnToRecover(t *testing.T) {
	noLeaks(t)
	unsetAbortEnv(t)
	t.Setenv(scenario.EnvAllowExternalFlood, "1")
	t.Setenv(scenario.EnvAbortWindow, "1s") // ExternalAbort otherwise
	ft := newFloodTarget()
	res, err := scenario.Run(t.Context(), bareEnv(), floodScenario("aborted", ft))
	require.ErrorIs(t, err, scenario.ErrAborted)
	require.NotNil(t, res)
	t.Log(err)
	assert.Contains(t, err.Error(), "scenario aborted: aborted: everyday error rate ")
	assert.Contains(t, err.Error(), "> 5% (")
	assert.Contains(t, err.Error(), "(inject); stopped internal-batch")
	assert.Equal(t, err.Error(), res.Error)

	want := load.ExternalAbort
	want.Window = time.Second
	assert.Equal(t, want, res.AbortLimits)
	require.NotNil(t, res.Aborted)
	assert.Equal(t, scenario.PhaseInject, res.Aborted.Phase)
	assert.Equal(t, load.AbortErrorRate, res.Aborted.Condition)
	assert.Equal(t, []string{floodProfile.Client}, res.Aborted.Stopped)
	assert.False(t, res.Held(), "an aborted run is not held")
	assert.True(t, res.Validated, res.ValidateError)

	var phases []string
	for _, p := range res.Timeline.Phases {
		if len(phases) == 0 || phases[len(phases)-1] != p.Name {
			phases = append(phases, p.Name)
		}
	}
	assert.Equal(t, []string{scenario.PhaseBaseline, scenario.PhaseInject, scenario.PhaseRecover, scenario.PhaseValidate}, phases,
		"observe is skipped: the run went on to recover")

	var flood *load.Report
	for i := range res.Loads {
		if res.Loads[i].Profile.Client == floodProfile.Client {
			flood = &res.Loads[i]
		}
	}
	require.NotNil(t, flood)
	require.Positive(t, flood.Stats.Sent, "the flood ran before the abort")
	late := 0
	for _, r := range flood.Requests {
		if flood.Began.Add(r.Start).After(res.Aborted.At) {
			late++
		}
	}
	assert.Zero(t, late, "flood requests sent after the abort")
	assert.Equal(t, flood.Stats.Sent, ft.flood.Load(), "the target saw exactly the requests sent")
	for _, l := range res.LoadSummary {
		if l.Client == floodProfile.Client {
			assert.Contains(t, l.Stopped, "aborted: everyday error rate")
		} else {
			assert.Equal(t, "the run was aborted: stopped at the end of recover", l.Stopped,
				"the everyday load runs on through recover, not for the phases the abort cut")
		}
		assert.False(t, l.Failed, "load %s", l.Client)
	}
	recoverEnd := res.Timeline.Phases[len(res.Timeline.Phases)-1].Start // validate's
	everydayAfter := 0
	for _, rep := range res.Loads {
		if rep.Profile.Traffic != load.TrafficEveryday {
			continue
		}
		for _, r := range rep.Requests {
			if rep.Began.Add(r.Start).After(recoverEnd) {
				everydayAfter++
			}
		}
	}
	assert.Zero(t, everydayAfter, "everyday requests sent after recover")

	page, err := report.Write(filepath.Join(t.TempDir(), "aborted"), res)
	require.NoError(t, err)
	b, err := os.ReadFile(page)
	require.NoError(t, err)
	assert.Contains(t, string(b), "aborted: everyday error rate")
}

// Spiral's own containers are flooded without leave, and no abort stops
// the floods by default: the incident arms must be free to melt down.
func TestRunFloodsSpiralsOwnBackendsWithoutAnAbort(t *testing.T) {
	noLeaks(t)
	unsetAbortEnv(t)
	ft := newFloodTarget()
	res, err := scenario.Run(t.Context(), ownedEnv(), floodScenario("owned", ft))
	require.NoError(t, err)
	assert.Nil(t, res.Aborted)
	assert.Zero(t, res.AbortLimits)
	assert.Positive(t, res.Peaks[scenario.MetricEverydayErrors][scenario.PhaseInject], "everyday requests failed")
	for _, l := range res.LoadSummary {
		assert.Empty(t, l.Stopped, "load %s", l.Client)
	}
	assert.Positive(t, ft.flood.Load())
}

// Abort limits with floods but no everyday load to watch are refused: the
// floods would run unguarded.
func TestRunRefusesAnUnguardedFlood(t *testing.T) {
	noLeaks(t)
	unsetAbortEnv(t)
	t.Setenv(scenario.EnvAllowExternalFlood, "1")
	ft := newFloodTarget()
	sc := floodScenario("unguarded", ft)
	sc.Background = nil
	_, err := scenario.Run(t.Context(), bareEnv(), sc)
	require.ErrorContains(t, err, "no everyday load is there to watch")
	assert.Zero(t, ft.flood.Load())

	t.Setenv(scenario.EnvAbortErrorRate, "off")
	t.Setenv(scenario.EnvAbortP99, "off")
	sc = floodScenario("unguarded-off", newFloodTarget())
	sc.Background = nil
	res, err := scenario.Run(t.Context(), bareEnv(), sc)
	require.NoError(t, err, "the user turned the abort off")
	assert.Zero(t, res.AbortLimits)
}
