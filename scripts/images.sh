#!/usr/bin/env bash
# images.sh builds the offline images Spiral falls back to when the official
# memcached and ScyllaDB images can't be pulled. Each build script is quick
# when its inputs are unchanged. Set SPIRAL_MEMCACHED_IMAGE and
# SPIRAL_CQL_IMAGE to use other images, which skips the matching build.
set -euo pipefail
cd "$(dirname "$0")/.."

can_pull() {
	docker image inspect "$1" >/dev/null 2>&1 && return 0
	timeout 120 docker pull -q "$1" >/dev/null 2>&1
}

if [[ -z ${SPIRAL_MEMCACHED_IMAGE:-} ]] && ! can_pull memcached:1.6; then
	echo "images: memcached:1.6 can't be pulled; using $(images/memcached/build.sh)" >&2
fi
if [[ -z ${SPIRAL_CQL_IMAGE:-} ]] && ! can_pull scylladb/scylla:6.2; then
	echo "images: scylladb/scylla:6.2 can't be pulled; using $(images/cassandra/build.sh)" >&2
fi
