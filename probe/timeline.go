package probe

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"time"
)

// Timeline is what a Sampler recorded: named metrics sampled over time, and
// the phases marked while it ran. A Timeline returned by Sampler.Timeline is
// a copy the caller owns.
type Timeline struct {
	// Start is when the sampler started; offsets in JSON count from it.
	Start time.Time
	// Interval is the sampling interval asked for.
	Interval time.Duration
	// Metrics names the columns of every Sample's Values.
	Metrics []string
	// Samples in time order.
	Samples []Sample
	// Phases in the order they were marked; the last may still be open.
	Phases []Phase
	// Sources is what each source's reads cost, in the sampler's order:
	// where a sample's Cost went.
	Sources []SourceCost
}

// SourceCost is what one source's reads cost over a run.
type SourceCost struct {
	// Metrics are the source's metrics; the first names it.
	Metrics []string `json:"metrics"`
	// Reads counts its reads, Total and Max their time.
	Reads int           `json:"reads"`
	Total time.Duration `json:"total_ns"`
	Max   time.Duration `json:"max_ns"`
	// Late counts the reads of a Bounded source whose reading was not in
	// within its wait: samples with its figures missing.
	Late int `json:"late,omitempty"`
	// Where says where the source was read when not in the sampler's
	// process: "observer process 1234" for an Observer, whose reads cost
	// the sampled process nothing; Median is then its median read.
	Where  string        `json:"where,omitempty"`
	Median time.Duration `json:"median_ns,omitempty"`
}

// Mean is the average read.
func (c SourceCost) Mean() time.Duration {
	if c.Reads == 0 {
		return 0
	}
	return c.Total / time.Duration(c.Reads)
}

// Sample is one reading of every metric.
type Sample struct {
	At time.Time
	// Phase is the phase marked last before At ("" before the first mark).
	Phase string
	// Cost is how long reading every source took.
	Cost time.Duration
	// Values holds one value per Timeline.Metrics; NaN where a source failed.
	Values []float64
	// Late lists the sources (indices into Timeline.Sources) whose reading
	// was late in this sample (a Bounded source's ErrLate): their values
	// are missing here.
	Late []int
	// ObserverOnly marks a row of an Observer alone, put where the
	// sampler's own samples were late (Sampler.Timeline): only the
	// observer's figures are in it, the rest NaN; Cost is the observer's.
	ObserverOnly bool
}

// Phase is a named span of a run, from one mark to the next.
type Phase struct {
	Name  string
	Start time.Time
	// End is the start of the next phase, or the zero time while open.
	End time.Time
}

// PhaseAt returns the phase marked last at or before at ("" before the
// first mark).
func (t *Timeline) PhaseAt(at time.Time) string {
	for i := len(t.Phases) - 1; i >= 0; i-- {
		if !t.Phases[i].Start.After(at) {
			return t.Phases[i].Name
		}
	}
	return ""
}

// Index returns the column of metric in Samples' Values, or -1.
func (t *Timeline) Index(metric string) int { return slices.Index(t.Metrics, metric) }

// Series returns metric's values in sample order (NaN where missing), or nil
// if the timeline does not record metric.
func (t *Timeline) Series(metric string) []float64 {
	i := t.Index(metric)
	if i < 0 {
		return nil
	}
	out := make([]float64, len(t.Samples))
	for j, s := range t.Samples {
		out[j] = s.Values[i]
	}
	return out
}

// CostSummary states what sampling cost.
type CostSummary struct {
	Samples int           `json:"samples"`
	Mean    time.Duration `json:"mean_ns"`
	Max     time.Duration `json:"max_ns"`
	// Share is Mean over the interval: the fraction of one core spent sampling.
	Share float64 `json:"share_of_interval"`
}

// String reads "120 samples, mean 85µs, max 1.2ms, 0.09% of the interval".
func (c CostSummary) String() string {
	return fmt.Sprintf("%d samples, mean %s, max %s, %.2f%% of the interval",
		c.Samples, c.Mean, c.Max, 100*c.Share)
}

// Cost summarises the cost of the samples taken.
func (t *Timeline) Cost() CostSummary {
	var c CostSummary
	var sum time.Duration
	for _, s := range t.Samples {
		if s.ObserverOnly {
			continue
		}
		c.Samples++
		sum += s.Cost
		c.Max = max(c.Max, s.Cost)
	}
	if c.Samples == 0 {
		return c
	}
	c.Mean = sum / time.Duration(c.Samples)
	if t.Interval > 0 {
		c.Share = float64(c.Mean) / float64(t.Interval)
	}
	return c
}

// PhaseCost is what sampling cost during one phase, and how late it ran:
// the observer's own share of the process it judges.
type PhaseCost struct {
	Phase   string        `json:"phase"`
	Samples int           `json:"samples"`
	Median  time.Duration `json:"median_ns"`
	P99     time.Duration `json:"p99_ns"`
	Max     time.Duration `json:"max_ns"`
	// Share is Median over the interval.
	Share float64 `json:"share_of_interval"`
	// MaxGap is the longest time from a sample to the next one that fell
	// in this phase, in intervals: 1 when the sampler kept time, 10 when it
	// was blind for a second at a 100 ms interval. An observer's rows
	// (ObserverOnly) count: its figures were seen.
	MaxGap float64 `json:"max_gap_intervals"`
	// SamplerGap is MaxGap of the sampler's own samples alone: how long
	// the figures read in the sampled process (goroutines, heap, its
	// counters) went unseen. ObserverRows counts the observer's rows put
	// in between; the cost figures are of the sampler's samples alone.
	SamplerGap   float64 `json:"sampler_gap_intervals"`
	ObserverRows int     `json:"observer_rows,omitempty"`
}

// CostByPhase returns the sampling cost of each phase, in the order the
// phases were marked (samples before the first mark are left out).
func (t *Timeline) CostByPhase() []PhaseCost {
	var out []PhaseCost
	for _, ph := range t.Phases {
		if slices.ContainsFunc(out, func(c PhaseCost) bool { return c.Phase == ph.Name }) {
			continue // a phase marked twice is one row
		}
		c := PhaseCost{Phase: ph.Name}
		var costs []time.Duration
		var prev time.Time // the sampler's own sample before
		for i, s := range t.Samples {
			if s.Phase == ph.Name && i > 0 && t.Interval > 0 {
				c.MaxGap = max(c.MaxGap, float64(s.At.Sub(t.Samples[i-1].At))/float64(t.Interval))
			}
			if s.ObserverOnly {
				if s.Phase == ph.Name {
					c.ObserverRows++
				}
				continue
			}
			if s.Phase == ph.Name {
				costs = append(costs, s.Cost)
				if !prev.IsZero() && t.Interval > 0 {
					c.SamplerGap = max(c.SamplerGap, float64(s.At.Sub(prev))/float64(t.Interval))
				}
			}
			prev = s.At
		}
		if len(costs) == 0 {
			continue
		}
		slices.Sort(costs)
		c.Samples = len(costs)
		c.Median = costs[(len(costs)-1)/2]
		c.P99 = costs[int(math.Ceil(0.99*float64(len(costs))))-1]
		c.Max = costs[len(costs)-1]
		if t.Interval > 0 {
			c.Share = float64(c.Median) / float64(t.Interval)
		}
		out = append(out, c)
	}
	return out
}

// AddMetric adds a column to a finished timeline, valued at each sample by
// at (NaN for missing): a figure computed after the run from records the
// sampler could not read live, such as the latency of requests that began
// in the interval before each sample. It refuses a name already recorded.
func (t *Timeline) AddMetric(name string, at func(s Sample) float64) error {
	if name == "" || t.Index(name) >= 0 {
		return fmt.Errorf("timeline: add metric %q: empty or already recorded", name)
	}
	t.Metrics = append(t.Metrics, name)
	for i := range t.Samples {
		t.Samples[i].Values = append(t.Samples[i].Values, at(t.Samples[i]))
	}
	return nil
}

func (t *Timeline) clone() *Timeline {
	out := &Timeline{
		Start:    t.Start,
		Interval: t.Interval,
		Metrics:  slices.Clone(t.Metrics),
		Samples:  make([]Sample, len(t.Samples)),
		Phases:   slices.Clone(t.Phases),
		Sources:  slices.Clone(t.Sources),
	}
	for i, s := range t.Samples {
		s.Values = slices.Clone(s.Values)
		out.Samples[i] = s
	}
	return out
}

// The JSON form counts time in seconds from Start, ready for charts, and
// writes missing values as null.
type timelineJSON struct {
	Start           time.Time    `json:"start"`
	IntervalSeconds float64      `json:"interval_seconds"`
	Metrics         []string     `json:"metrics"`
	Phases          []phaseJSON  `json:"phases"`
	Cost            CostSummary  `json:"cost"`
	Sources         []SourceCost `json:"sources,omitempty"`
	CostByPhase     []PhaseCost  `json:"cost_by_phase,omitempty"`
	Samples         []sampleJSON `json:"samples"`
}

type phaseJSON struct {
	Name  string   `json:"name"`
	Start float64  `json:"start_seconds"`
	End   *float64 `json:"end_seconds"`
}

type sampleJSON struct {
	T           float64    `json:"t"`
	Phase       string     `json:"phase,omitempty"`
	CostSeconds float64    `json:"cost_seconds"`
	Values      []*float64 `json:"values"`
	Late        []int      `json:"late,omitempty"`
	Observer    bool       `json:"observer_only,omitempty"`
}

// MarshalJSON encodes t as
//
//	{"start": "...", "interval_seconds": 0.1, "metrics": ["threads", ...],
//	 "phases": [{"name": "inject", "start_seconds": 2, "end_seconds": 5}],
//	 "cost": {...},
//	 "samples": [{"t": 0.1, "phase": "inject", "cost_seconds": 8e-05, "values": [12, null]}]}
//
// with times in seconds from start and missing values as null.
func (t *Timeline) MarshalJSON() ([]byte, error) {
	j := timelineJSON{
		Start:           t.Start,
		IntervalSeconds: t.Interval.Seconds(),
		Metrics:         t.Metrics,
		Phases:          make([]phaseJSON, len(t.Phases)),
		Cost:            t.Cost(),
		Sources:         t.Sources,
		CostByPhase:     t.CostByPhase(),
		Samples:         make([]sampleJSON, len(t.Samples)),
	}
	if j.Metrics == nil {
		j.Metrics = []string{}
	}
	for i, p := range t.Phases {
		j.Phases[i] = phaseJSON{Name: p.Name, Start: p.Start.Sub(t.Start).Seconds()}
		if !p.End.IsZero() {
			e := p.End.Sub(t.Start).Seconds()
			j.Phases[i].End = &e
		}
	}
	for i, s := range t.Samples {
		vals := make([]*float64, len(s.Values))
		for k := range s.Values {
			if v := s.Values[k]; !math.IsNaN(v) && !math.IsInf(v, 0) {
				vals[k] = &s.Values[k]
			}
		}
		j.Samples[i] = sampleJSON{T: s.At.Sub(t.Start).Seconds(), Phase: s.Phase, CostSeconds: s.Cost.Seconds(), Values: vals, Late: s.Late, Observer: s.ObserverOnly}
	}
	b, err := json.Marshal(j)
	if err != nil {
		return nil, fmt.Errorf("marshal timeline: %w", err)
	}
	return b, nil
}

// UnmarshalJSON decodes the form MarshalJSON writes. Times come back to the
// nanosecond only to the precision of float64 seconds (well under a
// microsecond for runs of days).
func (t *Timeline) UnmarshalJSON(b []byte) error {
	var j timelineJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("unmarshal timeline: %w", err)
	}
	at := func(sec float64) time.Time { return j.Start.Add(seconds(sec)) }
	*t = Timeline{Start: j.Start, Interval: seconds(j.IntervalSeconds), Metrics: j.Metrics, Sources: j.Sources}
	for _, p := range j.Phases {
		ph := Phase{Name: p.Name, Start: at(p.Start)}
		if p.End != nil {
			ph.End = at(*p.End)
		}
		t.Phases = append(t.Phases, ph)
	}
	for i, s := range j.Samples {
		if len(s.Values) != len(j.Metrics) {
			return fmt.Errorf("unmarshal timeline: sample %d has %d values for %d metrics", i, len(s.Values), len(j.Metrics))
		}
		vals := make([]float64, len(s.Values))
		for k, v := range s.Values {
			vals[k] = math.NaN()
			if v != nil {
				vals[k] = *v
			}
		}
		t.Samples = append(t.Samples, Sample{At: at(s.T), Phase: s.Phase, Cost: seconds(s.CostSeconds), Values: vals, Late: s.Late, ObserverOnly: s.Observer})
	}
	return nil
}

func seconds(s float64) time.Duration { return time.Duration(math.Round(s * float64(time.Second))) }
