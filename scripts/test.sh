#!/usr/bin/env bash
# test.sh runs the project's tests in quick mode: go vet, then every
# package's tests one binary at a time. The binaries share one CQL store
# container (SPIRAL_SHARED_CQL), removed when this script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

export SPIRAL_SHARED_CQL=$$
cleanup() { docker rm -f "spiral-cql-$$" >/dev/null 2>&1 || true; }
trap cleanup EXIT

go vet ./...
SPIRAL_MODE="${SPIRAL_MODE:-quick}" go test -p 1 -count=1 -timeout 14m "$@" ./...
