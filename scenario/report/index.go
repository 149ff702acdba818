package report

import (
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Entry is one scenario's line in a run's index.
type Entry struct {
	Scenario   string `json:"scenario"`
	Held       bool   `json:"held"`
	Violations int    `json:"violations"`
	Validated  bool   `json:"validated"`
	// Seed and Replay are the scenario's seed and the command that runs it
	// again, from its summary.json.
	Seed   uint64 `json:"seed"`
	Replay string `json:"replay"`
	// Page is report.html relative to the index.
	Page string `json:"page"`
}

// WriteIndex finds every summary.json under dir, writes dir/index.html and
// dir/index.json listing them, and returns the entries. A folder with no
// summary yields an empty index, not an error. It is Scan followed by
// WriteEntries.
func WriteIndex(dir string) ([]Entry, error) {
	entries, err := Scan(dir)
	if err != nil {
		return nil, err
	}
	if err := WriteEntries(dir, entries); err != nil {
		return nil, err
	}
	return entries, nil
}

// Scan finds every summary.json under dir and returns one entry per
// scenario, sorted by scenario name, each Page relative to dir. It writes
// nothing; a folder with no summary yields no entries, not an error.
func Scan(dir string) ([]Entry, error) {
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("report index: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("report index: %s is not a folder", dir)
	}
	var entries []Entry
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "summary.json" {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var s struct {
			Scenario   string            `json:"scenario"`
			Seed       uint64            `json:"seed"`
			Held       bool              `json:"held"`
			Violations []json.RawMessage `json:"violations"`
			Validated  bool              `json:"validated"`
			Replay     string            `json:"replay"`
		}
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		rel, err := filepath.Rel(dir, filepath.Join(filepath.Dir(path), "report.html"))
		if err != nil {
			return err
		}
		entries = append(entries, Entry{
			Scenario: s.Scenario, Held: s.Held, Violations: len(s.Violations), Validated: s.Validated,
			Seed: s.Seed, Replay: s.Replay, Page: filepath.ToSlash(rel),
		})
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

// WriteEntries writes dir/index.html and dir/index.json listing entries,
// whose Pages must be relative to dir. Several runs' entries (Scan of each,
// Pages prefixed with the run's folder under dir) make one index of them
// all.
func WriteEntries(dir string, entries []Entry) error {
	b, err := json.MarshalIndent(entries, "", " ")
	if err != nil {
		return fmt.Errorf("report index: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.json"), b, 0o644); err != nil {
		return fmt.Errorf("report index: %w", err)
	}
	var page strings.Builder
	if err := indexTmpl.Execute(&page, entries); err != nil {
		return fmt.Errorf("report index: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte(page.String()), 0o644); err != nil {
		return fmt.Errorf("report index: %w", err)
	}
	return nil
}

var indexTmpl = template.Must(template.New("index").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Spiral run</title>
<style>body{font-family:system-ui,sans-serif;margin:20px}table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px}</style>
</head><body><h1>Spiral run</h1>
<p>Each scenario is one arm of a suite: incident arms are expected to violate budgets (the suite asserts which), fixed arms to hold them. The JUnit file (junit.xml) has the suites' verdicts.</p>
<table><tr><th>scenario</th><th>budgets</th><th>violations</th><th>answered after recover</th></tr>
{{range .}}<tr><td><a href="{{.Page}}">{{.Scenario}}</a></td><td>{{if .Held}}held{{else}}violated{{end}}</td><td>{{.Violations}}</td><td>{{.Validated}}</td></tr>
{{else}}<tr><td colspan="4">no scenario reports in this run</td></tr>{{end}}</table>
</body></html>
`))
