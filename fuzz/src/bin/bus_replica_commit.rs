//! Target `bus_replica_commit`: arbitrary ring slices handed to a replica
//! (`ReplicaWriter::try_reserve`, `ReplicaChunk::buffers`, `commit`: the
//! path of the bridge's receiver, `commit_raw` inside), up to three chunks
//! per input, read back by a subscriber after each.
//!
//! Properties, against the reference walk of `docs/layout.md` §7:
//! - `try_reserve` refuses exactly the lengths §7 excludes (0, not a
//!   multiple of 16, more than half the ring), with `TooLarge`;
//! - `commit` accepts exactly the chunks the walk accepts, returning its
//!   count of data records; a refusal names the walk's first bad position,
//!   publishes nothing (the position stays, a reader finds nothing);
//! - after an accepted chunk a reader drains exactly the chunk's data
//!   records (bytes and order) and the gap records' lost counts, and ends
//!   at the chunk's end.
//!
//! Input: a byte choosing a fresh replica (`% 4 == 0`) or the last
//! input's, a start position (u32, times 16), a numbering byte and
//! sequence number (u64) for a fresh one, then per chunk a record program
//! (see `build`) and a length tweak.

use std::time::Duration;

use shmbus_bus::{Error, ReplicaWriter, RingConfig, RingReader, StartAt};
use shmbus_fuzz::{
    input::Input,
    layout_ref::{self as spec, Rec},
    scratch::Scratch,
};

const CAPACITY: u64 = 4096;
const RING: spec::Ring = spec::Ring {
    capacity: CAPACITY,
    max_message: 1024,
};

/// A chunk as the fuzzer wrote it: the ring image it lands in (the chunk's
/// bytes at its positions, zeros elsewhere) and its length.
struct Chunk {
    image: Vec<u8>,
    len: u64,
}

/// Builds a chunk at `start` from a record program: data records (length,
/// sequence skew, fill), gap records (length, count), padding to the lap's
/// end, raw words, until the stop opcode or half a ring.
fn build(input: &mut Input<'_>, start: u64, mut seq: u64) -> Chunk {
    let mut image = vec![0u8; CAPACITY as usize];
    let mut pos = start;
    let put = |image: &mut Vec<u8>, pos: u64, bytes: &[u8]| {
        for (i, b) in bytes.iter().enumerate() {
            image[((pos + i as u64) % CAPACITY) as usize] = *b;
        }
    };
    let header = |stamp: u64, len: u32, seq: u64| {
        let mut h = [0u8; 16];
        h[..8].copy_from_slice(&stamp.to_le_bytes());
        h[8..].copy_from_slice(&(u64::from(len) | (seq << 32)).to_le_bytes());
        h
    };
    while pos - start < CAPACITY / 2 {
        match input.u8() % 5 {
            0 => {
                let len = u32::from(input.u16()) % 1100;
                let skew = i64::from(input.u8() as i8 / 64);
                let fill = input.u8();
                let rec_seq = seq.wrapping_add_signed(skew);
                put(&mut image, pos, &header(pos | 1, len, rec_seq));
                let payload: Vec<u8> = (0..len).map(|i| fill ^ (i as u8)).collect();
                put(&mut image, pos + 16, &payload);
                pos += 16 + u64::from(len).div_ceil(16) * 16;
                seq = rec_seq.wrapping_add(1);
            }
            1 => {
                let len = [0, 8, 16, 40][usize::from(input.u8() % 4)];
                let count = match input.u8() % 3 {
                    0 => u64::from(input.u8()),
                    1 => input.u64(),
                    _ => 0,
                };
                put(&mut image, pos, &header(pos | 5, len, seq));
                put(&mut image, pos + 16, &count.to_le_bytes());
                pos += 16 + u64::from(len).div_ceil(16) * 16;
                seq = seq.wrapping_add(count);
            }
            2 => {
                let room = CAPACITY - pos % CAPACITY;
                put(&mut image, pos, &header(pos | 3, (room - 16) as u32, seq));
                pos += room;
            }
            3 => {
                let at = pos.saturating_sub(u64::from(input.u8()) * 8) & !7;
                let at = at.max(start);
                put(&mut image, at, &input.u64().to_le_bytes());
            }
            _ => break,
        }
    }
    let exact = pos - start;
    let len = match input.u8() % 8 {
        1 => exact.saturating_sub(16),
        2 => exact + 16,
        3 => u64::from(input.u16()),
        _ => exact,
    };
    Chunk { image, len }
}

/// A replica and its subscriber, kept from input to input while they stay
/// exact (creating a replica cost most of an exec).
struct Kept {
    // The reader leaves before the replica closes (fields drop in order).
    reader: RingReader,
    replica: ReplicaWriter,
    /// The replica's numbering as the spec tracks it (None: not known yet).
    seq: Option<u64>,
}

/// Runs one input. The first byte says whether to start from a fresh
/// replica (at the input's position and numbering) or go on with the one
/// the last input left; an input that fails may then need the inputs
/// before it (`--replay` them in order).
fn one(dir: &Scratch, kept: &mut Option<Kept>, bytes: &[u8]) {
    let mut input = Input::new(bytes);
    let fresh = input.u8().is_multiple_of(4);
    let start = u64::from(input.u32()) << 4;
    let numbered = input.u8().is_multiple_of(2);
    let seq0 = input.u64();
    let mut k = match kept.take() {
        Some(k) if !fresh => k,
        old => {
            drop(old);
            // Its files go before the new ones are made (the last one out
            // removes them; this covers an exit in any order).
            let path = dir.path("replica.ring");
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(path.with_extension("ctl"));
            let config = RingConfig {
                capacity: CAPACITY,
                max_message: RING.max_message,
                slots: 2,
                ..RingConfig::default()
            };
            let replica = if numbered {
                ReplicaWriter::create_numbered(&path, &config, start, seq0)
            } else {
                ReplicaWriter::create(&path, &config, start)
            }
            .expect("create the replica");
            let reader = RingReader::open_waiting(&path, StartAt::Oldest, Duration::ZERO)
                .expect("open the replica");
            Kept {
                replica,
                reader,
                seq: numbered.then_some(seq0),
            }
        }
    };
    for _ in 0..3 {
        if input.is_empty() {
            break;
        }
        assert_eq!(k.replica.next_sequence(), k.seq, "the replica's numbering");
        let at = k.replica.position();
        let chunk = build(&mut input, at, k.seq.unwrap_or(seq0));
        match commit(&mut k.replica, &mut k.reader, &chunk, &mut k.seq) {
            Next::Go => {}
            Next::Stop => break,
            Next::Recreate => return,
        }
    }
    *kept = Some(k);
}

/// What may follow a chunk.
enum Next {
    /// Another chunk.
    Go,
    /// Nothing more in this input (a length was refused).
    Stop,
    /// The replica's readers cannot number exactly any more: start over.
    Recreate,
}

/// Offers one chunk and checks the outcome.
fn commit(
    replica: &mut ReplicaWriter,
    reader: &mut RingReader,
    chunk: &Chunk,
    seq: &mut Option<u64>,
) -> Next {
    let start = replica.position();
    let len = chunk.len;
    let bad_len = len == 0 || !len.is_multiple_of(16) || len > CAPACITY / 2;
    let mut reserved = match replica.try_reserve(len) {
        Ok(Some(r)) => r,
        Ok(None) => panic!("a drained replica is full"),
        Err(Error::TooLarge { .. }) => {
            assert!(bad_len, "try_reserve refused a length of {len}");
            return Next::Stop;
        }
        Err(other) => panic!("try_reserve({len}): {other:?}"),
    };
    assert!(!bad_len, "try_reserve took a length of {len}");
    assert_eq!(reserved.start(), start);
    let ring_bytes = |from: u64, n: usize| -> Vec<u8> {
        (0..n as u64)
            .map(|i| chunk.image[((from + i) % CAPACITY) as usize])
            .collect()
    };
    let (head, a, b) = reserved.buffers();
    head.copy_from_slice(&ring_bytes(start, 16));
    a.copy_from_slice(&ring_bytes(start + 16, a.len()));
    b.copy_from_slice(&ring_bytes(start + 16 + a.len() as u64, b.len()));
    assert_eq!(
        16 + a.len() + b.len(),
        len as usize,
        "buffers cover the chunk"
    );
    let want = spec::walk_chunk(&RING, &chunk.image, start, len, *seq, 0);
    match (reserved.commit(), want) {
        (Ok(n), Ok((records, next))) => {
            let data = records
                .iter()
                .filter(|r| matches!(r.rec, Rec::Data { .. }))
                .count();
            assert_eq!(n as usize, data, "data records committed");
            *seq = next.or(*seq);
            // Readers extend sequence numbers from the publisher's counter,
            // exactly only within 2^31 of it (layout.md §5): a gap of more
            // lost messages is checked by commit alone.
            let exact = records
                .iter()
                .all(|r| !matches!(r.rec, Rec::Gap { count, .. } if count >= 1 << 31));
            assert_eq!(replica.position(), start + len);
            if !exact {
                return Next::Recreate;
            }
            read_back(reader, chunk, &records, start + len);
            Next::Go
        }
        (Err(Error::Corrupt { what, .. }), Err((pos, why))) => {
            assert!(
                what.contains(&format!("at position {pos}:")),
                "bus refused with {what:?}, the spec at {pos} ({why})"
            );
            assert_eq!(replica.position(), start, "a refused chunk moves nothing");
            let d = reader
                .drain(16, |_| panic!("read a refused chunk"))
                .expect("drain");
            assert_eq!(d.messages, 0);
            Next::Go
        }
        (got, want) => panic!("commit at {start} len {len}: bus {got:?}, spec {want:?}"),
    }
}

/// A reader of the replica finds exactly the chunk's data records and the
/// counts of its gap records.
fn read_back(reader: &mut RingReader, chunk: &Chunk, records: &[spec::ChunkRecord], end: u64) {
    let mut got = Vec::new();
    let d = reader
        .drain(usize::MAX, |p| got.push(p.to_vec()))
        .expect("drain an accepted chunk");
    let mut want = Vec::new();
    let mut lost = 0u64;
    for r in records {
        match r.rec {
            Rec::Data { len, .. } => want.push(RING.payload(&chunk.image, r.pos, len).to_vec()),
            Rec::Gap { count, .. } => lost = lost.saturating_add(count),
            _ => {}
        }
    }
    assert_eq!(
        got,
        want,
        "payloads read back (lengths {:?}, chunk records {records:?})",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
    assert_eq!(d.lost_messages, lost, "gap counts read back");
    assert_eq!(reader.position(), end, "the reader ends at the chunk's end");
}

fn main() {
    let dir = Scratch::new("bus_replica_commit");
    let mut kept = None;
    if shmbus_fuzz::other_modes(
        |b| one(&dir, &mut kept, b),
        shmbus_fuzz::seeds::replica_commit,
    ) {
        return;
    }
    // A panic aborts the process (afl.rs), so no state outlives a failure.
    let mut state = std::panic::AssertUnwindSafe((dir, kept));
    afl::fuzz(true, move |bytes: &[u8]| {
        let (dir, kept) = &mut *state;
        one(dir, kept, bytes);
    });
}
