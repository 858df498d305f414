//! A replica writer skipping a source gap in the same ring
//! (`ReplicaWriter::try_skip_to`), its non-blocking calls and room promise,
//! and what readers of the replica see: exact loss counts, silent fillers,
//! the right sequence numbers (issue 11).

use std::{
    fs::{self, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use shmbus_bus::{
    layout::{
        data_stamp, gap_stamp, meta_word, padding_stamp, record_size, DATA_OFFSET, RECORD_HEADER,
    },
    Error, Observed, RawChunk, RawReader, ReadEvent, ReplicaWriter, RingConfig, RingObserver,
    RingReader, Skip, StartAt,
};

const CAP: u64 = 4096;

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/dev/shm/shmbus-test-{}-skip-{tag}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn ring(&self) -> PathBuf {
        self.0.join("r.ring")
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn config() -> RingConfig {
    RingConfig {
        capacity: CAP,
        max_message: 1024,
        slots: 4,
        ..RingConfig::default()
    }
}

/// The ring bytes of one record at `pos` as a source ring holds them.
fn record_bytes(stamp: u64, len: u32, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&stamp.to_le_bytes());
    bytes.extend_from_slice(&meta_word(len, seq).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes.resize(record_size(u64::from(len)) as usize, 0);
    bytes
}

/// Receives one message numbered `seq` into the replica the way the bridge
/// does (a chunk of ring bytes, with the padding record a source ring
/// would have written before it at the lap's end). Returns `false`, having
/// written nothing, when the replica has no room now.
fn push(rep: &mut ReplicaWriter, payload: &[u8], seq: u64) -> bool {
    let mut pos = rep.position();
    let mut bytes = Vec::new();
    let to_end = CAP - pos % CAP;
    let len = payload.len() as u64;
    if record_size(len) > to_end {
        let pad = (to_end - RECORD_HEADER) as u32;
        bytes.extend(record_bytes(padding_stamp(pos), pad, seq, &[]));
        pos += to_end;
    }
    bytes.extend(record_bytes(data_stamp(pos), len as u32, seq, payload));
    commit_bytes(rep, &bytes).expect("a valid chunk")
}

/// Puts `bytes` (whole records) at the replica's position without waiting.
fn commit_bytes(rep: &mut ReplicaWriter, bytes: &[u8]) -> Result<bool, Error> {
    let Some(mut chunk) = rep.try_reserve(bytes.len() as u64)? else {
        return Ok(false);
    };
    let (header, a, b) = chunk.buffers();
    header.copy_from_slice(&bytes[..16]);
    let split = 16 + a.len();
    a.copy_from_slice(&bytes[16..split]);
    b.copy_from_slice(&bytes[split..]);
    chunk.commit()?;
    Ok(true)
}

/// What a reader reports, in a comparable form.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Msg(u64, Vec<u8>),
    Lost(u64),
}

/// Everything the reader has now, until `Empty`.
fn read_all(r: &mut RingReader) -> Vec<Seen> {
    let mut seen = Vec::new();
    loop {
        match r.try_read().expect("no fault") {
            ReadEvent::Message(m) => seen.push(Seen::Msg(m.sequence(), m.payload().to_vec())),
            ReadEvent::Gap { messages, bytes } => {
                assert_eq!(bytes, 0, "a replica's reader is never lapped");
                seen.push(Seen::Lost(messages));
            }
            ReadEvent::Empty => return seen,
            other => panic!("{other:?}"),
        }
    }
}

fn open_pair(dir: &TempDir, start: u64, seq: u64) -> (ReplicaWriter, RingReader) {
    let rep = ReplicaWriter::create_numbered(&dir.ring(), &config(), start, seq).unwrap();
    let r = RingReader::open(&dir.ring(), StartAt::Oldest).unwrap();
    (rep, r)
}

#[test]
fn a_skip_within_a_lap_reports_exactly_the_count() {
    let dir = TempDir::new("lap");
    let (mut rep, mut r) = open_pair(&dir, 0, 10);
    assert!(push(&mut rep, b"ten", 10));
    assert_eq!(rep.next_sequence(), Some(11));
    let to = rep.position() + 256;
    assert_eq!(rep.try_skip_to(to, 15).unwrap(), Skip::Done { lost: 4 });
    assert_eq!((rep.position(), rep.next_sequence()), (to, Some(15)));
    assert!(push(&mut rep, b"fifteen", 15));
    assert_eq!(
        read_all(&mut r),
        [
            Seen::Msg(10, b"ten".to_vec()),
            Seen::Lost(4),
            Seen::Msg(15, b"fifteen".to_vec())
        ]
    );
}

#[test]
fn a_skip_across_the_lap_end_with_a_16_byte_padding_piece() {
    let dir = TempDir::new("pad");
    // One 32-byte record leaves 16 bytes to the lap's end.
    let (mut rep, mut r) = open_pair(&dir, 2 * CAP - 48, 7);
    assert!(push(&mut rep, &[1; 16], 7));
    assert_eq!(rep.position(), 2 * CAP - 16);
    // 16 bytes of padding, then 64 bytes from the lap's start carry the count.
    assert_eq!(
        rep.try_skip_to(2 * CAP + 64, 10).unwrap(),
        Skip::Done { lost: 2 }
    );
    // The pieces: padding (carrying the first lost number), then the count.
    let pad = 2 * CAP - 16;
    assert_eq!(
        header_at(&dir.ring(), pad),
        (padding_stamp(pad), meta_word(0, 8), 0)
    );
    assert_eq!(
        header_at(&dir.ring(), 2 * CAP),
        (gap_stamp(2 * CAP), meta_word(48, 8), 2)
    );
    assert!(push(&mut rep, &[2; 16], 10));
    assert_eq!(
        read_all(&mut r),
        [
            Seen::Msg(7, vec![1; 16]),
            Seen::Lost(2),
            Seen::Msg(10, vec![2; 16])
        ]
    );
}

#[test]
fn a_skip_across_the_lap_end_with_a_16_byte_filler_piece() {
    let dir = TempDir::new("fill");
    let (mut rep, mut r) = open_pair(&dir, 2 * CAP - 96, 0);
    assert!(push(&mut rep, &[1; 16], 0));
    assert_eq!(rep.position(), 2 * CAP - 64);
    // 64 bytes to the lap's end carry the count, 16 bytes after it are a
    // filler with count 0.
    assert_eq!(
        rep.try_skip_to(2 * CAP + 16, 1000).unwrap(),
        Skip::Done { lost: 999 }
    );
    let (stamp, meta, count) = header_at(&dir.ring(), 2 * CAP - 64);
    assert_eq!(
        (stamp, meta, count),
        (gap_stamp(2 * CAP - 64), meta_word(48, 1), 999)
    );
    // The filler: 16 bytes, no count, the next number.
    let (stamp, meta, _) = header_at(&dir.ring(), 2 * CAP);
    assert_eq!((stamp, meta), (gap_stamp(2 * CAP), meta_word(0, 1000)));
    assert!(push(&mut rep, &[2; 16], 1000));
    assert_eq!(
        read_all(&mut r),
        [
            Seen::Msg(0, vec![1; 16]),
            Seen::Lost(999),
            Seen::Msg(1000, vec![2; 16])
        ]
    );
}

#[test]
fn a_skip_without_loss_is_silent_whatever_its_pieces() {
    let dir = TempDir::new("silent");
    let (mut rep, mut r) = open_pair(&dir, CAP - 48, 3);
    let mut seq = 3;
    let mut expected = Vec::new();
    // Padding + filler (16 + 16), one filler of 16, a long filler, a
    // filler to the lap's end (padding) and one across it.
    for step in [32, 16, 16, 400, 0, 2000, 3008] {
        assert!(push(&mut rep, &[seq as u8; 16], seq));
        expected.push(Seen::Msg(seq, vec![seq as u8; 16]));
        seq += 1;
        let to = match step {
            0 => rep.position().next_multiple_of(CAP),
            s => rep.position() + s,
        };
        assert_eq!(rep.try_skip_to(to, seq).unwrap(), Skip::Done { lost: 0 });
        assert_eq!(rep.position(), to);
        assert_eq!(read_all(&mut r), std::mem::take(&mut expected));
    }
    assert!(push(&mut rep, b"last", seq));
    assert_eq!(read_all(&mut r), [Seen::Msg(seq, b"last".to_vec())]);
}

#[test]
fn a_skip_exactly_to_a_lap_start() {
    let dir = TempDir::new("start");
    let (mut rep, mut r) = open_pair(&dir, 3 * CAP - 160, 50);
    assert!(push(&mut rep, &[5; 16], 50));
    assert_eq!(
        rep.try_skip_to(3 * CAP, 53).unwrap(),
        Skip::Done { lost: 2 }
    );
    assert_eq!(rep.position(), 3 * CAP);
    assert!(push(&mut rep, &[6; 16], 53));
    assert_eq!(
        read_all(&mut r),
        [
            Seen::Msg(50, vec![5; 16]),
            Seen::Lost(2),
            Seen::Msg(53, vec![6; 16])
        ]
    );
    // 16 bytes to the lap's start: padding, which cannot carry a count.
    let dir = TempDir::new("start16");
    let (mut rep, mut r) = open_pair(&dir, CAP - 48, 0);
    assert!(push(&mut rep, &[1; 16], 0));
    assert_eq!(rep.try_skip_to(CAP, 2).unwrap(), Skip::Unrepresentable);
    assert_eq!(rep.try_skip_to(CAP, 1).unwrap(), Skip::Done { lost: 0 });
    assert!(push(&mut rep, &[2; 16], 1));
    assert_eq!(
        read_all(&mut r),
        [Seen::Msg(0, vec![1; 16]), Seen::Msg(1, vec![2; 16])]
    );
}

#[test]
fn unrepresentable_skips_and_bad_arguments_write_nothing() {
    let dir = TempDir::new("unrep");
    let (mut rep, mut r) = open_pair(&dir, CAP - 48, 20);
    assert!(push(&mut rep, &[1; 16], 20));
    let pos = rep.position();
    assert_eq!(pos, CAP - 16);
    // Longer than the ring.
    assert_eq!(
        rep.try_skip_to(pos + CAP + 16, 21).unwrap(),
        Skip::Unrepresentable
    );
    // A count and no piece of 32 bytes: 16 of padding, 16 after the lap end.
    assert_eq!(
        rep.try_skip_to(pos + 32, 22).unwrap(),
        Skip::Unrepresentable
    );
    // A count and no bytes at all.
    assert_eq!(rep.try_skip_to(pos, 22).unwrap(), Skip::Unrepresentable);
    // The caller's mistakes.
    for (to, next) in [
        (pos - 16, 21),
        (pos + 8, 21),
        (pos + 64, 19),
        (pos + 64, u64::MAX),
    ] {
        match rep.try_skip_to(to, next) {
            Err(Error::InvalidConfig(what)) => assert!(what.contains("cannot skip"), "{what}"),
            other => panic!("skip to {to} with {next}: {other:?}"),
        }
    }
    assert_eq!((rep.position(), rep.next_sequence()), (pos, Some(21)));
    // The fallback for a count nothing can carry: a plain gap record.
    assert!(rep.try_write_gap(1).unwrap());
    assert_eq!(rep.next_sequence(), Some(22));
    assert!(push(&mut rep, b"go on", 22));
    assert_eq!(
        read_all(&mut r),
        [
            Seen::Msg(20, vec![1; 16]),
            Seen::Lost(1),
            Seen::Msg(22, b"go on".to_vec())
        ]
    );
    // A gap count that would run the numbering out is refused.
    assert!(matches!(
        rep.try_write_gap(u64::MAX - 22),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn a_whole_ring_skip_fits_a_ring_whose_subscribers_caught_up() {
    let dir = TempDir::new("whole");
    let (mut rep, mut r) = open_pair(&dir, 0, 0);
    assert!(push(&mut rep, &[1; 16], 0));
    assert_eq!(read_all(&mut r), [Seen::Msg(0, vec![1; 16])]);
    let pos = rep.position();
    assert_eq!(rep.room_until(), pos + CAP);
    assert_eq!(
        rep.try_skip_to(pos + CAP, 9).unwrap(),
        Skip::Done { lost: 8 }
    );
    assert_eq!(read_all(&mut r), [Seen::Lost(8)]);
    assert!(push(&mut rep, &[2; 16], 9));
    assert_eq!(read_all(&mut r), [Seen::Msg(9, vec![2; 16])]);
}

#[test]
fn no_room_while_a_subscriber_holds_the_space_then_done() {
    let dir = TempDir::new("noroom");
    let (mut rep, mut r) = open_pair(&dir, 0, 0);
    let mut seq = 0;
    while push(&mut rep, &[7; 100], seq) {
        seq += 1;
    }
    let pos = rep.position();
    let room = rep.room_until();
    assert!(room < pos + 256, "the subscriber holds the ring: {room}");
    assert_eq!(rep.try_skip_to(pos + 256, seq + 3).unwrap(), Skip::NoRoom);
    assert!(!rep.try_write_gap(1).unwrap());
    assert!(rep.try_reserve(128).unwrap().is_none());
    assert_eq!((rep.position(), rep.next_sequence()), (pos, Some(seq)));
    // The subscriber reads everything and releases it.
    assert_eq!(read_all(&mut r).len(), seq as usize);
    assert!(rep.room_until() >= pos + 256);
    assert_eq!(
        rep.try_skip_to(pos + 256, seq + 3).unwrap(),
        Skip::Done { lost: 3 }
    );
    assert!(push(&mut rep, b"after", seq + 3));
    assert_eq!(
        read_all(&mut r),
        [Seen::Lost(3), Seen::Msg(seq + 3, b"after".to_vec())]
    );
}

#[test]
fn a_replica_of_unknown_numbering_learns_it_from_a_skip() {
    let dir = TempDir::new("unknown");
    let mut rep = ReplicaWriter::create(&dir.ring(), &config(), 512).unwrap();
    let mut r = RingReader::open(&dir.ring(), StartAt::Oldest).unwrap();
    assert_eq!(rep.next_sequence(), None);
    // Lost 0: nothing is known to be lost.
    let big = (1 << 40) + 7;
    assert_eq!(
        rep.try_skip_to(512 + 96, big).unwrap(),
        Skip::Done { lost: 0 }
    );
    assert_eq!(rep.next_sequence(), Some(big));
    assert!(push(&mut rep, b"x", big));
    assert_eq!(read_all(&mut r), [Seen::Msg(big, b"x".to_vec())]);

    // A skip that writes nothing sets the numbering too.
    let dir = TempDir::new("unknown0");
    let mut rep = ReplicaWriter::create(&dir.ring(), &config(), 0).unwrap();
    let mut r = RingReader::open(&dir.ring(), StartAt::Oldest).unwrap();
    assert_eq!(rep.try_skip_to(0, 77).unwrap(), Skip::Done { lost: 0 });
    assert_eq!(rep.next_sequence(), Some(77));
    assert!(push(&mut rep, b"y", 77));
    assert_eq!(read_all(&mut r), [Seen::Msg(77, b"y".to_vec())]);
}

#[test]
fn raw_chunks_after_a_skip_carry_their_first_sequence_number() {
    let dir = TempDir::new("rawseq");
    let (mut rep, _r) = open_pair(&dir, 0, 100);
    let raw = RawReader::open(&dir.ring(), StartAt::Oldest, true).unwrap();
    assert_eq!(raw.next_sequence(), 100);
    assert!(push(&mut rep, b"a", 100));
    assert!(push(&mut rep, b"b", 101));
    let gap_at = rep.position();
    let to = gap_at + 512;
    assert_eq!(rep.try_skip_to(to, 200).unwrap(), Skip::Done { lost: 98 });
    // Empty after the gap: the next message is numbered 200.
    assert_eq!(raw.next_sequence(), 200);
    assert!(push(&mut rep, b"c", 200));
    assert_eq!(raw.next_sequence(), 201);
    let chunk = |from| match raw.next_chunk(from, CAP).unwrap() {
        RawChunk::Records {
            end,
            records,
            first_seq,
            ..
        } => (end, records, first_seq),
        other => panic!("{other:?}"),
    };
    assert_eq!(chunk(0), (rep.position(), 3, 100));
    // From the gap record: its first lost message.
    assert_eq!(chunk(gap_at), (rep.position(), 1, 102));
    assert_eq!(chunk(to), (rep.position(), 1, 200));
}

#[test]
fn room_until_is_honoured_while_a_subscriber_joins_at_oldest() {
    let dir = TempDir::new("promise");
    let (mut rep, mut r) = open_pair(&dir, 0, 0);
    let mut seq = 0;
    // History in the ring, half of it read.
    for _ in 0..40 {
        assert!(push(&mut rep, &[seq as u8; 48], seq));
        seq += 1;
    }
    for _ in 0..20 {
        match r.try_read().unwrap() {
            ReadEvent::Message(m) => drop(m),
            other => panic!("{other:?}"),
        }
    }
    let room = rep.room_until();
    assert!(room > rep.position());
    assert!(rep.room_until() >= room, "a later call never promises less");
    // A subscriber joins at the oldest record while the writer has its room.
    let mut late = RingReader::open(&dir.ring(), StartAt::Oldest).unwrap();
    let mut pushed = 0;
    while rep.position() + 64 <= room {
        assert!(push(&mut rep, &[seq as u8; 48], seq), "promised room");
        seq += 1;
        pushed += 1;
    }
    assert!(pushed > 0);
    // The room is used up, the promise was kept; the joiner reads intact
    // records in order, ending with the last one.
    let seen = read_all(&mut late);
    let Some(Seen::Msg(last, _)) = seen.last() else {
        panic!("{seen:?}")
    };
    assert_eq!(*last, seq - 1);
    for pair in seen.windows(2) {
        match pair {
            [Seen::Msg(a, pa), Seen::Msg(b, pb)] => {
                assert_eq!(*b, a + 1);
                assert_eq!((pa[0], pb[0]), (*a as u8, *b as u8));
            }
            other => panic!("{other:?}"),
        }
    }
    let seen = read_all(&mut r);
    assert_eq!(seen.len() as u64, seq - 20, "the first reader lost nothing");
}

/// The header (stamp, meta word) and first payload word at ring position
/// `pos`, as the data file holds them.
fn header_at(path: &Path, pos: u64) -> (u64, u64, u64) {
    let file = OpenOptions::new().read(true).open(path).unwrap();
    let off = pos % CAP;
    // The payload word only if it lies inside the ring.
    let len = if off + 24 <= CAP { 24 } else { 16 };
    let mut words = [0u8; 24];
    file.read_exact_at(&mut words[..len], DATA_OFFSET as u64 + off)
        .unwrap();
    let word = |i: usize| u64::from_le_bytes(words[i * 8..i * 8 + 8].try_into().unwrap());
    (word(0), word(1), word(2))
}

/// Writes `bytes` at ring position `pos` of the data file, as a same-user
/// scribbler could.
fn scribble(path: &Path, pos: u64, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, DATA_OFFSET as u64 + pos % CAP)
        .unwrap();
}

#[test]
fn hostile_gap_records_are_corrupt_never_a_panic() {
    // Received: a gap record past the ring's end, an odd length, and a
    // count that overflows the numbering are refused; nothing is published.
    let dir = TempDir::new("hostile-rx");
    let (mut rep, mut r) = open_pair(&dir, CAP - 64, 5);
    let pos = rep.position();
    let mut past_end = record_bytes(gap_stamp(pos), 8, 5, &1u64.to_le_bytes());
    past_end[8..16].copy_from_slice(&meta_word(112, 5).to_le_bytes());
    let odd = {
        let mut b = record_bytes(gap_stamp(pos), 8, 5, &1u64.to_le_bytes());
        b[8..16].copy_from_slice(&meta_word(4, 5).to_le_bytes());
        b
    };
    let overflow = record_bytes(gap_stamp(pos), 8, 5, &(u64::MAX - 2).to_le_bytes());
    for bad in [past_end, odd, overflow] {
        assert!(
            matches!(commit_bytes(&mut rep, &bad), Err(Error::Corrupt { .. })),
            "{bad:?}"
        );
        assert_eq!(rep.position(), pos);
    }
    assert_eq!(read_all(&mut r), []);

    // Found in the ring by a reader (a scribbler wrote them): Corrupt.
    for (tag, len, count) in [("len", 112u32, 1u64), ("count", 8, u64::MAX - 2)] {
        let dir = TempDir::new(&format!("hostile-{tag}"));
        let (mut rep, mut r) = open_pair(&dir, CAP - 64, 5);
        assert!(push(&mut rep, b"ok", 5));
        let pos = rep.position();
        let mut bytes = record_bytes(gap_stamp(pos), 8, 6, &count.to_le_bytes());
        bytes[8..16].copy_from_slice(&meta_word(len, 6).to_le_bytes());
        // Count and meta first, the stamp last, as a writer would.
        scribble(&dir.ring(), pos + 8, &bytes[8..]);
        scribble(&dir.ring(), pos, &bytes[..8]);
        match r.try_read().unwrap() {
            ReadEvent::Message(m) => assert_eq!(m.payload(), b"ok"),
            other => panic!("{other:?}"),
        }
        match r.try_read() {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("{tag}: {other:?}"),
        };
    }

    // A gap record numbered below the next expected message (6): refused,
    // not taken as a reason to move the numbering back (layout.md §6).
    let dir = TempDir::new("hostile-backwards");
    let (mut rep, mut r) = open_pair(&dir, CAP - 64, 5);
    assert!(push(&mut rep, b"ok", 5));
    let pos = rep.position();
    let bytes = record_bytes(gap_stamp(pos), 8, 3, &1u64.to_le_bytes());
    scribble(&dir.ring(), pos + 8, &bytes[8..]);
    scribble(&dir.ring(), pos, &bytes[..8]);
    match r.try_read().unwrap() {
        ReadEvent::Message(m) => assert_eq!((m.sequence(), m.payload()), (5, &b"ok"[..])),
        other => panic!("{other:?}"),
    }
    match r.try_read() {
        Err(Error::Corrupt { what, .. }) => assert!(what.contains("backwards"), "{what}"),
        other => panic!("backwards: {other:?}"),
    };
}

#[test]
fn observers_and_batch_reads_see_the_same_exact_losses() {
    let dir = TempDir::new("observer");
    let (mut rep, mut r) = open_pair(&dir, CAP - 96, 40);
    let mut obs = RingObserver::open(&dir.ring(), StartAt::Oldest).unwrap();
    assert!(push(&mut rep, b"a", 40));
    // Across the lap end: 64 bytes with the count, a 16-byte filler.
    let to = rep.position() + 80;
    assert_eq!(rep.try_skip_to(to, 50).unwrap(), Skip::Done { lost: 9 });
    // A silent skip (fillers only).
    assert!(push(&mut rep, b"b", 50));
    let to = rep.position() + 48;
    assert_eq!(rep.try_skip_to(to, 51).unwrap(), Skip::Done { lost: 0 });
    assert!(push(&mut rep, b"c", 51));
    let mut seen = Vec::new();
    loop {
        match obs.try_read().unwrap() {
            Observed::Message { sequence, payload } => {
                seen.push(Seen::Msg(sequence, payload.to_vec()))
            }
            Observed::Gap { messages, bytes } => {
                assert_eq!(bytes, 0, "not lapped");
                seen.push(Seen::Lost(messages));
            }
            Observed::Empty => break,
            Observed::Closed => panic!("the replica is open"),
        }
    }
    let expected = [
        Seen::Msg(40, b"a".to_vec()),
        Seen::Lost(9),
        Seen::Msg(50, b"b".to_vec()),
        Seen::Msg(51, b"c".to_vec()),
    ];
    assert_eq!(seen, expected);
    // A batch read (drain) counts the same loss.
    let mut payloads = Vec::new();
    let drained = r.drain(16, |p| payloads.push(p.to_vec())).unwrap();
    assert_eq!(payloads, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    assert_eq!((drained.messages, drained.lost_messages), (3, 9));
}

/// A replica writer thread receives messages and skips at random (random
/// counts, lengths within its promised room, across laps; `NoRoom` waits
/// for the reader) while a subscriber thread reads with blocking reads:
/// every message arrives with its number and payload, every loss with its
/// exact count, nothing else. Returns the messages the reader saw.
fn random_skips(ops: u32) -> u64 {
    let dir = TempDir::new(&format!("random-{ops}"));
    let (mut rep, mut r) = open_pair(&dir, 0, 0);
    let reader = std::thread::spawn(move || {
        let mut next = 0u64;
        let mut messages = 0;
        loop {
            match r.read(Default::default(), Some(std::time::Duration::from_secs(30))) {
                Ok(ReadEvent::Message(m)) => {
                    assert_eq!(m.sequence(), next, "numbered in order");
                    let len = 1 + (next % 200) as usize;
                    assert_eq!(m.payload(), vec![next as u8; len]);
                    next += 1;
                    messages += 1;
                }
                Ok(ReadEvent::Gap {
                    messages: lost,
                    bytes,
                }) => {
                    assert_eq!(bytes, 0);
                    assert!(lost > 0, "fillers report nothing");
                    next += lost;
                }
                Ok(ReadEvent::Closed) => return (next, messages),
                other => panic!("{other:?}"),
            }
        }
    });
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut seq = 0u64;
    let mut sent = 0u64;
    for _ in 0..ops {
        if rnd(4) != 0 {
            let len = 1 + (seq % 200) as usize;
            while !push(&mut rep, &vec![seq as u8; len], seq) {
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            seq += 1;
            sent += 1;
            continue;
        }
        let lost = [0, 0, 1, 5, 1 << 20][rnd(5) as usize];
        let to = rep.position() + 16 * (1 + rnd(CAP / 16));
        loop {
            match rep.try_skip_to(to, seq + lost).unwrap() {
                Skip::Done { lost: l } => {
                    assert_eq!(l, lost);
                    seq += lost;
                    break;
                }
                Skip::NoRoom => std::thread::sleep(std::time::Duration::from_micros(100)),
                // Two 16-byte pieces, or one, cannot carry a count.
                Skip::Unrepresentable => {
                    assert!(lost > 0 && to - rep.position() <= 32);
                    break;
                }
            }
        }
    }
    drop(rep);
    let (next, messages) = reader.join().unwrap();
    assert_eq!((next, messages), (seq, sent));
    messages
}

#[test]
fn random_skips_read_concurrently_are_exact() {
    assert!(random_skips(3000) > 0);
}

#[test]
#[ignore = "long run: cargo test -p shmbus-bus --test replica_skip -- --ignored"]
fn stress_random_skips_read_concurrently_are_exact() {
    assert!(random_skips(300_000) > 0);
}
