//! The ring side of the sender: one reader per exported ring and peer, what
//! the session asks to read, and the protection it decides, applied.
//!
//! The safety rule: a DATA payload is sent from ring memory, and with
//! `MSG_ZEROCOPY` the kernel reads it after `sendmsg` returns, so the bytes
//! stay protected until the kernel's completion (tethered: also until the
//! peer's ACK). The [`ExportSession`](crate::proto::session::export::ExportSession)
//! computes the positions; this module applies them to the [`RawReader`]
//! (release, or pin and unpin) and does nothing else with them.

use std::{path::Path, sync::Arc, time::Duration};

use shmbus_bus::{self as bus, layout::record_size, RawChunk, RawReader, StartAt};

use crate::{
    config::ExportMode as ConfigMode,
    proto::{
        session::export::{Protection, ReadRequest, RingEvent, RingView, StreamInfo},
        stream::ExportMode,
    },
};

use super::{
    super::{catalog::LocalRing, stats::StreamStats},
    hold::ExportHold,
};

/// One exported ring, for one peer, for the daemon's lifetime.
#[derive(Debug)]
pub(crate) struct ExportStream {
    pub(super) ring: Arc<LocalRing>,
    pub(super) reader: RawReader,
    /// The protection last applied to `reader`.
    applied: Option<Protection>,
    pub(super) stats: Arc<StreamStats>,
    /// Tethered, not finished: when dropped (the daemon stops, the peer's
    /// state expires) the durable slot is kept for its lease, as after a
    /// crash, so a restarted bridge resumes without loss.
    keep_slot: bool,
    /// The export hold keeping the ring for this peer (see [`super::hold`]),
    /// removed once the peer acknowledged END; kept otherwise.
    hold: Option<ExportHold>,
}

impl Drop for ExportStream {
    fn drop(&mut self) {
        if self.keep_slot {
            self.reader.detach();
        }
    }
}

impl ExportStream {
    /// Opens the export reader of `ring` for peer `peer`. Tethered exports
    /// take a durable slot keyed by (peer, ring), so a bridge restarted
    /// within `lease` reattaches where the dead one had released and the
    /// peer resumes without loss, even if the publisher exited meanwhile
    /// (its ring stays until the slot is reaped).
    pub(super) fn open(
        ring: &Arc<LocalRing>,
        peer: &str,
        lease: Duration,
        stats: Arc<StreamStats>,
    ) -> Result<Self, bus::Error> {
        let reader = open_reader(ring, peer, lease)?;
        // After the reader: the hold links the inode the reader maps (or,
        // the names replaced meanwhile, none), and a ring whose names go
        // before this is still read to its end by this reader.
        let hold = ExportHold::take(ring, peer);
        Ok(Self {
            ring: Arc::clone(ring),
            reader,
            applied: None,
            stats,
            keep_slot: matches!(ring.mode, ConfigMode::Tethered) && ring.held_for.is_none(),
            hold,
        })
    }

    /// Opens a new reader after this one lost its slot; returns its start.
    pub(super) fn reopen(&mut self, peer: &str, lease: Duration) -> Result<u64, bus::Error> {
        self.reader = open_reader(&self.ring, peer, lease)?;
        self.applied = None;
        Ok(self.reader.start_position())
    }

    /// The ring as a SUBSCRIBE finds it.
    pub(super) fn view(&self) -> RingView {
        RingView {
            start: self.reader.start_position(),
            head: self.reader.head(),
            tail: self.reader.tail(),
        }
    }

    /// Pins if asked, then reads what `req` asks for.
    ///
    /// # Errors
    ///
    /// The reader's error (a framing error, corrupt positions).
    pub(super) fn read(&mut self, req: &ReadRequest) -> Result<RingEvent, bus::Error> {
        if let Some(p) = req.pin {
            let safe = self.reader.pin(p);
            self.applied = Some(Protection::Pin(p));
            if safe > req.from {
                return Ok(RingEvent::Lapped { head: safe });
            }
        }
        Ok(match self.reader.next_chunk(req.from, req.max_len)? {
            RawChunk::Records {
                start,
                end,
                records,
                first_seq,
            } => RingEvent::Records {
                start,
                end,
                records,
                first_seq,
            },
            RawChunk::Empty => {
                // Publisher state first, then the tail: a gone publisher's
                // last tail is published before it is marked closed.
                let gone = self.reader.publisher_gone();
                RingEvent::Empty {
                    at: req.from,
                    next_seq: self.reader.next_sequence(),
                    publisher_gone: gone && self.reader.tail() == req.from,
                }
            }
            RawChunk::Lapped { head } => RingEvent::Lapped { head },
        })
    }

    /// Applies `p` to the reader if it differs from what was applied last.
    pub(super) fn protect(&mut self, p: Protection) {
        if self.applied == Some(p) {
            return;
        }
        match p {
            Protection::Release(to) => self.reader.release_to(to),
            Protection::Pin(at) => {
                self.reader.pin(at);
            }
            Protection::Unpinned => {
                if matches!(self.applied, Some(Protection::Pin(_))) {
                    self.reader.unpin();
                }
            }
        }
        self.applied = Some(p);
    }

    /// The stream is finished (END acknowledged): its reader leaves the
    /// ring for good when dropped, so the ring can be removed.
    pub(super) fn finished(&mut self) {
        self.keep_slot = false;
        self.drop_hold();
    }

    /// Removes the export hold (the peer's state is dropped).
    pub(super) fn drop_hold(&mut self) {
        if let Some(h) = self.hold.take() {
            h.remove();
        }
    }

    /// The ring's directory, to sweep after the last reader of a finished
    /// ring left.
    pub(super) fn dir(&self) -> Option<&Path> {
        self.ring.path.parent()
    }
}

/// What the session knows about `ring`.
pub(super) fn stream_info(ring: &LocalRing) -> StreamInfo {
    StreamInfo {
        mode: export_mode(ring),
        capacity: ring.capacity,
        max_record: record_size(ring.max_message),
    }
}

/// The session's mode for a ring's export rule: untethered retention is
/// capped at half the ring.
pub(super) fn export_mode(ring: &LocalRing) -> ExportMode {
    match ring.mode {
        ConfigMode::Tethered => ExportMode::Tethered,
        ConfigMode::Untethered { retention_bytes } => ExportMode::Untethered {
            retention: retention_bytes.min(ring.capacity / 2),
        },
    }
}

fn open_reader(ring: &LocalRing, peer: &str, lease: Duration) -> Result<RawReader, bus::Error> {
    if ring.held_for.is_some() {
        // A held ring's publisher is gone: nothing changes under a plain
        // reader, and a durable slot would only outlive the hold.
        return RawReader::open(&ring.path, StartAt::Oldest, false);
    }
    match ring.mode {
        ConfigMode::Tethered => {
            RawReader::open_durable(&ring.path, StartAt::Oldest, durable_key(peer, ring), lease)
        }
        ConfigMode::Untethered { .. } => RawReader::open(&ring.path, StartAt::Oldest, false),
    }
}

/// The durable slot key of (peer, ring): FNV-1a over the peer's node name
/// and the ring's topic and publisher id, never 0. Stable across restarts
/// (no random seed), distinct per peer so two peers' exports of one ring
/// hold two slots.
pub(super) fn durable_key(peer: &str, ring: &LocalRing) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [peer, ring.topic.as_str(), ring.publisher.as_str()] {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h.max(1)
}
