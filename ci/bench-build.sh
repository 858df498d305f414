#!/usr/bin/env bash
# Builds every benchmark (iceoryx2 comparison included) so they never rot.
# CI does not run them: timings on a shared 2-core VM are not a test.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p shmbus-benches --all-features --no-run
