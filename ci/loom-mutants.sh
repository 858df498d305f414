#!/usr/bin/env bash
# Mutation run for the loom models: weakens every SYNC:-labelled ordering or
# fence in bus/src, one at a time, in a scratch copy of the tree
# (target/loom-mutants-tree), and requires a loom model to fail for each.
# A mutant that does not compile, that only hits a loom limit, or that no
# model catches fails the run unless ci/loom-mutants.exempt lists it with its
# reason. The table goes to target/loom-mutants.md (see docs/loom.md).
#
#   bash ci/loom-mutants.sh            # every site, every model (the full run)
#   bash ci/loom-mutants.sh --quick    # per commit: only the models named for each pair
#   bash ci/loom-mutants.sh --list     # the sites it finds, and the exempt ones
#   bash ci/loom-mutants.sh --only gate.rs:544
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 ci/loom_mutants.py "$@"
