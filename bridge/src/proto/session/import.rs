//! The receiver half of a connection, sans-IO: which frame of an imported
//! stream is legal when, the credit this bridge grants, and what the caller
//! must do to its replica rings.
//!
//! # Lifecycle of a stream id
//!
//! ```text
//! ANNOUNCE ──► Undecided ──► Ignored
//!                   │  └───► Held (previous replica draining) ──┐
//!                   └──────► Subscribed ◄───────────────────────┘
//!                               │  END (after any pending gap)
//!                               ▼
//!                             Ended
//! ```
//!
//! The caller decides what to do with an announced stream (allow-lists,
//! limits and files are not this module's business) and tells the session
//! with [`ImportSession::ignore`], [`ImportSession::hold`] or
//! [`ImportSession::subscribe`]. Only a subscribed stream may carry DATA,
//! GAP and END; anything else is an [`ImportViolation`].
//!
//! # Credit
//!
//! The SUBSCRIBE's window and every CREDIT after it promise the sender room
//! in the replica: DATA may end at most at the newest limit, which is never
//! past the replica's `room_until` when it was granted, so reserving a DATA
//! frame's space always succeeds at once and the receiving thread never
//! waits for local subscribers. The window counts from the SUBSCRIBE's
//! resume position, or, for a stream subscribed from the oldest data, from
//! its first frame's position (the replica is created empty there). A GAP
//! that starts the stream does not move that start: the room promised is
//! room of the replica as it is, wherever the sender's data begins.
//!
//! A new limit is granted when the room grew by at least a quarter of the
//! ring past the last limit, or when the sender has used all its credit; so
//! a CREDIT goes out every quarter ring, not per DATA frame. A stream whose
//! local subscribers are stuck gets no credit and stops alone; the others
//! keep flowing. The caller learns the room only by asking the ring, so the
//! session says which streams are worth asking ([`ImportSession::wants_room`]).
//!
//! # Gaps
//!
//! A GAP needs no credit, but applying it to the replica needs room up to
//! its end. A GAP ending at or below the granted limit always fits (that room
//! was promised); one beyond it may have to wait for local subscribers. The
//! session keeps one pending gap per stream and merges the next GAP into it
//! (the next one starts where the pending one ends). Nothing else can arrive
//! for that stream meanwhile except GAP and END: DATA would have to start at
//! the gap's end, past the limit. An END that arrives while a gap is
//! pending takes effect once the gap is applied.

use std::collections::{BTreeMap, VecDeque};

use super::super::{
    frame::{Ack, Credit, DataHeader, End, ErrorCode, FrameType, Gap, Subscribe, RESUME_OLDEST},
    stream::{check_data, check_end, check_gap, StreamError, RECORD_ALIGN},
};

#[cfg(test)]
mod tests;

/// What this bridge holds of a stream when it subscribes to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Nothing: subscribe from the oldest data the sender holds; the replica
    /// is created, empty, at the first frame's position.
    Oldest,
    /// A replica continuing at `position`, whose local subscribers leave
    /// room up to `room_until` (its `room_until()`).
    At {
        /// The replica's write position.
        position: u64,
        /// The replica's room: a chunk ending at or before it fits at once.
        room_until: u64,
    },
}

/// A frame of the peer that breaks the receiver's rules: the connection
/// ends with an ERROR carrying [`ImportViolation::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportViolation {
    /// STREAM_ANNOUNCE for an id already announced on this connection.
    #[error("stream {stream} announced twice")]
    AnnouncedTwice {
        /// The stream id.
        stream: u32,
    },
    /// A frame for a stream this bridge did not subscribe to (unknown,
    /// ignored, or still waiting for its previous replica to drain).
    #[error("{frame} for stream {stream}, which this bridge did not subscribe to")]
    NotSubscribed {
        /// The frame's type.
        frame: FrameType,
        /// The stream id.
        stream: u32,
    },
    /// A frame after the stream's END.
    #[error("{frame} for stream {stream} after its END")]
    AfterEnd {
        /// The frame's type.
        frame: FrameType,
        /// The stream id.
        stream: u32,
    },
    /// A frame that does not fit the stream's positions or geometry.
    #[error("{frame} for stream {stream}: {source}")]
    Position {
        /// The frame's type.
        frame: FrameType,
        /// The stream id.
        stream: u32,
        /// What is wrong.
        source: StreamError,
    },
    /// DATA ending past the credit this bridge granted.
    #[error(
        "DATA for stream {stream} ends at {end}, past the credit limit {limit} this bridge granted"
    )]
    BeyondCredit {
        /// The stream id.
        stream: u32,
        /// The frame's end position.
        end: u64,
        /// The newest limit granted.
        limit: u64,
    },
    /// More streams announced on one connection than any sender offers.
    #[error("more than {MAX_ANNOUNCED_STREAMS} streams announced on one connection")]
    TooManyStreams,
}

/// Most stream ids one connection may announce: a sender offers at most
/// its catalog's rings (`daemon::catalog::MAX_RINGS`, the same number), so
/// the per-connection map stays bounded even for ids this bridge ignores.
pub const MAX_ANNOUNCED_STREAMS: usize = 65_536;

impl ImportViolation {
    /// The ERROR code to send.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotSubscribed { .. } => ErrorCode::UnknownStream,
            Self::AnnouncedTwice { .. } | Self::AfterEnd { .. } | Self::BeyondCredit { .. } => {
                ErrorCode::UnexpectedFrame
            }
            Self::TooManyStreams => ErrorCode::NotAllowed,
            Self::Position { .. } => ErrorCode::Malformed,
        }
    }
}

/// Why a stream is not subscribed (logged by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The stream was received completely before (its END was applied);
    /// importing it again would deliver its messages twice.
    #[error("it was received completely before (its END was applied)")]
    Ended,
    /// The id is not waiting for a decision (not announced, or decided).
    #[error("stream {stream} is not waiting for a decision")]
    NotUndecided {
        /// The stream id.
        stream: u32,
    },
}

/// A frame the caller must send to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Start a stream.
    Subscribe(Subscribe),
    /// More room for a stream.
    Credit(Credit),
    /// The replica holds a stream up to a position.
    Ack(Ack),
}

/// An accepted DATA frame: read its payload into the replica at `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPlan {
    /// The stream's first frame: create its replica, empty, at `start`.
    pub create_replica: bool,
    /// The payload's first position.
    pub start: u64,
    /// The payload's length.
    pub len: u64,
}

/// What to do about an accepted GAP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapPlan {
    /// Apply this gap (the pending one merged with the new one) now and
    /// report with [`ImportSession::gap_applied`].
    Apply {
        /// The gap to apply.
        gap: Gap,
        /// It ends within the room promised or reported (or the stream has
        /// no replica yet), so the replica cannot refuse it for lack of room;
        /// if it does, this bridge's bookkeeping is wrong: close the
        /// connection. Otherwise it is longer than the ring (it continues in
        /// a new replica and needs room only for a gap record in the old
        /// one) and may find no room: it stays pending
        /// ([`ImportSession::pending_gaps`]).
        within_room: bool,
    },
    /// It ends past the credit and the known room: it stays pending; retry
    /// it when the replica may have room ([`ImportSession::pending_gaps`]),
    /// and report with [`ImportSession::gap_applied`] once it is applied.
    Wait,
}

/// What to do about an accepted END.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndPlan {
    /// The stream is complete at `position`: retire its replica and record
    /// the end (the ACK is queued).
    Finish {
        /// The final position.
        position: u64,
    },
    /// A gap is pending: the END takes effect when it is applied
    /// ([`ImportSession::gap_applied`] returns it then).
    AfterGap,
}

/// The credit of a subscribed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// Subscribed from the oldest data: `window` bytes past the first
    /// frame's position.
    Window(u64),
    /// An absolute limit.
    At(u64),
}

#[derive(Debug, Clone)]
struct Subscribed {
    capacity: u64,
    /// Where the next frame must start (`None`: the first frame of a
    /// stream subscribed from the oldest data).
    expected: Option<u64>,
    /// The replica holds everything before this (DATA and gaps applied).
    applied: Option<u64>,
    limit: Limit,
    /// The newest room the caller reported.
    room: u64,
    pending_gap: Option<Gap>,
    pending_end: Option<u64>,
}

impl Subscribed {
    fn quarter(&self) -> u64 {
        (self.capacity / 4).max(RECORD_ALIGN)
    }
}

#[derive(Debug, Clone)]
enum State {
    Undecided,
    Ignored,
    Held,
    Subscribed(Box<Subscribed>),
    Ended,
}

/// The receiver half of one connection (see the module docs).
#[derive(Debug, Default)]
pub struct ImportSession {
    streams: BTreeMap<u32, State>,
    out: VecDeque<Output>,
}

impl ImportSession {
    /// A session with no streams.
    pub fn new() -> Self {
        Self::default()
    }

    /// Frames to send, oldest first.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// A STREAM_ANNOUNCE arrived: the stream waits for the caller's decision.
    ///
    /// # Errors
    ///
    /// [`ImportViolation::AnnouncedTwice`];
    /// [`ImportViolation::TooManyStreams`] past [`MAX_ANNOUNCED_STREAMS`].
    pub fn on_announce(&mut self, stream: u32) -> Result<(), ImportViolation> {
        if self.streams.contains_key(&stream) {
            return Err(ImportViolation::AnnouncedTwice { stream });
        }
        if self.streams.len() >= MAX_ANNOUNCED_STREAMS {
            return Err(ImportViolation::TooManyStreams);
        }
        self.streams.insert(stream, State::Undecided);
        Ok(())
    }

    /// The caller does not import the stream; its frames are violations.
    pub fn ignore(&mut self, stream: u32) {
        if let Some(s @ (State::Undecided | State::Held)) = self.streams.get_mut(&stream) {
            *s = State::Ignored;
        }
    }

    /// The caller subscribes later (its previous replica is draining).
    pub fn hold(&mut self, stream: u32) {
        if let Some(s @ State::Undecided) = self.streams.get_mut(&stream) {
            *s = State::Held;
        }
    }

    /// Subscribes to an undecided or held stream whose ring has `capacity`
    /// bytes, from what this bridge holds (`resume`); queues the SUBSCRIBE
    /// with the initial window. `ended`: the stream was received completely
    /// before (on an earlier connection or run), which refuses it.
    ///
    /// # Errors
    ///
    /// [`Refusal`]; the stream is then ignored.
    pub fn subscribe(
        &mut self,
        stream: u32,
        resume: Resume,
        capacity: u64,
        ended: bool,
    ) -> Result<(), Refusal> {
        let Some(state) = self.streams.get_mut(&stream) else {
            return Err(Refusal::NotUndecided { stream });
        };
        if !matches!(state, State::Undecided | State::Held) {
            return Err(Refusal::NotUndecided { stream });
        }
        if ended {
            *state = State::Ignored;
            return Err(Refusal::Ended);
        }
        let (resume_position, window, sub) = match resume {
            Resume::Oldest => (
                RESUME_OLDEST,
                capacity,
                Subscribed {
                    capacity,
                    expected: None,
                    applied: None,
                    limit: Limit::Window(capacity),
                    room: 0,
                    pending_gap: None,
                    pending_end: None,
                },
            ),
            Resume::At {
                position,
                room_until,
            } => {
                let limit = room_until.max(position);
                (
                    position,
                    limit - position,
                    Subscribed {
                        capacity,
                        expected: Some(position),
                        applied: Some(position),
                        limit: Limit::At(limit),
                        room: limit,
                        pending_gap: None,
                        pending_end: None,
                    },
                )
            }
        };
        *state = State::Subscribed(Box::new(sub));
        self.out.push_back(Output::Subscribe(Subscribe {
            stream,
            resume_position,
            window,
        }));
        Ok(())
    }

    /// Whether `stream` is subscribed and not ended (HEARTBEAT entries of
    /// other streams are ignored).
    pub fn is_subscribed(&self, stream: u32) -> bool {
        matches!(self.streams.get(&stream), Some(State::Subscribed(_)))
    }

    /// Whether `stream` was announced and is held (waiting to subscribe).
    pub fn is_held(&self, stream: u32) -> bool {
        matches!(self.streams.get(&stream), Some(State::Held))
    }

    fn subscribed(
        &mut self,
        stream: u32,
        frame: FrameType,
    ) -> Result<&mut Subscribed, ImportViolation> {
        match self.streams.get_mut(&stream) {
            Some(State::Subscribed(s)) if s.pending_end.is_some() => {
                Err(ImportViolation::AfterEnd { frame, stream })
            }
            Some(State::Subscribed(s)) => Ok(s),
            Some(State::Ended) => Err(ImportViolation::AfterEnd { frame, stream }),
            _ => Err(ImportViolation::NotSubscribed { frame, stream }),
        }
    }

    /// A DATA header arrived: checks it against the stream's position, the
    /// ring's geometry and the credit. On `Ok`, read the payload into the
    /// replica and report with [`Self::data_applied`].
    ///
    /// # Errors
    ///
    /// [`ImportViolation`]: the payload must not be applied.
    pub fn on_data(&mut self, h: &DataHeader) -> Result<DataPlan, ImportViolation> {
        let stream = h.stream;
        let sub = self.subscribed(stream, FrameType::Data)?;
        check_data(h, sub.expected, sub.capacity).map_err(|source| ImportViolation::Position {
            frame: FrameType::Data,
            stream,
            source,
        })?;
        let limit = match sub.limit {
            Limit::Window(w) => h.start_position.saturating_add(w),
            Limit::At(l) => l,
        };
        let end = h.end_position();
        if end > limit {
            return Err(ImportViolation::BeyondCredit { stream, end, limit });
        }
        let create_replica = sub.applied.is_none();
        if create_replica {
            sub.applied = Some(h.start_position);
            sub.room = h.start_position.saturating_add(sub.capacity);
        }
        sub.limit = Limit::At(limit);
        sub.expected = Some(end);
        Ok(DataPlan {
            create_replica,
            start: h.start_position,
            len: u64::from(h.len),
        })
    }

    /// The replica holds `stream` up to `end` (a DATA payload was
    /// published), with room until `room_until`: queues the ACK and any
    /// CREDIT due.
    pub fn data_applied(&mut self, stream: u32, end: u64, room_until: u64) {
        if let Some(State::Subscribed(sub)) = self.streams.get_mut(&stream) {
            sub.applied = Some(sub.applied.map_or(end, |a| a.max(end)));
            sub.room = sub.room.max(room_until);
            self.out.push_back(Output::Ack(Ack {
                stream,
                position: end,
            }));
            grant(stream, sub, &mut self.out);
        }
    }

    /// The replica of `stream` has room until `room_until` (local
    /// subscribers moved): queues a CREDIT if one is due.
    pub fn room(&mut self, stream: u32, room_until: u64) {
        if let Some(State::Subscribed(sub)) = self.streams.get_mut(&stream) {
            if sub.applied.is_some() {
                sub.room = sub.room.max(room_until);
                grant(stream, sub, &mut self.out);
            }
        }
    }

    /// Whether asking `stream`'s replica for its room is worth it: a CREDIT
    /// could follow (a quarter of the ring was used since the last limit,
    /// or the sender is out of credit), or a gap waits for room.
    pub fn wants_room(&self, stream: u32) -> bool {
        let Some(State::Subscribed(sub)) = self.streams.get(&stream) else {
            return false;
        };
        let (Some(applied), Limit::At(limit)) = (sub.applied, sub.limit) else {
            return false;
        };
        if sub.pending_gap.is_some() {
            return true;
        }
        // The room never exceeds `applied + capacity`.
        let reachable = applied.saturating_add(sub.capacity);
        reachable >= limit.saturating_add(sub.quarter())
            || (sub.expected >= Some(limit) && reachable > limit)
    }

    /// The subscribed streams, for [`Self::wants_room`] sweeps.
    pub fn subscribed_streams(&self) -> impl Iterator<Item = u32> + '_ {
        self.streams.iter().filter_map(|(id, s)| match s {
            State::Subscribed(_) => Some(*id),
            _ => None,
        })
    }

    /// A GAP arrived: checks it against the stream's position and merges it
    /// into the pending gap, if any.
    ///
    /// # Errors
    ///
    /// [`ImportViolation`].
    pub fn on_gap(&mut self, g: &Gap) -> Result<GapPlan, ImportViolation> {
        let stream = g.stream;
        let sub = self.subscribed(stream, FrameType::Gap)?;
        check_gap(g, sub.expected).map_err(|source| ImportViolation::Position {
            frame: FrameType::Gap,
            stream,
            source,
        })?;
        if let Limit::Window(w) = sub.limit {
            sub.limit = Limit::At(g.from.saturating_add(w));
        }
        let merged = match sub.pending_gap {
            Some(p) => Gap {
                stream,
                from: p.from,
                to: g.to,
                next_seq: g.next_seq,
            },
            None => *g,
        };
        sub.pending_gap = Some(merged);
        sub.expected = Some(g.to);
        Ok(plan_gap(sub, merged))
    }

    /// The pending gaps, to retry when their replicas may have room (with
    /// `create_replica` false: a stream without a replica never waits).
    pub fn pending_gaps(&self) -> impl Iterator<Item = Gap> + '_ {
        self.streams.values().filter_map(|s| match s {
            State::Subscribed(sub) => sub.pending_gap,
            _ => None,
        })
    }

    /// The pending gap of `stream` was applied; the replica (the same one,
    /// or a new one at the gap's end) has room until `room_until`. Queues
    /// the ACK and the CREDIT due; returns the END to finish now if one was
    /// waiting for the gap.
    pub fn gap_applied(&mut self, stream: u32, room_until: u64) -> Option<End> {
        let Some(State::Subscribed(sub)) = self.streams.get_mut(&stream) else {
            return None;
        };
        let gap = sub.pending_gap.take()?;
        sub.applied = Some(gap.to);
        sub.room = sub.room.max(room_until);
        self.out.push_back(Output::Ack(Ack {
            stream,
            position: gap.to,
        }));
        if let Some(position) = sub.pending_end {
            self.finish(stream, position);
            return Some(End { stream, position });
        }
        grant(stream, sub, &mut self.out);
        None
    }

    /// An END arrived: checks its position.
    ///
    /// # Errors
    ///
    /// [`ImportViolation`].
    pub fn on_end(&mut self, e: &End) -> Result<EndPlan, ImportViolation> {
        let stream = e.stream;
        let sub = self.subscribed(stream, FrameType::End)?;
        check_end(e.position, sub.expected).map_err(|source| ImportViolation::Position {
            frame: FrameType::End,
            stream,
            source,
        })?;
        if sub.pending_gap.is_some() {
            sub.pending_end = Some(e.position);
            return Ok(EndPlan::AfterGap);
        }
        self.finish(stream, e.position);
        Ok(EndPlan::Finish {
            position: e.position,
        })
    }

    fn finish(&mut self, stream: u32, position: u64) {
        self.streams.insert(stream, State::Ended);
        self.out.push_back(Output::Ack(Ack { stream, position }));
    }
}

/// Whether the gap can be applied now: it fits the promised room, or there
/// is no replica yet (a new one is created at its end), or it is longer than
/// the ring (a new replica continues at its end).
fn plan_gap(sub: &Subscribed, gap: Gap) -> GapPlan {
    let fits = match (sub.applied, sub.limit) {
        (None, _) => true,
        (Some(_), Limit::At(l)) => gap.to <= l.max(sub.room),
        (Some(_), Limit::Window(_)) => false,
    };
    if fits {
        GapPlan::Apply {
            gap,
            within_room: true,
        }
    } else if gap.to - gap.from > sub.capacity {
        GapPlan::Apply {
            gap,
            within_room: false,
        }
    } else {
        GapPlan::Wait
    }
}

/// Queues a CREDIT up to the room if it grew by a quarter of the ring past
/// the limit, or if the sender used all its credit.
fn grant(stream: u32, sub: &mut Subscribed, out: &mut VecDeque<Output>) {
    let Limit::At(limit) = sub.limit else {
        return;
    };
    if sub.pending_gap.is_some() || sub.room <= limit {
        // While a gap is pending the sender cannot use credit (its next DATA
        // starts at the gap's end); the credit follows the gap.
        return;
    }
    let out_of_credit = sub.expected >= Some(limit);
    if sub.room - limit >= sub.quarter() || out_of_credit {
        sub.limit = Limit::At(sub.room);
        out.push_back(Output::Credit(Credit {
            stream,
            limit: sub.room,
        }));
    }
}
