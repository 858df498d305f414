//! The sender thread of a connection: the glue between the sans-IO sender
//! half ([`ExportSession`]), the local rings and the socket.
//!
//! The session decides which frame is legal and what to send, release or
//! pin; this module feeds it the peer's requests (from the receiver thread,
//! through the [`Link`]), ring progress and kernel completions, and carries
//! its decisions out:
//!
//! - [`announce`]: catalog changes become STREAM_ANNOUNCE frames;
//! - [`streams`]: one ring reader per exported ring and peer (tethered
//!   ones durable), reading and protecting ring bytes;
//! - [`wire`]: sealing and writing frames;
//! - [`close`]: ending a connection, gracefully or by reset (pin deadline),
//!   and when ring bytes the kernel held may be released;
//! - [`reload`]: a reload that stops exporting a topic closes the
//!   connection and drops the topic's streams.
//!
//! DATA is written only while the socket reports `POLLOUT`, which with
//! `TCP_NOTSENT_LOWAT` means little is queued unsent: a queued ACK, CREDIT
//! or other control frame goes out after at most one bounded DATA frame. A
//! stream without credit is skipped; the others go on.

mod announce;
mod close;
pub mod hold;
mod reload;
mod streams;
mod wire;

use std::{
    collections::BTreeMap,
    os::fd::AsRawFd,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use shmbus_bus::{self as bus, WaitStrategy};

use crate::{
    config::Config,
    error::BridgeError,
    io::{socket, zerocopy::ZeroCopySocket},
    log,
    proto::{
        frame::{Frame, Heartbeat, StreamTail, Subscribe, MAX_HEARTBEAT_ENTRIES},
        seal::Direction,
        session::{
            export::{ExportConfig, ExportSession, Reset, Step, StreamCounters},
            Violation,
        },
        stream::ExportMode,
        zc::ZcPolicy,
    },
};

use self::{
    announce::Announced,
    streams::ExportStream,
    wire::{DataFrame, Wire},
};
use super::{link::Link, stats::Dir, Peer, Shared};

/// Idle wait of the sender loop while there was recent traffic: a control
/// frame queued by the receiver thread (an ACK) waits at most this long.
const IDLE_WAIT: Duration = Duration::from_millis(1);
/// Idle wait after [`IDLE_ROUNDS_BEFORE_LONG`] rounds without work, so an
/// idle link costs few wake-ups; new ring data still wakes the sender at once.
const LONG_IDLE_WAIT: Duration = Duration::from_millis(10);
const IDLE_ROUNDS_BEFORE_LONG: u32 = 200;
/// DATA frames one stream may send per round before the others get a turn.
const FRAMES_PER_TURN: usize = 8;

/// The export streams of one peer, kept across its connections.
#[derive(Debug, Default)]
pub(crate) struct ExportSet {
    session: ExportSession,
    streams: BTreeMap<u32, ExportStream>,
}

/// A reason the sender stops.
enum StepError {
    /// The peer broke the protocol: ERROR and close.
    Violation(Violation),
    /// The pin deadline passed: reset the connection.
    Reset(Reset),
    /// The socket or a ring failed.
    Io(BridgeError),
}

impl From<BridgeError> for StepError {
    fn from(e: BridgeError) -> Self {
        Self::Io(e)
    }
}

impl From<Violation> for StepError {
    fn from(v: Violation) -> Self {
        Self::Violation(v)
    }
}

/// What one stream's turn did.
enum Pump {
    Sent,
    /// The socket has enough queued: wait for `POLLOUT`.
    Blocked,
    Idle,
}

/// Nanoseconds of the process's monotonic clock, the session's time.
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let e = EPOCH.get_or_init(Instant::now).elapsed();
    u64::try_from(e.as_nanos()).unwrap_or(u64::MAX)
}

/// The sender thread of one connection.
pub(crate) struct Sender<'a> {
    shared: &'a Shared,
    peer: &'a Peer,
    link: &'a Link,
    wire: Wire,
    set: ExportSet,
    announced: Announced,
    /// The configuration the streams were last checked against.
    config: Arc<Config>,
    last_heartbeat: Instant,
    /// Zero-copy counters already added to the peer's stats.
    zc_reported: (u64, u64, u64),
    /// Consecutive rounds without work.
    idle_rounds: u32,
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
        mut sock: ZeroCopySocket,
        mut set: ExportSet,
        keys: Direction,
    ) -> Self {
        let config = shared.config();
        // Streams of topics a reload stopped exporting while the peer was
        // away (or during the last connection) go before anything is offered.
        reload::drop_disallowed(&mut set, &config, &peer.name);
        if let Err(e) = socket::set_notsent_lowat(sock.as_raw_fd(), config.send.notsent_lowat) {
            log::warning!("cannot set TCP_NOTSENT_LOWAT for {}: {e}", peer.name);
        }
        if config.send.zerocopy_always {
            sock.set_policy(ZcPolicy {
                min_zerocopy_bytes: 0,
                copied_ids_before_plain: None,
            });
        }
        set.session.set_config(ExportConfig {
            max_frame: config.chunk_bytes,
            pin_deadline: u64::try_from(config.send.pin_deadline.as_nanos()).unwrap_or(u64::MAX),
        });
        Self {
            shared,
            peer,
            link,
            wire: Wire::new(
                sock,
                keys,
                config.peer_timeout,
                std::sync::Arc::clone(&peer.stats),
            ),
            set,
            announced: Announced::for_peer(&peer.name),
            config,
            last_heartbeat: Instant::now(),
            zc_reported: (0, 0, 0),
            idle_rounds: 0,
        }
    }

    /// Runs until the connection closes; returns the streams for the next one.
    pub(crate) fn run(mut self) -> ExportSet {
        let mut reset = false;
        loop {
            let mut work = false;
            let mut blocked = false;
            if let Err(e) = self.step(&mut work, &mut blocked) {
                match e {
                    StepError::Violation(v) => self.link.fail(v.code(), v.to_string()),
                    StepError::Reset(r) => {
                        self.on_pin_deadline(r);
                        reset = true;
                    }
                    StepError::Io(e) => {
                        // A write to a full socket gives up at the nearest
                        // pin deadline (control frames included): if one
                        // passed, this is that deadline's reset, and the
                        // connection must be reset, not closed gracefully
                        // (which would wait for completions that a peer
                        // not reading never lets come).
                        let deadline = (e.io_kind() == Some(std::io::ErrorKind::TimedOut))
                            .then(|| self.set.session.tick(now_ns()))
                            .flatten();
                        match deadline {
                            Some(r) => {
                                self.on_pin_deadline(r);
                                reset = true;
                            }
                            None => self.link.close(format!("send failed: {e}"), false),
                        }
                    }
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
        self.finish(reset);
        // The kernel is done with this connection's sends: streams a reload
        // disallowed can leave their rings now.
        reload::drop_disallowed(&mut self.set, &self.shared.config(), &self.peer.name);
        self.set
    }

    fn step(&mut self, work: &mut bool, blocked: &mut bool) -> Result<(), StepError> {
        if self.check_reload() {
            return Ok(());
        }
        // 1. Frames from the receiver thread, and the peer's requests.
        let (frames, acks_out, credits_out, subscribes, acks_in, credits_in) = {
            let mut q = self.link.queues();
            (
                std::mem::take(&mut q.frames_out),
                Link::take_acks_out(&mut q),
                Link::take_credits_out(&mut q),
                std::mem::take(&mut q.subscribes),
                std::mem::take(&mut q.acks_in),
                std::mem::take(&mut q.credits_in),
            )
        };
        if self.shared.stopping() {
            return Ok(());
        }
        // A control frame write that waits for a full socket may not hold
        // an untethered export's pinned bytes past their deadline either.
        let peer_timeout = self.shared.config().peer_timeout;
        self.wire.set_control_timeout(
            self.set
                .session
                .next_deadline(now_ns())
                .map_or(peer_timeout, |ns| {
                    peer_timeout.min(Duration::from_nanos(ns).max(Duration::from_millis(1)))
                }),
        );
        for f in frames {
            self.wire.queue_encoded(&f);
        }
        for a in acks_out {
            self.wire.queue(&Frame::Ack(a));
        }
        for c in credits_out {
            self.wire.queue(&Frame::Credit(c));
        }
        self.wire.flush()?;
        // SUBSCRIBE first: an ACK or CREDIT taken in the same batch is for
        // the subscription it follows on the wire.
        *work |= !(subscribes.is_empty() && acks_in.is_empty() && credits_in.is_empty());
        for s in subscribes {
            self.on_subscribe(s)?;
        }
        for (stream, position) in acks_in {
            self.set.session.on_ack(stream, position)?;
            self.protect(stream);
        }
        for (stream, limit) in credits_in {
            self.set.session.on_credit(stream, limit)?;
        }
        // 2. New rings to announce.
        if self.announced.update(
            &self.shared.catalog,
            &self.config,
            &self.set.streams,
            &mut self.set.session,
            &mut self.wire,
        ) {
            self.wire.flush()?;
        }
        // 3. Completions, then the pin deadline, then data.
        if self.wire.sock.tracker().in_flight() > 0 {
            self.wire.sock.poll_completions()?;
        }
        self.protect_all();
        if let Some(r) = self.set.session.tick(now_ns()) {
            return Err(StepError::Reset(r));
        }
        let ids: Vec<u32> = self.set.session.subscribed().collect();
        for id in ids {
            match self.pump(id)? {
                Pump::Sent => *work = true,
                Pump::Blocked => *blocked = true,
                Pump::Idle => {}
            }
        }
        self.retire_finished();
        // 4. Heartbeat.
        if self.last_heartbeat.elapsed() >= self.shared.config().heartbeat_interval {
            self.heartbeat()?;
        }
        self.report_zc();
        Ok(())
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), StepError> {
        let id = s.stream;
        let ring = self.announced.get(id).cloned();
        let (shared, peer) = (self.shared, self.peer);
        let streams = &mut self.set.streams;
        let start = self.set.session.on_subscribe(&s, || {
            let ring = ring?;
            if !streams.contains_key(&id) {
                let cap = shared.config().limits.max_exports_per_peer;
                if streams.len() >= cap {
                    // Each export reader is a subscriber slot on a local ring.
                    peer.stats.limit_refusals.add(1);
                    log::warning!(
                        "not exporting {}/{} to {}: it already has {cap} export readers (max_exports_per_peer)",
                        ring.topic,
                        ring.publisher,
                        peer.name
                    );
                    return None;
                }
                let stats = shared
                    .stats
                    .stream(&peer.name, Dir::Out, &ring.topic, &ring.publisher);
                match ExportStream::open(&ring, &peer.name, shared.config().send.durable_lease, stats)
                {
                    Ok(st) => {
                        streams.insert(id, st);
                    }
                    Err(e) => {
                        log::warning!(
                            "cannot export {}/{} to {}: {e}",
                            ring.topic,
                            ring.publisher,
                            peer.name
                        );
                        return None;
                    }
                }
            }
            streams.get(&id).map(ExportStream::view)
        })?;
        let (Some(start), Some(st)) = (start, self.set.streams.get(&id)) else {
            return Ok(());
        };
        st.stats.position.set(start);
        log::info!(
            "peer {} subscribed to {}/{} from position {start} (window {})",
            self.peer.name,
            st.ring.topic,
            st.ring.publisher,
            s.window
        );
        self.protect(id);
        Ok(())
    }

    /// Sends what stream `id` has (at most [`FRAMES_PER_TURN`] DATA frames).
    fn pump(&mut self, id: u32) -> Result<Pump, StepError> {
        let fd = self.wire.sock.as_raw_fd();
        let mut outcome = Pump::Idle;
        for _ in 0..FRAMES_PER_TURN {
            if !socket::writable(fd).unwrap_or(true) {
                // Never read (nor pin) while the network is the bottleneck.
                outcome = Pump::Blocked;
                break;
            }
            let Some(req) = self.set.session.next_read(id) else {
                break;
            };
            let Some(st) = self.set.streams.get_mut(&id) else {
                break;
            };
            if let Err(e) = st.reader.check_slot() {
                // Evicted or reaped by the publisher: our protection is gone.
                // Once the kernel is done with our sends, rejoin; the next
                // read finds the loss and the peer gets an exact GAP.
                if self.set.session.kernel_busy(id) {
                    break;
                }
                log::warning!(
                    "reader of {}/{} for peer {} lost its slot ({e}); rejoining",
                    st.ring.topic,
                    st.ring.publisher,
                    self.peer.name
                );
                match st.reopen(&self.peer.name, self.shared.config().send.durable_lease) {
                    Ok(start) => {
                        self.set.session.on_reader_replaced(id, start);
                        continue;
                    }
                    Err(e) => {
                        log::error!("cannot rejoin {}: {e}", st.ring.path.display());
                        self.set.session.on_ring_error(id)?;
                        break;
                    }
                }
            }
            let event = match st.read(&req) {
                Ok(ev) => ev,
                Err(e) => {
                    self.set.session.on_ring_error(id)?;
                    log::error!(
                        "stopped exporting {}/{} to {}: {e}",
                        st.ring.topic,
                        st.ring.publisher,
                        self.peer.name
                    );
                    break;
                }
            };
            let step = self
                .set
                .session
                .on_ring(id, event)
                .map_err(|e| BridgeError::io("export session", std::io::Error::other(e)))?;
            match step {
                Step::Data {
                    start,
                    end,
                    records,
                } => {
                    self.send_data(id, start, end, records)?;
                    outcome = Pump::Sent;
                }
                Step::Gap(g) => {
                    self.wire.queue(&Frame::Gap(g));
                    self.flush_under_read_pin(id)?;
                    if let Some(st) = self.set.streams.get(&id) {
                        st.stats.position.set(g.to);
                        log::warning!(
                            "gap for peer {}: {}/{} bytes [{}, {}) are lost (next message {})",
                            self.peer.name,
                            st.ring.topic,
                            st.ring.publisher,
                            g.from,
                            g.to,
                            g.next_seq
                        );
                    }
                    outcome = Pump::Sent;
                }
                Step::End(e) => {
                    self.wire.queue(&Frame::End(e));
                    self.flush_under_read_pin(id)?;
                    if let Some(st) = self.set.streams.get(&id) {
                        log::info!(
                            "{}/{} ended at position {}; told peer {}",
                            st.ring.topic,
                            st.ring.publisher,
                            e.position,
                            self.peer.name
                        );
                    }
                    outcome = Pump::Sent;
                    break;
                }
                Step::Withheld | Step::Idle => break,
            }
        }
        self.set
            .session
            .on_connection_released(self.wire.released());
        self.protect(id);
        self.report_counters(id);
        Ok(outcome)
    }

    /// Sends `start..end` of stream `id` as one DATA frame.
    fn send_data(&mut self, id: u32, start: u64, end: u64, records: u32) -> Result<(), StepError> {
        let Some(st) = self.set.streams.get_mut(&id) else {
            return Ok(());
        };
        let untethered = matches!(
            streams::export_mode(&st.ring),
            ExportMode::Untethered { .. }
        );
        // Protection until the kernel is done with the send: tethered, the
        // reader released at most `sent == start` (the session releases
        // further only past the peer's ACK and the tracker's completion);
        // untethered, the reader was pinned at or below `start` in
        // `ExportStream::read` before `next_chunk` confirmed the range
        // intact, and stays pinned while the session says the kernel may
        // read it (`Protection::Pin`) or until the connection is reset.
        // SAFETY: `start..end` was just returned by `next_chunk` of this
        // reader and stays protected as described above.
        let slices = unsafe { st.reader.slices(start, end) };
        let config = self.shared.config();
        let frame = DataFrame {
            stream: id,
            start,
            end,
            slices,
            zerocopy: config.zerocopy,
            // An untethered send may not hold its pin longer than the
            // deadline, even while the socket is full.
            timeout: if untethered {
                config.send.pin_deadline
            } else {
                config.peer_timeout
            },
        };
        let (conn_end, report) = match self.wire.send_data(&frame) {
            Ok(r) => r,
            Err(e) if untethered && e.io_kind() == Some(std::io::ErrorKind::TimedOut) => {
                return Err(StepError::Reset(self.set.session.on_send_stalled(id)));
            }
            Err(e) => return Err(e.into()),
        };
        self.set
            .session
            .on_data_sent(id, end, conn_end, now_ns())
            .map_err(|e| BridgeError::io("export session", std::io::Error::other(e)))?;
        let stats = &st.stats;
        stats.bytes.add(end - start);
        stats.messages.add(u64::from(records));
        stats.frames.add(1);
        stats.zc_sends.add(u64::from(report.zerocopy_calls));
        stats.plain_sends.add(u64::from(report.plain_calls));
        stats.enobufs.add(u64::from(report.enobufs_fallbacks));
        stats.position.set(end);
        Ok(())
    }

    /// Flushes control frames while the read of stream `id` may hold its
    /// ring pinned: an untethered stream's pin may not outlast the pin
    /// deadline while the socket is full (a timeout resets the connection,
    /// counted like a stalled DATA send).
    fn flush_under_read_pin(&mut self, id: u32) -> Result<(), StepError> {
        let untethered = self.set.streams.get(&id).is_some_and(|st| {
            matches!(
                streams::export_mode(&st.ring),
                ExportMode::Untethered { .. }
            )
        });
        if !untethered {
            return Ok(self.wire.flush()?);
        }
        match self
            .wire
            .flush_within(self.shared.config().send.pin_deadline)
        {
            Ok(()) => Ok(()),
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::TimedOut) => {
                Err(StepError::Reset(self.set.session.on_send_stalled(id)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Applies the session's protection of stream `id` to its reader.
    fn protect(&mut self, id: u32) {
        if let (Some(p), Some(st)) = (
            self.set.session.protection(id),
            self.set.streams.get_mut(&id),
        ) {
            st.protect(p);
        }
    }

    fn protect_all(&mut self) {
        self.set
            .session
            .on_connection_released(self.wire.released());
        let ids: Vec<u32> = self.set.streams.keys().copied().collect();
        for id in ids {
            self.protect(id);
        }
    }

    fn report_counters(&mut self, id: u32) {
        let c: StreamCounters = self.set.session.take_counters(id);
        if c == StreamCounters::default() {
            return;
        }
        if let Some(st) = self.set.streams.get(&id) {
            st.stats.credit_stalls.add(c.credit_stalls);
            st.stats.gaps.add(c.gaps);
            st.stats.gap_bytes.add(c.gap_bytes);
            st.stats.lost_messages.add(c.lost_messages);
            st.stats.pin_resets.add(c.pin_resets);
        }
    }

    /// Drops streams whose END the peer acknowledged.
    fn retire_finished(&mut self) {
        for id in self.set.session.retirable() {
            self.report_counters(id);
            if let Some(mut st) = self.set.streams.remove(&id) {
                st.finished();
                let dir = st.dir().map(std::path::Path::to_path_buf);
                drop(st);
                // We may have been the last reader of the finished ring.
                if let Some(dir) = dir {
                    let _ = bus::sweep_topic(&dir);
                }
            }
            self.set.session.retire(id);
        }
    }

    fn heartbeat(&mut self) -> Result<(), BridgeError> {
        self.last_heartbeat = Instant::now();
        let mut tails: Vec<StreamTail> = Vec::new();
        for id in self.set.session.subscribed() {
            if let Some(st) = self.set.streams.get(&id) {
                let tail = st.reader.tail();
                st.stats.peer_tail.set(tail);
                tails.push(StreamTail { stream: id, tail });
            }
        }
        if tails.is_empty() {
            self.wire.queue(&Frame::Heartbeat(Heartbeat::new(&[])));
        }
        for part in tails.chunks(MAX_HEARTBEAT_ENTRIES) {
            self.wire.queue(&Frame::Heartbeat(Heartbeat::new(part)));
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
        // Never sleep past a pin deadline.
        let cap = self
            .set
            .session
            .next_deadline(now_ns())
            .map_or(IDLE_WAIT, |ns| IDLE_WAIT.min(Duration::from_nanos(ns)));
        if blocked {
            // POLLOUT, or POLLERR for completions.
            let _ = socket::poll_once(fd, libc::POLLOUT, cap);
            return;
        }
        if self.wire.sock.tracker().in_flight() > 0 {
            let _ = socket::poll_once(fd, 0, cap);
            return;
        }
        let waiting = self
            .set
            .session
            .subscribed()
            .filter(|id| self.set.session.waits_for_ring(*id))
            .find_map(|id| self.set.streams.get(&id).map(|st| (id, st)));
        match waiting {
            Some((id, st)) => {
                let timeout = if self.idle_rounds < IDLE_ROUNDS_BEFORE_LONG {
                    IDLE_WAIT
                } else {
                    LONG_IDLE_WAIT
                };
                let from = self.set.session.sent(id).unwrap_or(0);
                st.reader
                    .wait_beyond(from, WaitStrategy::Block { spins: 0 }, Some(timeout));
            }
            None => std::thread::park_timeout(if self.idle_rounds < IDLE_ROUNDS_BEFORE_LONG {
                IDLE_WAIT
            } else {
                Duration::from_millis(20)
            }),
        }
    }
}
