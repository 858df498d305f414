//! Support code for shmbus's multi-process integration tests.
//!
//! The tests in `tests/tests/` start the `peer` helper binary
//! (`src/bin/peer.rs`) as publisher and subscriber processes, the way tokio's
//! `tests-integration` does, and judge them by exit code and report:
//!
//! - [`msg`]: the test message, whose payload bytes and checksum are derived
//!   from (publisher, sequence) so any receiver can verify content;
//! - [`tracker`]: the subscriber-side verifier (content, per-publisher order,
//!   losses, publishers gone or broken);
//! - [`report`]: the machine-readable summary a subscriber writes;
//! - [`args`]: the helper's tiny command-line parser;
//! - [`chaos`]: kill chaos and soak (issue 13): roles, driver, checkers;
//! - [`harness`]: private roots under `/dev/shm`, child processes with line
//!   channels, and a watchdog that kills children of a test that hangs;
//! - [`isolation`]: pid namespaces, other uids, a small tmpfs, and what a
//!   bus leaves behind (the Core v2 tests of issue 7);
//! - [`hostile`]: the named shared words of a ring (producer page, control
//!   file) with plain read/write access, for the hostile-words tests;
//! - [`ringfile`]: reading and patching segment files from outside (control
//!   counters, record walking, corruption);
//! - [`netns`]: two "hosts" as network namespaces joined by veth, with
//!   random loss (nftables), rate limits (tbf) and per-namespace sysctls; the
//!   `fault-proxy` helper adds delay, throttling and mid-stream cuts.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod args;
pub mod chaos;
pub mod harness;
pub mod hostile;
pub mod isolation;
pub mod msg;
pub mod netns;
pub mod report;
pub mod ringfile;
pub mod tracker;
