#!/usr/bin/env bash
# The Zenoh gateway (gateway/, crate shmbus-zenoh): not a default member of
# the workspace, because zenoh's dependency tree roughly doubles a fresh
# build. Lint, tests (loopback, raw mode, forced loss, and three hosts in
# network namespaces when run as root), docs, and the benchmark's build.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
cargo clippy -p shmbus-zenoh --all-targets -- -D warnings
cargo test -p shmbus-zenoh
RUSTDOCFLAGS="-D warnings ${RUSTDOCFLAGS:-}" cargo doc --no-deps -p shmbus-zenoh
echo "gateway: ok in $(( $(date +%s) - start )) s"
