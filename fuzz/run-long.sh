#!/usr/bin/env bash
# A long fuzzing session (docs/toolchain.md, "Fuzzing"): every fuzz target in turn for MINUTES
# each (or only the targets named), with its dictionary, starting from fuzz/corpus/<t>; what the
# run found that adds coverage is merged back into fuzz/corpus/<t> (libFuzzer -merge=1), so the
# seeds grow and can be committed. Prints each target's final stats and coverage; crashes are
# kept in build-fuzz/artifacts/<t>/ and make the script exit 1 after the last target.
#
#   bash fuzz/run-long.sh MINUTES [TARGET...]      e.g. bash fuzz/run-long.sh 30 h2 app_h2
#
# SOTH_FUZZ_TIMEOUT (seconds, default 10) is libFuzzer's -timeout for one input. It is wall
# time: on a machine busy with other work at a higher priority a fast input can be starved past
# 10 s and reported as a timeout that does not reproduce (rerun the artifact alone to tell);
# raise it there (e.g. 30).
#
# ci/test.sh runs every target for SOTH_FUZZ_SECONDS (60) on a throw-away copy of the corpus;
# this is the same build (clang, libFuzzer, ASan+UBSan, build-fuzz/) for hours instead.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    echo "usage: bash fuzz/run-long.sh MINUTES [TARGET...]  (targets: $(cd fuzz && ls ./*.cmake |
        sed 's|^\./||; s|\.cmake$||' | tr '\n' ' '))" >&2
    exit 2
}
[ $# -ge 1 ] || usage
minutes=$1
shift
case "$minutes" in '' | *[!0-9]* | 0) usage ;; esac

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz/*.cmake; do targets+=("$(basename "$f" .cmake)"); done
fi
for t in "${targets[@]}"; do
    [ -f "fuzz/$t.cmake" ] || { echo "run-long: no fuzz target '$t' (fuzz/$t.cmake)" >&2; usage; }
done

cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug -DSOTH_FUZZ=ON \
    -DSOTH_TESTS=OFF -DSOTH_BENCH=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]/#/fuzz_}" >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
printf '%-12s %8s %8s %10s %12s %s\n' target cov ft corpus execs result >"$work/summary"
for t in "${targets[@]}"; do
    bin=build-fuzz/fuzz/fuzz_$t
    seeds=fuzz/corpus/$t
    arts=build-fuzz/artifacts/$t
    mkdir -p "$seeds" "$arts" "$work/$t"
    cp -r "$seeds/." "$work/$t/"
    dict=()
    [ -f "fuzz/$t.dict" ] && dict=("-dict=fuzz/$t.dict")
    before=$(find "$seeds" -type f | wc -l)
    printf '\n==== fuzz_%s: %s min, %s seeds%s\n' "$t" "$minutes" "$before" \
        "${dict[0]:+, ${dict[0]#-dict=}}"
    rc=0
    "$bin" "${dict[@]}" -max_total_time=$((minutes * 60)) -timeout="${SOTH_FUZZ_TIMEOUT:-10}" -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$arts/" "$work/$t" >"$work/$t.log" 2>&1 || rc=$?
    # the last status line ("#N DONE cov: C ft: F corp: ...") and libFuzzer's final stats
    grep -E '^#[0-9]+' "$work/$t.log" | tail -n 1 || true
    grep -E '^stat::' "$work/$t.log" || true
    cov=$(grep -oE 'cov: [0-9]+' "$work/$t.log" | tail -n 1 | cut -d' ' -f2)
    ft=$(grep -oE 'ft: [0-9]+' "$work/$t.log" | tail -n 1 | cut -d' ' -f2)
    execs=$(grep -E '^stat::number_of_executed_units' "$work/$t.log" | awk '{print $2}')
    result=ok
    if [ "$rc" != 0 ]; then
        result="FAILED (exit $rc)"
        failed+=("$t")
        grep -E 'ERROR:|SUMMARY:|Test unit written to' "$work/$t.log" | head -n 5 || true
        echo "full log: $arts/run.log"
        cp "$work/$t.log" "$arts/run.log"
    fi
    # keep only what adds coverage to the committed seeds
    "$bin" -merge=1 -timeout="${SOTH_FUZZ_TIMEOUT:-10}" -rss_limit_mb=2048 "$seeds" "$work/$t" >"$work/$t.merge" 2>&1 ||
        { echo "merge failed (see below)"; tail -n 5 "$work/$t.merge"; failed+=("$t-merge"); }
    after=$(find "$seeds" -type f | wc -l)
    echo "corpus fuzz/corpus/$t: $before -> $after files"
    printf '%-12s %8s %8s %10s %12s %s\n' "$t" "${cov:-?}" "${ft:-?}" "$before->$after" \
        "${execs:-?}" "$result" >>"$work/summary"
done

printf '\n==== summary (%s min per target)\n' "$minutes"
cat "$work/summary"
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (inputs in build-fuzz/artifacts/<target>/)"
    exit 1
fi
