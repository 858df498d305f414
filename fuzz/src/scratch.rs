//! A private directory on tmpfs for one fuzzer process: rings are real
//! files opened the normal way, and two fuzzers (or a fuzzer and the test
//! suite) never share a name.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

/// A directory removed when dropped.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Creates `/dev/shm/shmbus-fuzz-<target>-<pid>` (or under `$TMPDIR`
    /// when `/dev/shm` is missing), removing a leftover of the same name.
    pub fn new(target: &str) -> Self {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("shmbus-fuzz-{target}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Self { dir }
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens an existing file read-write, bypassing the bus (the harness plays
/// a hostile or concurrent writer with positioned writes, no mapping).
pub fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open a ring file read-write")
}

/// Writes `bytes` at `off` of `file`; panics on an I/O error (the harness's
/// own failure, not the code under test's).
pub fn write_at(file: &File, off: u64, bytes: &[u8]) {
    file.write_all_at(bytes, off).expect("write a ring file");
}

/// Creates (or truncates) `path` with mode 0600 and writes `bytes` to it:
/// a ring file as a peer would find it on disk.
pub fn write_file(path: &Path, bytes: &[u8]) {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("create a ring file");
    f.write_all(bytes).expect("write a ring file");
}
