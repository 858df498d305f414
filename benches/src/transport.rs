//! What a compared IPC system provides: one-way message channels.
//!
//! Every benchmark is built from one-way channels. A ping-pong uses two (`ping`
//! from the leader to the follower, `pong` back); a stream or fan-out uses one
//! channel with one sender and `receivers` receivers. A [`System`] opens the
//! ends of a channel by name inside a private run directory; the measurement
//! loops in [`crate::roles`] drive them, identically for every system.
//!
//! # Adding a system
//!
//! Implement [`System`] (and a [`Tx`] / [`Rx`] pair) in a new module under
//! `src/systems/`, and list it in [`crate::systems::all`]. Rules that keep the
//! comparison honest:
//!
//! - `Tx::send` writes the whole payload with [`crate::payload::write`] or
//!   [`crate::payload::write_uninit`], directly into the system's own buffer
//!   when it has a loan API; `Rx` checks the whole payload with
//!   [`crate::payload::check`] before releasing it.
//! - When the channel is full, `Tx::send` waits with [`Wait::idle`] (or the
//!   kernel's blocking write in [`Wait::Block`] mode) unless the system has
//!   only its own wait loop; say so in [`System::notes`].
//! - `Rx::try_recv` never blocks. `Rx::recv_blocking` sleeps in the system's
//!   natural blocking primitive (futex, blocking read, event listener).
//! - `open_tx` returns only once all `receivers` joined, and `open_rx` only
//!   once this receiver is attached (it retries until the sender exists), so
//!   every message sent afterwards reaches every receiver. The harness starts
//!   sending only after every receiver's `open_rx` returned.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cell::Bench;

/// How a waiting side waits: the same policy is applied to every system in a
/// given benchmark row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Busy-poll with a CPU spin hint: one process per core.
    Spin,
    /// Poll, and `sched_yield` after every empty poll: several processes share
    /// a core (fan-out).
    Yield,
    /// The receiver sleeps in the kernel until woken (futex, blocking read,
    /// event listener).
    Block,
}

impl Wait {
    /// Name used on the command line and in result files.
    pub fn as_str(self) -> &'static str {
        match self {
            Wait::Spin => "spin",
            Wait::Yield => "yield",
            Wait::Block => "block",
        }
    }

    /// Parses [`Wait::as_str`] output.
    pub fn parse(s: &str) -> Option<Wait> {
        match s {
            "spin" => Some(Wait::Spin),
            "yield" => Some(Wait::Yield),
            "block" => Some(Wait::Block),
            _ => None,
        }
    }

    /// One step of a polling loop after an empty poll. In [`Wait::Block`] mode
    /// this is used only where a system has no blocking primitive for that
    /// direction (a full shared-memory ring on the sender side), and yields.
    #[inline]
    pub fn idle(self) {
        match self {
            Wait::Spin => std::hint::spin_loop(),
            Wait::Yield | Wait::Block => crate::os::yield_now(),
        }
    }
}

/// Everything a system needs to open one end of a channel.
#[derive(Debug, Clone)]
pub struct ChannelSpec {
    /// Private directory of this run; systems put their files and sockets here.
    pub dir: PathBuf,
    /// Channel name, unique within the run (`ping`, `pong`, `data`).
    pub name: String,
    /// A prefix unique to this run for systems with a global namespace
    /// (iceoryx2 service names).
    pub run_id: String,
    /// Exact payload size of every message on this channel, in bytes.
    pub msg_len: usize,
    /// Queue depth in messages for systems whose queue is configurable.
    pub depth: usize,
    /// Number of receivers the sender must wait for.
    pub receivers: usize,
    /// Waiting policy of this row.
    pub wait: Wait,
    /// True in stream rows (throughput, fan-out), where a receiver may take
    /// messages in batches; false in ping-pong rows (one message in flight).
    pub stream: bool,
    /// How long `open_*` may wait for the other side before failing.
    pub connect_timeout: Duration,
}

/// Sending end of a one-way channel.
pub trait Tx {
    /// Publishes one message of `msg_len` bytes carrying the payload pattern
    /// for `seq`, to every receiver. Waits (see [`Wait::idle`]) while full.
    fn send(&mut self, seq: u64) -> Result<()>;
}

/// Receiving end of a one-way channel.
pub trait Rx {
    /// Takes the next message if one is ready: checks its whole payload,
    /// releases it and returns its sequence number. Never blocks.
    fn try_recv(&mut self) -> Result<Option<u64>>;

    /// Like [`Rx::try_recv`] but sleeps in the kernel until a message arrives.
    fn recv_blocking(&mut self) -> Result<u64>;
}

/// An IPC system under comparison.
pub trait System {
    /// Short name, used on the command line and in the tables.
    fn name(&self) -> &'static str;

    /// Why this system cannot run `bench` sensibly, if it cannot (printed as a
    /// footnote; the table cell shows "n/a").
    fn unsupported(&self, bench: Bench) -> Option<&'static str> {
        let _ = bench;
        None
    }

    /// Footnotes about how this system is driven (configuration, deviations).
    fn notes(&self) -> &'static [&'static str] {
        &[]
    }

    /// Creates the channel and waits until `spec.receivers` receivers joined.
    fn open_tx(&self, spec: &ChannelSpec) -> Result<Box<dyn Tx>>;

    /// Joins the channel as receiver number `index` (0-based).
    fn open_rx(&self, spec: &ChannelSpec, index: usize) -> Result<Box<dyn Rx>>;
}

/// Retries `attempt` until it yields `Some`, sleeping briefly in between, for
/// at most `timeout`. For rendezvous in `open_*` only, never on a hot path.
pub fn retry_until<T>(
    timeout: Duration,
    what: &str,
    mut attempt: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = attempt()? {
            return Ok(v);
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Opens `path` read-write once its sender has published it (created and
/// renamed into place), waiting at most `timeout`. For the receivers of the
/// file-backed systems (floor, bare ring).
pub fn open_when_published(
    timeout: Duration,
    what: &str,
    path: &std::path::Path,
) -> Result<std::fs::File> {
    retry_until(timeout, what, || {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
        }
    })
}
