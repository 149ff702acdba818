// Package report writes a scenario's results: summary.json (verdict,
// violations, peaks, loads, replay command), timeline.json (every sample),
// requests.json (every load request) and report.html, one self-contained page
// with charts of goroutines, threads, sockets, heap, load and its failures
// (everyday and batch apart), and errors, the fault window shaded.
package report

import (
	"encoding/json"
	"fmt"
	"html/template"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
)

// Dir returns the folder for a scenario's report under $SPIRAL_REPORT_DIR,
// or "" when that is unset (reports are then written only on failure, under
// the system's temporary folder).
func Dir(name string) string {
	root := os.Getenv("SPIRAL_REPORT_DIR")
	if root == "" {
		return ""
	}
	return filepath.Join(root, safe(name))
}

// Write writes res's files into dir, creating it, and returns the path of
// report.html.
func Write(dir string, res *scenario.Result) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("report: %w", err)
	}
	files := map[string]any{
		"summary.json":  summary{Result: res, Held: res.Held()},
		"timeline.json": res.Timeline,
		"requests.json": res.Loads,
	}
	for name, v := range files {
		b, err := json.MarshalIndent(v, "", " ")
		if err != nil {
			return "", fmt.Errorf("report: encode %s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return "", fmt.Errorf("report: %w", err)
		}
	}
	page := filepath.Join(dir, "report.html")
	f, err := os.Create(page)
	if err != nil {
		return "", fmt.Errorf("report: %w", err)
	}
	defer func() { _ = f.Close() }() // closed below; this covers the error paths
	if err := pageTmpl.Execute(f, newPageData(res)); err != nil {
		return "", fmt.Errorf("report: render: %w", err)
	}
	return page, f.Close()
}

type summary struct {
	*scenario.Result
	Held bool `json:"held"`
}

// charts are the panels of report.html: a title and the metrics drawn.
var charts = []struct {
	Title   string
	Metrics []string
}{
	// The plain count at each sample, and the high-water mark polled
	// between samples: a flood's goroutines may come and go between two.
	{"Goroutines", []string{probe.MetricGoroutines, probe.MetricGoroutinesPeak}},
	// Live (every thread the runtime kept) and at work (not parked idle).
	{"OS threads", []string{probe.MetricThreads, probe.MetricThreadsBusy}},
	{"Sockets to memcached", []string{scenario.MetricMemcachedTimeWait, scenario.MetricMemcachedTimeWaitAdded, scenario.MetricMemcachedEstablished}},
	{"Memory", []string{probe.MetricHeap, probe.MetricRSS, probe.MetricHeapGoal}},
	{"GC pause p99", []string{probe.MetricGCPauseP99}},
	{"GC share of CPU", []string{probe.MetricGCCPUFraction}},
	{"Everyday latency p99", []string{scenario.MetricEverydayLatencyP99}},
	{"Lookups in flight", []string{scenario.MetricLookupsInFlight}},
	{"Load answered (cumulative)", []string{scenario.MetricLoadOK}},
	// Apart from the answered, whose thousands would flatten them, and by
	// traffic: everyday requests failing is not a flood's failing.
	{"Load failed (cumulative)", []string{scenario.MetricEverydayErrors, scenario.MetricBatchErrors}},
	{"Cache errors and log lines (cumulative)", []string{scenario.MetricCacheErrors, scenario.MetricLogLines}},
	{"Open fds", []string{probe.MetricFDs}},
}

// charted reports whether metric is drawn by one of charts.
func charted(metric string) bool {
	for _, c := range charts {
		if contains(c.Metrics, metric) {
			return true
		}
	}
	return false
}

var colors = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd"}

type pageData struct {
	Res        *scenario.Result
	Held       bool
	Charts     []template.HTML
	Violations []string
	Generated  string
	// Observer is the sampler's cost per phase, Sources per source.
	Observer []probe.PhaseCost
	Sources  []probe.SourceCost
	// Events are Result.Events with their time from the run's start and
	// the phase they fell in.
	Events []eventRow
}

type eventRow struct {
	Name, At, Phase, Detail string
}

func newPageData(res *scenario.Result) pageData {
	d := pageData{Res: res, Held: res.Held(), Generated: time.Now().UTC().Format(time.RFC3339)}
	if res.Timeline != nil {
		d.Observer, d.Sources = res.Timeline.CostByPhase(), res.Timeline.Sources
	}
	for _, v := range res.Violations {
		d.Violations = append(d.Violations, v.String())
	}
	for _, e := range res.Events {
		row := eventRow{Name: e.Name, At: fmt.Sprintf("%.1f s", e.At.Sub(res.Started).Seconds()), Detail: e.Detail}
		if res.Timeline != nil {
			for _, ph := range res.Timeline.Phases {
				if !e.At.Before(ph.Start) && (ph.End.IsZero() || e.At.Before(ph.End)) {
					row.Phase = ph.Name
				}
			}
		}
		d.Events = append(d.Events, row)
	}
	// Budgeted metrics no panel draws come first, one chart each: they
	// are what the scenario is judged on.
	var panels []struct {
		Title   string
		Metrics []string
	}
	seen := map[string]bool{}
	for _, b := range res.Budgets {
		if !charted(b.Metric) && !seen[b.Metric] && res.Timeline != nil && res.Timeline.Index(b.Metric) >= 0 {
			seen[b.Metric] = true
			panels = append(panels, struct {
				Title   string
				Metrics []string
			}{b.Metric, []string{b.Metric}})
		}
	}
	panels = append(panels, charts...)
	for _, c := range panels {
		d.Charts = append(d.Charts, runChart(res, c.Title, c.Metrics).svg())
	}
	return d
}

// runChart is one panel of report.html: metrics of one run over seconds
// from its start, the fault window (inject and observe) shaded, the
// budgets on those metrics drawn over their phases in the metric's colour,
// and each violation marked at its peak.
func runChart(res *scenario.Result, title string, metrics []string) chart {
	c := chart{Title: title, XLabel: "s from the run's start", Shade: faultWindow, Empty: "no samples of " + strings.Join(metrics, ", ")}
	tl := res.Timeline
	if tl == nil || len(tl.Samples) == 0 {
		return c
	}
	c.Phases = phaseSpans(tl, 0)
	top := 0.0
	for i, m := range metrics {
		ys := tl.Series(m)
		if ys == nil {
			continue
		}
		col := colors[i%len(colors)]
		c.Series = append(c.Series, series{Name: m, Color: col, X: sampleTimes(tl, 0), Y: ys})
		top = math.Max(top, maxOf(ys))
		for _, b := range res.Budgets {
			if b.Metric == m {
				c.Budgets = append(c.Budgets, threshold{Color: col, Value: b.Max, Spans: budgetSpans(b, c.Phases)})
				top = math.Max(top, b.Max)
			}
		}
	}
	c.Unit = unitFor(metrics[0], top)
	for i := range c.Budgets { // in the axis' unit: "≤ 500 ms" beside ticks in ms
		c.Budgets[i].Label = "≤ " + c.Unit.value(c.Budgets[i].Value)
	}
	for _, v := range res.Violations {
		if v.Problem != "" {
			continue
		}
		for i, m := range metrics {
			if v.Budget.Metric == m {
				c.Marks = append(c.Marks, mark{X: v.At.Seconds(), Y: v.Peak, Color: colors[i%len(colors)], Label: c.Unit.value(v.Peak)})
			}
		}
	}
	return c
}

// readable writes d to 3 significant digits ("1.66s", "571ms", "776µs"):
// a table of latencies reads at a glance, not to the nanosecond.
func readable(d time.Duration) string {
	if d <= 0 {
		return d.String()
	}
	for unit := time.Nanosecond; unit <= time.Second; unit *= 10 {
		if d < 1000*unit {
			return d.Round(unit).String()
		}
	}
	return d.Round(time.Second).String()
}

// faultWindow is the phases a chart shades: the faults are in and acting.
var faultWindow = []string{scenario.PhaseInject, scenario.PhaseObserve}

// phaseSpans returns tl's phases in seconds from its start minus offset,
// consecutive marks of the same phase merged (Run marks inject and
// recover twice: before the faults act and as the phase's timer starts),
// the open last phase ending at the last sample.
func phaseSpans(tl *probe.Timeline, offset float64) []span {
	var out []span
	last := 0.0
	if n := len(tl.Samples); n > 0 {
		last = tl.Samples[n-1].At.Sub(tl.Start).Seconds()
	}
	for _, p := range tl.Phases {
		start := p.Start.Sub(tl.Start).Seconds() - offset
		end := last - offset
		if !p.End.IsZero() {
			end = p.End.Sub(tl.Start).Seconds() - offset
		}
		if n := len(out); n > 0 && out[n-1].Name == p.Name {
			out[n-1].End = end
			continue
		}
		out = append(out, span{Name: p.Name, Start: start, End: end})
	}
	return out
}

// budgetSpans returns the stretches of phases b holds over: those of its
// phases, adjacent ones joined, or every phase when it names none.
func budgetSpans(b probe.Budget, phases []span) []span {
	var out []span
	for _, p := range phases {
		if len(b.Phases) > 0 && !contains(b.Phases, p.Name) {
			continue
		}
		if n := len(out); n > 0 && math.Abs(out[n-1].End-p.Start) < 1e-6 {
			out[n-1].End = p.End
			continue
		}
		out = append(out, p)
	}
	return out
}

// sampleTimes returns each sample's time in seconds from tl's start minus
// offset.
func sampleTimes(tl *probe.Timeline, offset float64) []float64 {
	out := make([]float64, len(tl.Samples))
	for i, s := range tl.Samples {
		out[i] = s.At.Sub(tl.Start).Seconds() - offset
	}
	return out
}

// maxOf is the largest of vs, NaN skipped; 0 for none.
func maxOf(vs []float64) float64 {
	top := 0.0
	for _, v := range vs {
		if !math.IsNaN(v) && !math.IsInf(v, 0) {
			top = math.Max(top, v)
		}
	}
	return top
}

// formatFor writes v of metric in the unit an axis up to top would use.
func formatFor(metric string, v, top float64) string {
	return unitFor(metric, top).value(v)
}

func safe(name string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, name)
}

var pageTmpl = template.Must(template.New("report").Funcs(template.FuncMap{"pct": func(f float64) float64 { return 100 * f }, "inc": func(i int) int { return i + 1 }, "dur": readable}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Spiral: {{.Res.Scenario}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:20px;color:#222}
.verdict{font-size:20px;font-weight:bold}.held{color:#2ca02c}.failed{color:#d62728}
.charts{display:flex;flex-wrap:wrap;gap:8px}.charts svg{border:1px solid #ddd;background:#fff}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
code{background:#f4f4f4;padding:2px 4px}
</style></head><body>
<h1>{{.Res.Scenario}}</h1>
<p class="verdict {{if .Held}}held{{else}}failed{{end}}">{{if .Held}}every budget held{{else}}{{len .Violations}} budget violation(s){{if .Res.NotJudged}}, {{len .Res.NotJudged}} not judged{{end}}{{if not .Res.Validated}}; data plane did not answer after recover{{end}}{{if .Res.Aborted}}; aborted{{end}}{{end}}</p>
<p>target <code>{{if .Res.Target}}{{.Res.Target}}{{else}}in-process{{end}}</code> &middot; seed {{.Res.Seed}} &middot; started {{.Res.Started.UTC.Format "2006-01-02 15:04:05Z"}} &middot; faults: {{range .Res.Faults}}<code>{{.}}</code> {{else}}none{{end}} &middot; replay: <code>{{.Res.Replay}}</code></p>
{{if .Res.Aborted}}<p class="failed">aborted: {{.Res.Aborted}}; the floods were stopped at once and the run went on to recover</p>{{end}}
{{if .Res.Error}}<p class="failed">the run failed: {{.Res.Error}}</p>{{end}}
{{if .Res.Unreliable}}<p class="failed">the observer may have distorted or missed what it judged: {{range .Res.Unreliable}}{{.}}; {{end}}</p>{{end}}
{{if .Events}}<h2>What happened</h2><p>In order, from the kernel's and the runtime's own records, each when the first record showed it.</p><table class="events"><tr><th>#</th><th>what</th><th>when (from the run's start)</th><th>phase</th><th>seen</th></tr>{{range $i, $e := .Events}}<tr><td>{{inc $i}}</td><td>{{$e.Name}}</td><td>{{$e.At}}</td><td>{{$e.Phase}}</td><td>{{$e.Detail}}</td></tr>{{end}}</table>{{end}}
{{if .Violations}}<h2>Violations</h2><ul>{{range .Violations}}<li>{{.}}</li>{{end}}</ul>{{end}}
{{if .Res.NotJudged}}<h2>Not judged</h2><p>The target does not expose what these budgets read; they are neither held nor violated.</p><ul>{{range .Res.NotJudged}}<li>{{.}}</li>{{end}}</ul>{{end}}
{{if .Res.ValidateError}}<p class="failed">{{.Res.ValidateError}}</p>{{end}}
<h2>Budgets</h2><ul>{{range .Res.Budgets}}<li>{{.}}</li>{{end}}</ul>
<h2>Loads</h2><table><tr><th>client</th><th>traffic</th><th>sent</th><th>ok</th><th>errors</th><th>skipped</th><th>p50</th><th>p99</th><th>max</th><th>outcomes</th><th>finished</th></tr>
{{range .Res.LoadSummary}}<tr><td>{{.Client}}</td><td>{{.Traffic}}</td><td>{{.Stats.Sent}}</td><td>{{.Stats.OK}}</td><td>{{.Stats.Errors}}</td><td>{{.Stats.Skipped}}</td><td>{{dur .P50}}</td><td>{{dur .P99}}</td><td>{{dur .Max}}</td><td>{{range $k, $v := .Outcomes}}{{$k}}={{$v}} {{end}}</td><td>{{if .Failed}}<span class="failed">failed: {{.Error}}</span>{{else if .Stopped}}<span class="failed">{{.Stopped}}</span>{{else}}yes{{end}}</td></tr>{{end}}</table>
{{if .Res.Clients}}<h2>Who</h2><p>Each client's use of the data plane while the faults were in (inject to recover), from the data plane's per-client metrics, and the keys its load sent meanwhile as Spiral's load generator recorded them (known even where the data plane never counted them: a child killed while serving them); the largest requests first (keys per request: "clients that send small numbers of large requests").</p>
<table><tr><th>client</th><th>keys per request</th><th>keys sent</th><th>keys</th><th>keys failed</th><th>keys from the store</th><th>cache errors</th><th>requests sent</th><th>requests</th><th>requests failed</th></tr>
{{range .Res.Clients}}<tr><td>{{.Client}}</td><td>{{printf "%.1f" .PerRequest}}</td><td>{{printf "%.0f" .KeysSent}}</td><td>{{printf "%.0f" .Keys}}</td><td>{{printf "%.0f" .KeysFailed}}</td><td>{{printf "%.0f" .KeysFromStore}}</td><td>{{printf "%.0f" .CacheErrors}}</td><td>{{printf "%.0f" .RequestsSent}}</td><td>{{printf "%.0f" .Requests}}</td><td>{{printf "%.0f" .FailedRequests}}</td></tr>{{end}}</table>{{end}}
{{if .Observer}}<h2>Observer</h2><p>What sampling cost inside the process it judges, per phase, and the longest wait between two samples in intervals (1: on time). Where an observer process reads the process's own figures (threads, fds, memory, sockets), its rows fill the stretches where the sampler's samples were late: "longest gap" counts them, "sampler's own gap" does not (the figures read inside the process, goroutines and heap among them, are missing there).</p>
<table><tr><th>phase</th><th>samples</th><th>median</th><th>p99</th><th>max</th><th>median share of the interval</th><th>longest gap (intervals)</th><th>sampler's own gap</th><th>observer's rows in its gaps</th></tr>
{{range .Observer}}<tr><td>{{.Phase}}</td><td>{{.Samples}}</td><td>{{dur .Median}}</td><td>{{dur .P99}}</td><td>{{dur .Max}}</td><td>{{printf "%.1f%%" (pct .Share)}}</td><td>{{printf "%.1f" .MaxGap}}</td><td>{{printf "%.1f" .SamplerGap}}</td><td>{{.ObserverRows}}</td></tr>{{end}}</table>
{{if .Sources}}<p><small>by source (mean per read, max): {{range $i, $s := .Sources}}{{if $i}}; {{end}}{{index $s.Metrics 0}}{{if $s.Where}} ({{$s.Where}}){{end}} {{dur $s.Mean}}, {{dur $s.Max}}{{if $s.Late}}, <b>late in {{$s.Late}} of {{$s.Reads}} reads</b> (its figures missing there){{end}}{{end}}</small></p>{{end}}{{end}}
<h2>Timeline</h2><p>Shaded: the fault window (inject and observe); dotted lines: phase boundaries; dashed lines: budgets over the phases they cover; circles: each violation at its peak.</p>
<div class="charts">{{range .Charts}}{{.}}{{end}}</div>
<p><small>generated {{.Generated}}; data: summary.json, timeline.json, requests.json</small></p>
</body></html>
`))
