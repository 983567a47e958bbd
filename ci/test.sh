#!/usr/bin/env bash
# The whole test suite (README Quick start, command 2; .ci/run runs exactly this):
# dependencies, format check, Release build + tests + the 3-minute soak, ASan+UBSan build + tests,
# TSan build + the concurrent tests, fuzz targets for a bounded time.
#
#   SOTH_FUZZ_SECONDS=N   seconds per fuzz target (default 45; 0 skips running them)
#   SOTH_SKIP_TSAN=1      skip the ThreadSanitizer lane
#   SOTH_SKIP_PERF_GATE=1 skip the perf gate (bench/peers/run.py --gate)
#   SOTH_SKIP_PACKAGE=1   skip the package lane (ci/package.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bash ci/setup.sh

jobs=$(nproc)
step() { printf '\n==== %s\n' "$*"; }

step "format check (clang-format)"
# The list comes from git: outside a git checkout, or with no C file found, the check fails
# instead of passing on an empty list.
command -v clang-format >/dev/null || { echo "format check: clang-format not installed" >&2; exit 1; }
sources=$(git ls-files -- '*.c' '*.h') || { echo "format check: git ls-files failed" >&2; exit 1; }
sources=$(printf '%s\n' "$sources" | grep -v -e '^fuzz/corpus/' -e '^$' || true)
if [ -z "$sources" ]; then
    echo "format check: git ls-files lists no C sources in $root; nothing was checked" >&2
    exit 1
fi
bad=0
checked=0
while IFS= read -r f; do
    checked=$((checked + 1))
    if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
        echo "not clang-format clean: $f (run clang-format -i $f)"
        bad=1
    fi
done <<<"$sources"
echo "format check: $checked files"
[ "$bad" = 0 ]

step "Python check (pyflakes)"
# The tests and benchmarks in Python: unused imports and variables, undefined names.
pysources=$(git ls-files -- '*.py') || { echo "python check: git ls-files failed" >&2; exit 1; }
[ -n "$pysources" ] || { echo "python check: git ls-files lists no Python file" >&2; exit 1; }
# shellcheck disable=SC2086 # one argument per file; no path here holds a space
/usr/bin/python3 -m pyflakes $pysources
echo "python check: $(printf '%s\n' "$pysources" | wc -l) files"

step "Release build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
step "Release tests"
(cd build && ctest --output-on-failure -j1)
# ---- soak gate (docs/migration.md, "Soak"): the mixed workload through soth-mitm (2 workers) for 3 minutes;
# fails on any client-visible error, any dropped event, or RSS/fd growth > 10 % after the
# warm-up. No skip: a missing tool is exit status 2, which fails this step like a breach.
step "soak (bench/soak/run.py --minutes 3)"
/usr/bin/python3 bench/soak/run.py --build build --minutes 3 --csv build/soak.csv

if [ "${SOTH_SKIP_PACKAGE:-0}" != 1 ]; then
    step "package (dpkg-buildpackage -b, lintian, installed into a clean tree)"
    timeout 1800 bash ci/package.sh "$root/build-pkg"
fi

step "ASan+UBSan build"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSOTH_SANITIZE=ON -DSOTH_BENCH=OFF >/dev/null
cmake --build build-asan -j"$jobs"
step "ASan+UBSan tests"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --output-on-failure -j1)

if [ "${SOTH_SKIP_TSAN:-0}" != 1 ]; then
    step "TSan build (concurrent code)"
    cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DSOTH_TSAN=ON -DSOTH_BENCH=OFF >/dev/null
    cmake --build build-tsan -j"$jobs"
    step "TSan tests (label tsan)"
    (cd build-tsan && TSAN_OPTIONS=halt_on_error=1 ctest --output-on-failure -L tsan -j1)
fi

fuzz_seconds=${SOTH_FUZZ_SECONDS:-45}
if [ "$fuzz_seconds" != 0 ] && ls fuzz/*.cmake >/dev/null 2>&1; then
    step "fuzz targets (${fuzz_seconds}s each, clang, ASan+UBSan)"
    cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DSOTH_FUZZ=ON \
        -DSOTH_TESTS=OFF -DSOTH_BENCH=OFF >/dev/null
    cmake --build build-fuzz -j"$jobs"
    for f in fuzz/*.cmake; do
        t=$(basename "$f" .cmake)
        corpus=$(mktemp -d)
        [ -d "fuzz/corpus/$t" ] && cp -r "fuzz/corpus/$t/." "$corpus/"
        dict=()
        [ -f "fuzz/$t.dict" ] && dict=("-dict=fuzz/$t.dict")
        echo "fuzz_$t"
        "build-fuzz/fuzz/fuzz_$t" "${dict[@]}" -max_total_time="$fuzz_seconds" -timeout=10 \
            -rss_limit_mb=2048 -print_final_stats=1 "$corpus" 2>&1 | tail -n 3
        rm -rf "$corpus"
    done
fi
# ---- perf gate (owned by bench/peers): soth-mitm reverse vs direct and vs nginx, h1
# and h2 small over TLS, 5 interleaved repetitions of 3 s, then instructions per request under
# callgrind (h1 small, h2 small, 1 MiB); fails on a clear regression judged as a ratio to nginx
# measured in the same run (docs/performance.md, "Perf gate (CI)").
if [ "${SOTH_SKIP_PERF_GATE:-0}" != 1 ]; then
    step "perf gate (bench/peers/run.py --gate)"
    /usr/bin/python3 bench/peers/run.py --gate --build build --no-build
fi
step "all tests passed"
