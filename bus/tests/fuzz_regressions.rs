//! Inputs the fuzz targets (`fuzz/`, see `fuzz/README.md`) found, each
//! turned into a test that fails without its fix. The minimized inputs are
//! in `fuzz/regressions/<target>/`.

use std::{fs, os::unix::fs::FileExt, path::PathBuf};

use shmbus_bus::{layout, RingConfig, RingReader, RingWriter, StartAt};

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
    file.write_all_at(&7u32.to_le_bytes(), state_offset).unwrap();
    drop(reader);
    assert!(path.exists(), "the live publisher's data file was removed");
    assert!(path.with_extension("ctl").exists(), "its control file was removed");
    // The ring can still be opened (and its damaged word is then reported).
    assert!(RingReader::open(&path, StartAt::Oldest).is_ok());
}
