//! Corrupted and truncated segment files, written by real publisher
//! processes and then damaged from outside.
//!
//! Proves: every kind of damage gives the documented error (never a panic,
//! never a crash of the subscriber process), the subscriber reads the intact
//! prefix of a damaged ring, keeps reading the topic's other publishers, and
//! a sweep leaves files it cannot identify alone.

use std::{
    fs,
    mem::{offset_of, size_of},
    path::{Path, PathBuf},
    time::Duration,
};

use shmbus_bus::{layout, RingReader, StartAt};
use shmbus_tests::{
    harness::{parse_ready, Proc, TestEnv, LINE_TIMEOUT},
    msg::{ArchivedTestMsg, TestMsg},
    report::Report,
    ringfile::{HeaderField, RecordInfo, RingFile},
    tracker::bus_kind,
};

const PEER: &str = env!("CARGO_BIN_EXE_peer");

/// A publisher process that publishes `count` messages of 64 bytes (no
/// subscriber yet, and the ring is large enough to keep them all), then keeps
/// its ring open until its stdin is closed.
fn lingering(
    env: &TestEnv,
    name: &str,
    topic: &str,
    id: u32,
    count: u64,
) -> (Proc, String, PathBuf) {
    let id = id.to_string();
    let count = count.to_string();
    let mut p = env.peer(
        name,
        &[
            "publish",
            "--topic",
            topic,
            "--id",
            &id,
            "--count",
            &count,
            "--size",
            "64",
            "--capacity",
            "65536",
            "--linger",
        ],
    );
    let (ring, path) = parse_ready(&p.expect_line("ready", LINE_TIMEOUT));
    p.expect_line("lingering", LINE_TIMEOUT);
    (p, ring, path)
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// A foreign commit stamp on a published record.
    Stamp,
    /// A record length beyond the ring's maximum.
    Length,
    /// The archived `Vec`'s length points far outside the archive.
    ArchiveLen,
    /// One payload byte flipped: a valid archive with wrong content.
    PayloadByte,
}

const DAMAGED_AT: usize = 120;
const COUNT: u64 = 200;

fn damage(file: &RingFile, rec: &RecordInfo, how: Damage) {
    // The archive's root object sits at its end; its `payload` field is an
    // ArchivedVec { rel_ptr: i32, len: u32 }, the bytes before the root.
    let root = rec.payload_offset() + u64::from(rec.len) - size_of::<ArchivedTestMsg>() as u64;
    let vec_field = root + offset_of!(ArchivedTestMsg, payload) as u64;
    match how {
        Damage::Stamp => file
            .patch(
                rec.file_offset,
                &layout::data_stamp(rec.position + (1 << 30)).to_le_bytes(),
            )
            .unwrap(),
        Damage::Length => file
            .patch(rec.meta_offset(), &0xffff_fff0u32.to_le_bytes())
            .unwrap(),
        Damage::ArchiveLen => file
            .patch(vec_field + 4, &0x7fff_fff0u32.to_le_bytes())
            .unwrap(),
        Damage::PayloadByte => {
            let rel = file.u32_at(vec_field).unwrap() as i32;
            let data = vec_field.checked_add_signed(i64::from(rel)).unwrap();
            file.flip(data + 5, 0x40).unwrap();
        }
    }
}

/// Damages record 120 of one publisher's ring, then subscribes a process to
/// the topic (oldest first) that also has a healthy publisher.
fn damaged_record(name: &str, how: Damage) -> (Report, String) {
    let env = TestEnv::new(name, PEER, Duration::from_secs(60));
    let topic = "mixed";
    let (victim, victim_ring, victim_path) = lingering(&env, "victim", topic, 1, COUNT);
    let (healthy, _, _) = lingering(&env, "healthy", topic, 2, COUNT);
    let file = RingFile::open(&victim_path).unwrap();
    let records = file.records().unwrap();
    assert_eq!(records.len(), COUNT as usize);
    let rec = records[DAMAGED_AT];
    assert_eq!(u64::from(rec.seq), DAMAGED_AT as u64);
    damage(&file, &rec, how);

    let report = env.report_path("sub");
    let report_arg = report.display().to_string();
    let mut sub = env.peer(
        "sub",
        &[
            "subscribe",
            "--topic",
            topic,
            "--expect-publishers",
            "2",
            "--count",
            &COUNT.to_string(),
            "--start",
            "oldest",
            "--report",
            &report_arg,
        ],
    );
    sub.expect_line("subscribed", LINE_TIMEOUT);
    // Both close their rings now; the subscriber still reads what is there.
    let mut pubs = [victim, healthy];
    for p in &mut pubs {
        p.close_stdin();
        p.wait_ok(LINE_TIMEOUT);
    }
    let status = sub.wait(LINE_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(1),
        "errors reported, no crash: {}",
        sub.describe()
    );
    let r = sub.report(&report);
    let h = r.publisher(2);
    assert_eq!(
        (h.received, h.last, h.lost),
        (COUNT, Some(COUNT - 1), 0),
        "{r}"
    );
    assert_eq!(r.gone.len() + r.broken.len(), 2, "{r}");
    (r, victim_ring)
}

#[test]
fn corrupt_commit_stamp_stops_only_that_ring() {
    let (r, victim) = damaged_record("stamp", Damage::Stamp);
    assert_eq!(r.errors.len(), 1, "{r}");
    assert_eq!(r.errors[0].kind, "corrupt", "{r}");
    assert!(r.errors[0].detail.contains("commit stamp"), "{r}");
    assert_eq!(r.broken.get(&victim).map(String::as_str), Some("corrupt"));
    let v = r.publisher(1);
    assert_eq!(
        (v.received, v.last),
        (DAMAGED_AT as u64, Some(DAMAGED_AT as u64 - 1)),
        "{r}"
    );
}

#[test]
fn corrupt_record_length_stops_only_that_ring() {
    let (r, victim) = damaged_record("length", Damage::Length);
    assert_eq!(r.errors.len(), 1, "{r}");
    assert_eq!(r.errors[0].kind, "corrupt", "{r}");
    assert!(r.errors[0].detail.contains("record length exceeds"), "{r}");
    assert_eq!(r.broken.get(&victim).map(String::as_str), Some("corrupt"));
    assert_eq!(r.publisher(1).received, DAMAGED_AT as u64, "{r}");
}

#[test]
fn invalid_archive_is_skipped_and_reading_goes_on() {
    let (r, victim) = damaged_record("archive", Damage::ArchiveLen);
    assert_eq!(r.errors.len(), 1, "{r}");
    assert_eq!(r.errors[0].kind, "invalid-message", "{r}");
    assert_eq!(r.errors[0].ring.as_deref(), Some(victim.as_str()));
    let v = r.publisher(1);
    // Every other message arrived, in order, around the skipped one.
    assert_eq!(
        (v.received, v.lost, v.last),
        (COUNT - 1, 1, Some(COUNT - 1)),
        "{r}"
    );
    assert!(r.gone.contains(&victim), "{r}");
}

#[test]
fn flipped_payload_byte_is_caught_by_the_checksum() {
    // rkyv validation cannot see a wrong byte inside a Vec<u8>; the test
    // message's checksum does. This keeps the verifier itself honest.
    let (r, _) = damaged_record("payload", Damage::PayloadByte);
    assert_eq!(r.errors.len(), 1, "{r}");
    assert_eq!(r.errors[0].kind, "content", "{r}");
    assert!(
        r.errors[0].detail.contains(&format!("seq {DAMAGED_AT}")),
        "{r}"
    );
    assert_eq!(r.publisher(1).received, COUNT, "{r}");
}

/// A damaged copy of a real segment and the error kind opening it must give.
struct Variant {
    name: &'static str,
    kind: &'static str,
    bytes: Vec<u8>,
}

fn variants(real: &[u8]) -> Vec<Variant> {
    let set = |field: HeaderField, value: &[u8]| {
        let mut b = real.to_vec();
        let at = field.offset() as usize;
        b[at..at + value.len()].copy_from_slice(value);
        b
    };
    let data_offset = layout::DATA_OFFSET;
    let mut flipped_magic = real.to_vec();
    flipped_magic[3] ^= 0xff;
    let mut padded = real.to_vec();
    padded.extend_from_slice(&[0u8; 4096]);
    vec![
        Variant {
            name: "magic",
            kind: "not-a-segment",
            bytes: flipped_magic,
        },
        Variant {
            name: "version",
            kind: "version-mismatch",
            bytes: set(HeaderField::LayoutVersion, &99u32.to_le_bytes()),
        },
        Variant {
            name: "endian",
            kind: "corrupt",
            bytes: set(HeaderField::Endian, &0x0403_0201u32.to_le_bytes()),
        },
        Variant {
            name: "capacity",
            kind: "corrupt",
            bytes: set(HeaderField::Capacity, &3000u64.to_le_bytes()),
        },
        Variant {
            name: "slots",
            kind: "corrupt",
            bytes: set(HeaderField::SlotCount, &0u32.to_le_bytes()),
        },
        Variant {
            name: "data-offset",
            kind: "corrupt",
            bytes: set(
                HeaderField::DataOffset,
                &(data_offset as u64 + 4096).to_le_bytes(),
            ),
        },
        Variant {
            name: "max-message",
            kind: "corrupt",
            bytes: set(HeaderField::MaxMessage, &u64::MAX.to_le_bytes()),
        },
        Variant {
            name: "policy",
            kind: "corrupt",
            bytes: set(HeaderField::Policy, &9u32.to_le_bytes()),
        },
        Variant {
            name: "type-name-len",
            kind: "corrupt",
            bytes: set(HeaderField::TypeNameLen, &5000u32.to_le_bytes()),
        },
        Variant {
            name: "truncated-half",
            kind: "size-mismatch",
            bytes: real[..data_offset + (real.len() - data_offset) / 2].to_vec(),
        },
        Variant {
            name: "truncated-tiny",
            kind: "size-mismatch",
            bytes: real[..100].to_vec(),
        },
        Variant {
            name: "padded",
            kind: "size-mismatch",
            bytes: padded,
        },
    ]
}

fn place(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let tmp = dir.join(format!(".{name}.tmp"));
    let path = dir.join(format!("{name}.ring"));
    fs::write(&tmp, bytes).unwrap();
    fs::rename(&tmp, &path).unwrap();
    path
}

/// Header damage and truncation, on copies of a ring a child process wrote:
/// opening gives the documented error; a running subscriber process reports
/// each damaged ring once, does not crash, and still reads the topic's
/// healthy publisher to the end.
#[test]
fn damaged_headers_and_truncated_files() {
    let env = TestEnv::new("headers", PEER, Duration::from_secs(60));
    let (_source, _, source_path) = lingering(&env, "source", "source", 1, 50);
    let real = fs::read(&source_path).unwrap();
    let variants = variants(&real);

    // Opening each copy directly.
    let scratch = env.root().join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    for v in &variants {
        let path = place(&scratch, &format!("copy-{}", v.name), &v.bytes);
        let err = RingReader::open(&path, StartAt::Oldest).expect_err(v.name);
        assert_eq!(bus_kind(&err), v.kind, "{}: {err}", v.name);
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
    // Not initialized: zero magic, and an empty file (after INIT_WAIT).
    let mut zero_magic = real.clone();
    zero_magic[..8].fill(0);
    for (name, bytes) in [("zero-magic", &zero_magic[..]), ("empty", &[][..])] {
        let path = place(&scratch, name, bytes);
        let err = RingReader::open(&path, StartAt::Oldest).expect_err(name);
        assert_eq!(bus_kind(&err), "not-initialized", "{name}: {err}");
    }
    // A sweep removes only segments it can identify as stale: none here.
    let before = fs::read_dir(&scratch).unwrap().count();
    shmbus_bus::sweep_topic(&scratch).unwrap();
    assert_eq!(fs::read_dir(&scratch).unwrap().count(), before);

    // A subscriber process meets them one by one while reading a healthy
    // publisher (one at a time, so each report can be matched to its file).
    let topic = "live";
    let (mut healthy, healthy_ring, _) = lingering(&env, "healthy", topic, 2, 100);
    let report = env.report_path("sub");
    let report_arg = report.display().to_string();
    let expect = (variants.len() + 1).to_string();
    let mut sub = env.peer(
        "sub",
        &[
            "subscribe",
            "--topic",
            topic,
            "--expect-publishers",
            &expect,
            "--count",
            "100",
            "--report",
            &report_arg,
        ],
    );
    sub.expect_line("subscribed", LINE_TIMEOUT);
    let dir = env.topic_dir(topic);
    for v in &variants {
        let ring = format!("evil-{}", v.name);
        place(&dir, &ring, &v.bytes);
        sub.expect_line(&format!("error kind={} ring={ring} ", v.kind), LINE_TIMEOUT);
    }
    healthy.close_stdin();
    healthy.wait_ok(LINE_TIMEOUT);
    let status = sub.wait(LINE_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(1),
        "errors, no crash: {}",
        sub.describe()
    );
    let r = sub.report(&report);
    assert_eq!(r.publisher(2).received, 100, "{r}");
    assert_eq!(r.gone.iter().collect::<Vec<_>>(), [&healthy_ring], "{r}");
    assert_eq!(r.broken.len(), variants.len(), "{r}");
    for v in &variants {
        assert_eq!(
            r.broken
                .get(&format!("evil-{}", v.name))
                .map(String::as_str),
            Some(v.kind),
            "{r}"
        );
    }
    assert_eq!(
        r.errors.len(),
        variants.len(),
        "one error per damaged ring:\n{r}"
    );
}

/// Regression: a damaged ring file in a topic must not make later
/// `Bus::subscriber` calls fail: it is reported once by a receive, and the
/// topic's healthy publishers are read.
#[test]
fn damaged_ring_does_not_block_new_subscribers() {
    let env = TestEnv::new("bad-create", PEER, Duration::from_secs(30));
    let topic = "t";
    let (_healthy, _, _) = lingering(&env, "healthy", topic, 2, 10);
    let mut bad = vec![0u8; 8192];
    bad[..8].copy_from_slice(b"garbage!");
    place(&env.topic_dir(topic), "evil", &bad);
    let mut sub = env
        .bus()
        .subscriber_with::<TestMsg>(topic, StartAt::Oldest, Default::default())
        .expect("subscribing must not fail because of one bad file");
    let mut errors = 0;
    let first = loop {
        match sub.recv_timeout(Duration::from_secs(5)) {
            Ok(m) => break m.seq.to_native(),
            Err(shmbus::Error::Bus(shmbus_bus::Error::NotASegment(_))) => errors += 1,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(
        (first, errors),
        (0, 1),
        "healthy publisher read, bad file reported once"
    );
}

/// Regression: two bad rings found in one scan are both reported.
#[test]
fn two_bad_rings_in_one_scan_are_both_reported() {
    let env = TestEnv::new("bad-scan", PEER, Duration::from_secs(30));
    let topic = "t";
    let mut sub = env.bus().subscriber::<TestMsg>(topic).unwrap();
    let dir = env.topic_dir(topic);
    let mut bad = vec![0u8; 8192];
    bad[..8].copy_from_slice(b"garbage!");
    place(&dir, "evil-a", &bad);
    place(&dir, "evil-b", &bad);
    let mut errors = Vec::new();
    for _ in 0..20 {
        match sub.recv_timeout(Duration::from_millis(60)) {
            Err(shmbus::Error::Bus(e)) => errors.push(e.to_string()),
            Err(shmbus::Error::Timeout(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(errors.len(), 2, "both bad rings reported: {errors:?}");
}

/// Regression: a `.ring` file that never gets initialized (zero magic or
/// empty) is retried without blocking and reported exactly once, after
/// `INIT_WAIT`; it is not retried (and waited on) at every rescan.
#[test]
fn uninitialized_ring_file_is_reported_once() {
    let env = TestEnv::new("bad-init", PEER, Duration::from_secs(30));
    let topic = "t";
    let mut sub = env.bus().subscriber::<TestMsg>(topic).unwrap();
    place(&env.topic_dir(topic), "never-initialized", &[]);
    let mut reported = 0;
    let until = std::time::Instant::now() + 4 * shmbus_bus::INIT_WAIT;
    while std::time::Instant::now() < until {
        match sub.recv_timeout(Duration::from_millis(20)) {
            Err(shmbus::Error::Bus(shmbus_bus::Error::NotInitialized(_))) => reported += 1,
            Err(shmbus::Error::Timeout(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(reported, 1, "reported exactly once");
}
