#!/usr/bin/env bash
# The test command of the README: unit, integration (multi-process, crash,
# corrupt segments, bridge over loopback and network namespaces) and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
