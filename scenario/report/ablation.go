package report

import (
	"bytes"
	"fmt"
	"html/template"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spiral-chaos/spiral/dataplane"
)

// AblationDir is the folder of a run that holds its ablation runs, one
// subfolder per row (AblationRows): the suites' fixed arms with one
// defence turned back. Scan leaves it out of the run's own index.
const AblationDir = "ablation"

// AblationSetLimit is the ablation row of the postmortem's own fix alone
// (dataplane.PostmortemFixConfig).
const AblationSetLimit = "setlimit"

// AblationRows are the rows of an ablation, in order: the postmortem's
// own fix alone, then each knob of the fixed configuration turned back
// (dataplane.Knobs).
func AblationRows() []string {
	return append([]string{AblationSetLimit}, dataplane.KnobNames()...)
}

// AblationCell is how one scenario's budgets came out in one row.
type AblationCell struct {
	// Ran says the scenario ran in this row.
	Ran bool
	// Failed lists the budgets that did not hold, "metric peak/max".
	Failed []string
	// Page is its report.html, relative to the run's folder.
	Page string
}

// Ablation is the table: for each row, which scenarios' budgets failed.
type Ablation struct {
	Rows      []string
	Docs      map[string]string // what each row turns back
	Scenarios []string
	Cells     map[string]map[string]AblationCell // row, scenario
}

// ReadAblation reads dir/ablation/<row>/ for every row present.
func ReadAblation(dir string) (*Ablation, error) {
	a := &Ablation{Docs: map[string]string{AblationSetLimit: "the postmortem's fix alone: the incident configuration with each batch's lookups bounded (SetLimit)"}, Cells: map[string]map[string]AblationCell{}}
	for _, k := range dataplane.Knobs {
		a.Docs[k.Name] = "without " + k.Doc + " (" + k.Field + " as the incident's)"
	}
	seen := map[string]bool{}
	for _, row := range AblationRows() {
		rowDir := filepath.Join(dir, AblationDir, row)
		if _, err := os.Stat(rowDir); err != nil {
			continue
		}
		entries, err := Scan(rowDir)
		if err != nil {
			return nil, fmt.Errorf("ablation %s: %w", row, err)
		}
		a.Rows = append(a.Rows, row)
		cells := map[string]AblationCell{}
		for _, e := range entries {
			c := AblationCell{Ran: true, Page: filepath.ToSlash(filepath.Join(AblationDir, row, e.Page))}
			for _, b := range e.Budgets {
				if !b.Held {
					c.Failed = append(c.Failed, fmt.Sprintf("%s %s/%s", b.Metric, formatFor(b.Metric, b.Peak, b.Max), formatFor(b.Metric, b.Max, b.Max)))
				}
			}
			cells[e.Scenario] = c
			if !seen[e.Scenario] {
				seen[e.Scenario] = true
				a.Scenarios = append(a.Scenarios, e.Scenario)
			}
		}
		a.Cells[row] = cells
	}
	slices.Sort(a.Scenarios)
	return a, nil
}

// Markdown renders the table: one line per row, the scenarios whose
// budgets failed and which.
func (a *Ablation) Markdown() string {
	var b strings.Builder
	b.WriteString("| turned back | budgets that failed |\n|---|---|\n")
	for _, row := range a.Rows {
		var failed []string
		for _, sc := range a.Scenarios {
			if c := a.Cells[row][sc]; c.Ran && len(c.Failed) > 0 {
				failed = append(failed, sc+": "+strings.Join(c.Failed, ", "))
			}
		}
		cell := "none: every fixed arm held"
		if len(failed) > 0 {
			cell = strings.Join(failed, "; ")
		}
		fmt.Fprintf(&b, "| %s (%s) | %s |\n", row, a.Docs[row], cell)
	}
	return b.String()
}

// The ablation's page and table in a run's folder (WriteAblation).
const (
	AblationPage  = "ablation.html"
	AblationTable = "ablation.md"
)

// WriteAblation writes dir/AblationPage and dir/AblationTable from the
// ablation runs under dir/ablation, and returns the table it wrote; nil
// and no error when there are none.
func WriteAblation(dir string) (*Ablation, error) {
	a, err := ReadAblation(dir)
	if err != nil {
		return nil, err
	}
	if len(a.Rows) == 0 {
		return nil, nil
	}
	var page bytes.Buffer
	if err := ablationTmpl.Execute(&page, a); err != nil {
		return nil, fmt.Errorf("ablation page: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, AblationPage), page.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("ablation page: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, AblationTable), []byte(a.Markdown()), 0o644); err != nil {
		return nil, fmt.Errorf("ablation table: %w", err)
	}
	return a, nil
}

var ablationTmpl = template.Must(template.New("ablation").Funcs(template.FuncMap{
	"cell": func(a *Ablation, row, sc string) AblationCell { return a.Cells[row][sc] },
}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Spiral ablation</title>
<style>
body{font-family:system-ui,sans-serif;margin:20px;color:#222}
.wide{overflow-x:auto;max-width:100%}table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;font-size:13px}
th{background:#f6f6f6;text-align:left}td.held{background:#e8f5e9}td.failed{background:#fde8e7}td.none{color:#aaa}
small{color:#555}
</style></head><body><h1>Which defence holds which budget</h1>
<p>Each row is the fixed data plane with one defence turned back to the incident's setting (the first: the postmortem's own fix alone), run through every suite's fixed arm under the same load and faults. A cell lists the budgets that then failed; green: every budget still held.</p>
<div class="wide"><table><tr><th>turned back</th>{{range .Scenarios}}<th>{{.}}</th>{{end}}</tr>
{{range $row := .Rows}}<tr><td><b>{{$row}}</b><br><small>{{index $.Docs $row}}</small></td>{{range $sc := $.Scenarios}}{{$c := cell $ $row $sc}}{{if not $c.Ran}}<td class="none">not run</td>{{else if $c.Failed}}<td class="failed"><a href="{{$c.Page}}">failed</a>{{range $c.Failed}}<br>{{.}}{{end}}</td>{{else}}<td class="held"><a href="{{$c.Page}}">held</a></td>{{end}}{{end}}</tr>
{{end}}</table></div></body></html>
`))
