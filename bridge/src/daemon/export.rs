//! The sender thread of a connection: announces local rings, sends DATA
//! straight from them, and keeps the bytes the kernel or the peer may still
//! need protected from the publisher.
//!
//! Per exported ring and peer an [`ExportStream`] lives for the daemon's
//! lifetime (a reconnecting peer resumes from it). The safety rule: a DATA
//! payload is sent from ring memory, with `MSG_ZEROCOPY` the kernel reads it
//! after `sendmsg` returns, so the bytes stay protected until the kernel's
//! completion (tethered: also until the peer's ACK). The positions are
//! computed by [`ExportPositions`]; this module applies them to the
//! [`RawReader`] (release or pin) and does the I/O.
//!
//! Every frame leaves sealed ([`seal`](crate::proto::seal)): control frames
//! through [`Scratch`], which seals each one as it is queued, DATA frames in
//! [`send_data`]. In `auth` mode a DATA frame's tag is computed over the ring
//! bytes in place and sent after them in the same `sendmsg`, so the payload
//! still goes from the ring with `MSG_ZEROCOPY`. In `encrypt` mode the ring
//! bytes are copied into a buffer, encrypted there and sent with a plain
//! send. The tag makes the bridge's reading of the ring part of what is
//! authenticated: a ring byte changed between the read for the tag and the
//! kernel's read for the wire (only a process with write access to the ring
//! can: the publisher's user) arrives with a tag that fails, and the peer
//! closes the connection instead of publishing bytes no one vouched for.

use std::{
    collections::{HashMap, HashSet},
    net::Shutdown,
    os::fd::AsRawFd,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use shmbus_bus::{self as bus, layout::record_size, RawChunk, RawReader, StartAt, WaitStrategy};

use crate::{
    config::ExportMode as ConfigMode,
    error::BridgeError,
    io::{socket, zerocopy::ZeroCopySocket},
    log,
    proto::{
        frame::{
            DataHeader, End, ErrorCode, ErrorFrame, Frame, Gap, Heartbeat, StreamAnnounce,
            StreamFlags, StreamTail, Subscribe, DATA_HEADER_LEN, MAX_DATA_LEN,
            MAX_HEARTBEAT_ENTRIES,
        },
        seal::{Direction, Protection, SealError, TAG_LEN},
        stream::{ExportMode, ExportPositions},
    },
};

use super::{
    catalog::LocalRing,
    link::Link,
    stats::{Dir, StreamStats},
    Peer, Shared,
};

/// Idle wait of the sender loop while there was recent traffic: a control
/// frame queued by the receiver thread (an ACK) waits at most this long.
const IDLE_WAIT: Duration = Duration::from_millis(1);
/// Idle wait after [`IDLE_ROUNDS_BEFORE_LONG`] rounds without work, so an
/// idle link costs few wake-ups; new ring data still wakes the sender at once.
const LONG_IDLE_WAIT: Duration = Duration::from_millis(10);
const IDLE_ROUNDS_BEFORE_LONG: u32 = 200;

/// One exported ring, for one peer.
#[derive(Debug)]
pub(crate) struct ExportStream {
    ring: Arc<LocalRing>,
    reader: RawReader,
    pos: ExportPositions,
    pinned: bool,
    /// Tethered: the position last given to `release_to`.
    released: u64,
    /// END was sent at this position.
    ended: Option<u64>,
    /// The local ring is unreadable (corrupt); nothing more is sent.
    broken: bool,
    stats: Arc<StreamStats>,
}

impl ExportStream {
    fn tethered(&self) -> bool {
        matches!(self.pos.mode(), ExportMode::Tethered)
    }

    /// Applies the positions to the reader: release (tethered) or pin/unpin
    /// (untethered), after the connection's tracker released `conn_released`.
    fn protect(&mut self, conn_released: u64) {
        self.pos.on_connection_released(conn_released);
        self.apply_protection();
    }

    fn apply_protection(&mut self) {
        if self.tethered() {
            let target = self.pos.release_target();
            if target != self.released {
                self.reader.release_to(target);
                self.released = target;
            }
        } else if self.pos.kernel_busy() {
            self.reader.pin(self.pos.pin_position());
            self.pinned = true;
        } else if self.pinned {
            self.reader.unpin();
            self.pinned = false;
        }
    }
}

/// The export streams of one peer.
#[derive(Debug, Default)]
pub(crate) struct ExportSet {
    streams: HashMap<PathBuf, ExportStream>,
    /// Rings whose END the peer acknowledged: never announced again.
    finished: HashSet<PathBuf>,
}

/// A frame the peer sent that breaks the protocol: ERROR + close.
struct Violation(ErrorCode, String);

/// The sender thread of one connection.
pub(crate) struct Sender<'a> {
    shared: &'a Shared,
    peer: &'a Peer,
    link: &'a Link,
    wire: Wire,
    set: ExportSet,
    announced: HashMap<u32, Arc<LocalRing>>,
    /// Streams subscribed on this connection: id and ring path, in order.
    active: Vec<(u32, PathBuf)>,
    /// Streams whose first chunk after SUBSCRIBE has not been read yet: a
    /// framing error there means the peer's resume position was bad.
    unverified: HashSet<u32>,
    catalog_generation: Option<u64>,
    last_heartbeat: Instant,
    /// Zero-copy counters already added to the peer's stats.
    zc_reported: (u64, u64, u64),
    /// Consecutive rounds without work.
    idle_rounds: u32,
}

/// The socket side of the sender: what has been written and a buffer for
/// control frames.
#[derive(Debug)]
struct Wire {
    sock: ZeroCopySocket,
    /// Bytes handed to the socket so far: the tracker's position.
    conn_offset: u64,
    /// Control frames waiting for [`Wire::flush`], sealed.
    scratch: Scratch,
    /// Buffer for DATA payloads encrypted in `encrypt` mode.
    encrypted: Vec<u8>,
    stats: Arc<super::stats::PeerStats>,
}

/// Sealed control frames waiting to be sent, and the sending direction's
/// key and counter. Frames are sealed in the order they are queued, which
/// is the order they are sent: the counter and the wire agree. The buffer
/// is emptied only by [`Wire::flush`] (a frame sealed and then dropped
/// would break the counter sequence).
struct Scratch {
    buf: Vec<u8>,
    keys: Direction,
    /// The counter ran out (after 2^64 - 1 frames): the connection must end.
    exhausted: bool,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("len", &self.buf.len())
            .field("keys", &self.keys)
            .finish()
    }
}

impl Scratch {
    /// Queues one encoded frame, sealed.
    fn extend_from_slice(&mut self, frame: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(frame);
        if self.keys.seal_control(&mut self.buf, start).is_err() {
            self.buf.truncate(start);
            self.exhausted = true;
        }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

impl Wire {
    /// Sends the queued control frames (plain send).
    fn flush(&mut self) -> Result<(), BridgeError> {
        if self.scratch.exhausted {
            return Err(BridgeError::io(
                "seal",
                std::io::Error::other(SealError::CounterExhausted),
            ));
        }
        if self.scratch.is_empty() {
            return Ok(());
        }
        let len = self.scratch.buf.len() as u64;
        let end = self.conn_offset + len;
        let r = self.sock.send_vectored(&self.scratch.buf, &[], end, false);
        self.scratch.buf.clear();
        r?;
        self.conn_offset = end;
        self.stats.bytes_sent.add(len);
        Ok(())
    }

    fn released(&self) -> u64 {
        self.sock.tracker().released_position()
    }
}

impl std::fmt::Debug for Sender<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("peer", &self.peer.name)
            .field("conn_offset", &self.wire.conn_offset)
            .finish_non_exhaustive()
    }
}

impl<'a> Sender<'a> {
    pub(crate) fn new(
        shared: &'a Shared,
        peer: &'a Peer,
        link: &'a Link,
        sock: ZeroCopySocket,
        set: ExportSet,
        keys: Direction,
    ) -> Self {
        Self {
            shared,
            peer,
            link,
            wire: Wire {
                sock,
                conn_offset: 0,
                scratch: Scratch {
                    buf: Vec::new(),
                    keys,
                    exhausted: false,
                },
                encrypted: Vec::new(),
                stats: Arc::clone(&peer.stats),
            },
            set,
            announced: HashMap::new(),
            active: Vec::new(),
            unverified: HashSet::new(),
            catalog_generation: None,
            last_heartbeat: Instant::now(),
            zc_reported: (0, 0, 0),
            idle_rounds: 0,
        }
    }

    /// Runs until the connection closes; returns the streams for the next one.
    pub(crate) fn run(mut self) -> ExportSet {
        loop {
            let mut work = false;
            let mut blocked = false;
            if let Err(e) = self.step(&mut work, &mut blocked) {
                match e {
                    StepError::Violation(Violation(code, message)) => self.link.fail(code, message),
                    StepError::Io(e) => self.link.close(format!("send failed: {e}"), false),
                }
            }
            if self.link.stopping() || self.shared.stopping() {
                break;
            }
            if work {
                self.idle_rounds = 0;
            } else {
                self.idle_rounds = self.idle_rounds.saturating_add(1);
                self.idle_wait(blocked);
            }
        }
        self.finish();
        self.set
    }

    fn step(&mut self, work: &mut bool, blocked: &mut bool) -> Result<(), StepError> {
        // 1. Frames from the receiver thread, and the peer's requests.
        let (frames, acks_out, credits_out, subscribes, acks_in) = {
            let mut q = self.link.queues();
            (
                std::mem::take(&mut q.frames_out),
                Link::take_acks_out(&mut q),
                Link::take_credits_out(&mut q),
                std::mem::take(&mut q.subscribes),
                std::mem::take(&mut q.acks_in),
            )
        };
        if self.shared.stopping() {
            return Ok(());
        }
        for f in frames {
            self.wire.scratch.extend_from_slice(&f);
        }
        for a in acks_out {
            encode(&Frame::Ack(a), &mut self.wire.scratch);
        }
        for c in credits_out {
            encode(&Frame::Credit(c), &mut self.wire.scratch);
        }
        self.wire.flush()?;
        for (stream, position) in acks_in {
            self.on_ack(stream, position)?;
            *work = true;
        }
        for s in subscribes {
            self.on_subscribe(s)?;
            *work = true;
        }
        // 2. New rings to announce.
        self.announce()?;
        // 3. Completions, then data.
        if self.wire.sock.tracker().in_flight() > 0 {
            self.wire.sock.poll_completions()?;
            self.protect_all();
        }
        for i in 0..self.active.len() {
            match self.pump(i)? {
                Pump::Sent => *work = true,
                Pump::Blocked => *blocked = true,
                Pump::Idle => {}
            }
        }
        self.retire_finished();
        // 4. Heartbeat.
        if self.last_heartbeat.elapsed() >= self.shared.config.heartbeat_interval {
            self.heartbeat()?;
        }
        self.report_zc();
        Ok(())
    }

    fn on_ack(&mut self, stream: u32, position: u64) -> Result<(), StepError> {
        let Some((_, path)) = self.active.iter().find(|(id, _)| *id == stream) else {
            if self.announced.contains_key(&stream) {
                // A late ACK for a stream retired after its END.
                return Ok(());
            }
            return Err(violation(
                ErrorCode::UnknownStream,
                format!("ACK for stream {stream}, which this bridge did not announce"),
            ));
        };
        let Some(st) = self.set.streams.get_mut(path) else {
            return Ok(());
        };
        st.pos
            .on_ack(position)
            .map_err(|e| violation(ErrorCode::UnexpectedFrame, format!("stream {stream}: {e}")))?;
        st.apply_protection();
        Ok(())
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), StepError> {
        let Some(ring) = self.announced.get(&s.stream).cloned() else {
            return Err(violation(
                ErrorCode::UnknownStream,
                format!(
                    "SUBSCRIBE for stream {}, which this bridge did not announce",
                    s.stream
                ),
            ));
        };
        if self.active.iter().any(|(id, _)| *id == s.stream) {
            return Err(violation(
                ErrorCode::UnexpectedFrame,
                format!("second SUBSCRIBE for stream {}", s.stream),
            ));
        }
        let cap = self.shared.config.limits.max_exports_per_peer;
        if !self.set.streams.contains_key(&ring.path) && self.set.streams.len() >= cap {
            // Each export reader is a subscriber slot on a local ring.
            self.peer.stats.limit_refusals.add(1);
            log::warning!(
                "not exporting {}/{} to {}: it already has {cap} export readers (max_exports_per_peer)",
                ring.topic,
                ring.publisher,
                self.peer.name
            );
            return Ok(());
        }
        if !self.set.streams.contains_key(&ring.path) {
            let tethered = matches!(ring.mode, ConfigMode::Tethered);
            let reader = match RawReader::open(&ring.path, StartAt::Oldest, tethered) {
                Ok(r) => r,
                Err(e) => {
                    log::warning!(
                        "cannot export {}/{} to {}: {e}",
                        ring.topic,
                        ring.publisher,
                        self.peer.name
                    );
                    return Ok(());
                }
            };
            let mode = match ring.mode {
                ConfigMode::Tethered => ExportMode::Tethered,
                ConfigMode::Untethered { retention_bytes } => ExportMode::Untethered {
                    retention: retention_bytes.min(ring.capacity / 2),
                },
            };
            let start = reader.start_position();
            let stats =
                self.shared
                    .stats
                    .stream(&self.peer.name, Dir::Out, &ring.topic, &ring.publisher);
            self.set.streams.insert(
                ring.path.clone(),
                ExportStream {
                    ring: Arc::clone(&ring),
                    reader,
                    pos: ExportPositions::new(mode, start),
                    pinned: false,
                    released: start,
                    ended: None,
                    broken: false,
                    stats,
                },
            );
        }
        let Some(st) = self.set.streams.get_mut(&ring.path) else {
            return Ok(());
        };
        let floor = if st.tethered() {
            st.pos.released()
        } else {
            st.reader.head()
        };
        let start = st
            .pos
            .subscribe(s.resume_position, floor, st.reader.tail())
            .map_err(|e| {
                violation(
                    ErrorCode::UnexpectedFrame,
                    format!(
                        "SUBSCRIBE for stream {} ({}/{}): {e}",
                        s.stream, ring.topic, ring.publisher
                    ),
                )
            })?;
        st.apply_protection();
        st.ended = None;
        st.stats.position.set(start.position);
        log::info!(
            "peer {} subscribed to {}/{} from position {}",
            self.peer.name,
            ring.topic,
            ring.publisher,
            start.position
        );
        if let Some((from, to)) = start.gap {
            st.stats.gaps.add(1);
            st.stats.gap_bytes.add(to - from);
            log::warning!(
                "gap for peer {}: {}/{} bytes [{from}, {to}) are no longer in the ring",
                self.peer.name,
                ring.topic,
                ring.publisher
            );
            encode(
                &Frame::Gap(Gap {
                    stream: s.stream,
                    from,
                    to,
                    // Interim (issue 11 in progress): the sequence number at `to`.
                    next_seq: 0,
                }),
                &mut self.wire.scratch,
            );
            self.wire.flush()?;
        }
        self.active.push((s.stream, ring.path.clone()));
        self.unverified.insert(s.stream);
        Ok(())
    }

    fn announce(&mut self) -> Result<(), BridgeError> {
        let generation = self.shared.catalog.generation();
        if self.catalog_generation == Some(generation) {
            return Ok(());
        }
        self.catalog_generation = Some(generation);
        let mut rings = self.shared.catalog.rings();
        for st in self.set.streams.values() {
            if !rings.iter().any(|r| r.id == st.ring.id) {
                rings.push(Arc::clone(&st.ring));
            }
        }
        rings.sort_by_key(|r| r.id);
        for ring in rings {
            if self.announced.contains_key(&ring.id) || self.set.finished.contains(&ring.path) {
                continue;
            }
            if record_size(ring.max_message) > u64::from(MAX_DATA_LEN) {
                log::warning!(
                    "not exporting {}/{}: messages up to {} bytes do not fit a DATA frame",
                    ring.topic,
                    ring.publisher,
                    ring.max_message
                );
                self.announced.insert(ring.id, Arc::clone(&ring));
                continue;
            }
            let flags = match ring.mode {
                ConfigMode::Tethered => StreamFlags::empty(),
                ConfigMode::Untethered { .. } => StreamFlags::UNTETHERED,
            };
            encode(
                &Frame::StreamAnnounce(StreamAnnounce {
                    stream: ring.id,
                    topic: &ring.topic,
                    publisher: &ring.publisher,
                    type_name: &ring.type_name,
                    type_fingerprint: ring.type_fingerprint,
                    ring_capacity: ring.capacity,
                    max_message: ring.max_message,
                    flags,
                }),
                &mut self.wire.scratch,
            );
            self.announced.insert(ring.id, ring);
        }
        self.wire.flush()
    }

    /// Sends the next chunk of stream `i`, or a GAP or END.
    fn pump(&mut self, i: usize) -> Result<Pump, StepError> {
        let (id, path) = (self.active[i].0, &self.active[i].1);
        let Some(st) = self.set.streams.get_mut(path) else {
            return Ok(Pump::Idle);
        };
        if st.broken || st.ended.is_some() {
            return Ok(Pump::Idle);
        }
        if let Err(e) = st.reader.check_slot() {
            // Evicted or reaped by the publisher: our protection is gone.
            // Once the kernel is done with our sends, rejoin; the next read
            // finds the loss and the peer gets an exact GAP.
            if st.pos.kernel_busy() {
                return Ok(Pump::Idle);
            }
            log::warning!(
                "reader of {}/{} for peer {} lost its slot ({e}); rejoining",
                st.ring.topic,
                st.ring.publisher,
                self.peer.name
            );
            match RawReader::open(&st.ring.path, StartAt::Oldest, st.tethered()) {
                Ok(r) => {
                    st.released = r.start_position();
                    st.reader = r;
                    st.pinned = false;
                }
                Err(e) => {
                    log::error!("cannot rejoin {}: {e}", st.ring.path.display());
                    st.broken = true;
                    return Ok(Pump::Idle);
                }
            }
        }
        let tethered = st.tethered();
        let fd = self.wire.sock.as_raw_fd();
        if !tethered && !socket::writable(fd).unwrap_or(true) {
            // Untethered: never hold a pin while waiting for the network.
            return Ok(Pump::Blocked);
        }
        let max_len = chunk_limit(&st.ring, self.shared.config.chunk_bytes);
        let mut position = st.pos.sent();
        if !tethered {
            let safe = st.reader.pin(st.pos.pin_position());
            st.pinned = true;
            if safe > position {
                send_gap(&mut self.wire.scratch, st, id, &self.peer.name, safe);
                self.wire.flush()?;
                position = safe;
            }
        }
        let mut outcome = Pump::Idle;
        for _ in 0..4 {
            let Some(st) = self.set.streams.get_mut(path) else {
                break;
            };
            match st.reader.next_chunk(position, max_len) {
                Ok(RawChunk::Empty) => {
                    // Publisher state first, then the tail: a gone publisher's
                    // last tail is published before it is marked closed.
                    if st.reader.publisher_gone() && st.reader.tail() == position {
                        encode(
                            &Frame::End(End {
                                stream: id,
                                position,
                            }),
                            &mut self.wire.scratch,
                        );
                        st.ended = Some(position);
                        log::info!(
                            "{}/{} ended at position {position}; told peer {}",
                            st.ring.topic,
                            st.ring.publisher,
                            self.peer.name
                        );
                        self.wire.flush()?;
                        outcome = Pump::Sent;
                    }
                    break;
                }
                Ok(RawChunk::Lapped { head }) => {
                    let to = head.max(position);
                    send_gap(&mut self.wire.scratch, st, id, &self.peer.name, to);
                    self.wire.flush()?;
                    position = to;
                    let Some(st) = self.set.streams.get_mut(path) else {
                        break;
                    };
                    if !st.tethered() {
                        st.reader.pin(st.pos.pin_position());
                    }
                    outcome = Pump::Sent;
                }
                Ok(RawChunk::Records {
                    start,
                    end,
                    records,
                    ..
                }) => {
                    self.unverified.remove(&id);
                    send_data(&mut self.wire, self.shared, st, id, start, end, records)?;
                    outcome = Pump::Sent;
                    break;
                }
                Err(e) => {
                    if self.unverified.contains(&id) {
                        return Err(violation(
                            ErrorCode::UnexpectedFrame,
                            format!(
                                "stream {id}: resume position {position} is not a record boundary of {}/{}",
                                st.ring.topic, st.ring.publisher
                            ),
                        ));
                    }
                    log::error!(
                        "stopped exporting {}/{} to {}: {e}",
                        st.ring.topic,
                        st.ring.publisher,
                        self.peer.name
                    );
                    st.broken = true;
                    break;
                }
            }
        }
        if let Some(st) = self.set.streams.get_mut(path) {
            st.protect(self.wire.released());
        }
        Ok(outcome)
    }

    fn protect_all(&mut self) {
        let released = self.wire.released();
        for st in self.set.streams.values_mut() {
            st.protect(released);
        }
    }

    /// Drops streams whose END the peer acknowledged.
    fn retire_finished(&mut self) {
        let done: Vec<PathBuf> = self
            .set
            .streams
            .iter()
            .filter(|(_, st)| {
                st.ended.is_some_and(|e| st.pos.acked() >= e) && !st.pos.kernel_busy()
            })
            .map(|(p, _)| p.clone())
            .collect();
        for path in done {
            if let Some(st) = self.set.streams.remove(&path) {
                self.active.retain(|(_, p)| *p != path);
                let dir = path.parent().map(std::path::Path::to_path_buf);
                drop(st);
                // We may have been the last reader of the finished ring.
                if let Some(dir) = dir {
                    let _ = bus::sweep_topic(&dir);
                }
                self.set.finished.insert(path);
            }
        }
    }

    fn heartbeat(&mut self) -> Result<(), BridgeError> {
        self.last_heartbeat = Instant::now();
        let mut tails: Vec<StreamTail> = Vec::with_capacity(self.active.len());
        for (id, path) in &self.active {
            if let Some(st) = self.set.streams.get(path) {
                let tail = st.reader.tail();
                st.stats.peer_tail.set(tail);
                tails.push(StreamTail { stream: *id, tail });
            }
        }
        if tails.is_empty() {
            encode(
                &Frame::Heartbeat(Heartbeat::new(&[])),
                &mut self.wire.scratch,
            );
        }
        for part in tails.chunks(MAX_HEARTBEAT_ENTRIES) {
            encode(
                &Frame::Heartbeat(Heartbeat::new(part)),
                &mut self.wire.scratch,
            );
        }
        self.wire.flush()
    }

    fn report_zc(&mut self) {
        let z = self.wire.sock.tracker().stats();
        let now = (z.completed_ids, z.copied_ids, z.switched_to_plain);
        let p = &self.peer.stats;
        p.zc_completed_ids.add(now.0 - self.zc_reported.0);
        p.zc_copied_ids.add(now.1 - self.zc_reported.1);
        p.zc_switched_to_plain.add(now.2 - self.zc_reported.2);
        self.zc_reported = now;
    }

    fn idle_wait(&mut self, blocked: bool) {
        let fd = self.wire.sock.as_raw_fd();
        if blocked {
            // POLLOUT, or POLLERR for completions.
            let _ = socket::poll_once(fd, libc::POLLOUT, IDLE_WAIT);
            return;
        }
        if self.wire.sock.tracker().in_flight() > 0 {
            let _ = socket::poll_once(fd, 0, IDLE_WAIT);
            return;
        }
        let waiting = self.active.iter().find_map(|(_, path)| {
            self.set
                .streams
                .get(path)
                .filter(|st| !st.broken && st.ended.is_none())
        });
        match waiting {
            Some(st) => {
                let timeout = if self.idle_rounds < IDLE_ROUNDS_BEFORE_LONG {
                    IDLE_WAIT
                } else {
                    LONG_IDLE_WAIT
                };
                st.reader.wait_beyond(
                    st.pos.sent(),
                    WaitStrategy::Block { spins: 0 },
                    Some(timeout),
                );
            }
            None => std::thread::park_timeout(Duration::from_millis(20)),
        }
    }

    /// Ends the connection: last frames out, socket shut, the kernel done
    /// with our zero-copy sends, and the streams' protection reset.
    fn finish(&mut self) {
        self.wire
            .sock
            .set_send_timeout(Some(Duration::from_secs(1)));
        for f in std::mem::take(&mut self.link.queues().frames_out) {
            self.wire.scratch.extend_from_slice(&f);
        }
        if self.shared.stopping() {
            encode(
                &Frame::Error(ErrorFrame {
                    code: ErrorCode::Shutdown,
                    message: "bridge shutting down",
                }),
                &mut self.wire.scratch,
            );
            self.link.close("this bridge is shutting down", false);
        }
        let _ = self.wire.flush();
        let _ = self.wire.sock.stream().shutdown(Shutdown::Both);
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.wire.sock.tracker().in_flight() > 0 && Instant::now() < deadline {
            if self
                .wire
                .sock
                .wait_completions(Duration::from_millis(100))
                .is_err()
            {
                break;
            }
        }
        if self.wire.sock.tracker().in_flight() > 0 {
            // Drop what the kernel still queues; completions follow.
            let _ = socket::tcp_disconnect(self.wire.sock.as_raw_fd());
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.wire.sock.tracker().in_flight() > 0 && Instant::now() < deadline {
                if self
                    .wire
                    .sock
                    .wait_completions(Duration::from_millis(100))
                    .is_err()
                {
                    break;
                }
            }
        }
        let left = self.wire.sock.tracker().in_flight();
        if left > 0 {
            // The connection was reset, so no byte of these sends can still
            // reach the peer; a stale page read by the kernel now goes nowhere.
            log::warning!(
                "{left} zero-copy sends to {} were never confirmed by the kernel; releasing them after the reset",
                self.peer.name
            );
        }
        self.report_zc();
        for st in self.set.streams.values_mut() {
            st.pos.on_connection_closed();
            st.apply_protection();
        }
    }
}

enum Pump {
    Sent,
    Blocked,
    Idle,
}

enum StepError {
    Violation(Violation),
    Io(BridgeError),
}

impl From<BridgeError> for StepError {
    fn from(e: BridgeError) -> Self {
        Self::Io(e)
    }
}

impl From<crate::proto::frame::FrameError> for StepError {
    fn from(e: crate::proto::frame::FrameError) -> Self {
        Self::Io(e.into())
    }
}

fn violation(code: ErrorCode, message: String) -> StepError {
    StepError::Violation(Violation(code, message))
}

fn encode(frame: &Frame<'_>, out: &mut Scratch) {
    // Frames built by the sender are valid by construction (names and
    // geometry come from validated ring headers).
    let mut v = Vec::with_capacity(frame.encoded_len());
    if frame.encode_to_vec(&mut v).is_ok() {
        out.extend_from_slice(&v);
    }
}

/// Sends `start..end` of `st`'s ring (a range `next_chunk` just returned)
/// as one DATA frame.
fn send_data(
    wire: &mut Wire,
    shared: &Shared,
    st: &mut ExportStream,
    id: u32,
    start: u64,
    end: u64,
    records: u32,
) -> Result<(), BridgeError> {
    let len = end - start;
    // `chunk_limit` bounds chunks by MAX_DATA_LEN, so this always fits.
    let len32 = u32::try_from(len).map_err(|_| BridgeError::InvalidArgument("chunk too long"))?;
    let header = DataHeader {
        stream: id,
        start_position: start,
        len: len32,
    }
    .encode()?;
    let conn_end = wire.conn_offset + DATA_HEADER_LEN as u64 + len + TAG_LEN as u64;
    // Protection until the kernel is done with the send: tethered, the reader
    // released only up to `release_target() <= sent == start` and releases
    // further only once the tracker reports the completion (`protect`);
    // untethered, the reader is pinned at `pin_position() <= start` (pinned
    // in `pump` before `next_chunk` confirmed the range intact), and stays
    // pinned while `kernel_busy`.
    // SAFETY: `start..end` was just returned by `next_chunk` of this reader
    // and stays protected as described above.
    let (a, b) = unsafe { st.reader.slices(start, end) };
    // Any queued control frame goes first: it was sealed with a lower counter.
    wire.flush()?;
    let mut seal = wire
        .scratch
        .keys
        .begin()
        .map_err(|e| BridgeError::io("seal", std::io::Error::other(e)))?;
    seal.aad(&header);
    let report = match wire.scratch.keys.protection() {
        Protection::Auth => {
            // The ring bytes are associated data: read here for the tag,
            // read again by the kernel for the wire, never copied.
            seal.aad(a);
            seal.aad(b);
            let tag = seal.tag();
            let one = [a];
            let two = [a, b];
            let parts: &[&[u8]] = if b.is_empty() { &one } else { &two };
            wire.sock
                .send_frame(&header, parts, &tag, conn_end, shared.config.zerocopy)?
        }
        Protection::Encrypt => {
            // Encryption needs a copy: the ring is read-only to the bridge.
            let buf = &mut wire.encrypted;
            buf.clear();
            buf.extend_from_slice(a);
            buf.extend_from_slice(b);
            seal.encrypt(buf);
            let tag = seal.tag();
            wire.sock
                .send_frame(&header, &[&buf[..]], &tag, conn_end, false)?
        }
    };
    wire.conn_offset = conn_end;
    st.pos.on_sent(conn_end, end);
    st.stats.bytes.add(len);
    st.stats.messages.add(u64::from(records));
    st.stats.frames.add(1);
    st.stats.zc_sends.add(u64::from(report.zerocopy_calls));
    st.stats.plain_sends.add(u64::from(report.plain_calls));
    st.stats.enobufs.add(u64::from(report.enobufs_fallbacks));
    st.stats.position.set(end);
    wire.stats.bytes_sent.add(report.bytes as u64);
    Ok(())
}

/// Queues GAP(sent, to) for `st` and moves it on.
fn send_gap(out: &mut Scratch, st: &mut ExportStream, id: u32, peer: &str, to: u64) {
    let from = st.pos.sent();
    if to <= from {
        return;
    }
    encode(
        &Frame::Gap(Gap {
            stream: id,
            from,
            to,
            // Interim (issue 11 in progress): the sequence number at `to`.
            next_seq: 0,
        }),
        out,
    );
    st.pos.on_gap(to);
    st.stats.gaps.add(1);
    st.stats.gap_bytes.add(to - from);
    st.stats.position.set(to);
    log::warning!(
        "gap for peer {peer}: {}/{} bytes [{from}, {to}) were overwritten before they were sent (untethered export)",
        st.ring.topic,
        st.ring.publisher
    );
}

/// Largest DATA payload for a ring: the configured chunk size, but at
/// least one largest record, at most half the ring (the replica's limit)
/// and [`MAX_DATA_LEN`].
fn chunk_limit(ring: &LocalRing, chunk_bytes: u64) -> u64 {
    chunk_bytes
        .max(record_size(ring.max_message))
        .min(ring.capacity / 2)
        .min(u64::from(MAX_DATA_LEN))
}
