#!/usr/bin/env bash
# The fresh-machine lane (docs/toolchain.md, "Fresh-machine lane"): builds a clean Debian 12
# minbase root with debootstrap, from the mirror this host's apt sources use, clones the
# committed HEAD of this repository into it and runs the README's two Quick start commands
# there, as a new user would:
#   1. `bash ci/run.sh`: the proxy on its embedded default must listen on 127.0.0.1:8080 and
#      answer a plain request through it (curl -x to a local origin in the same root);
#   2. `CI=true bash ci/test.sh`: the whole test suite.
# Each lane is reported with its minutes; exit status 0 only when both passed.
#
#   sudo bash ci/fresh-root.sh [DIR]     # DIR: where the root goes (default: a new temp dir)
#
# Takes about 30 minutes on 2 cores (most of it the test suite). Needs root (debootstrap,
# chroot, bind mounts). The root shares the host's network namespace: port 8080 must be free.
# Start-up of services inside the root is disabled (policy-rc.d), as in a container.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
if [ "$(id -u)" != 0 ]; then
    echo "fresh-root: run as root (debootstrap and chroot)" >&2
    exit 2
fi
root=${1:-$(mktemp -d /var/tmp/soth-fresh-root.XXXXXX)}
# mktemp makes it 0700: the root's "/" must be 0755, as on any machine, or every user but root
# is refused everywhere in it (squid, which the tests run, drops to user proxy: "Permission
# denied" for its cache.log in a 0777 directory and its segments in /dev/shm).
mkdir -p "$root"
chmod 0755 "$root"

if ! command -v debootstrap >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
fi

# The mirror the host already uses (deb822 sources first, then the one-line format).
mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' |
    grep -v security | head -1 || true)
if [ -z "$mirror" ]; then
    mirror=$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' |
        grep -v security | head -1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

mounted=()
cleanup() {
    set +e
    [ -n "${proxy_pid:-}" ] && chroot "$root" pkill -f 'build/soth-mitm' 2>/dev/null
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[$i]}"; done
}
trap cleanup EXIT
bind() { # bind SRC under the root and remember it for the clean-up
    mkdir -p "$root$1"
    mount --bind "$1" "$root$1"
    mounted+=("$root$1")
}

t0=$(date +%s)
lane_start() {
    printf '\n==== fresh-root: %s\n' "$1"
    ls=$(date +%s)
}
lane_end() { printf '==== fresh-root: %s: %s (%d min)\n' "$1" "$2" $((($(date +%s) - ls + 59) / 60)); }

lane_start "debootstrap bookworm minbase from $mirror"
if [ ! -x "$root/bin/bash" ]; then
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.debootstrap.log" 2>&1 ||
        { tail -20 "$root.debootstrap.log"; lane_end "debootstrap" FAILED; exit 1; }
fi
lane_end "debootstrap" ok

# No service starts inside the root (nginx-light's postinst would start one on port 80).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The root becomes a mount point of its own, as / is on any machine: `ip netns exec` and
# `ip -n` run `mount --make-rslave /` in a new mount namespace, which fails on a plain
# directory (the HTTP/3 tests' namespaces need it). Binds below go on top of it.
mount --bind "$root" "$root"
mounted+=("$root")
bind /proc
bind /sys
bind /dev
bind /dev/pts
# /dev above is not recursive: a /dev/shm of its own, writable by all as on any machine.
mkdir -p "$root/dev/shm"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
mounted+=("$root/dev/shm")

# A fresh clone of what is committed (the work tree's uncommitted changes are not in it).
rm -rf "$root/root/soth-mitm"
git clone -q "$repo" "$root/root/soth-mitm"
# git itself is not in minbase: the clone above was made from outside. The format check runs
# `git ls-files`, which ci/setup.sh's package list covers (git).
in_root() { chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM=dumb "$@"; }
in_root /bin/bash -c 'apt-get update -q >/dev/null' # package lists, as on any new machine

status=0
lane_start "README command 1: bash ci/run.sh (proxy on its embedded default)"
in_root /bin/bash -c 'cd /root/soth-mitm && exec bash ci/run.sh' >"$root/run.log" 2>&1 &
proxy_pid=$!
ok=0
for _ in $(seq 1 900); do # setup + build can take minutes; bounded at 15 minutes
    if grep -q 'listening' "$root/run.log" 2>/dev/null; then
        ok=1
        break
    fi
    if ! kill -0 "$proxy_pid" 2>/dev/null; then break; fi
    sleep 1
done
if [ "$ok" = 1 ]; then
    # A local origin inside the root and one request through the proxy.
    # The root shares the host's network: the origin's port must be ours alone (a server left
    # on it would answer instead and the check would read someone else's page).
    if in_root python3 -c 'import socket; socket.create_connection(("127.0.0.1", 18081), 1)' \
        2>/dev/null; then
        echo "fresh-root: 127.0.0.1:18081 is already in use; free it and run again" >&2
        exit 1
    fi
    in_root /bin/bash -c 'mkdir -p /tmp/origin && echo fresh-root-ok >/tmp/origin/index.html &&
        cd /tmp/origin && exec python3 -m http.server --bind 127.0.0.1 18081' >/dev/null 2>&1 &
    sleep 2
    body=$(in_root curl -sS --max-time 10 -x http://127.0.0.1:8080 http://127.0.0.1:18081/ || true)
    # in_root is a function: $! would be its subshell, not the server; stop it by its command.
    in_root pkill -f 'http.server --bind 127.0.0.1 18081' 2>/dev/null || true
    [ "$body" = fresh-root-ok ] || ok=0
    echo "through the proxy: ${body:-<nothing>}"
fi
in_root pkill -INT -f 'build/soth-mitm' 2>/dev/null || true
wait "$proxy_pid" 2>/dev/null || true
proxy_pid=
if [ "$ok" = 1 ]; then lane_end "README command 1" ok; else
    tail -30 "$root/run.log"
    lane_end "README command 1" FAILED
    status=1
fi

lane_start "README command 2: CI=true bash ci/test.sh"
if in_root /bin/bash -c 'cd /root/soth-mitm && CI=true bash ci/test.sh' >"$root/test.log" 2>&1; then
    grep '^====' "$root/test.log" || true
    lane_end "README command 2" ok
else
    grep '^====' "$root/test.log" || true
    tail -40 "$root/test.log"
    lane_end "README command 2" FAILED
    status=1
fi
printf '\nfresh-root: %s in %d min (root %s, logs run.log/test.log there)\n' \
    "$([ $status = 0 ] && echo passed || echo FAILED)" $((($(date +%s) - t0 + 59) / 60)) "$root"
exit $status
