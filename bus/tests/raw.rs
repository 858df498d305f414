//! Forwarding ring bytes: RawReader -> (bytes) -> ReplicaWriter, the path the
//! bridge takes, within one process.

use std::{fs, path::PathBuf};

use shmbus_bus::{
    Error, RawChunk, RawReader, ReadEvent, ReplicaWriter, RingConfig, RingReader, RingWriter,
    StartAt,
};

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = PathBuf::from(format!("/dev/shm/shmbus-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn config() -> RingConfig {
    RingConfig {
        capacity: 1 << 14,
        max_message: 2048,
        slots: 4,
        ..RingConfig::default()
    }
}

/// Copies one chunk from `raw` into `replica` the way a receiver does.
fn forward(
    raw: &RawReader,
    replica: &mut ReplicaWriter,
    start: u64,
    end: u64,
) -> Result<u32, Error> {
    // SAFETY: the range came from next_chunk and is not released.
    let (a, b) = unsafe { raw.slices(start, end) };
    let bytes: Vec<u8> = a.iter().chain(b).copied().collect();
    let mut chunk = replica.reserve(end - start, Default::default(), None)?;
    let (header, x, y) = chunk.buffers();
    header.copy_from_slice(&bytes[..16]);
    x.copy_from_slice(&bytes[16..16 + x.len()]);
    let rest = 16 + x.len();
    y.copy_from_slice(&bytes[rest..]);
    chunk.commit()
}

#[test]
fn records_forwarded_across_wraps_read_identically() {
    let dir = TempDir::new("raw");
    let src = dir.0.join("src.ring");
    let mut w = RingWriter::create(&src, &config()).unwrap();
    let mut raw = RawReader::open(&src, StartAt::Latest, true).unwrap();
    // The replica starts where the source stream is.
    let mut replica =
        ReplicaWriter::create(&dir.0.join("replica.ring"), &config(), raw.start_position())
            .unwrap();
    let mut local = RingReader::open(&dir.0.join("replica.ring"), StartAt::Latest).unwrap();
    let mut sent = 0u32;
    let mut pos = raw.start_position();
    for round in 0..200u32 {
        for i in 0..5u32 {
            let n = round * 5 + i;
            w.try_write(&n.to_le_bytes().repeat(1 + (n as usize % 90)))
                .unwrap();
        }
        match raw.next_chunk(pos, 4096).unwrap() {
            RawChunk::Records {
                start,
                end,
                records,
                first_seq,
            } => {
                // Message n is numbered n: the chunk starts after `sent`.
                assert_eq!(first_seq, u64::from(sent));
                assert_eq!(forward(&raw, &mut replica, start, end).unwrap(), records);
                sent += records;
                pos = end;
                raw.release_to(end);
            }
            other => panic!("{other:?}"),
        }
        // Drain what arrived so far.
        while let ReadEvent::Message(m) = local.try_read().unwrap() {
            let n = u32::from_le_bytes(m.payload()[..4].try_into().unwrap());
            assert_eq!(m.payload(), n.to_le_bytes().repeat(1 + (n as usize % 90)));
            assert_eq!(m.sequence(), u64::from(n));
        }
    }
    assert_eq!(sent, 1000);
    assert_eq!(
        replica.position(),
        w.stats().tail,
        "positions mirror the source"
    );
}

#[test]
fn bad_chunks_are_refused_and_publish_nothing() {
    let dir = TempDir::new("rawbad");
    let mut replica = ReplicaWriter::create(&dir.0.join("r.ring"), &config(), 4096).unwrap();
    let mut local = RingReader::open(&dir.0.join("r.ring"), StartAt::Latest).unwrap();
    // A stamp for the wrong position.
    let mut chunk = replica.reserve(32, Default::default(), None).unwrap();
    let (header, _, _) = chunk.buffers();
    header[..8].copy_from_slice(&(8192u64 | 1).to_le_bytes());
    header[8..].copy_from_slice(&4u64.to_le_bytes());
    assert!(matches!(chunk.commit(), Err(Error::Corrupt { .. })));
    // A length beyond the maximum.
    let mut chunk = replica.reserve(32, Default::default(), None).unwrap();
    let (header, _, _) = chunk.buffers();
    header[..8].copy_from_slice(&(4096u64 | 1).to_le_bytes());
    header[8..].copy_from_slice(&5000u64.to_le_bytes());
    assert!(matches!(chunk.commit(), Err(Error::Corrupt { .. })));
    // A record running past the chunk.
    let mut chunk = replica.reserve(32, Default::default(), None).unwrap();
    let (header, _, _) = chunk.buffers();
    header[..8].copy_from_slice(&(4096u64 | 1).to_le_bytes());
    header[8..].copy_from_slice(&100u64.to_le_bytes());
    assert!(matches!(chunk.commit(), Err(Error::Corrupt { .. })));
    assert!(matches!(
        replica.reserve(24, Default::default(), None),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(local.try_read().unwrap(), ReadEvent::Empty));
    // A good one still lands at the same position.
    let mut chunk = replica.reserve(32, Default::default(), None).unwrap();
    let (header, rest, _) = chunk.buffers();
    header[..8].copy_from_slice(&(4096u64 | 1).to_le_bytes());
    header[8..].copy_from_slice(&3u64.to_le_bytes());
    rest[..3].copy_from_slice(b"abc");
    assert_eq!(chunk.commit().unwrap(), 1);
    match local.try_read().unwrap() {
        ReadEvent::Message(m) => assert_eq!(m.payload(), b"abc"),
        other => panic!("{other:?}"),
    };
}

#[test]
fn untethered_reader_never_blocks_the_publisher_and_sees_laps() {
    let dir = TempDir::new("untethered");
    let src = dir.0.join("src.ring");
    let mut w = RingWriter::create(&src, &config()).unwrap();
    let mut raw = RawReader::open(&src, StartAt::Latest, false).unwrap();
    let start = raw.start_position();
    for i in 0..1000u32 {
        w.try_write(&i.to_le_bytes().repeat(32))
            .expect("untethered reader does not gate");
    }
    assert!(matches!(
        raw.next_chunk(start, 4096).unwrap(),
        RawChunk::Lapped { .. }
    ));
    // Pinned, it gates: the safe start is at or after the writer's limit.
    let safe = raw.pin(raw.head());
    assert!(safe >= raw.head());
    let RawChunk::Records { end, .. } = raw.next_chunk(safe, 1 << 13).unwrap() else {
        panic!()
    };
    let mut full = false;
    for i in 0..1000u32 {
        if w.try_write(&i.to_le_bytes().repeat(32)).is_err() {
            full = true;
            break;
        }
    }
    assert!(full, "a pin holds the publisher back");
    assert!(
        matches!(raw.next_chunk(safe, 1 << 13).unwrap(), RawChunk::Records { end: e, .. } if e == end)
    );
    raw.unpin();
    w.try_write(b"free again").unwrap();
}

#[test]
fn raw_readers_refuse_overwrite_rings() {
    let dir = TempDir::new("raw-overwrite");
    let path = dir.0.join("o.ring");
    let config = RingConfig {
        policy: shmbus_bus::Policy::Overwrite,
        ..config()
    };
    let _w = RingWriter::create(&path, &config).unwrap();
    let e = RawReader::open(&path, StartAt::Latest, true).unwrap_err();
    assert!(e.to_string().contains("refuse Overwrite rings"), "{e}");
}

#[test]
fn next_chunk_refuses_positions_it_did_not_find() {
    let dir = TempDir::new("raw-pos");
    let path = dir.0.join("p.ring");
    let mut w = RingWriter::create(&path, &config()).unwrap();
    let raw = RawReader::open(&path, StartAt::Latest, true).unwrap();
    w.try_write(&[1; 40]).unwrap();
    for bad in [8, 3, 1 << 40] {
        assert!(
            matches!(raw.next_chunk(bad, 4096), Err(Error::InvalidConfig(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        raw.next_chunk(0, 4096),
        Ok(RawChunk::Records {
            start: 0,
            end: 64,
            records: 1,
            first_seq: 0,
        })
    ));
}

#[test]
fn replica_gap_record_reaches_subscribers_with_the_exact_count() {
    let dir = TempDir::new("raw-gap");
    let path = dir.0.join("r.ring");
    let mut replica = ReplicaWriter::create_numbered(&path, &config(), 0, 10).unwrap();
    let mut r = RingReader::open(&path, StartAt::Oldest).unwrap();
    // One record numbered 10 (as a forwarded chunk would carry), a gap of
    // 2^33 + 5 messages lost upstream, then the stream goes on.
    replica
        .write_gap((1 << 33) + 5, Default::default(), None)
        .unwrap();
    match r.try_read().unwrap() {
        ReadEvent::Gap { messages, bytes } => {
            assert_eq!((messages, bytes), ((1 << 33) + 5, 0));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(r.try_read().unwrap(), ReadEvent::Empty));
}

#[test]
fn record_lengths_are_capped_to_what_a_header_stores() {
    let big = RingConfig {
        capacity: 1 << 34,
        max_message: 5 << 30,
        ..RingConfig::default()
    };
    let e = big.validate().unwrap_err();
    assert!(e.to_string().contains("max_message"), "{e}");
    assert!(shmbus_bus::max_message_limit(1 << 34) < u64::from(u32::MAX));
    let too_big = RingConfig {
        capacity: 1 << 35,
        ..RingConfig::default()
    };
    assert!(too_big.validate().is_err(), "rings stay below 2^31 records");
}

#[test]
fn durable_slot_outlives_its_owner_and_the_restarted_owner_resumes() {
    let dir = TempDir::new("raw-durable");
    let path = dir.0.join("d.ring");
    let mut w = RingWriter::create(&path, &config()).unwrap();
    let lease = std::time::Duration::from_secs(60);
    // The owner runs in a child process that releases 2 records and is then
    // SIGKILLed (its lock goes with it; no destructor runs).
    for i in 0..5u8 {
        w.try_write(&[i; 100]).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "durable_owner_child",
            "--nocapture",
            "--include-ignored",
        ])
        .env("SHMBUS_DURABLE_CHILD", &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("released") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "child died"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Dead owner, live lease: the ring keeps its data for it.
    w.reap_dead_subscribers();
    let mut n = 5u8;
    while w.try_write(&[n; 100]).is_ok() {
        n += 1;
        assert!(
            n < 250,
            "the orphaned durable slot must hold the publisher back"
        );
    }
    // The publisher exits meanwhile: the ring still owes the durable slot
    // its data, so its files stay.
    let tail = RawReader::open(&path, StartAt::Latest, false)
        .unwrap()
        .tail();
    drop(w);
    assert!(path.exists() && path.with_extension("ctl").exists());
    assert_eq!(
        shmbus_bus::sweep_topic(&dir.0).unwrap(),
        0,
        "a sweep keeps it too"
    );
    // The restarted owner reattaches where the dead one had released and
    // finds everything after it.
    let mut raw = RawReader::open_durable(&path, StartAt::Latest, 0xd0d0, lease).unwrap();
    assert_eq!(raw.start_position(), 2 * 128);
    assert!(matches!(
        raw.next_chunk(2 * 128, 1 << 20).unwrap(),
        RawChunk::Records { end, .. } if end == tail
    ));
    assert!(raw.publisher_gone());
    // Done with it: the owner leaves cleanly, and the last one out removes
    // the ring.
    raw.release_to(tail);
    drop(raw);
    assert!(!path.exists() && !path.with_extension("ctl").exists());
}

/// The child side of the durable test: opens the durable slot, releases two
/// records, says so, and waits to be killed.
#[test]
#[ignore = "child process of durable_slot_outlives_its_owner_and_the_restarted_owner_resumes"]
fn durable_owner_child() {
    let Some(path) = std::env::var_os("SHMBUS_DURABLE_CHILD") else {
        return;
    };
    let mut raw = RawReader::open_durable(
        std::path::Path::new(&path),
        StartAt::Oldest,
        0xd0d0,
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    raw.release_to(2 * 128);
    println!("released");
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn a_replica_started_mid_stream_reports_no_false_loss() {
    let dir = TempDir::new("raw-midstream");
    let src = dir.0.join("src.ring");
    let mut w = RingWriter::create(&src, &config()).unwrap();
    let mut raw = RawReader::open(&src, StartAt::Oldest, true).unwrap();
    for n in 0..30u32 {
        w.try_write(&n.to_le_bytes()).unwrap();
    }
    // Skip the first 20 records: the replica (sequence numbers unknown)
    // starts there, as after a reconnect.
    let RawChunk::Records { end: skip, .. } = raw.next_chunk(0, 20 * 32).unwrap() else {
        panic!()
    };
    raw.release_to(skip);
    let path = dir.0.join("replica.ring");
    let mut replica = ReplicaWriter::create(&path, &config(), skip).unwrap();
    let mut local = RingReader::open(&path, StartAt::Latest).unwrap();
    let RawChunk::Records { start, end, .. } = raw.next_chunk(skip, 4096).unwrap() else {
        panic!()
    };
    assert_eq!(forward(&raw, &mut replica, start, end).unwrap(), 10);
    for n in 20..30u64 {
        match local.try_read().unwrap() {
            ReadEvent::Message(m) => assert_eq!(m.sequence(), n),
            other => panic!("want message {n}, got {other:?} (a false loss?)"),
        }
    }
}

#[test]
fn next_sequence_is_the_publishers_next_number_also_when_the_ring_is_full() {
    let dir = TempDir::new("raw-nextseq");
    let path = dir.0.join("n.ring");
    let mut w = RingWriter::create(&path, &config()).unwrap();
    // Tethered at the oldest record, never releasing: the ring fills up.
    let raw = RawReader::open(&path, StartAt::Oldest, true).unwrap();
    assert_eq!(raw.next_sequence(), 0);
    let mut sent = 0u64;
    while w.try_write(&[3; 16]).is_ok() {
        sent += 1;
        assert_eq!(raw.next_sequence(), sent);
    }
    // Exactly full: the word where the next record goes is the oldest
    // record's header, not a hint; the publisher's counter tells.
    assert_eq!(raw.tail() - raw.head(), config().capacity);
    assert_eq!(raw.next_sequence(), sent);
    match raw.next_chunk(0, 1 << 13).unwrap() {
        RawChunk::Records {
            start, first_seq, ..
        } => assert_eq!((start, first_seq), (0, 0)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_scribbled_gap_record_is_corrupt_for_a_raw_reader() {
    use std::os::unix::fs::FileExt;
    let dir = TempDir::new("raw-hostile-gap");
    let path = dir.0.join("h.ring");
    let mut w = RingWriter::create(&path, &config()).unwrap();
    let raw = RawReader::open(&path, StartAt::Oldest, true).unwrap();
    w.try_write(&[1; 16]).unwrap();
    w.try_write(&[2; 16]).unwrap();
    // The second record (at 32) becomes a gap record whose length runs
    // past the ring's end: a same-user scribbler's pwrite.
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let at = shmbus_bus::layout::DATA_OFFSET as u64 + 32;
    file.write_all_at(&shmbus_bus::layout::gap_stamp(32).to_le_bytes(), at)
        .unwrap();
    file.write_all_at(
        &shmbus_bus::layout::meta_word(u32::MAX - 15, 1).to_le_bytes(),
        at + 8,
    )
    .unwrap();
    assert!(matches!(
        raw.next_chunk(0, 1 << 13),
        Err(Error::Corrupt { .. })
    ));
    // next_sequence reads only hints: any value, no panic.
    let _ = raw.next_sequence();
}

#[test]
fn a_detached_durable_slot_stays_like_a_crashed_one() {
    let dir = TempDir::new("raw-detach");
    let path = dir.0.join("d.ring");
    let mut w = RingWriter::create(&path, &config()).unwrap();
    let lease = std::time::Duration::from_secs(60);
    for i in 0..5u8 {
        w.try_write(&[i; 100]).unwrap();
    }
    let mut raw = RawReader::open_durable(&path, StartAt::Oldest, 0xde7a, lease).unwrap();
    raw.release_to(2 * 128);
    // A clean stop that keeps the slot: no destructor frees it.
    raw.detach();
    drop(raw);
    w.reap_dead_subscribers();
    let mut n = 5u8;
    while w.try_write(&[n; 100]).is_ok() {
        n += 1;
        assert!(
            n < 250,
            "the detached durable slot must hold the publisher back"
        );
    }
    let tail = RawReader::open(&path, StartAt::Latest, false)
        .unwrap()
        .tail();
    drop(w);
    assert!(
        path.exists(),
        "the ring still owes the detached slot its data"
    );
    let mut raw = RawReader::open_durable(&path, StartAt::Latest, 0xde7a, lease).unwrap();
    assert_eq!(raw.start_position(), 2 * 128);
    assert!(matches!(
        raw.next_chunk(2 * 128, 1 << 20).unwrap(),
        RawChunk::Records { end, .. } if end == tail
    ));
    raw.release_to(tail);
    drop(raw);
    assert!(!path.exists());
}

/// A chunk bound never refuses a record the ring accepted: a first record
/// longer than `max_len` comes alone, and the next call goes on after it.
#[test]
fn a_record_longer_than_the_chunk_bound_comes_alone() {
    let dir = TempDir::new("raw-oversize");
    let path = dir.0.join("p.ring");
    let mut w = RingWriter::create(&path, &config()).unwrap();
    let raw = RawReader::open(&path, StartAt::Oldest, true).unwrap();
    w.try_write(&[7u8; 2000]).unwrap();
    w.try_write(&[8u8; 10]).unwrap();
    w.try_write(&[9u8; 10]).unwrap();
    let RawChunk::Records {
        start,
        end,
        records,
        ..
    } = raw.next_chunk(raw.start_position(), 1024).unwrap()
    else {
        panic!("expected records")
    };
    assert_eq!(
        (end - start, records),
        (16 + 2000, 1),
        "the big record alone"
    );
    let RawChunk::Records {
        end: e2, records, ..
    } = raw.next_chunk(end, 1024).unwrap()
    else {
        panic!("expected records")
    };
    assert_eq!(
        (e2 - end, records),
        (2 * 32, 2),
        "then the small ones together"
    );
}
