//! What the receiver does with a STREAM_ANNOUNCE: import rules, per-peer
//! limits, loop prevention, and where the stream continues (a replica of
//! this connection's predecessor, files an earlier run left, an end marker
//! that refuses it); then it tells the session to subscribe, hold or
//! ignore the stream.

use std::time::Instant;

use shmbus_bus as bus;

use crate::{
    log,
    proto::{
        frame::{ErrorCode, StreamFlags},
        session::import::{Refusal, Resume},
    },
};

use super::{
    super::{
        naming,
        replica::{self, Ended, ResumePoint},
        stats::Dir,
    },
    streams::{ImportStream, StreamKey},
    OwnedAnnounce, Receiver, Step, DRAIN_WAIT,
};

/// A stream resumed from an earlier run's replica, waiting for [`DRAIN_WAIT`].
/// It joins the [`ImportSet`](super::ImportSet) only once its replica
/// exists, so a connection that ends first leaves the earlier run's files to
/// be found again.
#[derive(Debug)]
pub(super) struct Pending {
    id: u32,
    pub(super) key: StreamKey,
    since: Instant,
    point: ResumePoint,
    stream: ImportStream,
}

/// What to do with an announced stream.
enum Decision {
    Ignore,
    Hold(Box<Pending>),
    Subscribe(StreamKey),
}

impl Receiver<'_> {
    pub(super) fn on_announce(&mut self, a: OwnedAnnounce) -> Result<(), Step> {
        self.session
            .on_announce(a.stream)
            .map_err(|v| Step::violation(&v))?;
        if bus::validate_name("topic", &a.topic).is_err()
            || bus::validate_name("publisher id", &a.publisher).is_err()
        {
            return Err(Step::Violation(
                ErrorCode::Malformed,
                format!(
                    "stream {} has an invalid topic {:?} or publisher id {:?}",
                    a.stream, a.topic, a.publisher
                ),
            ));
        }
        match self.decide(&a) {
            Decision::Ignore => self.session.ignore(a.stream),
            Decision::Hold(p) => {
                self.session.hold(a.stream);
                self.pending.push(*p);
            }
            Decision::Subscribe(key) => self.subscribe(a.stream, key),
        }
        Ok(())
    }

    /// Whether and how to import an announced stream.
    fn decide(&mut self, a: &OwnedAnnounce) -> Decision {
        let cfg = self.shared.config();
        let what = format!("{}/{} from {}", a.topic, a.publisher, self.peer.name);
        if a.flags.contains(StreamFlags::BRIDGED) {
            log::debug!("not importing {what}: it is itself a bridged copy");
            return Decision::Ignore;
        }
        if !cfg.imports_topic(&a.topic) {
            log::debug!("not importing {what}: no import rule matches the topic");
            // A reload that imports the topic reconnects to subscribe it.
            self.unimported.insert(a.stream, a.topic.clone());
            return Decision::Ignore;
        }
        if a.meta.capacity > cfg.max_replica_capacity {
            log::warning!(
                "not importing {what}: its ring of {} bytes is larger than max_replica_capacity ({})",
                a.meta.capacity,
                cfg.max_replica_capacity
            );
            return Decision::Ignore;
        }
        if let Err(e) = a.meta.ring_config().validate() {
            log::warning!("not importing {what}: {e}");
            return Decision::Ignore;
        }
        let key = (a.topic.clone(), a.publisher.clone());
        if !self.set.streams.contains_key(&key) {
            if let Some(why) = self.limit_refusal(a.meta.capacity) {
                self.peer.stats.limit_refusals.add(1);
                log::warning!("not importing {what}: {why}");
                return Decision::Ignore;
            }
        }
        if self.keys.values().any(|k| *k == key) || self.pending.iter().any(|p| p.key == key) {
            log::warning!("not importing {what} twice (announced under two stream ids)");
            return Decision::Ignore;
        }
        if let Some(st) = self.set.streams.get(&key) {
            if st.meta != a.meta {
                log::warning!("not importing {what}: its type or geometry changed since it was first imported");
                return Decision::Ignore;
            }
            replica::touch_marks(&st.dir, &st.stem);
            return Decision::Subscribe(key);
        }
        let dir = match bus::topic_dir(&cfg.root, &cfg.bus, &a.topic) {
            Ok(d) => d,
            Err(e) => {
                log::warning!("not importing {what}: {e}");
                return Decision::Ignore;
            }
        };
        let stem = naming::replica_stem(&self.peer.name, &a.publisher);
        replica::touch_marks(&dir, &stem);
        match replica::ended(&dir, &stem) {
            Ended::No => {}
            Ended::At(m) => {
                log::info!(
                    "not importing {what}: it was received completely before (ended at position {})",
                    m.position
                );
                return Decision::Ignore;
            }
            Ended::Unknown => {
                log::info!("not importing {what}: it was received completely before (end marker without a position)");
                return Decision::Ignore;
            }
        }
        let previous = match replica::find_previous(&dir, &stem) {
            Ok(p) => p,
            Err(e) => {
                log::error!("not importing {what}: {e}");
                return Decision::Ignore;
            }
        };
        let stats = self
            .shared
            .stats
            .stream(&self.peer.name, Dir::In, &a.topic, &a.publisher);
        let mut st = ImportStream::new(&key, dir, stem, a.meta.clone(), stats);
        match previous {
            None => {
                self.set.streams.insert(key.clone(), st);
                Decision::Subscribe(key)
            }
            Some(point) => {
                log::info!(
                    "resuming {what} at position {} (replica epoch {})",
                    point.position,
                    point.next_epoch
                );
                // Subscribers with nothing left to read leave at once.
                let _ = bus::sweep_topic(&st.dir);
                st.epoch = point.next_epoch;
                Decision::Hold(Box::new(Pending {
                    id: a.stream,
                    key,
                    since: Instant::now(),
                    point,
                    stream: st,
                }))
            }
        }
    }

    /// Why a new stream of `capacity` bytes would break a per-peer limit.
    fn limit_refusal(&self, capacity: u64) -> Option<String> {
        let limits = &self.shared.config().limits;
        let streams = self.set.streams.len() + self.pending.len();
        let bytes: u64 = self
            .set
            .streams
            .values()
            .map(|s| s.meta.capacity)
            .chain(self.pending.iter().map(|p| p.stream.meta.capacity))
            .sum();
        if streams >= limits.max_streams_per_peer {
            Some(format!(
                "{} already has {streams} imported streams (max_streams_per_peer)",
                self.peer.name
            ))
        } else if bytes.saturating_add(capacity) > limits.max_replica_bytes_per_peer {
            Some(format!(
                "its replica would bring the replicas of {} to {} bytes (max_replica_bytes_per_peer {})",
                self.peer.name,
                bytes.saturating_add(capacity),
                limits.max_replica_bytes_per_peer
            ))
        } else {
            None
        }
    }

    /// Subscribes stream `id` (its [`ImportStream`] is in the set) from
    /// where its replica is.
    fn subscribe(&mut self, id: u32, key: StreamKey) {
        let Some(st) = self.set.streams.get_mut(&key) else {
            self.session.ignore(id);
            return;
        };
        let resume = st.resume();
        let capacity = st.meta.capacity;
        let what = format!("{} from {}", st.name(), self.peer.name);
        match self
            .session
            .subscribe(id, resume, capacity, st.ended.is_some())
        {
            Ok(()) => {
                let from = match resume {
                    Resume::Oldest => " from its oldest message".to_owned(),
                    Resume::At {
                        position,
                        room_until,
                    } => format!(
                        " from position {position} (room for {} bytes)",
                        room_until.saturating_sub(position)
                    ),
                };
                log::info!("importing {what}{from}");
                self.keys.insert(id, key);
            }
            Err(e @ Refusal::Ended) => {
                let at = st
                    .ended
                    .map(|p| format!(" (ended at position {p})"))
                    .unwrap_or_default();
                log::info!("not importing {what}: {e}{at}");
            }
            Err(e @ Refusal::NotUndecided { .. }) => {
                log::error!("not importing {what}: {e}");
            }
        }
    }

    /// Starts held streams once their previous replicas are drained (or
    /// [`DRAIN_WAIT`] passed).
    pub(super) fn start_pending(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            let drained = p.point.old_rings.iter().all(|r| !r.exists());
            if !drained && p.since.elapsed() < DRAIN_WAIT {
                i += 1;
                continue;
            }
            let mut p = self.pending.swap_remove(i);
            if !self.session.is_held(p.id) {
                continue;
            }
            match p.stream.open_replica(p.point.position, p.point.next_seq) {
                Ok(()) => {
                    self.set.streams.insert(p.key.clone(), p.stream);
                    self.subscribe(p.id, p.key);
                }
                Err(e) => {
                    log::error!("cannot create a replica for {}/{}: {e}", p.key.0, p.key.1);
                    self.session.ignore(p.id);
                }
            }
        }
    }
}
