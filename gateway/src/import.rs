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
//! That wait happens once per spell of fullness, not per message: after
//! it ran out, the replica's messages are dropped at once until one fits
//! again. One lock serves every stream, so a wait per message would hold
//! the import of every topic back behind one stalled subscriber.
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
    meta::{Header, Kind, MetaRef},
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
    /// The bytes that name it in its topic (see [`Identity`]).
    identity: Vec<u8>,
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
    /// The replica stayed full for a whole `import_full_wait`, and no
    /// message has fit since: drop without waiting.
    held_full: bool,
}

impl Stream {
    fn what(&self) -> String {
        format!("{}/{} from {}", self.topic, self.publisher, self.origin)
    }
}

/// Every stream seen (never removed: a stream keeps its numbering while
/// its replica is closed), found by topic, then by identity.
#[derive(Debug, Default)]
struct Streams {
    list: Vec<Stream>,
    /// Indexes into `list` by identity tag ([`RAW`] 0, [`ATTACHED`] 1),
    /// topic, then the rest of the identity (the attachment's bytes that
    /// name the stream, or the raw key), so a lookup allocates nothing.
    index: [HashMap<String, HashMap<Vec<u8>, usize>>; 2],
    /// The stream of the last sample: samples mostly come in runs of one
    /// stream, and a run's samples skip the lookup and the name checks
    /// (equal identity bytes were checked when the stream was made).
    last: Option<usize>,
}

impl Streams {
    /// The last sample's stream if `topic` and `identity` name it.
    fn last_if(&self, topic: &str, identity: &Identity<'_>) -> Option<usize> {
        let i = self.last?;
        let stream = &self.list[i];
        (stream.topic == topic && identity.is(&stream.identity)).then_some(i)
    }

    fn all(&mut self) -> impl Iterator<Item = &mut Stream> {
        self.list.iter_mut()
    }
}

/// A stream's identity bytes as a sample gives them, a tag and the rest
/// (joined only when a new stream needs them): [`ATTACHED`] and the
/// attachment's identity bytes, or [`RAW`] and a raw sample's key. The
/// tags keep the two kinds apart whatever the bytes.
#[derive(Debug, Clone, Copy)]
struct Identity<'a>(&'a [u8], &'a [u8]);

impl Identity<'_> {
    fn is(&self, bytes: &[u8]) -> bool {
        let Self(a, b) = *self;
        bytes.len() == a.len() + b.len() && bytes[..a.len()] == *a && bytes[a.len()..] == *b
    }

    fn to_vec(self) -> Vec<u8> {
        [self.0, self.1].concat()
    }
}

/// The identity tag of samples with a shmbus attachment.
const ATTACHED: &[u8] = &[1];
/// The identity tag of raw samples (plain Zenoh publishers).
const RAW: &[u8] = &[0];

/// What names a new stream, from a fully checked attachment (or a raw
/// sample's key).
struct Incoming<'a> {
    origin: &'a str,
    publisher: &'a str,
    type_name: &'a str,
    type_fingerprint: u64,
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
            streams: Mutex::new(Streams::default()),
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
        let payload = sample.payload().to_bytes();
        match sample.attachment() {
            Some(att) => {
                let bytes = att.to_bytes();
                let header = match Header::parse(&bytes) {
                    Ok(h) => h,
                    Err(e) => return self.refuse(key, &e.to_string()),
                };
                let identity = Identity(ATTACHED, header.identity);
                let mut streams = self.lock();
                if let Some(i) = streams.last_if(topic, &identity) {
                    return self.apply(&mut streams, i, header.kind, Some(header.seq), &payload);
                }
                // A sample of another stream than the last: check it all.
                if let Err(e) = bus::validate_name("topic", topic) {
                    return self.refuse(key, &format!("its last chunk is not a topic name: {e}"));
                }
                match MetaRef::decode(&bytes) {
                    // Our own export (Zenoh delivers only remote ones anyway).
                    Ok(m) if m.origin == self.config.node_name => {}
                    Ok(m) => {
                        let new = Incoming {
                            origin: m.origin,
                            publisher: m.publisher,
                            type_name: m.type_name,
                            type_fingerprint: m.type_fingerprint,
                        };
                        if let Some(i) = self.find(&mut streams, topic, identity, new) {
                            self.apply(&mut streams, i, m.kind, Some(m.seq), &payload);
                        }
                    }
                    Err(e) => self.refuse(key, &e.to_string()),
                }
            }
            None if rule.raw => {
                // A plain Zenoh publisher: raw bytes, numbered on arrival,
                // one stream per key.
                let identity = Identity(RAW, key.as_bytes());
                let mut streams = self.lock();
                if let Some(i) = streams.last_if(topic, &identity) {
                    return self.apply(&mut streams, i, Kind::Message, None, &payload);
                }
                if let Err(e) = bus::validate_name("topic", topic) {
                    return self.refuse(key, &format!("its last chunk is not a topic name: {e}"));
                }
                let publisher = raw_publisher_id(key);
                let new = Incoming {
                    origin: RAW_ORIGIN,
                    publisher: &publisher,
                    type_name: "",
                    type_fingerprint: 0,
                };
                if let Some(i) = self.find(&mut streams, topic, identity, new) {
                    self.apply(&mut streams, i, Kind::Message, None, &payload);
                }
            }
            None => self.refuse(
                key,
                "no shmbus metadata (import it with raw = true to accept plain Zenoh samples)",
            ),
        }
    }

    /// The origin gateway `origin` is gone: close its replicas.
    pub fn origin_gone(&self, origin: &str) {
        for stream in self.lock().all() {
            if stream.origin == origin && stream.replica.take().is_some() {
                log::info!("{}: gateway gone, replica closed", stream.what());
            }
        }
    }

    /// Closes every replica (at exit).
    pub fn close_all(&self) {
        for stream in self.lock().all() {
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

    /// The stream `identity` names in `topic`, made if it is new (and
    /// `MAX_STREAMS` allows); it becomes the last sample's stream.
    fn find(
        &self,
        streams: &mut Streams,
        topic: &str,
        identity: Identity<'_>,
        new: Incoming<'_>,
    ) -> Option<usize> {
        let Identity(tag, rest) = identity;
        let by_tag = usize::from(tag == ATTACHED);
        let known = streams.index[by_tag]
            .get(topic)
            .and_then(|by_identity| by_identity.get(rest).copied());
        let i = match known {
            Some(i) => i,
            None if streams.list.len() >= MAX_STREAMS => {
                self.stats.import_refused.add(1);
                log::debug!(
                    "{topic}/{}: refused, {MAX_STREAMS} streams already",
                    new.publisher
                );
                return None;
            }
            None => {
                let i = streams.list.len();
                streams.index[by_tag]
                    .entry(topic.to_owned())
                    .or_default()
                    .insert(rest.to_vec(), i);
                streams.list.push(Stream {
                    identity: identity.to_vec(),
                    origin: new.origin.to_owned(),
                    publisher: new.publisher.to_owned(),
                    topic: topic.to_owned(),
                    type_name: new.type_name.to_owned(),
                    type_fingerprint: new.type_fingerprint,
                    replica: None,
                    epoch: 0,
                    next: None,
                    seen: None,
                    held_full: false,
                });
                i
            }
        };
        streams.last = Some(i);
        Some(i)
    }

    /// A sample of stream `i`; `seq` `None`: the next number (a plain
    /// Zenoh sample).
    fn apply(&self, streams: &mut Streams, i: usize, kind: Kind, seq: Option<u64>, payload: &[u8]) {
        let stream = &mut streams.list[i];
        let seq = seq.unwrap_or_else(|| stream.next.unwrap_or(0));
        let announced = match kind {
            Kind::Message => seq.saturating_add(1),
            Kind::Gap | Kind::End => seq,
        };
        stream.seen = Some(stream.seen.map_or(announced, |v| v.max(announced)));
        match kind {
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
        for stream in self.lock().all() {
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
                Ok(r) => {
                    stream.replica = Some(r);
                    stream.held_full = false;
                }
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
        // Read the clock only once the ring is full (not per message).
        let mut deadline = None;
        let written = loop {
            match replica.try_write_message(seq, payload) {
                Ok(true) => {
                    stream.held_full = false;
                    break true;
                }
                Ok(false)
                    if !stream.held_full
                        && Instant::now()
                            < *deadline.get_or_insert_with(|| {
                                Instant::now() + self.config.import_full_wait
                            }) =>
                {
                    std::thread::sleep(Duration::from_micros(50));
                }
                Ok(false) => {
                    // Local subscribers hold the ring: this message is
                    // dropped, and reported lost by the next gap record;
                    // so are the next ones, without waiting, until one
                    // fits.
                    if !stream.held_full {
                        stream.held_full = true;
                        self.stats.import_full_timeouts.add(1);
                    }
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
        let lost = (after - before).saturating_sub(u64::from(written));
        if lost > 0 {
            self.stats.import_lost.add(lost);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(topic: &str, identity: Identity<'_>) -> Stream {
        Stream {
            identity: identity.to_vec(),
            origin: "o".into(),
            publisher: "p".into(),
            topic: topic.into(),
            type_name: String::new(),
            type_fingerprint: 0,
            replica: None,
            epoch: 0,
            next: None,
            seen: None,
            held_full: false,
        }
    }

    /// The same bytes from an attachment and as a raw key name two
    /// streams; the last-stream shortcut matches only topic and identity
    /// both equal.
    #[test]
    fn identities_of_two_kinds_never_match_and_the_shortcut_checks_both_parts() {
        let attached = Identity(ATTACHED, b"abc");
        let raw = Identity(RAW, b"abc");
        assert!(attached.is(&attached.to_vec()));
        assert!(!raw.is(&attached.to_vec()));
        assert!(!Identity(ATTACHED, b"ab").is(&attached.to_vec()));
        assert!(!Identity(ATTACHED, b"abcd").is(&attached.to_vec()));
        let mut streams = Streams::default();
        assert_eq!(streams.last_if("t", &attached), None);
        streams.list.push(stream("t", attached));
        streams.last = Some(0);
        assert_eq!(streams.last_if("t", &attached), Some(0));
        assert_eq!(streams.last_if("u", &attached), None);
        assert_eq!(streams.last_if("t", &raw), None);
        assert_eq!(streams.last_if("t", &Identity(ATTACHED, b"abd")), None);
    }
}
