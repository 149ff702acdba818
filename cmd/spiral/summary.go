package main

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/spiral-chaos/spiral/scenario/report"
)

// Verdicts, as the summary writes them.
const (
	verdictPassed  = "passed"
	verdictFailed  = "**FAILED**"
	verdictSkipped = "skipped"
	verdictNoTests = "no tests"
	verdictUnknown = "unknown"
)

// mdVerdict is a junit verdict (report.Passed, ...) as the summary writes
// it: a failure in bold.
func mdVerdict(v string) string {
	switch v {
	case report.Failed:
		return verdictFailed
	case report.Passed:
		return verdictPassed
	case report.Skipped:
		return verdictSkipped
	case report.NoTests:
		return verdictNoTests
	}
	return verdictUnknown
}

// summarize renders runs as Markdown: a table of suites with their
// verdicts, a table of scenarios, and the replay command of every failed
// test.
func summarize(runs []runFolder) (string, error) {
	junits := make([]*report.JUnit, len(runs))
	for i, r := range runs {
		j, err := report.ReadJUnit(r.dir)
		if err != nil {
			return "", fmt.Errorf("summary: %w", err)
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
			fmt.Fprintf(&b, "| %s | %s | %d | %d | %d | %s |\n", code(s.Name), mdVerdict(s.Verdict()), s.Tests, s.Failures, s.Skipped, code(r.rel))
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
			if c, ok := junits[i].Case(e.Replay); ok {
				test = mdVerdict(c.Verdict())
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
func failedLeaves(cases []report.JUnitCase) []report.JUnitCase {
	var leaves []report.JUnitCase
	for _, c := range cases {
		if c.Failure == nil {
			continue
		}
		child := slices.ContainsFunc(cases, func(o report.JUnitCase) bool {
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
func replaysOf(c report.JUnitCase, entries []report.Entry) ([]string, string) {
	var cmds []string
	for _, e := range entries {
		if test, pkg, ok := report.ReplayTest(e.Replay); ok && test == c.Name && report.SamePackage(c.Classname, pkg) && !slices.Contains(cmds, e.Replay) {
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

// code is s as Markdown inline code, safe in a table cell.
func code(s string) string {
	return "`" + strings.ReplaceAll(strings.ReplaceAll(s, "`", "'"), "|", `\|`) + "`"
}
