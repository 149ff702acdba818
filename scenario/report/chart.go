package report

import (
	"fmt"
	"html/template"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// chart is one SVG panel: series over time on shared axes, with budgets as
// threshold lines, violations marked at their peaks and the phases
// labelled. Both report.html (one run, its metrics) and the A/B pages (one
// metric, every arm) draw charts.
type chart struct {
	Title string
	// Unit scales the y axis and its labels.
	Unit unit
	// XLabel names what x counts ("s from the run's start").
	XLabel string
	Series []series
	// Budgets are threshold lines, each over its own spans of x.
	Budgets []threshold
	// Marks are violations, each at its peak.
	Marks []mark
	// Phases are the phases' spans on x, labelled at their start; those
	// named in Shade are shaded (the fault window).
	Phases []span
	Shade  []string
	// Empty is what to say when there is nothing to draw.
	Empty string
	// XRange, when set (lo < hi), is x's extent instead of the data's: the
	// charts of one A/B page share a time base, so their ticks line up.
	XRange [2]float64
}

type series struct {
	Name, Color string
	// Dash draws the line dashed (a second metric of the same arm).
	Dash bool
	// X and Y are the points; NaN in Y is a gap.
	X, Y []float64
}

// threshold is a budget: Value over each of Spans.
type threshold struct {
	Label, Color string
	Value        float64
	Spans        []span
}

// mark is a violation: the budget's peak at X.
type mark struct {
	X, Y         float64
	Label, Color string
}

// span is a named stretch of x.
type span struct {
	Name       string
	Start, End float64
}

// Layout of a chart, in SVG pixels.
const (
	chartW          = 640
	plotH           = 180
	chartPadL       = 70 // room for y tick labels ("1,024 MiB")
	chartPadR       = 16
	chartPadB       = 36 // x tick labels and the x axis label
	legendTop       = 34 // below the title
	legendRowH      = 15
	phaseLabelsH    = 24 // two rows of phase names above the plot
	legendCharWidth = 6.4
	labelCharWidth  = 5.6 // a 10 px label's characters, on average
	labelRowH       = 11
)

// svg renders c. Only numbers and escaped names go into it.
func (c chart) svg() template.HTML {
	var b strings.Builder
	esc := template.HTMLEscapeString

	// The legend has a band of its own, between the title and the plot,
	// so it covers neither.
	type item struct {
		name, color, kind string
		dash              bool
	}
	var items []item
	for _, s := range c.Series {
		items = append(items, item{s.Name, s.Color, "series", s.Dash})
	}
	if len(c.Budgets) > 0 {
		col := c.Budgets[0].Color
		for _, t := range c.Budgets {
			if t.Color != col {
				col = "#333"
			}
		}
		items = append(items, item{"budget", col, "budget", true})
	}
	if len(c.Marks) > 0 {
		items = append(items, item{"violation, at its peak", "#333", "mark", false})
	}
	type placed struct {
		item
		x, y float64
	}
	var legend []placed
	lx, ly := float64(chartPadL), float64(legendTop)
	for _, it := range items {
		w := 26 + legendCharWidth*float64(len(it.name)) + 14
		if lx+w > chartW-chartPadR && lx > chartPadL {
			lx, ly = chartPadL, ly+legendRowH
		}
		legend = append(legend, placed{it, lx, ly})
		lx += w
	}
	plotTop := ly + 8 + phaseLabelsH
	if len(items) == 0 {
		plotTop = legendTop + phaseLabelsH
	}
	height := plotTop + plotH + chartPadB
	plotBottom := plotTop + plotH
	left, right := float64(chartPadL), float64(chartW-chartPadR)

	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="%d" height="%.0f" viewBox="0 0 %d %.0f" font-family="system-ui,sans-serif">`, chartW, height, chartW, height)
	fmt.Fprintf(&b, `<text class="title" x="%d" y="18" font-size="14" font-weight="bold">%s</text>`, chartPadL, esc(c.Title))

	xlo, xhi, ylo, yhi, ok := c.extent()
	if !ok {
		empty := c.Empty
		if empty == "" {
			empty = "no samples"
		}
		fmt.Fprintf(&b, `<text x="%d" y="%.0f" font-size="12" fill="#666">%s</text></svg>`, chartPadL, plotTop+plotH/2, esc(empty))
		return template.HTML(b.String()) //nolint:gosec // built from numbers and escaped names
	}
	// x spans the data exactly; y is stretched to round ticks.
	xt := ticksWithin(ticks(xlo, xhi, 8, 0), xlo, xhi)
	yt := ticks(c.Unit.scale(ylo), c.Unit.scale(yhi), 5, c.Unit.minStep())
	ylo, yhi = yt[0], yt[len(yt)-1]
	x := func(v float64) float64 { return left + (right-left)*(v-xlo)/(xhi-xlo) }
	y := func(v float64) float64 { return plotBottom - plotH*(c.Unit.scale(v)-ylo)/(yhi-ylo) }
	clampX := func(v float64) float64 { return math.Max(left, math.Min(right, x(v))) }

	// Shaded phases, then grid and axes, then phase boundaries.
	for _, p := range c.Phases {
		if !contains(c.Shade, p.Name) {
			continue
		}
		fmt.Fprintf(&b, `<rect class="shade" x="%.1f" y="%.1f" width="%.1f" height="%d" fill="#f4c7c3" opacity="0.45"><title>%s</title></rect>`,
			clampX(p.Start), plotTop, math.Max(0, clampX(p.End)-clampX(p.Start)), plotH, esc(p.Name))
	}
	for _, t := range yt {
		py := plotBottom - plotH*(t-ylo)/(yhi-ylo)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>`, left, py, right, py)
		fmt.Fprintf(&b, `<text class="ytick" x="%.1f" y="%.1f" font-size="10" text-anchor="end" dominant-baseline="middle">%s</text>`, left-5, py, esc(c.Unit.label(t)))
	}
	for _, t := range xt {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#888"/>`, clampX(t), plotBottom, clampX(t), plotBottom+4)
		fmt.Fprintf(&b, `<text class="xtick" x="%.1f" y="%.1f" font-size="10" text-anchor="middle">%ss</text>`, clampX(t), plotBottom+15, strconv.FormatFloat(roundTo(t, 6), 'f', -1, 64))
	}
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#888"/>`, left, plotBottom, right, plotBottom)
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#888"/>`, left, plotTop, left, plotBottom)
	if c.XLabel != "" {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="10" fill="#555" text-anchor="end">%s</text>`, right, plotBottom+30, esc(c.XLabel))
	}
	lastEnd := math.Inf(-1)
	row := 0
	for i, p := range c.Phases {
		px := x(p.Start)
		if px < left-0.5 || px > right+0.5 {
			continue
		}
		if i > 0 {
			fmt.Fprintf(&b, `<line class="phase" data-phase="%s" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#999" stroke-dasharray="2 3"/>`, esc(p.Name), px, plotTop-phaseLabelsH+4, px, plotBottom)
		}
		// A name that would run into the one before goes a row up.
		w := 5.6 * float64(len(p.Name))
		if px < lastEnd || (px+2+w > right && right-w < lastEnd) {
			row = 1 - row
		} else {
			row = 0
		}
		lxp, anchor := px+2, "start"
		if lxp+w > right { // a last short phase: its name ends at the edge
			lxp, anchor = right, "end"
		}
		fmt.Fprintf(&b, `<text class="phase-label" x="%.1f" y="%.1f" font-size="10" fill="#555" text-anchor="%s">%s</text>`, lxp, plotTop-4-float64(row)*11, anchor, esc(p.Name))
		if row == 0 {
			lastEnd = px + 2 + w
		}
	}

	// Labels end at their line's end (a budget's) or beside their circle (a
	// violation's), above it. One that would overlap a label already placed
	// takes the nearest free row inside the plot, below first. A budget is
	// labelled once, at the end of its last span: its line shows where else
	// it holds (an A/B page's arms each have their own validate, say).
	var labels []labelBox
	for _, t := range c.Budgets {
		last := -1.0
		py := y(t.Value)
		for _, s := range t.Spans {
			x1, x2 := clampX(s.Start), clampX(s.End)
			if x2 <= x1 {
				continue
			}
			fmt.Fprintf(&b, `<line class="budget" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="1.5" stroke-dasharray="6 3"><title>%s</title></line>`,
				x1, py, x2, py, t.Color, esc(t.Label))
			last = max(last, x2)
		}
		if last < 0 {
			continue
		}
		w := labelCharWidth * float64(utf8.RuneCountInString(t.Label))
		lb := labelBox{x1: last - 2 - w, x2: last - 2, y: math.Max(plotTop+9, py-3)}
		if slices.ContainsFunc(labels, func(p labelBox) bool {
			return p.text == t.Label && math.Abs(p.y-lb.y) < 1 && lb.x1 < p.x2 && p.x1 < lb.x2
		}) {
			continue // the same bound, already written there
		}
		lb.text = t.Label
		labels = lb.place(labels, plotTop+9, plotBottom-2)
		lb = labels[len(labels)-1]
		fmt.Fprintf(&b, `<text class="budget-label" x="%.1f" y="%.1f" font-size="10" fill="%s" text-anchor="end">%s</text>`, lb.x2, lb.y, t.Color, esc(t.Label))
	}
	// Series are drawn first-arm widest, so that one drawn over an
	// identical one (two arms both at 0) leaves its colour showing at
	// both edges.
	for i, s := range c.Series {
		under := float64(len(c.Series) - 1 - i)
		fmt.Fprintf(&b, `<g class="series" data-name="%s">`, esc(s.Name))
		dash := ""
		if s.Dash {
			dash = ` stroke-dasharray="4 2"`
		}
		var pts []string
		var lone [2]float64 // a run of one sample, which a polyline would not draw
		flush := func() {
			switch len(pts) {
			case 0:
			case 1:
				fmt.Fprintf(&b, `<circle class="point" cx="%.1f" cy="%.1f" r="%.1f" fill="%s"/>`, lone[0], lone[1], 1.8+0.8*under, s.Color)
			default:
				fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="%.1f"%s points="%s"/>`, s.Color, 1.6+1.4*under, dash, strings.Join(pts, " "))
			}
			pts = pts[:0]
		}
		for j := range s.X {
			if j >= len(s.Y) || math.IsNaN(s.Y[j]) || math.IsInf(s.Y[j], 0) {
				flush()
				continue
			}
			lone = [2]float64{x(s.X[j]), y(s.Y[j])}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", lone[0], lone[1]))
		}
		flush()
		b.WriteString(`</g>`)
	}
	for _, m := range c.Marks {
		px, py := x(m.X), y(m.Y)
		w := labelCharWidth * float64(utf8.RuneCountInString(m.Label))
		lb := labelBox{text: m.Label, x1: px + 6, x2: px + 6 + w, y: math.Max(plotTop+10, py-6)}
		anchor, lx := "start", lb.x1
		if px > left+0.7*(right-left) {
			lb.x1, lb.x2 = px-6-w, px-6
			anchor, lx = "end", lb.x2
		}
		labels = lb.place(labels, plotTop+10, plotBottom-2)
		fmt.Fprintf(&b, `<g class="violation"><circle cx="%.1f" cy="%.1f" r="4" fill="#fff" stroke="%s" stroke-width="2"/>`, px, py, m.Color)
		fmt.Fprintf(&b, `<text class="mark-label" x="%.1f" y="%.1f" font-size="10" font-weight="bold" fill="%s" text-anchor="%s">%s</text></g>`,
			lx, labels[len(labels)-1].y, m.Color, anchor, esc(m.Label))
	}

	b.WriteString(`<g class="legend">`)
	for _, it := range legend {
		sy := it.y - 4
		switch it.kind {
		case "mark":
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="4" fill="#fff" stroke="%s" stroke-width="2"/>`, it.x+11, sy, it.color)
		default:
			dash := ""
			if it.dash {
				dash = ` stroke-dasharray="4 2"`
			}
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"%s/>`, it.x, sy, it.x+22, sy, it.color, dash)
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11" fill="%s">%s</text>`, it.x+26, it.y, it.color, esc(it.name))
	}
	b.WriteString(`</g></svg>`)
	return template.HTML(b.String()) //nolint:gosec // built from numbers and escaped names
}

// labelBox is where a label's text lies: x1 to x2, its baseline at y.
type labelBox struct {
	text      string
	x1, x2, y float64
}

// place appends lb to placed, moved to the nearest row between top and
// bottom (one row down, one up, two down, ...) where it overlaps no label
// already placed; where none is free it stays where it was asked.
func (lb labelBox) place(placed []labelBox, top, bottom float64) []labelBox {
	clashes := func(c labelBox) bool {
		return slices.ContainsFunc(placed, func(p labelBox) bool {
			return math.Abs(p.y-c.y) < labelRowH && c.x1 < p.x2 && p.x1 < c.x2
		})
	}
	base := lb.y
	for k := 1; clashes(lb) && k <= 2*len(placed)+2; k++ {
		off := float64((k+1)/2) * labelRowH // +1, -1, +2, -2 rows
		if k%2 == 0 {
			off = -off
		}
		if cand := base + off; cand >= top && cand <= bottom {
			lb.y = cand
		}
	}
	if clashes(lb) {
		lb.y = base // no free row: where it was asked
	}
	return append(placed, lb)
}

// extent returns the ranges of x and y the chart must show: every point,
// budget and mark, and every phase, y from 0 unless a value is below it.
func (c chart) extent() (xlo, xhi, ylo, yhi float64, ok bool) {
	xlo, xhi, ylo, yhi = math.Inf(1), math.Inf(-1), 0, math.Inf(-1)
	for _, s := range c.Series {
		for j, v := range s.Y {
			if math.IsNaN(v) || math.IsInf(v, 0) || j >= len(s.X) {
				continue
			}
			ok = true
			xlo, xhi = math.Min(xlo, s.X[j]), math.Max(xhi, s.X[j])
			ylo, yhi = math.Min(ylo, v), math.Max(yhi, v)
		}
	}
	if !ok {
		return 0, 0, 0, 0, false
	}
	for _, p := range c.Phases {
		xlo, xhi = math.Min(xlo, p.Start), math.Max(xhi, math.Max(p.Start, p.End))
	}
	if c.XRange[0] < c.XRange[1] {
		xlo, xhi = c.XRange[0], c.XRange[1]
	}
	for _, t := range c.Budgets {
		yhi = math.Max(yhi, t.Value)
		ylo = math.Min(ylo, t.Value)
	}
	for _, m := range c.Marks {
		yhi = math.Max(yhi, m.Y)
	}
	if xhi <= xlo {
		xhi = xlo + 1
	}
	if yhi <= ylo {
		yhi = ylo + 1
	}
	return xlo, xhi, ylo, yhi, true
}

// ticks returns round values from at most lo to at least hi, 4 to
// maxIntervals+1 of them, spaced 1, 2, 2.5 or 5 times a power of ten and
// at least minStep apart (1 for a count: no tick at half a thread).
func ticks(lo, hi float64, maxIntervals int, minStep float64) []float64 {
	if hi <= lo {
		hi = lo + 1
	}
	raw := math.Max((hi-lo)/float64(maxIntervals), minStep)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := 10 * mag
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*mag >= raw*(1-1e-9) {
			step = m * mag
			break
		}
	}
	first := math.Floor(lo/step+1e-9) * step
	n := max(int(math.Ceil((hi-first)/step-1e-9)), 3)
	out := make([]float64, 0, n+1)
	for i := 0; i <= n; i++ {
		out = append(out, roundTo(first+float64(i)*step, 12))
	}
	return out
}

// ticksWithin keeps the ticks between lo and hi, give or take 1% of the
// span: a run's first sample a few ms after its start still has its 0s.
func ticksWithin(ts []float64, lo, hi float64) []float64 {
	var out []float64
	tol := 0.01 * (hi - lo)
	for _, t := range ts {
		if t >= lo-tol && t <= hi+tol {
			out = append(out, t)
		}
	}
	return out
}

func contains(names []string, name string) bool {
	for _, n := range names {
		if n == name {
			return true
		}
	}
	return false
}

// unit is how a metric's values read on an axis: bytes, seconds, a
// fraction or a count. Its scale is chosen for the chart's largest value
// (MiB for a heap, ms for a p99 under a second).
type unit struct {
	// factor multiplies a value into the axis' unit, and suffix names it.
	factor float64
	suffix string
	// percent marks a fraction shown as a percentage.
	percent bool
}

// unitFor returns the unit of metric's axis for values up to top.
func unitFor(metric string, top float64) unit {
	switch {
	case strings.HasSuffix(metric, "_bytes"):
		switch {
		case top >= 1<<30:
			return unit{factor: 1.0 / (1 << 30), suffix: " GiB"}
		case top >= 1<<20:
			return unit{factor: 1.0 / (1 << 20), suffix: " MiB"}
		default:
			return unit{factor: 1.0 / (1 << 10), suffix: " KiB"}
		}
	case strings.HasSuffix(metric, "_seconds"):
		switch {
		case top >= 1:
			return unit{factor: 1, suffix: " s"}
		case top >= 1e-3:
			return unit{factor: 1e3, suffix: " ms"}
		default:
			return unit{factor: 1e6, suffix: " µs"}
		}
	case strings.HasSuffix(metric, "_fraction"):
		return unit{factor: 100, suffix: "%", percent: true}
	}
	return unit{factor: 1}
}

// minStep is the smallest tick step: 1 for a count.
func (u unit) minStep() float64 {
	if u.isCount() {
		return 1
	}
	return 0
}

func (u unit) isCount() bool { return u.suffix == "" && !u.percent }

// scale converts v into the axis' unit.
func (u unit) scale(v float64) float64 {
	if u.factor == 0 { // the zero unit: a count
		return v
	}
	return v * u.factor
}

// label writes a tick value t, already in the axis' unit.
func (u unit) label(t float64) string {
	if u.isCount() {
		return count(t)
	}
	return strconv.FormatFloat(roundTo(t, 4), 'f', -1, 64) + u.suffix
}

// value writes v (in the metric's own unit) for a label or a table.
func (u unit) value(v float64) string {
	if u.isCount() {
		return count(v)
	}
	return strconv.FormatFloat(roundTo(u.scale(v), 3), 'f', -1, 64) + u.suffix
}

// count writes a count with thousands separated ("13,459"), or a small
// fraction to 3 significant digits.
func count(v float64) string {
	if v != math.Trunc(v) || math.Abs(v) >= 1e15 {
		if math.Abs(v) >= 1000 {
			v = math.Round(v)
		} else {
			return strconv.FormatFloat(roundTo(v, 3), 'f', -1, 64)
		}
	}
	s := strconv.FormatInt(int64(math.Abs(v)), 10)
	var b strings.Builder
	if v < 0 {
		b.WriteByte('-')
	}
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// roundTo rounds v to n significant digits.
func roundTo(v float64, n int) float64 {
	if v == 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return v
	}
	p := math.Pow(10, float64(n)-math.Ceil(math.Log10(math.Abs(v))))
	return math.Round(v*p) / p
}

// AxisTicks returns the y tick labels a chart of metric over values
// draws: 4 to 6 round values from 0 (or the lowest value, if negative)
// past the highest, in the metric's unit.
func AxisTicks(metric string, values []float64) []string {
	c := chart{Unit: unitFor(metric, maxOf(values)), Series: []series{{X: make([]float64, len(values)), Y: values}}}
	_, _, lo, hi, _ := c.extent()
	var out []string
	for _, t := range ticks(c.Unit.scale(lo), c.Unit.scale(hi), 5, c.Unit.minStep()) {
		out = append(out, c.Unit.label(t))
	}
	return out
}
