//! Shared harness for shmbus benchmarks and the side-by-side IPC comparison.
//!
//! The comparison runner (`cargo run --release -p shmbus-benches --bin compare`)
//! measures several IPC systems under identical conditions: two (or more)
//! processes pinned to fixed cores, the same payload work on every message
//! (the sender writes every byte, the receiver reads and checks every byte),
//! and the same waiting policy for every system in a given row.
//!
//! The pieces:
//!
//! - [`transport`]: the [`transport::System`] trait every compared system
//!   implements, plus the one-way [`transport::Tx`] / [`transport::Rx`]
//!   channel endpoints it hands out. Adding a system is one module in
//!   [`systems`] and one line in [`systems::all`].
//! - [`roles`]: the measurement loops (ping-pong, streaming), written once and
//!   run over any system's channels.
//! - [`cell`] and [`runner`]: the child-process protocol. The runner re-executes
//!   its own binary with `--role ...` arguments, one process per role, each
//!   pinned with `sched_setaffinity`.
//! - [`payload`], [`stats`], [`os`], [`machine`], [`report`]: payload pattern,
//!   percentiles, thin OS wrappers, machine description and markdown output;
//!   [`chart`]: the same results as an SVG chart (latency percentiles and
//!   rates per system, log scales); [`goals`]: the ratios issue 9 sets as
//!   goals (shmbus against the bare ring and iceoryx2), met or missed.

pub mod cell;
pub mod chart;
pub mod goals;
pub mod machine;
pub mod msg;
pub mod os;
pub mod pair;
pub mod payload;
pub mod report;
pub mod roles;
pub mod runner;
pub mod stats;
pub mod stream;
pub mod systems;
pub mod transport;
