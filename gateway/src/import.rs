//! Import: Zenoh samples written into local replica rings.
//!
//! Each remote publisher (origin gateway, publisher id, type, topic) gets a
//! replica ring `<topic>/z-<origin>.<publisher>.<epoch>.ring`, so local
//! subscribers see it as one more publisher of the topic, with the remote
//! type name and fingerprint (a typed subscriber of another type gets
//! `TypeMismatch`). Messages keep their publisher's sequence numbers; a
//! number skipped (Zenoh dropped a sample under congestion control Drop,
//! the exporter was lapped, the replica was full) becomes a gap record, so
//! subscribers see `TopicEvent::Lost` with the exact count, never a wrong
//! message.
//!
//! Nothing here waits on the network: the Zenoh callback writes without
//! blocking, except for up to `import_full_wait` while local subscribers
//! keep a replica full (then the message is dropped and counted lost).
//!
//! A remote gateway that goes away (its liveliness token is withdrawn:
//! killed, stopped, disconnected) has its replicas closed: subscribers see
//! those publishers gone. When it comes back, its streams continue in new
//! replicas (next epoch) from the number after the last one delivered:
//! what it sends again is dropped as duplicate, what it never sent is
//! reported lost.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use shmbus_bridge::daemon::naming;
use shmbus_bus::{self as bus, Policy, ReplicaWriter, RingConfig};
use zenoh::sample::{Sample, SampleKind};

use crate::{
    config::{Config, ImportRule},
    log,
    meta::{Kind, MetaRef},
    stats::Stats,
};

/// Origin name of samples from plain Zenoh publishers (raw mode).
pub const RAW_ORIGIN: &str = "zenoh";

/// Most streams an importer keeps (each is a replica ring while live): a
/// peer inventing publishers without end costs a bounded amount of memory
/// and tmpfs. Samples of further streams are refused and counted.
pub const MAX_STREAMS: usize = 4096;

/// One remote publisher's stream.
#[derive(Debug)]
struct Stream {
    origin: String,
    publisher: String,
    topic: String,
    type_name: String,
    type_fingerprint: u64,
    /// The replica, while the stream is live.
    replica: Option<ReplicaWriter>,
    /// The next replica's epoch.
    epoch: u64,
    /// The number after the last message delivered (or reported lost).
    next: Option<u64>,
    /// The number after the newest message or gap announced: from `next`
    /// to here, messages were dropped and still have to be reported lost.
    seen: Option<u64>,
}

impl Stream {
    fn what(&self) -> String {
        format!("{}/{} from {}", self.topic, self.publisher, self.origin)
    }
}

/// Streams by topic, then by identity (the attachment's bytes that name
/// the stream), so that a sample finds its stream without allocating.
type Streams = HashMap<String, HashMap<Vec<u8>, Stream>>;

/// A sample as the import handles it.
struct Incoming<'a> {
    kind: Kind,
    /// `None`: the next number (a plain Zenoh sample).
    seq: Option<u64>,
    origin: &'a str,
    publisher: &'a str,
    type_name: &'a str,
    type_fingerprint: u64,
    identity: &'a [u8],
}

/// The import side, shared by the Zenoh callbacks.
#[derive(Debug)]
pub struct Importer {
    config: Arc<Config>,
    stats: Arc<Stats>,
    streams: Mutex<Streams>,
}

impl Importer {
    /// An importer of `config`'s rules.
    pub fn new(config: Arc<Config>, stats: Arc<Stats>) -> Self {
        Self {
            config,
            stats,
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// A sample of an import rule's subscription arrived.
    pub fn on_sample(&self, rule: &ImportRule, sample: &Sample) {
        if sample.kind() != SampleKind::Put {
            return;
        }
        let key = sample.key_expr().as_str();
        let topic = match &rule.topic {
            Some(t) => t.as_str(),
            None => key.rsplit('/').next().unwrap_or(key),
        };
        if let Err(e) = bus::validate_name("topic", topic) {
            self.refuse(key, &format!("its last chunk is not a topic name: {e}"));
            return;
        }
        let payload = sample.payload().to_bytes();
        match sample.attachment() {
            Some(att) => {
                let bytes = att.to_bytes();
                match MetaRef::decode(&bytes) {
                    // Our own export (Zenoh delivers only remote ones anyway).
                    Ok(m) if m.origin == self.config.node_name => {}
                    Ok(m) => self.apply(
                        topic,
                        Incoming {
                            kind: m.kind,
                            seq: Some(m.seq),
                            origin: m.origin,
                            publisher: m.publisher,
                            type_name: m.type_name,
                            type_fingerprint: m.type_fingerprint,
                            identity: m.identity,
                        },
                        &payload,
                    ),
                    Err(e) => self.refuse(key, &e.to_string()),
                }
            }
            None if rule.raw => {
                // A plain Zenoh publisher: raw bytes, numbered on arrival,
                // one stream per key.
                let publisher = raw_publisher_id(key);
                let mut identity = b"\0raw\0".to_vec();
                identity.extend_from_slice(key.as_bytes());
                self.apply(
                    topic,
                    Incoming {
                        kind: Kind::Message,
                        seq: None,
                        origin: RAW_ORIGIN,
                        publisher: &publisher,
                        type_name: "",
                        type_fingerprint: 0,
                        identity: &identity,
                    },
                    &payload,
                );
            }
            None => self.refuse(
                key,
                "no shmbus metadata (import it with raw = true to accept plain Zenoh samples)",
            ),
        }
    }

    /// The origin gateway `origin` is gone: close its replicas.
    pub fn origin_gone(&self, origin: &str) {
        for stream in self.lock().values_mut().flat_map(|t| t.values_mut()) {
            if stream.origin == origin && stream.replica.take().is_some() {
                log::info!("{}: gateway gone, replica closed", stream.what());
            }
        }
    }

    /// Closes every replica (at exit).
    pub fn close_all(&self) {
        for stream in self.lock().values_mut().flat_map(|t| t.values_mut()) {
            stream.replica = None;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Streams> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refuse(&self, key: &str, why: &str) {
        self.stats.import_refused.add(1);
        log::debug!("sample on {key} refused: {why}");
    }

    fn apply(&self, topic: &str, s: Incoming<'_>, payload: &[u8]) {
        let mut streams = self.lock();
        let count: usize = streams.values().map(HashMap::len).sum();
        let by_topic = match streams.get_mut(topic) {
            Some(t) => t,
            None => streams.entry(topic.to_owned()).or_default(),
        };
        if !by_topic.contains_key(s.identity) {
            if count >= MAX_STREAMS {
                self.stats.import_refused.add(1);
                log::debug!(
                    "{topic}/{}: refused, {MAX_STREAMS} streams already",
                    s.publisher
                );
                return;
            }
            by_topic.insert(
                s.identity.to_vec(),
                Stream {
                    origin: s.origin.to_owned(),
                    publisher: s.publisher.to_owned(),
                    topic: topic.to_owned(),
                    type_name: s.type_name.to_owned(),
                    type_fingerprint: s.type_fingerprint,
                    replica: None,
                    epoch: 0,
                    next: None,
                    seen: None,
                },
            );
        }
        let Some(stream) = by_topic.get_mut(s.identity) else {
            return;
        };
        let seq = s.seq.unwrap_or_else(|| stream.next.unwrap_or(0));
        let announced = match s.kind {
            Kind::Message => seq.saturating_add(1),
            Kind::Gap | Kind::End => seq,
        };
        stream.seen = Some(stream.seen.map_or(announced, |v| v.max(announced)));
        match s.kind {
            Kind::Message => self.message(stream, seq, payload),
            Kind::Gap => self.flush_stream(stream),
            Kind::End => {
                self.flush_stream(stream);
                if stream.replica.take().is_some() {
                    log::info!("{}: remote publisher ended, replica closed", stream.what());
                }
            }
        }
    }

    /// [`Self::flush`] for one stream (also after every GAP and END).
    fn flush_stream(&self, stream: &mut Stream) {
        let (Some(replica), Some(seen)) = (stream.replica.as_mut(), stream.seen) else {
            return;
        };
        let Some(next) = replica.next_sequence() else {
            return;
        };
        if seen > next && replica.try_write_gap(seen - next).unwrap_or(false) {
            self.stats.import_lost.add(seen - next);
            stream.next = Some(seen);
        }
    }

    /// Reports pending losses of every stream: the messages dropped since
    /// the last one delivered (a full replica, a message too large, a GAP
    /// or END announcing them) become a gap record where there is room.
    /// The gateway calls it every 10 ms, so a drop at the end of a burst
    /// is reported without waiting for the next message.
    pub fn flush(&self) {
        for stream in self.lock().values_mut().flat_map(|t| t.values_mut()) {
            self.flush_stream(stream);
        }
    }

    fn message(&self, stream: &mut Stream, seq: u64, payload: &[u8]) {
        if stream.next.is_some_and(|n| seq < n) {
            self.stats.import_duplicates.add(1);
            return;
        }
        if stream.replica.is_none() {
            match self.create(stream, stream.next.unwrap_or(seq)) {
                Ok(r) => stream.replica = Some(r),
                Err(e) => {
                    log::warning!("{}: no replica: {e}", stream.what());
                    self.stats.import_refused.add(1);
                    return;
                }
            }
        }
        let Some(replica) = stream.replica.as_mut() else {
            return;
        };
        // The replica's own numbering is the truth: a call that found the
        // ring full may already have written the gap before `seq`.
        let before = replica.next_sequence().unwrap_or(seq);
        let deadline = Instant::now() + self.config.import_full_wait;
        let written = loop {
            match replica.try_write_message(seq, payload) {
                Ok(true) => break true,
                Ok(false) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(50));
                }
                Ok(false) => {
                    // Local subscribers hold the ring: this message is
                    // dropped, and reported lost by the next gap record.
                    self.stats.import_full_drops.add(1);
                    break false;
                }
                Err(bus::Error::TooLarge { len, max }) => {
                    log::warning!(
                        "{}/{}: a message of {len} bytes is over the replica's {max}: counted lost",
                        stream.topic,
                        stream.publisher
                    );
                    self.stats.import_full_drops.add(1);
                    break false;
                }
                Err(e) => {
                    log::warning!("{}/{}: replica closed: {e}", stream.topic, stream.publisher);
                    stream.replica = None;
                    return;
                }
            }
        };
        let after = replica.next_sequence().unwrap_or(before);
        self.stats
            .import_lost
            .add((after - before).saturating_sub(u64::from(written)));
        if written {
            self.stats.imported.add(1);
        }
        stream.next = Some(after);
    }

    /// A new replica for `stream`, numbered from `next`.
    fn create(&self, stream: &mut Stream, next: u64) -> Result<ReplicaWriter, bus::Error> {
        let dir = bus::topic_dir(&self.config.root, &self.config.bus, &stream.topic)?;
        bus::create_dir_all(&self.config.root, &dir, 0o700)?;
        let stem = naming::replica_stem(&format!("z-{}", stream.origin), &stream.publisher);
        let config = RingConfig {
            capacity: self.config.import_capacity,
            max_message: bus::max_message_limit(self.config.import_capacity),
            policy: Policy::Block,
            evict_after: None,
            type_name: stream.type_name.clone(),
            type_fingerprint: stream.type_fingerprint,
            ..RingConfig::default()
        };
        // A replica of an earlier epoch may still be drained by subscribers
        // (or left by a gateway before a restart), or another type's stream
        // of the same publisher id uses the stem: take the next free epoch.
        loop {
            let path: PathBuf = bus::ring_path(&dir, &naming::replica_id(&stem, stream.epoch))?;
            stream.epoch += 1;
            if path.exists() {
                continue;
            }
            let replica = ReplicaWriter::create_numbered(&path, &config, 0, next)?;
            log::info!(
                "importing {} into {} from message {next}",
                stream.what(),
                path.display()
            );
            return Ok(replica);
        }
    }
}

/// The publisher id of a plain Zenoh key's stream: `k` and 16 hex digits
/// of a hash of the key (keys may hold any character; ids may not).
fn raw_publisher_id(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("k{h:016x}")
}
