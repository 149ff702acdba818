package probe

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Budget bounds one metric's high-water mark in some phases: every sample of
// Metric taken during one of Phases must be at most Max.
type Budget struct {
	Metric string  `json:"metric"`
	Max    float64 `json:"max"`
	// Phases the bound holds in; empty means the whole timeline.
	Phases []string `json:"phases,omitempty"`
}

// Limit returns the Budget "metric <= max during phases" (the whole run when
// no phase is named).
func Limit(metric string, max float64, phases ...string) Budget {
	return Budget{Metric: metric, Max: max, Phases: phases}
}

// String reads "threads <= 300 during inject, observe" or
// "threads <= 300 over the whole run".
func (b Budget) String() string {
	where := "over the whole run"
	if len(b.Phases) > 0 {
		where = "during " + strings.Join(b.Phases, ", ")
	}
	return fmt.Sprintf("%s <= %s %s", b.Metric, formatValue(b.Max), where)
}

// Violation is one budget that did not hold, or could not be judged.
type Violation struct {
	Budget Budget `json:"budget"`
	// Peak is the highest value seen in the budget's phases.
	Peak float64 `json:"peak"`
	// At is when the peak was sampled, from the timeline's start, and Phase
	// the phase it fell in.
	At    time.Duration `json:"at_ns"`
	Phase string        `json:"phase"`
	// FirstOver is when the bound was first exceeded, from the timeline's start.
	FirstOver time.Duration `json:"first_over_ns"`
	// Over counts the samples above the bound out of Judged samples.
	Over   int `json:"over"`
	Judged int `json:"judged"`
	// Problem says why the budget could not be judged (no such metric, no
	// sample in its phases); Peak, At and Phase are then unset. A budget
	// that judged nothing is reported rather than passed.
	Problem string `json:"problem,omitempty"`
}

// String reads, for example,
//
//	threads: peak 1503 at 12.4s (phase inject) exceeds threads <= 300 during inject, observe; first over at 3.1s, 57 of 120 samples over
func (v Violation) String() string {
	if v.Problem != "" {
		return fmt.Sprintf("%s: cannot judge %s: %s", v.Budget.Metric, v.Budget, v.Problem)
	}
	phase := v.Phase
	if phase == "" {
		phase = "before any phase"
	} else {
		phase = "phase " + phase
	}
	return fmt.Sprintf("%s: peak %s at %s (%s) exceeds %s; first over at %s, %d of %d samples over",
		v.Budget.Metric, formatValue(v.Peak), roundDur(v.At), phase, v.Budget, roundDur(v.FirstOver), v.Over, v.Judged)
}

// Violations is every budget that failed a Check, in budget order.
type Violations []Violation

// Err returns nil if vs is empty, or an error listing one violation per line.
func (vs Violations) Err() error {
	if len(vs) == 0 {
		return nil
	}
	return errors.New(vs.String())
}

// String lists one violation per line, after a count.
func (vs Violations) String() string {
	if len(vs) == 0 {
		return "every budget held"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d budget(s) violated:", len(vs))
	for _, v := range vs {
		b.WriteString("\n\t")
		b.WriteString(v.String())
	}
	return b.String()
}

// Check judges every budget against the timeline's high-water marks and
// returns every violation, in budget order; nil when all hold. A budget
// naming a metric the timeline lacks, or phases with no sample of it, is a
// violation with a Problem. Missing values (NaN) are skipped. Check costs one
// pass over the samples per budget.
func (t *Timeline) Check(budgets ...Budget) Violations {
	var out Violations
	for _, b := range budgets {
		if v, bad := t.check(b); bad {
			out = append(out, v)
		}
	}
	return out
}

func (t *Timeline) check(b Budget) (Violation, bool) {
	v := Violation{Budget: b}
	if math.IsNaN(b.Max) {
		v.Problem = "the bound is NaN"
		return v, true
	}
	col := t.Index(b.Metric)
	if col < 0 {
		v.Problem = "metric not recorded (recorded: " + strings.Join(t.Metrics, ", ") + ")"
		return v, true
	}
	inScope, missing := 0, 0
	found := false
	for _, s := range t.Samples {
		if len(b.Phases) > 0 && !slices.Contains(b.Phases, s.Phase) {
			continue
		}
		inScope++
		x := s.Values[col]
		if math.IsNaN(x) {
			missing++
			continue
		}
		v.Judged++
		at := s.At.Sub(t.Start)
		if !found || x > v.Peak {
			found = true
			v.Peak, v.At, v.Phase = x, at, s.Phase
		}
		if x > b.Max {
			if v.Over == 0 {
				v.FirstOver = at
			}
			v.Over++
		}
	}
	switch {
	case inScope == 0 && len(b.Phases) > 0:
		v.Problem = "no sample in phases " + strings.Join(b.Phases, ", ")
		return v, true
	case inScope == 0:
		v.Problem = "no sample taken"
		return v, true
	case v.Judged == 0:
		v.Problem = fmt.Sprintf("all %d samples in scope are missing (source failed)", missing)
		return v, true
	}
	return v, v.Over > 0
}

func formatValue(x float64) string {
	if x == math.Trunc(x) && math.Abs(x) < 1e15 {
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.4g", x)
}

func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(time.Millisecond)
	default:
		return d
	}
}
