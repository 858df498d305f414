//! The sender half of a connection, sans-IO: the streams this bridge
//! exports to one peer, which frames the peer may send about them, and what
//! to send, release or pin next.
//!
//! # Lifecycle of a stream on a connection
//!
//! ```text
//! hidden --announce--> announced --SUBSCRIBE--> subscribed --END acked--> retired
//!    ^                                              |
//!    +---------------- connection closed -----------+
//! ```
//!
//! A stream is announced once per connection, and never again once the peer
//! acknowledged its END. SUBSCRIBE is legal once per connection for an
//! announced stream; ACK and CREDIT only for a subscribed one (late ones for
//! a retired stream are ignored). Anything else is a [`Violation`].
//!
//! # What to send
//!
//! [`ExportSession::next_read`] says which ring range to look at next (and
//! where to pin first, untethered); the caller reads the ring and reports
//! what it found with [`ExportSession::on_ring`], which decides the next
//! frame ([`Step`]):
//!
//! - DATA `[sent, end)`, bounded by the frame size, half the ring and the
//!   peer's credit: never a DATA frame whose end is past the newest limit
//!   (SUBSCRIBE's resume position, or the first position sent when it
//!   asked for the oldest data, plus its window; then CREDIT). A stream at its limit
//!   stops alone ([`StreamCounters::credit_stalls`]); GAP and END need no
//!   credit.
//! - GAP `[from, to)` with the exact `next_seq` of the first message at
//!   `to`: a loss (resume before the oldest byte held, or the publisher
//!   lapped an untethered export) is held back until the ring has been read
//!   at `to`, which gives that sequence number.
//! - END once the publisher is gone and everything before its last tail was
//!   sent.
//!
//! # What to protect
//!
//! The positions live in [`ExportPositions`], one per stream for the
//! daemon's lifetime, so a reconnecting peer resumes (tethered: from what it
//! acknowledged). [`ExportSession::protection`] turns them into what the
//! caller applies to its ring reader. Untethered, bytes handed to the kernel
//! stay pinned only until [`ExportConfig::pin_deadline`]: after that
//! [`ExportSession::tick`] asks for the connection to be reset
//! ([`Reset`]); the caller resets it, and once [`ExportSession::on_connection_closed`]
//! the pin is dropped and the peer learns the loss as a GAP when it
//! resubscribes.
//!
//! Time is the caller's: every `now` is nanoseconds of one monotonic clock.
//!
//! # Example
//!
//! ```
//! use shmbus_bridge::proto::{
//!     frame::Subscribe,
//!     session::export::{ExportConfig, ExportSession, RingEvent, RingView, Step, StreamInfo},
//!     stream::ExportMode,
//! };
//!
//! let mut s = ExportSession::new(ExportConfig { max_frame: 4096, pin_deadline: 1_000_000 });
//! s.on_announced(7, StreamInfo { mode: ExportMode::Tethered, capacity: 1 << 16, max_record: 1024 });
//! let sub = Subscribe { stream: 7, resume_position: 0, window: 1 << 15 };
//! s.on_subscribe(&sub, || Some(RingView { start: 0, head: 0, tail: 8192 }))?;
//! let req = s.next_read(7).unwrap();
//! assert_eq!((req.from, req.max_len), (0, 4096));
//! let step = s.on_ring(7, RingEvent::Records { start: 0, end: 4096, records: 32, first_seq: 0 })?;
//! assert_eq!(step, Step::Data { start: 0, end: 4096, records: 32 });
//! s.on_data_sent(7, 4096, 4096 + 40, 0)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;

use super::Violation;
use crate::proto::{
    frame::{End, FrameType, Gap, Subscribe, MAX_DATA_LEN, RESUME_OLDEST},
    stream::{ExportMode, ExportPositions, RECORD_ALIGN},
};

/// Limits of the sender half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportConfig {
    /// Largest DATA payload in bytes (further bounded by half the ring,
    /// [`MAX_DATA_LEN`] and the credit; a single record longer than it goes alone), so a
    /// control frame never waits behind more than one such frame.
    pub max_frame: u64,
    /// Untethered: nanoseconds the kernel may hold a send of ring bytes
    /// (pinned) before the connection is reset.
    pub pin_deadline: u64,
}

impl Default for ExportConfig {
    /// 256 KiB frames, a 250 ms pin deadline.
    fn default() -> Self {
        Self {
            max_frame: 256 << 10,
            pin_deadline: 250_000_000,
        }
    }
}

/// What the session knows about an exported ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// Tethered or untethered.
    pub mode: ExportMode,
    /// Ring capacity in bytes.
    pub capacity: u64,
    /// The largest record the ring can hold (header included, aligned).
    pub max_record: u64,
}

/// The ring as a SUBSCRIBE finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingView {
    /// Where the export's reader joined the ring (its first held position);
    /// used when the stream is subscribed for the first time.
    pub start: u64,
    /// The oldest intact record (untethered readers hold nothing older).
    pub head: u64,
    /// The published tail.
    pub tail: u64,
}

/// What the caller found reading the ring at a [`ReadRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingEvent {
    /// Whole records in `start..end`, `records` of them carrying data, the
    /// first data record numbered `first_seq`.
    Records {
        /// First position (the request's `from`).
        start: u64,
        /// Position just past the last record.
        end: u64,
        /// Data records (padding is not counted).
        records: u32,
        /// Sequence number of the first data record.
        first_seq: u64,
    },
    /// Nothing committed at `at` yet; the publisher's next message gets
    /// `next_seq`; `publisher_gone` if it is gone and `at` is its last tail.
    Empty {
        /// The position read (the request's `from`).
        at: u64,
        /// Sequence number of the next message.
        next_seq: u64,
        /// The publisher is gone and its last tail is `at`.
        publisher_gone: bool,
    },
    /// The publisher overwrote the requested position; `head` is the
    /// oldest intact record (or the first position the pin could hold).
    Lapped {
        /// The oldest position still readable.
        head: u64,
    },
}

/// Which ring range to read next, from [`ExportSession::next_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    /// The position to read from.
    pub from: u64,
    /// At most this many bytes (always at least one largest record).
    pub max_len: u64,
    /// Untethered: pin the reader here before reading, so that the bytes
    /// read stay intact until they are sent; a pin that lands later than
    /// `from` means the publisher lapped the export
    /// ([`RingEvent::Lapped`] with the position the pin got).
    pub pin: Option<u64>,
}

/// The frame to send next for a stream, from [`ExportSession::on_ring`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send `start..end` of the ring as one DATA frame, then call
    /// [`ExportSession::on_data_sent`].
    Data {
        /// First position.
        start: u64,
        /// Position just past the payload.
        end: u64,
        /// Data records in it.
        records: u32,
    },
    /// Send this GAP (already accounted for).
    Gap(Gap),
    /// Send this END (already accounted for).
    End(End),
    /// Records are there but the peer's credit does not cover them: wait for
    /// a CREDIT.
    Withheld,
    /// Nothing to send until the ring moves.
    Idle,
}

/// How the caller must protect a stream's ring bytes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    /// Tethered: the reader releases everything before this position.
    Release(u64),
    /// Untethered: the reader pins from this position.
    Pin(u64),
    /// Untethered: no pin.
    Unpinned,
}

/// The kernel has held a zero-copy send of an untethered export longer than
/// the pin deadline: reset the connection (dropping what the kernel still
/// queues), then call [`ExportSession::on_connection_closed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset {
    /// The stream whose send is held.
    pub stream: u32,
    /// For how long, in nanoseconds.
    pub held_for: u64,
}

/// Counters the session adds to per stream, taken with
/// [`ExportSession::take_counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCounters {
    /// Times the send position reached the peer's credit limit.
    pub credit_stalls: u64,
    /// GAP frames decided.
    pub gaps: u64,
    /// Bytes they cover.
    pub gap_bytes: u64,
    /// Messages they cover, where the sender knew the sequence number at
    /// the gap's start (the receiver always knows; see [`Gap::next_seq`]).
    pub lost_messages: u64,
    /// Connection resets because the pin deadline passed.
    pub pin_resets: u64,
}

/// A caller's report that does not follow the session's request (a bug in
/// the glue, not the peer's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgressError {
    /// The stream is not subscribed on this connection.
    #[error("stream {0} is not subscribed")]
    NotSubscribed(u32),
    /// A ring report or a send for another position than asked.
    #[error("stream {stream}: reported position {found}, expected {expected}")]
    WrongPosition {
        /// The stream.
        stream: u32,
        /// The position the session asked for.
        expected: u64,
        /// The position reported.
        found: u64,
    },
}

/// Per connection state of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not announced on this connection.
    Hidden,
    /// Announced, not subscribed.
    Announced,
    /// Subscribed.
    Subscribed(Flow),
    /// END acknowledged on this connection.
    Retired,
}

/// A subscribed stream's flow on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    /// DATA may be sent up to here (absolute ring position).
    limit: u64,
    /// A loss to report before anything else: GAP `[from, to)`, sent once
    /// the sequence number at `to` is known.
    pending_gap: Option<(u64, u64)>,
    /// A DATA step handed out and not yet confirmed sent: its end, and the
    /// sequence number after it.
    pending_data: Option<(u64, u64)>,
    /// END was decided at this position.
    end: Option<u64>,
    /// The send position is at the credit limit (counted once per stall).
    stalled: bool,
    /// The ring was read successfully since SUBSCRIBE (a framing error
    /// before that means the peer's resume position was not a record
    /// boundary).
    verified: bool,
}

/// One exported stream, for the daemon's lifetime.
#[derive(Debug, Clone)]
struct Stream {
    info: StreamInfo,
    /// Created at the first SUBSCRIBE; kept across connections.
    pos: Option<ExportPositions>,
    /// The sequence number of the message at a position, when known.
    seq_at: Option<(u64, u64)>,
    /// END acknowledged: never announced again.
    finished: bool,
    /// The ring is unreadable: nothing more is sent.
    broken: bool,
    phase: Phase,
    counters: StreamCounters,
}

/// The sender half of the connections with one peer (see the module docs).
/// It outlives connections: [`ExportSession::on_connection_closed`] ends
/// one, and the next starts with every stream hidden.
#[derive(Debug, Clone, Default)]
pub struct ExportSession {
    config: ExportConfig,
    streams: BTreeMap<u32, Stream>,
}

impl ExportSession {
    /// A session with no streams.
    pub fn new(config: ExportConfig) -> Self {
        Self {
            config,
            streams: BTreeMap::new(),
        }
    }

    /// The limits.
    pub fn config(&self) -> &ExportConfig {
        &self.config
    }

    /// Replaces the limits (a new connection under a reloaded configuration).
    pub fn set_config(&mut self, config: ExportConfig) {
        self.config = config;
    }

    /// Whether stream `id` should be announced on this connection: not yet
    /// announced, and not finished.
    pub fn should_announce(&self, id: u32) -> bool {
        self.streams
            .get(&id)
            .is_none_or(|s| s.phase == Phase::Hidden && !s.finished)
    }

    /// STREAM_ANNOUNCE for `id` was queued. A stream announced before on an
    /// earlier connection keeps its positions (`info` is the same ring's).
    pub fn on_announced(&mut self, id: u32, info: StreamInfo) {
        let s = self.streams.entry(id).or_insert(Stream {
            info,
            pos: None,
            seq_at: None,
            finished: false,
            broken: false,
            phase: Phase::Hidden,
            counters: StreamCounters::default(),
        });
        if s.phase == Phase::Hidden {
            s.phase = Phase::Announced;
        }
    }

    /// The peer's SUBSCRIBE. `view` opens the stream's ring reader if needed
    /// and describes the ring; `None` (the ring cannot be exported now)
    /// leaves the stream announced and unsubscribed. Returns the position
    /// the stream starts from.
    ///
    /// # Errors
    ///
    /// [`Violation`]: unknown stream, second SUBSCRIBE, SUBSCRIBE after END,
    /// or a resume position that is misaligned or past the ring's tail.
    pub fn on_subscribe(
        &mut self,
        sub: &Subscribe,
        view: impl FnOnce() -> Option<RingView>,
    ) -> Result<Option<u64>, Violation> {
        let frame = FrameType::Subscribe;
        let id = sub.stream;
        let s = self.announced_mut(frame, id)?;
        match s.phase {
            Phase::Announced => {}
            Phase::Subscribed(_) => return Err(unexpected(frame, id, "second SUBSCRIBE")),
            Phase::Retired => {
                return Err(unexpected(
                    frame,
                    id,
                    "the stream ended and its END was acknowledged",
                ))
            }
            Phase::Hidden => return Err(Violation::UnknownStream { frame, stream: id }),
        }
        let Some(view) = view() else {
            return Ok(None);
        };
        let pos = s
            .pos
            .get_or_insert_with(|| ExportPositions::new(s.info.mode, view.start));
        let floor = match s.info.mode {
            ExportMode::Tethered => pos.released(),
            ExportMode::Untethered { .. } => view.head,
        };
        let start = pos
            .subscribe(sub.resume_position, floor, view.tail)
            .map_err(|error| Violation::Positions {
                frame,
                stream: id,
                error,
            })?;
        if s.seq_at.is_some_and(|(p, _)| p != start.position) {
            s.seq_at = None;
        }
        // The receiver measured the window's room from its resume position;
        // a GAP to a later start gives it no more room. From the oldest
        // data, the window counts from the first position sent.
        let window_start = if sub.resume_position == RESUME_OLDEST {
            start.position
        } else {
            sub.resume_position
        };
        s.phase = Phase::Subscribed(Flow {
            limit: window_start.saturating_add(sub.window),
            pending_gap: start.gap,
            pending_data: None,
            end: None,
            stalled: false,
            verified: false,
        });
        Ok(Some(start.position))
    }

    /// The peer's ACK: it holds everything of `id` before `position`.
    ///
    /// # Errors
    ///
    /// [`Violation`]: unknown stream, ACK before SUBSCRIBE, ACK beyond what
    /// was sent. A lower ACK than before is ignored; so is a late ACK for a
    /// retired stream.
    pub fn on_ack(&mut self, id: u32, position: u64) -> Result<(), Violation> {
        let frame = FrameType::Ack;
        let s = self.announced_mut(frame, id)?;
        match s.phase {
            Phase::Subscribed(_) => {}
            Phase::Retired => return Ok(()),
            Phase::Announced => return Err(unexpected(frame, id, "ACK before SUBSCRIBE")),
            Phase::Hidden => return Err(Violation::UnknownStream { frame, stream: id }),
        }
        let Some(pos) = s.pos.as_mut() else {
            return Err(unexpected(frame, id, "ACK before SUBSCRIBE"));
        };
        pos.on_ack(position).map_err(|error| Violation::Positions {
            frame,
            stream: id,
            error,
        })
    }

    /// The peer's CREDIT: DATA of `id` may be sent up to `limit`. Limits
    /// only grow: a lower one than before is ignored (it cannot take back
    /// room the peer already granted, and DATA up to the old limit may be
    /// on the wire already).
    ///
    /// # Errors
    ///
    /// [`Violation`]: unknown stream or CREDIT before SUBSCRIBE. A late
    /// CREDIT for a retired stream is ignored.
    pub fn on_credit(&mut self, id: u32, limit: u64) -> Result<(), Violation> {
        let frame = FrameType::Credit;
        let s = self.announced_mut(frame, id)?;
        let (need, sent) = (
            s.info.max_record,
            s.pos.as_ref().map_or(0, ExportPositions::sent),
        );
        match &mut s.phase {
            Phase::Subscribed(flow) => {
                flow.limit = flow.limit.max(limit);
                if align_down(flow.limit.saturating_sub(sent)) >= need {
                    flow.stalled = false;
                }
                Ok(())
            }
            Phase::Retired => Ok(()),
            Phase::Announced => Err(unexpected(frame, id, "CREDIT before SUBSCRIBE")),
            Phase::Hidden => Err(Violation::UnknownStream { frame, stream: id }),
        }
    }

    /// What to read next for `id`, or `None`: not subscribed, ended,
    /// broken, or at its credit limit with nothing else to send (a credit
    /// stall, counted once until a CREDIT lifts it).
    pub fn next_read(&mut self, id: u32) -> Option<ReadRequest> {
        let bound = self.frame_bound(id)?;
        let s = self.streams.get_mut(&id)?;
        let Phase::Subscribed(flow) = &mut s.phase else {
            return None;
        };
        let pos = s.pos.as_ref()?;
        if s.broken || flow.end.is_some() {
            return None;
        }
        let sent = pos.sent();
        let credit = align_down(flow.limit.saturating_sub(sent));
        let need = s.info.max_record;
        if credit < need {
            if !flow.stalled {
                flow.stalled = true;
                s.counters.credit_stalls += 1;
            }
            // A pending GAP needs no credit; reading at its end gives its
            // sequence number. Otherwise nothing to do until a CREDIT.
            flow.pending_gap?;
        } else {
            flow.stalled = false;
        }
        let pin = match s.info.mode {
            ExportMode::Untethered { .. } => Some(pos.pin_position()),
            ExportMode::Tethered => None,
        };
        Some(ReadRequest {
            from: sent,
            // A record longer than the bound comes alone (`next_chunk`);
            // the credit covers it (`need` above).
            max_len: bound.min(credit),
            pin,
        })
    }

    /// What the caller found reading the ring for the last [`ReadRequest`]
    /// of `id`; returns the frame to send.
    ///
    /// # Errors
    ///
    /// [`ProgressError`] if the report does not match the request.
    pub fn on_ring(&mut self, id: u32, event: RingEvent) -> Result<Step, ProgressError> {
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(ProgressError::NotSubscribed(id))?;
        let (Phase::Subscribed(flow), Some(pos)) = (&mut s.phase, s.pos.as_mut()) else {
            return Err(ProgressError::NotSubscribed(id));
        };
        let sent = pos.sent();
        let at = match event {
            RingEvent::Records { start, .. } => start,
            RingEvent::Empty { at, .. } => at,
            RingEvent::Lapped { .. } => sent,
        };
        if at != sent {
            return Err(ProgressError::WrongPosition {
                stream: id,
                expected: sent,
                found: at,
            });
        }
        flow.verified = true;
        let seq_here = match event {
            RingEvent::Records { first_seq, .. } => first_seq,
            RingEvent::Empty { next_seq, .. } => next_seq,
            RingEvent::Lapped { head } => {
                // The loss runs to `head`; its GAP waits for the sequence
                // number there. The send position moves now so the next pin
                // is not taken on overwritten bytes.
                let to = align_down(head.max(sent));
                if to > sent {
                    let from = flow.pending_gap.map_or(sent, |(from, _)| from);
                    flow.pending_gap = Some((from, to));
                    pos.on_gap(to);
                }
                return Ok(Step::Idle);
            }
        };
        if let Some((from, to)) = flow.pending_gap.take() {
            s.counters.gaps += 1;
            s.counters.gap_bytes += to - from;
            if let Some((p, seq)) = s.seq_at {
                if p == from {
                    s.counters.lost_messages += seq_here.saturating_sub(seq);
                }
            }
            s.seq_at = Some((to, seq_here));
            return Ok(Step::Gap(Gap {
                stream: id,
                from,
                to,
                next_seq: seq_here,
            }));
        }
        s.seq_at = Some((sent, seq_here));
        match event {
            RingEvent::Records {
                start,
                end,
                records,
                first_seq,
            } => {
                if end > flow.limit {
                    if !flow.stalled {
                        flow.stalled = true;
                        s.counters.credit_stalls += 1;
                    }
                    return Ok(Step::Withheld);
                }
                flow.pending_data = Some((end, first_seq.saturating_add(u64::from(records))));
                Ok(Step::Data {
                    start,
                    end,
                    records,
                })
            }
            RingEvent::Empty {
                at,
                publisher_gone: true,
                ..
            } => {
                flow.end = Some(at);
                Ok(Step::End(End {
                    stream: id,
                    position: at,
                }))
            }
            _ => Ok(Step::Idle),
        }
    }

    /// Reading the ring of `id` failed (framing error, corrupt positions):
    /// nothing more is sent for it.
    ///
    /// # Errors
    ///
    /// A [`Violation`] if no read succeeded since SUBSCRIBE: then the peer's
    /// resume position was the cause (not a record boundary).
    pub fn on_ring_error(&mut self, id: u32) -> Result<(), Violation> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if let Phase::Subscribed(flow) = s.phase {
            if !flow.verified && s.pos.is_some() {
                return Err(unexpected(
                    FrameType::Subscribe,
                    id,
                    "the resume position is not a record boundary of the ring",
                ));
            }
        }
        s.broken = true;
        Ok(())
    }

    /// The DATA frame of the last [`Step::Data`] of `id`, up to ring
    /// position `end`, was handed to the socket, which has sent `conn_end`
    /// bytes in total with it, at time `now`.
    ///
    /// # Errors
    ///
    /// [`ProgressError`] if no such step was pending.
    pub fn on_data_sent(
        &mut self,
        id: u32,
        end: u64,
        conn_end: u64,
        now: u64,
    ) -> Result<(), ProgressError> {
        let s = self
            .streams
            .get_mut(&id)
            .ok_or(ProgressError::NotSubscribed(id))?;
        let (Phase::Subscribed(flow), Some(pos)) = (&mut s.phase, s.pos.as_mut()) else {
            return Err(ProgressError::NotSubscribed(id));
        };
        match flow.pending_data.take() {
            Some((e, seq_after)) if e == end => {
                pos.on_sent(conn_end, end, now);
                s.seq_at = Some((end, seq_after));
                Ok(())
            }
            other => Err(ProgressError::WrongPosition {
                stream: id,
                expected: other.map_or(pos.sent(), |(e, _)| e),
                found: end,
            }),
        }
    }

    /// The kernel is done with every byte of the connection before
    /// `conn_released` (zero-copy completions, or plain sends).
    pub fn on_connection_released(&mut self, conn_released: u64) {
        for s in self.streams.values_mut() {
            if let Some(pos) = s.pos.as_mut() {
                pos.on_connection_released(conn_released);
            }
        }
    }

    /// How the caller must protect `id`'s ring bytes now (`None`: the
    /// stream has no positions yet). Call after every event that touched
    /// the stream and apply the result when it changed.
    pub fn protection(&mut self, id: u32) -> Option<Protection> {
        let s = self.streams.get_mut(&id)?;
        let pos = s.pos.as_mut()?;
        Some(match s.info.mode {
            ExportMode::Tethered => Protection::Release(pos.release_target()),
            ExportMode::Untethered { .. } if pos.kernel_busy() => {
                Protection::Pin(pos.pin_position())
            }
            ExportMode::Untethered { .. } => Protection::Unpinned,
        })
    }

    /// The time is `now`: returns a [`Reset`] if an untethered stream's
    /// oldest send the kernel still holds is older than the pin deadline
    /// (counted in that stream's [`StreamCounters::pin_resets`]).
    pub fn tick(&mut self, now: u64) -> Option<Reset> {
        let deadline = self.config.pin_deadline;
        for (&id, s) in &mut self.streams {
            if !matches!(s.info.mode, ExportMode::Untethered { .. }) {
                continue;
            }
            let Some(at) = s.pos.as_ref().and_then(ExportPositions::oldest_in_flight) else {
                continue;
            };
            let held_for = now.saturating_sub(at);
            if held_for >= deadline {
                s.counters.pin_resets += 1;
                return Some(Reset {
                    stream: id,
                    held_for,
                });
            }
        }
        None
    }

    /// A DATA send of untethered stream `id` could not finish within the
    /// pin deadline (the socket stayed full): the same as the deadline
    /// passing in [`ExportSession::tick`], counted the same way.
    pub fn on_send_stalled(&mut self, id: u32) -> Reset {
        let held_for = self.config.pin_deadline;
        if let Some(s) = self.streams.get_mut(&id) {
            s.counters.pin_resets += 1;
        }
        Reset {
            stream: id,
            held_for,
        }
    }

    /// Nanoseconds until [`ExportSession::tick`] may next ask for a reset
    /// (`None`: nothing untethered in flight), to bound the caller's waits.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        self.streams
            .values()
            .filter(|s| matches!(s.info.mode, ExportMode::Untethered { .. }))
            .filter_map(|s| s.pos.as_ref()?.oldest_in_flight())
            .map(|at| (at.saturating_add(self.config.pin_deadline)).saturating_sub(now))
            .min()
    }

    /// The connection is gone, and the kernel is done with all its sends
    /// (completions drained, or the socket reset). Every stream becomes
    /// hidden; positions stay for the next connection.
    pub fn on_connection_closed(&mut self) {
        for s in self.streams.values_mut() {
            if let Some(pos) = s.pos.as_mut() {
                pos.on_connection_closed();
            }
            s.phase = Phase::Hidden;
        }
    }

    /// Subscribed streams whose END the peer acknowledged with the kernel
    /// done with them: the caller drops their readers and calls
    /// [`ExportSession::retire`].
    pub fn retirable(&self) -> Vec<u32> {
        self.streams
            .iter()
            .filter(|(_, s)| match (&s.phase, &s.pos) {
                (Phase::Subscribed(f), Some(pos)) => {
                    f.end.is_some_and(|e| pos.acked() >= e) && !pos.kernel_busy()
                }
                _ => false,
            })
            .map(|(&id, _)| id)
            .collect()
    }

    /// Stream `id` is finished: never announced again.
    pub fn retire(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.finished = true;
            s.pos = None;
            if s.phase != Phase::Hidden {
                s.phase = Phase::Retired;
            }
        }
    }

    /// Forgets stream `id` entirely, without an END (a reload stopped
    /// exporting its topic): call between connections, once the kernel is
    /// done with its sends. The peer never saw it end, so if it is announced
    /// again later it starts afresh (the peer resumes from its replica).
    pub fn forget(&mut self, id: u32) {
        self.streams.remove(&id);
    }

    /// Forgets stream `id`'s positions (its reader was replaced: evicted and
    /// rejoined); a subscribed stream continues from `start`, the new
    /// reader's first position, with a GAP if that is after what was sent.
    pub fn on_reader_replaced(&mut self, id: u32, start: u64) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let Some(old) = s.pos.as_ref() else {
            return;
        };
        let sent = old.sent();
        let acked = old.acked();
        let mut pos = ExportPositions::new(s.info.mode, start);
        if let Phase::Subscribed(flow) = &mut s.phase {
            // Continue where this connection is (everything before `sent`
            // went out on it), as a SUBSCRIBE there would; the new reader
            // holds nothing before `start`, so what lies between is a GAP.
            // The tail bound does not apply (`sent` was read from this ring
            // before), hence the largest position that is not RESUME_OLDEST.
            if let Ok(st) = pos.subscribe(sent.max(acked), start, RESUME_OLDEST - 1) {
                if let Some((from, to)) = st.gap {
                    let from = flow.pending_gap.map_or(from, |(f, _)| f);
                    flow.pending_gap = Some((from, to));
                }
            }
            flow.pending_data = None;
        }
        s.pos = Some(pos);
    }

    /// Subscribed stream ids on this connection, in order.
    pub fn subscribed(&self) -> impl Iterator<Item = u32> + '_ {
        self.streams
            .iter()
            .filter(|(_, s)| matches!(s.phase, Phase::Subscribed(_)))
            .map(|(&id, _)| id)
    }

    /// Whether `id` is subscribed and could send as soon as its ring moves
    /// (not ended, broken or at its credit limit).
    pub fn waits_for_ring(&self, id: u32) -> bool {
        self.streams.get(&id).is_some_and(|s| match s.phase {
            Phase::Subscribed(f) => !s.broken && f.end.is_none() && !f.stalled,
            _ => false,
        })
    }

    /// The next position to send of `id`.
    pub fn sent(&self, id: u32) -> Option<u64> {
        Some(self.streams.get(&id)?.pos.as_ref()?.sent())
    }

    /// Whether the kernel may still read bytes of `id`.
    pub fn kernel_busy(&self, id: u32) -> bool {
        self.streams
            .get(&id)
            .and_then(|s| s.pos.as_ref())
            .is_some_and(ExportPositions::kernel_busy)
    }

    /// Takes the counters of `id` added since the last call.
    pub fn take_counters(&mut self, id: u32) -> StreamCounters {
        self.streams
            .get_mut(&id)
            .map(|s| std::mem::take(&mut s.counters))
            .unwrap_or_default()
    }

    /// Largest DATA payload for `id` (see [`ExportConfig::max_frame`]); a
    /// single record longer than it is sent alone.
    fn frame_bound(&self, id: u32) -> Option<u64> {
        let info = &self.streams.get(&id)?.info;
        Some(align_down(
            self.config
                .max_frame
                .min(info.capacity / 2)
                .min(u64::from(MAX_DATA_LEN)),
        ))
    }

    /// The stream, if it was ever announced (its phase tells whether on
    /// this connection).
    fn announced_mut(&mut self, frame: FrameType, id: u32) -> Result<&mut Stream, Violation> {
        self.streams
            .get_mut(&id)
            .ok_or(Violation::UnknownStream { frame, stream: id })
    }
}

fn unexpected(frame: FrameType, stream: u32, why: &'static str) -> Violation {
    Violation::Unexpected { frame, stream, why }
}

fn align_down(n: u64) -> u64 {
    n & !(RECORD_ALIGN - 1)
}

#[cfg(test)]
mod tests;
