#!/usr/bin/env bash
# Model-checks the ring protocol with loom (bus/src/ring/loom_tests.rs).
# Two preemptions explore every interleaving of the 64-byte-ring models in
# about a second each on a 2-core machine; raise LOOM_MAX_PREEMPTIONS locally
# for a deeper (much slower) search.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom"
cargo test -p shmbus-bus --release --lib loom
