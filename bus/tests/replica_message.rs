//! `ReplicaWriter::try_write_message`: a replica fed message by message
//! (the Zenoh gateway's import) numbers each message as its source did and
//! reports the numbers it skips as exact losses, once.

use std::path::PathBuf;

use shmbus_bus::{Error, ReadEvent, ReplicaWriter, RingConfig, RingReader, StartAt};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/dev/shm/shmbus-test-{}-replica-msg-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn ring(&self) -> PathBuf {
        self.0.join("r.ring")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config() -> RingConfig {
    RingConfig {
        capacity: 4096,
        max_message: 1024,
        slots: 4,
        ..RingConfig::default()
    }
}

/// Everything readable now: messages as (seq, payload), gaps as counts.
#[derive(Debug, PartialEq)]
enum Seen {
    Msg(u64, Vec<u8>),
    Lost(u64),
}

fn read_all(r: &mut RingReader) -> Vec<Seen> {
    let mut seen = Vec::new();
    loop {
        match r.try_read().unwrap() {
            ReadEvent::Message(m) => seen.push(Seen::Msg(m.sequence(), m.payload().to_vec())),
            ReadEvent::Gap { messages, .. } => seen.push(Seen::Lost(messages)),
            ReadEvent::Empty => return seen,
            ReadEvent::Closed => panic!("the replica is open"),
        }
    }
}

#[test]
fn skipped_numbers_are_reported_lost_exactly_across_many_laps() {
    let dir = TempDir::new("laps");
    let mut rep = ReplicaWriter::create_numbered(&dir.ring(), &config(), 0, 100).unwrap();
    let mut r = RingReader::open(&dir.ring(), StartAt::Oldest).unwrap();
    let mut want = Vec::new();
    let mut got = Vec::new();
    let mut seq = 100u64;
    for i in 0..2000u64 {
        // Every seventh message skips i % 5 numbers; sizes vary so records
        // meet the ring's end at every offset.
        if i % 7 == 0 && i % 5 != 0 {
            want.push(Seen::Lost(i % 5));
            seq += i % 5;
        }
        let payload = vec![i as u8; (i * 37 % 300) as usize];
        while !rep.try_write_message(seq, &payload).unwrap() {
            got.extend(read_all(&mut r));
        }
        want.push(Seen::Msg(seq, payload));
        seq += 1;
    }
    got.extend(read_all(&mut r));
    assert_eq!(got, want);
    assert_eq!(rep.next_sequence(), Some(seq));
}

#[test]
fn a_gap_written_before_a_full_ring_is_not_counted_twice() {
    let dir = TempDir::new("full");
    let mut rep = ReplicaWriter::create_numbered(&dir.ring(), &config(), 0, 0).unwrap();
    let mut r = RingReader::open(&dir.ring(), StartAt::Oldest).unwrap();
    // Fill the ring (the reader holds it) until a message does not fit.
    let mut seq = 0;
    while rep.try_write_message(seq, &[1; 1000]).unwrap() {
        seq += 1;
    }
    // Skip 5 numbers: the gap record (32 bytes) may fit while the message
    // does not; asking again must not add another 5.
    let mut tries = 0;
    while !rep.try_write_message(seq + 5, &[2; 1000]).unwrap() {
        tries += 1;
        if tries > 1 {
            let seen = read_all(&mut r);
            assert!(!seen.is_empty(), "the reader frees room");
        }
    }
    let seen: Vec<Seen> = read_all(&mut r);
    let lost: u64 = seen
        .iter()
        .map(|s| match s {
            Seen::Lost(n) => *n,
            Seen::Msg(..) => 0,
        })
        .sum();
    assert_eq!(lost, 5, "{seen:?}");
    assert_eq!(seen.last(), Some(&Seen::Msg(seq + 5, vec![2; 1000])));
}

#[test]
fn refusals_name_the_reason_and_write_nothing() {
    let dir = TempDir::new("refuse");
    let mut rep = ReplicaWriter::create_numbered(&dir.ring(), &config(), 0, 10).unwrap();
    let mut r = RingReader::open(&dir.ring(), StartAt::Oldest).unwrap();
    assert!(rep.try_write_message(10, b"a").unwrap());
    match rep.try_write_message(10, b"again") {
        Err(Error::InvalidConfig(why)) => assert!(why.contains("below"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        rep.try_write_message(11, &[0; 1025]),
        Err(Error::TooLarge {
            len: 1025,
            max: 1024
        })
    ));
    assert!(matches!(
        rep.try_write_message(u64::MAX, b"x"),
        Err(Error::InvalidConfig(_))
    ));
    assert_eq!(read_all(&mut r), [Seen::Msg(10, b"a".to_vec())]);
}

#[test]
fn an_unnumbered_replica_takes_the_first_message_number_without_loss() {
    let dir = TempDir::new("unnumbered");
    let mut rep = ReplicaWriter::create(&dir.ring(), &config(), 0).unwrap();
    let mut r = RingReader::open(&dir.ring(), StartAt::Oldest).unwrap();
    assert!(rep.try_write_message(5000, b"first").unwrap());
    assert!(rep.try_write_message(5001, b"second").unwrap());
    assert_eq!(
        read_all(&mut r),
        [
            Seen::Msg(5000, b"first".to_vec()),
            Seen::Msg(5001, b"second".to_vec())
        ]
    );
}
