package scenario_test

import (
	"errors"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/load"
	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
)

// fakeLoad is a load's profile and counters, set by the test.
type fakeLoad struct {
	profile load.Profile
	stats   load.Stats
}

func (l *fakeLoad) Profile() load.Profile { return l.profile }
func (l *fakeLoad) Stats() load.Stats     { return l.stats }

func fake(p load.Profile, ok, errs int64) *fakeLoad {
	return &fakeLoad{profile: p, stats: load.Stats{Sent: ok + errs, OK: ok, Errors: errs}}
}

// sampleLoads takes one sample of scenario.LoadSource(loads...) and returns
// the value of each of its metrics, and Sample's error.
func sampleLoads(t *testing.T, loads ...scenario.LoadCounters) (map[string]float64, error) {
	t.Helper()
	s, err := probe.NewSampler(1e6, scenario.LoadSource(loads...))
	require.NoError(t, err)
	s.Mark(scenario.PhaseBaseline)
	sampleErr := s.Sample(t.Context())
	tl := s.Timeline()
	require.Len(t, tl.Samples, 1)
	out := map[string]float64{}
	for _, m := range tl.Metrics {
		out[m] = tl.Series(m)[0]
	}
	return out, sampleErr
}

// Each load's failures are counted by its profile's Traffic, wherever it
// is declared and whatever its client is called: a batch load beside the
// everyday traffic (as in the cache-outage suite) counts as batch, and an
// everyday profile run as a flood as everyday.
func TestLoadSourceCountsFailuresByTraffic(t *testing.T) {
	everyday, batch := load.Background, load.InternalBatch
	renamed := load.InternalBatch
	renamed.Client = "appview-2" // a name that reads as everyday: the Traffic decides
	got, err := sampleLoads(t,
		fake(everyday, 100, 3),
		fake(batch, 4, 5),
		fake(everyday, 20, 7),
		fake(renamed, 1, 11),
	)
	require.NoError(t, err)
	assert.Equal(t, map[string]float64{
		scenario.MetricLoadOK:         125,
		scenario.MetricLoadErrors:     26,
		scenario.MetricEverydayErrors: 10,
		scenario.MetricBatchErrors:    16,
	}, got)
}

func TestLoadSourceWithOnlyEverydayTraffic(t *testing.T) {
	got, err := sampleLoads(t, fake(load.Background, 50, 2))
	require.NoError(t, err)
	assert.InDelta(t, 2, got[scenario.MetricEverydayErrors], 0)
	assert.InDelta(t, 0, got[scenario.MetricBatchErrors], 0, "no batch load, no batch errors")
	assert.InDelta(t, 2, got[scenario.MetricLoadErrors], 0)
}

// A load of no known traffic is not counted as either: the sample's load
// figures are missing and the sample says why.
func TestLoadSourceRefusesUnknownTraffic(t *testing.T) {
	odd := load.Background
	odd.Client, odd.Traffic = "odd", ""
	got, err := sampleLoads(t, fake(load.Background, 50, 2), fake(odd, 1, 1))
	require.Error(t, err)
	assert.Contains(t, err.Error(), `load odd: traffic ""`)
	for m, v := range got {
		assert.True(t, math.IsNaN(v), "%s is missing, not %v", m, v)
	}
}

func TestNewLoadSummary(t *testing.T) {
	rep := load.Report{Profile: load.InternalBatch, Stats: load.Stats{Sent: 3, OK: 2, Errors: 1}, Outcomes: map[string]int{load.OutcomeOK: 2, load.OutcomeFailed: 1}}
	s := scenario.NewLoadSummary(rep, nil)
	assert.Equal(t, load.InternalBatch.Client, s.Client)
	assert.Equal(t, load.TrafficBatch, s.Traffic)
	assert.Equal(t, rep.Stats, s.Stats)
	assert.False(t, s.Failed)
	assert.Empty(t, s.Error)

	s = scenario.NewLoadSummary(rep, errors.New("wait flood internal-batch: context canceled"))
	assert.True(t, s.Failed)
	assert.Equal(t, "wait flood internal-batch: context canceled", s.Error)
	assert.Equal(t, rep.Stats, s.Stats, "a failed load keeps what it did")
}

func TestValidateRefusesALoadOfNoTraffic(t *testing.T) {
	bg := load.Background
	bg.Traffic = ""
	sc := scenario.Scenario{Name: "x", Background: []load.Profile{bg}}
	err := sc.Validate()
	require.Error(t, err)
	assert.Contains(t, err.Error(), `background: load: Traffic is ""`)
}
