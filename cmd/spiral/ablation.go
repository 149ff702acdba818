package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spiral-chaos/spiral/scenario/report"
)

func init() {
	register(command{
		name:    "ablation",
		summary: "run every suite's fixed arm with one defence turned back, and write the table",
		usage: `Usage: spiral ablation [-rows ROW,...] [-run REGEXP] DIR

For each row, runs the suites' fixed arms (go test ./suites/...) with
SPIRAL_ABLATE=ROW: the bundled data plane's fixed configuration with one
knob turned back to the incident's setting, or "setlimit", the
postmortem's own fix alone (the incident configuration with SetLimit).
Each row's reports go to DIR/ablation/ROW; then DIR/ablation.html and
DIR/ablation.md list, for each row, the budgets that failed, and the run's
index (spiral report DIR) shows the table. A row whose arms fail their
budgets is what the ablation is for: it is recorded, not an error.

SPIRAL_MODE applies as to the suites (make chaos runs the ablation in the
mode it runs in). Rows, in order: ` + strings.Join(report.AblationRows(), ", ") + `.

Examples:

	spiral ablation reports/20250102T030405Z
	spiral ablation -rows setlimit,lookup -run 'TestBatchFlood' /tmp/abl`,
		run: runAblation,
	})
}

// ablationRun selects the fixed arms: a top-level test with no arms (the
// soak) runs whole; "dead" and "hung" are cacheoutage's outages, whose
// arms are one level down.
const ablationRun = `/(fixed|dead|hung)/fixed`

func runAblation(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("ablation", out)
	rowsFlag := fs.String("rows", strings.Join(report.AblationRows(), ","), "comma-separated `rows` to run")
	runFlag := fs.String("run", ablationRun, "go test -run `regexp` selecting the arms")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	if fs.NArg() != 1 {
		return usagef("want one report folder, got %d", fs.NArg())
	}
	dir := fs.Arg(0)
	known := report.AblationRows()
	var rows []string
	for r := range strings.SplitSeq(*rowsFlag, ",") {
		if r = strings.TrimSpace(r); r == "" {
			continue
		}
		if !slices.Contains(known, r) {
			return usagef("-rows: no row %q: want some of %s", r, strings.Join(known, ", "))
		}
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		return usagef("-rows: no row given")
	}
	if t := os.Getenv("SPIRAL_TARGET"); t != "" && t != "in-process" {
		return usagef("SPIRAL_TARGET=%s: the ablation turns back defences of the bundled data plane, in-process; unset it", t)
	}
	for i, row := range rows {
		rowDir, err := filepath.Abs(filepath.Join(dir, report.AblationDir, row))
		if err != nil {
			return err
		}
		if err := os.MkdirAll(rowDir, 0o755); err != nil {
			return fmt.Errorf("ablation: %w", err)
		}
		began := time.Now()
		printf(out, "ablation: row %d of %d: %s\n", i+1, len(rows), row)
		cmd := exec.CommandContext(ctx, "go", "test", "-p", "1", "-count=1", "-timeout", "60m", "-run", *runFlag, "./suites/...")
		cmd.Env = append(os.Environ(), "SPIRAL_ABLATE="+row, "SPIRAL_REPORT_DIR="+rowDir)
		log, err := os.Create(filepath.Join(rowDir, "go-test.txt"))
		if err != nil {
			return fmt.Errorf("ablation: %w", err)
		}
		cmd.Stdout, cmd.Stderr = log, log
		runErr := cmd.Run()
		_ = log.Close()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		verdict := "every arm passed"
		if runErr != nil {
			verdict = "some arm failed (" + runErr.Error() + ")"
		}
		printf(out, "ablation: row %s done in %v: %s; log %s\n", row, time.Since(began).Round(time.Second), verdict, log.Name())
	}
	a, err := report.WriteAblation(dir)
	if err != nil {
		return err
	}
	if a == nil {
		return fmt.Errorf("ablation: no scenario report under %s", filepath.Join(dir, report.AblationDir))
	}
	printf(out, "%s\nablation: %s\n", a.Markdown(), filepath.Join(dir, report.AblationPage))
	return nil
}
