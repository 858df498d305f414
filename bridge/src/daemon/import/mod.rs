//! The receiver thread of a connection: reads every frame from the peer,
//! feeds the imported streams' frames to the connection's
//! [`ImportSession`] (which decides what is legal and what credit to
//! grant), applies its decisions to replica rings, and hands the peer's
//! SUBSCRIBE, ACK and CREDIT for our exports to the sender thread.
//!
//! The thread never waits for local subscribers: a DATA frame arrives only
//! within the credit this bridge granted, so its replica space is reserved
//! at once (if not, the peer broke the credit rule or the bookkeeping is
//! wrong, and the connection closes with that reason); a gap that does not
//! fit yet waits in the session; the previous replica of a resumed stream
//! drains while the stream is held. Between frames (and at least every
//! [`STARVED_SLICE`] while a stream waits for room) the thread asks the
//! rings of starved streams for room and grants credit, so a stuck local
//! subscriber stops only its own stream and the peer's control frames are
//! always read.
//!
//! Files: [`announce`] decides what to import, [`data`] moves DATA payloads
//! into rings, [`gaps`] applies GAP and END, [`streams`] holds the replica
//! of each stream, [`reload`] stops the streams of topics a reload no
//! longer imports.
//!
//! Every frame is authenticated by the [`FrameReader`] before it counts: a
//! DATA payload lands in reserved replica space, and is published only after
//! its tag verified. A frame that fails authentication closes the connection
//! (counted in `auth_failures`), and no ERROR is sent: the stream is no
//! longer trustworthy in either direction. A DATA header that is refused
//! (unknown stream, wrong position, past the credit) is still read to its
//! tag first, so a forged header counts as an authentication failure, a
//! real one as the peer's protocol error.

mod announce;
mod data;
mod gaps;
mod reload;
mod streams;

use std::{
    collections::HashMap,
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    config::Config,
    io::frame_reader::{FrameReader, ReadError},
    log,
    proto::{
        frame::{
            decode, Ack, Credit, DataHeader, Decoded, End, ErrorCode, Frame, FrameType, Gap,
            StreamFlags, StreamTail, Subscribe,
        },
        session::import::{ImportSession, ImportViolation, Output},
    },
};

use super::{conn::SLICE, link::Link, replica::ReplicaMeta, Peer, Shared};

use announce::Pending;
pub(crate) use streams::ImportSet;
use streams::StreamKey;

/// How long a resumed stream waits for local subscribers to finish the
/// previous replica before the next one starts (so they read it to its end
/// before the continuation appears).
pub(crate) const DRAIN_WAIT: Duration = Duration::from_secs(3);

/// The socket's receive slice while a stream waits for room (or a held
/// stream for its drain): how soon a local subscriber's progress turns
/// into credit when no frame arrives meanwhile.
const STARVED_SLICE: Duration = Duration::from_millis(5);

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

/// Why the receiver stops.
enum Step {
    /// The peer broke the protocol: ERROR + close.
    Violation(ErrorCode, String),
    /// Close without blaming the peer's protocol (I/O, our own failure).
    Close(String),
    /// A frame failed authentication.
    Auth(crate::proto::seal::SealError),
}

impl Step {
    fn violation(v: &ImportViolation) -> Self {
        Self::Violation(v.code(), v.to_string())
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
    session: ImportSession,
    /// The configuration the streams were last checked against.
    config: Arc<Config>,
    /// The stream key of each subscribed stream id of this connection.
    keys: HashMap<u32, StreamKey>,
    /// The topic of each stream announced on this connection and ignored
    /// because no import rule matched it (see [`reload`]).
    unimported: HashMap<u32, String>,
    /// Streams held while their previous replica drains.
    pending: Vec<Pending>,
    bytes_reported: u64,
    /// The current DATA frame's payload was read (or its read failed).
    reader_done: bool,
    /// The receive slice the socket has now.
    slice: Duration,
    last_sweep: Instant,
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
        mut set: ImportSet,
    ) -> Self {
        let config = shared.config();
        // Streams of topics a reload stopped importing while the peer was
        // away (or during the last connection) go before any announcement.
        reload::drop_disallowed(&mut set, &config, &peer.name);
        Self {
            shared,
            peer,
            link,
            sock,
            reader,
            set,
            session: ImportSession::new(),
            config,
            keys: HashMap::new(),
            unimported: HashMap::new(),
            pending: Vec::new(),
            bytes_reported: 0,
            reader_done: false,
            slice: SLICE,
            last_sweep: Instant::now(),
        }
    }

    /// Runs until the connection closes; returns the streams for the next one.
    pub(crate) fn run(mut self) -> ImportSet {
        while !self.link.stopping() {
            if let Err(step) = self.sweep() {
                self.stop(step);
                break;
            }
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
            self.flush_outputs();
            if let Err(step) = outcome {
                self.stop(step);
                break;
            }
        }
        self.flush_outputs();
        self.report_bytes();
        // Nothing writes the replicas now: streams a reload disallowed can
        // be retired.
        reload::drop_disallowed(&mut self.set, &self.shared.config(), &self.peer.name);
        self.set
    }

    fn stop(&self, step: Step) {
        match step {
            Step::Violation(code, message) => self.link.fail(code, message),
            Step::Close(message) => self.link.close(message, false),
            Step::Auth(e) => self.auth_failed(&e),
        }
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

    /// Hands the session's frames to the sender thread.
    fn flush_outputs(&mut self) {
        while let Some(out) = self.session.poll_output() {
            match out {
                Output::Subscribe(s) => self.link.send_frame(&Frame::Subscribe(s)),
                Output::Credit(c) => self.link.credit(c.stream, c.limit),
                Output::Ack(a) => self.link.ack(a.stream, a.position),
            }
        }
    }

    /// Work that does not wait for a frame: held streams whose previous
    /// replica drained, room of starved streams (credit), pending gaps.
    /// Runs before every frame, at most every [`STARVED_SLICE`] while
    /// frames keep arriving.
    fn sweep(&mut self) -> Result<(), Step> {
        if self.last_sweep.elapsed() < STARVED_SLICE {
            return Ok(());
        }
        self.last_sweep = Instant::now();
        self.check_reload()?;
        self.start_pending();
        let starved: Vec<u32> = self
            .session
            .subscribed_streams()
            .filter(|&id| self.session.wants_room(id))
            .collect();
        for id in &starved {
            if let Some(room) = self.stream_mut(*id).and_then(|st| st.room_until()) {
                self.session.room(*id, room);
            }
        }
        let gaps: Vec<Gap> = self.session.pending_gaps().collect();
        for g in gaps {
            self.apply_gap(&g, false)?;
        }
        self.flush_outputs();
        // A short receive slice only while something waits for room.
        let want = if starved.is_empty() && self.pending.is_empty() {
            SLICE
        } else {
            STARVED_SLICE
        };
        self.set_slice(want);
        Ok(())
    }

    /// Gives the socket receive slice `slice` (how long a read waits for a
    /// frame before the next sweep).
    fn set_slice(&mut self, slice: Duration) {
        if slice != self.slice && self.sock.set_read_timeout(Some(slice)).is_ok() {
            self.slice = slice;
        }
    }

    fn stream_mut(&mut self, id: u32) -> Option<&mut streams::ImportStream> {
        let key = self.keys.get(&id)?;
        self.set.streams.get_mut(key)
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
                    if self.session.is_subscribed(t.stream) {
                        if let Some(st) = self.stream_mut(t.stream) {
                            st.stats.peer_tail.set(t.tail);
                        }
                    }
                }
                Ok(())
            }
            Incoming::Error(code, message) => Err(Step::Close(format!(
                "peer sent ERROR ({code:?}): {message}"
            ))),
            Incoming::Unexpected(t) => Err(Step::Violation(
                ErrorCode::UnexpectedFrame,
                format!("unexpected {t} frame after the handshake"),
            )),
        }
    }
}
