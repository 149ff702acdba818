package suite

import (
	"math"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/dataplane"
	"github.com/spiral-chaos/spiral/faults"
	"github.com/spiral-chaos/spiral/fixtures"
	"github.com/spiral-chaos/spiral/load"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/target"
)

func TestGrowth(t *testing.T) {
	res := &scenario.Result{Peaks: map[string]map[string]float64{
		"threads_busy": {scenario.PhaseBaseline: 4, scenario.PhaseInject: 30, scenario.PhaseObserve: 41, scenario.PhaseRecover: 12, scenario.PhaseValidate: 99},
		"flat":         {scenario.PhaseBaseline: 4, scenario.PhaseInject: 4},
		"no_baseline":  {scenario.PhaseInject: 4},
	}}
	during, base, ok := Growth(res, "threads_busy")
	assert.True(t, ok)
	assert.InDelta(t, 41.0, during, 0, "the highest of inject, observe and recover; validate is not the faults' doing")
	assert.InDelta(t, 4.0, base, 0)

	_, _, ok = Growth(res, "no_baseline")
	assert.False(t, ok)
	_, _, ok = Growth(res, "absent")
	assert.False(t, ok)

	assert.True(t, AssertGrowth(t, res, "threads_busy", 10))
	for _, tc := range []struct {
		metric string
		factor float64
	}{{"threads_busy", 11}, {"flat", 2}, {"no_baseline", 1}} {
		var r recorder
		assert.False(t, AssertGrowth(&r, res, tc.metric, tc.factor), tc.metric)
		assert.Equal(t, 1, r.errors, "%s: a failed check is reported", tc.metric)
	}
}

func TestAssertTopClient(t *testing.T) {
	res := &scenario.Result{Scenario: "s", Clients: []scenario.ClientFigures{
		{Client: "internal-batch", Keys: 30_000, CacheErrors: 900}, {Client: "appview", Keys: 7_974, CacheErrors: 12},
	}}
	assert.True(t, AssertTopClient(t, res, "internal-batch"))
	// The top source of keys, but not of the cache errors.
	errorsElsewhere := &scenario.Result{Scenario: "e", Clients: []scenario.ClientFigures{
		{Client: "internal-batch", Keys: 30_000}, {Client: "appview", Keys: 7_974, CacheErrors: 12},
	}}
	for _, tc := range []struct {
		res    *scenario.Result
		client string
		errors int // the keys' check and the cache errors' check
	}{{res, "appview", 2}, {&scenario.Result{Scenario: "empty"}, "internal-batch", 1}, {errorsElsewhere, "internal-batch", 1}} {
		var r recorder
		assert.False(t, AssertTopClient(&r, tc.res, tc.client), tc.client)
		assert.Equal(t, tc.errors, r.errors, "%s %s: each failed check is reported", tc.res.Scenario, tc.client)
	}
}

// recorder is a Reporter that counts errors.
type recorder struct{ errors int }

func (*recorder) Helper()                 {}
func (r *recorder) Errorf(string, ...any) { r.errors++ }
func (*recorder) Logf(string, ...any)     {}

// An arm whose floods would reach backends Spiral does not own is skipped,
// saying why, when the user answered 0 (SPIRAL_ALLOW_EXTERNAL_FLOOD=0),
// and nothing is sent; unset, the same refusal fails the arm (not tested
// here: it would fail this test).
func TestRunSkipsAFloodTheUserDeclined(t *testing.T) {
	t.Setenv(scenario.EnvAllowExternalFlood, "0")
	var batches atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc(dataplane.HealthPath, func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc(dataplane.XRPCPrefix, func(w http.ResponseWriter, _ *http.Request) {
		batches.Add(1)
		_, _ = w.Write([]byte("{}"))
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	tgt, err := target.NewEndpoint(srv.URL, target.NoProcess)
	require.NoError(t, err)
	env := &fixtures.Env{
		MemcachedAddr: "127.0.0.1:1", MemcachedAddrs: []string{"127.0.0.1:1"}, MemcachedUpstreams: []string{"10.0.0.5:11211"},
		CQLHosts: []string{"10.0.0.6:9042"}, Flavor: fixtures.FlavorExternal, Keyspace: "spiral_fake",
	}
	sc := scenario.Scenario{
		Name: "declined", Target: tgt,
		Background: []load.Profile{load.Background},
		Faults:     []scenario.FaultFunc{func(h scenario.Harness) (faults.Fault, error) { return h.Flood(load.InternalBatch) }},
		Phases:     scenario.Phases{Baseline: time.Second, Inject: time.Second, Recover: time.Second},
	}
	var arm *testing.T
	t.Run("arm", func(t *testing.T) {
		arm = t
		Run(t, env, sc)
		t.Error("Run returned instead of skipping")
	})
	if arm == nil {
		t.Skip("the arm did not run: -run left it out")
	}
	assert.True(t, arm.Skipped(), "the arm skipped")
	assert.Zero(t, batches.Load(), "nothing was sent")
}

// Rise is a counter's growth over one phase: its last value there less its
// last value before it, gaps skipped.
func TestRise(t *testing.T) {
	nan := math.NaN()
	tl := &probe.Timeline{Metrics: []string{"c"}}
	for _, s := range []struct {
		phase string
		v     float64
	}{{scenario.PhaseBaseline, 2}, {scenario.PhaseBaseline, 5}, {scenario.PhaseInject, nan}, {scenario.PhaseInject, 9}, {scenario.PhaseInject, 12}, {scenario.PhaseRecover, 20}} {
		tl.Samples = append(tl.Samples, probe.Sample{Phase: s.phase, Values: []float64{s.v}})
	}
	res := &scenario.Result{Timeline: tl}
	assert.InDelta(t, 7.0, Rise(res, "c", scenario.PhaseInject), 0, "12 less the baseline's last 5")
	assert.InDelta(t, 5.0, Rise(res, "c", scenario.PhaseBaseline), 0, "from zero")
	assert.Zero(t, Rise(res, "c", scenario.PhaseObserve), "a phase without samples")
	assert.Zero(t, Rise(res, "missing", scenario.PhaseInject), "a metric not recorded")
}
