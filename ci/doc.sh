#!/usr/bin/env bash
# API docs and packaging of the library crates.
#
# 1. rustdoc with warnings denied: broken or private intra-doc links, bad
#    code blocks, and (through the crates' `#![warn(missing_docs)]`) any
#    undocumented public item fail the run. The doc tests themselves run
#    with `cargo test` (ci/test.sh).
# 2. `cargo package --list` for the crates meant for crates.io: the files
#    each would ship, and no manifest warning (missing description,
#    documentation, readme...). Offline: listing reads only the manifest and
#    git, never the index, even for path dependencies with versions.
#    `--allow-dirty` lets it run on a tree with uncommitted edits.
# 3. `cargo package --no-verify` of the same crates together: the packaged
#    manifests are generated and the path dependencies resolved against each
#    other (cargo packages the selected crates as one set, so shmbus need
#    not find shmbus-bus on crates.io; checked with cargo 1.95). Offline
#    too. Not verified by a build of the packages: that is the workspace
#    build again, minutes on 2 cores, for nothing the tests do not cover.
set -euo pipefail
cd "$(dirname "$0")/.."

RUSTDOCFLAGS="-D warnings ${RUSTDOCFLAGS:-}" cargo doc --no-deps --workspace --exclude shmbus-zenoh

LIBS=(shmbus-bus shmbus shmbus-bridge)
for crate in "${LIBS[@]}"; do
    log=$(cargo package --list --offline --allow-dirty -p "$crate" 2>&1 >/dev/null)
    if grep -q 'warning' <<<"$log"; then
        echo "error: cargo package --list -p $crate warns:" >&2
        echo "$log" >&2
        exit 1
    fi
    echo "package $crate: $(cargo package --list --offline --allow-dirty -p "$crate" 2>/dev/null | wc -l) files"
done
cargo package --no-verify --offline --allow-dirty $(printf -- "-p %s " "${LIBS[@]}") >/dev/null
echo "doc: ok"
