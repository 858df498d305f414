//! Kill chaos and soak (issue 13): a publisher/subscriber/bridge mix on
//! two bus roots joined by a bridge pair over loopback, a driver that
//! SIGKILLs and restarts random processes, and checkers that judge the run
//! from what every process logged.
//!
//! One module per rule:
//!
//! - [`lines`]: the log lines the roles print (one file per process
//!   incarnation) and their parser;
//! - [`publisher`], [`subscriber`]: the roles, run by the `peer` helper as
//!   `chaos-pub` and `chaos-sub`;
//! - [`seqtrack`]: a subscriber's per-ring and per-publisher accounting
//!   (order, exact losses, duplicates);
//! - [`topology`]: the mix (who publishes/subscribes what, with which
//!   policy), starting and restarting its processes;
//! - [`driver`]: the kill loop and the orderly end of a run;
//! - [`checker`]: the invariants, judged from the logs;
//! - [`leaks`]: what must be gone once everything exited;
//! - [`sampler`], [`chart`]: the soak's resource samples and their SVG chart.

pub mod chart;
pub mod checker;
pub mod driver;
pub mod leaks;
pub mod lines;
pub mod publisher;
pub mod sampler;
pub mod seqtrack;
pub mod subscriber;
pub mod topology;

/// `CLOCK_MONOTONIC` in microseconds: one clock for every process of a
/// run, so the checker can order events logged by different processes.
pub fn mono_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC exists on
    // every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Publisher ids in messages carry the publisher's slot in the mix and its
/// incarnation, so order is checked per incarnation:
/// `slot * INCARNATIONS + incarnation`.
pub const INCARNATIONS: u32 = 100_000;

/// The message-level publisher id of `slot`'s `incarnation`.
pub fn publisher_id(slot: u32, incarnation: u32) -> u32 {
    slot * INCARNATIONS + incarnation % INCARNATIONS
}
