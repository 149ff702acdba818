#!/usr/bin/env bash
# envelope.sh measures where budgets come from: it runs a suite package's
# tests COUNT times in MODE, each run into a report folder of its own, and
# ends with `spiral envelope` over them: per scenario (arm) and budget, the
# lowest and highest peak of the runs, the bound, and the bound over the
# highest peak.
#
# Usage: scripts/envelope.sh MODE COUNT PACKAGE [RUN-REGEX]
#   MODE       quick, full or soak (SPIRAL_MODE)
#   COUNT      how many runs (at least 5 to derive a budget)
#   PACKAGE    what go test runs, e.g. ./suites/batchflood
#   RUN-REGEX  go test -run, default every test
#
# It writes reports/envelope-<UTC time>/:
#   run-<i>/       run i's scenario reports (SPIRAL_REPORT_DIR) and
#                  go-test.log, the test output
#   runs.txt       one line per run: its exit status and duration
#   envelope.txt   spiral envelope over the run folders (also printed)
#   envelope.json  the same figures as JSON, every metric (-json -all)
#
# Each run needs its own folder: a scenario's report goes to
# $SPIRAL_REPORT_DIR/<scenario name>, and a second run into the same folder
# would overwrite the first. A failed run does not stop the series: an
# incident arm that was not caught, or a fixed arm over budget, is what the
# envelope is for; the failed tests are printed with the run.
#
# Exits 0 when every run passed, 1 when one failed (the envelope is still
# written), 2 on a usage error; if spiral envelope fails, with its status.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 MODE COUNT PACKAGE [RUN-REGEX]" >&2; exit 2; }
[[ $# -ge 3 && $# -le 4 ]] || usage
mode=$1 count=$2 pkg=$3 run=${4:-.}
case $mode in quick | full | soak) ;; *) echo "envelope: MODE $mode: want quick, full or soak" >&2; usage ;; esac
[[ $count =~ ^[1-9][0-9]*$ ]] || { echo "envelope: COUNT $count: want a positive number" >&2; usage; }

timeout=60m
[[ $mode == soak ]] && timeout=24h

# One folder per series; a second series started in the same second gets
# a suffix instead of sharing it.
mkdir -p reports
base="reports/envelope-$(date -u +%Y%m%dT%H%M%SZ)"
dir=$base
for n in $(seq 2 100); do
	mkdir "$dir" 2>/dev/null && break
	dir="$base-$n"
done
[[ -d $dir ]] || { echo "envelope: no free folder for $base" >&2; exit 1; }
dir="$(cd "$dir" && pwd)"

# The runs share one CQL store container, removed when this script ends.
export SPIRAL_SHARED_CQL=$$
cleanup() { docker rm -f "spiral-cql-$$" >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "envelope: $count run(s) of $pkg (-run '$run') in $mode mode into $dir" >&2
folders=()
failed=0
for i in $(seq 1 "$count"); do
	out="$dir/run-$i"
	mkdir "$out"
	folders+=("$out")
	echo "envelope: run $i/$count ..." >&2
	start=$SECONDS
	set +e
	SPIRAL_MODE="$mode" SPIRAL_REPORT_DIR="$out" \
		go test -count=1 -p 1 -timeout "$timeout" -v -run "$run" "$pkg" >"$out/go-test.log" 2>&1
	rc=$?
	set -e
	took=$((SECONDS - start))
	echo "run-$i rc=$rc ${took}s" >>"$dir/runs.txt"
	if [[ $rc -eq 0 ]]; then
		echo "envelope: run $i/$count passed in ${took}s" >&2
		continue
	fi
	failed=$((failed + 1))
	echo "envelope: run $i/$count FAILED (exit $rc) in ${took}s; output in $out/go-test.log" >&2
	grep -E '^\s*--- FAIL|^(FAIL|panic:)' "$out/go-test.log" | sed 's/^/envelope:   /' >&2 || true
done

go run ./cmd/spiral envelope -json -all "${folders[@]}" >"$dir/envelope.json"
go run ./cmd/spiral envelope "${folders[@]}" | tee "$dir/envelope.txt"
echo "envelope: $((count - failed)) of $count run(s) passed; envelope in $dir/envelope.txt" >&2
[[ $failed -eq 0 ]] || exit 1
