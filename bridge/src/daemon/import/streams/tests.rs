//! Gaps applied to real replica rings, read back by a real reader.

use std::path::PathBuf;

use shmbus_bus::{
    layout::{data_stamp, meta_word, padding_stamp, record_size, RECORD_HEADER},
    ReadEvent, RingReader, StartAt,
};

use super::*;

const CAP: u64 = 4096;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stream(tag: &str) -> (Dir, ImportStream) {
    let root = PathBuf::from(format!(
        "/dev/shm/shmbus-test-{}-import-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&root);
    let meta = ReplicaMeta {
        type_name: String::new(),
        type_fingerprint: 0,
        capacity: CAP,
        max_message: 1024,
    };
    let key = ("t".to_owned(), "p".to_owned());
    let st = ImportStream::new(
        &key,
        root.join("b").join("t"),
        "n.p".into(),
        meta,
        Arc::default(),
    );
    (Dir(root), st)
}

/// Receives message `seq` the way the bridge does (ring bytes, with the
/// padding a source ring writes at its lap end); `false` if no room.
fn push(st: &mut ImportStream, seq: u64) -> bool {
    let w = &mut st.replica.as_mut().unwrap().writer;
    let payload = [seq as u8; 100];
    let mut pos = w.position();
    let mut bytes = Vec::new();
    let to_end = CAP - pos % CAP;
    let mut record = |stamp: u64, len: u32, body: &[u8]| {
        bytes.extend_from_slice(&stamp.to_le_bytes());
        bytes.extend_from_slice(&meta_word(len, seq).to_le_bytes());
        bytes.extend_from_slice(body);
        bytes.resize(
            bytes.len() + (record_size(u64::from(len)) as usize - 16 - body.len()),
            0,
        );
    };
    if record_size(100) > to_end {
        record(padding_stamp(pos), (to_end - RECORD_HEADER) as u32, &[]);
        pos += to_end;
    }
    record(data_stamp(pos), 100, &payload);
    let Some(mut chunk) = w.try_reserve(bytes.len() as u64).unwrap() else {
        return false;
    };
    let (header, a, b) = chunk.buffers();
    header.copy_from_slice(&bytes[..16]);
    let split = 16 + a.len();
    a.copy_from_slice(&bytes[16..split]);
    b.copy_from_slice(&bytes[split..]);
    chunk.commit().unwrap();
    true
}

/// What a reader has now (until it is empty, or its closed ring is read to
/// the end): message sequence numbers, and lost counts as `Err`.
fn read_all(r: &mut RingReader) -> Vec<Result<u64, u64>> {
    let mut seen = Vec::new();
    loop {
        match r.try_read().unwrap() {
            ReadEvent::Message(m) => seen.push(Ok(m.sequence())),
            ReadEvent::Gap { messages, .. } => seen.push(Err(messages)),
            ReadEvent::Empty | ReadEvent::Closed => return seen,
        }
    }
}

fn gap(from: u64, to: u64, next_seq: u64) -> Gap {
    Gap {
        stream: 1,
        from,
        to,
        next_seq,
    }
}

fn reader(st: &ImportStream) -> RingReader {
    RingReader::open(&st.replica.as_ref().unwrap().path, StartAt::Oldest).unwrap()
}

#[test]
fn a_first_gap_creates_a_numbered_replica_at_its_end() {
    let (_d, mut st) = stream("first");
    let out = st.apply_gap(&gap(0, 8192, 500)).unwrap();
    assert_eq!(
        out,
        GapOutcome::Applied {
            lost: None,
            room_until: 8192 + CAP,
            new_replica: true
        }
    );
    let w = &st.replica.as_ref().unwrap().writer;
    assert_eq!((w.position(), w.next_sequence()), (8192, Some(500)));
}

#[test]
fn a_gap_within_the_ring_is_told_exactly_in_the_same_replica() {
    let (_d, mut st) = stream("same");
    st.open_replica(0, Some(10)).unwrap();
    let mut r = reader(&st);
    assert!(push(&mut st, 10));
    assert!(push(&mut st, 11));
    let pos = st.replica.as_ref().unwrap().writer.position();
    assert_eq!(read_all(&mut r), [Ok(10), Ok(11)]);
    let out = st.apply_gap(&gap(pos, pos + 1024, 19)).unwrap();
    assert!(matches!(
        out,
        GapOutcome::Applied {
            lost: Some(7),
            new_replica: false,
            ..
        }
    ));
    assert!(push(&mut st, 19));
    assert_eq!(read_all(&mut r), [Err(7), Ok(19)]);
    assert_eq!(st.epoch, 0, "same replica");
}

#[test]
fn a_gap_longer_than_the_ring_counts_in_the_old_replica_and_continues_in_a_new_one() {
    let (_d, mut st) = stream("long");
    st.open_replica(0, Some(0)).unwrap();
    let mut r = reader(&st);
    assert!(push(&mut st, 0));
    let pos = st.replica.as_ref().unwrap().writer.position();
    let to = pos + 10 * CAP;
    let out = st.apply_gap(&gap(pos, to, 1000)).unwrap();
    assert!(matches!(
        out,
        GapOutcome::Applied {
            lost: Some(999),
            new_replica: true,
            ..
        }
    ));
    // The old replica's subscribers see the exact loss, then its end.
    assert_eq!(read_all(&mut r), [Ok(0), Err(999)]);
    let w = &st.replica.as_ref().unwrap().writer;
    assert_eq!((w.position(), w.next_sequence()), (to, Some(1000)));
    assert_eq!(st.epoch, 1);
}

#[test]
fn a_gap_waits_while_a_subscriber_holds_the_space() {
    let (_d, mut st) = stream("noroom");
    st.open_replica(0, Some(0)).unwrap();
    let mut r = reader(&st);
    let mut seq = 0;
    while push(&mut st, seq) {
        seq += 1;
    }
    let pos = st.replica.as_ref().unwrap().writer.position();
    assert_eq!(
        st.apply_gap(&gap(pos, pos + 512, seq + 3)).unwrap(),
        GapOutcome::NoRoom
    );
    // Longer than the ring: the count needs a gap record, with no room.
    assert_eq!(
        st.apply_gap(&gap(pos, pos + 2 * CAP, seq + 3)).unwrap(),
        GapOutcome::NoRoomForCount
    );
    assert_eq!(st.epoch, 0, "nothing changed");
    assert_eq!(read_all(&mut r).len(), seq as usize);
    assert!(matches!(
        st.apply_gap(&gap(pos, pos + 512, seq + 3)).unwrap(),
        GapOutcome::Applied { lost: Some(3), .. }
    ));
    assert_eq!(read_all(&mut r), [Err(3)]);
}

#[test]
fn a_gap_whose_sequence_number_goes_back_is_refused() {
    let (_d, mut st) = stream("back");
    st.open_replica(0, Some(50)).unwrap();
    assert!(push(&mut st, 50));
    let pos = st.replica.as_ref().unwrap().writer.position();
    assert!(matches!(
        st.apply_gap(&gap(pos, pos + 256, 40)),
        Err(GapError::Refused(_))
    ));
    assert_eq!(st.replica.as_ref().unwrap().writer.position(), pos);
}

#[test]
fn finish_records_where_the_stream_ended() {
    let (_d, mut st) = stream("end");
    st.open_replica(0, Some(7)).unwrap();
    assert!(push(&mut st, 7));
    let pos = st.replica.as_ref().unwrap().writer.position();
    st.finish(pos);
    assert!(st.replica.is_none());
    assert_eq!(st.ended, Some(pos));
    assert_eq!(
        replica::ended(&st.dir, &st.stem),
        replica::Ended::At(replica::Mark {
            position: pos,
            next_seq: Some(8),
            next_epoch: 1
        })
    );
}

#[test]
fn a_withdrawn_stream_closes_its_replica_and_resumes_where_it_stopped() {
    let (_d, mut st) = stream("withdraw");
    st.open_replica(0, Some(10)).unwrap();
    let mut r = reader(&st);
    assert!(push(&mut st, 10));
    assert!(push(&mut st, 11));
    let pos = st.replica.as_ref().unwrap().writer.position();
    let (dir, stem) = (st.dir.clone(), st.stem.clone());
    st.withdraw();
    // The local subscriber drains the replica and sees its publisher gone.
    assert_eq!(read_all(&mut r), [Ok(10), Ok(11)]);
    assert!(matches!(r.try_read().unwrap(), ReadEvent::Closed));
    drop(r);
    // Not ended: a later import resumes after message 11, in a new epoch.
    assert_eq!(replica::ended(&dir, &stem), replica::Ended::No);
    let point = replica::find_previous(&dir, &stem).unwrap().unwrap();
    assert_eq!(
        (point.position, point.next_seq, point.next_epoch),
        (pos, Some(12), 1)
    );
}
