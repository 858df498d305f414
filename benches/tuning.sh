#!/usr/bin/env bash
# The measurements behind docs/tuning.md: `shmbus bench` (one-way latency
# as half a ping-pong round trip, and throughput, 64 B and 4 KiB, raw and
# typed, two threads) once per setting:
#
#   wait strategy   --wait spin | yield | block       (threads unpinned)
#   pinning         taskset -c 1: both threads share one CPU
#   THP             /sys/kernel/mm/transparent_hugepage/enabled = always
#                   rings on a tmpfs mounted huge=always (shmem huge pages)
#
# Needs root for the THP and mount steps (skipped otherwise). Restores the
# THP setting and removes the mount on exit, also on failure or Ctrl-C.
#
#   cargo build --release -p shmbus-cli
#   bash benches/tuning.sh                # SECONDS_PER_RUN=16 OUT=target/tuning
#   RUNS="spin-unpinned spin-shmem-huge" bash benches/tuning.sh   # only these
#
# Writes OUT/<run>.json (the bench's own JSON) and prints one table.
set -euo pipefail

SECS=${SECONDS_PER_RUN:-16}
OUT=${OUT:-target/tuning}
SHMBUS=${SHMBUS:-target/release/shmbus}
THP=/sys/kernel/mm/transparent_hugepage/enabled
HUGE_DIR=/tmp/shmbus-tuning-huge.$$

[ -x "$SHMBUS" ] || { echo "build it first: cargo build --release -p shmbus-cli" >&2; exit 2; }
mkdir -p "$OUT"
ROOT=$(mktemp -d /dev/shm/shmbus-tuning.XXXXXX)
THP_WAS=""
if [ -w "$THP" ]; then
    THP_WAS=$(sed -n 's/.*\[\(.*\)\].*/\1/p' "$THP")
fi

cleanup() {
    if [ -n "$THP_WAS" ]; then echo "$THP_WAS" > "$THP"; fi
    if mountpoint -q "$HUGE_DIR" 2>/dev/null; then umount "$HUGE_DIR"; fi
    rmdir "$HUGE_DIR" 2>/dev/null || true
    rm -rf "$ROOT"
}
trap cleanup EXIT INT TERM

# run NAME ROOT [PREFIX...] -- BENCH ARGS...
run() {
    local name=$1 root=$2
    shift 2
    case " ${RUNS:-$name} " in *" $name "*) ;; *) return 0 ;; esac
    local prefix=()
    while [ "$1" != "--" ]; do prefix+=("$1"); shift; done
    shift
    echo "== $name: ${prefix[*]} shmbus bench --seconds $SECS $*  (load: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    "${prefix[@]}" "$SHMBUS" --root "$root" bench --seconds "$SECS" --json "$@" > "$OUT/$name.json"
}

run spin-unpinned "$ROOT" env -- --wait spin
run yield-unpinned "$ROOT" env -- --wait yield
run block-unpinned "$ROOT" env -- --wait block
run spin-one-cpu "$ROOT" taskset -c 1 -- --wait spin
run block-one-cpu "$ROOT" taskset -c 1 -- --wait block

if [ -n "$THP_WAS" ]; then
    echo always > "$THP"
    run spin-thp-always "$ROOT" env -- --wait spin
    echo "$THP_WAS" > "$THP"
    mkdir -p "$HUGE_DIR"
    # mode=0700: the bus refuses a root that other users may write.
    mount -t tmpfs -o size=1g,huge=always,mode=0700 tmpfs "$HUGE_DIR"
    # Sample huge shmem pages while the bench runs, to show they were used.
    ( peak=0; while sleep 0.5; do
          v=$(awk '/^ShmemHugePages/ {print $2}' /proc/meminfo)
          [ "$v" -gt "$peak" ] && peak=$v && echo "$peak" > "$OUT/shmem-huge-peak-kib"
      done ) &
    sampler=$!
    run spin-shmem-huge "$HUGE_DIR" env -- --wait spin
    kill "$sampler"
    echo "peak ShmemHugePages during the huge=always run: $(cat "$OUT/shmem-huge-peak-kib" 2>/dev/null || echo 0) kB" >&2
else
    echo "skipping THP runs: $THP is not writable (not root?)" >&2
fi

# One table: per run, latency p50/p99 (µs) and throughput (M msgs/s).
printf '%-16s' run
for c in "raw 64 B" "raw 4 KiB" "typed 64 B" "typed 4 KiB"; do printf ' | %-22s' "$c p50/p99 µs, Mmsg/s"; done
echo
for f in "$OUT"/*.json; do
    printf '%-16s' "$(basename "$f" .json)"
    jq -r '
      def us: (. / 1000 * 100 | round / 100);
      [ ("raw","typed") as $api | (64,4096) as $size
        | [ .[] | select(.api == $api and .size == $size) ] as $r
        | ($r[] | select(.kind == "latency")) as $l
        | ($r[] | select(.kind == "throughput")) as $t
        | " | \($l.p50_ns | us) / \($l.p99_ns | us), \(($t.messages_per_s / 1e6 * 100 | round) / 100)" ]
      | join("")' "$f"
done
