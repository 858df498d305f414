//! The replica side of an imported stream: its ring, its epoch, and the
//! non-blocking operations the receiver thread applies to it (create,
//! retire, ask for room, apply a gap, end).
//!
//! Nothing here waits: room is asked for ([`ImportStream::room_until`]), a
//! gap that does not fit yet is reported as [`GapOutcome::NoRoom`] and
//! retried by the caller.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use shmbus_bus::{self as bus, Skip};

use crate::{
    log,
    proto::{frame::Gap, session::import::Resume},
};

use super::super::{
    replica::{self, Mark, Replica, ReplicaMeta},
    stats::StreamStats,
};

/// A stream is identified across connections by (topic, publisher).
pub(crate) type StreamKey = (String, String);

/// One remote publisher mirrored into a local replica ring; lives for the
/// daemon's lifetime, so a reconnecting peer resumes from it.
#[derive(Debug)]
pub(crate) struct ImportStream {
    pub(super) topic: String,
    pub(super) publisher: String,
    pub(super) dir: PathBuf,
    pub(super) stem: String,
    pub(super) meta: ReplicaMeta,
    /// Epoch of `replica`, or of the next replica to create.
    pub(super) epoch: u64,
    /// `None` until the first frame of a stream subscribed from the oldest
    /// position, and after its END.
    pub(super) replica: Option<Replica>,
    /// The END was applied at this position: never imported again.
    pub(super) ended: Option<u64>,
    pub(super) stats: Arc<StreamStats>,
}

/// The import streams of one peer.
#[derive(Debug, Default)]
pub(crate) struct ImportSet {
    pub(super) streams: HashMap<StreamKey, ImportStream>,
}

/// What applying a gap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GapOutcome {
    /// The replica continues at the gap's end; local subscribers see
    /// `lost` messages lost (`None`: the numbering was unknown, nothing
    /// reported). `room_until`: the replica's room now.
    Applied {
        /// Messages reported lost.
        lost: Option<u64>,
        /// The replica's room.
        room_until: u64,
        /// Whether a new replica had to be started at the gap's end.
        new_replica: bool,
    },
    /// Local subscribers hold the space; nothing was written.
    NoRoom,
    /// The ring cannot represent the gap (longer than the ring, or too short
    /// to carry its count) and has no room now for the gap record that
    /// carries the count in its stead: that record is not covered by any
    /// room promised, so this is a wait, never a bookkeeping error.
    NoRoomForCount,
}

/// Why a gap could not be applied.
#[derive(Debug)]
pub(super) enum GapError {
    /// The peer's GAP is impossible (its sequence number goes backwards).
    Refused(String),
    /// The replica could not be written or created.
    Failed(String),
}

impl ImportStream {
    /// A stream with no replica yet.
    pub(super) fn new(
        key: &StreamKey,
        dir: PathBuf,
        stem: String,
        meta: ReplicaMeta,
        stats: Arc<StreamStats>,
    ) -> Self {
        Self {
            topic: key.0.clone(),
            publisher: key.1.clone(),
            dir,
            stem,
            meta,
            epoch: 0,
            replica: None,
            ended: None,
            stats,
        }
    }

    /// `topic/publisher`, for logs.
    pub(super) fn name(&self) -> String {
        format!("{}/{}", self.topic, self.publisher)
    }

    /// Where a subscription starts: the replica's position with its room,
    /// or the oldest data when there is no replica.
    pub(super) fn resume(&mut self) -> Resume {
        match self.replica.as_mut() {
            Some(r) => Resume::At {
                position: r.writer.position(),
                room_until: r.writer.room_until(),
            },
            None => Resume::Oldest,
        }
    }

    /// The replica's room (refreshes its gate); `None` without a replica.
    pub(super) fn room_until(&mut self) -> Option<u64> {
        self.replica.as_mut().map(|r| r.writer.room_until())
    }

    /// Starts replica epoch `self.epoch` at `start`, numbered from
    /// `next_seq` if known.
    pub(super) fn open_replica(
        &mut self,
        start: u64,
        next_seq: Option<u64>,
    ) -> Result<(), bus::Error> {
        let r = replica::create(
            &self.dir, &self.stem, self.epoch, &self.meta, start, next_seq,
        )?;
        replica::remove_holds_below(&self.dir, &self.stem, self.epoch);
        log::info!(
            "replica {} of {} starts at position {start}",
            r.path.display(),
            self.name()
        );
        self.replica = Some(r);
        self.stats.position.set(start);
        Ok(())
    }

    /// Closes the current replica; the next one gets the next epoch.
    pub(super) fn retire_replica(&mut self) {
        if let Some(r) = self.replica.take() {
            r.retire();
            self.epoch += 1;
        }
    }

    /// Applies GAP `g` without waiting: in the same replica (gap records
    /// carrying the exact count of lost messages), or, when the ring
    /// cannot represent it, a gap record with the count in this replica and
    /// a new replica at the gap's end. Without a replica, one is created at
    /// the gap's end (nothing was delivered before: nothing is lost locally).
    pub(super) fn apply_gap(&mut self, g: &Gap) -> Result<GapOutcome, GapError> {
        let Some(r) = self.replica.as_mut() else {
            self.open_replica(g.to, Some(g.next_seq))
                .map_err(|e| GapError::Failed(format!("cannot create a replica: {e}")))?;
            let room_until = self.room_until().unwrap_or(g.to);
            return Ok(GapOutcome::Applied {
                lost: None,
                room_until,
                new_replica: true,
            });
        };
        let known = r.writer.next_sequence();
        if let Some(seq) = known {
            if g.next_seq < seq {
                return Err(GapError::Refused(format!(
                    "GAP [{}, {}) says the next message is number {}, but the replica already holds messages up to number {}",
                    g.from, g.to, g.next_seq, seq
                )));
            }
        }
        let skip = r
            .writer
            .try_skip_to(g.to, g.next_seq)
            .map_err(|e| match e {
                bus::Error::InvalidConfig(why) => GapError::Refused(why),
                e => GapError::Failed(e.to_string()),
            })?;
        match skip {
            Skip::Done { lost } => Ok(GapOutcome::Applied {
                lost: known.map(|_| lost),
                room_until: r.writer.room_until(),
                new_replica: false,
            }),
            Skip::NoRoom => Ok(GapOutcome::NoRoom),
            Skip::Unrepresentable => {
                let count = known.map(|seq| g.next_seq - seq);
                if let Some(count) = count.filter(|&c| c > 0) {
                    match r.writer.try_write_gap(count) {
                        Ok(true) => {}
                        Ok(false) => return Ok(GapOutcome::NoRoomForCount),
                        Err(e) => return Err(GapError::Failed(e.to_string())),
                    }
                }
                if r.writer.position() == g.to {
                    return Ok(GapOutcome::Applied {
                        lost: count,
                        room_until: r.writer.room_until(),
                        new_replica: false,
                    });
                }
                self.retire_replica();
                self.open_replica(g.to, Some(g.next_seq))
                    .map_err(|e| GapError::Failed(format!("cannot create a replica: {e}")))?;
                Ok(GapOutcome::Applied {
                    lost: count,
                    room_until: self.room_until().unwrap_or(g.to),
                    new_replica: true,
                })
            }
        }
    }

    /// The stream is no longer imported (a reload): records where it
    /// stands in a resume marker and retires the replica, so local
    /// subscribers drain it and see the publisher gone, and a later import
    /// continues from that position. If the marker cannot be written, the
    /// replica is closed but its hold stays, which keeps the position.
    pub(super) fn withdraw(mut self) {
        if let Some(r) = self.replica.as_ref() {
            let mark = Mark {
                position: r.writer.position(),
                next_seq: r.writer.next_sequence(),
                next_epoch: self.epoch + 1,
            };
            if let Err(err) = replica::keep_resume_mark(&self.dir, &self.stem, &mark) {
                log::warning!(
                    "cannot record where {} stopped, keeping its replica's hold: {err}",
                    self.name()
                );
                return;
            }
        }
        self.retire_replica();
    }

    /// The stream is complete at `position`: records the end marker (so it
    /// is never imported twice) and retires the replica.
    pub(super) fn finish(&mut self, position: u64) {
        let next_seq = self.replica.as_ref().and_then(|r| r.writer.next_sequence());
        self.ended = Some(position);
        let next_epoch = self.epoch + u64::from(self.replica.is_some());
        let mark = Mark {
            position,
            next_seq,
            next_epoch,
        };
        if let Err(err) = replica::mark_ended(&self.dir, &self.stem, &mark) {
            log::warning!("cannot record the end of {}: {err}", self.name());
        }
        self.retire_replica();
    }
}

#[cfg(test)]
mod tests;
