#!/usr/bin/env bash
# The test command of the README: unit, integration (multi-process, crash,
# corrupt segments, containers, two users, bridge over loopback and network
# namespaces) and doc tests. Then the core's and the client's tests once more
# in release mode: some behaviour differs there (rkyv drops error text
# without debug assertions, which is how a wrong error kind once escaped).
set -euo pipefail
cd "$(dirname "$0")/.."
# Default members: everything but the Zenoh gateway (ci/gateway.sh).
cargo test
cargo test --release -p shmbus-bus -p shmbus
