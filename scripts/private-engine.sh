#!/usr/bin/env bash
# private-engine.sh runs a command against a brand-new Docker engine that it
# starts for that command alone, then tears the engine down: no network,
# image, container or volume of the machine's own engine (or of an earlier
# run) can be seen by the command, so a green run proves the set-up works
# on a fresh machine.
#
# Usage: scripts/private-engine.sh COMMAND [ARGS...]
#        (.ci/run uses it as root; `make test ENGINE=private` too)
#
# The engine lives in a temporary folder, /tmp/spiral-engine.XXXXXX:
#   data/  exec/  docker.sock  dockerd.pid  dockerd.log  daemon.json  owner
# It has its own data root, exec root, pid file, socket (DOCKER_HOST points
# at it), containerd namespaces and cgroup parent (/spiral-engine-XXXXXX),
# host networking only: no bridge, no iptables, no IP forwarding or masquerade,
# no userland proxy. The machine's own engine, if one runs, is not touched.
#
# On exit, failure, Ctrl-C or SIGTERM the engine's containers are removed,
# dockerd and its containerd stopped, the folder's mounts undone, the folder
# and the cgroup parent removed. Engines left by a run that was killed outright
# (its owner pid gone) are torn down the same way when the next run starts.
#
# Images are built on the fresh engine by `make images`; their inputs (Maven's
# jars, Go's module and build caches) stay cached outside it.
#
# Needs root and dockerd (Debian's docker.io is installed when missing, as by
# scripts/setup-engine.sh). Prints progress on stderr; exits with COMMAND's
# status.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix=/tmp/spiral-engine.

log() { echo "private-engine: $*" >&2; }

[[ $# -gt 0 ]] || { echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; }
if [[ $(id -u) -ne 0 ]]; then
	log "needs root to start dockerd; run as root, or use the engine that answers now (make test without ENGINE=private)"
	exit 2
fi
"$here/setup-engine.sh" --install-only

# teardown DIR: remove everything the engine in DIR left, whatever state it is in.
teardown() {
	local dir=$1 id pid sock
	id=${dir#"$prefix"}
	sock="unix://$dir/docker.sock"
	if [[ -S $dir/docker.sock ]] && DOCKER_HOST=$sock timeout 10 docker info >/dev/null 2>&1; then
		local ids
		ids=$(DOCKER_HOST=$sock docker ps -aq 2>/dev/null || true)
		# shellcheck disable=SC2086
		[[ -z $ids ]] || DOCKER_HOST=$sock timeout 60 docker rm -f $ids >/dev/null 2>&1 || true
	fi
	pid=$(cat "$dir/dockerd.pid" 2>/dev/null || true)
	if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 1 80); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	# containerd and its shims, had dockerd died without stopping them.
	local p
	for p in $(pgrep -f -- "$dir/" 2>/dev/null || true); do
		[[ $p == "$$" ]] || kill -KILL "$p" 2>/dev/null || true
	done
	# Mounts under the folder (overlay layers, shm, netns), deepest first.
	local m
	while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done < <(awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r)
	rm -rf "$dir" 2>/dev/null || { sleep 1; rm -rf "$dir"; }
	# The cgroup parent, in every hierarchy (cgroup v1) or the unified one.
	local cg
	for cg in /sys/fs/cgroup/spiral-engine-"$id" /sys/fs/cgroup/*/spiral-engine-"$id"; do
		[[ -d $cg ]] && find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
	done
	return 0
}

# Engines whose owner is gone were left by a run killed outright.
for old in "$prefix"*; do
	[[ -d $old ]] || continue
	owner=$(cat "$old/owner" 2>/dev/null || true)
	if [[ -z $owner ]] || ! kill -0 "$owner" 2>/dev/null; then
		log "removing the engine left by an earlier run in $old"
		teardown "$old"
	fi
done

dir=$(mktemp -d "${prefix}XXXXXX")
id=${dir#"$prefix"}
echo $$ >"$dir/owner"
finish() {
	local rc=$?
	trap - EXIT INT TERM
	log "tearing down the engine in $dir"
	teardown "$dir"
	exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$dir/data" "$dir/exec"
# An empty configuration: nothing in /etc/docker/daemon.json applies.
echo '{}' >"$dir/daemon.json"
log "starting a private dockerd in $dir (log: $dir/dockerd.log)"
setsid dockerd \
	--config-file "$dir/daemon.json" \
	--data-root "$dir/data" --exec-root "$dir/exec" \
	--pidfile "$dir/dockerd.pid" -H "unix://$dir/docker.sock" \
	--containerd-namespace "spiral-$id" --containerd-plugins-namespace "spiral-$id-plugins" \
	--cgroup-parent "/spiral-engine-$id" \
	--bridge=none --iptables=false --ip6tables=false \
	--ip-forward=false --ip-masq=false --userland-proxy=false \
	>"$dir/dockerd.log" 2>&1 </dev/null &
export DOCKER_HOST="unix://$dir/docker.sock"
up=
for _ in $(seq 1 120); do
	if docker info >/dev/null 2>&1; then up=1; break; fi
	sleep 0.25
done
if [[ -z $up ]]; then
	log "dockerd did not answer within 30s; last lines of $dir/dockerd.log:"
	tail -n 20 "$dir/dockerd.log" >&2 || true
	exit 1
fi
log "engine $(docker version -f '{{.Server.Version}}') answers on $DOCKER_HOST; networks: $(docker network ls --format '{{.Name}}' | tr '\n' ' ')"

set +e
"$@"
rc=$?
set -e
exit "$rc"
