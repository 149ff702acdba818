package report

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"
)

// Entry is one scenario's line in a run's index.
type Entry struct {
	Scenario   string `json:"scenario"`
	Held       bool   `json:"held"`
	Violations int    `json:"violations"`
	// NotJudged counts the budgets the target does not expose a figure for.
	NotJudged int  `json:"not_judged,omitempty"`
	Validated bool `json:"validated"`
	// Target names the service under test.
	Target string `json:"target,omitempty"`
	// Seed and Replay are the scenario's seed and the command that runs it
	// again, from its summary.json.
	Seed   uint64 `json:"seed"`
	Replay string `json:"replay"`
	// Started is when the scenario started, Ended when its last sample
	// was taken (zero when its timeline has none).
	Started time.Time `json:"started"`
	Ended   time.Time `json:"ended,omitzero"`
	// Page is report.html relative to the index.
	Page string `json:"page"`
	// Run is the run folder the scenario came from, relative to the index
	// ("" for the index's own folder); SuitePage its suite's A/B page,
	// relative to the index, once written.
	Run       string `json:"run,omitempty"`
	SuitePage string `json:"suite_page,omitempty"`
	// Test is the test that ran the scenario and Suite the test above it
	// (the suite's own), with their verdicts from the nearest junit.xml
	// at or above the scenario's folder; zero when there is none.
	Test  TestVerdict `json:"test"`
	Suite TestVerdict `json:"suite"`
	// Budgets are the scenario's budgets with their peaks.
	Budgets []BudgetResult `json:"budgets"`
	// Changes are what moved since a baseline run (Compare).
	Changes []Change `json:"changes,omitempty"`
}

// TestVerdict is a test's verdict from a junit.xml.
type TestVerdict struct {
	Name string `json:"name,omitempty"`
	// Verdict is Passed, Failed or Skipped; "" when unknown.
	Verdict string `json:"verdict,omitempty"`
	// Message is why it failed (JUnitCase.Message).
	Message string `json:"message,omitempty"`
}

// BudgetResult is one budget of a scenario and how it came out.
type BudgetResult struct {
	Budget string  `json:"budget"`
	Metric string  `json:"metric"`
	Max    float64 `json:"max"`
	Held   bool    `json:"held"`
	// Peak is the highest value over the budget's phases; Judged is false
	// when there was none (then the budget is a violation with a problem).
	Peak   float64 `json:"peak"`
	Judged bool    `json:"judged"`
	// NotJudged says the target does not expose the figure: not held.
	NotJudged bool `json:"not_judged,omitempty"`
}

// Index is what index.html shows besides the entries.
type Index struct {
	Entries []Entry
	// Baseline, when set, is the run the entries' Changes compare with.
	Baseline *Baseline
}

// Baseline is a previous run compared with this one.
type Baseline struct {
	// Dir is its folder as given; Ratio the factor a peak must move by to
	// count as changed.
	Dir   string
	Ratio float64
	// Gone are the scenarios it had and this run lacks.
	Gone []string
}

// WriteIndex finds every summary.json under dir, writes an A/B page per
// suite, dir/index.html and dir/index.json listing them, and returns the
// entries. A folder with no summary yields an empty index, not an error.
// It is Scan, WriteSuitePages and WriteEntries.
func WriteIndex(dir string) ([]Entry, error) {
	entries, err := Scan(dir)
	if err != nil {
		return nil, err
	}
	if err := WriteSuitePages(dir, entries); err != nil {
		return nil, err
	}
	if err := WriteEntries(dir, Index{Entries: entries}); err != nil {
		return nil, err
	}
	return entries, nil
}

// Scan finds every summary.json under dir and returns one entry per
// scenario, sorted by scenario name, each Page relative to dir, each test
// verdict from the nearest junit.xml at or above its folder, up to dir.
// It writes nothing; a folder with no summary yields no entries, not an
// error.
func Scan(dir string) ([]Entry, error) {
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("report index: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("report index: %s is not a folder", dir)
	}
	junits := map[string]*JUnit{}
	junitFor := func(folder string) (*JUnit, error) {
		for {
			j, ok := junits[folder]
			if !ok {
				var err error
				if j, err = ReadJUnit(folder); err != nil {
					return nil, err
				}
				junits[folder] = j
			}
			if j != nil {
				return j, nil
			}
			rel, err := filepath.Rel(dir, folder)
			if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
				return nil, nil
			}
			folder = filepath.Dir(folder)
		}
	}
	var entries []Entry
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == AblationDir && filepath.Dir(path) == filepath.Clean(dir) {
			return fs.SkipDir // the ablation's runs have a page of their own (WriteAblation)
		}
		if err != nil || d.IsDir() || d.Name() != "summary.json" {
			return err
		}
		folder := filepath.Dir(path)
		res, err := ReadResult(folder)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, filepath.Join(folder, "report.html"))
		if err != nil {
			return err
		}
		e := Entry{
			Scenario: res.Scenario, Held: res.Held(), Violations: len(res.Violations), NotJudged: len(res.NotJudged), Validated: res.Validated, Target: res.Target,
			Seed: res.Seed, Replay: res.Replay, Started: res.Started, Page: filepath.ToSlash(rel),
		}
		if tl := res.Timeline; tl != nil && len(tl.Samples) > 0 {
			e.Ended = tl.Samples[len(tl.Samples)-1].At
		}
		for _, b := range res.Budgets {
			r := BudgetResult{Budget: b.String(), Metric: b.Metric, Max: b.Max, Held: true}
			r.Peak, r.Judged = peakOver(res.Timeline, b)
			for _, v := range res.Violations {
				if budgetKey(v.Budget) == budgetKey(b) {
					r.Held = false
				}
			}
			for _, v := range res.NotJudged {
				if budgetKey(v.Budget) == budgetKey(b) {
					r.Held, r.NotJudged = false, true
				}
			}
			e.Budgets = append(e.Budgets, r)
		}
		j, err := junitFor(folder)
		if err != nil {
			return err
		}
		if c, ok := j.Case(e.Replay); ok {
			e.Test = TestVerdict{Name: c.Name, Verdict: c.Verdict(), Message: c.Message()}
			if i := strings.LastIndex(c.Name, "/"); i > 0 {
				if p, ok := j.find(c.Name[:i], c.Classname); ok {
					e.Suite = TestVerdict{Name: p.Name, Verdict: p.Verdict(), Message: p.Message()}
				}
			}
		}
		entries = append(entries, e)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("report index: %w", err)
	}
	SortEntries(entries)
	return entries, nil
}

// SortEntries sorts entries by scenario name, then by page: the order of an
// index.
func SortEntries(entries []Entry) {
	sort.Slice(entries, func(i, j int) bool {
		if entries[i].Scenario != entries[j].Scenario {
			return entries[i].Scenario < entries[j].Scenario
		}
		return entries[i].Page < entries[j].Page
	})
}

// WriteEntries writes dir/index.html and dir/index.json for idx, whose
// entries' Pages must be relative to dir. Several runs' entries (Scan of
// each, Pages prefixed with the run's folder under dir) make one index of
// them all. index.json is the entries; index.html a matrix of suites by
// arms with each arm's test verdict, budgets and changes since the
// baseline.
func WriteEntries(dir string, idx Index) error {
	entries := idx.Entries
	if entries == nil {
		entries = []Entry{}
	}
	b, err := json.MarshalIndent(entries, "", " ")
	if err != nil {
		return fmt.Errorf("report index: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), b, 0o644); err != nil {
		return fmt.Errorf("report index: %w", err)
	}
	data := newIndexData(idx)
	data.Machines = readMachines(dir)
	if data.Ablation, err = WriteAblation(dir); err != nil {
		return err
	}
	var page strings.Builder
	if err := indexTmpl.Execute(&page, data); err != nil {
		return fmt.Errorf("report index: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte(page.String()), 0o644); err != nil {
		return fmt.Errorf("report index: %w", err)
	}
	return nil
}

// matrixColumns are the arms with a column of their own in the index:
// those most suites have. Every other arm is listed in the row's last
// cell.
var matrixColumns = []string{"fixed", "incident"}

type indexData struct {
	Index
	Columns []string
	Rows    []matrixRow
	// Facts about the run: its seeds, first start, span and counts.
	Seeds            []uint64
	Started, Span    string
	Scenarios, Tests int
	TestsFailed      int
	Changed          int
	Generated        string
	// Machines are the machine.txt files of the run (scripts/chaos.sh
	// writes one per report folder: cores, kernel, engine, images).
	Machines []Machine
	// Ablation is the run's ablation table (WriteAblation), if it has one.
	Ablation *Ablation
}

// MachineFile is what scripts/chaos.sh writes into a report folder: the
// machine the run ran on, one "key: value" line per fact.
const MachineFile = "machine.txt"

// Machine is one report folder's MachineFile.
type Machine struct {
	// Folder is where it was found, relative to the index ("." for the
	// index's own folder).
	Folder string
	Lines  []string
}

// readMachines reads the MachineFile of dir and of each folder right
// under it (the shards of a merged index); unreadable ones are skipped.
func readMachines(dir string) []Machine {
	var out []Machine
	read := func(folder string) {
		b, err := os.ReadFile(filepath.Join(dir, folder, MachineFile))
		if err != nil {
			return
		}
		m := Machine{Folder: folder}
		for line := range strings.SplitSeq(strings.TrimSpace(string(b)), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				m.Lines = append(m.Lines, line)
			}
		}
		out = append(out, m)
	}
	read(".")
	subs, _ := os.ReadDir(dir) // an unreadable folder has no machine to show
	for _, e := range subs {
		if e.IsDir() {
			read(e.Name())
		}
	}
	return out
}

type matrixRow struct {
	Suite, Run, SuitePage string
	// Verdict is the suite's own test's, from its arms' junit.xml.
	Verdict TestVerdict
	Cells   []*Entry
	Others  []*Entry
}

func newIndexData(idx Index) indexData {
	d := indexData{Index: idx, Columns: matrixColumns, Scenarios: len(idx.Entries), Generated: time.Now().UTC().Format(time.RFC3339)}
	var first, last time.Time
	for i := range idx.Entries {
		e := &idx.Entries[i]
		if !slices.Contains(d.Seeds, e.Seed) {
			d.Seeds = append(d.Seeds, e.Seed)
		}
		if !e.Started.IsZero() && (first.IsZero() || e.Started.Before(first)) {
			first = e.Started
		}
		if e.Ended.After(last) {
			last = e.Ended
		}
		if e.Test.Verdict != "" {
			d.Tests++
			if e.Test.Verdict == Failed {
				d.TestsFailed++
			}
		}
		if len(e.Changes) > 0 {
			d.Changed++
		}
	}
	slices.Sort(d.Seeds)
	if !first.IsZero() {
		d.Started = first.UTC().Format("2006-01-02 15:04:05Z")
		if last.After(first) {
			d.Span = last.Sub(first).Round(time.Second).String()
		}
	}
	for _, g := range groups(idx.Entries) {
		r := matrixRow{Suite: g.Suite, Run: g.Run, Cells: make([]*Entry, len(matrixColumns))}
		for _, e := range g.Entries {
			if r.SuitePage == "" {
				r.SuitePage = e.SuitePage
			}
			if r.Verdict.Verdict == "" || e.Suite.Verdict == Failed {
				r.Verdict = e.Suite
			}
			_, arm := SuiteOf(e.Scenario)
			if i := slices.Index(matrixColumns, arm); i >= 0 && r.Cells[i] == nil {
				r.Cells[i] = e
			} else {
				r.Others = append(r.Others, e)
			}
		}
		d.Rows = append(d.Rows, r)
	}
	return d
}

// arm is the part of a scenario's name after its suite.
func arm(scenarioName string) string {
	_, a := SuiteOf(scenarioName)
	return a
}

// violatedCount counts the budgets of e that did not hold.
func violatedCount(e *Entry) int {
	n := 0
	for _, b := range e.Budgets {
		if !b.Held {
			n++
		}
	}
	return n
}

var indexTmpl = template.Must(template.New("index").Funcs(template.FuncMap{
	"arm":      arm,
	"violated": violatedCount,
}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Spiral run</title>
<style>
body{font-family:system-ui,sans-serif;margin:20px;color:#222}
table{border-collapse:collapse;margin-bottom:14px}td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top}
th{background:#f6f6f6;text-align:left}
td.passed{background:#e8f5e9}td.failed{background:#fde8e7}td.unknown{background:#f4f4f4}td.empty{color:#aaa}
.v{font-weight:bold}.failed .v{color:#b71c1c}.passed .v{color:#1b5e20}
.msg{display:block;max-width:420px;font-size:12px;color:#b71c1c;white-space:pre-wrap}
.changed{display:block;font-size:12px;background:#fff3c4;padding:1px 3px;margin-top:2px}
.cell{display:block;margin-bottom:4px}small{color:#555}
</style>
</head><body><h1>Spiral run</h1>
<p>{{.Scenarios}} scenario(s){{if .Seeds}}, seed{{if gt (len .Seeds) 1}}s{{end}} {{range $i, $s := .Seeds}}{{if $i}}, {{end}}{{$s}}{{end}}{{end}}{{if .Started}}; started {{.Started}}{{end}}{{if .Span}}, {{.Span}} from the first scenario's start to the last sample{{end}}.
{{if .Tests}}{{.Tests}} arm test(s) in junit.xml, {{.TestsFailed}} failed.{{else}}No junit.xml here: the suites' own verdicts are unknown, and an arm's budgets alone do not say whether its suite passed.{{end}}
{{if not .Machines}}<br><small>No machine.txt here (scripts/chaos.sh writes one): the machine (cores, kernel, engine, image tags) is not recorded.</small>{{end}}</p>
{{with .Baseline}}<p>Compared with <code>{{.Dir}}</code>: verdicts that flipped and budgeted peaks that moved by more than {{.Ratio}}× are marked. {{$.Changed}} scenario(s) changed.{{if .Gone}} Gone since then: {{range .Gone}}<code>{{.}}</code> {{end}}{{end}}</p>{{end}}
<p>Each cell is the arm's test verdict (junit.xml): an incident arm passes when its suite catches what it must. Then its budgets: incident arms are expected to violate some.</p>
<table><tr><th>suite</th><th>suite's test</th>{{range .Columns}}<th>{{.}}</th>{{end}}<th>other arms</th></tr>
{{range .Rows}}<tr><td>{{if .SuitePage}}<a href="{{.SuitePage}}">{{.Suite}}</a>{{else}}{{.Suite}}{{end}}{{if .Run}}<br><small>{{.Run}}</small>{{end}}</td>
{{with .Verdict}}{{if .Verdict}}<td class="{{.Verdict}}"><span class="v">{{.Verdict}}</span>{{if .Name}}<br><small>{{.Name}}</small>{{end}}</td>{{else}}<td class="unknown">unknown</td>{{end}}{{end}}
{{range .Cells}}{{if .}}{{template "cell" .}}{{else}}<td class="empty">-</td>{{end}}{{end}}
<td>{{range .Others}}{{template "other" .}}{{else}}<span class="empty">-</span>{{end}}</td></tr>
{{else}}<tr><td colspan="5">no scenario reports in this run</td></tr>{{end}}</table>
{{with .Ablation}}<h2>Which defence holds which budget</h2>
<p>The fixed data plane with one defence turned back to the incident's setting (first: the postmortem's own fix alone), through every suite's fixed arm; the budgets that then failed. Every cell: <a href="ablation.html">ablation.html</a>.</p>
<table><tr><th>turned back</th><th>budgets that failed</th></tr>
{{range $row := .Rows}}<tr><td><b>{{$row}}</b><br><small>{{index $.Ablation.Docs $row}}</small></td><td>{{range $sc := $.Ablation.Scenarios}}{{with index $.Ablation.Cells $row $sc}}{{if .Failed}}<span class="cell"><a href="{{.Page}}">{{$sc}}</a>: {{range $i, $f := .Failed}}{{if $i}}, {{end}}{{$f}}{{end}}</span>{{end}}{{end}}{{end}}</td></tr>
{{end}}</table>{{end}}
<h2>Scenarios</h2>
<table><tr><th>scenario</th><th>test</th><th>budgets</th><th>answered after recover</th><th>seed</th></tr>
{{range .Entries}}<tr><td><a href="{{.Page}}">{{.Scenario}}</a></td><td>{{if .Test.Verdict}}{{.Test.Verdict}}{{else}}unknown{{end}}</td><td>{{if .Held}}held{{else}}{{.Violations}} violated{{if .NotJudged}}, {{.NotJudged}} not judged{{end}}{{end}}{{if .Target}}{{if ne .Target "in-process"}}<br><small>target {{.Target}}</small>{{end}}{{end}}</td><td>{{.Validated}}</td><td>{{.Seed}}</td></tr>
{{end}}</table>
{{range .Machines}}<p><small>machine{{if ne .Folder "."}} ({{.Folder}}){{end}}: {{range $i, $l := .Lines}}{{if $i}}; {{end}}{{$l}}{{end}}</small></p>
{{end}}<p><small>generated {{.Generated}}; data: index.json, and each scenario's summary.json</small></p>
</body></html>
{{define "verdict"}}<a href="{{.Page}}">{{if .Test.Verdict}}<span class="v">{{.Test.Verdict}}</span>{{else}}no test verdict{{end}}</a>
 &middot; {{if .Held}}budgets held{{else}}{{violated .}} of {{len .Budgets}} budget(s) violated{{if not .Validated}}, not answering after recover{{end}}{{end}}
{{if .Test.Message}}<span class="msg">{{.Test.Message}}</span>{{end}}
{{range .Changes}}<span class="changed">{{.}}</span>{{end}}{{end}}
{{define "cell"}}<td class="{{if .Test.Verdict}}{{.Test.Verdict}}{{else}}unknown{{end}}">{{template "verdict" .}}</td>{{end}}
{{define "other"}}<span class="cell {{if .Test.Verdict}}{{.Test.Verdict}}{{else}}unknown{{end}}"><b>{{arm .Scenario}}</b>: {{template "verdict" .}}</span>{{end}}
`))
