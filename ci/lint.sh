#!/usr/bin/env bash
# Formatting, clippy, and the loom-facade rule.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
# The Zenoh gateway (not a default member) is linted by ci/gateway.sh.
cargo clippy --workspace --exclude shmbus-zenoh --all-targets -- -D warnings

# Ring, gate and notify code must take atomics from bus/src/sync.rs only, so
# that loom sees every synchronizing operation (clippy's disallowed-types
# cannot tell a re-export from a direct import).
if grep -rnE 'std::sync::atomic|core::sync::atomic|std::cell::UnsafeCell' bus/src \
    | grep -v '^bus/src/sync.rs:'; then
    echo "error: bus/src must import atomics from crate::sync (the loom facade)" >&2
    exit 1
fi
echo "lint: ok"
