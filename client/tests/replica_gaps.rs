//! Gaps of a bridged stream reach typed subscribers as `TopicEvent::Lost`
//! with the exact count, in the same replica ring (issue 11). The bridge's
//! path without the network: a `RawReader` on a real publisher's ring hands
//! chunks to a `ReplicaWriter` in another topic; what the "link" drops is
//! skipped in the replica with `try_skip_to`, at the source's positions.

mod common;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use common::TempRoot;
use shmbus::TopicEvent;
use shmbus_bus::{RawChunk, RawReader, ReplicaWriter, RingConfig, Skip, StartAt};

/// What the subscriber of the replica's topic saw, in order.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Msg { seq: u64, value: u64 },
    Lost(u64),
}

/// The next chunk of the source after `pos` (it must have one).
fn chunk(raw: &RawReader, pos: u64) -> (u64, u64, u64) {
    match raw.next_chunk(pos, 1 << 16).unwrap() {
        RawChunk::Records {
            start,
            end,
            first_seq,
            ..
        } => (start, end, first_seq),
        other => panic!("{other:?}"),
    }
}

/// Copies the source's `start..end` into the replica (room is promised).
fn forward(raw: &RawReader, replica: &mut ReplicaWriter, start: u64, end: u64) {
    assert!(replica.room_until() >= end, "a fresh replica has room");
    // SAFETY: the range came from next_chunk and is not released yet.
    let (a, b) = unsafe { raw.slices(start, end) };
    let bytes: Vec<u8> = a.iter().chain(b).copied().collect();
    let mut chunk = replica
        .try_reserve(end - start)
        .unwrap()
        .expect("promised room");
    let (header, x, y) = chunk.buffers();
    header.copy_from_slice(&bytes[..16]);
    x.copy_from_slice(&bytes[16..16 + x.len()]);
    y.copy_from_slice(&bytes[16 + x.len()..]);
    chunk.commit().unwrap();
}

fn replica_config(raw: &RawReader) -> RingConfig {
    let info = raw.info();
    RingConfig {
        capacity: info.capacity,
        max_message: info.max_message,
        type_name: info.type_name.clone(),
        type_fingerprint: info.type_fingerprint,
        ..RingConfig::default()
    }
}

/// Receives until `want` messages arrived (generous deadline), recording
/// the losses reported before each.
fn receive(sub: &mut shmbus::Subscriber<u64>, want: usize) -> Vec<Seen> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut messages = 0;
    while messages < want {
        assert!(Instant::now() < deadline, "only {seen:?}");
        let got = match sub.recv_timeout(Duration::from_millis(200)) {
            Ok(sample) => Some((sample.sequence(), sample.to_native())),
            Err(shmbus::Error::Timeout(_)) => None,
            Err(e) => panic!("{e}"),
        };
        for event in sub.take_events() {
            if let TopicEvent::Lost {
                messages, bytes, ..
            } = event
            {
                assert_eq!(bytes, 0, "a replica's subscriber is never lapped");
                seen.push(Seen::Lost(messages));
            }
        }
        if let Some((seq, value)) = got {
            seen.push(Seen::Msg { seq, value });
            messages += 1;
        }
    }
    seen
}

fn msgs(range: std::ops::Range<u64>) -> impl Iterator<Item = Seen> {
    range.map(|i| Seen::Msg { seq: i, value: i })
}

#[test]
fn gaps_of_a_bridged_stream_reach_subscribers_as_exact_losses() {
    let root = TempRoot::new("replica-gaps");
    let bus = root.bus();
    let mut publisher = bus.publisher::<u64>("src").unwrap();
    let mut sub = bus.subscriber::<u64>("dst").unwrap();
    let src = bus
        .topic_dir("src")
        .unwrap()
        .join(format!("{}.ring", publisher.id()));
    let mut raw = RawReader::open(&src, StartAt::Oldest, true).unwrap();
    let dst: &Path = &bus.topic_dir("dst").unwrap().join("remote-1.ring");
    let mut replica = ReplicaWriter::create_numbered(
        dst,
        &replica_config(&raw),
        raw.start_position(),
        raw.next_sequence(),
    )
    .unwrap();

    // 0..5 arrive.
    for i in 0..5u64 {
        publisher.send(&i).unwrap();
    }
    let (start, end, first_seq) = chunk(&raw, raw.start_position());
    assert_eq!(first_seq, 0);
    forward(&raw, &mut replica, start, end);
    raw.release_to(end);
    // 5..12 are lost on the way (an untethered export lapped): the sender
    // says GAP(end, next start, 12).
    for i in 5..12u64 {
        publisher.send(&i).unwrap();
    }
    let (_, lost_end, lost_first) = chunk(&raw, end);
    assert_eq!(lost_first, 5);
    raw.release_to(lost_end);
    for i in 12..15u64 {
        publisher.send(&i).unwrap();
    }
    let (start, end, first_seq) = chunk(&raw, lost_end);
    assert_eq!((start, first_seq), (lost_end, 12));
    assert_eq!(
        replica.try_skip_to(start, first_seq).unwrap(),
        Skip::Done { lost: 7 }
    );
    forward(&raw, &mut replica, start, end);
    raw.release_to(end);
    // 15..20 are lost and nothing follows yet: GAP(end, tail, next number).
    for i in 15..20u64 {
        publisher.send(&i).unwrap();
    }
    let tail = raw.tail();
    raw.release_to(tail);
    assert_eq!(raw.next_sequence(), 20);
    assert_eq!(
        replica.try_skip_to(tail, raw.next_sequence()).unwrap(),
        Skip::Done { lost: 5 }
    );
    publisher.send(&20).unwrap();
    let (start, end, first_seq) = chunk(&raw, tail);
    assert_eq!(first_seq, 20);
    forward(&raw, &mut replica, start, end);

    let expected: Vec<Seen> = msgs(0..5)
        .chain([Seen::Lost(7)])
        .chain(msgs(12..15))
        .chain([Seen::Lost(5)])
        .chain(msgs(20..21))
        .collect();
    assert_eq!(receive(&mut sub, 9), expected);
    assert_eq!(sub.lost_messages(), 12);
}
