package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiral-chaos/spiral/target"
)

func init() {
	register(command{
		name:    "run",
		summary: "run suites' scenarios against a target, with live progress and a report",
		usage: `Usage: spiral run [-target SPEC] [-mode MODE] [-seed N] [-report DIR] [-progress D] SUITE[/ARM]...

Runs the scenarios of each SUITE (a folder of suites/: batchflood,
cacheoutage, ...), or of one ARM of it (batchflood/fixed,
cacheoutage/hung/fixed), against the service -target names, as
SPIRAL_TARGET does for go test: in-process (the bundled data plane),
exec:<path> [args] (a binary run as a supervised child; the pre-release
soak's staging binary) or url:<base>[,pid=N]. Arms that replay the
incident run the bundled data plane whatever the target: they are the
suite's positive control.

It runs 'go test' on each suite's package, one at a time, from Spiral's
source tree (the module root at or above the working directory; Go must
be on PATH), all of them sharing one CQL store container, removed at the
end. The terminal shows each arm's phases and, every -progress, its live
figures (threads, goroutines, RSS, TIME_WAIT, load); the whole output goes
to DIR/go-test.log. Each scenario's report goes under DIR, which is then
indexed as 'spiral report DIR' does. A failed arm's replay command is
printed. The exit status is 1 if any test failed.

Examples:

	spiral run batchflood
	spiral run -target 'exec:bin/dataplane' -mode full batchflood/fixed cacheoutage
	spiral run -target 'exec:./staging-dataplane' -mode soak soak`,
		run: runRun,
	})
}

// runModes are the values of -mode, as SPIRAL_MODE takes them.
var runModes = []string{"quick", "full", "soak"}

func runRun(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("run", out)
	spec := fs.String("target", "in-process", "the service under test: in-process, exec:<path> [args] or url:<base>[,pid=N]")
	mode := fs.String("mode", "quick", "quick, full or soak (SPIRAL_MODE)")
	seed := fs.String("seed", "", "seed of every random choice (SPIRAL_SEED; default: each suite's own)")
	dir := fs.String("report", "", "where the reports go (default reports/run-<UTC time> under the module root)")
	every := fs.Duration("progress", 5*time.Second, "how often to print an arm's live figures (0: phases only)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	root, err := spiralRoot()
	if err != nil {
		return err
	}
	runs, err := parseRunArgs(root, fs.Args())
	if err != nil {
		return err
	}
	if _, err := target.Parse(*spec); err != nil {
		return usagef("-target: %v", err)
	}
	if !slices.Contains(runModes, *mode) {
		return usagef("-mode %q: want quick, full or soak", *mode)
	}
	if *seed != "" {
		if _, err := strconv.ParseUint(*seed, 10, 64); err != nil {
			return usagef("-seed %q: want an unsigned integer", *seed)
		}
	}
	if *every != 0 && *every < 100*time.Millisecond {
		return usagef("-progress %v: want at least 100ms, or 0", *every)
	}
	if *dir == "" {
		*dir = filepath.Join(root, "reports", "run-"+time.Now().UTC().Format("20060102T150405Z"))
	}
	if *dir, err = filepath.Abs(*dir); err != nil {
		return err
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(*dir, "go-test.log"))
	if err != nil {
		return err
	}
	defer func() { _ = logFile.Close() }()

	env := append(os.Environ(),
		target.EnvTarget+"="+*spec,
		"SPIRAL_MODE="+*mode,
		"SPIRAL_REPORT_DIR="+*dir,
		"SPIRAL_PROGRESS="+progressValue(*every),
		// One CQL store for every package, as make test has.
		"SPIRAL_SHARED_CQL="+strconv.Itoa(os.Getpid()),
	)
	if *seed != "" {
		env = append(env, "SPIRAL_SEED="+*seed)
	}
	defer removeSharedCQL(out)

	start := time.Now()
	printf(out, "spiral run: target %s, mode %s; reports in %s\n", *spec, *mode, *dir)
	var failed []string
	for _, r := range runs {
		if ctx.Err() != nil {
			break
		}
		printf(out, "spiral run: %s\n", r)
		if err := goTest(ctx, root, env, r, logFile, out); err != nil {
			failed = append(failed, fmt.Sprintf("%s (%v)", r, err))
		}
	}
	printf(out, "spiral run: %d of %d run(s) passed in %v\n", len(runs)-len(failed), len(runs), time.Since(start).Round(time.Second))
	if err := runReport(ctx, []string{*dir}, out); err != nil {
		printf(out, "spiral run: index: %v\n", err)
	} else {
		printf(out, "spiral run: index %s\n", filepath.Join(*dir, "index.html"))
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if len(failed) > 0 {
		return fmt.Errorf("failed: %s (whole output: %s)", strings.Join(failed, "; "), logFile.Name())
	}
	return nil
}

// progressValue is d as SPIRAL_PROGRESS takes it ("0" for none).
func progressValue(d time.Duration) string {
	if d == 0 {
		return "0"
	}
	return d.String()
}

// suiteRun is one SUITE[/ARM] argument: the package and the -run pattern.
type suiteRun struct {
	arg, pkg, pattern string
}

func (r suiteRun) String() string { return r.arg }

// parseRunArgs checks each SUITE[/ARM] against the suites in root.
func parseRunArgs(root string, args []string) ([]suiteRun, error) {
	suites, err := listSuites(root)
	if err != nil {
		return nil, err
	}
	if len(args) == 0 {
		return nil, usagef("want at least one suite: %s", strings.Join(suites, ", "))
	}
	var runs []suiteRun
	for _, a := range args {
		name, arm, _ := strings.Cut(strings.Trim(a, "/"), "/")
		if !slices.Contains(suites, name) {
			return nil, usagef("no suite %q: want one of %s", name, strings.Join(suites, ", "))
		}
		r := suiteRun{arg: a, pkg: "./suites/" + name}
		if arm != "" {
			// Any top-level test, then the arm's subtests by exact name.
			parts := strings.Split(arm, "/")
			for i, p := range parts {
				parts[i] = "^" + regexp.QuoteMeta(p) + "$"
			}
			r.pattern = "/" + strings.Join(parts, "/")
		}
		runs = append(runs, r)
	}
	return runs, nil
}

// listSuites returns the suite folders of root/suites (those with tests).
func listSuites(root string) ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(root, "suites"))
	if err != nil {
		return nil, fmt.Errorf("list suites: %w", err)
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() || e.Name() == "internal" {
			continue
		}
		if tests, _ := filepath.Glob(filepath.Join(root, "suites", e.Name(), "*_test.go")); len(tests) > 0 {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// spiralRoot is the module root at or above the working directory, which
// must be Spiral's: spiral run drives its suites' tests.
func spiralRoot() (string, error) {
	dir, err := target.ModuleRoot()
	if err != nil {
		return "", fmt.Errorf("%w: run spiral run from Spiral's source tree", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err != nil || !strings.Contains(string(b), "module github.com/spiral-chaos/spiral\n") {
		return "", fmt.Errorf("%s is not Spiral's source tree: spiral run drives its suites' tests from there", dir)
	}
	return dir, nil
}

// shownLine tells which lines of go test -v reach the terminal: the runner's
// progress, the tests' verdicts, the replay commands and report paths, and
// failed assertions.
var shownLine = regexp.MustCompile(`^(spiral: |=== RUN|\s*--- (PASS|FAIL|SKIP)|ok |FAIL|panic:)|replay: |report( kept)?: |Error:|Messages:`)

// goTest runs one go test, every line into log and the shown ones to out.
func goTest(ctx context.Context, root string, env []string, r suiteRun, log, out io.Writer) error {
	args := []string{"test", "-count=1", "-v", "-timeout=0"}
	if r.pattern != "" {
		args = append(args, "-run", r.pattern)
	}
	args = append(args, r.pkg)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir, cmd.Env = root, env
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) } // the tests clean up
	cmd.WaitDelay = time.Minute
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			printf(log, "%s\n", line)
			if shownLine.MatchString(line) {
				printf(out, "  %s\n", strings.TrimLeft(line, " "))
			}
		}
		_, _ = io.Copy(io.Discard, pr) // a line past the buffer: keep the child unblocked
	}()
	err := cmd.Wait()
	_ = pw.Close()
	<-done
	return err
}

// removeSharedCQL removes the CQL store container the runs shared (named
// after this process, as fixtures name it); one left behind is removed by
// the next run's sweep once this process is gone.
func removeSharedCQL(out io.Writer) {
	name := "spiral-cql-" + strconv.Itoa(os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if b, err := exec.CommandContext(ctx, "docker", "rm", "-f", name).CombinedOutput(); err != nil && !strings.Contains(string(b), "No such container") {
		printf(out, "spiral run: remove %s: %v %s (the next run's sweep removes it)\n", name, err, strings.TrimSpace(string(b)))
	}
}
