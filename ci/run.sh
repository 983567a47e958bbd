#!/usr/bin/env bash
# README Quick start, command 1: install what is missing, build Release, run the proxy on its
# embedded default (127.0.0.1:8080, regular mode, CA generated on first run). Extra arguments
# are passed to soth-mitm.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh >&2
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target soth-mitm soth-mitm-tail >&2
cat >&2 <<'TXT'

Point a client at it, e.g.:
    curl -x http://127.0.0.1:8080 http://example.com/
    curl --cacert "${XDG_DATA_HOME:-$HOME/.local/share}/soth-mitm/soth-mitm-ca.pem" \
         -x http://127.0.0.1:8080 https://example.com/      (intercepted)
Watch its events (PATH is the "events" path in the listening line below):
    build/soth-mitm-tail PATH
Stop it with Ctrl-C (drains in-flight connections, exit 0).

TXT
exec build/soth-mitm "$@"
