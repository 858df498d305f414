#!/usr/bin/env bash
# A long fuzzing run of one target: ./campaign.sh TARGET SECONDS [OUT]
# Builds, fuzzes TARGET from fuzz/seeds/TARGET for SECONDS (one afl-fuzz
# process; FUZZ_EXECS=N stops it after N executions if that comes first), then prints the figures the README's campaign table records.
# OUT (default /tmp/shmbus-fuzz-campaign/TARGET) keeps the queue and crashes;
# an existing OUT is resumed (AFL_AUTORESUME).
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: campaign.sh TARGET SECONDS [OUT]}
seconds=${2:?usage: campaign.sh TARGET SECONDS [OUT]}
out=${3:-/tmp/shmbus-fuzz-campaign/$target}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/target}
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
export AFL_AUTORESUME=1
cargo afl build --release
mkdir -p "$(dirname "$out")"
# Fuzz a copy: a rebuild during the run must not change the binary that
# afl-fuzz restarts after a crash.
cp "$CARGO_TARGET_DIR/release/$target" "$out.bin"
start=$(date +%s)
cargo afl fuzz -t 5000 -i "seeds/$target" -o "$out" -V "$seconds" ${FUZZ_EXECS:+-E "$FUZZ_EXECS"} \
    "$out.bin" >"$out.log" 2>&1 || {
    tail -30 "$out.log" >&2
    exit 1
}
wall=$(( $(date +%s) - start ))
stats=$out/default/fuzzer_stats
stat() { awk -v k="$1" '$1 == k { print $3 }' "$stats"; }
echo "target=$target wall_s=$wall run_time_s=$(stat run_time) execs=$(stat execs_done)" \
    "exec_per_s=$(stat execs_per_sec) edges=$(stat edges_found) corpus=$(stat corpus_count)" \
    "crashes=$(stat saved_crashes) hangs=$(stat saved_hangs) out=$out"
