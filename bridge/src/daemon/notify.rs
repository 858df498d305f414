//! systemd integration: readiness, reload and stop notifications, and the
//! watchdog, sent as datagrams to `$NOTIFY_SOCKET` (the `sd-notify` crate;
//! abstract `@` addresses included). Without `NOTIFY_SOCKET` every call is
//! a no-op, so the daemon runs the same outside systemd.
//!
//! The watchdog thread sends `WATCHDOG=1` every `WATCHDOG_USEC / 2` only
//! while the daemon's loops are alive: each loop stamps [`LoopTicks`] on
//! every turn (they turn at least every 100 ms), and a loop whose stamp is
//! older than `WATCHDOG_USEC / 2` stops the keep-alives, so systemd
//! restarts a daemon that hangs rather than one that merely has a thread.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use sd_notify::NotifyState;

use super::Shared;
use crate::log;

/// Sends `states`; a failure is logged (systemd will time the unit out).
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warning!("cannot notify systemd (NOTIFY_SOCKET): {e}");
    }
}

/// `READY=1` with a status line.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `RELOADING=1` (a `READY=1` follows when the reload is over), with the
/// `MONOTONIC_USEC` that `Type=notify-reload` units require.
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`.
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, if the
/// watchdog is on for this process.
pub(crate) fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

/// The loops the watchdog watches.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Loop {
    /// The catalog loop (bus scan, housekeeping).
    Catalog,
    /// The listener (accepts peers).
    Listener,
}

/// The last turn of each watched loop, in milliseconds since `start`;
/// `u64::MAX` for a loop that is not running (not watched).
#[derive(Debug)]
pub(crate) struct LoopTicks {
    start: Instant,
    catalog: AtomicU64,
    listener: AtomicU64,
}

impl LoopTicks {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            catalog: AtomicU64::new(u64::MAX),
            listener: AtomicU64::new(u64::MAX),
        }
    }

    fn slot(&self, which: Loop) -> &AtomicU64 {
        match which {
            Loop::Catalog => &self.catalog,
            Loop::Listener => &self.listener,
        }
    }

    /// Stamps a turn of `which`.
    pub(crate) fn tick(&self, which: Loop) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        // Relaxed: a timestamp read only for its own value; no data is
        // published with it.
        self.slot(which).store(ms, Ordering::Relaxed);
    }

    /// The first loop whose last turn is older than `max`, if any.
    pub(crate) fn stalled(&self, max: Duration) -> Option<&'static str> {
        let now = self.start.elapsed().as_millis();
        [(Loop::Catalog, "catalog"), (Loop::Listener, "listener")]
            .into_iter()
            .find(|(which, _)| {
                // Relaxed: see `tick`.
                let t = self.slot(*which).load(Ordering::Relaxed);
                t != u64::MAX && now.saturating_sub(u128::from(t)) > max.as_millis()
            })
            .map(|(_, name)| name)
    }
}

/// Sends `WATCHDOG=1` every `period` while the loops are alive, until the
/// daemon stops.
pub(crate) fn watchdog_loop(shared: &Shared, period: Duration) {
    let mut stalled_logged = false;
    loop {
        match shared.ticks.stalled(period) {
            None => {
                send(&[NotifyState::Watchdog]);
                stalled_logged = false;
            }
            Some(name) if !stalled_logged => {
                log::error!(
                    "the {name} loop has not run for more than {period:?}: no longer telling systemd we are alive"
                );
                stalled_logged = true;
            }
            Some(_) => {}
        }
        if !shared.sleep(period) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_ticking_is_reported() {
        let ticks = LoopTicks::new();
        // Loops that never ran are not watched.
        assert_eq!(ticks.stalled(Duration::ZERO), None);
        ticks.tick(Loop::Catalog);
        assert_eq!(ticks.stalled(Duration::from_secs(3600)), None);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(ticks.stalled(Duration::from_millis(5)), Some("catalog"));
    }
}
