package main

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/spiral-chaos/spiral/scenario/report"
)

// junitReport is the part of a junit.xml, as gotestsum writes it
// (scripts/chaos.sh), that the summary reads: one testsuite per package,
// one testcase per test and subtest.
type junitReport struct {
	XMLName xml.Name `xml:"testsuites"`
	// Errors counts failures outside any test, such as a package that did
	// not build.
	Errors int          `xml:"errors,attr"`
	Suites []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	// Name is the package's import path.
	Name     string      `xml:"name,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Skipped  int         `xml:"skipped,attr"`
	Cases    []junitCase `xml:"testcase"`
}

type junitCase struct {
	// Classname is the package's import path, Name the test's full name
	// ("TestOOM/incident").
	Classname string        `xml:"classname,attr"`
	Name      string        `xml:"name,attr"`
	Failure   *junitFailure `xml:"failure"`
	Skipped   *struct{}     `xml:"skipped"`
}

type junitFailure struct {
	// Output is the test's output.
	Output string `xml:",chardata"`
}

// readJUnit reads dir/junit.xml; a folder without one yields nil.
func readJUnit(dir string) (*junitReport, error) {
	b, err := os.ReadFile(filepath.Join(dir, "junit.xml"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("summary: %w", err)
	}
	var j junitReport
	if err := xml.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("summary: %s: %w", filepath.Join(dir, "junit.xml"), err)
	}
	return &j, nil
}

// Verdicts, as the summary writes them.
const (
	verdictPassed  = "passed"
	verdictFailed  = "**FAILED**"
	verdictSkipped = "skipped"
	verdictNoTests = "no tests"
	verdictUnknown = "unknown"
)

func (s junitSuite) verdict() string {
	switch {
	case s.Failures > 0 || slices.ContainsFunc(s.Cases, func(c junitCase) bool { return c.Failure != nil }):
		return verdictFailed
	case s.Tests == 0:
		return verdictNoTests
	case s.Skipped == s.Tests:
		return verdictSkipped
	}
	return verdictPassed
}

func (c junitCase) verdict() string {
	switch {
	case c.Failure != nil:
		return verdictFailed
	case c.Skipped != nil:
		return verdictSkipped
	}
	return verdictPassed
}

// summarize renders runs as Markdown: a table of suites with their
// verdicts, a table of scenarios, and the replay command of every failed
// test.
func summarize(runs []runFolder) (string, error) {
	junits := make([]*junitReport, len(runs))
	for i, r := range runs {
		j, err := readJUnit(r.dir)
		if err != nil {
			return "", err
		}
		junits[i] = j
	}
	var b strings.Builder

	b.WriteString("## Suites\n\n| suite | verdict | tests | failed | skipped | folder |\n|---|---|---|---|---|---|\n")
	var notes []string
	for i, r := range runs {
		j := junits[i]
		if j == nil {
			fmt.Fprintf(&b, "| - | %s: no junit.xml | | | | %s |\n", verdictUnknown, code(r.rel))
			continue
		}
		for _, s := range j.Suites {
			fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %s |\n", code(s.Name), s.verdict(), s.Tests, s.Failures, s.Skipped, code(r.rel))
		}
		if j.Errors > 0 {
			notes = append(notes, fmt.Sprintf("%s: %d error(s) outside any test (a package that did not build, or a crash): see its go-test.json.", code(r.rel), j.Errors))
		}
	}
	for i, r := range runs {
		if junits[i] == nil {
			notes = append(notes, fmt.Sprintf("%s has no junit.xml: its run did not finish, so its verdicts and failures are unknown here.", code(r.rel)))
		}
	}
	for _, n := range notes {
		fmt.Fprintf(&b, "\n%s\n", n)
	}

	b.WriteString("\n## Scenarios\n\nIncident arms are expected to violate budgets; the test column is the suite's verdict on the arm.\n\n")
	b.WriteString("| scenario | test | budgets | answered after recover | seed |\n|---|---|---|---|---|\n")
	for i, r := range runs {
		for _, e := range r.entries {
			test := verdictUnknown
			if c, ok := caseOf(junits[i], e.Replay); ok {
				test = c.verdict()
			}
			budgets := "held"
			if e.Violations > 0 {
				budgets = fmt.Sprintf("%d violated", e.Violations)
			}
			answered := "yes"
			if !e.Validated {
				answered = "no"
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %d |\n", code(e.Scenario), test, budgets, answered, e.Seed)
		}
	}

	b.WriteString("\n## Failures\n\n")
	failures := 0
	for i, r := range runs {
		if junits[i] == nil {
			continue
		}
		for _, s := range junits[i].Suites {
			for _, c := range failedLeaves(s.Cases) {
				failures++
				fmt.Fprintf(&b, "- %s in %s (%s), replay:\n\n", code(c.Name), code(c.Classname), code(r.rel))
				replays, note := replaysOf(c, r.entries)
				if note != "" {
					fmt.Fprintf(&b, "  %s\n\n", note)
				}
				for _, cmd := range replays {
					fmt.Fprintf(&b, "  ```sh\n  %s\n  ```\n\n", cmd)
				}
			}
		}
	}
	if failures == 0 {
		b.WriteString("No test failed.\n")
	}
	return b.String(), nil
}

// failedLeaves returns the failed cases none of whose subtests failed: a
// parent fails with its subtests, and the subtest is the one to replay.
func failedLeaves(cases []junitCase) []junitCase {
	var leaves []junitCase
	for _, c := range cases {
		if c.Failure == nil {
			continue
		}
		child := slices.ContainsFunc(cases, func(o junitCase) bool {
			return o.Failure != nil && o.Classname == c.Classname && strings.HasPrefix(o.Name, c.Name+"/")
		})
		if !child {
			leaves = append(leaves, c)
		}
	}
	return leaves
}

// replaysOf returns the commands that replay the failed case c: those of
// the scenarios its test ran (from their summary.json), else the replay
// lines the test printed, else a go test command for it with a note that
// it lacks the run's seed.
func replaysOf(c junitCase, entries []report.Entry) ([]string, string) {
	var cmds []string
	for _, e := range entries {
		if test, pkg, ok := replayTest(e.Replay); ok && test == c.Name && samePackage(c.Classname, pkg) && !slices.Contains(cmds, e.Replay) {
			cmds = append(cmds, e.Replay)
		}
	}
	if len(cmds) > 0 {
		return cmds, ""
	}
	if c.Failure != nil {
		for _, m := range replayLine.FindAllStringSubmatch(c.Failure.Output, -1) {
			if cmd := strings.TrimSpace(m[1]); !slices.Contains(cmds, cmd) {
				cmds = append(cmds, cmd)
			}
		}
	}
	if len(cmds) > 0 {
		return cmds, "(from the test's output: it wrote no scenario report)"
	}
	parts := strings.Split(c.Name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	cmd := fmt.Sprintf("go test -count=1 -v -run '%s' %s", strings.Join(parts, "/"), c.Classname)
	return []string{cmd}, "(no scenario report and no replay line: set SPIRAL_SEED and SPIRAL_MODE as the run had them)"
}

// replayLine is a replay command in a test's output, as the suites print
// it ("replay: SPIRAL_SEED=...").
var replayLine = regexp.MustCompile(`(?m)replay: (\S.*)$`)

// runPattern is a replay command's -run pattern and the package after it.
var runPattern = regexp.MustCompile(`-run '([^']*)'\s+(\S+)`)

// caseOf finds in j the test case that the replay command runs.
func caseOf(j *junitReport, replay string) (junitCase, bool) {
	test, pkg, ok := replayTest(replay)
	if j == nil || !ok {
		return junitCase{}, false
	}
	for _, s := range j.Suites {
		for _, c := range s.Cases {
			if c.Name == test && samePackage(c.Classname, pkg) {
				return c, true
			}
		}
	}
	return junitCase{}, false
}

// replayTest returns the test a replay command runs and its package:
// "TestOOM/incident" and "./suites/oom" from "SPIRAL_SEED=5 go test
// -count=1 -v -run '^TestOOM$/^incident$' ./suites/oom". Anchors and
// regexp.QuoteMeta's escapes are undone; ok is false for a command with no
// quoted -run pattern.
func replayTest(cmd string) (test, pkg string, ok bool) {
	m := runPattern.FindStringSubmatch(cmd)
	if m == nil {
		return "", "", false
	}
	parts := strings.Split(m[1], "/")
	for i, p := range parts {
		parts[i] = unquotePattern(p)
	}
	return strings.Join(parts, "/"), m[2], true
}

// unquotePattern undoes "^" + regexp.QuoteMeta(name) + "$": a leading "^"
// and a trailing unescaped "$" are dropped, and a backslash escapes the
// next byte.
func unquotePattern(p string) string {
	p = strings.TrimPrefix(p, "^")
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		switch {
		case p[i] == '\\' && i+1 < len(p):
			i++
		case p[i] == '$' && i == len(p)-1:
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// samePackage reports whether the package pattern of a go test command
// ("./suites/oom", "./suites/...") names the package importPath.
func samePackage(importPath, pattern string) bool {
	if strings.Contains(pattern, "...") {
		return true
	}
	rel := strings.TrimPrefix(pattern, "./")
	return importPath == rel || strings.HasSuffix(importPath, "/"+rel)
}

// code is s as Markdown inline code, safe in a table cell.
func code(s string) string {
	return "`" + strings.ReplaceAll(strings.ReplaceAll(s, "`", "'"), "|", `\|`) + "`"
}
