package report

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
)

// JUnit is the part of a junit.xml, as gotestsum writes it
// (scripts/chaos.sh), that the reports read: one testsuite per package,
// one testcase per test and subtest.
type JUnit struct {
	XMLName xml.Name `xml:"testsuites"`
	// Errors counts failures outside any test, such as a package that did
	// not build.
	Errors int          `xml:"errors,attr"`
	Suites []JUnitSuite `xml:"testsuite"`
}

// JUnitSuite is one package's tests.
type JUnitSuite struct {
	// Name is the package's import path.
	Name     string `xml:"name,attr"`
	Tests    int    `xml:"tests,attr"`
	Failures int    `xml:"failures,attr"`
	Skipped  int    `xml:"skipped,attr"`
	// Time is how long the package's tests ran, in seconds.
	Time  float64     `xml:"time,attr"`
	Cases []JUnitCase `xml:"testcase"`
}

// JUnitCase is one test or subtest.
type JUnitCase struct {
	// Classname is the package's import path, Name the test's full name
	// ("TestOOM/incident").
	Classname string        `xml:"classname,attr"`
	Name      string        `xml:"name,attr"`
	Failure   *JUnitFailure `xml:"failure"`
	Skipped   *struct{}     `xml:"skipped"`
}

// JUnitFailure is a failed test's output.
type JUnitFailure struct {
	Output string `xml:",chardata"`
}

// ReadJUnit reads dir/junit.xml; a folder without one yields nil, no
// error.
func ReadJUnit(dir string) (*JUnit, error) {
	file := filepath.Join(dir, "junit.xml")
	b, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("junit: %w", err)
	}
	var j JUnit
	if err := xml.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("junit: %s: %w", file, err)
	}
	return &j, nil
}

// Verdicts of a test or a package, as JUnitCase.Verdict and
// JUnitSuite.Verdict give them.
const (
	Passed  = "passed"
	Failed  = "failed"
	Skipped = "skipped"
	NoTests = "no tests"
)

// Verdict is the package's: failed if any of its tests failed.
func (s JUnitSuite) Verdict() string {
	switch {
	case s.Failures > 0 || slices.ContainsFunc(s.Cases, func(c JUnitCase) bool { return c.Failure != nil }):
		return Failed
	case s.Tests == 0:
		return NoTests
	case s.Skipped == s.Tests:
		return Skipped
	}
	return Passed
}

// Verdict is the test's.
func (c JUnitCase) Verdict() string {
	switch {
	case c.Failure != nil:
		return Failed
	case c.Skipped != nil:
		return Skipped
	}
	return Passed
}

// testifyField is a field of a testify failure ("Error:", "Messages:")
// and its text.
var testifyField = regexp.MustCompile(`^\s*(Error Trace|Error|Test|Messages):\s*(.*)$`)

// fileLine is a line a test logged or failed with ("x_test.go:12: text").
var fileLine = regexp.MustCompile(`^\s*[\w.-]+\.go:\d+: (.*)$`)

// Message returns why the test failed, from its output: each testify
// failure's Error and Messages joined ("Should be true: the incident data
// plane must be caught by ..."), one per line; else the last
// "file.go:line:" line that is not a replay or report line (a t.Fatalf).
// Go's output does not tell t.Errorf from t.Logf, so a plain t.Errorf
// followed by logs reads as the last log. "" for a test that passed.
func (c JUnitCase) Message() string {
	if c.Failure == nil {
		return ""
	}
	var msgs []string
	var errText, field string
	var parts []string
	flush := func() {
		if errText != "" || len(parts) > 0 {
			m := errText
			if len(parts) > 0 {
				m = strings.TrimSpace(strings.TrimSuffix(m, ":") + ": " + strings.Join(parts, " "))
				m = strings.TrimPrefix(m, ": ")
			}
			msgs = append(msgs, m)
		}
		errText, parts, field = "", nil, ""
	}
	var last string
	for line := range strings.Lines(c.Failure.Output) {
		line = strings.TrimRight(line, "\r\n")
		if m := testifyField.FindStringSubmatch(line); m != nil {
			switch m[1] {
			case "Error Trace":
				flush()
			case "Error":
				errText = strings.TrimSpace(m[2])
			case "Messages":
				parts = append(parts, strings.TrimSpace(m[2]))
			}
			field = m[1]
			continue
		}
		if m := fileLine.FindStringSubmatch(line); m != nil {
			field = ""
			t := strings.TrimSpace(m[1])
			if t != "" && !strings.HasPrefix(t, "replay:") && !strings.HasPrefix(t, "report") {
				last = t
			}
			continue
		}
		// A field's text goes on in lines indented under it.
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "---") || strings.HasPrefix(t, "===") {
			field = ""
			continue
		}
		switch field {
		case "Error":
			errText += " " + t
		case "Messages":
			parts = append(parts, t)
		}
	}
	flush()
	if len(msgs) > 0 {
		return strings.Join(msgs, "\n")
	}
	return last
}

// Case finds in j the test case that the replay command runs.
func (j *JUnit) Case(replay string) (JUnitCase, bool) {
	test, pkg, ok := ReplayTest(replay)
	if j == nil || !ok {
		return JUnitCase{}, false
	}
	return j.find(test, pkg)
}

func (j *JUnit) find(test, pkg string) (JUnitCase, bool) {
	for _, s := range j.Suites {
		for _, c := range s.Cases {
			if c.Name == test && SamePackage(c.Classname, pkg) {
				return c, true
			}
		}
	}
	return JUnitCase{}, false
}

// runPattern is a replay command's -run pattern and the package after it.
var runPattern = regexp.MustCompile(`-run '([^']*)'\s+(\S+)`)

// ReplayTest returns the test a replay command runs and its package:
// "TestOOM/incident" and "./suites/oom" from "SPIRAL_SEED=5 go test
// -count=1 -v -run '^TestOOM$/^incident$' ./suites/oom". Anchors and
// regexp.QuoteMeta's escapes are undone; ok is false for a command with no
// quoted -run pattern.
func ReplayTest(cmd string) (test, pkg string, ok bool) {
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

// SamePackage reports whether the package pattern of a go test command
// ("./suites/oom", "./suites/...") names the package importPath.
func SamePackage(importPath, pattern string) bool {
	if strings.Contains(pattern, "...") {
		return true
	}
	rel := strings.TrimPrefix(pattern, "./")
	return importPath == rel || strings.HasSuffix(importPath, "/"+rel)
}
