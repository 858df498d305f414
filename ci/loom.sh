#!/usr/bin/env bash
# Model-checks the ring protocols with loom (bus/src/ring/loom_tests.rs; what
# each model proves is in docs/loom.md). At two preemptions the models take
# about four minutes on a 2-core machine; raise LOOM_MAX_PREEMPTIONS locally
# for a deeper (much slower) search.
#
# Then the mutation run (ci/loom-mutants.sh, about 3 minutes on 2 cores):
# every SYNC:-labelled ordering, weakened, must fail a model, or be listed
# with its reason in ci/loom-mutants.exempt. LOOM_MUTANTS=quick tries only
# the models named for each pair (does not fail on a mutant those miss);
# LOOM_MUTANTS=0 skips the mutation run.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test -p shmbus-bus --release --lib loom
case "${LOOM_MUTANTS:-full}" in
    0) ;;
    quick) bash ci/loom-mutants.sh --quick ;;
    *) bash ci/loom-mutants.sh ;;
esac
