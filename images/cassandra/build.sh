#!/usr/bin/env bash
# Builds spiral/cassandra:5.0-<hash>, a FROM-scratch image of Apache Cassandra 5.0
# assembled only from package registries: the jars from Maven Central (pom.xml), the
# JRE and its shared libraries from this machine's Debian OpenJDK 17.
#
# Usage: images/cassandra/build.sh        prints the image tag on stdout, nothing else
#
# Tag: spiral/cassandra:5.0-<first 12 hex of sha256 over pom.xml, cassandra.yaml,
# logback.xml, this script and the JDK's release file>. Also tagged spiral/cassandra:local.
# When the tag already exists the script only prints it (well under a second).
#
# Ports at run time (no shell in the image): ENTRYPOINT is java with the fixed flags
# and the classpath; CMD is only the main class, so the ports default to cassandra.yaml
# (9042 native, 7000 storage). Cassandra 5.0's DatabaseDescriptor.getNativeTransportPort()
# and getStoragePort() prefer the system properties cassandra.native_transport_port and
# cassandra.storage_port over the yaml. A fixture sets them with either
#   Cmd ["-Dcassandra.native_transport_port=N", "-Dcassandra.storage_port=M",
#        "org.apache.cassandra.service.CassandraDaemon"]     (main class last), or
#   Env JAVA_TOOL_OPTIONS="-Dcassandra.native_transport_port=N -Dcassandra.storage_port=M"
#   (the JVM then prints "Picked up JAVA_TOOL_OPTIONS: ..." on stderr).
# Run with --network host; ready when the log says
#   "Starting listening for CQL clients on /127.0.0.1:<port>".
#
# Environment: SPIRAL_CASSANDRA_JDK (default /usr/lib/jvm/java-17-openjdk-amd64),
# XDG_CACHE_HOME (jars and build context go to $XDG_CACHE_HOME/spiral/cassandra).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
jdk=${SPIRAL_CASSANDRA_JDK:-/usr/lib/jvm/java-17-openjdk-amd64}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/spiral/cassandra
inputs=("$here/pom.xml" "$here/cassandra.yaml" "$here/logback.xml" "$here/build.sh")

log() { printf 'cassandra image: %s\n' "$*" >&2; }
fail() { # step, hint
	log "FAILED at step: $1"
	log "retry: $2"
	exit 1
}

[ -f "$jdk/release" ] && [ -x "$jdk/bin/java" ] ||
	fail "prerequisites" "install Debian's OpenJDK 17 (apt-get install openjdk-17-jdk-headless) or set SPIRAL_CASSANDRA_JDK, then rerun $0"

hash=$(cat "${inputs[@]}" "$jdk/release" | sha256sum | cut -c1-12)
tag="spiral/cassandra:5.0-$hash"

if docker image inspect "$tag" >/dev/null 2>&1; then
	echo "$tag"
	exit 0
fi

command -v docker >/dev/null && docker version >/dev/null 2>&1 ||
	fail "prerequisites" "start the Docker engine (see DESIGN.md: host networking only), then rerun $0"

mkdir -p "$cache"
# One build at a time per cache; a waiting build finds the finished image.
exec 9>"$cache/.lock"
flock 9
if docker image inspect "$tag" >/dev/null 2>&1; then
	echo "$tag"
	exit 0
fi

start=$SECONDS

# ---- step 1: mvn fetch -----------------------------------------------------------
pomhash=$(sha256sum "$here/pom.xml" | cut -c1-12)
jars="$cache/jars-$pomhash"
if [ ! -f "$jars/.complete" ]; then
	log "fetching Cassandra jars with Maven into $jars"
	command -v mvn >/dev/null || fail "mvn fetch" "install Maven (apt-get install maven), then rerun $0"
	rm -rf "$jars" "$cache/mvn"
	mkdir -p "$cache/mvn"
	cp "$here/pom.xml" "$cache/mvn/pom.xml" # mvn may write target/ beside the pom
	if ! (cd "$cache/mvn" && JAVA_HOME="$jdk" mvn -B -q dependency:copy-dependencies \
		-DincludeScope=runtime -DoutputDirectory="$jars") >&2; then
		fail "mvn fetch" "check that Maven Central is reachable (mvn -f $here/pom.xml dependency:resolve), then rerun $0"
	fi
	ls "$jars"/cassandra-all-*.jar "$jars"/jamm-*.jar >/dev/null 2>&1 ||
		fail "mvn fetch" "cassandra-all or jamm missing from $jars; delete it and rerun $0"
	touch "$jars/.complete"
fi

# ---- step 2: context assembly ----------------------------------------------------
assemble() {
	local ctx=$1 root=$1/rootfs
	rm -rf "$ctx"
	mkdir -p "$root"/opt/java "$root"/opt/cassandra/lib "$root"/opt/cassandra/conf \
		"$root"/opt/cassandra/triggers "$root"/usr/lib64 "$root"/etc "$root"/tmp \
		"$root"/var/lib/cassandra/{data,commitlog,hints,saved_caches,cdc_raw}
	chmod 1777 "$root/tmp"
	ln -s usr/lib "$root/lib"
	ln -s usr/lib64 "$root/lib64"

	# JRE: the JDK with symlinks resolved, without what only compilers and GUIs use.
	local -a excl=(--exclude=./jmods --exclude=./include --exclude=./man --exclude=./docs
		--exclude=./demo --exclude=./lib/ct.sym --exclude=./lib/src.zip
		--exclude=./lib/libatk-wrapper.so --exclude=./lib/libawt_xawt.so
		--exclude=./lib/libsplashscreen.so --exclude=./lib/libjawt.so --exclude=./lib/libjsound.so)
	local l
	while IFS= read -r l; do excl+=("--exclude=$l"); done < <(cd "$jdk" && find . -xtype l)
	tar -C "$jdk" -chf - "${excl[@]}" . | tar -C "$root/opt/java" -xf -

	# Jars, without the native builds for other systems.
	local j
	for j in "$jars"/*.jar; do
		case "$(basename "$j")" in
		*osx* | *windows* | *aarch_64* | *riscv64* | *macos*) ;;
		*) cp "$j" "$root/opt/cassandra/lib/" ;;
		esac
	done
	cp "$here/cassandra.yaml" "$here/logback.xml" "$root/opt/cassandra/conf/"

	# Shared libraries: everything ldd finds for the JRE's ELF files, plus what native
	# code unpacked from jars at run time expects (netty epoll wants libdl/librt/libm,
	# snappy the C++ runtime) and glibc's resolver and NSS modules.
	local -a elfs=()
	while IFS= read -r l; do elfs+=("$l"); done < <(find "$root/opt/java" -type f \( -name '*.so' -o -path '*/bin/*' \))
	local sys
	for sys in libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1 libresolv.so.2 \
		libnss_files.so.2 libnss_dns.so.2 libutil.so.1 libanl.so.1 libmvec.so.1 \
		libstdc++.so.6 libgcc_s.so.1 libz.so.1; do
		elfs+=("$(ldconfig -p | awk -v n="$sys" '$1 == n && /x86-64/ {print $NF; exit}')")
	done
	local libs
	libs=$( {
		printf '%s\n' "${elfs[@]}" | grep '^/usr/lib\|^/lib' || true
		# (ldd of several files heads each one's list with "path:", not a library)
		{ ldd "${elfs[@]}" 2>/dev/null || true; } | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $1 !~ /:$/ {print $1}'
	} | sort -u)
	for l in $libs; do
		local real dest
		real=$(readlink -f "$l")
		case "$l" in
		/lib64/*) dest=/usr/lib64/$(basename "$l") ;;
		/lib/*) dest=/usr$l ;;
		*) dest=$l ;;
		esac
		mkdir -p "$root$(dirname "$dest")"
		cp "$real" "$root$dest"
	done
	[ -e "$root/usr/lib64/ld-linux-x86-64.so.2" ] || { log "dynamic loader not found by ldd"; return 1; }

	printf 'root:x:0:0:root:/root:/nonexistent\n' >"$root/etc/passwd"
	printf 'root:x:0:\n' >"$root/etc/group"
	printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"

	local jamm
	jamm=$(cd "$root/opt/cassandra/lib" && ls jamm-*.jar | head -n1)
	local cver
	cver=$(cd "$root/opt/cassandra/lib" && ls cassandra-all-*.jar | sed 's/cassandra-all-\(.*\)\.jar/\1/')

	local -a exports=(java.base/jdk.internal.misc java.management.rmi/com.sun.jmx.remote.internal.rmi
		java.rmi/sun.rmi.registry java.rmi/sun.rmi.server java.sql/java.sql java.base/java.lang.ref
		jdk.unsupported/sun.misc jdk.compiler/com.sun.tools.javac.file jdk.attach/sun.tools.attach
		java.management/com.sun.jmx.remote.security)
	local -a opens=(java.base/java.lang.module java.base/jdk.internal.loader java.base/jdk.internal.ref
		java.base/jdk.internal.reflect java.base/jdk.internal.math java.base/jdk.internal.module
		java.base/jdk.internal.util.jar jdk.management/com.sun.management.internal java.base/sun.nio.ch
		java.base/java.io java.base/java.lang.reflect jdk.compiler/com.sun.tools.javac
		java.base/java.lang java.base/java.util java.base/java.nio)
	local -a args=(/opt/java/bin/java
		-Xms512m -Xmx1g -Xss256k -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError -XX:+UseThreadPriorities -XX:+PerfDisableSharedMem
		-XX:+UseTLAB -XX:+ResizeTLAB -XX:StringTableSize=1000003
		-ea -da:net.openhft... -Djava.net.preferIPv4Stack=true -Djava.io.tmpdir=/tmp
		-Djdk.attach.allowAttachSelf=true -Dio.netty.tryReflectionSetAccessible=true
		-Dio.netty.allocator.useCacheForAllThreads=true -Dio.netty.allocator.maxOrder=11)
	for l in "${exports[@]}"; do args+=(--add-exports "$l=ALL-UNNAMED"); done
	for l in "${opens[@]}"; do args+=(--add-opens "$l=ALL-UNNAMED"); done
	args+=("-javaagent:/opt/cassandra/lib/$jamm"
		-Dcassandra-foreground=yes
		-Dcassandra.skip_wait_for_gossip_to_settle=0
		-Dcassandra.config=file:///opt/cassandra/conf/cassandra.yaml
		-Dlogback.configurationFile=file:///opt/cassandra/conf/logback.xml
		-Dcassandra.storagedir=/var/lib/cassandra
		-Dcassandra.logdir=/tmp
		-Dcassandra.triggers_dir=/opt/cassandra/triggers
		-cp '/opt/cassandra/lib/*')
	# Only the main class: JAVA_TOOL_OPTIONS is read before the command line, so
	# port properties here would shadow the ones a fixture puts in that variable.
	local -a cmd=(org.apache.cassandra.service.CassandraDaemon)
	json() { local s='[' a; for a in "$@"; do s+="\"$a\", "; done; printf '%s]' "${s%, }"; }

	cat >"$ctx/Dockerfile" <<-EOF
		FROM scratch
		COPY rootfs/ /
		ENV JAVA_HOME=/opt/java PATH=/opt/java/bin LANG=C.UTF-8
		WORKDIR /opt/cassandra
		LABEL org.spiral.cassandra.version="$cver" org.spiral.inputs="$hash"
		STOPSIGNAL SIGTERM
		ENTRYPOINT $(json "${args[@]}")
		CMD $(json "${cmd[@]}")
	EOF
}
ctx="$cache/context"
log "assembling build context in $ctx"
assemble "$ctx" || fail "context assembly" "check the JDK at $jdk and free space under $cache, then rerun $0"

# ---- step 3: docker build ----------------------------------------------------------
log "docker build $tag"
if ! docker build --network none -t "$tag" -t spiral/cassandra:local "$ctx" >&2; then
	fail "docker build" "check 'docker info' and free space under the Docker root, then rerun $0"
fi
rm -rf "$ctx"
log "built $tag in $((SECONDS - start))s"
echo "$tag"
