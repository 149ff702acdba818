package report

import (
	"fmt"
	"math"
)

// DefaultPeakRatio is the factor by which a budgeted peak must move
// between two runs to be marked. Over 5 quick runs of every suite
// (2026-12-02) the same arm's budgeted peaks spread by at most 1.6× on
// most figures (goroutines_peak 12,954-20,229 in the incident, TIME_WAIT
// 8,913-13,473 in the band-aid), and 2.9-4.8× on the CQL queries in
// flight, a count sampled mid-burst; 2× marks a doubling without flagging
// the everyday spread.
const DefaultPeakRatio = 2.0

// Change is one thing that differs in a scenario from a baseline run.
type Change struct {
	// Kind is "test" (its test's verdict flipped), "budget" (one budget
	// held before and not now, or the other way), "budgets" (held or not
	// as a whole, when no one budget's flip says why), "peak" (a budgeted
	// peak moved by more than the ratio), "new" (no such scenario before)
	// or "budget added".
	Kind string `json:"kind"`
	// What names the budget, for budget, peak and budget added.
	What string `json:"what,omitempty"`
	// Was and Now are the verdicts or peaks.
	Was string `json:"was,omitempty"`
	Now string `json:"now,omitempty"`
}

// String reads "test: passed → failed" or "peak goroutines_peak <= 200
// during inject: 83 → 20,229".
func (c Change) String() string {
	what := c.Kind
	if c.What != "" {
		what += " " + c.What
	}
	if c.Was == "" && c.Now == "" {
		return what
	}
	return fmt.Sprintf("%s: %s → %s", what, c.Was, c.Now)
}

// Compare sets each entry of cur's Changes against the entry of the same
// scenario in base: test verdicts that flipped (both known), budgets held
// or violated that flipped (each, with its peaks), and budgeted peaks that moved by more than
// ratio either way (from 0 to anything above counts). It returns the
// scenarios base has and cur lacks. ratio must be above 1.
func Compare(base, cur []Entry, ratio float64) (gone []string, err error) {
	if !(ratio > 1) || math.IsInf(ratio, 0) {
		return nil, fmt.Errorf("compare: ratio %v: want a number above 1", ratio)
	}
	was := map[string]*Entry{}
	for i := range base {
		if _, dup := was[base[i].Scenario]; !dup {
			was[base[i].Scenario] = &base[i]
		}
	}
	seen := map[string]bool{}
	for i := range cur {
		e := &cur[i]
		seen[e.Scenario] = true
		e.Changes = nil
		b, ok := was[e.Scenario]
		if !ok {
			e.Changes = append(e.Changes, Change{Kind: "new"})
			continue
		}
		if b.Test.Verdict != "" && e.Test.Verdict != "" && b.Test.Verdict != e.Test.Verdict {
			e.Changes = append(e.Changes, Change{Kind: "test", Was: b.Test.Verdict, Now: e.Test.Verdict})
		}
		flipped := false
		for _, nb := range e.Budgets {
			var ob *BudgetResult
			for j := range b.Budgets {
				if b.Budgets[j].Budget == nb.Budget {
					ob = &b.Budgets[j]
					break
				}
			}
			if ob == nil {
				e.Changes = append(e.Changes, Change{Kind: "budget added", What: nb.Budget})
				continue
			}
			u := unitFor(nb.Metric, math.Max(ob.Peak, nb.Peak))
			if ob.Held != nb.Held {
				flipped = true
				e.Changes = append(e.Changes, Change{Kind: "budget", What: nb.Budget,
					Was: heldWord(ob.Held) + " (peak " + u.value(ob.Peak) + ")", Now: heldWord(nb.Held) + " (peak " + u.value(nb.Peak) + ")"})
				continue
			}
			if ob.Judged && nb.Judged && moved(ob.Peak, nb.Peak, ratio) {
				e.Changes = append(e.Changes, Change{Kind: "peak", What: nb.Budget, Was: u.value(ob.Peak), Now: u.value(nb.Peak)})
			}
		}
		// A verdict no single budget's flip explains: the data plane
		// answering after recover, or a budget added or gone.
		if b.Held != e.Held && !flipped {
			e.Changes = append(e.Changes, Change{Kind: "budgets", Was: heldWord(b.Held), Now: heldWord(e.Held)})
		}
	}
	for _, b := range base {
		if !seen[b.Scenario] {
			seen[b.Scenario] = true
			gone = append(gone, b.Scenario)
		}
	}
	return gone, nil
}

// moved reports whether b is more than ratio times a, or less than a over
// ratio. Negative peaks are compared by size.
func moved(a, b, ratio float64) bool {
	a, b = math.Abs(a), math.Abs(b)
	if a == b {
		return false
	}
	if a == 0 || b == 0 {
		return true
	}
	return b > a*ratio || a > b*ratio
}

func heldWord(held bool) string {
	if held {
		return "held"
	}
	return "violated"
}

// ChangeLines lists entries' changes, one "scenario: change" a line.
func ChangeLines(entries []Entry) []string {
	var out []string
	for _, e := range entries {
		for _, c := range e.Changes {
			out = append(out, e.Scenario+": "+c.String())
		}
	}
	return out
}
