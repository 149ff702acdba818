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
	{"Memory (bytes)", []string{probe.MetricHeap, probe.MetricRSS, probe.MetricHeapGoal}},
	{"GC pause p99 (s)", []string{probe.MetricGCPauseP99}},
	{"GC share of CPU", []string{probe.MetricGCCPUFraction}},
	{"Everyday latency p99 (s)", []string{scenario.MetricEverydayLatencyP99}},
	{"Lookups in flight", []string{scenario.MetricLookupsInFlight}},
	{"Load answered (cumulative)", []string{scenario.MetricLoadOK}},
	// Apart from the answered, whose thousands would flatten them, and by
	// traffic: everyday requests failing is not a flood's failing.
	{"Load failed (cumulative)", []string{scenario.MetricEverydayErrors, scenario.MetricBatchErrors}},
	{"Cache errors and log lines (cumulative)", []string{scenario.MetricCacheErrors, scenario.MetricLogLines}},
	{"Open fds", []string{probe.MetricFDs}},
}

var colors = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd"}

type pageData struct {
	Res        *scenario.Result
	Held       bool
	Charts     []template.HTML
	Violations []string
	Generated  string
}

func newPageData(res *scenario.Result) pageData {
	d := pageData{Res: res, Held: res.Held(), Generated: time.Now().UTC().Format(time.RFC3339)}
	for _, v := range res.Violations {
		d.Violations = append(d.Violations, v.String())
	}
	for _, c := range charts {
		d.Charts = append(d.Charts, svgChart(res.Timeline, c.Title, c.Metrics))
	}
	return d
}

const (
	chartW, chartH = 560, 200
	padL, padR     = 60, 10
	padT, padB     = 24, 22
)

// svgChart draws metrics over time with the inject and observe phases
// shaded. Values are escaped by construction: only numbers and known names.
func svgChart(tl *probe.Timeline, title string, metrics []string) template.HTML {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">`, chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<text x="%d" y="15" font-size="13" font-weight="bold">%s</text>`, padL, template.HTMLEscapeString(title))
	if tl == nil || len(tl.Samples) == 0 {
		b.WriteString(`<text x="60" y="100">no samples</text></svg>`)
		return template.HTML(b.String()) //nolint:gosec // built from numbers and escaped names
	}
	end := tl.Samples[len(tl.Samples)-1].At.Sub(tl.Start).Seconds()
	if end <= 0 {
		end = 1
	}
	lo, hi := 0.0, math.Inf(-1)
	for _, m := range metrics {
		for _, v := range tl.Series(m) {
			if !math.IsNaN(v) && v > hi {
				hi = v
			}
		}
	}
	if math.IsInf(hi, -1) || hi <= lo {
		hi = lo + 1
	}
	x := func(s float64) float64 { return padL + (chartW-padL-padR)*s/end }
	y := func(v float64) float64 { return chartH - padB - (chartH-padT-padB)*(v-lo)/(hi-lo) }
	for _, p := range tl.Phases {
		if p.Name != scenario.PhaseInject && p.Name != scenario.PhaseObserve {
			continue
		}
		pe := end
		if !p.End.IsZero() {
			pe = p.End.Sub(tl.Start).Seconds()
		}
		ps := p.Start.Sub(tl.Start).Seconds()
		fmt.Fprintf(&b, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="#f4c7c3" opacity="0.5"><title>%s</title></rect>`,
			x(ps), padT, math.Max(0, x(pe)-x(ps)), chartH-padT-padB, p.Name)
	}
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888"/>`, padL, chartH-padB, chartW-padR, chartH-padB)
	fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="#888"/>`, padL, padT, padL, chartH-padB)
	fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="10" text-anchor="end">%s</text>`, padL-4, padT+8, human(hi))
	fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="10" text-anchor="end">%s</text>`, padL-4, chartH-padB, human(lo))
	fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="10" text-anchor="end">%.0fs</text>`, chartW-padR, chartH-6, end)
	for i, m := range metrics {
		col := colors[i%len(colors)]
		var pts []string
		for j, v := range tl.Series(m) {
			if math.IsNaN(v) {
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(tl.Samples[j].At.Sub(tl.Start).Seconds()), y(v)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`, col, strings.Join(pts, " "))
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="11" fill="%s">%s</text>`, padL+200+i*150, 15, col, template.HTMLEscapeString(m))
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from numbers and escaped names
}

func human(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1<<30:
		return fmt.Sprintf("%.1fG", v/(1<<30))
	case a >= 1<<20:
		return fmt.Sprintf("%.1fM", v/(1<<20))
	case a >= 10_000:
		return fmt.Sprintf("%.0fk", v/1000)
	case a < 1 && a > 0:
		return fmt.Sprintf("%.3g", v)
	}
	return fmt.Sprintf("%.0f", v)
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

var pageTmpl = template.Must(template.New("report").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Spiral: {{.Res.Scenario}}</title>
<style>
body{font-family:system-ui,sans-serif;margin:20px;color:#222}
.verdict{font-size:20px;font-weight:bold}.held{color:#2ca02c}.failed{color:#d62728}
.charts{display:flex;flex-wrap:wrap;gap:8px}.charts svg{border:1px solid #ddd}
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
code{background:#f4f4f4;padding:2px 4px}
</style></head><body>
<h1>{{.Res.Scenario}}</h1>
<p class="verdict {{if .Held}}held{{else}}failed{{end}}">{{if .Held}}every budget held{{else}}{{len .Violations}} budget violation(s){{if not .Res.Validated}}; data plane did not answer after recover{{end}}{{end}}</p>
<p>seed {{.Res.Seed}} &middot; started {{.Res.Started.UTC.Format "2006-01-02 15:04:05Z"}} &middot; faults: {{range .Res.Faults}}<code>{{.}}</code> {{else}}none{{end}} &middot; replay: <code>{{.Res.Replay}}</code></p>
{{if .Violations}}<h2>Violations</h2><ul>{{range .Violations}}<li>{{.}}</li>{{end}}</ul>{{end}}
{{if .Res.ValidateError}}<p class="failed">{{.Res.ValidateError}}</p>{{end}}
<h2>Budgets</h2><ul>{{range .Res.Budgets}}<li>{{.}}</li>{{end}}</ul>
<h2>Loads</h2><table><tr><th>client</th><th>traffic</th><th>sent</th><th>ok</th><th>errors</th><th>skipped</th><th>p50</th><th>p99</th><th>max</th><th>outcomes</th><th>finished</th></tr>
{{range .Res.LoadSummary}}<tr><td>{{.Client}}</td><td>{{.Traffic}}</td><td>{{.Stats.Sent}}</td><td>{{.Stats.OK}}</td><td>{{.Stats.Errors}}</td><td>{{.Stats.Skipped}}</td><td>{{.P50}}</td><td>{{.P99}}</td><td>{{.Max}}</td><td>{{range $k, $v := .Outcomes}}{{$k}}={{$v}} {{end}}</td><td>{{if .Failed}}<span class="failed">failed: {{.Error}}</span>{{else}}yes{{end}}</td></tr>{{end}}</table>
<h2>Timeline</h2><p>Shaded: the fault window (inject and observe).</p>
<div class="charts">{{range .Charts}}{{.}}{{end}}</div>
<p><small>generated {{.Generated}}; data: summary.json, timeline.json, requests.json</small></p>
</body></html>
`))
