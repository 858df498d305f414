//! Segment files: create/open, validation of corrupt, truncated, foreign and
//! wrong-version files, closing, and sweeping stale rings.

use std::{
    fs,
    os::unix::fs::{FileExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use shmbus_bus::{
    layout, sweep_topic, Error, Policy, ReadEvent, RingConfig, RingReader, RingWriter, StartAt,
    WaitStrategy,
};

/// A private directory under /dev/shm, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = PathBuf::from(format!("/dev/shm/shmbus-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn small() -> RingConfig {
    RingConfig {
        capacity: 1 << 16,
        max_message: 4096,
        slots: 4,
        ..RingConfig::default()
    }
}

fn open_err(path: &Path) -> Error {
    RingReader::open(path, StartAt::Latest).expect_err("open must fail")
}

#[test]
fn create_open_and_read_back() {
    let dir = TempDir::new("basic");
    let path = dir.path("p.ring");
    let mut w = RingWriter::create(&path, &small()).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut r = RingReader::open(&path, StartAt::Latest).unwrap();
    assert_eq!(r.info().capacity, 1 << 16);
    assert_eq!(r.info().publisher.pid, std::process::id());
    w.try_write(b"abc").unwrap();
    match r.try_read().unwrap() {
        ReadEvent::Message(m) => {
            assert_eq!(m.payload(), b"abc");
            assert_eq!(m.payload().as_ptr() as usize % 16, 0, "payload 16-aligned");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(r.try_read().unwrap(), ReadEvent::Empty));
    assert!(matches!(
        RingWriter::create(&path, &small()),
        Err(Error::AlreadyExists(_))
    ));
}

#[test]
fn full_ring_and_too_large() {
    let dir = TempDir::new("full");
    let path = dir.path("p.ring");
    let mut w = RingWriter::create(&path, &small()).unwrap();
    let _r = RingReader::open(&path, StartAt::Latest).unwrap();
    let mut n = 0;
    loop {
        match w.try_write(&[0u8; 1000]) {
            Ok(()) => n += 1,
            Err(Error::Full) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(n, (1 << 16) / 1024);
    assert!(matches!(
        w.write(
            &[0u8; 10],
            WaitStrategy::BusySpin,
            Some(Duration::from_millis(20))
        ),
        Err(Error::Timeout)
    ));
    assert!(matches!(
        w.try_write(&[0u8; 5000]),
        Err(Error::TooLarge {
            len: 5000,
            max: 4096
        })
    ));
    assert_eq!(w.stats().subscribers, 1);
    assert!(w.stats().full_events >= 1);
}

#[test]
fn closed_ring_drains_then_reports_closed_and_is_removed() {
    let dir = TempDir::new("close");
    let path = dir.path("p.ring");
    let mut w = RingWriter::create(&path, &small()).unwrap();
    let mut r = RingReader::open(&path, StartAt::Latest).unwrap();
    for i in 0..10u8 {
        w.try_write(&[i; 24]).unwrap();
    }
    drop(w);
    assert!(path.exists(), "a subscriber still reads it");
    for i in 0..10u8 {
        match r
            .read(WaitStrategy::default(), Some(Duration::from_secs(5)))
            .unwrap()
        {
            ReadEvent::Message(m) => assert_eq!(m.payload(), [i; 24]),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(r.try_read().unwrap(), ReadEvent::Closed));
    drop(r);
    assert!(!path.exists(), "last reader out removes the finished ring");
}

#[test]
fn not_a_segment_and_not_initialized() {
    let dir = TempDir::new("foreign");
    let path = dir.path("x.ring");
    fs::write(&path, vec![0x41u8; 8192]).unwrap();
    assert!(matches!(open_err(&path), Error::NotASegment(_)));
    fs::write(&path, vec![0u8; 8192]).unwrap();
    assert!(matches!(open_err(&path), Error::NotInitialized(_)));
    fs::write(&path, b"short").unwrap();
    assert!(matches!(open_err(&path), Error::SizeMismatch { .. }));
    fs::write(&path, b"").unwrap();
    assert!(matches!(open_err(&path), Error::NotInitialized(_)));
    assert!(matches!(
        open_err(&dir.path("missing.ring")),
        Error::NotFound(_)
    ));
}

/// Writes `value` at `offset` in a copy of a valid segment and opens it.
fn tampered(dir: &TempDir, offset: u64, value: &[u8]) -> Error {
    let src = dir.path("good.ring");
    if !src.exists() {
        let mut w = RingWriter::create(&src, &small()).unwrap();
        w.keep_file(true);
    }
    let dst = dir.path("bad.ring");
    fs::copy(&src, &dst).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&dst).unwrap();
    f.write_all_at(value, offset).unwrap();
    let err = open_err(&dst);
    fs::remove_file(&dst).unwrap();
    err
}

#[test]
fn corrupt_headers_are_refused_with_clear_errors() {
    let dir = TempDir::new("corrupt");
    // Field offsets follow `layout::SegmentHeader`.
    let e = tampered(&dir, 8, &99u32.to_le_bytes());
    assert!(
        matches!(
            e,
            Error::VersionMismatch {
                found: 99,
                expected: layout::LAYOUT_VERSION,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("same shmbus version"));
    // A ring of the first layout (one file per ring) names both layouts.
    let e = tampered(&dir, 8, &1u32.to_le_bytes());
    let text = e.to_string();
    assert!(matches!(e, Error::VersionMismatch { found: 1, .. }), "{e}");
    assert!(text.contains("one file per ring"), "{text}");
    assert!(text.contains("a data file and a control file"), "{text}");
    let e = tampered(&dir, 12, &0x0403_0201u32.to_le_bytes());
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    let e = tampered(&dir, 24, &12345u64.to_le_bytes()); // capacity
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    let e = tampered(&dir, 32, &(1u64 << 40).to_le_bytes()); // max message
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    let e = tampered(&dir, 40, &5000u32.to_le_bytes()); // slots
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    let e = tampered(&dir, 44, &7u32.to_le_bytes()); // policy
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    let e = tampered(&dir, 16, &4096u64.to_le_bytes()); // data offset
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    let e = tampered(&dir, 0, b"NOTSHMBU");
    assert!(matches!(e, Error::NotASegment(_)), "{e}");
}

#[test]
fn truncated_and_extended_files_are_refused() {
    let dir = TempDir::new("trunc");
    let path = dir.path("p.ring");
    let mut w = RingWriter::create(&path, &small()).unwrap();
    w.keep_file(true);
    drop(w);
    let full = fs::metadata(&path).unwrap().len();
    for len in [full - 4096, full / 2, 4096, full + 4096] {
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len).unwrap();
        let e = open_err(&path);
        assert!(matches!(e, Error::SizeMismatch { .. }), "len {len}: {e}");
    }
}

#[test]
fn corrupt_records_give_errors_not_panics() {
    let dir = TempDir::new("records");
    let path = dir.path("p.ring");
    let mut w = RingWriter::create(&path, &small()).unwrap();
    let mut r = RingReader::open(&path, StartAt::Latest).unwrap();
    w.try_write(&[1; 100]).unwrap();
    // Corrupt the length word of the first record (data starts at the page
    // after the slots).
    let data = layout::DATA_OFFSET as u64;
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&u32::MAX.to_le_bytes(), data + 8).unwrap();
    let e = r.try_read().expect_err("corrupt length");
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("length"), "{e}");
}

#[test]
fn overwrite_ring_never_blocks_and_counts_loss() {
    let dir = TempDir::new("overwrite");
    let path = dir.path("p.ring");
    let config = RingConfig {
        policy: Policy::Overwrite,
        ..small()
    };
    let mut w = RingWriter::create(&path, &config).unwrap();
    let mut r = RingReader::open(&path, StartAt::Latest).unwrap();
    for i in 0..2000u32 {
        w.try_write(&i.to_le_bytes().repeat(16)).unwrap();
    }
    let (mut got, mut lost) = (0u64, 0u64);
    loop {
        match r.try_read().unwrap() {
            ReadEvent::Message(m) => {
                let first = u32::from_le_bytes(m.payload()[..4].try_into().unwrap());
                assert_eq!(m.payload(), first.to_le_bytes().repeat(16));
                assert_eq!(m.sequence(), u64::from(first));
                got += 1;
            }
            ReadEvent::Gap { messages, .. } => lost += messages,
            ReadEvent::Empty => break,
            ReadEvent::Closed => unreachable!(),
        }
    }
    assert_eq!(got + lost, 2000);
    assert!(lost > 0);
}

#[test]
fn sweep_removes_rings_of_gone_publishers_only() {
    let dir = TempDir::new("sweep");
    let live = RingWriter::create(&dir.path("live.ring"), &small()).unwrap();
    let mut gone = RingWriter::create(&dir.path("gone.ring"), &small()).unwrap();
    gone.keep_file(true);
    drop(gone);
    let mut read = RingWriter::create(&dir.path("read.ring"), &small()).unwrap();
    read.keep_file(true);
    let reader = RingReader::open(&dir.path("read.ring"), StartAt::Latest).unwrap();
    drop(read);
    fs::write(dir.path("notes.txt"), b"not ours").unwrap();
    assert_eq!(sweep_topic(&dir.0).unwrap(), 1);
    assert!(dir.path("live.ring").exists());
    assert!(!dir.path("gone.ring").exists());
    assert!(dir.path("read.ring").exists(), "still has a live reader");
    assert!(dir.path("notes.txt").exists());
    // The last reader out of a ring whose publisher is gone removes it.
    drop(reader);
    assert!(!dir.path("read.ring").exists());
    assert!(!dir.path("read.ctl").exists());
    assert_eq!(sweep_topic(&dir.0).unwrap(), 0);
    drop(live);
    assert_eq!(
        fs::read_dir(&dir.0).unwrap().count(),
        1,
        "only notes.txt is left"
    );
}

#[test]
fn a_blocked_send_counts_one_full_event_and_its_waiting_time() {
    let dir = TempDir::new("blocked");
    let path = dir.path("p.ring");
    let mut w = RingWriter::create(&path, &small()).unwrap();
    let _r = RingReader::open(&path, StartAt::Latest).unwrap();
    while w.try_write(&[0; 1000]).is_ok() {}
    let before = w.stats();
    assert_eq!(before.full_events, 1, "the try_write that failed");
    let wait = std::time::Duration::from_millis(60);
    assert!(matches!(
        w.write(&[0; 1000], WaitStrategy::default(), Some(wait)),
        Err(Error::Timeout)
    ));
    let after = w.stats();
    assert_eq!(after.full_events, 2, "one event per send, not per retry");
    assert!(after.blocked >= wait, "{:?}", after.blocked);
    assert!(after.blocked < wait * 20, "{:?}", after.blocked);
}
