#!/usr/bin/env bash
# Model-checks the ring protocols with loom (bus/src/ring/loom_tests.rs; what
# each model proves is in docs/loom.md). At two preemptions the models take
# about two minutes on a 2-core machine; raise LOOM_MAX_PREEMPTIONS locally
# for a deeper (much slower) search.
#
# Then the mutation run (ci/loom-mutants.sh): every SYNC:-labelled ordering,
# weakened, must fail a model. Per commit (the default, LOOM_MUTANTS=quick)
# each mutant is tried against the models named for its pair, first failure
# wins; LOOM_MUTANTS=full tries every model and fails on any survivor not in
# ci/loom-mutants.exempt (run it by hand or on a schedule: about half an
# hour on 2 cores); LOOM_MUTANTS=0 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test -p shmbus-bus --release --lib loom
case "${LOOM_MUTANTS:-quick}" in
    0) ;;
    full) bash ci/loom-mutants.sh ;;
    *) bash ci/loom-mutants.sh --quick ;;
esac
