//! Open-file-description locks: liveness without pids.
//!
//! An owner (a publisher, a subscriber slot, a registry entry) holds an
//! exclusive lock on one byte of a shared file; "dead" is "the lock can be
//! taken", and taking it is claiming. The locks are Linux open-file-description
//! locks (`fcntl(F_OFD_SETLK)`, Linux >= 3.15), not classic POSIX record locks:
//!
//! - A lock belongs to the *open file description* (one `open(2)`), not to the
//!   process. It is released by [`unlock`] or when the last descriptor of that
//!   description is closed — in particular when the owner dies, whatever pid
//!   namespace or container it runs in, as long as the file is shared.
//! - Locks held by the same description never conflict with each other: two
//!   owners in one process must each open the file themselves (not `dup` or
//!   `try_clone` a [`File`]), or they cannot tell each other apart.
//! - A child forked without exec inherits the description, so the lock stays
//!   held until the child exits too. Files are opened `O_CLOEXEC`, so an exec
//!   drops the child's copy.
//!
//! Every lock here is an exclusive (write) lock on whole bytes; probing uses
//! `F_OFD_GETLK`, which never takes anything. Locks are advisory: they bind
//! only code that asks. This works on tmpfs and bind-mounted `/dev/shm`, not
//! across VM or sandbox boundaries (Kata, gVisor).

// Wired into the segment and registry code by the Core v2 work (issue 7);
// until then only the tests use it.

use std::{fs::File, io, os::unix::io::AsRawFd};

/// Builds the `struct flock` for bytes `start..start + len`.
fn flock(kind: libc::c_int, start: u64, len: u64) -> io::Result<libc::flock> {
    let invalid = |what| io::Error::new(io::ErrorKind::InvalidInput, what);
    let l_start =
        libc::off_t::try_from(start).map_err(|_| invalid("lock offset beyond i64::MAX"))?;
    let l_len = libc::off_t::try_from(len).map_err(|_| invalid("lock length beyond i64::MAX"))?;
    if l_start.checked_add(l_len).is_none() {
        return Err(invalid("lock range ends beyond i64::MAX"));
    }
    // SAFETY: `flock` is a plain C struct of integers (and, on some targets,
    // padding); all-zero is a valid value, and l_pid must be 0 for OFD locks.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    // The `l_type`/`l_whence` fields are `c_short`; the constants fit.
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = l_start;
    fl.l_len = l_len;
    Ok(fl)
}

/// `fcntl(fd, cmd, &mut fl)`, retried on `EINTR`.
fn fcntl_lock(file: &File, cmd: libc::c_int, fl: &mut libc::flock) -> io::Result<()> {
    loop {
        // SAFETY: the descriptor is open for the borrow of `file`, and `fl`
        // points to a valid, writable `struct flock` for the whole call (the
        // kernel writes it back only for F_OFD_GETLK).
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), cmd, fl as *mut libc::flock) };
        if rc != -1 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Tries to take the exclusive OFD lock on byte `byte` of `file` (non-blocking).
///
/// `Ok(true)`: taken (held until [`unlock`] or the description's last close);
/// `Ok(false)`: another open file description holds it (`EAGAIN`/`EACCES`).
/// Taking a lock this description already holds succeeds (locks of one
/// description never conflict). Needs Linux >= 3.15 (`F_OFD_SETLK`).
///
/// # Errors
///
/// Any other `fcntl` error as an [`io::Error`]: `ENOLCK` (the kernel's lock
/// table is full), `EBADF` (`file` not open for writing: a write lock needs
/// `O_RDWR` or `O_WRONLY`), `EINVAL` (kernel without OFD locks, or `byte`
/// beyond `i64::MAX`).
pub(crate) fn try_lock(file: &File, byte: u64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK, byte, 1)?;
    match fcntl_lock(file, libc::F_OFD_SETLK, &mut fl) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Tries to take the exclusive OFD lock on every byte of `start..start + len`
/// at once (non-blocking): `Ok(false)` if any byte is held by another
/// description. Released like [`try_lock`]'s.
///
/// # Errors
///
/// As [`try_lock`].
pub(crate) fn try_lock_range(file: &File, start: u64, len: u64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK, start, len)?;
    match fcntl_lock(file, libc::F_OFD_SETLK, &mut fl) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Releases a lock taken with [`try_lock`] on this description.
///
/// Releasing a byte this description does not hold is a no-op (it never
/// touches another description's lock).
///
/// # Errors
///
/// `fcntl` errors as an [`io::Error`] (`EBADF`, `EINVAL` as for [`try_lock`]).
pub(crate) fn unlock(file: &File, byte: u64) -> io::Result<()> {
    let mut fl = flock(libc::F_UNLCK, byte, 1)?;
    fcntl_lock(file, libc::F_OFD_SETLK, &mut fl)
}

/// Whether any other open file description holds a lock on any byte of
/// `start..start+len` (`F_OFD_GETLK`; does not take anything).
///
/// Locks held by `file`'s own description are not reported (they do not
/// conflict). An empty range (`len == 0`) is never locked. The answer can be
/// stale by the time it is used: only [`try_lock`] claims.
///
/// # Errors
///
/// `fcntl` errors as an [`io::Error`] (`EBADF`, `EINVAL` as for [`try_lock`]).
pub(crate) fn is_locked(file: &File, start: u64, len: u64) -> io::Result<bool> {
    if len == 0 {
        // l_len == 0 would mean "to the end of the file" to the kernel.
        return Ok(false);
    }
    let mut fl = flock(libc::F_WRLCK, start, len)?;
    fcntl_lock(file, libc::F_OFD_GETLK, &mut fl)?;
    // The kernel writes back the first conflicting lock, or F_UNLCK if none.
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Helpers shared by the `shm` unit tests: private directories under
/// `/dev/shm` and child processes that re-run the test binary.
#[cfg(test)]
#[allow(dead_code)] // each helper is used by some of the `shm` modules' tests
pub(crate) mod test_support {
    use std::{
        io::{BufRead, BufReader},
        path::{Path, PathBuf},
        process::{Child, Command, Stdio},
        time::Duration,
    };

    use crate::sync::{AtomicU32, Ordering};

    /// A private directory under `/dev/shm`, removed on drop.
    #[derive(Debug)]
    pub(crate) struct TestDir(PathBuf);

    impl TestDir {
        /// Creates `/dev/shm/shmbus-test-<tag>-<pid>-<n>` (mode 0700).
        pub(crate) fn new(tag: &str) -> Self {
            // Relaxed: only uniqueness of the counter value matters.
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = PathBuf::from(format!(
                "/dev/shm/shmbus-test-{tag}-{}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir(&path).unwrap();
            Self(path)
        }

        /// The directory.
        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Environment variable that tells a re-run test binary which helper to be.
    pub(crate) const CHILD_ENV: &str = "SHMBUS_TEST_CHILD";
    /// Environment variable carrying the helper's argument (a path).
    pub(crate) const CHILD_ARG_ENV: &str = "SHMBUS_TEST_CHILD_ARG";
    /// The line a helper prints once it holds what it was asked to hold.
    pub(crate) const READY: &str = "SHMBUS-CHILD-READY";

    /// The helper role and argument if this process is a re-run child for
    /// `role`, else `None` (the test is then a no-op in the parent run).
    pub(crate) fn child_role(role: &str) -> Option<PathBuf> {
        (std::env::var(CHILD_ENV).ok()? == role)
            .then(|| PathBuf::from(std::env::var_os(CHILD_ARG_ENV).unwrap()))
    }

    /// A child running test `test` (full path, e.g. `shm::lock::tests::x`)
    /// of this test binary as helper `role` with `arg`; returns once it
    /// printed [`READY`] (panics after 30 s). Kill it with `Child::kill`
    /// (SIGKILL) and `wait` for it.
    pub(crate) fn spawn_child(test: &str, role: &str, arg: &Path) -> Child {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, role)
            .env(CHILD_ARG_ENV, arg)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads until EOF so the child never blocks on a full pipe; libtest
        // prints "test <name> ... " before the helper's line, on the same line.
        std::thread::spawn(move || {
            for line in out.lines() {
                match line {
                    Ok(line) if line.trim_end().ends_with(READY) => {
                        let _ = tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let status = child.wait().unwrap();
            panic!("child {role} was not ready within 30 s ({status})");
        }
        child
    }

    /// Runs test `test` of this test binary as helper `role` with `arg` to
    /// completion (for process-wide state such as the umask); panics unless
    /// it succeeds.
    pub(crate) fn run_child(test: &str, role: &str, arg: &Path) {
        let status = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, role)
            .env(CHILD_ARG_ENV, arg)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "child {role} failed: {status}");
    }

    /// In a helper child: says it is ready, then sleeps until killed.
    pub(crate) fn ready_and_wait() -> ! {
        use std::io::Write;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "{READY}").unwrap();
        stdout.flush().unwrap();
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{child_role, ready_and_wait, spawn_child, TestDir};
    use super::*;
    use std::fs::OpenOptions;

    fn open(path: &std::path::Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    #[test]
    fn two_descriptions_in_one_process_conflict() {
        let dir = TestDir::new("lock");
        let path = dir.path().join("f");
        let (a, b) = (open(&path), open(&path));
        assert!(try_lock(&a, 3).unwrap());
        assert!(try_lock(&a, 3).unwrap(), "own lock never conflicts");
        assert!(!try_lock(&b, 3).unwrap());
        assert!(try_lock(&b, 4).unwrap(), "other bytes are free");
        assert!(!try_lock(&a, 4).unwrap());
        unlock(&a, 3).unwrap();
        assert!(try_lock(&b, 3).unwrap());
        // Unlocking a byte this description does not hold leaves b's lock.
        unlock(&a, 3).unwrap();
        assert!(!try_lock(&a, 3).unwrap());
    }

    #[test]
    fn close_releases() {
        let dir = TestDir::new("lock");
        let path = dir.path().join("f");
        let (a, b) = (open(&path), open(&path));
        assert!(try_lock(&a, 0).unwrap());
        let a2 = a.try_clone().unwrap(); // same description
        drop(a);
        assert!(!try_lock(&b, 0).unwrap(), "a dup keeps the description");
        drop(a2);
        assert!(try_lock(&b, 0).unwrap(), "last close releases");
    }

    #[test]
    fn is_locked_sees_others_not_own() {
        let dir = TestDir::new("lock");
        let path = dir.path().join("f");
        let (a, b) = (open(&path), open(&path));
        assert!(!is_locked(&b, 0, 16).unwrap());
        assert!(try_lock(&a, 5).unwrap());
        assert!(is_locked(&b, 0, 16).unwrap());
        assert!(is_locked(&b, 5, 1).unwrap());
        assert!(!is_locked(&b, 0, 5).unwrap());
        assert!(!is_locked(&b, 6, 10).unwrap());
        assert!(!is_locked(&b, 5, 0).unwrap(), "empty range");
        assert!(!is_locked(&a, 0, 16).unwrap(), "own lock is not reported");
        // is_locked took nothing.
        assert!(try_lock(&b, 0).unwrap());
        unlock(&a, 5).unwrap();
        assert!(!is_locked(&b, 0, 16).unwrap());
    }

    #[test]
    fn out_of_range_is_invalid_input() {
        let dir = TestDir::new("lock");
        let a = open(&dir.path().join("f"));
        let e = try_lock(&a, u64::MAX).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = is_locked(&a, i64::MAX as u64, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn read_only_description_cannot_write_lock() {
        let dir = TestDir::new("lock");
        let path = dir.path().join("f");
        drop(open(&path));
        let ro = File::open(&path).unwrap();
        assert_eq!(
            try_lock(&ro, 0).unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
        // Probing works on a read-only description.
        assert!(!is_locked(&ro, 0, 1).unwrap());
    }

    const CHILD_TEST: &str = "shm::lock::tests::child_holds_lock";

    /// Helper: in a re-run child, takes byte 7 of the file and waits to be killed.
    #[test]
    fn child_holds_lock() {
        let Some(path) = child_role("lock-holder") else {
            return;
        };
        let f = open(&path);
        assert!(try_lock(&f, 7).unwrap());
        ready_and_wait();
    }

    #[test]
    fn killed_child_releases_lock() {
        let dir = TestDir::new("lock");
        let path = dir.path().join("f");
        drop(open(&path));
        let mut child = spawn_child(CHILD_TEST, "lock-holder", &path);
        let f = open(&path);
        assert!(is_locked(&f, 7, 1).unwrap());
        assert!(!try_lock(&f, 7).unwrap());
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(!is_locked(&f, 0, 8).unwrap());
        assert!(try_lock(&f, 7).unwrap());
    }
}
