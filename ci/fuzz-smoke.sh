#!/usr/bin/env bash
# A short run of every fuzz target, so the harnesses never rot: builds
# fuzz/ once with `cargo afl build --release`, runs each bin of
# fuzz/src/bin/ (`NAME.rs` or `NAME/main.rs`) for FUZZ_SECONDS (default 20)
# from its seeds (fuzz/seeds/NAME/), prints executions and edges, and fails
# if any target saved a crash or a hang. Needs cargo-afl (.ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SECONDS:-20}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target}
# CI machines: no UI, no CPU-frequency or core-pattern checks (a crash is
# still seen: AFL++ reads the exit signal), no CPU pinning (shared runners).
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1

targets=()
for f in src/bin/*.rs src/bin/*/main.rs; do
    [ -e "$f" ] || continue
    case "$f" in
        */main.rs) name=$(basename "$(dirname "$f")") ;;
        *) name=$(basename "$f" .rs) ;;
    esac
    targets+=("$name")
done
[ ${#targets[@]} -gt 0 ] || { echo "no fuzz targets in fuzz/src/bin" >&2; exit 1; }

cargo afl build --release

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=0
printf '%-24s %12s %10s %8s %8s\n' target execs exec/s edges crashes
for t in "${targets[@]}"; do
    seeds=seeds/$t
    if [ ! -d "$seeds" ] || [ -z "$(ls -A "$seeds")" ]; then
        echo "$t: no seeds in fuzz/$seeds" >&2
        failed=1
        continue
    fi
    # -t 5000: a hang is an exec over 5 s, far above any target's normal
    # time even on a loaded runner, so a saved hang is a real loop.
    if ! cargo afl fuzz -t 5000 -i "$seeds" -o "$out/$t" -V "$seconds" \
        "$CARGO_TARGET_DIR/release/$t" >"$out/$t.log" 2>&1; then
        echo "$t: afl-fuzz failed; its log:" >&2
        tail -30 "$out/$t.log" >&2
        failed=1
        continue
    fi
    stats=$out/$t/default/fuzzer_stats
    stat() { awk -v k="$1" '$1 == k { print $3 }' "$stats"; }
    crashes=$(stat saved_crashes)
    hangs=$(stat saved_hangs)
    printf '%-24s %12s %10s %8s %8s\n' "$t" "$(stat execs_done)" "$(stat execs_per_sec)" \
        "$(stat edges_found)" "$crashes"
    if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
        echo "$t: $crashes crash(es), $hangs hang(s); inputs:" >&2
        ls "$out/$t/default/crashes" "$out/$t/default/hangs" >&2
        for c in "$out/$t"/default/crashes/id*; do
            [ -e "$c" ] || continue
            echo "--- $c ($(xxd -p "$c" | tr -d '\n' | head -c 512))" >&2
            "$CARGO_TARGET_DIR/release/$t" <"$c" 2>&1 | grep -m1 -A2 panicked >&2 || true
        done
        failed=1
    fi
done
exit $failed
