package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spiral-chaos/spiral/scenario/report"
)

func init() {
	register(command{
		name:    "report",
		summary: "index run reports into index.html, merging several runs' folders",
		usage: `Usage: spiral report [-o OUT] [-summary FILE] [-baseline DIR [-ratio R]] DIR...

Finds every scenario report (summary.json) under each DIR, as written by
'make chaos' or scripts/chaos.sh, writes one A/B page per suite
(suite-<suite>.html: every arm on the same charts, budgets drawn, a
verdict table), and index.html and index.json: a matrix of suites by arms
with each arm's test verdict from the nearest junit.xml (and the failed
assertion's message), its budgets, and links. It prints one line per
scenario: whether its budgets held and how many were violated. Incident
arms are expected to violate budgets; the tests' verdicts say whether
each arm did what its suite requires.

-baseline DIR compares with a previous run's report folder (one DIR as
given to spiral report, or its merged OUT): the index marks, and the
command prints, each scenario whose test verdict or budgets flipped, and
each budgeted peak that moved by more than -ratio times either way.

With one DIR and no -o, the index is written into DIR. With -o OUT, each DIR
is copied into OUT/<DIR's name> and OUT/index.html links the scenarios of
every DIR: one index over the report folders of a run's shards. A DIR already
inside OUT is indexed where it is; a name already taken in OUT gets a suffix
(-2, -3, ...); nothing in OUT is overwritten but its index and suite pages.

-summary FILE writes a Markdown summary: one row per suite (its verdict from
junit.xml), one row per scenario (its test's verdict, its budgets, its seed)
and the replay command of every failed test.

Flags come before the folders. Examples:

	spiral report reports/20250102T030405Z
	spiral report -o reports/nightly -summary summary.md shards/*
	spiral report -baseline reports/last-night reports/tonight`,
		run: runReport,
	})
}

func runReport(_ context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("report", out)
	outDir := fs.String("o", "", "write the index into `OUT`, copying each DIR into it (needed with several DIRs)")
	summaryFile := fs.String("summary", "", "also write a Markdown summary of suites, scenarios and failures to `FILE`")
	baseline := fs.String("baseline", "", "mark what changed since the previous run's report folder `DIR`")
	ratio := fs.Float64("ratio", report.DefaultPeakRatio, "with -baseline, mark a budgeted peak that moved by more than `R` times either way")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	dirs := fs.Args()
	switch {
	case len(dirs) == 0:
		return usagef("report: want at least one folder")
	case len(dirs) > 1 && *outDir == "":
		return usagef("report: %d folders need -o OUT, the folder to merge them into", len(dirs))
	case !(*ratio > 1) || math.IsInf(*ratio, 0):
		return usagef("report: -ratio %v: want a number above 1", *ratio)
	}
	// The baseline is read before anything is written: a bad one changes
	// nothing.
	var base []report.Entry
	if *baseline != "" {
		var err error
		if base, err = report.Scan(*baseline); err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
	}
	dest := *outDir
	if dest == "" {
		dest = dirs[0]
	}
	runs, err := gatherRuns(dest, dirs)
	if err != nil {
		return err
	}
	var entries []report.Entry
	for _, r := range runs {
		entries = append(entries, r.entries...)
	}
	report.SortEntries(entries)
	idx := report.Index{Entries: entries}
	if *baseline != "" {
		gone, err := report.Compare(base, entries, *ratio)
		if err != nil {
			return err
		}
		idx.Baseline = &report.Baseline{Dir: *baseline, Ratio: *ratio, Gone: gone}
	}
	if err := report.WriteSuitePages(dest, entries); err != nil {
		return err
	}
	if err := report.WriteEntries(dest, idx); err != nil {
		return err
	}
	if *summaryFile != "" {
		md, err := summarize(runs)
		if err != nil {
			return err
		}
		if err := os.WriteFile(*summaryFile, []byte(md), 0o644); err != nil {
			return fmt.Errorf("write summary: %w", err)
		}
	}
	for _, e := range entries {
		verdict := "held"
		if !e.Held {
			verdict = fmt.Sprintf("%d violation(s)", e.Violations)
		}
		printf(out, "%-40s %s\n", e.Scenario, verdict)
	}
	if idx.Baseline != nil {
		changes := report.ChangeLines(entries)
		for _, g := range idx.Baseline.Gone {
			changes = append(changes, g+": gone")
		}
		printf(out, "%d change(s) since %s:\n", len(changes), *baseline)
		for _, c := range changes {
			printf(out, "  %s\n", c)
		}
	}
	printf(out, "%d scenario report(s); index: %s/index.html\n", len(entries), dest)
	if *summaryFile != "" {
		printf(out, "summary: %s\n", *summaryFile)
	}
	return nil
}

// runFolder is one report folder given to spiral report, once it sits
// under the index's folder.
type runFolder struct {
	// rel is where its files are relative to the index's folder ("." for
	// that folder itself), with forward slashes.
	rel string
	// dir is the folder: the one given when it is inside the index's
	// folder, else its copy there.
	dir string
	// entries are its scenarios, Pages relative to the index's folder.
	entries []report.Entry
}

// gatherRuns makes every folder of srcs a subfolder of dest (or dest
// itself), copying those that are outside it, and scans each for scenario
// reports. Copies never overwrite: a name taken in dest gets a suffix.
func gatherRuns(dest string, srcs []string) ([]runFolder, error) {
	for _, src := range srcs {
		st, err := os.Stat(src)
		if err != nil {
			return nil, fmt.Errorf("report index: %w", err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("report index: %s is not a folder", src)
		}
	}
	destReal, err := realPath(dest)
	if err != nil {
		return nil, fmt.Errorf("report index: %w", err)
	}

	// Where each folder goes, relative to dest; "" for a copy still to be
	// named. Folders already inside dest take their names first.
	rels := make([]string, len(srcs))
	reals := make([]string, len(srcs))
	taken := map[string]bool{}
	seen := map[string]string{}
	for i, src := range srcs {
		real, err := realPath(src)
		if err != nil {
			return nil, fmt.Errorf("report index: %w", err)
		}
		if first, dup := seen[real]; dup {
			return nil, usagef("report: %s and %s are the same folder", first, src)
		}
		seen[real] = src
		reals[i] = real
		if rel, ok := within(destReal, real); ok {
			rels[i] = rel
			taken[strings.Split(rel, "/")[0]] = true
			continue
		}
		if _, ok := within(real, destReal); ok {
			return nil, usagef("report: -o %s is inside %s, which would be copied into itself", dest, src)
		}
	}

	if err := os.MkdirAll(dest, 0o755); err != nil {
		return nil, fmt.Errorf("report index: %w", err)
	}
	runs := make([]runFolder, len(srcs))
	for i, src := range srcs {
		rel := rels[i]
		if rel == "" {
			name, err := freeName(dest, filepath.Base(reals[i]), taken)
			if err != nil {
				return nil, err
			}
			taken[name] = true
			if err := copyTree(reals[i], filepath.Join(dest, name)); err != nil {
				return nil, fmt.Errorf("report: copy %s into %s: %w", src, dest, err)
			}
			rel = name
		}
		dir := filepath.Join(dest, filepath.FromSlash(rel))
		entries, err := report.Scan(dir)
		if err != nil {
			return nil, err
		}
		if rel != "." {
			for j := range entries {
				entries[j].Page = path.Join(rel, entries[j].Page)
				entries[j].Run = rel
			}
		}
		runs[i] = runFolder{rel: rel, dir: dir, entries: entries}
	}
	return runs, nil
}

// realPath is p absolute, with symbolic links resolved; a part of p that
// does not exist yet is kept as written.
func realPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	var missing []string
	for {
		real, err := filepath.EvalSymlinks(abs)
		if err == nil {
			return filepath.Join(append([]string{real}, missing...)...), nil
		}
		parent := filepath.Dir(abs)
		if !errors.Is(err, fs.ErrNotExist) || parent == abs {
			return "", err
		}
		missing = append([]string{filepath.Base(abs)}, missing...)
		abs = parent
	}
}

// within reports whether p is root or inside it, and p's path relative to
// root ("." for root itself), with forward slashes.
func within(root, p string) (string, bool) {
	rel, err := filepath.Rel(root, p)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", false
	}
	return filepath.ToSlash(rel), true
}

// freeName returns base, or base-2, base-3, ... : the first name neither in
// taken nor present in dir.
func freeName(dir, base string, taken map[string]bool) (string, error) {
	for n := 1; n < 1000; n++ {
		name := base
		if n > 1 {
			name = base + "-" + strconv.Itoa(n)
		}
		if taken[name] {
			continue
		}
		_, err := os.Lstat(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) {
			return name, nil
		}
		if err != nil {
			return "", fmt.Errorf("report: %w", err)
		}
	}
	return "", fmt.Errorf("report: no free name for %s in %s", base, dir)
}

// copyTree copies the folder src to dst, which must not exist. Files are
// copied by content, following symbolic links to files; a symbolic link to
// a folder is an error.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.Mkdir(target, 0o755)
		}
		return copyFile(p, target)
	})
}

func copyFile(src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer func() { _ = in.Close() }() // read only: nothing to lose on close
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, in); err != nil {
		return errors.Join(fmt.Errorf("copy %s: %w", src, err), f.Close())
	}
	return f.Close()
}
