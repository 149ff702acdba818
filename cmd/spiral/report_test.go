package main

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spiral-chaos/spiral/probe"
	"github.com/spiral-chaos/spiral/scenario"
	"github.com/spiral-chaos/spiral/scenario/report"
)

// modulePath is this module's import path, the prefix of the package
// names in a junit.xml.
const modulePath = "github.com/spiral-chaos/spiral"

// fakeScenario is a scenario whose report a test writes with report.Write.
type fakeScenario struct {
	name string
	seed uint64
	// violated makes the goroutine budget fail during inject.
	violated bool
	replay   string
}

// suiteReplay is the replay command the suites print (suites/internal/suite)
// for test in pkg.
func suiteReplay(seed uint64, test, pkg string) string {
	parts := strings.Split(test, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return fmt.Sprintf("SPIRAL_SEED=%d SPIRAL_MODE=full go test -count=1 -v -run '%s' %s", seed, strings.Join(parts, "/"), pkg)
}

// writeScenario writes sc's report into its folder under dir, where
// report.Dir puts it under $SPIRAL_REPORT_DIR, from a real sampler's
// timeline checked against a real budget.
func writeScenario(tb testing.TB, dir string, sc fakeScenario) {
	tb.Helper()
	g := 10.0
	s, err := probe.NewSampler(time.Second, probe.Func(probe.MetricGoroutines, func() float64 { return g }))
	require.NoError(tb, err)
	ctx := context.Background()
	s.Mark(scenario.PhaseBaseline)
	require.NoError(tb, s.Sample(ctx))
	s.Mark(scenario.PhaseInject)
	if sc.violated {
		g = 5000
	}
	require.NoError(tb, s.Sample(ctx))
	tl := s.Timeline()
	budgets := []probe.Budget{probe.Limit(probe.MetricGoroutines, 2000, scenario.PhaseInject)}
	res := &scenario.Result{
		Scenario: sc.name, Seed: sc.seed, Started: time.Now(), Timeline: tl,
		Budgets: budgets, Violations: tl.Check(budgets...), Validated: true, Replay: sc.replay,
	}
	require.Equal(tb, sc.violated, !res.Held(), "the fake scenario's verdict")
	tb.Setenv("SPIRAL_REPORT_DIR", dir)
	_, err = report.Write(report.Dir(sc.name), res)
	require.NoError(tb, err)
}

// fakeCase is one testcase of a junit.xml: a test or subtest.
type fakeCase struct {
	name    string
	failed  bool
	skipped bool
	// output is the test's output, kept in the junit.xml for a failure.
	output string
}

// writeJUnit writes dir/junit.xml in the layout gotestsum gives it
// (scripts/chaos.sh): a testsuite per package named by its import path,
// a testcase per test and subtest, failures and skips as child elements
// with the test's output.
func writeJUnit(tb testing.TB, dir string, pkgs map[string][]fakeCase) {
	tb.Helper()
	type property struct {
		Name  string `xml:"name,attr"`
		Value string `xml:"value,attr"`
	}
	type message struct {
		Message string `xml:"message,attr"`
		Type    string `xml:"type,attr,omitempty"`
		Text    string `xml:",chardata"`
	}
	type testcase struct {
		XMLName   xml.Name `xml:"testcase"`
		Classname string   `xml:"classname,attr"`
		Name      string   `xml:"name,attr"`
		Time      string   `xml:"time,attr"`
		Skipped   *message `xml:"skipped,omitempty"`
		Failure   *message `xml:"failure,omitempty"`
	}
	type testsuite struct {
		XMLName    xml.Name   `xml:"testsuite"`
		Tests      int        `xml:"tests,attr"`
		Failures   int        `xml:"failures,attr"`
		Skipped    int        `xml:"skipped,attr,omitempty"`
		Time       string     `xml:"time,attr"`
		Name       string     `xml:"name,attr"`
		Properties []property `xml:"properties>property"`
		Cases      []testcase
		Timestamp  string `xml:"timestamp,attr"`
	}
	type testsuites struct {
		XMLName  xml.Name `xml:"testsuites"`
		Tests    int      `xml:"tests,attr"`
		Failures int      `xml:"failures,attr"`
		Errors   int      `xml:"errors,attr"`
		Time     string   `xml:"time,attr"`
		Suites   []testsuite
	}
	var doc testsuites
	for pkg, cases := range pkgs {
		s := testsuite{Name: pkg, Time: "12.000000", Timestamp: "2025-01-02T03:04:05Z", Properties: []property{{"go.version", "go1.26.8 linux/amd64"}}}
		for _, c := range cases {
			tc := testcase{Classname: pkg, Name: c.name, Time: "1.000000"}
			switch {
			case c.failed:
				tc.Failure = &message{Message: "Failed", Text: c.output}
				s.Failures++
			case c.skipped:
				tc.Skipped = &message{Message: c.output}
				s.Skipped++
			}
			s.Tests++
			s.Cases = append(s.Cases, tc)
		}
		doc.Tests += s.Tests
		doc.Failures += s.Failures
		doc.Suites = append(doc.Suites, s)
	}
	b, err := xml.MarshalIndent(doc, "", "\t")
	require.NoError(tb, err)
	require.NoError(tb, os.WriteFile(filepath.Join(dir, "junit.xml"), append([]byte(xml.Header), b...), 0o644))
}

// Shards of a nightly run, as the nightly workflow downloads them.
var (
	batchShard = []fakeScenario{
		{name: "batch-flood/fixed", seed: 7, replay: suiteReplay(7, "TestBatchFlood/fixed", "./suites/batchflood")},
		{name: "batch-flood/incident", seed: 7, violated: true, replay: suiteReplay(7, "TestBatchFlood/incident", "./suites/batchflood")},
	}
	batchJUnit = map[string][]fakeCase{modulePath + "/suites/batchflood": {
		{name: "TestBatchFlood"}, {name: "TestBatchFlood/fixed"}, {name: "TestBatchFlood/incident"},
	}}
	// The OOM suite's replay commands are its own: unanchored.
	oomShard = []fakeScenario{
		{name: "oom/fixed", seed: 7, replay: "SPIRAL_SEED=7 SPIRAL_MODE=full go test -count=1 -v -run 'TestOOM/fixed' ./suites/oom"},
		{name: "oom/incident", seed: 7, violated: true, replay: "SPIRAL_SEED=7 SPIRAL_MODE=full go test -count=1 -v -run 'TestOOM/incident' ./suites/oom"},
	}
	oomJUnit = map[string][]fakeCase{modulePath + "/suites/oom": {
		{name: "TestOOM", failed: true, output: "--- FAIL: TestOOM\n"},
		{name: "TestOOM/fixed"},
		{name: "TestOOM/incident", failed: true, output: "    oom_test.go:200: restarts: 30 > 13\n"},
	}}
)

// shard writes a shard's report folder at dir: its scenarios and, unless
// junit is nil, its junit.xml.
func shard(tb testing.TB, dir string, scenarios []fakeScenario, junit map[string][]fakeCase) string {
	tb.Helper()
	require.NoError(tb, os.MkdirAll(dir, 0o755))
	for _, sc := range scenarios {
		writeScenario(tb, dir, sc)
	}
	if junit != nil {
		writeJUnit(tb, dir, junit)
	}
	return dir
}

// readIndex reads dir/index.json.
func readIndex(tb testing.TB, dir string) []report.Entry {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	require.NoError(tb, err)
	var entries []report.Entry
	require.NoError(tb, json.Unmarshal(b, &entries))
	return entries
}

// pages returns each entry's scenario and page.
func pages(entries []report.Entry) map[string]string {
	m := map[string]string{}
	for _, e := range entries {
		m[e.Scenario] = e.Page
	}
	return m
}

// assertLinks checks that every page of dir's index exists under dir.
func assertLinks(tb testing.TB, dir string) {
	tb.Helper()
	for _, e := range readIndex(tb, dir) {
		assert.FileExists(tb, filepath.Join(dir, filepath.FromSlash(e.Page)), "link of %s in %s/index.html", e.Scenario, dir)
	}
}

func TestReport(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup writes report folders under root and returns the command
		// line after "spiral".
		setup func(t *testing.T, root string) []string
		check func(t *testing.T, root, stdout string)
	}{{
		name: "one folder, indexed in place",
		setup: func(t *testing.T, root string) []string {
			t.Helper()
			return []string{"report", shard(t, filepath.Join(root, "run"), batchShard, batchJUnit)}
		},
		check: func(t *testing.T, root, stdout string) {
			t.Helper()
			dir := filepath.Join(root, "run")
			assert.Equal(t, map[string]string{
				"batch-flood/fixed":    "batch-flood_fixed/report.html",
				"batch-flood/incident": "batch-flood_incident/report.html",
			}, pages(readIndex(t, dir)))
			assertLinks(t, dir)
			assert.FileExists(t, filepath.Join(dir, "index.html"))
			lines := strings.Split(strings.TrimSpace(stdout), "\n")
			require.Len(t, lines, 3, stdout)
			assert.Equal(t, []string{"batch-flood/fixed", "held"}, strings.Fields(lines[0]))
			assert.Equal(t, []string{"batch-flood/incident", "1", "violation(s)"}, strings.Fields(lines[1]))
			assert.Equal(t, "2 scenario report(s); index: "+dir+"/index.html", lines[2])
			ents, err := os.ReadDir(root)
			require.NoError(t, err)
			assert.Len(t, ents, 1, "nothing written beside the folder")
		},
	}, {
		name: "several folders merged into OUT",
		setup: func(t *testing.T, root string) []string {
			t.Helper()
			a := shard(t, filepath.Join(root, "shards", "report-batchflood"), batchShard, batchJUnit)
			b := shard(t, filepath.Join(root, "shards", "report-oom"), oomShard, oomJUnit)
			return []string{"report", "-o", filepath.Join(root, "merged"), a, b}
		},
		check: func(t *testing.T, root, stdout string) {
			t.Helper()
			out := filepath.Join(root, "merged")
			assert.Equal(t, map[string]string{
				"batch-flood/fixed":    "report-batchflood/batch-flood_fixed/report.html",
				"batch-flood/incident": "report-batchflood/batch-flood_incident/report.html",
				"oom/fixed":            "report-oom/oom_fixed/report.html",
				"oom/incident":         "report-oom/oom_incident/report.html",
			}, pages(readIndex(t, out)))
			assertLinks(t, out)
			assert.FileExists(t, filepath.Join(out, "report-oom", "junit.xml"), "the whole folder is copied")
			assert.NoFileExists(t, filepath.Join(root, "shards", "report-oom", "index.html"), "sources are left as they were")
			assert.Contains(t, stdout, "4 scenario report(s); index: "+out+"/index.html")
		},
	}, {
		name: "folders of the same name get a suffix",
		setup: func(t *testing.T, root string) []string {
			t.Helper()
			a := shard(t, filepath.Join(root, "night1", "run"), batchShard, nil)
			b := shard(t, filepath.Join(root, "night2", "run"), oomShard, nil)
			return []string{"report", "-o", filepath.Join(root, "merged"), a, b}
		},
		check: func(t *testing.T, root, _ string) {
			t.Helper()
			out := filepath.Join(root, "merged")
			p := pages(readIndex(t, out))
			assert.Equal(t, "run/batch-flood_fixed/report.html", p["batch-flood/fixed"])
			assert.Equal(t, "run-2/oom_fixed/report.html", p["oom/fixed"])
			assertLinks(t, out)
		},
	}, {
		name: "a name taken in OUT is not overwritten",
		setup: func(t *testing.T, root string) []string {
			t.Helper()
			out := filepath.Join(root, "merged")
			require.NoError(t, os.MkdirAll(filepath.Join(out, "report-oom"), 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(out, "report-oom", "keep"), []byte("earlier"), 0o644))
			return []string{"report", "-o", out, shard(t, filepath.Join(root, "report-oom"), oomShard, oomJUnit)}
		},
		check: func(t *testing.T, root, _ string) {
			t.Helper()
			out := filepath.Join(root, "merged")
			b, err := os.ReadFile(filepath.Join(out, "report-oom", "keep"))
			require.NoError(t, err)
			assert.Equal(t, "earlier", string(b))
			assert.Equal(t, "report-oom-2/oom_fixed/report.html", pages(readIndex(t, out))["oom/fixed"])
			assertLinks(t, out)
		},
	}, {
		name: "a folder inside OUT is indexed where it is",
		setup: func(t *testing.T, root string) []string {
			t.Helper()
			in := shard(t, filepath.Join(root, "merged", "report-batchflood"), batchShard, batchJUnit)
			outside := shard(t, filepath.Join(root, "report-oom"), oomShard, oomJUnit)
			return []string{"report", "-o", filepath.Join(root, "merged"), in, outside}
		},
		check: func(t *testing.T, root, _ string) {
			t.Helper()
			out := filepath.Join(root, "merged")
			p := pages(readIndex(t, out))
			assert.Equal(t, "report-batchflood/batch-flood_fixed/report.html", p["batch-flood/fixed"])
			assert.Equal(t, "report-oom/oom_fixed/report.html", p["oom/fixed"])
			assertLinks(t, out)
			ents, err := os.ReadDir(out)
			require.NoError(t, err)
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			assert.ElementsMatch(t, []string{"report-batchflood", "report-oom", "index.html", "index.json",
				"suite-report-batchflood_batch-flood.html", "suite-report-oom_oom.html"}, names)
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			args := tc.setup(t, root)
			code, out, errOut := spiral(t, args...)
			require.Equal(t, 0, code, errOut)
			tc.check(t, root, out)
		})
	}
}

func TestReportErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args func(t *testing.T, root string) []string
		code int
		// after, if set, checks what the failed command left under root.
		after func(t *testing.T, root string)
	}{{
		name: "no folder",
		args: func(*testing.T, string) []string { return []string{"report"} },
		code: exitUsage,
	}, {
		name: "several folders without -o",
		args: func(t *testing.T, root string) []string {
			t.Helper()
			return []string{"report", shard(t, filepath.Join(root, "a"), batchShard, nil), shard(t, filepath.Join(root, "b"), oomShard, nil)}
		},
		code: exitUsage,
	}, {
		name: "OUT inside a folder to copy",
		args: func(t *testing.T, root string) []string {
			t.Helper()
			a := shard(t, filepath.Join(root, "a"), batchShard, nil)
			return []string{"report", "-o", filepath.Join(a, "merged"), a}
		},
		code: exitUsage,
		after: func(t *testing.T, root string) {
			t.Helper()
			assert.NoDirExists(t, filepath.Join(root, "a", "merged"))
		},
	}, {
		name: "the same folder twice",
		args: func(t *testing.T, root string) []string {
			t.Helper()
			a := shard(t, filepath.Join(root, "a"), batchShard, nil)
			return []string{"report", "-o", filepath.Join(root, "merged"), a, a + "/"}
		},
		code: exitUsage,
	}, {
		name: "a folder that does not exist",
		args: func(_ *testing.T, root string) []string { return []string{"report", filepath.Join(root, "absent")} },
		code: exitFailure,
	}, {
		name: "a junit.xml that is not JUnit",
		args: func(t *testing.T, root string) []string {
			t.Helper()
			a := shard(t, filepath.Join(root, "a"), batchShard, nil)
			require.NoError(t, os.WriteFile(filepath.Join(a, "junit.xml"), []byte("<html></html>"), 0o644))
			return []string{"report", "-summary", filepath.Join(root, "summary.md"), a}
		},
		code: exitFailure,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			code, _, errOut := spiral(t, tc.args(t, root)...)
			assert.Equal(t, tc.code, code, errOut)
			assert.NotEmpty(t, errOut)
			if tc.after != nil {
				tc.after(t, root)
			}
		})
	}
}

// section returns the Markdown under heading "## name", up to the next
// heading of that level.
func section(tb testing.TB, md, name string) string {
	tb.Helper()
	_, rest, ok := strings.Cut(md, "## "+name+"\n")
	require.True(tb, ok, "no section %q in\n%s", name, md)
	body, _, _ := strings.Cut(rest, "\n## ")
	return body
}

// tableRows returns the body rows of the first Markdown table in s, by the
// text of their first cell, each row's cells trimmed.
func tableRows(s string) map[string][]string {
	rows := map[string][]string{}
	n := 0
	for line := range strings.Lines(s) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			if n > 0 {
				break
			}
			continue
		}
		n++
		if n <= 2 { // header and separator
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows[cells[0]] = cells
	}
	return rows
}

func TestReportSummary(t *testing.T) {
	root := t.TempDir()
	shards := filepath.Join(root, "shards")
	batch := shard(t, filepath.Join(shards, "report-batchflood"), batchShard, batchJUnit)
	oom := shard(t, filepath.Join(shards, "report-oom"), oomShard, oomJUnit)
	// A soak that died before gotestsum wrote its junit.xml.
	soak := shard(t, filepath.Join(shards, "report-soak"), []fakeScenario{{name: "soak/cycle-000-flood", seed: 18}}, nil)
	// A log storm whose test failed before its scenario wrote a report:
	// the replay line it printed stands in; and one that printed none.
	logReplay := suiteReplay(7, "TestLogStorm/incident", "./suites/logstorm")
	logs := shard(t, filepath.Join(shards, "report-logstorm"), nil, map[string][]fakeCase{modulePath + "/suites/logstorm": {
		{name: "TestLogStorm", failed: true},
		{name: "TestLogStorm/incident", failed: true, output: "    suite.go:32: run: start data plane: no port\n    replay: " + logReplay + "\n"},
		{name: "TestLogStormSink", failed: true, output: "    logstorm_test.go:300: sink: closed\n"},
		{name: "TestLogStormExternal", skipped: true, output: "external mode"},
	}})
	summary := filepath.Join(root, "summary.md")

	code, _, errOut := spiral(t, "report", "-o", filepath.Join(root, "nightly"), "-summary", summary, batch, oom, soak, logs)
	require.Equal(t, 0, code, errOut)
	b, err := os.ReadFile(summary)
	require.NoError(t, err)
	md := string(b)

	suites := tableRows(section(t, md, "Suites"))
	require.Len(t, suites, 4, md) // three packages and the run without junit.xml
	for pkg, want := range map[string][]string{
		"suites/batchflood": {verdictPassed, "3", "0", "0"},
		"suites/oom":        {verdictFailed, "3", "2", "0"},
		"suites/logstorm":   {verdictFailed, "4", "3", "1"},
	} {
		row := suites[code2(modulePath+"/"+pkg)]
		require.NotNil(t, row, "suite %s in\n%s", pkg, md)
		assert.Equal(t, want, row[1:5], pkg)
	}
	require.Contains(t, suites, "-", md)
	assert.Contains(t, suites["-"][1], verdictUnknown)
	assert.Equal(t, code2("report-soak"), suites["-"][5], "the folder in the merged index")
	assert.Equal(t, code2("report-oom"), suites[code2(modulePath+"/suites/oom")][5])
	assert.Contains(t, section(t, md, "Suites"), code2("report-soak")+" has no junit.xml")

	scenarios := tableRows(section(t, md, "Scenarios"))
	require.Len(t, scenarios, 5, md)
	for name, want := range map[string][]string{
		"batch-flood/fixed":    {verdictPassed, "held", "yes", "7"},
		"batch-flood/incident": {verdictPassed, "1 violated", "yes", "7"},
		"oom/fixed":            {verdictPassed, "held", "yes", "7"},
		"oom/incident":         {verdictFailed, "1 violated", "yes", "7"},
		"soak/cycle-000-flood": {verdictUnknown, "held", "yes", "18"},
	} {
		row := scenarios[code2(name)]
		require.NotNil(t, row, "scenario %s in\n%s", name, md)
		assert.Equal(t, want, row[1:], name)
	}

	failures := section(t, md, "Failures")
	var failed []string
	for line := range strings.Lines(failures) {
		if rest, ok := strings.CutPrefix(line, "- `"); ok {
			name, _, _ := strings.Cut(rest, "`")
			failed = append(failed, name)
		}
	}
	assert.ElementsMatch(t, []string{"TestOOM/incident", "TestLogStorm/incident", "TestLogStormSink"}, failed, "parents of failed subtests are not listed")
	assert.Contains(t, failures, "  "+oomShard[1].replay+"\n", "the failed scenario's replay from its summary.json")
	assert.NotContains(t, failures, oomShard[0].replay, "the passed arm is not a failure")
	assert.Contains(t, failures, "  "+logReplay+"\n", "the replay line the failed test printed")
	assert.Contains(t, failures, "  go test -count=1 -v -run '^TestLogStormSink$' "+modulePath+"/suites/logstorm\n")
	assert.Contains(t, failures, "set SPIRAL_SEED and SPIRAL_MODE")
}

func TestReportSummaryAllPassed(t *testing.T) {
	root := t.TempDir()
	dir := shard(t, filepath.Join(root, "run"), batchShard, batchJUnit)
	summary := filepath.Join(root, "summary.md")
	code, out, errOut := spiral(t, "report", "-summary", summary, dir)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "summary: "+summary)
	b, err := os.ReadFile(summary)
	require.NoError(t, err)
	assert.Equal(t, "No test failed.", strings.TrimSpace(section(t, string(b), "Failures")))
	assert.Len(t, readIndex(t, dir), 2, "the index is written in place as without -summary")
}

// code2 is s as the summary quotes it in a table cell.
func code2(s string) string { return "`" + s + "`" }

func TestReplayTest(t *testing.T) {
	for _, test := range []string{
		"TestOOM",
		"TestOOM/incident",
		"TestSoak/cycle-003-memcached-paused",
		"TestX/a.b+c*(d)[e]{f}^g$h|i\\j",
		"TestX/ends-with-dollar$",
	} {
		cmd := suiteReplay(3, test, "./suites/x")
		got, pkg, ok := report.ReplayTest(cmd)
		require.True(t, ok, cmd)
		assert.Equal(t, test, got, cmd)
		assert.Equal(t, "./suites/x", pkg)
	}
	got, pkg, ok := report.ReplayTest(oomShard[1].replay)
	require.True(t, ok)
	assert.Equal(t, "TestOOM/incident", got)
	assert.Equal(t, "./suites/oom", pkg)
	_, _, ok = report.ReplayTest("go test ./...")
	assert.False(t, ok)
}

// spiral report --baseline marks what changed since a previous run's
// folder: a fixed arm whose budgets flipped to violated, and its test's
// verdict that flipped to failed.
func TestReportBaseline(t *testing.T) {
	root := t.TempDir()
	last := shard(t, filepath.Join(root, "last-night"), batchShard, batchJUnit)
	tonightShard := []fakeScenario{batchShard[0], batchShard[1]}
	tonightShard[0].violated = true // the fixed arm regressed
	tonight := shard(t, filepath.Join(root, "tonight"), tonightShard, map[string][]fakeCase{modulePath + "/suites/batchflood": {
		{name: "TestBatchFlood", failed: true},
		{name: "TestBatchFlood/fixed", failed: true, output: "    batchflood_test.go:103: \n        \tError Trace:\tx.go:1\n        \tError:      \tShould be empty\n        \tMessages:   \tthe fixed data plane must hold every budget under the flood\n"},
		{name: "TestBatchFlood/incident"},
	}})

	code, out, errOut := spiral(t, "report", "--baseline", last, tonight)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "2 change(s) since "+last+":\n")
	assert.Contains(t, out, "  batch-flood/fixed: test: passed → failed\n")
	assert.Contains(t, out, "  batch-flood/fixed: budget goroutines <= 2000 during inject: held (peak 10) → violated (peak 5,000)\n")

	entries := readIndex(t, tonight)
	require.Len(t, entries, 2)
	var kinds []string
	for _, c := range entries[0].Changes {
		kinds = append(kinds, c.Kind)
	}
	assert.Equal(t, "batch-flood/fixed", entries[0].Scenario)
	assert.Equal(t, []string{"test", "budget"}, kinds, "the budget that flipped says why the arm's budgets did; no second line for the whole")
	assert.Empty(t, entries[1].Changes, "the incident arm did as before")
	assert.Equal(t, "the fixed data plane must hold every budget under the flood", entries[0].Test.Message[len("Should be empty: "):])

	html, err := os.ReadFile(filepath.Join(tonight, "index.html"))
	require.NoError(t, err)
	assert.Contains(t, string(html), `<span class="changed">test: passed → failed</span>`)
	assert.Contains(t, string(html), "1 scenario(s) changed")
	assert.NoFileExists(t, filepath.Join(last, "index.html"), "the baseline is only read")
}

func TestReportBaselineErrors(t *testing.T) {
	root := t.TempDir()
	dir := shard(t, filepath.Join(root, "run"), batchShard, nil)
	code, _, errOut := spiral(t, "report", "-baseline", filepath.Join(root, "absent"), dir)
	assert.Equal(t, exitFailure, code)
	assert.Contains(t, errOut, "baseline")
	assert.NoFileExists(t, filepath.Join(dir, "index.html"), "a bad baseline writes nothing")

	code, _, errOut = spiral(t, "report", "-baseline", dir, "-ratio", "1", dir)
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "-ratio 1: want a number above 1")
}
