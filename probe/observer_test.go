package probe_test

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
)

var portNames = [3]string{"tw", "tw_added", "est"}

func startObserver(t *testing.T, spec probe.ObserverSpec) *probe.Observer {
	t.Helper()
	o, err := probe.StartObserver(spec)
	require.NoError(t, err)
	t.Cleanup(o.Stop)
	return o
}

// lastRow waits for a row that satisfies ok and returns it.
func lastRow(t *testing.T, o *probe.Observer, ok func(probe.ObserverRow) bool) probe.ObserverRow {
	t.Helper()
	var last probe.ObserverRow
	require.Eventually(t, func() bool {
		rows := o.Rows()
		if len(rows) == 0 {
			return false
		}
		last = rows[len(rows)-1]
		return ok(last)
	}, 10*time.Second, 10*time.Millisecond, "no row as wanted; last %+v", last)
	return last
}

// The observer, a process of its own, reads this process's figures and
// the sockets toward a port as this process would.
func TestObserverReadsTheStarter(t *testing.T) {
	srv := startServer(t, "tcp4", "127.0.0.1")
	since := time.Now()
	o := startObserver(t, probe.ObserverSpec{Interval: 20 * time.Millisecond, Ports: &probe.PortSocketsSpec{
		Names: portNames, Port: srv.port(), Since: since, Share: 1, Every: time.Millisecond, Wait: 10 * time.Millisecond,
	}})
	assert.Equal(t, []string{probe.MetricThreads, probe.MetricFDs, probe.MetricRSS, probe.MetricThreadsBusy, "tw", "tw_added", "est"}, o.Metrics())

	st, err := probe.ReadProcess(t.Context(), 0)
	require.NoError(t, err)
	row := lastRow(t, o, func(r probe.ObserverRow) bool { return !math.IsNaN(r.Values[4]) })
	assert.InDelta(t, st.Threads, row.Values[0], 8, "threads")
	assert.InDelta(t, st.FDs, row.Values[1], 8, "fds")
	assert.InDelta(t, float64(st.RSSBytes), row.Values[2], 64<<20, "rss")
	assert.GreaterOrEqual(t, row.Values[3], 1.0, "threads_busy")
	assert.Equal(t, []float64{0, 0, 0}, row.Values[4:], "sockets before any dial")

	srv.dialEstablished(t, 5)
	lastRow(t, o, func(r probe.ObserverRow) bool { return r.Values[6] == 5 })
	require.NoError(t, srv.makeTimeWait(t.Context(), 7))
	row = lastRow(t, o, func(r probe.ObserverRow) bool { return r.Values[4] == 7 })
	assert.Equal(t, []float64{7, 7, 5}, row.Values[4:], "TIME_WAIT, of it since the start, ESTABLISHED")

	// The rows keep time, and a Read is the newest.
	rows := o.Rows()
	for i := 1; i < len(rows); i++ {
		require.False(t, rows[i].At.Before(rows[i-1].At), "rows out of order")
	}
	dst := make([]float64, len(o.Metrics()))
	require.NoError(t, o.Read(t.Context(), dst))
	assert.InDelta(t, 7.0, dst[4], 0)
	c := o.Cost()
	assert.GreaterOrEqual(t, c.Reads, len(rows))
	assert.Positive(t, c.Total)
	assert.Contains(t, c.Where, "observer process")
	if os.Geteuid() == 0 {
		// As root it runs ahead of the threads it reads: every thread of
		// its at nice -10 (field 19 of /proc/PID/task/TID/stat).
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", o.PID()))
		require.NoError(t, err)
		for _, task := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", o.PID(), task.Name()))
			require.NoError(t, err)
			fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
			assert.Equal(t, "-10", fields[16], "nice of observer thread %s", task.Name())
		}
	}
}

// Where the sampler's own samples are late (here a source that blocks
// for 15 intervals, as a scheduler that runs none of this process's
// goroutines would), the timeline carries the observer's rows between
// them: its figures are seen, the others are missing there, and the
// report tells the two gaps apart.
func TestSamplerFillsItsGapsWithTheObserversRows(t *testing.T) {
	const interval = 20 * time.Millisecond
	o := startObserver(t, probe.ObserverSpec{Interval: interval})
	lastRow(t, o, func(probe.ObserverRow) bool { return true })
	own := probe.Func("own", func() float64 { return 1 }) // a figure read in this process
	s, err := probe.NewSampler(interval, o, own)
	require.NoError(t, err)
	s.Mark("inject")
	require.NoError(t, s.Sample(t.Context()))
	time.Sleep(15 * interval) // the sampler is blind meanwhile
	require.NoError(t, s.Sample(t.Context()))
	o.Stop()

	tl := s.Timeline()
	var filled int
	for _, smp := range tl.Samples {
		if !smp.ObserverOnly {
			continue
		}
		filled++
		assert.False(t, math.IsNaN(smp.Values[0]), "threads from the observer")
		assert.True(t, math.IsNaN(smp.Values[4]), "the sampler's own figure is missing")
		assert.Equal(t, "inject", smp.Phase)
	}
	assert.GreaterOrEqual(t, filled, 10, "the observer's rows between the two samples")
	assert.LessOrEqual(t, filled, 16)
	costs := tl.CostByPhase()
	require.Len(t, costs, 1)
	assert.Equal(t, 2, costs[0].Samples, "the cost is the sampler's samples'")
	assert.Equal(t, filled, costs[0].ObserverRows)
	assert.Less(t, costs[0].MaxGap, 2.0, "the observer kept time")
	assert.Greater(t, costs[0].SamplerGap, 14.0, "the sampler's own gap")
	assert.Equal(t, tl.Sources[0].Where, o.Cost().Where, "the observer's cost stands for its reads")

	// The filled timeline survives its JSON form.
	b, err := tl.MarshalJSON()
	require.NoError(t, err)
	var back probe.Timeline
	require.NoError(t, back.UnmarshalJSON(b))
	backCosts := back.CostByPhase()
	require.Len(t, backCosts, 1)
	assert.Equal(t, filled, backCosts[0].ObserverRows)
	assert.InDelta(t, costs[0].MaxGap, backCosts[0].MaxGap, 1e-3)
	assert.InDelta(t, costs[0].SamplerGap, backCosts[0].SamplerGap, 1e-3)
}

// Stop ends the observer's process; a second Stop does nothing more.
func TestObserverStopEndsItsProcess(t *testing.T) {
	o := startObserver(t, probe.ObserverSpec{Interval: 10 * time.Millisecond})
	lastRow(t, o, func(probe.ObserverRow) bool { return true })
	pid := observerPID(t, o)
	o.Stop()
	o.Stop()
	err := syscall.Kill(pid, 0)
	require.ErrorIs(t, err, syscall.ESRCH, "observer %d still there", pid)
	n := len(o.Rows())
	time.Sleep(50 * time.Millisecond)
	assert.Len(t, o.Rows(), n, "rows after Stop")
}

func observerPID(t *testing.T, o *probe.Observer) int {
	t.Helper()
	pid := o.PID()
	require.Positive(t, pid)
	require.NotEqual(t, os.Getpid(), pid)
	assert.Equal(t, fmt.Sprintf("observer process %d", pid), o.Cost().Where)
	return pid
}

// A spec that can't be read starts no process and says what is wrong.
func TestStartObserverRefusesABadSpec(t *testing.T) {
	for _, tc := range []struct {
		spec probe.ObserverSpec
		want string
	}{
		{probe.ObserverSpec{}, "interval 0s is not positive"},
		{probe.ObserverSpec{Interval: time.Second, PID: -1}, "pid -1 is negative"},
		{probe.ObserverSpec{Interval: time.Second, Ports: &probe.PortSocketsSpec{Port: 1, Share: 1, Every: 1, Wait: 1}}, "a figure without a name"},
		{probe.ObserverSpec{Interval: time.Second, Ports: &probe.PortSocketsSpec{Names: portNames, Share: 1, Every: 1, Wait: 1}}, "port 0"},
		{probe.ObserverSpec{Interval: time.Second, Ports: &probe.PortSocketsSpec{Names: portNames, Port: 1, Share: 2, Every: 1, Wait: 1}}, "want a share in (0, 1]"},
	} {
		_, err := probe.StartObserver(tc.spec)
		assert.ErrorContains(t, err, tc.want)
	}
}

// A heap dump stops every goroutine of this process for as long as it
// writes (runtime/debug.WriteHeapDump: 0.16-0.25 s for a million
// objects here), as the Go scheduler starves a sampler goroutine while a
// flood's goroutines finish: the sampler's own samples stop, the
// observer's rows go on.
func TestObserverKeepsTimeWhileThisProcessStops(t *testing.T) {
	const interval = 50 * time.Millisecond
	o := startObserver(t, probe.ObserverSpec{Interval: interval})
	s, err := probe.NewSampler(interval, o, probe.NewRuntimeSource())
	require.NoError(t, err)
	stop := runSampler(t, s)
	waitSamples(t, s, 5)
	s.Mark("inject")
	waitSamples(t, s, 10)
	stopped := stopTheWorld(t, 2_000_000)
	waitSamples(t, s, len(s.Timeline().Samples)+5)
	require.NoError(t, stop())
	o.Stop()

	costs := s.Timeline().CostByPhase()
	require.Len(t, costs, 1)
	c := costs[0]
	t.Logf("stopped %s: sampler's gap %.1f intervals, with the observer's %d rows %.2f", stopped, c.SamplerGap, c.ObserverRows, c.MaxGap)
	require.Greater(t, stopped, 5*interval, "the heap dump stopped this process too briefly to tell")
	assert.Greater(t, c.SamplerGap, 4.0, "the sampler was stopped with the process")
	assert.Less(t, c.MaxGap, 2.0, "the observer's rows keep time")
	assert.Positive(t, c.ObserverRows)
}

// stopTheWorld writes a heap dump of n small objects to a file and
// returns how long that took, this process's goroutines stopped.
func stopTheWorld(t *testing.T, n int) time.Duration {
	t.Helper()
	type node struct {
		next *node
		_    [4]int64 // 40 bytes an object, as a small struct of the heap
	}
	var head *node
	for range n {
		head = &node{next: head}
	}
	f, err := os.CreateTemp(t.TempDir(), "heap")
	require.NoError(t, err)
	defer func() { require.NoError(t, f.Close()) }()
	start := time.Now()
	debug.WriteHeapDump(f.Fd())
	took := time.Since(start)
	runtime.KeepAlive(head)
	return took
}

// Each sample takes the observer's row nearest it, also where its own
// read found the observer's output not read in time (late), and the
// stretch where samples are missing gets the rows in between.
func TestFillAlignsAndFillsFromTheRows(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	iv := 100 * time.Millisecond
	nan := math.NaN()
	tl := &probe.Timeline{Start: t0, Interval: iv, Metrics: []string{"threads", "own"},
		Phases: []probe.Phase{{Name: "inject", Start: t0}}}
	tl.Samples = []probe.Sample{
		{At: t0, Phase: "inject", Values: []float64{0, 10}},
		{At: t0.Add(110 * time.Millisecond), Phase: "inject", Values: []float64{nan, 11}, Late: []int{0}},
		{At: t0.Add(600 * time.Millisecond), Phase: "inject", Values: []float64{3, 16}},
	}
	var rows []probe.ObserverRow
	for i := range 8 {
		rows = append(rows, probe.ObserverRow{At: t0.Add(time.Duration(i) * iv), Values: []float64{float64(i)}, Late: i == 4})
	}
	probe.Fill(tl, 0, 0, rows)

	var at []time.Duration
	var threads []float64
	for _, s := range tl.Samples {
		at = append(at, s.At.Sub(t0))
		threads = append(threads, s.Values[0])
	}
	ms := time.Millisecond
	assert.Equal(t, []time.Duration{0, 110 * ms, 200 * ms, 300 * ms, 400 * ms, 500 * ms, 600 * ms}, at)
	assert.Equal(t, []float64{0, 1, 2, 3, 4, 5, 6}, threads, "each sample its nearest row")
	assert.Empty(t, tl.Samples[1].Late, "a row was there: not late")
	assert.Equal(t, []int{0}, tl.Samples[4].Late, "the observer's own late row")
	for i, s := range tl.Samples {
		assert.Equal(t, i >= 2 && i <= 5, s.ObserverOnly, "sample %d", i)
		if s.ObserverOnly {
			assert.True(t, math.IsNaN(s.Values[1]), "the sampler's own figure is missing in the observer's rows")
			assert.Equal(t, "inject", s.Phase)
		}
	}
	assert.InDelta(t, 1.1, tl.CostByPhase()[0].MaxGap, 1e-9)
	assert.InDelta(t, 4.9, tl.CostByPhase()[0].SamplerGap, 1e-9)
}
