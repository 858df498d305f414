//! A scripted peer for the sender and receiver tests: it authenticates to a
//! bridge that listens (as its allowlisted peer), then reads what the bridge
//! exports and sends SUBSCRIBE, ACK and CREDIT when the test says so, or
//! stops reading altogether; or announces a stream of its own and sends
//! DATA for the bridge to import.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use shmbus_bridge::{
    identity::{PublicKey, StaticKeypair},
    io::frame_reader::FrameReader,
    proto::{
        frame::{
            decode, Ack, Credit, DataHeader, Decoded, End, ErrorCode, Frame, FrameHeader, Gap,
            Heartbeat, Subscribe, HEADER_LEN,
        },
        handshake::{HandshakeParams, Initiator},
        seal::{Direction, Protection},
    },
};
use shmbus_bus::layout::LAYOUT_VERSION;

/// A frame the fake peer received, reduced to what the tests check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    Announce {
        stream: u32,
        topic: String,
        publisher: String,
    },
    /// DATA `[start, start + len)`, its payload read and authenticated.
    Data {
        stream: u32,
        start: u64,
        len: u64,
    },
    Gap(Gap),
    End(End),
    Error {
        code: ErrorCode,
        message: String,
    },
    Heartbeat,
    Subscribe(Subscribe),
    Credit(Credit),
    Ack(Ack),
    Other,
}

/// One authenticated connection to a bridge.
pub struct FakePeer {
    pub sock: TcpStream,
    reader: FrameReader,
    send: Direction,
    stop: AtomicBool,
    last_heartbeat: Instant,
}

/// Reads one unsealed handshake frame.
fn read_raw_frame(sock: &mut TcpStream) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_LEN];
    sock.read_exact(&mut buf).expect("handshake reply");
    let h = FrameHeader::parse(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
    buf.resize(HEADER_LEN + h.body_len as usize, 0);
    sock.read_exact(&mut buf[HEADER_LEN..])
        .expect("handshake reply");
    buf
}

impl FakePeer {
    /// Connects to the bridge `server` (public key `server_key`) at `addr`
    /// as `name` with `keypair`, and authenticates.
    pub fn connect(
        addr: &str,
        name: &str,
        keypair: &StaticKeypair,
        server: &str,
        server_key: &PublicKey,
    ) -> Self {
        let mut sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let params = HandshakeParams {
            local_name: name.into(),
            keypair: keypair.clone(),
            layout_version: LAYOUT_VERSION,
            protection: Protection::Auth,
        };
        let mut out = Vec::new();
        let init = Initiator::start(&params, server, server_key, [7; 32], &mut out).unwrap();
        sock.write_all(&out).unwrap();
        let reply = read_raw_frame(&mut sock);
        let Ok(Decoded::Frame { frame, .. }) = decode(&reply) else {
            panic!("undecodable handshake reply");
        };
        out.clear();
        let session = init.finish(&frame, &mut out).unwrap();
        sock.write_all(&out).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Self {
            sock,
            reader: FrameReader::new(Duration::from_secs(120), session.keys.recv),
            send: session.keys.send,
            stop: AtomicBool::new(false),
            last_heartbeat: Instant::now(),
        }
    }

    /// Sends `f`, sealed.
    pub fn send_frame(&mut self, f: &Frame<'_>) {
        let mut v = Vec::new();
        f.encode_to_vec(&mut v).unwrap();
        self.send.seal_control(&mut v, 0).unwrap();
        self.sock.write_all(&v).unwrap();
    }

    /// Sends DATA `h` with `payload` (its length must be `h.len`), sealed:
    /// header and payload authenticated, the tag after them.
    pub fn send_data(&mut self, h: &DataHeader, payload: &[u8]) {
        let header = h.encode().unwrap();
        let mut seal = self.send.begin().unwrap();
        seal.aad(&header);
        seal.aad(payload);
        let tag = seal.tag();
        let mut v = Vec::with_capacity(header.len() + payload.len() + tag.len());
        v.extend_from_slice(&header);
        v.extend_from_slice(payload);
        v.extend_from_slice(&tag);
        self.sock.write_all(&v).unwrap();
    }

    /// The next frame, or `None` if none came within `timeout`; panics if
    /// the connection closed or a frame failed authentication.
    pub fn next(&mut self, timeout: Duration) -> Option<Got> {
        let end = Instant::now() + timeout;
        loop {
            if self.last_heartbeat.elapsed() > Duration::from_millis(300) {
                // Keep the bridge from timing the peer out.
                self.last_heartbeat = Instant::now();
                self.send_frame(&Frame::Heartbeat(Heartbeat::new(&[])));
            }
            let bytes = match self.reader.next_frame(&mut self.sock, &self.stop) {
                Ok(Some(b)) => b.to_vec(),
                Ok(None) if Instant::now() < end => continue,
                Ok(None) => return None,
                Err(e) => panic!("connection to the bridge failed: {e}"),
            };
            let Ok(Decoded::Frame { frame, .. }) = decode(&bytes) else {
                panic!("undecodable frame");
            };
            return Some(match frame {
                Frame::StreamAnnounce(a) => Got::Announce {
                    stream: a.stream,
                    topic: a.topic.to_owned(),
                    publisher: a.publisher.to_owned(),
                },
                Frame::Data(h) => {
                    let mut payload = vec![0u8; h.len as usize];
                    self.reader
                        .read_payload(&mut self.sock, &mut [&mut payload[..]], &self.stop)
                        .expect("DATA payload");
                    Got::Data {
                        stream: h.stream,
                        start: h.start_position,
                        len: u64::from(h.len),
                    }
                }
                Frame::Gap(g) => Got::Gap(g),
                Frame::End(e) => Got::End(e),
                Frame::Error(e) => Got::Error {
                    code: e.code,
                    message: e.message.to_owned(),
                },
                Frame::Heartbeat(_) => Got::Heartbeat,
                Frame::Subscribe(s) => Got::Subscribe(s),
                Frame::Credit(c) => Got::Credit(c),
                Frame::Ack(a) => Got::Ack(a),
                _ => Got::Other,
            });
        }
    }

    /// Reads frames until `want` accepts one (returned), panicking after
    /// `timeout`; every frame read is passed to `seen` first.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut seen: impl FnMut(&Got),
        mut want: impl FnMut(&Got) -> bool,
    ) -> Got {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            if let Some(g) = self.next(left.min(Duration::from_millis(200))) {
                seen(&g);
                if want(&g) {
                    return g;
                }
            }
        }
    }
}
