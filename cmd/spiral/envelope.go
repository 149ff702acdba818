package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
)

func init() {
	register(command{
		name:    "envelope",
		summary: "peaks of several runs of the same scenarios beside their budgets",
		usage: `Usage: spiral envelope [-json] [-all] DIR...

Reads every summary.json under each DIR (the report folders of N runs of
the same suites, as scripts/envelope.sh writes them) and groups them by
scenario. For each scenario and each of its budgets it prints:

	runs        runs with a peak in the budget's phases ("3/5": two runs
	            had no sample of the metric there)
	min, max    the lowest and highest of those runs' peaks over the
	            budget's phases (all phases for a budget over the whole run)
	budget      the budget's bound
	budget/max  how much headroom the bound leaves over the highest peak;
	            below 1 the bound was exceeded; "inf" when every peak was 0
	            under a bound above 0, "-" when both are 0
	over        how many runs reported the budget violated

The scenario's own columns say how many runs it had and how many held every
budget. Incident arms are shown the same way: their budget/max shows how far
the incident goes past the bound. A fixed arm's budget is meant to be
derived from its envelope over at least 5 runs, quick and full mode.

-all adds, for every metric recorded but not budgeted, a row with its peak
over the whole run. -json prints the same figures as JSON, each run's peak
in the order of the summaries read.

Flags come before the folders. Examples:

	spiral envelope reports/envelope-20250102T030405Z/run-*
	spiral envelope -all -json reports/a reports/b`,
		run: runEnvelope,
	})
}

func runEnvelope(_ context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("envelope", out)
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	all := fs.Bool("all", false, "also show every metric without a budget, over the whole run")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	if fs.NArg() == 0 {
		return usagef("envelope: want at least one folder")
	}
	runs, err := readSummaries(fs.Args())
	if err != nil {
		return err
	}
	if len(runs) == 0 {
		return fmt.Errorf("no summary.json under %s", strings.Join(fs.Args(), ", "))
	}
	envs := envelopes(runs, *all)
	if *asJSON {
		b, err := json.MarshalIndent(envs, "", " ")
		if err != nil {
			return fmt.Errorf("encode: %w", err)
		}
		if _, err := fmt.Fprintf(out, "%s\n", b); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		return nil
	}
	return writeEnvelopeTable(out, envs)
}

// runResult is one run of one scenario: a summary.json as report.Write
// writes it.
type runResult struct {
	// path is the summary.json it was read from.
	path string
	res  scenario.Result
}

// readSummaries reads every summary.json under dirs, in the order of dirs
// and, within one, of the walk (lexical). A file reached twice (a folder
// given twice, or inside another given) is read once.
func readSummaries(dirs []string) ([]runResult, error) {
	var runs []runResult
	seen := map[string]bool{}
	for _, dir := range dirs {
		st, err := os.Stat(dir)
		if err != nil {
			return nil, fmt.Errorf("read summaries: %w", err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("%s is not a folder", dir)
		}
		err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "summary.json" {
				return err
			}
			real, err := realPath(p)
			if err != nil {
				return err
			}
			if seen[real] {
				return nil
			}
			seen[real] = true
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			r := runResult{path: p}
			if err := json.Unmarshal(b, &r.res); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if r.res.Scenario == "" {
				return fmt.Errorf("%s: no scenario name: not a scenario summary", p)
			}
			runs = append(runs, r)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("read summaries: %w", err)
		}
	}
	return runs, nil
}

// scenarioEnvelope is one scenario's figures over its runs.
type scenarioEnvelope struct {
	Scenario string `json:"scenario"`
	// Runs counts its summaries; Held those whose budgets all held and
	// whose data plane answered after recover; Stopped those of runs that
	// stopped part-way (Result.Error), whose peaks cover what was seen.
	Runs    int `json:"runs"`
	Held    int `json:"held"`
	Stopped int `json:"stopped"`
	// Summaries are the files read, in the order of each row's Peaks.
	Summaries []string      `json:"summaries"`
	Rows      []envelopeRow `json:"rows"`
}

// envelopeRow is one budget of a scenario, or with -all one metric
// without a budget, over every run.
type envelopeRow struct {
	Metric string `json:"metric"`
	// Phases the peak is taken over; empty is the whole run.
	Phases []string `json:"phases,omitempty"`
	// Budget is the bound; nil for a metric without a budget.
	Budget *float64 `json:"budget"`
	// Peaks is each run's peak over Phases, null for a run with no sample
	// of the metric there, in the order of the scenario's Summaries.
	Peaks []*float64 `json:"peaks"`
	// Measured counts the runs with a peak; Min and Max are over those
	// (null when none).
	Measured int      `json:"measured"`
	Min      *float64 `json:"min"`
	Max      *float64 `json:"max"`
	// Ratio is Budget/Max: below 1 the bound was exceeded. It is null
	// without a budget or a peak, or when Max is 0.
	Ratio *float64 `json:"ratio"`
	// Over counts the runs that reported this budget violated, including
	// those that could not judge it.
	Over int `json:"over"`
}

// envelopes groups runs by scenario, sorted by name, with a row per
// budget in the order the first run lists them (budgets only later runs
// have are appended), and with all a row per unbudgeted metric.
func envelopes(runs []runResult, all bool) []scenarioEnvelope {
	byName := map[string][]runResult{}
	for _, r := range runs {
		byName[r.res.Scenario] = append(byName[r.res.Scenario], r)
	}
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	slices.Sort(names)
	out := make([]scenarioEnvelope, 0, len(names))
	for _, n := range names {
		out = append(out, scenarioOf(n, byName[n], all))
	}
	return out
}

func scenarioOf(name string, runs []runResult, all bool) scenarioEnvelope {
	e := scenarioEnvelope{Scenario: name, Runs: len(runs)}
	var budgets []probe.Budget
	budgeted := map[string]bool{}
	metrics := map[string]bool{}
	for _, r := range runs {
		e.Summaries = append(e.Summaries, r.path)
		if r.res.Held() {
			e.Held++
		}
		if r.res.Error != "" {
			e.Stopped++
		}
		for _, b := range r.res.Budgets {
			if !slices.ContainsFunc(budgets, func(c probe.Budget) bool { return sameBudget(b, c) }) {
				budgets = append(budgets, b)
			}
			budgeted[b.Metric] = true
		}
		for m := range r.res.Peaks {
			metrics[m] = true
		}
	}
	for _, b := range budgets {
		row := envelopeRow{Metric: b.Metric, Phases: b.Phases, Budget: ptr(b.Max)}
		for _, r := range runs {
			row.Peaks = append(row.Peaks, peakOver(r.res.Peaks[b.Metric], b.Phases))
			if slices.ContainsFunc(r.res.Violations, func(v probe.Violation) bool { return sameBudget(v.Budget, b) }) {
				row.Over++
			}
		}
		e.Rows = append(e.Rows, row.summarize())
	}
	if all {
		var rest []string
		for m := range metrics {
			if !budgeted[m] {
				rest = append(rest, m)
			}
		}
		slices.Sort(rest)
		for _, m := range rest {
			row := envelopeRow{Metric: m}
			for _, r := range runs {
				row.Peaks = append(row.Peaks, peakOver(r.res.Peaks[m], nil))
			}
			e.Rows = append(e.Rows, row.summarize())
		}
	}
	return e
}

// summarize fills Measured, Min, Max and Ratio from Peaks and Budget.
func (r envelopeRow) summarize() envelopeRow {
	for _, p := range r.Peaks {
		if p == nil {
			continue
		}
		r.Measured++
		if r.Min == nil || *p < *r.Min {
			r.Min = ptr(*p)
		}
		if r.Max == nil || *p > *r.Max {
			r.Max = ptr(*p)
		}
	}
	if r.Budget != nil && r.Max != nil && *r.Max != 0 {
		r.Ratio = ptr(*r.Budget / *r.Max)
	}
	return r
}

// sameBudget reports whether a and b are the same bound on the same metric
// over the same phases.
func sameBudget(a, b probe.Budget) bool {
	return a.Metric == b.Metric && a.Max == b.Max && slices.Equal(a.Phases, b.Phases)
}

// peakOver is the highest of perPhase's peaks in phases (every phase when
// none is named), the peak probe's Check judges a budget by; nil when none
// of those phases has one.
func peakOver(perPhase map[string]float64, phases []string) *float64 {
	var peak *float64
	for ph, v := range perPhase {
		if len(phases) > 0 && !slices.Contains(phases, ph) {
			continue
		}
		if math.IsNaN(v) {
			continue
		}
		if peak == nil || v > *peak {
			peak = ptr(v)
		}
	}
	return peak
}

func ptr(v float64) *float64 { return &v }

// writeEnvelopeTable prints envs as one aligned table, a row per budget.
func writeEnvelopeTable(out io.Writer, envs []scenarioEnvelope) error {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	printf(tw, "SCENARIO\tRUNS\tHELD\tMETRIC\tPHASES\tMIN\tMAX\tBUDGET\tBUDGET/MAX\tOVER\n")
	for _, e := range envs {
		held := strconv.Itoa(e.Held)
		if e.Stopped > 0 {
			held += fmt.Sprintf(" (%d stopped)", e.Stopped)
		}
		if len(e.Rows) == 0 {
			printf(tw, "%s\t%d\t%s\t(no budget)\t\t\t\t\t\t\n", e.Scenario, e.Runs, held)
			continue
		}
		for _, r := range e.Rows {
			runs := strconv.Itoa(r.Measured)
			if r.Measured != e.Runs {
				runs = fmt.Sprintf("%d/%d", r.Measured, e.Runs)
			}
			phases := "all"
			if len(r.Phases) > 0 {
				phases = strings.Join(r.Phases, ",")
			}
			budget, ratio, over := "-", "-", "-"
			if r.Budget != nil {
				budget, over = number(r.Budget), strconv.Itoa(r.Over)
				switch {
				case r.Ratio != nil:
					ratio = ratioString(*r.Ratio)
				case r.Max != nil && *r.Budget > 0:
					ratio = "inf"
				}
			}
			printf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
				e.Scenario, runs, held, r.Metric, phases, number(r.Min), number(r.Max), budget, ratio, over)
		}
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// ratioString formats budget/max to 3 significant digits, so that an
// incident's 0.0153 (a bound 65 times exceeded) keeps its figure; from 100
// on, in whole numbers.
func ratioString(r float64) string {
	if r >= 100 {
		return strconv.FormatFloat(r, 'f', 0, 64)
	}
	return strconv.FormatFloat(r, 'g', 3, 64)
}

// number formats a figure as the budgets print theirs: whole numbers in
// full, others to 4 significant digits; "-" for none.
func number(v *float64) string {
	switch {
	case v == nil:
		return "-"
	case *v == math.Trunc(*v) && math.Abs(*v) < 1e15:
		return strconv.FormatFloat(*v, 'f', 0, 64)
	}
	return strconv.FormatFloat(*v, 'g', 4, 64)
}
