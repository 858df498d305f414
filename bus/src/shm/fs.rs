//! Secure file-system operations for bus directories and segment files.
//!
//! The bus tree lives in a shared, often world-writable place (`/dev/shm`),
//! so nothing here follows a symbolic link it did not expect, and everything
//! opened is checked with `fstat` on the very descriptor that will be used
//! (never `stat` on a path and then `open`, which races):
//!
//! - [`ensure_dir`] creates the tree with `mkdirat` and walks it with
//!   `openat(O_DIRECTORY | O_NOFOLLOW)`, checking owner and mode of every
//!   directory from the bus root down.
//! - [`create_file`] creates with `O_CREAT | O_EXCL | O_NOFOLLOW`, sets the
//!   exact mode with `fchmod` (the umask does not change it) and reserves the
//!   file's pages, so a full tmpfs is `ENOSPC` at creation, not a SIGBUS on
//!   first touch.
//! - [`open_file`] opens with `O_NOFOLLOW` and checks the descriptor: a
//!   regular file, owned by this user, or shared through a group in
//!   [`Access::Group`] mode.
//! - [`rename_noreplace`] publishes a file under its real name without ever
//!   replacing one.
//!
//! Refusals are [`Error::Io`] with an [`io::ErrorKind::PermissionDenied`]
//! error whose message names the rule; the path is the offending component.

// Wired into segment creation, the registry and the sweep by the Core v2 work
// (issue 7); until then only the tests use some of it.

use std::{
    ffi::{CStr, CString, OsStr},
    fs::{File, OpenOptions, Permissions},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            ffi::OsStrExt,
            fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
        },
    },
    path::{Component, Path, PathBuf},
};

use crate::Error;

/// Who may use a bus tree: the owner only, or the owner's group too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Only the user that owns the tree (directories 0700, files 0600).
    Owner,
    /// The owner and the members of the tree's group (directories 0770,
    /// data files 0640, control files 0660).
    Group,
}

impl Access {
    /// The access a file or directory with permission bits `mode` was made
    /// for: [`Access::Group`] if it grants its group anything.
    pub(crate) fn from_file_mode(mode: u32) -> Self {
        if mode & 0o070 != 0 {
            Self::Group
        } else {
            Self::Owner
        }
    }

    /// Mode of the bus tree's directories: 0700 or 0770.
    pub(crate) fn dir_mode(self) -> u32 {
        match self {
            Self::Owner => 0o700,
            Self::Group => 0o770,
        }
    }

    /// Mode of a data file (`.ring`): 0600 or 0640 — the group may read,
    /// never write (only the publisher's user can change what readers read).
    pub(crate) fn data_mode(self) -> u32 {
        match self {
            Self::Owner => 0o600,
            Self::Group => 0o640,
        }
    }

    /// Mode of control and registry files (shared read-write): 0600 or 0660.
    pub(crate) fn ctl_mode(self) -> u32 {
        match self {
            Self::Owner => 0o600,
            Self::Group => 0o660,
        }
    }
}

/// What `fstat` said about an opened file (for callers' size checks; the
/// owner and mode are checked inside `open_file` and kept for tests).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct FileStat {
    /// Size in bytes.
    pub(crate) len: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub(crate) mode: u32,
    /// Owner.
    pub(crate) uid: u32,
    /// Group.
    pub(crate) gid: u32,
}

/// The default root of all buses for this user: `/dev/shm/shmbus-<euid>`.
///
/// Per user, so a second user on the host neither collides with nor can
/// squat another's tree (it is created 0700 and checked on every use).
pub(crate) fn default_root_for_user() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    PathBuf::from(format!("/dev/shm/shmbus-{euid}"))
}

/// An I/O error on `path`; running out of file descriptors (`EMFILE`,
/// `ENFILE`) gets a message naming the limit, since every shmbus handle keeps
/// its own descriptions open for its whole life.
fn io_error(path: &Path, e: io::Error) -> Error {
    let message = match e.raw_os_error() {
        Some(libc::EMFILE) => {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: `limit` is a valid, writable rlimit for the call.
            let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
                limit.rlim_cur.to_string()
            } else {
                "unknown".into()
            };
            format!(
                "{e}: this process reached its open file limit (RLIMIT_NOFILE soft limit {soft}); every shmbus publisher and subscriber keeps its files open, so raise the limit (ulimit -n) or use fewer handles"
            )
        }
        Some(libc::ENFILE) => format!(
            "{e}: the system-wide open file limit is reached (fs.file-max); close handles or raise it"
        ),
        _ => return Error::io(path, e),
    };
    Error::io(path, io::Error::other(message))
}

/// A refusal: `path` breaks `rule`.
fn refused(path: &Path, rule: String) -> Error {
    Error::io(path, io::Error::new(io::ErrorKind::PermissionDenied, rule))
}

/// The calling process's effective uid and all its groups.
struct Caller {
    /// Effective uid.
    euid: u32,
    /// Effective gid and supplementary groups.
    groups: Vec<libc::gid_t>,
}

impl Caller {
    /// The calling process (`geteuid`, `getegid`, `getgroups`).
    fn current() -> io::Result<Self> {
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut groups = vec![egid];
        loop {
            // SAFETY: a size of 0 with a null list only asks for the count.
            let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
            let Ok(n) = usize::try_from(n) else {
                return Err(io::Error::last_os_error());
            };
            let mut list: Vec<libc::gid_t> = vec![0; n];
            let size = libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
            // SAFETY: `list` has room for `size` (<= n) gids for the call.
            let got = unsafe { libc::getgroups(size, list.as_mut_ptr()) };
            match usize::try_from(got) {
                Ok(got) => {
                    list.truncate(got);
                    groups.extend(list);
                    return Ok(Self { euid, groups });
                }
                // EINVAL: the list grew between the two calls; ask again.
                Err(_) if io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) => {}
                Err(_) => return Err(io::Error::last_os_error()),
            }
        }
    }

    /// Whether `gid` is one of the caller's groups.
    fn in_group(&self, gid: u32) -> bool {
        self.groups.contains(&gid)
    }
}

/// A path component or path as a C string.
fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `fstat(fd)`.
fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is open for the call and `st` is writable memory of the
    // right size; fstat fills it completely on success.
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat returned 0, so it initialized `st`.
    Ok(unsafe { st.assume_init() })
}

/// `openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | extra)`, retried on `EINTR`.
fn open_dir_at(dirfd: RawFd, name: &CStr, extra: libc::c_int) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `dirfd` is an open directory or AT_FDCWD and `name` is a
        // NUL-terminated string, both valid for the call.
        let fd = unsafe {
            libc::openat(
                dirfd,
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | extra,
            )
        };
        if fd >= 0 {
            // SAFETY: openat returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Whether `name` in `dirfd` is a symbolic link (`fstatat(AT_SYMLINK_NOFOLLOW)`).
fn is_symlink_at(dirfd: RawFd, name: &CStr) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `dirfd` is an open directory, `name` NUL-terminated and `st`
    // writable memory of the right size, all valid for the call.
    let rc = unsafe {
        libc::fstatat(
            dirfd,
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    // SAFETY: fstatat returned 0, so it initialized `st`.
    rc == 0 && (unsafe { st.assume_init() }.st_mode & libc::S_IFMT) == libc::S_IFLNK
}

/// Checks an opened directory of the bus tree (see [`ensure_dir`]).
fn check_dir(
    fd: &OwnedFd,
    path: &Path,
    access: Access,
    caller: &Caller,
    above_root: bool,
) -> Result<(), Error> {
    let st = fstat(fd.as_raw_fd()).map_err(|e| Error::io(path, e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(refused(path, "is not a directory".into()));
    }
    let mode = st.st_mode & 0o7777;
    let owner_ok = st.st_uid == caller.euid
        || (access == Access::Group && caller.in_group(st.st_gid) && mode & 0o070 == 0o070);
    if !owner_ok {
        return Err(refused(
            path,
            match access {
                Access::Owner => format!(
                    "directory is owned by uid {}, not by this user (uid {}): refusing a tree another user controls",
                    st.st_uid, caller.euid
                ),
                Access::Group => format!(
                    "directory is owned by uid {} (mode {mode:04o}, gid {}), and is neither this user's (uid {}) nor rwx for one of its groups",
                    st.st_uid, st.st_gid, caller.euid
                ),
            },
        ));
    }
    let sticky = mode & libc::S_ISVTX != 0;
    if mode & 0o002 != 0 && !(above_root && sticky) {
        return Err(refused(
            path,
            format!("directory is writable by other users (mode {mode:04o})"),
        ));
    }
    Ok(())
}

/// Creates `dir` and missing parents (mode `access.dir_mode()`), never
/// following a symlink for any component it creates or checks, and checks
/// every existing component from the first one it created or the bus root
/// down (`fstat` on an `O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC` descriptor):
/// a directory, owned by the caller's euid (or, for [`Access::Group`], by
/// the euid or with a group of the caller's egid/supplementary groups that
/// has rwx), not writable by others unless sticky and above the root.
///
/// `dir` must be `root` or below it, with no `.`/`..` components below the
/// root. Components above the root that already exist (e.g. `/dev/shm`) are
/// the system's: they are traversed as they are (symlinks included) and not
/// checked. A directory it creates gets its mode with `fchmod`, so the umask
/// does not change it.
///
/// # Errors
///
/// - [`Error::InvalidConfig`] if `dir` is not under `root` or has `..`.
/// - [`Error::Io`] naming the offending component: a refusal
///   ([`io::ErrorKind::PermissionDenied`], the message names the rule: a
///   symbolic link, not a directory, owned by another user, writable by
///   others), or the failing system call's error.
pub(crate) fn ensure_dir(root: &Path, dir: &Path, access: Access) -> Result<(), Error> {
    let below = dir.strip_prefix(root).map_err(|_| {
        Error::InvalidConfig(format!(
            "{} is not inside the bus root {}",
            dir.display(),
            root.display()
        ))
    })?;
    if let Some(bad) = below
        .components()
        .find(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(Error::InvalidConfig(format!(
            "{} has a {:?} component below the bus root",
            dir.display(),
            bad.as_os_str()
        )));
    }
    let caller = Caller::current().map_err(|e| Error::io(dir, e))?;

    // (component, checked region starts here at the latest)
    let mut steps: Vec<(Component<'_>, bool)> = Vec::new();
    let root_components: Vec<_> = root.components().collect();
    for (i, c) in root_components.iter().enumerate() {
        steps.push((*c, i + 1 == root_components.len()));
    }
    steps.extend(below.components().map(|c| (c, true)));

    let (start, mut path) = if root.is_absolute() {
        (c"/", PathBuf::from("/"))
    } else {
        (c".", PathBuf::new())
    };
    let mut cur_fd = open_dir_at(libc::AT_FDCWD, start, 0).map_err(|e| io_error(&path, e))?;
    let mut checking = false;
    let mut at_or_below_root = false;
    let root_is_start = !root_components
        .iter()
        .any(|c| matches!(c, Component::Normal(_) | Component::ParentDir));
    if root_is_start {
        // The root is "/" or ".": check it as the root.
        check_dir(&cur_fd, root, access, &caller, false)?;
        checking = true;
        at_or_below_root = true;
    }

    for (component, is_root_or_below) in steps {
        let name = match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
            Component::ParentDir if !checking => OsStr::new(".."),
            Component::ParentDir => {
                return Err(Error::InvalidConfig(format!(
                    "the bus root {} has a \"..\" after a directory this call creates",
                    root.display()
                )))
            }
            Component::Normal(name) => name,
        };
        path.push(name);
        at_or_below_root |= is_root_or_below;
        checking |= at_or_below_root;
        let cname = cstring(name).map_err(|e| Error::io(&path, e))?;
        let nofollow = if checking { libc::O_NOFOLLOW } else { 0 };
        let opened = match open_dir_at(cur_fd.as_raw_fd(), &cname, nofollow) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // From the first component this call creates, everything is checked.
                checking = true;
                let created = mkdir_at(cur_fd.as_raw_fd(), &cname, access.dir_mode())
                    .map_err(|e| Error::io(&path, e))?;
                let fd = open_dir_at(cur_fd.as_raw_fd(), &cname, libc::O_NOFOLLOW);
                if let (true, Ok(fd)) = (created, &fd) {
                    // The umask may have removed bits: set the exact mode.
                    fchmod(fd.as_raw_fd(), access.dir_mode()).map_err(|e| Error::io(&path, e))?;
                }
                fd
            }
            other => other,
        };
        let fd = match opened {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                return Err(if is_symlink_at(cur_fd.as_raw_fd(), &cname) {
                    refused(&path, "is a symbolic link: refusing to follow it".into())
                } else {
                    refused(&path, "is not a directory".into())
                });
            }
            Err(e) => return Err(io_error(&path, e)),
        };
        if checking {
            check_dir(&fd, &path, access, &caller, !at_or_below_root)?;
        }
        cur_fd = fd;
    }
    Ok(())
}

/// `mkdirat(dirfd, name, mode)`: `Ok(true)` if created, `Ok(false)` if
/// something already exists under that name (a racing creator).
fn mkdir_at(dirfd: RawFd, name: &CStr, mode: u32) -> io::Result<bool> {
    // SAFETY: `dirfd` is an open directory and `name` NUL-terminated, both
    // valid for the call. mkdirat never follows a symlink at `name`.
    if unsafe { libc::mkdirat(dirfd, name.as_ptr(), mode as libc::mode_t) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EEXIST) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// `fchmod(fd, mode)`.
fn fchmod(fd: RawFd, mode: u32) -> io::Result<()> {
    // SAFETY: `fd` is an open descriptor for the call.
    if unsafe { libc::fchmod(fd, mode as libc::mode_t) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes `path` if it still names the file open as `file` (an error path
/// never removes a file that someone else put there meanwhile).
fn remove_if_same(path: &Path, file: &File) {
    if let (Ok(open), Ok(named)) = (file.metadata(), std::fs::symlink_metadata(path)) {
        if open.dev() == named.dev() && open.ino() == named.ino() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Reserves bytes `0..len` of `file`: `fallocate(mode 0)`, or `ftruncate`
/// where the file system does not support it.
fn reserve(file: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let off_len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file length beyond i64::MAX"))?;
    loop {
        // SAFETY: the descriptor is open for writing for the borrow of `file`.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off_len) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            // The file system cannot reserve: size the file; its pages are
            // then allocated on first touch (a full file system is SIGBUS).
            Some(libc::EOPNOTSUPP) => return file.set_len(len),
            _ => return Err(err),
        }
    }
}

/// Creates a new file with `O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC |
/// O_RDWR` and `mode` (`fchmod` after create so the umask does not change
/// it), then reserves `len` bytes with `fallocate(0)` so a full tmpfs is
/// `ENOSPC` here, never SIGBUS later.
///
/// On a file system without `fallocate` (`EOPNOTSUPP`; tmpfs and hugetlbfs
/// have it) the file is only sized with `ftruncate`: its pages are then
/// allocated on first touch, and running out of space is a SIGBUS there.
/// On any error after the file was created, it is removed again.
///
/// # Errors
///
/// [`Error::AlreadyExists`] if anything (a symlink included) has the name;
/// [`Error::Io`] otherwise, e.g. `ENOSPC` when the file system is full.
pub(crate) fn create_file(path: &Path, mode: u32, len: u64) -> Result<File, Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true) // O_CREAT | O_EXCL
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW) // std adds O_CLOEXEC
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Error::AlreadyExists(path.to_path_buf()),
            _ => io_error(path, e),
        })?;
    let finish = file
        .set_permissions(Permissions::from_mode(mode)) // fchmod
        .and_then(|()| reserve(&file, len));
    match finish {
        Ok(()) => Ok(file),
        Err(e) => {
            remove_if_same(path, &file);
            Err(Error::io(path, e))
        }
    }
}

/// Opens an existing file with `O_NOFOLLOW | O_CLOEXEC` (read-only or
/// read-write), then `fstat`-checks the *same descriptor*: a regular file,
/// owned by the caller's euid, or — for [`Access::Group`] — whose group is
/// one of the caller's groups and whose mode grants that group the needed
/// access (read, and write if `writable`). In [`Access::Owner`] mode a file
/// owned by another user, or writable by group or others, is refused; in
/// either mode a file writable by others is refused.
///
/// The open also uses `O_NONBLOCK | O_NOCTTY` so that a FIFO or device put
/// under the name is refused, not waited on (the flag is cleared again).
///
/// # Errors
///
/// [`Error::NotFound`] if the file is missing; [`Error::Io`] with
/// [`io::ErrorKind::PermissionDenied`] naming the rule for a refusal (a
/// symbolic link, not a regular file, owner, mode); [`Error::Io`] otherwise.
pub(crate) fn open_file(
    path: &Path,
    writable: bool,
    access: Access,
) -> Result<(File, FileStat), Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY) // std adds O_CLOEXEC
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => Error::NotFound(path.to_path_buf()),
            Some(libc::ELOOP) => refused(path, "is a symbolic link: refusing to follow it".into()),
            _ => io_error(path, e),
        })?;
    let st = fstat(file.as_raw_fd()).map_err(|e| Error::io(path, e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(refused(path, "is not a regular file".into()));
    }
    let caller = Caller::current().map_err(|e| Error::io(path, e))?;
    let mode = st.st_mode & 0o7777;
    if mode & 0o002 != 0 {
        return Err(refused(
            path,
            format!("file is writable by other users (mode {mode:04o})"),
        ));
    }
    match access {
        Access::Owner => {
            if st.st_uid != caller.euid {
                return Err(refused(
                    path,
                    format!(
                        "file is owned by uid {}, not by this user (uid {}): refusing another user's file (use group access to share a bus)",
                        st.st_uid, caller.euid
                    ),
                ));
            }
            if mode & 0o022 != 0 {
                return Err(refused(
                    path,
                    format!(
                        "file is writable by group or others (mode {mode:04o}) in owner-only mode"
                    ),
                ));
            }
        }
        Access::Group => {
            let needed = if writable { 0o060 } else { 0o040 };
            if st.st_uid != caller.euid && !(caller.in_group(st.st_gid) && mode & needed == needed)
            {
                return Err(refused(
                    path,
                    format!(
                        "file is owned by uid {} (gid {}, mode {mode:04o}) and does not grant {} to a group of this user (uid {})",
                        st.st_uid,
                        st.st_gid,
                        if writable { "read-write access" } else { "read access" },
                        caller.euid
                    ),
                ));
            }
        }
    }
    clear_nonblock(&file).map_err(|e| Error::io(path, e))?;
    let stat = FileStat {
        len: u64::try_from(st.st_size).unwrap_or(0),
        mode,
        uid: st.st_uid,
        gid: st.st_gid,
    };
    Ok((file, stat))
}

/// Clears `O_NONBLOCK` on `file`'s description.
fn clear_nonblock(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is open for the borrow of `file`; F_GETFL takes no argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL takes an int of flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Renames `from` to `to` without replacing (`renameat2(RENAME_NOREPLACE)`);
/// an existing `to` is [`Error::AlreadyExists`]`(to)`.
///
/// Where the file system does not support the flag (`EINVAL`), it falls back
/// to `link` + `unlink`, which does not replace either.
///
/// # Errors
///
/// [`Error::AlreadyExists`] as above; [`Error::Io`] on `from` otherwise.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> Result<(), Error> {
    let cfrom = cstring(from.as_os_str()).map_err(|e| Error::io(from, e))?;
    let cto = cstring(to.as_os_str()).map_err(|e| Error::io(to, e))?;
    // SAFETY: both paths are NUL-terminated strings valid for the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cfrom.as_ptr(),
            libc::AT_FDCWD,
            cto.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let mut err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EINVAL) {
        err = match std::fs::hard_link(from, to) {
            Ok(()) => return std::fs::remove_file(from).map_err(|e| Error::io(from, e)),
            Err(e) => e,
        };
    }
    match err.raw_os_error() {
        Some(libc::EEXIST) => Err(Error::AlreadyExists(to.to_path_buf())),
        _ => Err(Error::io(from, err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::lock::test_support::{child_role, run_child, TestDir};
    use std::os::unix::fs::symlink;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn chown(path: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
    }

    /// The io error's message (the rule), panicking on other variants.
    fn io_msg(e: &Error, path: &Path) -> String {
        match e {
            Error::Io { path: p, source } => {
                assert_eq!(p, path, "error names {}: {e}", p.display());
                source.to_string()
            }
            other => panic!("expected Io on {}, got {other:?}", path.display()),
        }
    }

    fn egid() -> u32 {
        // SAFETY: getegid has no preconditions.
        unsafe { libc::getegid() }
    }

    #[test]
    fn access_modes() {
        assert_eq!(Access::from_file_mode(0o600), Access::Owner);
        assert_eq!(Access::from_file_mode(0o100600), Access::Owner);
        assert_eq!(Access::from_file_mode(0o640), Access::Group);
        assert_eq!(Access::from_file_mode(0o770), Access::Group);
        assert_eq!(
            (
                Access::Owner.dir_mode(),
                Access::Owner.data_mode(),
                Access::Owner.ctl_mode()
            ),
            (0o700, 0o600, 0o600)
        );
        assert_eq!(
            (
                Access::Group.dir_mode(),
                Access::Group.data_mode(),
                Access::Group.ctl_mode()
            ),
            (0o770, 0o640, 0o660)
        );
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            default_root_for_user(),
            PathBuf::from(format!("/dev/shm/shmbus-{euid}"))
        );
    }

    #[test]
    fn ensure_dir_creates_with_mode_and_is_idempotent() {
        let t = TestDir::new("fs");
        for (name, access) in [("owner", Access::Owner), ("group", Access::Group)] {
            let root = t.path().join(name).join("root"); // parent missing too
            let dir = root.join("bus").join("topic");
            ensure_dir(&root, &dir, access).unwrap();
            for p in [
                t.path().join(name),
                root.clone(),
                root.join("bus"),
                dir.clone(),
            ] {
                assert_eq!(mode_of(&p), access.dir_mode(), "{}", p.display());
            }
            ensure_dir(&root, &dir, access).unwrap();
            ensure_dir(&root, &root, access).unwrap();
        }
    }

    #[test]
    fn ensure_dir_refuses_symlinked_directories() {
        let t = TestDir::new("fs");
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        chmod(&elsewhere, 0o700);
        let root = t.path().join("root");
        ensure_dir(&root, &root, Access::Owner).unwrap();
        symlink(&elsewhere, root.join("bus")).unwrap();
        let e = ensure_dir(&root, &root.join("bus").join("topic"), Access::Owner).unwrap_err();
        assert!(
            io_msg(&e, &root.join("bus")).contains("symbolic link"),
            "{e}"
        );
        assert!(!elsewhere.join("topic").exists());
        // The root itself a symlink.
        let link_root = t.path().join("link-root");
        symlink(&elsewhere, &link_root).unwrap();
        let e = ensure_dir(&link_root, &link_root.join("bus"), Access::Owner).unwrap_err();
        assert!(io_msg(&e, &link_root).contains("symbolic link"), "{e}");
        // A dangling symlink is not created through either.
        std::fs::remove_file(root.join("bus")).unwrap();
        symlink(t.path().join("nowhere"), root.join("bus")).unwrap();
        let e = ensure_dir(&root, &root.join("bus"), Access::Owner).unwrap_err();
        assert!(
            io_msg(&e, &root.join("bus")).contains("symbolic link"),
            "{e}"
        );
        assert!(!t.path().join("nowhere").exists());
    }

    #[test]
    fn ensure_dir_refuses_files_bad_paths() {
        let t = TestDir::new("fs");
        let root = t.path().join("root");
        ensure_dir(&root, &root, Access::Owner).unwrap();
        std::fs::write(root.join("file"), b"").unwrap();
        let e = ensure_dir(&root, &root.join("file").join("x"), Access::Owner).unwrap_err();
        assert!(
            io_msg(&e, &root.join("file")).contains("not a directory"),
            "{e}"
        );
        for bad in [t.path().join("other"), root.join("a").join("..").join("b")] {
            let e = ensure_dir(&root, &bad, Access::Owner).unwrap_err();
            assert!(matches!(e, Error::InvalidConfig(_)), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn ensure_dir_refuses_writable_by_others_below_root_only() {
        let t = TestDir::new("fs");
        // Above the root, an existing sticky world-writable directory (like
        // /dev/shm or /tmp) is fine.
        let sticky = t.path().join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        chmod(&sticky, 0o1777);
        let root = sticky.join("root");
        ensure_dir(&root, &root.join("bus"), Access::Owner).unwrap();
        // Below: refused, sticky or not.
        for mode in [0o777, 0o1777, 0o703] {
            chmod(&root.join("bus"), mode);
            let e = ensure_dir(&root, &root.join("bus").join("t"), Access::Owner).unwrap_err();
            assert!(
                io_msg(&e, &root.join("bus")).contains("writable by other"),
                "{e}"
            );
        }
        chmod(&root.join("bus"), 0o700);
        // The root itself too.
        chmod(&root, 0o1777);
        let e = ensure_dir(&root, &root.join("bus"), Access::Owner).unwrap_err();
        assert!(io_msg(&e, &root).contains("writable by other"), "{e}");
    }

    #[test]
    fn ensure_dir_refuses_a_tree_of_another_user() {
        if !is_root() {
            println!("skipped: needs root to chown a directory to another uid");
            return;
        }
        let t = TestDir::new("fs");
        let root = t.path().join("root");
        let bus = root.join("bus");
        ensure_dir(&root, &bus, Access::Group).unwrap();
        chown(&bus, 65534, 65534);
        let e = ensure_dir(&root, &bus.join("t"), Access::Owner).unwrap_err();
        assert!(io_msg(&e, &bus).contains("owned by uid 65534"), "{e}");
        let e = ensure_dir(&root, &bus.join("t"), Access::Group).unwrap_err();
        assert!(io_msg(&e, &bus).contains("owned by uid 65534"), "{e}");
        // Group mode: another user's directory in one of our groups with rwx.
        chown(&bus, 65534, egid());
        ensure_dir(&root, &bus.join("t"), Access::Group).unwrap();
        chmod(&bus, 0o750);
        let e = ensure_dir(&root, &bus.join("t"), Access::Group).unwrap_err();
        assert!(io_msg(&e, &bus).contains("rwx"), "{e}");
        // Owner mode never accepts it.
        chmod(&bus, 0o770);
        assert!(ensure_dir(&root, &bus.join("t"), Access::Owner).is_err());
        // The root owned by another user is refused too.
        chown(&bus, 0, 0);
        chown(&root, 65534, 65534);
        let e = ensure_dir(&root, &bus, Access::Owner).unwrap_err();
        assert!(io_msg(&e, &root).contains("owned by uid 65534"), "{e}");
    }

    #[test]
    fn create_file_mode_len_and_no_replace() {
        let t = TestDir::new("fs");
        let path = t.path().join("f");
        let f = create_file(&path, 0o640, 1 << 20).unwrap();
        let md = f.metadata().unwrap();
        assert_eq!(md.len(), 1 << 20);
        assert!(md.blocks() * 512 >= 1 << 20, "pages are reserved");
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert!(matches!(
            create_file(&path, 0o600, 0),
            Err(Error::AlreadyExists(p)) if p == path
        ));
        // A symlink under the name is never followed, dangling or not.
        let link = t.path().join("link");
        let target = t.path().join("target");
        symlink(&target, &link).unwrap();
        assert!(matches!(
            create_file(&link, 0o600, 16),
            Err(Error::AlreadyExists(_))
        ));
        assert!(!target.exists());
        // The descriptor is close-on-exec.
        let f = create_file(&t.path().join("g"), 0o600, 0).unwrap();
        // SAFETY: the descriptor is open for the borrow of `f`.
        let fd_flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
    }

    const UMASK_TEST: &str = "shm::fs::tests::umask_child";

    /// Helper: in a re-run child (the umask is process-wide), creates a tree
    /// and a file under umask 0777 and checks their modes.
    #[test]
    fn umask_child() {
        let Some(dir) = child_role("umask") else {
            return;
        };
        // SAFETY: umask has no preconditions; this child process runs only this test.
        unsafe { libc::umask(0o777) };
        let root = dir.join("root");
        let topic = root.join("bus").join("topic");
        ensure_dir(&root, &topic, Access::Group).unwrap();
        for p in [&root, &root.join("bus"), &topic] {
            assert_eq!(mode_of(p), 0o770, "{}", p.display());
        }
        create_file(&topic.join("f"), 0o660, 4096).unwrap();
        assert_eq!(mode_of(&topic.join("f")), 0o660);
    }

    #[test]
    fn umask_does_not_change_modes() {
        let t = TestDir::new("fs");
        run_child(UMASK_TEST, "umask", t.path());
        assert_eq!(mode_of(&t.path().join("root/bus/topic/f")), 0o660);
    }

    const FD_LIMIT_TEST: &str = "shm::fs::tests::fd_limit_child";

    /// Helper: in a re-run child (the limit is process-wide), opens files
    /// under a soft RLIMIT_NOFILE of 32 until it runs out.
    #[test]
    fn fd_limit_child() {
        let Some(dir) = child_role("fd-limit") else {
            return;
        };
        let path = dir.join("f");
        drop(create_file(&path, 0o600, 0).unwrap());
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable rlimit for both calls.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
            limit.rlim_cur = 32;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
        let mut files = Vec::new();
        let e = loop {
            match open_file(&path, false, Access::Owner) {
                Ok(f) => files.push(f),
                Err(e) => break e,
            }
            assert!(files.len() <= 32, "the limit is not enforced");
        };
        let message = io_msg(&e, &path);
        assert!(message.contains("RLIMIT_NOFILE soft limit 32"), "{message}");
        files.pop();
        let e = create_file(&dir.join("g"), 0o600, 0);
        assert!(e.is_ok(), "one descriptor free again: {e:?}");
    }

    #[test]
    fn running_out_of_descriptors_names_the_limit() {
        let t = TestDir::new("fs");
        run_child(FD_LIMIT_TEST, "fd-limit", t.path());
    }

    /// A guard that unmounts a test mount point.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let c = cstring(self.0.as_os_str()).unwrap();
            // SAFETY: `c` is a NUL-terminated path valid for the call.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }

    #[test]
    fn create_file_on_a_full_tmpfs_is_enospc_and_leaves_nothing() {
        if !is_root() {
            println!("skipped: needs root to mount a small tmpfs");
            return;
        }
        let t = TestDir::new("fs");
        let mnt = t.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let target = cstring(mnt.as_os_str()).unwrap();
        let (src, fstype, opts) = (c"tmpfs", c"tmpfs", c"size=64k,mode=0700");
        // SAFETY: all strings are NUL-terminated and valid for the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            println!(
                "skipped: cannot mount a tmpfs here: {}",
                io::Error::last_os_error()
            );
            return;
        }
        let _unmount = Unmount(mnt.clone());
        let path = mnt.join("big");
        let e = create_file(&path, 0o600, 1 << 20).unwrap_err();
        match &e {
            Error::Io { path: p, source } => {
                assert_eq!(p, &path);
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{e}");
            }
            other => panic!("expected ENOSPC, got {other:?}"),
        }
        assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0, "no file left");
        // A file that fits is fine.
        create_file(&mnt.join("small"), 0o600, 16 << 10).unwrap();
    }

    #[test]
    fn open_file_checks() {
        let t = TestDir::new("fs");
        let path = t.path().join("f");
        drop(create_file(&path, 0o600, 100).unwrap());
        let (f, st) = open_file(&path, true, Access::Owner).unwrap();
        assert_eq!((st.len, st.mode), (100, 0o600));
        // SAFETY: geteuid has no preconditions.
        assert_eq!(st.uid, unsafe { libc::geteuid() });
        // SAFETY: the descriptor is open for the borrow of `f`.
        let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(fl & libc::O_NONBLOCK, 0, "O_NONBLOCK cleared");
        assert_eq!(fl & libc::O_ACCMODE, libc::O_RDWR);
        let (f, _) = open_file(&path, false, Access::Owner).unwrap();
        // SAFETY: the descriptor is open for the borrow of `f`.
        let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(fl & libc::O_ACCMODE, libc::O_RDONLY);

        // Missing.
        let missing = t.path().join("missing");
        assert!(matches!(
            open_file(&missing, false, Access::Owner),
            Err(Error::NotFound(p)) if p == missing
        ));
        // Symlink to a good file.
        let link = t.path().join("link");
        symlink(&path, &link).unwrap();
        let e = open_file(&link, false, Access::Owner).unwrap_err();
        assert!(io_msg(&e, &link).contains("symbolic link"), "{e}");
        // Not a regular file: a directory, a FIFO (not waited on).
        let e = open_file(t.path(), false, Access::Owner).unwrap_err();
        assert!(io_msg(&e, t.path()).contains("not a regular file"), "{e}");
        let fifo = t.path().join("fifo");
        let cfifo = cstring(fifo.as_os_str()).unwrap();
        // SAFETY: `cfifo` is a NUL-terminated path valid for the call.
        assert_eq!(unsafe { libc::mkfifo(cfifo.as_ptr(), 0o600) }, 0);
        let e = open_file(&fifo, false, Access::Owner).unwrap_err();
        assert!(io_msg(&e, &fifo).contains("not a regular file"), "{e}");

        // Group- or other-writable in owner mode.
        for mode in [0o620, 0o660, 0o602] {
            chmod(&path, mode);
            let e = open_file(&path, false, Access::Owner).unwrap_err();
            assert!(io_msg(&e, &path).contains("writable by"), "{mode:o}: {e}");
        }
        // Group mode accepts the group-shared modes of our own files, never
        // other-writable.
        chmod(&path, 0o660);
        open_file(&path, true, Access::Group).unwrap();
        chmod(&path, 0o666);
        assert!(open_file(&path, false, Access::Group).is_err());
    }

    #[test]
    fn open_file_refuses_another_users_file() {
        if !is_root() {
            println!("skipped: needs root to chown a file to another uid");
            return;
        }
        let t = TestDir::new("fs");
        let path = t.path().join("f");
        let f = create_file(&path, 0o600, 64).unwrap();
        // SAFETY: the descriptor is open for the borrow of `f`.
        assert_eq!(unsafe { libc::fchown(f.as_raw_fd(), 65534, 65534) }, 0);
        drop(f);
        for writable in [false, true] {
            let e = open_file(&path, writable, Access::Owner).unwrap_err();
            assert!(io_msg(&e, &path).contains("owned by uid 65534"), "{e}");
            assert!(open_file(&path, writable, Access::Group).is_err());
        }
        // Group mode: another user's file in our group, with the needed bits.
        chown(&path, 65534, egid());
        chmod(&path, 0o640);
        assert!(open_file(&path, false, Access::Owner).is_err());
        let (_, st) = open_file(&path, false, Access::Group).unwrap();
        assert_eq!((st.uid, st.gid, st.mode), (65534, egid(), 0o640));
        let e = open_file(&path, true, Access::Group).unwrap_err();
        assert!(io_msg(&e, &path).contains("read-write"), "{e}");
        chmod(&path, 0o660);
        open_file(&path, true, Access::Group).unwrap();
        chmod(&path, 0o600);
        assert!(open_file(&path, false, Access::Group).is_err());
    }

    #[test]
    fn rename_never_replaces() {
        let t = TestDir::new("fs");
        let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        assert!(matches!(rename_noreplace(&a, &b), Err(Error::AlreadyExists(p)) if p == b));
        assert_eq!(std::fs::read(&a).unwrap(), b"a");
        assert_eq!(std::fs::read(&b).unwrap(), b"b");
        rename_noreplace(&a, &c).unwrap();
        assert!(!a.exists());
        assert_eq!(std::fs::read(&c).unwrap(), b"a");
        let e = rename_noreplace(&a, &t.path().join("d")).unwrap_err();
        assert!(
            matches!(&e, Error::Io { path, source } if path == &a && source.kind() == io::ErrorKind::NotFound)
        );
    }
}
