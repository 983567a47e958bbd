#!/usr/bin/env bash
# Installs what the peer benchmark (bench/peers/run.py) needs on Debian 12, idempotently:
# the build dependencies (ci/setup.sh), the peers (nginx-light, haproxy, squid-openssl,
# mitmproxy), the load tools (wrk, h2load from nghttp2-client, hey), valgrind for instruction
# counts, perf for profiles, and heaptrack for massif_idle.py --heaptrack. Debian packages only. Run as root (or with sudo available).
#
#   bash bench/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh

SUDO=
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
PKGS=(nginx-light haproxy squid-openssl mitmproxy wrk nghttp2-client hey valgrind linux-perf openssl
    heaptrack python3 procps util-linux)
missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench/setup: installing ${missing[*]}"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The Debian packages start system services; the benchmark runs its own instances on
# loopback ports of its choosing and does not need them.
for svc in nginx haproxy squid; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        $SUDO systemctl stop "$svc" || true
    fi
done
echo "bench/setup: peers and load tools present"
