#!/usr/bin/env bash
# setup-engine.sh makes sure a Docker engine answers, and says in one line what
# is missing when it can't.
#
# Where no engine runs and we are root on Debian (a fresh CI machine), it
# installs Debian's docker.io and starts dockerd in the background for host
# networking only: no bridge, no iptables, no IP forwarding, so no container
# traffic can leave loopback. Its log goes to $SPIRAL_STATE/dockerd.log.
# Idempotent; returns in well under a second when an engine already answers.
#
# --install-only: install dockerd if missing and start nothing
# (scripts/private-engine.sh starts its own).
set -euo pipefail

install_only=
[[ ${1:-} == --install-only ]] && install_only=1

state="${SPIRAL_STATE:-/tmp/spiral}"
mkdir -p "$state"

engine_up() { docker info >/dev/null 2>&1; }

if [[ $(uname -s) != Linux ]]; then
	echo "setup: Spiral runs on Linux only (its probes read /proc and netlink sock_diag; its faults use Linux socket options and cgroups); run it on a Linux machine or VM" >&2
	exit 1
fi

if [[ -z $install_only ]] && command -v docker >/dev/null 2>&1 && engine_up; then
	exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
	echo "setup: no Docker engine answers; start Docker (Docker Desktop, or 'sudo systemctl start docker') or run as root on Debian to have Spiral install docker.io" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "setup: no Docker engine answers and this is not Debian; install and start a Docker engine, then retry" >&2
	exit 1
fi

if [[ -n $install_only ]] && command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; then
	exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
	echo "setup: installing Debian's docker.io (log: $state/apt.log)" >&2
	# RUNLEVEL=1: the package's init script must not start an engine of its
	# own (with a bridge, iptables and state in /var/lib/docker).
	export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
	if ! apt-get install -y --no-install-recommends docker.io >"$state/apt.log" 2>&1; then
		apt-get update >>"$state/apt.log" 2>&1 || true
		apt-get install -y --no-install-recommends docker.io >>"$state/apt.log" 2>&1 || {
			echo "setup: apt-get install docker.io failed; see $state/apt.log, then retry 'make setup'" >&2
			exit 1
		}
	fi
fi
if ! command -v docker >/dev/null 2>&1; then
	echo "setup: dockerd is installed but the docker client is missing; install docker.io's client" >&2
	exit 1
fi
[[ -z $install_only ]] || exit 0

if ! { [[ -f $state/dockerd.pid ]] && kill -0 "$(cat "$state/dockerd.pid")" 2>/dev/null; }; then
	echo "setup: starting dockerd for host networking only (log: $state/dockerd.log)" >&2
	# setsid: dockerd outlives this script and the make that ran it.
	setsid dockerd \
		--bridge=none --iptables=false --ip6tables=false \
		--ip-forward=false --ip-masq=false --userland-proxy=false \
		--pidfile "$state/dockerd.pid" \
		>"$state/dockerd.log" 2>&1 </dev/null &
fi

for _ in $(seq 1 120); do
	if engine_up; then
		exit 0
	fi
	sleep 0.25
done
echo "setup: dockerd did not answer within 30s; last lines of $state/dockerd.log:" >&2
tail -n 20 "$state/dockerd.log" >&2 || true
exit 1
