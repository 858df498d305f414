//! The receiving bridge against a scripted sender: the SUBSCRIBE's window
//! is the replica's room, no CREDIT comes while a local subscriber holds
//! the replica, a CREDIT follows as soon as it reads (no frame needed to
//! wake the receiver), and DATA past the newest limit is refused with an
//! ERROR.
//!
//! The peer speaks the protocol with its own allowlisted key over a real
//! socket; the bridge and the local subscriber are real.

mod common;

use std::time::{Duration, Instant};

use common::{
    fake_peer::{FakePeer, Got},
    Daemon, Tele, TestDir, Watchdog,
};
use shmbus::{fingerprint, rkyv, type_name, Bus};
use shmbus_bridge::proto::frame::{
    DataHeader, ErrorCode, Frame, StreamAnnounce, StreamFlags, RESUME_OLDEST,
};
use shmbus_bus::{
    layout::{data_stamp, meta_word, padding_stamp, record_size, RECORD_HEADER},
    StartAt, WaitStrategy,
};

const CAP: u64 = 64 << 10;
const STREAM: u32 = 1;

/// Ring bytes of messages as a source ring of `CAP` bytes holds them from
/// `*pos` on (message `*seq` first), whole records up to about `max` bytes;
/// a padding record where a message would cross the ring's end.
fn records(pos: &mut u64, seq: &mut u64, max: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let msg = rkyv::to_bytes::<rkyv::rancor::Error>(&Tele::new(0, *seq)).unwrap();
        let len = msg.len() as u64;
        let to_end = CAP - *pos % CAP;
        let pad = if record_size(len) > to_end { to_end } else { 0 };
        if out.len() as u64 + pad + record_size(len) > max {
            return out;
        }
        if pad > 0 {
            out.extend_from_slice(&padding_stamp(*pos).to_le_bytes());
            out.extend_from_slice(&meta_word((pad - RECORD_HEADER) as u32, *seq).to_le_bytes());
            out.resize(out.len() + (pad - RECORD_HEADER) as usize, 0);
            *pos += pad;
        }
        out.extend_from_slice(&data_stamp(*pos).to_le_bytes());
        out.extend_from_slice(&meta_word(len as u32, *seq).to_le_bytes());
        out.extend_from_slice(&msg);
        out.resize(
            out.len() + (record_size(len) - RECORD_HEADER - len) as usize,
            0,
        );
        *pos += record_size(len);
        *seq += 1;
    }
}

/// Sends ring bytes from `*pos` up to `limit` (at most half the ring per
/// DATA frame), stopping before the first record that would cross it.
fn send_up_to(peer: &mut FakePeer, pos: &mut u64, seq: &mut u64, limit: u64) {
    loop {
        let start = *pos;
        let room = (limit - start).min(CAP / 2);
        let bytes = records(pos, seq, room);
        if bytes.is_empty() {
            return;
        }
        let h = DataHeader {
            stream: STREAM,
            start_position: start,
            len: bytes.len() as u32,
        };
        peer.send_data(&h, &bytes);
    }
}

#[test]
fn credit_follows_the_replica_room_and_data_past_it_is_refused() {
    let _watchdog = Watchdog::new("recv_peer", Duration::from_secs(100));
    let dir = TestDir::new("recv-peer");
    let keys = dir.keys(&["receiver", "peer"]);
    let keys_r = keys.args("receiver");
    let root = dir.join("r");
    let mut args = vec![
        "--node-name",
        "receiver",
        "--root",
        root.to_str().unwrap(),
        "--bus",
        "b",
        "--listen",
        "127.0.0.1:0",
        "--import",
        "t",
        "--heartbeat-interval-ms",
        "200",
        "--peer-timeout-ms",
        "20000",
    ];
    args.extend(keys_r.iter().map(String::as_str));
    let receiver = Daemon::start("receiver", &dir, &args);
    let addr = receiver.listen_addr();

    // A local subscriber that exists before the replica: joined from its
    // first record, it holds the replica until it reads.
    let bus = Bus::builder().root(&root).name("b").build().unwrap();
    let mut sub = bus
        .subscriber_with::<Tele>("t", StartAt::Oldest, WaitStrategy::default())
        .unwrap();

    let mut peer = FakePeer::connect(
        &addr,
        "peer",
        &keys.keypair("peer"),
        "receiver",
        &keys.keypair("receiver").public(),
    );
    peer.send_frame(&Frame::StreamAnnounce(StreamAnnounce {
        stream: STREAM,
        topic: "t",
        publisher: "p-1",
        type_name: &type_name::<Tele>(),
        type_fingerprint: fingerprint::<Tele>(),
        ring_capacity: CAP,
        max_message: 1024,
        flags: StreamFlags::empty(),
    }));
    let Got::Subscribe(s) = peer.wait_for(
        "SUBSCRIBE",
        Duration::from_secs(20),
        |_| {},
        |g| matches!(g, Got::Subscribe(_)),
    ) else {
        unreachable!()
    };
    assert_eq!(
        (s.stream, s.resume_position, s.window),
        (STREAM, RESUME_OLDEST, CAP),
        "a new replica's whole ring is the window"
    );

    // Fill the window: the subscriber reads nothing, so no CREDIT.
    let (mut pos, mut seq) = (0u64, 0u64);
    send_up_to(&mut peer, &mut pos, &mut seq, CAP);
    assert!(pos > CAP - 1024, "the window was filled (to {pos})");
    let mut credits = Vec::new();
    peer.wait_for(
        "the ACK of everything sent",
        Duration::from_secs(20),
        |g| {
            if let Got::Credit(c) = g {
                credits.push(c.limit);
            }
        },
        |g| matches!(g, Got::Ack(a) if a.position == pos),
    );
    // Frames queued after the ACK would arrive within this wait.
    let quiet_end = Instant::now() + Duration::from_millis(500);
    while let Some(left) = quiet_end.checked_duration_since(Instant::now()) {
        if let Some(Got::Credit(c)) = peer.next(left) {
            credits.push(c.limit);
        }
    }
    assert!(
        credits.is_empty(),
        "CREDIT while the subscriber holds the replica: {credits:?}"
    );

    // The subscriber reads everything, then waits on the empty replica (a
    // subscriber releases what it read before it waits): credit follows
    // without any frame from the peer.
    let sent = seq;
    for want in 0..sent {
        let m = sub.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(m.seq.to_native(), want);
    }
    assert!(matches!(
        sub.recv_timeout(Duration::from_millis(100)),
        Err(shmbus::Error::Timeout(_))
    ));
    let Got::Credit(c) = peer.wait_for(
        "CREDIT after the subscriber read",
        Duration::from_secs(20),
        |_| {},
        |g| matches!(g, Got::Credit(_)),
    ) else {
        unreachable!()
    };
    assert!(
        c.limit > CAP && c.limit <= pos + CAP,
        "limit {} within the replica's room",
        c.limit
    );
    // Up to the limit is accepted.
    send_up_to(&mut peer, &mut pos, &mut seq, c.limit);
    peer.wait_for(
        "the ACK of the data up to the limit",
        Duration::from_secs(20),
        |_| {},
        |g| matches!(g, Got::Ack(a) if a.position == pos),
    );
    // The subscriber holds again (it stopped reading): a frame past the
    // newest limit is a protocol violation.
    let mut newest = c.limit;
    let quiet_end = Instant::now() + Duration::from_millis(300);
    while let Some(left) = quiet_end.checked_duration_since(Instant::now()) {
        if let Some(Got::Credit(c)) = peer.next(left) {
            newest = newest.max(c.limit);
        }
    }
    let start = pos;
    let bytes = records(&mut pos, &mut seq, CAP / 2);
    let end = start + bytes.len() as u64;
    assert!(end > newest, "the frame ends past the limit");
    peer.send_data(
        &DataHeader {
            stream: STREAM,
            start_position: start,
            len: bytes.len() as u32,
        },
        &bytes,
    );
    let Got::Error { code, message } = peer.wait_for(
        "ERROR for DATA past the credit",
        Duration::from_secs(20),
        |_| {},
        |g| matches!(g, Got::Error { .. }),
    ) else {
        unreachable!()
    };
    assert_eq!(code, ErrorCode::UnexpectedFrame, "{message}");
    assert!(message.contains("past the credit limit"), "{message}");
    drop(receiver);
}
