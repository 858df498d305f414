//! One connection: the handshake, then the sender and receiver threads,
//! then handing the peer's streams back.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    sync::{atomic::Ordering, Arc},
    thread,
    time::{Duration, Instant},
};

use shmbus_bus::layout::LAYOUT_VERSION;

use crate::{
    io::{
        frame_reader::{FrameReader, ReadError},
        zerocopy::ZeroCopySocket,
    },
    log,
    proto::{
        frame::{decode, Decoded},
        handshake::{Handshake, HandshakeParams, Nonce, PeerInfo, Role, Status},
        zc::ZcPolicy,
    },
};

use super::{export::Sender, import::Receiver, link::Link, Lease, Shared};

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

/// Runs one connection to its end. The caller has counted it in
/// `shared.pending`; this releases that count after the handshake.
pub(crate) fn serve(
    shared: &Arc<Shared>,
    mut stream: TcpStream,
    addr: SocketAddr,
    role: Role,
    expected_peer: Option<&str>,
) -> Outcome {
    let started = Instant::now();
    let side = match role {
        Role::Initiator => "outgoing",
        Role::Acceptor => "incoming",
    };
    let mut reader = FrameReader::new(shared.config.peer_timeout);
    let hs = handshake(shared, &mut stream, &mut reader, role, expected_peer);
    // Relaxed: see `listen_loop`.
    shared.pending.fetch_sub(1, Ordering::Relaxed);
    let info = match hs {
        Ok(info) => info,
        Err(reason) => {
            shared.stats.handshake_failures.add(1);
            log::warning!("refused {side} connection {addr}: handshake failed: {reason}");
            return Outcome {
                authenticated: false,
                lasted: started.elapsed(),
            };
        }
    };
    let initiator = match role {
        Role::Initiator => shared.config.node_name.clone(),
        Role::Acceptor => info.name.clone(),
    };
    let peer = shared.peer(&info.name);
    let link = Arc::new(Link::new(thread::current()));
    let (exports, imports) = match peer.acquire(shared, &link, &initiator) {
        Lease::Granted(e, i) => (e, i),
        Lease::Duplicate => {
            log::info!(
                "closing {side} connection {addr} from peer {}: already connected (the connection opened by the smaller node name is kept)",
                info.name
            );
            return Outcome {
                authenticated: true,
                lasted: started.elapsed(),
            };
        }
        Lease::Busy => {
            log::warning!(
                "closing {side} connection {addr} from peer {}: its previous connection did not end in time",
                info.name
            );
            return Outcome {
                authenticated: true,
                lasted: started.elapsed(),
            };
        }
    };
    peer.stats.connections.add(1);
    // Relaxed: a display flag.
    peer.stats.connected.store(true, Ordering::Relaxed);
    log::info!("connected to peer {} at {addr} ({side})", info.name);
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
    sock.set_send_timeout(Some(shared.config.peer_timeout));
    let (exports, imports) = thread::scope(|scope| {
        let receiver = Receiver::new(shared, &peer, &link, rx_stream, reader, imports);
        let rx = thread::Builder::new()
            .name(format!("recv-{}", info.name))
            .spawn_scoped(scope, move || receiver.run());
        let rx = match rx {
            Ok(h) => h,
            Err(e) => {
                link.close(format!("cannot start the receiver thread: {e}"), false);
                let exports = Sender::new(shared, &peer, &link, sock, exports).run();
                return (exports, ImportSet::default());
            }
        };
        let exports = Sender::new(shared, &peer, &link, sock, exports).run();
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
        info.name
    );
    Outcome {
        authenticated: true,
        lasted: started.elapsed(),
    }
}

use super::import::ImportSet;

/// Runs the handshake; on failure the peer has been sent an ERROR frame
/// where one applies, and the reason is returned for the log.
fn handshake(
    shared: &Shared,
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    role: Role,
    expected_peer: Option<&str>,
) -> Result<PeerInfo, String> {
    let cfg = &shared.config;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(SLICE))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(cfg.peer_timeout))
        .map_err(|e| e.to_string())?;
    let params = HandshakeParams {
        role,
        local_name: cfg.node_name.clone(),
        expected_peer: expected_peer.map(str::to_owned),
        layout_version: LAYOUT_VERSION,
    };
    let nonce = Nonce::random().map_err(|e| format!("no random nonce: {e}"))?;
    let mut hs = Handshake::new(params, cfg.key.clone(), nonce).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    hs.start(&mut out).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + cfg.peer_timeout;
    let flush = |stream: &mut TcpStream, out: &mut Vec<u8>| {
        let r = stream.write_all(out);
        out.clear();
        r
    };
    flush(stream, &mut out).map_err(|e| format!("cannot send HELLO: {e}"))?;
    loop {
        if Instant::now() > deadline {
            return Err(format!(
                "no complete handshake within {:?} (peer timeout)",
                cfg.peer_timeout
            ));
        }
        let result = match reader.next_frame(stream, shared.stop_flag()) {
            Ok(None) => continue,
            Ok(Some(bytes)) => match decode(bytes) {
                Ok(Decoded::Frame { frame, .. }) => {
                    hs.handle(&frame, &mut out).map_err(|e| e.to_string())
                }
                Ok(Decoded::Incomplete { .. }) => {
                    Err("frame reader returned a partial frame".into())
                }
                Err(e) => Err(hs.on_decode_error(e, &mut out).to_string()),
            },
            Err(ReadError::Frame(e)) => Err(hs.on_decode_error(e, &mut out).to_string()),
            Err(e) => Err(e.to_string()),
        };
        let sent = flush(stream, &mut out);
        match result {
            Ok(Status::InProgress) => sent.map_err(|e| format!("send failed: {e}"))?,
            Ok(Status::Complete(info)) => {
                sent.map_err(|e| format!("send failed: {e}"))?;
                return Ok(info);
            }
            Err(e) => return Err(e),
        }
    }
}
