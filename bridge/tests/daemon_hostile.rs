//! A bridge under attack keeps serving its good peer. Hostile clients speak
//! to it over real sockets: a key not on the allowlist, a wrong protocol
//! version, garbage, an allowlisted key claiming another node's name, and,
//! after authenticating with their own allowlisted keys, DATA with a bad
//! length, a record that does not fit its chunk, DATA at the wrong
//! position, DATA for a stream never subscribed, and a frame whose tag is
//! wrong. Each is refused with a clear log line; no replica ring publishes
//! a byte of it; the good peer's stream arrives complete and in order
//! throughout; unauthenticated clients leave no peer state behind.

mod common;

// Relaxed: a stop flag and a progress counter; the results are joined through the thread handle.

use std::{
    collections::HashSet,
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use common::{check_body, ring_files, wait_until, Daemon, Tele, TestDir, Watchdog};
use shmbus::Bus;
use shmbus_bridge::{
    identity::{PublicKey, StaticKeypair},
    io::frame_reader::FrameReader,
    proto::{
        frame::{
            decode, Ack, DataHeader, Decoded, ErrorCode, Frame, FrameHeader, Hello, StreamAnnounce,
            StreamFlags, HEADER_LEN, HELLO_MAGIC, RESUME_OLDEST,
        },
        handshake::{HandshakeParams, Initiator},
        seal::{Direction, Protection},
    },
};
use shmbus_bus::{
    layout::{data_stamp, meta_word, LAYOUT_VERSION},
    RawReader, StartAt, WaitStrategy,
};

const MESSAGES: u64 = 2500;

/// A frame the test client received, reduced to what it checks.
#[derive(Debug, PartialEq)]
enum Got {
    Subscribe { stream: u32, resume: u64 },
    Error { code: ErrorCode, message: String },
    Other,
    Closed,
}

struct Client {
    sock: TcpStream,
    /// After the handshake: the session's receiving and sending directions.
    reader: Option<FrameReader>,
    send: Option<Direction>,
    stop: AtomicBool,
}

/// Reads one unsealed frame (before authentication); `None` on EOF.
fn read_raw_frame(sock: &mut TcpStream) -> Option<Vec<u8>> {
    let end = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; HEADER_LEN];
    let mut read = |buf: &mut [u8]| -> Option<()> {
        let mut got = 0;
        while got < buf.len() {
            match sock.read(&mut buf[got..]) {
                Ok(0) => return None,
                Ok(n) => got += n,
                Err(_) if Instant::now() < end => {}
                Err(_) => return None,
            }
        }
        Some(())
    };
    read(&mut buf)?;
    let h = FrameHeader::parse(buf[..HEADER_LEN].try_into().unwrap()).ok()?;
    buf.resize(HEADER_LEN + h.body_len as usize, 0);
    read(&mut buf[HEADER_LEN..])?;
    Some(buf)
}

impl Client {
    fn connect(addr: &str) -> Self {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Self {
            sock,
            reader: None,
            send: None,
            stop: AtomicBool::new(false),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        // The daemon may already have closed; later reads show it.
        let _ = self.sock.write_all(bytes);
    }

    /// Sends `f`, sealed once authenticated.
    fn send_frame(&mut self, f: &Frame<'_>) {
        let mut v = Vec::new();
        f.encode_to_vec(&mut v).unwrap();
        if let Some(keys) = self.send.as_mut() {
            keys.seal_control(&mut v, 0).unwrap();
        }
        self.send(&v);
    }

    fn next(&mut self) -> Got {
        let Some(reader) = self.reader.as_mut() else {
            return match read_raw_frame(&mut self.sock) {
                None => Got::Closed,
                Some(bytes) => classify(&bytes),
            };
        };
        loop {
            match reader.next_frame(&mut self.sock, &self.stop) {
                Ok(None) => continue,
                Ok(Some(bytes)) => return classify(bytes),
                Err(_) => return Got::Closed,
            }
        }
    }

    /// The next frame that is not a heartbeat/announce/auth noise.
    fn next_significant(&mut self) -> Got {
        loop {
            match self.next() {
                Got::Other => continue,
                g => return g,
            }
        }
    }

    /// Authenticates as `name` with `keypair` to the daemon `alpha`
    /// (allowlisted key `alpha_key`).
    fn authenticate(
        addr: &str,
        name: &str,
        keypair: &StaticKeypair,
        alpha_key: &PublicKey,
    ) -> Result<Self, String> {
        let mut c = Self::connect(addr);
        let params = HandshakeParams {
            local_name: name.into(),
            keypair: keypair.clone(),
            layout_version: LAYOUT_VERSION,
            protection: Protection::Auth,
        };
        let mut out = Vec::new();
        let init = Initiator::start(&params, "alpha", alpha_key, [9; 32], &mut out)
            .map_err(|e| e.to_string())?;
        c.send(&out);
        let reply = read_raw_frame(&mut c.sock).ok_or("closed without a reply")?;
        let Ok(Decoded::Frame { frame, .. }) = decode(&reply) else {
            return Err("undecodable reply".into());
        };
        out.clear();
        let session = init.finish(&frame, &mut out).map_err(|e| e.to_string())?;
        c.send(&out);
        c.reader = Some(FrameReader::new(Duration::from_secs(10), session.keys.recv));
        c.send = Some(session.keys.send);
        Ok(c)
    }

    /// Announces a 64 KiB stream 1 on topic `evil` and waits for SUBSCRIBE.
    fn announce_and_wait(&mut self, publisher: &str) -> (u32, u64) {
        self.send_frame(&Frame::StreamAnnounce(StreamAnnounce {
            stream: 1,
            topic: "evil",
            publisher,
            type_name: "evil::T",
            type_fingerprint: 1,
            ring_capacity: 64 << 10,
            max_message: 1024,
            flags: StreamFlags::UNTETHERED,
        }));
        match self.next_significant() {
            Got::Subscribe { stream, resume } => (stream, resume),
            g => panic!("expected SUBSCRIBE, got {g:?}"),
        }
    }

    /// Sends DATA with `payload` and expects ERROR(`code`) then close.
    fn data_refused(&mut self, stream: u32, start: u64, payload: &[u8], code: ErrorCode) -> String {
        let h = DataHeader {
            stream,
            start_position: start,
            len: payload.len() as u32,
        }
        .encode()
        .unwrap();
        let mut seal = self.send.as_mut().unwrap().begin().unwrap();
        seal.aad(&h);
        seal.aad(payload);
        let tag = seal.tag();
        self.send(&h);
        self.send(payload);
        self.send(&tag);
        match self.next_significant() {
            Got::Error { code: c, message } => {
                assert_eq!(c, code, "{message}");
                assert_eq!(self.next_significant(), Got::Closed);
                message
            }
            g => panic!("expected ERROR, got {g:?}"),
        }
    }
}

fn classify(bytes: &[u8]) -> Got {
    match decode(bytes) {
        Ok(Decoded::Frame {
            frame: Frame::Subscribe(s),
            ..
        }) => Got::Subscribe {
            stream: s.stream,
            resume: s.resume_position,
        },
        Ok(Decoded::Frame {
            frame: Frame::Error(e),
            ..
        }) => Got::Error {
            code: e.code,
            message: e.message.to_owned(),
        },
        _ => Got::Other,
    }
}

/// One record at `position` claiming `len` payload bytes, in a chunk of `chunk` bytes.
fn record(position: u64, len: u32, chunk: usize) -> Vec<u8> {
    let mut v = vec![0u8; chunk];
    v[..8].copy_from_slice(&data_stamp(position).to_le_bytes());
    v[8..16].copy_from_slice(&meta_word(len, 0).to_le_bytes());
    v
}

#[test]
fn hostile_peers_are_refused_and_the_good_peer_keeps_flowing() {
    let _watchdog = Watchdog::new("hostile", Duration::from_secs(50));
    let dir = TestDir::new("hostile");
    let names = [
        "alpha",
        "beta",
        "mallory-4",
        "mallory-5",
        "mallory-6",
        "mallory-7",
        "mallory-8",
        "mallory-9",
    ];
    let keys = dir.keys(&names);
    let (keys_a, keys_b) = (keys.args("alpha"), keys.args("beta"));
    let alpha_key = keys.keypair("alpha").public();
    let root_a = dir.join("a");
    let root_b = dir.join("b");
    let mut alpha = Daemon::start(
        "alpha",
        &dir,
        &[
            "--node-name",
            "alpha",
            "--root",
            root_a.to_str().unwrap(),
            "--bus",
            "b",
            "--listen",
            "127.0.0.1:0",
            "--import",
            "*",
            "--key-file",
            &keys_a[1],
            "--allowlist",
            &keys_a[3],
            "--heartbeat-interval-ms",
            "200",
            "--peer-timeout-ms",
            "3000",
        ],
    );
    let addr = alpha.listen_addr();
    let auth = |name: &str| Client::authenticate(&addr, name, &keys.keypair(name), &alpha_key);
    let peer = format!("alpha={addr}");
    let mut beta = Daemon::start(
        "beta",
        &dir,
        &[
            "--node-name",
            "beta",
            "--root",
            root_b.to_str().unwrap(),
            "--bus",
            "b",
            "--listen",
            "off",
            "--peer",
            &peer,
            "--export",
            "feed",
            "--key-file",
            &keys_b[1],
            "--allowlist",
            &keys_b[3],
            "--heartbeat-interval-ms",
            "200",
            "--peer-timeout-ms",
            "3000",
        ],
    );
    beta.wait_log("connected to peer alpha", Duration::from_secs(10));

    // The good stream: beta publishes, a subscriber on alpha's side reads.
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let bus_a = Bus::builder().root(&root_a).name("b").build().unwrap();
    let mut sub = bus_a
        .subscriber_with::<Tele>("feed", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let (s2, c2) = (Arc::clone(&stop), Arc::clone(&count));
    let subscriber = thread::spawn(move || {
        let mut seqs = Vec::new();
        let mut bad = 0;
        while !s2.load(Ordering::Relaxed) {
            match sub.recv_timeout(Duration::from_millis(50)) {
                Ok(m) => {
                    bad += usize::from(!check_body(&m));
                    seqs.push(m.seq.to_native());
                    c2.fetch_add(1, Ordering::Relaxed);
                }
                Err(shmbus::Error::Timeout(_)) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
        (seqs, bad)
    });
    let root_b2 = root_b.clone();
    let publisher = thread::spawn(move || {
        let bus = Bus::builder().root(&root_b2).name("b").build().unwrap();
        let mut p = bus.publisher::<Tele>("feed").unwrap();
        for seq in 0..MESSAGES {
            p.send(&Tele::new(9, seq)).unwrap();
            if seq % 10 == 9 {
                thread::sleep(Duration::from_millis(10));
            }
        }
        thread::sleep(Duration::from_millis(500));
    });

    // 1. A key that is not on the allowlist: no reply at all.
    let stranger = StaticKeypair::generate().unwrap();
    let e = Client::authenticate(&addr, "mallory-1", &stranger, &alpha_key).err();
    assert_eq!(e.as_deref(), Some("closed without a reply"));
    alpha.wait_log("handshake failed: unknown key", Duration::from_secs(10));

    // 2. Wrong protocol version.
    let mut c = Client::connect(&addr);
    c.send_frame(&Frame::Hello(Hello {
        hello_magic: HELLO_MAGIC,
        protocol_version: 99,
        layout_version: LAYOUT_VERSION,
        nonce: [7; 32],
        peer_name: "mallory-2",
    }));
    loop {
        match c.next() {
            Got::Error { code, .. } => {
                assert_eq!(code, ErrorCode::ProtocolVersion);
                break;
            }
            Got::Other => continue,
            g => panic!("expected ERROR, got {g:?}"),
        }
    }
    alpha.wait_log("protocol version 99", Duration::from_secs(10));

    // 3. Garbage.
    let mut c = Client::connect(&addr);
    c.send(b"GET / HTTP/1.1\r\nHost: alpha\r\n\r\n");
    let mut rest = Vec::new();
    let _ = c.sock.read_to_end(&mut rest);
    alpha.wait_log("bad frame magic", Duration::from_secs(10));

    // 3b. An allowlisted key claiming another node's name: no reply.
    let e = Client::authenticate(&addr, "beta", &keys.keypair("mallory-8"), &alpha_key).err();
    assert_eq!(e.as_deref(), Some("closed without a reply"));
    alpha.wait_log(
        "is allowlisted as \"mallory-8\" but the peer claims the name \"beta\"",
        Duration::from_secs(10),
    );

    // 4. Authenticated, DATA whose length is not a multiple of 16.
    let mut c = auth("mallory-4").unwrap();
    let (stream, resume) = c.announce_and_wait("m4");
    assert_eq!(resume, RESUME_OLDEST);
    let m = c.data_refused(stream, 0, &[0u8; 100], ErrorCode::Malformed);
    assert!(m.contains("not a positive multiple of 16"), "{m}");
    alpha.wait_log("not a positive multiple of 16", Duration::from_secs(10));

    // 5. Authenticated, a record that claims more bytes than its chunk.
    let mut c = auth("mallory-5").unwrap();
    let (stream, _) = c.announce_and_wait("m5");
    let m = c.data_refused(stream, 0, &record(0, 100, 64), ErrorCode::Malformed);
    assert!(m.contains("rejected, nothing published"), "{m}");
    alpha.wait_log(
        "record extends past the end of the chunk",
        Duration::from_secs(10),
    );

    // 6. Authenticated, a valid record stamped for the wrong position.
    let mut c = auth("mallory-6").unwrap();
    let (stream, _) = c.announce_and_wait("m6");
    let m = c.data_refused(stream, 0, &record(4096, 16, 32), ErrorCode::Malformed);
    assert!(m.contains("stamp does not match its position"), "{m}");

    // 7. Authenticated, DATA for a stream never announced or subscribed.
    let mut c = auth("mallory-7").unwrap();
    let m = c.data_refused(7, 0, &record(0, 16, 32), ErrorCode::UnknownStream);
    assert!(m.contains("did not subscribe to"), "{m}");
    alpha.wait_log(
        "DATA for stream 7, which this bridge did not subscribe to",
        Duration::from_secs(10),
    );

    // 8. Authenticated, then a frame with a wrong tag (as an on-path
    // injection would be): the connection is closed without an ERROR.
    // Frame 0 was the key confirmation, so the forged one is frame 1.
    let mut c = auth("mallory-9").unwrap();
    let mut forged = Vec::new();
    Frame::Ack(Ack {
        stream: 1,
        position: 16,
    })
    .encode_to_vec(&mut forged)
    .unwrap();
    forged.extend([0u8; 16]);
    c.send(&forged);
    assert_eq!(c.next_significant(), Got::Closed);
    alpha.wait_log(
        "closing the connection to mallory-9: frame 1 failed authentication",
        Duration::from_secs(10),
    );

    // The good peer was never disturbed.
    publisher.join().unwrap();
    wait_until("good stream delivered", Duration::from_secs(30), || {
        count.load(Ordering::Relaxed) >= MESSAGES as usize
    });
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (seqs, bad) = subscriber.join().unwrap();
    assert_eq!(bad, 0);
    assert_eq!(
        seqs,
        (0..MESSAGES).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    assert_eq!(
        beta.count_log("connection to peer alpha"),
        0,
        "beta's connection never dropped"
    );

    // No hostile byte was published in a replica.
    let evil = root_a.join("b").join("evil");
    for ring in ring_files(&evil) {
        let r = RawReader::open(&ring, StartAt::Oldest, false).unwrap();
        assert_eq!(
            r.tail(),
            r.start_position(),
            "{} published data",
            ring.display()
        );
    }
    let mut names = HashSet::new();
    for peer in alpha_peers(&alpha) {
        names.insert(peer);
    }
    assert!(alpha.is_running());
    assert!(alpha.terminate());
    assert!(beta.terminate());
    let bridge = &alpha.stats("bridge")[0];
    assert_eq!(bridge["handshake_failures"], "4", "{bridge:?}");
    assert_eq!(bridge["unknown_keys"], "1", "{bridge:?}");
    assert_eq!(bridge["name_mismatches"], "1", "{bridge:?}");
    assert_eq!(bridge["auth_failures"], "1", "{bridge:?}");
    for p in alpha.stats("peer") {
        let (errors, auth) = match p["name"].as_str() {
            "beta" => ("0", "0"),
            "mallory-9" => ("0", "1"),
            _ => ("1", "0"),
        };
        assert_eq!(p["protocol_errors"], errors, "{p:?}");
        assert_eq!(p["auth_failures"], auth, "{p:?}");
    }
    // Only authenticated peers have state: the stranger, the impostor and
    // the unauthenticated clients left none.
    let expected: HashSet<String> = [
        "beta",
        "mallory-4",
        "mallory-5",
        "mallory-6",
        "mallory-7",
        "mallory-9",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, expected);
}

fn alpha_peers(d: &Daemon) -> Vec<String> {
    d.stats("peer")
        .into_iter()
        .map(|p| p["name"].clone())
        .collect()
}
