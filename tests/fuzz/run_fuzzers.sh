#!/usr/bin/env bash
# run_fuzzers.sh BUILD_DIR SECONDS - runs every libFuzzer harness of tests/fuzz
# for SECONDS each, over a copy of its seed corpus (tests/fuzz/corpus/<name>/,
# regression inputs included, so every run replays them first).
#
# BUILD_DIR is a -DFEDPEFT_FUZZ=ON build (README "Fuzzing"); harness <name> is
# BUILD_DIR/fuzz/fuzz_<name>. Any crash, sanitizer report, leak, timeout
# (-timeout=10 s per input) or RSS over 2048 MB fails that harness; its
# reproducer and log are kept and named. Prints one line per harness
# (executions, exec/s) and last `N passed, N failed`; exits 1 on any failure.
set -uo pipefail
if [ $# -ne 2 ] || ! [[ $2 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 BUILD_DIR SECONDS" >&2
    exit 2
fi
build=$1
secs=$2
src=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/fedpeft-fuzz.XXXXXX")
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export OPENBLAS_NUM_THREADS=1
passed=0
failed=0
for dir in "$src"/corpus/*/; do
    name=$(basename "$dir")
    bin=$build/fuzz/fuzz_$name
    if [ ! -x "$bin" ]; then
        echo "fuzz_$name: FAILED: $bin is missing (cmake --build $build --target fuzzers)"
        failed=$((failed + 1))
        continue
    fi
    mkdir -p "$work/$name"
    cp -r "$dir" "$work/$name/corpus"
    log=$work/$name/log
    # timeout: a harness stuck outside libFuzzer's own clock still ends.
    timeout $((secs + 120)) "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -detect_leaks=1 -print_final_stats=1 -artifact_prefix="$work/$name/" \
        "$work/$name/corpus" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    if [ $rc -eq 0 ]; then
        echo "fuzz_$name: ok: ${runs:-?} executions, ${rate:-?} exec/s, ${cov:-cov: ?}"
        passed=$((passed + 1))
        rm -rf "${work:?}/$name"
    else
        art=$(ls "$work/$name"/crash-* "$work/$name"/leak-* "$work/$name"/timeout-* \
                 "$work/$name"/oom-* 2>/dev/null | head -1)
        echo "fuzz_$name: FAILED (exit $rc) after ${runs:-?} executions; reproducer: ${art:-none}; log: $log"
        grep -m1 -E 'ERROR: |runtime error|Assertion|deadly signal' "$log" | sed 's/^/    /'
        failed=$((failed + 1))
    fi
done
[ $failed -eq 0 ] && rm -rf "$work"
echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
