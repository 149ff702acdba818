#!/usr/bin/env bash
# test.sh runs the project's tests in quick mode: go vet, then every
# package's tests one binary at a time. The binaries share one CQL store
# container (SPIRAL_SHARED_CQL), removed when this script ends.
#
# JUNIT=path (from the repository's root): run the tests through gotestsum
# ($GOTESTSUM, default the version the Makefile pins) and write a JUnit XML
# report there as well; the tests run and the exit status are the same.
set -euo pipefail
cd "$(dirname "$0")/.."

export SPIRAL_SHARED_CQL=$$
cleanup() { docker rm -f "spiral-cql-$$" >/dev/null 2>&1 || true; }
trap cleanup EXIT

go vet ./...
export SPIRAL_MODE="${SPIRAL_MODE:-quick}"
gotest=(go test)
if [[ -n ${JUNIT:-} ]]; then
	mkdir -p "$(dirname "$JUNIT")"
	read -ra gotestsum <<<"${GOTESTSUM:-go run gotest.tools/gotestsum@v1.13.0}"
	gotest=("${gotestsum[@]}" --format testname --junitfile "$JUNIT" --)
fi
"${gotest[@]}" -p 1 -count=1 -timeout 14m "$@" ./...
