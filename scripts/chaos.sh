#!/usr/bin/env bash
# chaos.sh runs the suites and writes a report folder:
#   junit.xml     one testcase per suite and A/B arm, for CI
#   go-test.json  the raw `go test -json` stream
#   machine.txt   cores, kernel, Go, engine version and image tags
#   <suite>/...   each scenario's summary.json, timeline.json and report.html
#   index.html    a matrix of suites by arms with each test's verdict, and
#                 suite-<suite>.html, every arm of a suite on the same charts
#                 (spiral report DIR)
#   ablation/     the fixed arms again with one defence turned back per row,
#                 and ablation.html / ablation.md, the table of which
#                 budgets each row failed (spiral ablation; ABLATION=0 skips
#                 it, as the soak mode and a run of some PACKAGEs do)
# Usage: scripts/chaos.sh REPORT_DIR MODE [PACKAGE...]
#   MODE: quick, full or soak; PACKAGEs default to every suite (./suites/...)
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${1:?report dir}"
mode="${2:-full}"
shift 2 || shift $#
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

ablation=${ABLATION:-1}
if [[ $# -gt 0 ]]; then
	pkgs=$(go list "$@")
	ablation=0 # a run of some suites: no table of every suite's defences
else
	pkgs=$(go list ./suites/...)
fi

# The suites share one CQL store container, removed when this script ends.
export SPIRAL_SHARED_CQL=$$
cleanup() { docker rm -f "spiral-cql-$$" >/dev/null 2>&1 || true; }
trap cleanup EXIT

timeout=60m
[[ $mode == soak ]] && timeout=24h

# The machine the run ran on, for the index (report.MachineFile).
{
	echo "cores: $(nproc)"
	echo "kernel: $(uname -sr)"
	echo "go: $(go env GOVERSION)"
	echo "engine: $(docker version --format '{{.Server.Version}}' 2>/dev/null || echo unknown)"
	docker image ls --format '{{.Repository}}:{{.Tag}} {{.ID}}' 2>/dev/null |
		grep -E '^(spiral/|memcached|scylladb/|cassandra)' | sed 's/^/image: /' || true
	echo "mode: $mode"
} >"$dir/machine.txt"

echo "chaos: mode=$mode report=$dir" >&2
set +e
SPIRAL_MODE="$mode" SPIRAL_REPORT_DIR="$dir" \
	go run gotest.tools/gotestsum@v1.13.0 \
	--format testname \
	--junitfile "$dir/junit.xml" \
	--jsonfile "$dir/go-test.json" \
	-- -p 1 -count=1 -timeout "$timeout" $pkgs
rc=$?
set -e

if [[ $ablation != 0 && $mode != soak ]]; then
	SPIRAL_MODE="$mode" go run ./cmd/spiral ablation "$dir" || true
fi
go run ./cmd/spiral report "$dir" || true
echo "chaos: report in $dir (exit $rc)" >&2
exit $rc
