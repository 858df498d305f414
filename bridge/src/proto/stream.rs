//! Positions of one forwarded stream, sans-IO: what the sender may send,
//! release or must keep pinned, and which DATA/GAP frames a receiver accepts.
//!
//! # Sender
//!
//! [`ExportPositions`] tracks, for one exported ring and one peer:
//!
//! - `sent`: the next ring position to send on the current connection;
//! - `acked`: the peer holds everything before it (its ACK, or its SUBSCRIBE
//!   resume position);
//! - the kernel's view: zero-copy sends whose completion has not arrived yet,
//!   as a FIFO of (connection byte offset, ring end, time of the send). The connection's
//!   [`ZcTracker`](super::zc::ZcTracker) counts bytes of the whole connection
//!   (one tracker per socket, many streams), so each send is recorded with
//!   the connection offset just past it; once the tracker has released that
//!   offset, the kernel no longer reads the stream's bytes before the ring
//!   end recorded with it.
//!
//! From these it derives what protects the ring bytes (`PRIOR-ART.md` §4.5):
//!
//! - tethered: the reader's released position is
//!   `min(acked, kernel done)`, never going backwards;
//! - untethered: the reader pins from `min(kernel done, max(acked, sent -
//!   retention))` while sends are in flight (or one is being made) and
//!   unpins otherwise, so local publishers wait on the network only for
//!   bytes the kernel may still read, plus at most `retention` bytes.
//!
//! # Receiver
//!
//! [`check_data`], [`check_gap`] and [`check_end`] validate DATA, GAP and
//! END headers against the replica's position and geometry before any byte
//! of a payload is read into a ring.
//!
//! # Example
//!
//! ```
//! use shmbus_bridge::proto::stream::{ExportMode, ExportPositions};
//!
//! let mut p = ExportPositions::new(ExportMode::Tethered, 0);
//! let start = p.subscribe(0, 0, 4096)?;
//! assert_eq!((start.position, start.gap), (0, None));
//! p.on_sent(100, 1024, 0); // connection bytes 0..100 carried ring bytes 0..1024
//! assert_eq!(p.release_target(), 0); // neither acknowledged nor completed
//! p.on_ack(1024)?;
//! assert_eq!(p.release_target(), 0); // acknowledged, kernel not done yet
//! p.on_connection_released(100);
//! assert_eq!(p.release_target(), 1024);
//! # Ok::<(), shmbus_bridge::proto::stream::StreamError>(())
//! ```

use std::collections::VecDeque;

use super::frame::{DataHeader, Gap, RESUME_OLDEST};

/// Ring records and positions are multiples of this.
pub const RECORD_ALIGN: u64 = 16;

/// How an export protects ring bytes from its publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportMode {
    /// Lossless: released at `min(peer ACK, kernel done)`.
    Tethered,
    /// Pins only while sends are in flight, `retention` bytes back at most.
    Untethered {
        /// Unacknowledged bytes before the send position kept pinned while
        /// the kernel holds sends (the caller caps it at half the ring).
        retention: u64,
    },
}

/// A protocol violation found in a peer's frame (the connection is closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// SUBSCRIBE asked for a position after the ring's tail.
    #[error("resume position {resume} is beyond the stream's tail {tail}: the peer holds data this ring never had")]
    ResumeBeyondTail {
        /// The position asked for.
        resume: u64,
        /// The ring's published tail.
        tail: u64,
    },
    /// A position that cannot be a record boundary.
    #[error("{what} position {position} is not a multiple of 16, so not a record boundary")]
    Misaligned {
        /// Which position.
        what: &'static str,
        /// Its value.
        position: u64,
    },
    /// ACK for bytes never sent.
    #[error("ACK for position {position}, but only {sent} was sent")]
    AckBeyondSent {
        /// The acknowledged position.
        position: u64,
        /// The send position.
        sent: u64,
    },
    /// DATA/GAP/END does not continue where the replica is.
    #[error("{what} starts at position {found}, but the replica continues at {expected}")]
    NotContiguous {
        /// Which frame.
        what: &'static str,
        /// The replica's position.
        expected: u64,
        /// The frame's position.
        found: u64,
    },
    /// DATA with an unusable length.
    #[error("DATA length {len} is not a positive multiple of 16 up to {max} (half the ring)")]
    BadLength {
        /// The length found.
        len: u32,
        /// The largest allowed.
        max: u64,
    },
    /// DATA, GAP or END that ends past [`MAX_POSITION`] (or past `u64::MAX`).
    #[error("{what} ends past position {MAX_POSITION}, beyond any ring's lifetime")]
    PositionTooLarge {
        /// Which frame.
        what: &'static str,
    },
}

/// The largest position a peer's DATA, GAP or END may reach. A ring
/// written at 10 GB/s takes 14 years to get there, and it leaves room
/// below `u64::MAX` for `position + capacity` arithmetic on replicas; a
/// frame past it is a hostile or corrupt peer (found by the `wire_session`
/// fuzz target: a DATA frame starting 16 bytes below `u64::MAX` was
/// accepted with a saturated end).
pub const MAX_POSITION: u64 = 1 << 62;

/// Where a subscription starts, from [`ExportPositions::subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// The first position to send.
    pub position: u64,
    /// Bytes the peer asked for that are gone: send GAP(from, to) first.
    pub gap: Option<(u64, u64)>,
}

/// One send the kernel may still read.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    /// Connection byte offset just past the send.
    conn_end: u64,
    /// Ring position just past it.
    ring_end: u64,
    /// When it was made (the caller's clock, nanoseconds).
    at: u64,
}

/// Sender positions of one exported stream for one peer (see module docs).
#[derive(Debug, Clone)]
pub struct ExportPositions {
    mode: ExportMode,
    sent: u64,
    acked: u64,
    /// Tethered: the reader's released position (monotone).
    released: u64,
    /// The kernel no longer reads this stream's bytes before this position.
    kernel_done: u64,
    /// Sends not yet released by the connection's tracker.
    in_flight: VecDeque<InFlight>,
}

impl ExportPositions {
    /// A stream whose reader joined at `start` (its released position).
    pub fn new(mode: ExportMode, start: u64) -> Self {
        Self {
            mode,
            sent: start,
            acked: start,
            released: start,
            kernel_done: start,
            in_flight: VecDeque::new(),
        }
    }

    /// The export mode.
    pub fn mode(&self) -> ExportMode {
        self.mode
    }

    /// Next position to send.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The peer holds everything before this.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Tethered: the position released to the publisher so far.
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Whether the kernel may still read bytes of this stream.
    pub fn kernel_busy(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Starts a subscription: the peer holds everything before `resume`
    /// ([`RESUME_OLDEST`]: nothing). `floor` is the oldest position still
    /// held (tethered: [`Self::released`]; untethered: the ring's head) and
    /// `tail` the ring's published tail. Call only with nothing in flight.
    ///
    /// # Errors
    ///
    /// [`StreamError::ResumeBeyondTail`] or [`StreamError::Misaligned`].
    pub fn subscribe(&mut self, resume: u64, floor: u64, tail: u64) -> Result<Start, StreamError> {
        let start = if resume == RESUME_OLDEST {
            Start {
                position: floor,
                gap: None,
            }
        } else {
            if resume % RECORD_ALIGN != 0 {
                return Err(StreamError::Misaligned {
                    what: "resume",
                    position: resume,
                });
            }
            if resume > tail {
                return Err(StreamError::ResumeBeyondTail { resume, tail });
            }
            if resume < floor {
                Start {
                    position: floor,
                    gap: Some((resume, floor)),
                }
            } else {
                Start {
                    position: resume,
                    gap: None,
                }
            }
        };
        self.sent = start.position;
        self.acked = start.position;
        self.kernel_done = start.position;
        self.in_flight.clear();
        Ok(start)
    }

    /// Records a DATA send of ring bytes up to `ring_end`, the connection's
    /// byte offset being `conn_end` just after it, made at time `now`
    /// (nanoseconds of the caller's monotonic clock).
    pub fn on_sent(&mut self, conn_end: u64, ring_end: u64, now: u64) {
        self.in_flight.push_back(InFlight {
            conn_end,
            ring_end,
            at: now,
        });
        self.sent = ring_end;
    }

    /// When the oldest send the kernel may still read was made, if any.
    pub fn oldest_in_flight(&self) -> Option<u64> {
        self.in_flight.front().map(|f| f.at)
    }

    /// Records a GAP sent: the stream continues at `to`; the peer will hold
    /// everything before it.
    pub fn on_gap(&mut self, to: u64) {
        self.sent = self.sent.max(to);
        if self.in_flight.is_empty() {
            self.kernel_done = self.sent;
        }
    }

    /// The connection's tracker released everything before connection
    /// offset `conn_released`.
    pub fn on_connection_released(&mut self, conn_released: u64) {
        while let Some(&f) = self.in_flight.front() {
            if f.conn_end > conn_released {
                break;
            }
            self.kernel_done = f.ring_end;
            self.in_flight.pop_front();
        }
        if self.in_flight.is_empty() {
            self.kernel_done = self.sent;
        }
    }

    /// The connection is gone and the kernel is done with all its sends
    /// (completions drained, or the socket was reset).
    pub fn on_connection_closed(&mut self) {
        self.in_flight.clear();
        self.kernel_done = self.sent;
    }

    /// The peer acknowledged everything before `position`.
    ///
    /// # Errors
    ///
    /// [`StreamError::AckBeyondSent`]; an ACK below an earlier one is ignored.
    pub fn on_ack(&mut self, position: u64) -> Result<(), StreamError> {
        if position > self.sent {
            return Err(StreamError::AckBeyondSent {
                position,
                sent: self.sent,
            });
        }
        self.acked = self.acked.max(position);
        Ok(())
    }

    /// Tethered: the position the reader may release to (never lower than
    /// before). Records it as released.
    pub fn release_target(&mut self) -> u64 {
        self.released = self.released.max(self.acked.min(self.kernel_done));
        self.released
    }

    /// Untethered: where to pin while the kernel holds sends or a send is
    /// being made: never after the oldest byte the kernel may read nor after
    /// the send position.
    pub fn pin_position(&self) -> u64 {
        let retention = match self.mode {
            ExportMode::Untethered { retention } => retention,
            ExportMode::Tethered => 0,
        };
        let wanted = self.acked.max(self.sent.saturating_sub(retention));
        wanted.min(self.kernel_done).min(self.sent)
    }
}

/// Checks a DATA header against the replica: it must continue at
/// `position` (`None`: no replica yet, any aligned start is accepted) with a
/// length that is a positive multiple of 16 and at most half of `capacity`.
///
/// # Errors
///
/// [`StreamError::NotContiguous`], [`StreamError::Misaligned`],
/// [`StreamError::PositionTooLarge`] or [`StreamError::BadLength`].
pub fn check_data(h: &DataHeader, position: Option<u64>, capacity: u64) -> Result<(), StreamError> {
    check_continues("DATA", h.start_position, position)?;
    check_below_max("DATA", h.start_position.checked_add(u64::from(h.len)))?;
    let max = capacity / 2;
    if h.len == 0 || u64::from(h.len) % RECORD_ALIGN != 0 || u64::from(h.len) > max {
        return Err(StreamError::BadLength { len: h.len, max });
    }
    Ok(())
}

/// Checks a GAP against the replica (as [`check_data`]); its end must be a
/// record boundary.
///
/// # Errors
///
/// [`StreamError::NotContiguous`], [`StreamError::PositionTooLarge`] or
/// [`StreamError::Misaligned`].
pub fn check_gap(g: &Gap, position: Option<u64>) -> Result<(), StreamError> {
    check_continues("GAP", g.from, position)?;
    check_below_max("GAP", Some(g.to))?;
    if g.to % RECORD_ALIGN != 0 {
        return Err(StreamError::Misaligned {
            what: "GAP end",
            position: g.to,
        });
    }
    Ok(())
}

/// Checks an END position against the replica (`None`: nothing received).
///
/// # Errors
///
/// [`StreamError::NotContiguous`] or [`StreamError::PositionTooLarge`].
pub fn check_end(end: u64, position: Option<u64>) -> Result<(), StreamError> {
    check_below_max("END", Some(end))?;
    match position {
        Some(p) if p != end => Err(StreamError::NotContiguous {
            what: "END",
            expected: p,
            found: end,
        }),
        _ => Ok(()),
    }
}

fn check_below_max(what: &'static str, end: Option<u64>) -> Result<(), StreamError> {
    match end {
        Some(e) if e <= MAX_POSITION => Ok(()),
        _ => Err(StreamError::PositionTooLarge { what }),
    }
}

fn check_continues(
    what: &'static str,
    found: u64,
    position: Option<u64>,
) -> Result<(), StreamError> {
    match position {
        Some(expected) if expected != found => Err(StreamError::NotContiguous {
            what,
            expected,
            found,
        }),
        None if found % RECORD_ALIGN != 0 => Err(StreamError::Misaligned {
            what,
            position: found,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNTETHERED: ExportMode = ExportMode::Untethered { retention: 1000 };

    #[test]
    fn subscribe_from_oldest_resume_or_with_gap() {
        let mut p = ExportPositions::new(ExportMode::Tethered, 160);
        let s = p.subscribe(RESUME_OLDEST, 160, 4096).unwrap();
        assert_eq!(
            s,
            Start {
                position: 160,
                gap: None
            }
        );
        let s = p.subscribe(320, 160, 4096).unwrap();
        assert_eq!(
            s,
            Start {
                position: 320,
                gap: None
            }
        );
        assert_eq!((p.sent(), p.acked()), (320, 320));
        let s = p.subscribe(32, 160, 4096).unwrap();
        assert_eq!(
            s,
            Start {
                position: 160,
                gap: Some((32, 160))
            }
        );
        assert_eq!(
            p.subscribe(4112, 160, 4096),
            Err(StreamError::ResumeBeyondTail {
                resume: 4112,
                tail: 4096
            })
        );
        assert!(matches!(
            p.subscribe(161, 0, 4096),
            Err(StreamError::Misaligned { .. })
        ));
        // Resuming exactly at the tail is fine: nothing to send yet.
        assert_eq!(p.subscribe(4096, 0, 4096).unwrap().position, 4096);
    }

    #[test]
    fn tethered_release_is_min_of_ack_and_completion_and_monotone() {
        let mut p = ExportPositions::new(ExportMode::Tethered, 0);
        p.subscribe(0, 0, 1 << 20).unwrap();
        p.on_sent(1000, 100, 0);
        p.on_sent(2000, 200, 0);
        p.on_sent(3000, 300, 0);
        assert!(p.kernel_busy());
        p.on_ack(300).unwrap();
        assert_eq!(p.release_target(), 0);
        p.on_connection_released(1999);
        assert_eq!(p.release_target(), 100);
        p.on_connection_released(3000);
        assert!(!p.kernel_busy());
        assert_eq!(p.release_target(), 300);
        // A stale, lower ACK changes nothing; release never goes back.
        p.on_ack(50).unwrap();
        assert_eq!(p.release_target(), 300);
        assert_eq!(
            p.on_ack(400),
            Err(StreamError::AckBeyondSent {
                position: 400,
                sent: 300
            })
        );
        // A peer that lost its copy resumes lower: the release stays.
        p.subscribe(RESUME_OLDEST, p.released(), 300).unwrap();
        assert_eq!(p.release_target(), 300);
    }

    #[test]
    fn completion_without_ack_does_not_release_tethered() {
        let mut p = ExportPositions::new(ExportMode::Tethered, 0);
        p.on_sent(10, 4096, 0);
        p.on_connection_released(10);
        assert_eq!(p.release_target(), 0);
        p.on_ack(2048).unwrap();
        assert_eq!(p.release_target(), 2048);
    }

    #[test]
    fn untethered_pin_covers_kernel_and_bounded_unacked_bytes() {
        let mut p = ExportPositions::new(UNTETHERED, 0);
        p.subscribe(0, 0, 1 << 20).unwrap();
        // Before the first send: pin at the send position (nothing acked, 0).
        assert_eq!(p.pin_position(), 0);
        p.on_sent(100, 5000, 0);
        // In flight from 0; unacked 5000 > retention 1000 but the kernel may
        // still read from 0, which wins.
        assert_eq!(p.pin_position(), 0);
        p.on_connection_released(100);
        assert!(!p.kernel_busy());
        // Kernel done: only the retention window behind the send position.
        assert_eq!(p.pin_position(), 4000);
        p.on_ack(4500).unwrap();
        assert_eq!(p.pin_position(), 4500);
        p.on_sent(200, 9000, 0);
        assert_eq!(p.pin_position(), 5000);
    }

    #[test]
    fn gaps_move_the_send_position() {
        let mut p = ExportPositions::new(UNTETHERED, 0);
        p.subscribe(0, 0, 1 << 20).unwrap();
        p.on_gap(8192);
        assert_eq!(p.sent(), 8192);
        assert_eq!(p.pin_position(), 7192);
        p.on_sent(10, 9000, 0);
        p.on_connection_closed();
        assert!(!p.kernel_busy());
        assert_eq!(p.pin_position(), 8000);
    }

    #[test]
    fn receiver_checks() {
        let h = |start, len| DataHeader {
            stream: 1,
            start_position: start,
            len,
        };
        assert!(check_data(&h(64, 32), Some(64), 4096).is_ok());
        assert!(check_data(&h(64, 32), None, 4096).is_ok());
        assert!(matches!(
            check_data(&h(48, 32), Some(64), 4096),
            Err(StreamError::NotContiguous {
                expected: 64,
                found: 48,
                ..
            })
        ));
        assert!(matches!(
            check_data(&h(8, 32), None, 4096),
            Err(StreamError::Misaligned { .. })
        ));
        for len in [0, 8, 100, 2064] {
            assert!(
                matches!(
                    check_data(&h(64, len), Some(64), 4096),
                    Err(StreamError::BadLength { .. })
                ),
                "{len}"
            );
        }
        assert!(check_data(&h(64, 2048), Some(64), 4096).is_ok());
        let g = |from, to| Gap {
            stream: 1,
            from,
            to,
            next_seq: 0,
        };
        assert!(check_gap(&g(64, 128), Some(64)).is_ok());
        assert!(check_gap(&g(64, 128), None).is_ok());
        assert!(check_gap(&g(32, 128), Some(64)).is_err());
        assert!(check_gap(&g(64, 130), Some(64)).is_err());
        assert!(check_end(64, Some(64)).is_ok());
        assert!(check_end(64, None).is_ok());
        assert!(check_end(80, Some(64)).is_err());
    }
}
