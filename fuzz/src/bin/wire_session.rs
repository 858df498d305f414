//! Fuzz target: the sans-IO connection machines, `ImportSession` (the
//! receiver half) and `ExportSession` (the sender half), driven by a
//! sequence of peer frames and local events decoded from the input.
//!
//! Input: `machine u8` (even: import, odd: export), then operations, each
//! an opcode byte and its arguments. The harness plays a correct caller
//! (it reports rings and sends the way the daemon does); the peer's frames
//! are arbitrary but well-formed (what the frame decoder can return).
//!
//! Import properties: DATA is accepted only for a subscribed, unended
//! stream, contiguous with what came before, of a valid length, never past
//! the newest credit granted, never while a gap waits for room, and its end
//! is exact (no wrap of positions); a frame that follows every rule is
//! never refused; credit only grows and never promises room the caller did
//! not report; ACKs never go back.
//!
//! Export properties: the caller following the requests never gets a
//! `ProgressError`; DATA is contiguous, never ends past the peer's credit
//! or the ring's tail, and is bounded by the frame size; a GAP reports the
//! exact sequence number at its end; END comes only once the publisher is
//! gone, at its last tail; a tethered export never releases what the peer
//! has not acknowledged, and an untethered one pins exactly while the
//! kernel holds its sends; an ACK past what was sent is refused.

use std::collections::BTreeMap;

use shmbus_bridge::proto::{
    frame::{DataHeader, End, Gap, Subscribe, MAX_DATA_LEN, RESUME_OLDEST},
    session::{
        export::{ExportConfig, ExportSession, Protection, RingEvent, RingView, Step, StreamInfo},
        import::{EndPlan, GapPlan, ImportSession, ImportViolation, Output, Refusal, Resume},
    },
    stream::ExportMode,
};

// The two halves live beside this file (not targets of their own).
#[path = "wire_session/export.rs"]
mod export;
#[path = "wire_session/import.rs"]
mod import;

/// The fuzzer's bytes, read as little-endian values; `None` once used up.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    /// Next byte.
    pub fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// Next `N` bytes as a little-endian number.
    fn le<const N: usize>(&mut self) -> Option<u64> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(
            head.iter()
                .rev()
                .fold(0u64, |a, &b| (a << 8) | u64::from(b)),
        )
    }

    /// Next u16.
    pub fn u16(&mut self) -> Option<u64> {
        self.le::<2>()
    }

    /// Next u32.
    pub fn u32(&mut self) -> Option<u64> {
        self.le::<4>()
    }

    /// Next u64.
    pub fn u64(&mut self) -> Option<u64> {
        self.le::<8>()
    }
}

/// Stream ids the operations name: few, so that operations meet.
const STREAMS: u8 = 4;
/// Ring records in the export harness are all this long; record n's
/// sequence number is its position / 16.
const RECORD: u64 = 16;

/// The largest position a peer's DATA, GAP or END may reach
/// (`docs/bridge-protocol.md`, "Positions").
const MAX_POS: u64 = 1 << 62;

/// A position: the expected one, a few records after or before it, or any.
fn position(input: &mut Input<'_>, expected: Option<u64>) -> Option<u64> {
    let base = expected.unwrap_or(0);
    Some(match input.u8()? % 4 {
        0 => base,
        1 => base.saturating_add(RECORD * input.u8()? as u64),
        2 => base.saturating_sub(RECORD * input.u8()? as u64),
        _ => input.u64()?,
    })
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let mut input = Input(data);
        match input.u8() {
            Some(m) if m.is_multiple_of(2) => import::run(input),
            Some(_) => export::run(input),
            None => {}
        }
    });
}
