//! One connection: the handshake (with the pre-authentication limits), then
//! the sender and receiver threads, then handing the peer's streams back.
//!
//! # Before authentication
//!
//! A connection that has not authenticated holds one thread and fixed
//! buffers on its stack (1.5 KiB for frames, 311 bytes for the HELLO): frames are read one at a time, exactly (no
//! read-ahead), each bounded by its type's maximum and by that buffer. The
//! whole handshake must finish by one absolute deadline
//! (`handshake_timeout`, from accept): every read waits at most the time
//! left, so bytes trickling in one by one do not extend it. The 64 KiB
//! frame reader and everything else a connection needs are allocated only
//! after the peer proved its key.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{atomic::Ordering, Arc},
    thread,
    time::{Duration, Instant},
};

use shmbus_bus::layout::LAYOUT_VERSION;

use crate::{
    io::{frame_reader::FrameReader, zerocopy::ZeroCopySocket},
    log,
    proto::{
        frame::{decode, Decoded, Frame, FrameHeader, FrameType, HEADER_LEN},
        handshake::{
            check_hello, HandshakeError, HandshakeParams, Initiator, Responder, Role, Session,
        },
        seal::TAG_LEN,
        zc::ZcPolicy,
    },
};

use super::{
    export::Sender, import::Receiver, link::Link, stats::HandshakeFailure, Lease, PendingSlot,
    Shared,
};

/// Handshake failures logged one by one; after that, one line per this many.
const LOGGED_HANDSHAKE_FAILURES: u64 = 100;

/// Receive timeout slice: how often blocked reads check stop flags.
pub(crate) const SLICE: Duration = Duration::from_millis(100);

/// What happened to a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    /// The handshake succeeded.
    pub(crate) authenticated: bool,
    /// Time from connect to close.
    pub(crate) lasted: Duration,
}

/// Runs one connection to its end. `pending` (for accepted connections)
/// is the connection's place among the pending handshakes; it is given back
/// once the handshake is over.
pub(crate) fn serve(
    shared: &Arc<Shared>,
    mut stream: TcpStream,
    addr: SocketAddr,
    role: Role,
    expected_peer: Option<&str>,
    pending: Option<PendingSlot>,
) -> Outcome {
    let started = Instant::now();
    let side = match role {
        Role::Initiator => "outgoing",
        Role::Acceptor => "incoming",
    };
    let hs = handshake(shared, &mut stream, role, expected_peer, started);
    drop(pending);
    let session = match hs {
        Ok(s) => s,
        Err(fail) => {
            let st = &shared.stats;
            let n = st.handshake_failures.get();
            st.handshake_failed(fail.kind);
            // Anyone can cause these: the first 100 are logged one by one,
            // then one line per 100 (the counters have them all).
            if n < LOGGED_HANDSHAKE_FAILURES || n % LOGGED_HANDSHAKE_FAILURES == 0 {
                log::warning!(
                    "refused {side} connection {addr}: handshake failed: {} ({} handshake failures so far)",
                    fail.reason,
                    n + 1
                );
            }
            return Outcome {
                authenticated: false,
                lasted: started.elapsed(),
            };
        }
    };
    let Session {
        peer_name,
        peer_key,
        protection,
        keys,
    } = session;
    let initiator = match role {
        Role::Initiator => shared.config().node_name.clone(),
        Role::Acceptor => peer_name.clone(),
    };
    let peer = shared.peer(&peer_name);
    let link = Arc::new(Link::new(thread::current()));
    let (exports, imports) = match peer.acquire(shared, &link, &initiator, peer_key) {
        Lease::Granted(e, i) => (e, i),
        Lease::Duplicate => {
            log::info!(
                "closing {side} connection {addr} from peer {}: already connected (the connection opened by the smaller node name is kept)",
                peer_name
            );
            return Outcome {
                authenticated: true,
                lasted: started.elapsed(),
            };
        }
        Lease::Busy => {
            log::warning!(
                "closing {side} connection {addr} from peer {}: its previous connection did not end in time",
                peer_name
            );
            return Outcome {
                authenticated: true,
                lasted: started.elapsed(),
            };
        }
    };
    if role == Role::Initiator && !shared.config().peers.iter().any(|p| p.name == peer_name) {
        // A reload removed the peer during the handshake.
        log::info!(
            "closing {side} connection {addr} to peer {}: removed from the configuration",
            peer_name
        );
        peer.release(exports, imports);
        return Outcome {
            authenticated: true,
            lasted: started.elapsed(),
        };
    }
    if !shared.allowlist().allows(&peer_name, &peer_key) {
        // The allowlist was reloaded during the handshake.
        log::warning!(
            "closing {side} connection {addr} from peer {}: its key left the allowlist",
            peer_name
        );
        peer.release(exports, imports);
        return Outcome {
            authenticated: true,
            lasted: started.elapsed(),
        };
    }
    peer.stats.connections.add(1);
    // Relaxed: a display flag.
    peer.stats.connected.store(true, Ordering::Relaxed);
    log::info!(
        "connected to peer {} at {addr} ({side}, key {}, frames {})",
        peer_name,
        peer_key.short(),
        protection.name()
    );
    let (send_keys, recv_keys) = (keys.send, keys.recv);
    let reader = FrameReader::new(shared.config().peer_timeout, recv_keys);
    let _ = stream.set_read_timeout(Some(SLICE));
    let _ = stream.set_write_timeout(Some(shared.config().peer_timeout));
    let rx_stream = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot clone the socket of {addr}: {e}");
            peer.release(exports, imports);
            return Outcome {
                authenticated: true,
                lasted: started.elapsed(),
            };
        }
    };
    let mut sock = ZeroCopySocket::new(stream, ZcPolicy::default(), 0);
    sock.set_send_timeout(Some(shared.config().peer_timeout));
    let (exports, imports) = thread::scope(|scope| {
        let receiver = Receiver::new(shared, &peer, &link, rx_stream, reader, imports);
        let rx = thread::Builder::new()
            .name(format!("recv-{}", peer_name))
            .spawn_scoped(scope, move || receiver.run());
        let rx = match rx {
            Ok(h) => h,
            Err(e) => {
                link.close(format!("cannot start the receiver thread: {e}"), false);
                let exports = Sender::new(shared, &peer, &link, sock, exports, send_keys).run();
                return (exports, ImportSet::default());
            }
        };
        let exports = Sender::new(shared, &peer, &link, sock, exports, send_keys).run();
        let imports = rx.join().unwrap_or_default();
        (exports, imports)
    });
    let reason = link.reason().map_or_else(
        || "closed".to_owned(),
        |r| {
            if r.protocol_error {
                peer.stats.protocol_errors.add(1);
            }
            r.message
        },
    );
    peer.release(exports, imports);
    // Relaxed: a display flag.
    peer.stats.connected.store(false, Ordering::Relaxed);
    log::info!(
        "connection to peer {} at {addr} closed: {reason}",
        peer_name
    );
    Outcome {
        authenticated: true,
        lasted: started.elapsed(),
    }
}

use super::import::ImportSet;

/// Largest frame read before authentication (an ERROR with its longest
/// message is 1036 bytes; HELLO at most 311, NOISE 264).
const PREAUTH_BUF: usize = 1536;
/// Largest HELLO frame (311 bytes).
const HELLO_FRAME_MAX: usize = HEADER_LEN + FrameType::Hello.max_body_len() as usize;

/// A failed handshake: its counted reason and the logged text.
#[derive(Debug)]
struct Fail {
    kind: HandshakeFailure,
    reason: String,
}

impl Fail {
    fn new(kind: HandshakeFailure, reason: impl Into<String>) -> Self {
        Self {
            kind,
            reason: reason.into(),
        }
    }

    fn other(reason: impl Into<String>) -> Self {
        Self::new(HandshakeFailure::Other, reason)
    }

    /// Frames that are not a well-formed handshake.
    fn malformed(reason: impl Into<String>) -> Self {
        Self::new(HandshakeFailure::Malformed, reason)
    }

    /// The connection closed or failed.
    fn closed(reason: impl Into<String>) -> Self {
        Self::new(HandshakeFailure::Closed, reason)
    }
}

impl From<HandshakeError> for Fail {
    fn from(e: HandshakeError) -> Self {
        let kind = match e {
            HandshakeError::UnknownKey { .. } => HandshakeFailure::UnknownKey,
            HandshakeError::NameMismatch { .. } => HandshakeFailure::NameMismatch,
            HandshakeError::VersionMismatch { .. }
            | HandshakeError::LayoutMismatch { .. }
            | HandshakeError::BadProtection(_)
            | HandshakeError::Downgrade { .. } => HandshakeFailure::Incompatible,
            HandshakeError::BadHelloMagic { .. }
            | HandshakeError::Noise(_)
            | HandshakeError::BadName(_)
            | HandshakeError::UnexpectedFrame { .. }
            | HandshakeError::ConfirmationFailed => HandshakeFailure::Malformed,
            HandshakeError::PeerRejected { .. } => HandshakeFailure::PeerRejected,
            // A variant added later is counted, if not yet classified.
            #[allow(unreachable_patterns)]
            _ => HandshakeFailure::Other,
        };
        Self::new(kind, e.to_string())
    }
}

/// Reads exactly one frame (plus its tag if `sealed`) into `buf` before
/// `deadline`; returns its length (without the tag).
fn read_preauth_frame(
    stream: &mut TcpStream,
    buf: &mut [u8; PREAUTH_BUF],
    deadline: Instant,
    shared: &Shared,
    sealed: bool,
) -> Result<usize, Fail> {
    read_exact_by(stream, &mut buf[..HEADER_LEN], deadline, shared)?;
    let header_bytes: &[u8; HEADER_LEN] = buf[..HEADER_LEN]
        .try_into()
        .map_err(|_| Fail::other("header slice"))?;
    let header = FrameHeader::parse(header_bytes).map_err(|e| Fail::malformed(e.to_string()))?;
    if header.frame_type == FrameType::Data {
        return Err(Fail::malformed("DATA frame before the handshake finished"));
    }
    let len = HEADER_LEN + header.body_len as usize;
    let total = len + if sealed { TAG_LEN } else { 0 };
    if total > PREAUTH_BUF {
        return Err(Fail::malformed(format!(
            "{} frame of {len} bytes during the handshake",
            header.frame_type
        )));
    }
    read_exact_by(stream, &mut buf[HEADER_LEN..total], deadline, shared)?;
    Ok(len)
}

/// `read_exact` that gives up at `deadline` (absolute: each read waits only
/// for the time left) or at shutdown.
fn read_exact_by(
    stream: &mut TcpStream,
    mut dst: &mut [u8],
    deadline: Instant,
    shared: &Shared,
) -> Result<(), Fail> {
    while !dst.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Fail::new(
                HandshakeFailure::Timeout,
                format!(
                    "no complete handshake within {:?} (handshake_timeout)",
                    shared.config().limits.handshake_timeout
                ),
            ));
        }
        if shared.stopping() {
            return Err(Fail::other("shutting down"));
        }
        stream
            .set_read_timeout(Some(left.min(SLICE)))
            .map_err(|e| Fail::other(e.to_string()))?;
        match stream.read(dst) {
            Ok(0) => {
                return Err(Fail::closed(
                    "connection closed by the peer during the handshake",
                ))
            }
            Ok(n) => dst = &mut dst[n..],
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(Fail::closed(format!("receive failed: {e}"))),
        }
    }
    Ok(())
}

fn write_by(stream: &mut TcpStream, bytes: &[u8], deadline: Instant) -> Result<(), Fail> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Fail::new(
            HandshakeFailure::Timeout,
            "handshake deadline passed",
        ));
    }
    stream
        .set_write_timeout(Some(left))
        .and_then(|()| stream.write_all(bytes))
        .map_err(|e| Fail::closed(format!("send failed: {e}")))
}

/// Runs the handshake (see [`crate::proto::handshake`]) by the absolute
/// deadline `started + handshake_timeout`.
fn handshake(
    shared: &Shared,
    stream: &mut TcpStream,
    role: Role,
    expected_peer: Option<&str>,
    started: Instant,
) -> Result<Session, Fail> {
    let cfg = shared.config();
    let deadline = started + cfg.limits.handshake_timeout;
    stream
        .set_nodelay(true)
        .map_err(|e| Fail::other(e.to_string()))?;
    let params = HandshakeParams {
        local_name: cfg.node_name.clone(),
        keypair: cfg.keypair.clone(),
        layout_version: LAYOUT_VERSION,
        protection: cfg.protection,
    };
    let mut buf = [0u8; PREAUTH_BUF];
    let mut out = Vec::new();
    match role {
        Role::Initiator => {
            let name = expected_peer.ok_or_else(|| Fail::other("no peer name to dial"))?;
            let key = shared
                .allowlist()
                .key_of(name)
                .ok_or_else(|| Fail::other(format!("peer {name} is no longer in the allowlist")))?;
            let mut random = [0u8; 32];
            crate::io::random::fill(&mut random)
                .map_err(|e| Fail::other(format!("no random bytes: {e}")))?;
            let init = Initiator::start(&params, name, &key, random, &mut out)?;
            write_by(stream, &out, deadline)?;
            out.clear();
            let len = read_preauth_frame(stream, &mut buf, deadline, shared, false)?;
            let frame = match decode(&buf[..len]) {
                Ok(Decoded::Frame { frame, .. }) => frame,
                Ok(Decoded::Incomplete { .. }) => return Err(Fail::malformed("partial frame")),
                Err(e) => return Err(Fail::malformed(e.to_string())),
            };
            let session = init.finish(&frame, &mut out)?;
            write_by(stream, &out, deadline)?;
            Ok(session)
        }
        Role::Acceptor => {
            let hello_len = read_preauth_frame(stream, &mut buf, deadline, shared, false)?;
            // The HELLO is the Noise prologue: keep it while `buf` is reused.
            let mut hello_bytes = [0u8; HELLO_FRAME_MAX];
            if hello_len > HELLO_FRAME_MAX {
                return Err(Fail::malformed("first frame is not a HELLO"));
            }
            hello_bytes[..hello_len].copy_from_slice(&buf[..hello_len]);
            let hello_bytes = &hello_bytes[..hello_len];
            let hello = match decode(hello_bytes) {
                Ok(Decoded::Frame {
                    frame: Frame::Hello(h),
                    ..
                }) => h,
                Ok(Decoded::Frame { frame, .. }) => {
                    return Err(Fail::malformed(format!(
                        "first frame is {}, not HELLO",
                        frame.frame_type()
                    )))
                }
                Ok(Decoded::Incomplete { .. }) => return Err(Fail::malformed("partial frame")),
                Err(e) => return Err(Fail::malformed(e.to_string())),
            };
            if let Err(e) = check_hello(&hello, LAYOUT_VERSION) {
                if let Some(reply) = e.reply() {
                    let _ = write_by(stream, &reply, deadline);
                }
                return Err(e.into());
            }
            let len = read_preauth_frame(stream, &mut buf, deadline, shared, false)?;
            let noise = match decode(&buf[..len]) {
                Ok(Decoded::Frame {
                    frame: Frame::Noise(m),
                    ..
                }) => m,
                Ok(Decoded::Frame { frame, .. }) => {
                    return Err(Fail::malformed(format!(
                        "second frame is {}, not NOISE",
                        frame.frame_type()
                    )))
                }
                Ok(Decoded::Incomplete { .. }) => return Err(Fail::malformed("partial frame")),
                Err(e) => return Err(Fail::malformed(e.to_string())),
            };
            let allowlist = shared.allowlist();
            let resp =
                Responder::respond(&params, &allowlist, hello_bytes, &hello, noise, &mut out)?;
            write_by(stream, &out, deadline)?;
            let len = read_preauth_frame(stream, &mut buf, deadline, shared, true)?;
            let (frame, rest) = buf.split_at_mut(len);
            let tag: [u8; TAG_LEN] = rest[..TAG_LEN]
                .try_into()
                .map_err(|_| Fail::other("tag slice"))?;
            Ok(resp.confirm(frame, &tag)?)
        }
    }
}
