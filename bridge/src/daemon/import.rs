//! The receiver thread of a connection: reads every frame from the peer,
//! writes DATA payloads straight into replica rings, and hands the peer's
//! SUBSCRIBE and ACK for our exports to the sender thread.
//!
//! For each remote publisher the import allow-list accepts, an
//! [`ImportStream`] keeps the replica ring for the daemon's lifetime. A DATA
//! frame must continue exactly at the replica's position; its payload is
//! received into space reserved in the ring, validated (stamps, lengths,
//! padding, sequence numbers) and only then published. Anything else from
//! the peer is a protocol violation: ERROR, close, nothing published.
//!
//! Every frame is authenticated by the [`FrameReader`] before it counts: a
//! DATA payload lands in reserved replica space, and is published only after
//! its tag verified. A frame that fails authentication closes the connection
//! (counted in `auth_failures`), and no ERROR is sent: the stream is no
//! longer trustworthy in either direction. A DATA header that is refused
//! (unknown stream, wrong position) is still read to its tag first, so a
//! forged header counts as an authentication failure, a real one as the
//! peer's protocol error.

use std::{
    collections::HashMap,
    net::TcpStream,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use shmbus_bus::{self as bus, WaitStrategy};

use crate::{
    io::frame_reader::{FrameReader, ReadError},
    log,
    proto::{
        frame::{
            decode, Ack, Credit, DataHeader, Decoded, End, ErrorCode, Frame, FrameType, Gap,
            StreamFlags, StreamTail, Subscribe, RESUME_OLDEST,
        },
        stream::{check_data, check_end, check_gap},
    },
};

use super::{
    link::Link,
    naming,
    replica::{self, Replica, ReplicaMeta, ResumePoint},
    stats::{Dir, StreamStats},
    Peer, Shared,
};

/// How long a resumed stream waits for local subscribers to finish the
/// previous replica before the next one starts (so they read it to its end
/// before the continuation appears).
pub(crate) const DRAIN_WAIT: Duration = Duration::from_secs(3);

/// How long one wait for replica space lasts before checking stop flags.
const RESERVE_SLICE: Duration = Duration::from_millis(100);

/// One remote publisher mirrored into a local replica ring.
#[derive(Debug)]
pub(crate) struct ImportStream {
    topic: String,
    publisher: String,
    dir: PathBuf,
    stem: String,
    meta: ReplicaMeta,
    /// Epoch of `replica`, or of the next replica to create.
    epoch: u64,
    /// `None` until the first DATA of a stream subscribed from the oldest position.
    replica: Option<Replica>,
    ended: bool,
    stats: Arc<StreamStats>,
}

impl ImportStream {
    fn position(&self) -> Option<u64> {
        self.replica.as_ref().map(|r| r.writer.position())
    }

    /// Starts replica epoch `self.epoch` at `start`.
    fn open_replica(&mut self, start: u64) -> Result<(), bus::Error> {
        let r = replica::create(&self.dir, &self.stem, self.epoch, &self.meta, start)?;
        replica::remove_holds_below(&self.dir, &self.stem, self.epoch);
        log::info!(
            "replica {} of {}/{} starts at position {start}",
            r.path.display(),
            self.topic,
            self.publisher
        );
        self.replica = Some(r);
        self.stats.position.set(start);
        Ok(())
    }

    /// Closes the current replica; the next one gets the next epoch.
    fn retire_replica(&mut self) {
        if let Some(r) = self.replica.take() {
            r.retire();
            self.epoch += 1;
        }
    }
}

/// The import streams of one peer, by (topic, publisher).
#[derive(Debug, Default)]
pub(crate) struct ImportSet {
    streams: HashMap<(String, String), ImportStream>,
}

/// A stream id announced on this connection.
#[derive(Debug, Clone)]
enum Announced {
    /// Not imported (allow-list, loop prevention, unusable geometry).
    Ignored,
    /// Waiting for subscribers to drain the previous replica.
    Pending,
    /// SUBSCRIBE sent.
    Subscribed((String, String)),
}

/// A stream resumed from an earlier run's replica, waiting for [`DRAIN_WAIT`].
/// It joins the [`ImportSet`] only once its replica exists, so a connection
/// that ends first leaves the earlier run's files to be found again.
#[derive(Debug)]
struct Pending {
    id: u32,
    key: (String, String),
    since: Instant,
    point: ResumePoint,
    stream: ImportStream,
}

/// A frame the peer sent that breaks the protocol: ERROR + close.
#[derive(Debug)]
struct Violation(ErrorCode, String);

/// The owned parts of a received frame (control frames are small).
enum Incoming {
    Announce(OwnedAnnounce),
    Subscribe(Subscribe),
    Data(DataHeader),
    Ack(Ack),
    Credit(Credit),
    Gap(Gap),
    End(End),
    Heartbeat(Vec<StreamTail>),
    Error(ErrorCode, String),
    Unexpected(FrameType),
}

struct OwnedAnnounce {
    stream: u32,
    topic: String,
    publisher: String,
    meta: ReplicaMeta,
    flags: StreamFlags,
}

impl Incoming {
    fn from_frame(frame: &Frame<'_>) -> Self {
        match frame {
            Frame::StreamAnnounce(a) => Self::Announce(OwnedAnnounce {
                stream: a.stream,
                topic: a.topic.to_owned(),
                publisher: a.publisher.to_owned(),
                meta: ReplicaMeta {
                    type_name: a.type_name.to_owned(),
                    type_fingerprint: a.type_fingerprint,
                    capacity: a.ring_capacity,
                    max_message: a.max_message,
                },
                flags: a.flags,
            }),
            Frame::Subscribe(s) => Self::Subscribe(*s),
            Frame::Data(d) => Self::Data(*d),
            Frame::Ack(a) => Self::Ack(*a),
            Frame::Credit(c) => Self::Credit(*c),
            Frame::Gap(g) => Self::Gap(*g),
            Frame::End(e) => Self::End(*e),
            Frame::Heartbeat(h) => Self::Heartbeat(h.iter().collect()),
            Frame::Error(e) => Self::Error(e.code, e.message.to_owned()),
            other => Self::Unexpected(other.frame_type()),
        }
    }
}

/// The receiver thread of one connection.
pub(crate) struct Receiver<'a> {
    shared: &'a Shared,
    peer: &'a Peer,
    link: &'a Link,
    sock: TcpStream,
    reader: FrameReader,
    set: ImportSet,
    ids: HashMap<u32, Announced>,
    pending: Vec<Pending>,
    bytes_reported: u64,
    /// The current DATA frame's payload was read (or its read failed).
    reader_done: bool,
}

impl std::fmt::Debug for Receiver<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("peer", &self.peer.name)
            .finish_non_exhaustive()
    }
}

impl<'a> Receiver<'a> {
    pub(crate) fn new(
        shared: &'a Shared,
        peer: &'a Peer,
        link: &'a Link,
        sock: TcpStream,
        reader: FrameReader,
        set: ImportSet,
    ) -> Self {
        Self {
            shared,
            peer,
            link,
            sock,
            reader,
            set,
            ids: HashMap::new(),
            pending: Vec::new(),
            bytes_reported: 0,
            reader_done: false,
        }
    }

    /// Runs until the connection closes; returns the streams for the next one.
    pub(crate) fn run(mut self) -> ImportSet {
        while !self.link.stopping() {
            self.start_pending();
            self.report_bytes();
            let incoming = match self
                .reader
                .next_frame(&mut self.sock, self.link.stop_flag())
            {
                Ok(None) => continue,
                Ok(Some(bytes)) => match decode(bytes) {
                    Ok(Decoded::Frame { frame, .. }) => Incoming::from_frame(&frame),
                    Ok(Decoded::Incomplete { .. }) => {
                        self.link
                            .close("frame reader returned a partial frame", false);
                        break;
                    }
                    Err(e) => {
                        self.link
                            .fail(ErrorCode::Malformed, format!("undecodable frame: {e}"));
                        break;
                    }
                },
                Err(ReadError::Frame(e)) => {
                    self.link
                        .fail(ErrorCode::Malformed, format!("undecodable frame: {e}"));
                    break;
                }
                Err(ReadError::Stopped) => break,
                Err(ReadError::Auth(e)) => {
                    self.auth_failed(&e);
                    break;
                }
                Err(e) => {
                    self.link.close(e.to_string(), false);
                    break;
                }
            };
            let data_len = match &incoming {
                Incoming::Data(h) => Some(u64::from(h.len)),
                _ => None,
            };
            let outcome = self.handle(incoming);
            if let (Some(len), Err(_)) = (data_len, &outcome) {
                if !self.reader_done {
                    // Refused before its payload was read: read it to the
                    // tag, so that a forged header is told from the peer's
                    // own mistake.
                    match self
                        .reader
                        .skip_payload(&mut self.sock, len, self.link.stop_flag())
                    {
                        Ok(()) => {}
                        Err(ReadError::Auth(e)) => {
                            self.auth_failed(&e);
                            break;
                        }
                        Err(_) => {}
                    }
                }
            }
            self.reader_done = false;
            match outcome {
                Ok(()) => {}
                Err(Step::Violation(Violation(code, message))) => {
                    self.link.fail(code, message);
                    break;
                }
                Err(Step::Close(message)) => {
                    self.link.close(message, false);
                    break;
                }
                Err(Step::Auth(e)) => {
                    self.auth_failed(&e);
                    break;
                }
            }
        }
        self.report_bytes();
        self.set
    }

    fn auth_failed(&self, e: &crate::proto::seal::SealError) {
        self.shared.stats.auth_failures.add(1);
        self.peer.stats.auth_failures.add(1);
        log::warning!("closing the connection to {}: {e}", self.peer.name);
        self.link
            .close(format!("a frame failed authentication: {e}"), false);
    }

    fn report_bytes(&mut self) {
        let n = self.reader.bytes_received();
        self.peer.stats.bytes_received.add(n - self.bytes_reported);
        self.bytes_reported = n;
    }

    fn handle(&mut self, incoming: Incoming) -> Result<(), Step> {
        match incoming {
            Incoming::Announce(a) => self.on_announce(a),
            Incoming::Data(h) => self.on_data(h),
            Incoming::Gap(g) => self.on_gap(g),
            Incoming::End(e) => self.on_end(e),
            Incoming::Subscribe(s) => {
                self.link.push(|q| q.subscribes.push(s));
                Ok(())
            }
            Incoming::Ack(a) => {
                self.link.push(|q| {
                    let e = q.acks_in.entry(a.stream).or_insert(a.position);
                    *e = (*e).max(a.position);
                });
                Ok(())
            }
            Incoming::Credit(c) => {
                self.link.push(|q| {
                    let e = q.credits_in.entry(c.stream).or_insert(c.limit);
                    *e = (*e).max(c.limit);
                });
                Ok(())
            }
            Incoming::Heartbeat(tails) => {
                for t in tails {
                    if let Some(Announced::Subscribed(key)) = self.ids.get(&t.stream) {
                        if let Some(st) = self.set.streams.get(key) {
                            st.stats.peer_tail.set(t.tail);
                        }
                    }
                }
                Ok(())
            }
            Incoming::Error(code, message) => Err(Step::Close(format!(
                "peer sent ERROR ({code:?}): {message}"
            ))),
            Incoming::Unexpected(t) => Err(violation(
                ErrorCode::UnexpectedFrame,
                format!("unexpected {t} frame after the handshake"),
            )),
        }
    }

    fn on_announce(&mut self, a: OwnedAnnounce) -> Result<(), Step> {
        if self.ids.contains_key(&a.stream) {
            return Err(violation(
                ErrorCode::UnexpectedFrame,
                format!("stream {} announced twice", a.stream),
            ));
        }
        if bus::validate_name("topic", &a.topic).is_err()
            || bus::validate_name("publisher id", &a.publisher).is_err()
        {
            return Err(violation(
                ErrorCode::Malformed,
                format!(
                    "stream {} has an invalid topic {:?} or publisher id {:?}",
                    a.stream, a.topic, a.publisher
                ),
            ));
        }
        let state = self.decide(&a);
        self.ids.insert(a.stream, state);
        Ok(())
    }

    /// Whether and how to import an announced stream.
    fn decide(&mut self, a: &OwnedAnnounce) -> Announced {
        let cfg = self.shared.config();
        let what = format!("{}/{} from {}", a.topic, a.publisher, self.peer.name);
        if a.flags.contains(StreamFlags::BRIDGED) {
            log::debug!("not importing {what}: it is itself a bridged copy");
            return Announced::Ignored;
        }
        if !cfg.imports_topic(&a.topic) {
            log::debug!("not importing {what}: no import rule matches the topic");
            return Announced::Ignored;
        }
        if a.meta.capacity > cfg.max_replica_capacity {
            log::warning!(
                "not importing {what}: its ring of {} bytes is larger than max_replica_capacity ({})",
                a.meta.capacity,
                cfg.max_replica_capacity
            );
            return Announced::Ignored;
        }
        if let Err(e) = a.meta.ring_config().validate() {
            log::warning!("not importing {what}: {e}");
            return Announced::Ignored;
        }
        let key = (a.topic.clone(), a.publisher.clone());
        if !self.set.streams.contains_key(&key) {
            let limits = &cfg.limits;
            let streams = self.set.streams.len() + self.pending.len();
            let bytes: u64 = self
                .set
                .streams
                .values()
                .map(|s| s.meta.capacity)
                .chain(self.pending.iter().map(|p| p.stream.meta.capacity))
                .sum();
            let refusal = if streams >= limits.max_streams_per_peer {
                Some(format!(
                    "{} already has {streams} imported streams (max_streams_per_peer)",
                    self.peer.name
                ))
            } else if bytes.saturating_add(a.meta.capacity) > limits.max_replica_bytes_per_peer {
                Some(format!(
                    "its replica would bring the replicas of {} to {} bytes (max_replica_bytes_per_peer {})",
                    self.peer.name,
                    bytes.saturating_add(a.meta.capacity),
                    limits.max_replica_bytes_per_peer
                ))
            } else {
                None
            };
            if let Some(why) = refusal {
                self.peer.stats.limit_refusals.add(1);
                log::warning!("not importing {what}: {why}");
                return Announced::Ignored;
            }
        }
        if self
            .ids
            .values()
            .any(|s| matches!(s, Announced::Subscribed(k) if *k == key))
            || self.pending.iter().any(|p| p.key == key)
        {
            log::warning!("not importing {what} twice (announced under two stream ids)");
            return Announced::Ignored;
        }
        if let Some(st) = self.set.streams.get(&key) {
            if st.ended {
                return Announced::Ignored;
            }
            if st.meta != a.meta {
                log::warning!("not importing {what}: its type or geometry changed since it was first imported");
                return Announced::Ignored;
            }
            let resume = st.position().unwrap_or(RESUME_OLDEST);
            return self.subscribe(a.stream, key, resume);
        }
        let dir = match bus::topic_dir(&cfg.root, &cfg.bus, &a.topic) {
            Ok(d) => d,
            Err(e) => {
                log::warning!("not importing {what}: {e}");
                return Announced::Ignored;
            }
        };
        let stem = naming::replica_stem(&self.peer.name, &a.publisher);
        if replica::is_ended(&dir, &stem) {
            log::debug!("not importing {what}: it was received completely before");
            return Announced::Ignored;
        }
        let previous = match replica::find_previous(&dir, &stem) {
            Ok(p) => p,
            Err(e) => {
                log::error!("not importing {what}: {e}");
                return Announced::Ignored;
            }
        };
        let stats = self
            .shared
            .stats
            .stream(&self.peer.name, Dir::In, &a.topic, &a.publisher);
        let mut st = ImportStream {
            topic: a.topic.clone(),
            publisher: a.publisher.clone(),
            dir,
            stem,
            meta: a.meta.clone(),
            epoch: 0,
            replica: None,
            ended: false,
            stats,
        };
        match previous {
            None => {
                self.set.streams.insert(key.clone(), st);
                self.subscribe(a.stream, key, RESUME_OLDEST)
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
                self.pending.push(Pending {
                    id: a.stream,
                    key,
                    since: Instant::now(),
                    point,
                    stream: st,
                });
                Announced::Pending
            }
        }
    }

    fn subscribe(&mut self, id: u32, key: (String, String), resume: u64) -> Announced {
        log::info!(
            "importing {}/{} from {}{}",
            key.0,
            key.1,
            self.peer.name,
            if resume == RESUME_OLDEST {
                " from its oldest message".to_owned()
            } else {
                format!(" from position {resume}")
            }
        );
        self.link.send_frame(&Frame::Subscribe(Subscribe {
            stream: id,
            resume_position: resume,
            // Interim (issue 11 in progress): no credit limit yet.
            window: u64::MAX,
        }));
        Announced::Subscribed(key)
    }

    /// Starts resumed streams once their previous replicas are drained.
    fn start_pending(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            let drained = p.point.old_rings.iter().all(|r| !r.exists());
            if !drained && p.since.elapsed() < DRAIN_WAIT {
                i += 1;
                continue;
            }
            let mut p = self.pending.swap_remove(i);
            let state = match p.stream.open_replica(p.point.position) {
                Ok(()) => {
                    self.set.streams.insert(p.key.clone(), p.stream);
                    self.subscribe(p.id, p.key, p.point.position)
                }
                Err(e) => {
                    log::error!("cannot create a replica for {}/{}: {e}", p.key.0, p.key.1);
                    Announced::Ignored
                }
            };
            self.ids.insert(p.id, state);
        }
    }

    fn subscribed(&mut self, stream: u32, what: FrameType) -> Result<&mut ImportStream, Step> {
        let key = match self.ids.get(&stream) {
            Some(Announced::Subscribed(k)) => k,
            _ => {
                return Err(violation(
                    ErrorCode::UnknownStream,
                    format!("{what} for stream {stream}, which this bridge did not subscribe to"),
                ))
            }
        };
        let st = self
            .set
            .streams
            .get_mut(key)
            .ok_or_else(|| Step::Close(format!("stream {stream} lost its state")))?;
        if st.ended {
            return Err(violation(
                ErrorCode::UnexpectedFrame,
                format!("{what} for stream {stream} after its END"),
            ));
        }
        Ok(st)
    }

    fn on_data(&mut self, h: DataHeader) -> Result<(), Step> {
        let stop = self.link.stop_flag();
        let link = self.link;
        let Self {
            ids,
            set,
            reader,
            sock,
            reader_done,
            ..
        } = self;
        let key = match ids.get(&h.stream) {
            Some(Announced::Subscribed(k)) => k,
            _ => {
                return Err(violation(
                    ErrorCode::UnknownStream,
                    format!(
                        "DATA for stream {}, which this bridge did not subscribe to",
                        h.stream
                    ),
                ))
            }
        };
        let Some(st) = set.streams.get_mut(key) else {
            return Err(Step::Close(format!("stream {} lost its state", h.stream)));
        };
        if st.ended {
            return Err(violation(
                ErrorCode::UnexpectedFrame,
                format!("DATA for stream {} after its END", h.stream),
            ));
        }
        check_data(&h, st.position(), st.meta.capacity).map_err(|e| {
            violation(
                ErrorCode::Malformed,
                format!(
                    "DATA for stream {} ({}/{}): {e}",
                    h.stream, st.topic, st.publisher
                ),
            )
        })?;
        if st.replica.is_none() {
            st.open_replica(h.start_position).map_err(|e| {
                Step::Close(format!(
                    "cannot create a replica for {}/{}: {e}",
                    st.topic, st.publisher
                ))
            })?;
        }
        let Some(replica) = st.replica.as_mut() else {
            return Ok(());
        };
        let len = u64::from(h.len);
        let mut waited = false;
        let mut chunk = loop {
            match replica
                .writer
                .reserve(len, WaitStrategy::Block { spins: 0 }, Some(RESERVE_SLICE))
            {
                Ok(c) => break c,
                Err(bus::Error::Timeout) => {
                    if link.stopping() {
                        return Err(Step::Close("stopped".into()));
                    }
                    waited = true;
                }
                Err(e) => {
                    return Err(violation(
                        ErrorCode::Malformed,
                        format!("DATA for stream {}: {e}", h.stream),
                    ))
                }
            }
        };
        if waited {
            // Our own subscribers held us; that is not the peer's silence.
            reader.touch();
        }
        {
            let (stamp, a, b) = chunk.buffers();
            *reader_done = true;
            // On failure the chunk is dropped uncommitted: nothing published.
            reader
                .read_payload(sock, &mut [&mut stamp[..], a, b], stop)
                .map_err(|e| match e {
                    ReadError::Auth(e) => Step::Auth(e),
                    e => Step::Close(e.to_string()),
                })?;
        }
        let records = chunk.commit().map_err(|e| {
            violation(
                ErrorCode::Malformed,
                format!(
                    "DATA for stream {} ({}/{}) rejected, nothing published: {e}",
                    h.stream, st.topic, st.publisher
                ),
            )
        })?;
        let position = replica.writer.position();
        st.stats.bytes.add(len);
        st.stats.messages.add(u64::from(records));
        st.stats.frames.add(1);
        st.stats.position.set(position);
        link.ack(h.stream, position);
        Ok(())
    }

    fn on_gap(&mut self, g: Gap) -> Result<(), Step> {
        let peer = self.peer.name.clone();
        let link = self.link;
        let st = self.subscribed(g.stream, FrameType::Gap)?;
        check_gap(&g, st.position()).map_err(|e| {
            violation(
                ErrorCode::Malformed,
                format!("GAP for stream {}: {e}", g.stream),
            )
        })?;
        st.stats.gaps.add(1);
        st.stats.gap_bytes.add(g.to - g.from);
        log::warning!(
            "gap: {}/{} bytes [{}, {}) from {peer} were lost before they were sent (untethered export); continuing in a new replica",
            st.topic,
            st.publisher,
            g.from,
            g.to
        );
        st.retire_replica();
        st.open_replica(g.to).map_err(|e| {
            Step::Close(format!(
                "cannot create a replica for {}/{}: {e}",
                st.topic, st.publisher
            ))
        })?;
        link.ack(g.stream, g.to);
        Ok(())
    }

    fn on_end(&mut self, e: End) -> Result<(), Step> {
        let peer = self.peer.name.clone();
        let link = self.link;
        let st = self.subscribed(e.stream, FrameType::End)?;
        check_end(e.position, st.position()).map_err(|err| {
            violation(
                ErrorCode::Malformed,
                format!("END for stream {}: {err}", e.stream),
            )
        })?;
        st.ended = true;
        if let Err(err) = replica::mark_ended(&st.dir, &st.stem) {
            log::warning!(
                "cannot record the end of {}/{}: {err}",
                st.topic,
                st.publisher
            );
        }
        st.retire_replica();
        log::info!(
            "{}/{} from {peer} ended at position {}",
            st.topic,
            st.publisher,
            e.position
        );
        link.ack(e.stream, e.position);
        Ok(())
    }
}

enum Step {
    Violation(Violation),
    Close(String),
    /// A frame failed authentication.
    Auth(crate::proto::seal::SealError),
}

fn violation(code: ErrorCode, message: String) -> Step {
    Step::Violation(Violation(code, message))
}
