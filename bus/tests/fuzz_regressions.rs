//! Inputs the fuzz targets (`fuzz/`, see `fuzz/README.md`) found, each
//! turned into a test that fails without its fix. The minimized inputs are
//! in `fuzz/regressions/<target>/`.

use std::{fs, os::unix::fs::FileExt, path::PathBuf};

use shmbus_bus::{layout, Error, RingConfig, RingReader, RingWriter, StartAt};

/// A private directory under /dev/shm, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/dev/shm/shmbus-test-{}-fuzzreg-{tag}",
            std::process::id()
        ));
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

/// `bus_reader` (`fuzz/regressions/bus_reader/garbage_writer_state`): a
/// `writer_state` word that is neither open nor closed (a damaged data
/// file) made the last subscriber out take a live publisher for gone and
/// remove its ring's files: later subscribers could not find the ring.
#[test]
fn garbage_writer_state_does_not_remove_a_live_ring() {
    let dir = TempDir::new("state");
    let path = dir.path("p.ring");
    let config = RingConfig {
        capacity: 4096,
        max_message: 1024,
        slots: 4,
        ..RingConfig::default()
    };
    let _writer = RingWriter::create(&path, &config).unwrap();
    let reader = RingReader::open(&path, StartAt::Oldest).unwrap();
    let state_offset =
        (layout::PRODUCER_OFFSET + std::mem::offset_of!(layout::Producer, writer_state)) as u64;
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&7u32.to_le_bytes(), state_offset)
        .unwrap();
    drop(reader);
    assert!(path.exists(), "the live publisher's data file was removed");
    assert!(
        path.with_extension("ctl").exists(),
        "its control file was removed"
    );
    // The ring can still be opened (and its damaged word is then reported).
    assert!(RingReader::open(&path, StartAt::Oldest).is_ok());
}

/// Writes a gap record of `count` lost messages at ring position `pos`
/// (first lost number's low half `seq_low`) into the data file at `path`,
/// as a damaged or hostile publisher could.
fn write_gap_record(file: &fs::File, pos: u64, seq_low: u32, count: u64) {
    let at = layout::DATA_OFFSET as u64 + pos;
    let meta = layout::meta_word(8, u64::from(seq_low));
    file.write_all_at(&count.to_le_bytes(), at + 16).unwrap();
    file.write_all_at(&meta.to_le_bytes(), at + 8).unwrap();
    file.write_all_at(&layout::gap_stamp(pos).to_le_bytes(), at)
        .unwrap();
}

/// `bus_reader` (`fuzz/regressions/bus_reader/drain_lost_overflow`): gap
/// records whose counts add up past 2^64 (the second one's numbering goes
/// back) overflowed `Drained::lost_messages`: a panic where overflow checks
/// are on, a wrapped count elsewhere. Now the second record is refused (a
/// gap's numbering never goes back, as for data records), so counts can
/// only add up to the distance the numbering moved; a single gap of
/// 2^64 - 2 is reported exactly.
#[test]
fn drained_gap_counts_never_overflow() {
    let dir = TempDir::new("gaps");
    let path = dir.path("p.ring");
    let config = RingConfig {
        capacity: 4096,
        max_message: 1024,
        slots: 4,
        ..RingConfig::default()
    };
    let _writer = RingWriter::create(&path, &config).unwrap();
    let mut reader = RingReader::open(&path, StartAt::Oldest).unwrap();
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let tail = (layout::PRODUCER_OFFSET + std::mem::offset_of!(layout::Producer, tail)) as u64;
    write_gap_record(&file, 0, 0, u64::MAX - 1);
    file.write_all_at(&32u64.to_le_bytes(), tail).unwrap();
    let d = reader.drain(16, |_| panic!("no message")).unwrap();
    assert_eq!((d.messages, d.lost_messages), (0, u64::MAX - 1));
    // The next one numbered from 0 again: refused, not added.
    write_gap_record(&file, 32, 0, u64::MAX - 1);
    file.write_all_at(&64u64.to_le_bytes(), tail).unwrap();
    match reader.drain(16, |_| panic!("no message")) {
        Err(Error::Corrupt { what, .. }) => assert!(what.contains("backwards"), "{what}"),
        other => panic!("a gap numbered backwards: {other:?}"),
    }
}
