//! Set-up shared by the Core v2 real-process tests (issue 7): skipping with a
//! printed reason, pid namespaces (`unshare`), other uids (`setpriv`), a
//! small tmpfs mounted for one test, and listing what a bus leaves behind.
//!
//! Everything here runs real tools on the real kernel: a test that cannot
//! get what it needs (root, `unshare`) prints `SKIPPED: <reason>` on stderr
//! and returns, it never fakes the condition.

use std::{
    ffi::CString,
    io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// Files the design allows to stay in a bus directory once every process
/// using it has exited, by file name suffix. DESIGN.md ("One ring per
/// publisher"): "When the last process using a ring is gone, the ring is
/// gone: no files are left behind in the bus directory", which covers the
/// data file (`.ring`), the control file (`.ctl`) and the topic's registry
/// lock file alike. Directories (bus, topic) may stay. Empty on purpose.
pub const ALLOWED_LEFTOVERS: &[&str] = &[];

/// The data file suffix of the new layout (DESIGN: `<publisher-id>.ring`).
pub const DATA_EXT: &str = "ring";
/// The control file suffix of the new layout (DESIGN: `<publisher-id>.ctl`).
pub const CONTROL_EXT: &str = "ctl";

/// True if this process is root (uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Prints why a test is skipped and returns `true` if `missing` is `Some`.
/// Use as `if skip(test, reason) { return; }`.
pub fn skip(test: &str, missing: Option<String>) -> bool {
    match missing {
        Some(reason) => {
            eprintln!("SKIPPED: {test}: {reason}");
            true
        }
        None => false,
    }
}

/// `None` if pid namespaces can be made here (root, `unshare` present and
/// working), else the reason they cannot.
pub fn pidns_unavailable() -> Option<String> {
    if !is_root() {
        return Some("needs root for `unshare --pid`".into());
    }
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "sh", "-c", "echo $$"])
        .stdin(Stdio::null())
        .output();
    match out {
        Err(e) => Some(format!("`unshare` cannot be run: {e}")),
        Ok(o) if !o.status.success() => Some(format!(
            "`unshare --pid --fork --mount-proc` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(o) if String::from_utf8_lossy(&o.stdout).trim() != "1" => Some(format!(
            "child of `unshare --pid` is not pid 1: {:?}",
            String::from_utf8_lossy(&o.stdout)
        )),
        Ok(_) => None,
    }
}

/// The command prefix that runs a program as pid 1 of a new pid namespace
/// with its own `/proc` (a container's view), sharing `/dev/shm`. The
/// namespace dies with `unshare` (`--kill-child`).
pub const PIDNS: &[&str] = &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];

/// The host pid of the process `unshare` (pid `unshare_pid`) forked into the
/// new namespace: its only child. Waits up to `timeout` for it to exist.
pub fn namespace_init(unshare_pid: u32, timeout: Duration) -> Option<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let children =
            std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
                .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return Some(pid);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `signal` to `pid` (a process the test started, or its namespace's
/// init, found by [`namespace_init`]).
pub fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `/proc/<pid>` exists (a zombie counts).
pub fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Numeric ids for the two-user tests: no passwd entries are needed for
/// `setpriv`, so nothing on the machine is changed.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    /// The shared group of the group-mode bus.
    pub group: u32,
    /// The user that owns the bus tree and publishes.
    pub owner: u32,
    /// The second user, a member of `group` only as a supplementary group.
    pub other: u32,
}

/// The ids the two-user tests use.
pub const IDS: Ids = Ids {
    group: 64200,
    owner: 64201,
    other: 64202,
};

/// `None` if this process can run programs as other uids (root and
/// `setpriv` present), else why not.
pub fn other_users_unavailable() -> Option<String> {
    if !is_root() {
        return Some("needs root to run processes as another uid".into());
    }
    match Command::new("setpriv")
        .args([
            "--reuid",
            "64202",
            "--regid",
            "64202",
            "--clear-groups",
            "true",
        ])
        .status()
    {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("`setpriv` failed: {s}")),
        Err(e) => Some(format!("`setpriv` cannot be run: {e}")),
    }
}

/// Command prefix running a program as `uid` with primary group `gid` and
/// supplementary groups `groups`.
pub fn as_user(uid: u32, gid: u32, groups: &[u32]) -> Vec<String> {
    let mut v = vec![
        "setpriv".to_string(),
        "--reuid".into(),
        uid.to_string(),
        "--regid".into(),
        gid.to_string(),
    ];
    if groups.is_empty() {
        v.push("--clear-groups".into());
    } else {
        v.push("--groups".into());
        v.push(
            groups
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    v
}

/// Sets this process's umask (inherited by the children it starts) to the
/// common default 022, so that what a group-mode bus does under a typical
/// user's umask does not depend on the umask the test runner had. Returns
/// the previous one.
pub fn typical_umask() -> u32 {
    // SAFETY: umask(2) has no preconditions and cannot fail.
    unsafe { libc::umask(0o022) as u32 }
}

/// Creates `dir` owned by `uid:gid` with `mode`.
///
/// # Errors
///
/// File-system errors.
pub fn make_owned_dir(dir: &Path, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(mode))
}

/// A tmpfs mounted for one test, unmounted (and its directory removed) on
/// drop, even when the test fails.
#[derive(Debug)]
pub struct TmpfsMount {
    dir: PathBuf,
}

impl TmpfsMount {
    /// Mounts a tmpfs of `size` (as `mount -o size=`, e.g. `"256k"`) at
    /// `dir`, creating it. Needs root.
    ///
    /// # Errors
    ///
    /// Why the mount failed.
    pub fn new(dir: &Path, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir(dir);
            return Err(format!(
                "mount -t tmpfs -o size={size} {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Bytes free on the mount now.
    pub fn free_bytes(&self) -> u64 {
        let c = CString::new(self.dir.as_os_str().as_bytes()).expect("no NUL in path");
        // SAFETY: an all-zero statvfs is a valid out-parameter.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid C string and `st` a valid out-pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return 0;
        }
        st.f_bavail * st.f_frsize
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy (a child still has a file open): detach it anyway.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Every regular file (or symlink, socket, ...) under `dir`, recursively,
/// except directories and the suffixes in [`ALLOWED_LEFTOVERS`].
pub fn leftover_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                _ => {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !ALLOWED_LEFTOVERS.iter().any(|s| name.ends_with(s)) {
                        out.push(p);
                    }
                }
            }
        }
    }
    out.sort();
    out
}

/// Files in `dir` (not recursive) whose name ends with `.{ext}`.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// `(size, inode)` of a file, to see that it was neither truncated nor
/// replaced.
pub fn size_and_inode(path: &Path) -> io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.len(), m.ino()))
}

/// A short description of a directory tree (name, size, mode, owner), for
/// failure messages.
pub fn describe_tree(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if let Ok(m) = std::fs::symlink_metadata(&p) {
                out.push_str(&format!(
                    "\n  {} size={} mode={:o} uid={} gid={}",
                    p.display(),
                    m.len(),
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ));
                if m.is_dir() {
                    stack.push(p);
                }
            }
        }
    }
    out
}

/// A publisher's `stats published=<n> full=<n> evictions=<n> subscribers=<n>
/// blocked=<n>` line (the `peer publish --stats-every-ms` output), parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubStats {
    /// Messages published.
    pub published: u64,
    /// `WriterStats::full_events`: times the ring was found full.
    pub full: u64,
    /// Subscribers evicted.
    pub evictions: u64,
    /// Timed sends that timed out (the publisher waited that long).
    pub blocked: u64,
}

impl PubStats {
    /// Parses a `stats ...` line; `None` for any other line.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("stats ")?;
        let get = |k: &str| {
            rest.split_whitespace()
                .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        };
        Some(Self {
            published: get("published")?,
            full: get("full")?,
            evictions: get("evictions")?,
            blocked: get("blocked")?,
        })
    }
}
