#!/usr/bin/env bash
# build.sh builds spiral/memcached, a FROM-scratch image holding Debian's
# memcached binary and the shared libraries it links, for machines that can't
# pull the official memcached image. It needs nothing but Debian's packages.
#
# The tag is spiral/memcached:1.6-<hash of the inputs>, also tagged
# spiral/memcached:local. When that tag exists the script prints it and exits
# at once: the image is rebuilt only when its inputs change. Prints the tag on
# stdout; progress and errors go to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin=/usr/bin/memcached

fail() { echo "images/memcached: $1 failed; $2" >&2; exit 1; }

if [[ ! -x $bin ]]; then
	[[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null ||
		fail "finding $bin" "install Debian's memcached package (apt-get install memcached), then retry 'make images'"
	echo "images/memcached: installing Debian's memcached package for its binary" >&2
	# The package's service must not start: policy-rc.d says no for this call.
	log="${SPIRAL_STATE:-/tmp/spiral}/apt-memcached.log"
	mkdir -p "$(dirname "$log")"
	DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y --no-install-recommends memcached >"$log" 2>&1 ||
		fail "apt-get install memcached (log: $log)" "run 'apt-get update' and retry 'make images'"
fi

version="$($bin -V | awk '{print $2}')"
hash="$( { cat "$0"; echo "$version"; sha256sum "$bin"; } | sha256sum | cut -c1-12)"
tag="spiral/memcached:${version%.*}-$hash"

if docker image inspect "$tag" >/dev/null 2>&1; then
	docker tag "$tag" spiral/memcached:local
	echo "$tag"
	exit 0
fi

echo "images/memcached: building $tag from $bin ($version)" >&2
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/root/tmp"
chmod 1777 "$ctx/root/tmp"
for f in "$bin" $(ldd "$bin" | grep -o '/[^ ]*'); do
	cp --parents -L "$f" "$ctx/root/" || fail "copying $f into the build context" "check that $bin runs, then retry"
done
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY root/ /
# nobody: memcached refuses to run as root without -u.
USER 65534:65534
ENTRYPOINT ["/usr/bin/memcached"]
CMD ["-l", "127.0.0.1", "-p", "11211", "-U", "0"]
DOCKERFILE
docker build -q -t "$tag" -t spiral/memcached:local "$ctx" >&2 ||
	fail "docker build" "check that a Docker engine answers ('make setup'), then retry 'make images'"
echo "$tag"
