//! How a blocked reader or writer waits.

use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

use crate::{
    shm::futex::{self, SleepEnd, Sleeper},
    sync::spin_loop,
};

/// How to wait for a message (or, for a publisher, for space).
///
/// # Examples
///
/// ```
/// use shmbus_bus::WaitStrategy;
/// // Lowest latency, burns a core while waiting:
/// let hot = WaitStrategy::BusySpin;
/// // The default: spin briefly, then sleep on the ring's futex.
/// assert_eq!(WaitStrategy::default(), WaitStrategy::Block { spins: 64 });
/// # let _ = hot;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitStrategy {
    /// Poll in a tight loop (`spin_loop` hint). Lowest latency; one core at 100 %.
    BusySpin,
    /// Poll `spins` times, then yield the CPU between polls.
    SpinThenYield {
        /// Polls before the first yield.
        spins: u32,
    },
    /// Poll `spins` times, then sleep on the ring's futex until the publisher
    /// wakes us. Uses no CPU while idle; costs a wake-up (~5-10 µs) per sleep,
    /// plus the wake-up handshake's barrier (see [`crate::WakeHandshake`]).
    Block {
        /// Polls before sleeping.
        spins: u32,
    },
}

/// The default is `Block { spins: 64 }`, chosen with `wake-bench` (one
/// subscriber process, bursts of 100 messages every 1 ms, 2 vCPU KVM guest,
/// two runs; a poll here is about 27 ns, so 64 spins are about 1.7 µs):
///
/// | spins | subscriber CPU µs/burst | sleeps/burst | delivery p99 µs |
/// |---:|---:|---:|---:|
/// | 0 | 17.9 / 25.2 | 1.93 / 1.72 | 94 / 91 |
/// | 64 | 18.0 / 21.7 | 1.40 / 1.48 | 51 / 50 |
/// | 256 (the old default) | 22.4 / 31.0 | 1.06 / 1.16 | 997 / 64 |
/// | 1024 | 46.4 / 54.5 | 0.99 / 1.08 | 239 / 95 |
/// | 4096 | 131 / 163 | 0.94 / 0.99 | 1967 / 1032 |
///
/// 64 had the lowest subscriber CPU and delivery p99 in both runs; more
/// spins remove at most half a sleep per burst for 25 % (256) to 2.5x
/// (1024) the CPU. Wakes are coalesced (one per sleep), so a sleep is
/// cheap for the publisher too. Workloads whose next message comes a few
/// µs after the last (request/response) should spin longer or use
/// [`WaitStrategy::SpinThenYield`]/[`WaitStrategy::BusySpin`].
impl Default for WaitStrategy {
    fn default() -> Self {
        Self::Block { spins: 64 }
    }
}

/// Longest single sleep of a blocked waiter by default: it then re-checks
/// liveness of the peer it waits on (a crashed publisher wakes nobody) and
/// new publishers. A reader can change its own
/// ([`crate::RingReader::set_max_sleep`]).
pub const MAX_SLEEP: Duration = Duration::from_millis(50);

/// What one [`wait_until`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Waited {
    /// `ready()`'s last answer.
    pub(crate) ready: bool,
    /// How its sleep ended, if it went to sleep (Block strategy).
    pub(crate) slept: Option<SleepEnd>,
}

/// A deadline helper: `None` waits forever.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    pub(crate) fn after(timeout: Option<Duration>) -> Self {
        Self(timeout.and_then(|t| Instant::now().checked_add(t)))
    }

    pub(crate) fn passed(&self) -> bool {
        self.0.is_some_and(|d| Instant::now() >= d)
    }

    /// Time left, capped at `cap`.
    pub(crate) fn remaining(&self, cap: Duration) -> Duration {
        match self.0 {
            Some(d) => d.saturating_duration_since(Instant::now()).min(cap),
            None => cap,
        }
    }
}

/// Waits until `ready()` holds for one of the rings whose sleepers are
/// `sleepers`, the deadline passes, or one wait of at most `max_sleep`
/// ends (a sleep, or that long of spinning/yielding). Callers loop, checking
/// the publisher's liveness between calls, so even a busy-spinning reader
/// notices a killed publisher.
///
/// Under [`WaitStrategy::Block`] this registers as a waiter on every ring,
/// issues the handshake's barrier once, re-checks, then sleeps on all futex
/// words at once (`futex_waitv`): [`futex::sleep`].
pub(crate) fn wait_until(
    sleepers: &[Sleeper<'_>],
    strategy: WaitStrategy,
    deadline: Deadline,
    max_sleep: Duration,
    mut ready: impl FnMut() -> bool,
) -> Waited {
    let done = |ready| Waited { ready, slept: None };
    let spins = match strategy {
        WaitStrategy::BusySpin => u32::MAX,
        WaitStrategy::SpinThenYield { spins } | WaitStrategy::Block { spins } => spins,
    };
    let slice_end = Deadline::after(Some(max_sleep));
    let mut n = 0u32;
    // Exponential spinning, then yields (crossbeam's Backoff).
    let backoff = Backoff::new();
    loop {
        if ready() {
            return done(true);
        }
        if deadline.passed() || (n % 1024 == 1023 && slice_end.passed()) {
            return done(false);
        }
        if n < spins {
            n += 1;
            spin_loop();
            continue;
        }
        match strategy {
            WaitStrategy::BusySpin => {}
            WaitStrategy::SpinThenYield { .. } => {
                n = n.wrapping_add(1);
                if slice_end.passed() {
                    return done(false);
                }
                backoff.snooze();
            }
            WaitStrategy::Block { .. } => {
                let end = futex::sleep(
                    sleepers,
                    Some(deadline.remaining(max_sleep)),
                    &mut ready,
                    futex::futex_wait_any,
                );
                return Waited {
                    ready: end == SleepEnd::Ready || ready(),
                    slept: Some(end),
                };
            }
        }
    }
}
