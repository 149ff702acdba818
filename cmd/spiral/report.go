package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spiral-chaos/spiral/scenario/report"
)

func init() {
	register(command{
		name:    "report",
		summary: "index a run's scenario reports into index.html",
		usage: `Usage: spiral report DIR

Finds every scenario report (summary.json) under DIR, as written by
'make chaos', writes DIR/index.html and DIR/index.json linking them, and
prints one line per scenario: whether its budgets held and how many were
violated. Incident arms are expected to violate budgets; the suites' own
verdicts are in DIR/junit.xml.`,
		run: runReport,
	})
}

func runReport(_ context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("report", out)
	if err := fs.Parse(args); err != nil {
		return usagef("%v", err)
	}
	if fs.NArg() != 1 {
		return usagef("report: want one folder, got %d arguments", fs.NArg())
	}
	dir := fs.Arg(0)
	entries, err := report.WriteIndex(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		verdict := "held"
		if !e.Held {
			verdict = fmt.Sprintf("%d violation(s)", e.Violations)
		}
		printf(out, "%-40s %s\n", e.Scenario, verdict)
	}
	printf(out, "%d scenario report(s); index: %s/index.html\n", len(entries), dir)
	return nil
}
