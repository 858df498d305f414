//! shmbus itself, three ways: the typed client API with rkyv validation on
//! every receive ("checked"), the same without validation ("unchecked",
//! `Subscriber::trust_publishers`), and the byte layer underneath
//! (`shmbus_bus::RingWriter` / `RingReader`, "raw bytes").
//!
//! Every channel is one publisher ring; fan-out receivers are subscribers of
//! that one ring. How each path sends and receives:
//!
//! | | send | receive (one message per call, every row) |
//! |---|---|---|
//! | typed, payload < [`IN_PLACE_FROM`] | `Publisher::send(&Msg)` (rkyv copies the payload from the sender's `Vec` into the ring) | `Subscriber::try_recv` / `recv` (blocking row) |
//! | typed, payload >= [`IN_PLACE_FROM`] | `Publisher::send_filled` with a `Fill` field (payload written once, in place, row by row) | as above |
//! | raw bytes | `RingWriter::loan` + payload written in place + `commit` | `RingReader::try_read` / `read` (blocking row) |
//!
//! Receivers check every payload in place before it is released. Stream rows
//! too take one message per receive call (not `drain`): the issue's
//! throughput goals are stated for that, and every other system does it.

use shmbus_bus::{layout, max_message_limit, WaitStrategy};

use crate::transport::{ChannelSpec, Wait};

pub mod raw;
pub mod typed;

/// Typed rows with payloads of at least this many bytes build the archive in
/// place in a loan instead of serializing from a `Vec`.
pub const IN_PLACE_FROM: usize = 64 * 1024;

/// The shmbus wait strategy that matches a row's waiting policy: busy-poll,
/// yield after every empty poll, or sleep on the futex without spinning first.
pub fn strategy(wait: Wait) -> WaitStrategy {
    match wait {
        Wait::Spin => WaitStrategy::BusySpin,
        Wait::Yield => WaitStrategy::SpinThenYield { spins: 0 },
        Wait::Block => WaitStrategy::Block { spins: 0 },
    }
}

/// Ring geometry of a channel whose messages are `record_payload` bytes in
/// the ring (the raw payload, or the rkyv archive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Ring data bytes (a power of two).
    pub capacity: u64,
    /// Largest message the ring takes.
    pub max_message: u64,
}

/// The smallest ring that holds `spec.depth` messages of `record_payload`
/// bytes (the queue depth every configurable system gets) and takes such a
/// message at all (`max_message <= capacity / 2 - 16`).
///
/// ```
/// use shmbus_benches::systems::shmbus::geometry_for;
/// # use shmbus_benches::transport::{ChannelSpec, Wait};
/// # let spec = |depth| ChannelSpec { dir: "/tmp".into(), name: "x".into(), run_id: "r".into(),
/// #     msg_len: 0, depth, receivers: 1, wait: Wait::Spin, stream: false,
/// #     connect_timeout: std::time::Duration::from_secs(1) };
/// assert_eq!(geometry_for(&spec(2), 1 << 20).capacity, 4 << 20);
/// assert_eq!(geometry_for(&spec(256), 64).capacity, 32 << 10);
/// assert_eq!(geometry_for(&spec(2), 64).capacity, 4096);
/// ```
pub fn geometry_for(spec: &ChannelSpec, record_payload: usize) -> Geometry {
    let max_message = (record_payload as u64).next_multiple_of(layout::RECORD_ALIGN);
    let record = layout::record_size(max_message);
    let for_depth = (spec.depth.max(1) as u64).saturating_mul(record);
    let mut capacity = for_depth
        .max(layout::MIN_CAPACITY)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX);
    while capacity < u64::MAX && max_message_limit(capacity) < max_message {
        capacity = capacity.saturating_mul(2);
    }
    Geometry {
        capacity,
        max_message,
    }
}

/// Footnote shared by the three shmbus systems.
pub const RING_NOTE: &str =
    "shmbus rings: Block policy (lossless), one subscriber slot per receiver, capacity the \
     smallest power of two holding the row's queue depth of records (2 in ping-pong rows, 256 in \
     stream rows; at least 4 KiB, and at least twice the largest record, e.g. 4 MiB for 1 MiB \
     messages); waiting maps to BusySpin (spin rows), SpinThenYield { spins: 0 } (fan-out) and \
     Block { spins: 0 } (blocking row)";
