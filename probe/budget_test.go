package probe_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
)

// incidentTimeline is a hand-made run shaped like the postmortem: threads go
// from 150 to 1500 and TIME_WAIT toward memcached piles up during inject.
func incidentTimeline() *probe.Timeline {
	start := time.Date(2026, 4, 6, 12, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return start.Add(time.Duration(s * float64(time.Second))) }
	tl := &probe.Timeline{
		Start:    start,
		Interval: time.Second,
		Metrics:  []string{"threads", "timewait_memcached"},
		Phases: []probe.Phase{
			{Name: "baseline", Start: at(0), End: at(3)},
			{Name: "inject", Start: at(3), End: at(6)},
			{Name: "recover", Start: at(6)},
		},
	}
	rows := []struct {
		t       float64
		phase   string
		threads float64
		tw      float64
	}{
		{1, "baseline", 150, 10},
		{2, "baseline", 160, 12},
		{3, "inject", 400, 900},
		{4, "inject", 1500, 28000},
		{5, "inject", 1200, 27000},
		{6, "recover", 900, 26000},
		{7, "recover", 200, 150},
	}
	for _, r := range rows {
		tl.Samples = append(tl.Samples, probe.Sample{At: at(r.t), Phase: r.phase, Values: []float64{r.threads, r.tw}})
	}
	return tl
}

func TestCheckReportsEveryViolation(t *testing.T) {
	tl := incidentTimeline()
	vs := tl.Check(
		probe.Limit("threads", 300, "inject"),
		probe.Limit("threads", 2000), // holds
		probe.Limit("timewait_memcached", 200, "inject", "recover"),
		probe.Limit("timewait_memcached", 20, "baseline"), // holds
		probe.Limit("heap_bytes", 1<<30),                  // not recorded
		probe.Limit("threads", 300, "validate"),           // phase never marked
	)
	require.Len(t, vs, 4, vs.String())

	assert.Equal(t, "threads", vs[0].Budget.Metric)
	assert.InDelta(t, 1500.0, vs[0].Peak, 0)
	assert.Equal(t, 4*time.Second, vs[0].At)
	assert.Equal(t, "inject", vs[0].Phase)
	assert.Equal(t, 3*time.Second, vs[0].FirstOver)
	assert.Equal(t, 3, vs[0].Over)
	assert.Equal(t, 3, vs[0].Judged)

	assert.Equal(t, "timewait_memcached", vs[1].Budget.Metric)
	assert.InDelta(t, 28000.0, vs[1].Peak, 0)
	assert.Equal(t, "inject", vs[1].Phase)
	assert.Equal(t, 4, vs[1].Over)
	assert.Equal(t, 5, vs[1].Judged)

	assert.Contains(t, vs[2].Problem, "metric not recorded")
	assert.Contains(t, vs[3].Problem, "no sample in phases validate")

	assert.Equal(t,
		"threads: peak 1500 at 4s (phase inject) exceeds threads <= 300 during inject; first over at 3s, 3 of 3 samples over",
		vs[0].String())
	err := vs.Err()
	require.Error(t, err)
	lines := strings.Split(err.Error(), "\n")
	require.Len(t, lines, 5, err.Error())
	assert.Equal(t, "4 budget(s) violated:", lines[0])
	assert.Contains(t, lines[2], "timewait_memcached: peak 28000 at 4s (phase inject) exceeds timewait_memcached <= 200 during inject, recover")
	assert.Contains(t, lines[3], "heap_bytes: cannot judge heap_bytes <= 1073741824 over the whole run: metric not recorded")
}

func TestCheckPassesWhenBudgetsHold(t *testing.T) {
	tl := incidentTimeline()
	vs := tl.Check(probe.Limit("threads", 1500), probe.Limit("timewait_memcached", 200, "baseline"))
	assert.Empty(t, vs)
	require.NoError(t, vs.Err())
	assert.Equal(t, "every budget held", vs.String())
}

// A budget judged over samples taken before any phase mark has phase "".
func TestCheckBeforeAnyPhase(t *testing.T) {
	tl := incidentTimeline()
	tl.Samples[0].Phase = ""
	vs := tl.Check(probe.Limit("threads", 100))
	require.Len(t, vs, 1)
	assert.Equal(t, 7, vs[0].Over)
	assert.Contains(t, vs[0].String(), "(phase inject)")
	vs = tl.Check(probe.Limit("threads", 100, ""))
	require.Len(t, vs, 1)
	assert.Contains(t, vs[0].String(), "(before any phase)")
}
