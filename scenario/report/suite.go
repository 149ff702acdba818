package report

import (
	"cmp"
	"encoding/json"
	"fmt"
	"html/template"
	"math"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
)

// ReadResult reads back the Result that Write wrote into dir: summary.json
// and timeline.json (the per-request records of requests.json are left
// out: no page needs them).
func ReadResult(dir string) (*scenario.Result, error) {
	var res scenario.Result
	b, err := os.ReadFile(filepath.Join(dir, "summary.json"))
	if err != nil {
		return nil, fmt.Errorf("read result: %w", err)
	}
	if err := json.Unmarshal(b, &res); err != nil {
		return nil, fmt.Errorf("read result: %s: %w", filepath.Join(dir, "summary.json"), err)
	}
	b, err = os.ReadFile(filepath.Join(dir, "timeline.json"))
	if err != nil {
		return nil, fmt.Errorf("read result: %w", err)
	}
	var tl probe.Timeline
	if err := json.Unmarshal(b, &tl); err != nil {
		return nil, fmt.Errorf("read result: %s: %w", filepath.Join(dir, "timeline.json"), err)
	}
	res.Timeline = &tl
	return &res, nil
}

// SuiteOf splits a scenario's name into its suite and arm at the last
// slash: "cache-outage/hung/fixed" is arm "fixed" of suite
// "cache-outage/hung". A name without a slash is a suite of one arm named
// like it.
func SuiteOf(scenarioName string) (suite, arm string) {
	i := strings.LastIndex(scenarioName, "/")
	if i < 0 {
		return scenarioName, scenarioName
	}
	return scenarioName[:i], scenarioName[i+1:]
}

// armRank orders a suite's arms: the fixed arm first, the incident second
// (the A/B), then the others by name.
func armRank(arm string) int {
	switch arm {
	case "fixed":
		return 0
	case "incident":
		return 1
	}
	return 2
}

func compareArms(a, b string) int {
	if ra, rb := armRank(a), armRank(b); ra != rb {
		return ra - rb
	}
	return strings.Compare(a, b)
}

// armColors colour a suite's arms: blue for the fixed arm, red for the
// incident, the others in turn from the rest (distinct on white and for
// the common colour blindnesses in pairs with blue or red).
var (
	fixedColor    = "#1f77b4"
	incidentColor = "#d62728"
	otherColors   = []string{"#ff7f0e", "#9467bd", "#2ca02c", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"}
)

// suiteGroup is the entries of one suite in one run folder.
type suiteGroup struct {
	Run, Suite string
	Entries    []*Entry
}

// groups returns entries' suites, in the order of the first entry of each,
// each suite's entries ordered fixed, incident, then the others.
func groups(entries []Entry) []*suiteGroup {
	var out []*suiteGroup
	byKey := map[[2]string]*suiteGroup{}
	for i := range entries {
		e := &entries[i]
		suite, _ := SuiteOf(e.Scenario)
		k := [2]string{e.Run, suite}
		g, ok := byKey[k]
		if !ok {
			g = &suiteGroup{Run: e.Run, Suite: suite}
			byKey[k] = g
			out = append(out, g)
		}
		g.Entries = append(g.Entries, e)
	}
	for _, g := range out {
		slices.SortStableFunc(g.Entries, func(a, b *Entry) int {
			_, x := SuiteOf(a.Scenario)
			_, y := SuiteOf(b.Scenario)
			return compareArms(x, y)
		})
	}
	return out
}

// WriteSuitePages writes into dir one A/B page per suite among entries
// (those of one run folder apart from another's), named suite-<suite>.html
// (the run folder's path before it when not "."), and sets each entry's
// SuitePage. Entries' Pages must be relative to dir; each arm's summary.json
// and timeline.json are read from beside its page. It reads every arm's
// timeline, so it costs about what writing them did.
func WriteSuitePages(dir string, entries []Entry) error {
	for _, g := range groups(entries) {
		arms := make([]abArm, 0, len(g.Entries))
		others := 0
		for _, e := range g.Entries {
			res, err := ReadResult(filepath.Join(dir, filepath.FromSlash(path.Dir(e.Page))))
			if err != nil {
				return fmt.Errorf("suite page %s: %w", g.Suite, err)
			}
			_, name := SuiteOf(e.Scenario)
			a := abArm{Name: name, Entry: e, Res: res}
			switch name {
			case "fixed":
				a.Color = fixedColor
			case "incident":
				a.Color = incidentColor
			default:
				a.Color = otherColors[others%len(otherColors)]
				others++
			}
			arms = append(arms, a)
		}
		name := g.Suite
		if g.Run != "" && g.Run != "." {
			name = g.Run + "/" + name
		}
		file := "suite-" + safe(name) + ".html"
		var page strings.Builder
		if err := suiteTmpl.Execute(&page, newSuiteData(g.Suite, g.Run, arms)); err != nil {
			return fmt.Errorf("suite page %s: render: %w", g.Suite, err)
		}
		if err := os.WriteFile(filepath.Join(dir, file), []byte(page.String()), 0o644); err != nil {
			return fmt.Errorf("suite page %s: %w", g.Suite, err)
		}
		for _, e := range g.Entries {
			e.SuitePage = file
		}
	}
	return nil
}

// abArm is one arm of an A/B page.
type abArm struct {
	Name, Color string
	Entry       *Entry
	Res         *scenario.Result
	// offset is when inject started, in seconds from the arm's start: the
	// page's time zero.
	offset float64
	// aligned says the arm had an inject phase to align on.
	aligned bool
}

// injectStart returns when tl's inject phase started, in seconds from its
// start.
func injectStart(tl *probe.Timeline) (float64, bool) {
	for _, p := range tl.Phases {
		if p.Name == scenario.PhaseInject {
			return p.Start.Sub(tl.Start).Seconds(), true
		}
	}
	return 0, false
}

// budgetKey identifies a budget across arms.
func budgetKey(b probe.Budget) string { return b.String() }

// BudgetCell is one arm's verdict on one budget, as the A/B page's table
// shows it.
type BudgetCell struct {
	// Carried is false when the arm has no such budget.
	Carried bool
	// Held, or Problem when the budget could not be judged.
	Held    bool
	Problem string
	// Peak is the highest value over the budget's phases; Margin reads it
	// against the bound ("41% of the bound", "659× the bound").
	Peak, Margin string
}

// judge returns arm's verdict on b: from its violations when b is among
// them, else its peak over b's phases from the timeline.
func judge(res *scenario.Result, b probe.Budget, u unit) BudgetCell {
	c := BudgetCell{Carried: true, Held: true}
	for _, v := range res.NotJudged {
		if budgetKey(v.Budget) == budgetKey(b) {
			return BudgetCell{Carried: true, Problem: "not judged: " + v.Problem}
		}
	}
	for _, v := range res.Violations {
		if budgetKey(v.Budget) != budgetKey(b) {
			continue
		}
		if v.Problem != "" {
			return BudgetCell{Carried: true, Problem: v.Problem}
		}
		c.Held = false
		c.Peak, c.Margin = u.value(v.Peak), margin(v.Peak, b.Max)
		return c
	}
	peak, ok := peakOver(res.Timeline, b)
	if !ok {
		c.Peak = "no sample"
		return c
	}
	c.Peak, c.Margin = u.value(peak), margin(peak, b.Max)
	return c
}

// peakOver is metric b.Metric's highest value in b's phases, as
// probe.Timeline.Check judges it.
func peakOver(tl *probe.Timeline, b probe.Budget) (float64, bool) {
	if tl == nil {
		return 0, false
	}
	col := tl.Index(b.Metric)
	if col < 0 {
		return 0, false
	}
	peak, found := math.Inf(-1), false
	for _, s := range tl.Samples {
		if len(b.Phases) > 0 && !slices.Contains(b.Phases, s.Phase) {
			continue
		}
		if v := s.Values[col]; !math.IsNaN(v) && v > peak {
			peak, found = v, true
		}
	}
	if !found {
		return 0, false // no -Inf: index.json could not be written
	}
	return peak, found
}

// margin reads peak against the bound max.
func margin(peak, max float64) string {
	switch {
	case max == 0 && peak <= 0:
		return "at the bound of 0"
	case max == 0:
		return "over a bound of 0"
	case peak <= max:
		return fmt.Sprintf("%.0f%% of the bound", 100*peak/max)
	}
	return fmt.Sprintf("%s× the bound", strings.TrimSuffix(strings.TrimSuffix(fmt.Sprintf("%.3g", peak/max), ".0"), "."))
}

type suiteData struct {
	Suite, Run string
	Arms       []abArm
	// Budgets are the columns of the verdict table, Cells its rows (one
	// per arm).
	Budgets   []probe.Budget
	Cells     [][]BudgetCell
	Charts    []template.HTML
	Unaligned []string
	Generated string
}

func newSuiteData(suite, run string, arms []abArm) suiteData {
	d := suiteData{Suite: suite, Run: run, Arms: arms, Generated: time.Now().UTC().Format(time.RFC3339)}
	seen := map[string]bool{}
	for i := range arms {
		a := &arms[i]
		if a.Res.Timeline != nil {
			a.offset, a.aligned = injectStart(a.Res.Timeline)
		}
		if !a.aligned {
			d.Unaligned = append(d.Unaligned, a.Name)
		}
		for _, b := range a.Res.Budgets {
			if k := budgetKey(b); !seen[k] {
				seen[k] = true
				d.Budgets = append(d.Budgets, b)
			}
		}
	}
	for _, a := range arms {
		row := make([]BudgetCell, len(d.Budgets))
		for j, b := range d.Budgets {
			if slices.ContainsFunc(a.Res.Budgets, func(o probe.Budget) bool { return budgetKey(o) == budgetKey(b) }) {
				row[j] = judge(a.Res, b, unitFor(b.Metric, b.Max))
			}
		}
		d.Cells = append(d.Cells, row)
	}

	// One chart per metric: the budgeted ones first, in budget order,
	// then every panel's of report.html; each only if an arm recorded it.
	var metrics []string
	add := func(m string) {
		if contains(metrics, m) {
			return
		}
		for _, a := range arms {
			if a.Res.Timeline != nil && a.Res.Timeline.Index(m) >= 0 {
				metrics = append(metrics, m)
				return
			}
		}
	}
	for _, b := range d.Budgets {
		add(b.Metric)
	}
	for _, c := range charts {
		for _, m := range c.Metrics {
			add(m)
		}
	}
	xr := timeBase(arms)
	for _, m := range metrics {
		c := abChart(m, arms)
		c.XRange = xr
		d.Charts = append(d.Charts, c.svg())
	}
	return d
}

// timeBase is the span of time, zero at the start of inject, that the
// arms' samples and phases cover together: every chart of an A/B page
// spans it, so a moment is at the same x on each.
func timeBase(arms []abArm) [2]float64 {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, a := range arms {
		tl := a.Res.Timeline
		if tl == nil || len(tl.Samples) == 0 {
			continue
		}
		for _, t := range sampleTimes(tl, a.offset) {
			lo, hi = math.Min(lo, t), math.Max(hi, t)
		}
		for _, p := range phaseSpans(tl, a.offset) {
			lo, hi = math.Min(lo, p.Start), math.Max(hi, math.Max(p.Start, p.End))
		}
	}
	if !(lo < hi) {
		return [2]float64{}
	}
	return [2]float64{lo, hi}
}

// abChart draws metric for every arm on one time base, zero at the start
// of inject, with the first arm's phases, every budget on metric once
// (its arms named when not all carry it) over the phases it covers in any
// of those arms, and each arm's violation marked at its peak in the arm's
// colour.
func abChart(metric string, arms []abArm) chart {
	c := chart{Title: metric, XLabel: "s from the start of inject", Shade: faultWindow, Empty: "no arm recorded " + metric}
	top := 0.0
	phasesSet := false
	type budgetLine struct {
		b     probe.Budget
		arms  []string
		spans []span
	}
	var lines []*budgetLine
	for _, a := range arms {
		tl := a.Res.Timeline
		if tl == nil || len(tl.Samples) == 0 {
			continue
		}
		phases := phaseSpans(tl, a.offset)
		if !phasesSet {
			c.Phases, phasesSet = phases, true
		}
		ys := tl.Series(metric)
		if ys == nil {
			continue
		}
		c.Series = append(c.Series, series{Name: a.Name, Color: a.Color, X: sampleTimes(tl, a.offset), Y: ys})
		top = math.Max(top, maxOf(ys))
		for _, b := range a.Res.Budgets {
			if b.Metric != metric {
				continue
			}
			i := slices.IndexFunc(lines, func(l *budgetLine) bool { return budgetKey(l.b) == budgetKey(b) })
			if i < 0 {
				lines = append(lines, &budgetLine{b: b})
				i = len(lines) - 1
			}
			// Over the phases it covers in every arm that carries it: an
			// incident's recover can last longer than the fixed arm's.
			lines[i].spans = unionSpans(lines[i].spans, budgetSpans(b, phases))
			lines[i].arms = append(lines[i].arms, a.Name)
			top = math.Max(top, b.Max)
		}
	}
	c.Unit = unitFor(metric, top)
	for _, l := range lines {
		label := "budget ≤ " + c.Unit.value(l.b.Max)
		if len(l.arms) < len(c.Series) {
			label += " (" + strings.Join(l.arms, ", ") + ")"
		}
		c.Budgets = append(c.Budgets, threshold{Label: label, Color: "#333", Value: l.b.Max, Spans: l.spans})
	}
	for _, a := range arms {
		for _, v := range a.Res.Violations {
			if v.Problem == "" && v.Budget.Metric == metric {
				c.Marks = append(c.Marks, mark{X: v.At.Seconds() - a.offset, Y: v.Peak, Color: a.Color, Label: a.Name + " " + c.Unit.value(v.Peak)})
			}
		}
	}
	return c
}

// budgetHead is a budget as a column head, its bound in the unit its
// chart uses ("cgroup_peak_bytes ≤ 64 MiB over the whole run").
func budgetHead(b probe.Budget) string {
	where := "over the whole run"
	if len(b.Phases) > 0 {
		where = "during " + strings.Join(b.Phases, ", ")
	}
	return b.Metric + " ≤ " + unitFor(b.Metric, b.Max).value(b.Max) + " " + where
}

var suiteTmpl = template.Must(template.New("suite").Funcs(template.FuncMap{"budgetHead": budgetHead}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Spiral A/B: {{.Suite}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:20px;color:#222}
.charts{display:flex;flex-wrap:wrap;gap:8px}.charts svg{border:1px solid #ddd;background:#fff}
.wide{overflow-x:auto;max-width:100%}table{border-collapse:collapse;margin-bottom:12px}td,th{border:1px solid #ddd;padding:3px 8px;vertical-align:top}
th{background:#f6f6f6;font-weight:600;text-align:left}
td.held{background:#e8f5e9}td.violated{background:#fde8e7}td.problem{background:#fff4d6}td.none{color:#999}
td.passed{background:#e8f5e9}td.failed{background:#fde8e7;font-weight:bold}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-1px;margin-right:4px}
small{color:#555}
</style></head><body>
<p><a href="index.html">run index</a></p>
<h1>{{.Suite}}: every arm on one chart</h1>
<p>Arms: {{range .Arms}}<span class="swatch" style="background:{{.Color}}"></span><a href="{{.Entry.Page}}">{{.Name}}</a> (seed {{.Entry.Seed}}) &nbsp; {{end}}{{if .Run}}<br><small>run folder {{.Run}}</small>{{end}}</p>
<h2>Verdicts</h2>
<div class="wide"><table><tr><th>arm</th><th>suite's verdict (junit.xml)</th><th>answered after recover</th>{{range .Budgets}}<th>{{budgetHead .}}</th>{{end}}</tr>
{{range $i, $a := .Arms}}<tr><td><span class="swatch" style="background:{{$a.Color}}"></span><a href="{{$a.Entry.Page}}">{{$a.Name}}</a></td>
{{with $a.Entry.Test}}{{if .Verdict}}<td class="{{.Verdict}}">{{.Verdict}}{{if .Message}}<br><small>{{.Message}}</small>{{end}}</td>{{else}}<td class="none">unknown: no junit.xml case</td>{{end}}{{end}}
<td>{{if $a.Entry.Validated}}yes{{else}}<b>no</b>{{end}}</td>
{{range index $.Cells $i}}{{if not .Carried}}<td class="none">not budgeted</td>{{else if .Problem}}<td class="problem">cannot judge: {{.Problem}}</td>{{else if .Held}}<td class="held">held: peak {{.Peak}}{{if .Margin}}<br><small>{{.Margin}}</small>{{end}}</td>{{else}}<td class="violated"><b>violated</b>: peak {{.Peak}}<br><small>{{.Margin}}</small></td>{{end}}{{end}}</tr>
{{end}}</table></div>
<p><small>Incident and regression arms are expected to violate budgets: the suite's verdict says whether each arm did what its test requires.</small></p>
<h2>Charts</h2>
<p>Time zero is the start of inject in every arm{{if .Unaligned}} (these arms had no inject phase and start at zero: {{range .Unaligned}}{{.}} {{end}}){{end}}; phases are those of {{with index .Arms 0}}{{.Name}}{{end}}. Shaded: the fault window (inject and observe); dashed black: a budget over the phases it covers; circles: each violation at its peak. Budgeted metrics come first.</p>
<div class="charts">{{range .Charts}}{{.}}{{end}}</div>
<p><small>generated {{.Generated}} from each arm's summary.json and timeline.json</small></p>
</body></html>
`))

// unionSpans returns the time covered by a or b, as spans in time order;
// spans that overlap or touch become one, named after the earliest.
func unionSpans(a, b []span) []span {
	all := slices.Concat(a, b)
	slices.SortFunc(all, func(x, y span) int { return cmp.Compare(x.Start, y.Start) })
	var out []span
	for _, s := range all {
		if n := len(out); n > 0 && s.Start <= out[n-1].End+1e-6 {
			out[n-1].End = max(out[n-1].End, s.End)
			continue
		}
		out = append(out, s)
	}
	return out
}
