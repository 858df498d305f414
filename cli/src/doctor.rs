//! `shmbus doctor`: checks the host for shmbus and says what to fix, each
//! with the command or setting.
//!
//! Every check reads the host as this process sees it (its mount, pid and
//! network namespaces, its limits), so run it where the services run: in
//! their container, under their user, in their network namespace.

use std::{
    ffi::CString,
    fmt::Write as _,
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::ExitCode,
};

use serde::Serialize;
use shmbus_bus::{list_rings, RingConfig};

use crate::{model, text::bytes, Where};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A running bridge's stats file (its `stats_file` setting), to check
    /// that its zero-copy sends complete without copying.
    #[arg(long, value_name = "FILE", default_value = "/run/shmbus-bridge.stats")]
    bridge_stats: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Info,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Info => "info",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

#[derive(Debug, Serialize)]
struct Check {
    check: &'static str,
    status: Status,
    detail: String,
    /// What to do about it (for warn and fail).
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn check(check: &'static str, status: Status, detail: String, fix: Option<String>) -> Check {
    Check {
        check,
        status,
        detail,
        fix,
    }
}

/// What the checks need to know about the bus tree.
#[derive(Debug, Default)]
struct Rings {
    count: u64,
    bytes: u64,
    largest: u64,
}

pub(crate) fn run(place: &Where, args: &Args) -> anyhow::Result<ExitCode> {
    let root = place.root();
    let rings = rings_under(&root);
    let checks = vec![
        shm_space(&root, &rings),
        tree_modes(&root),
        remove_ipc(),
        namespaces(),
        open_files(&rings),
        memlock(&rings),
        optmem(),
        bridge_zerocopy(&args.bridge_stats),
        thp(&root),
        futex_waitv(),
        io_uring(),
        membarrier(),
    ];
    let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    if place.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        let mut out = String::new();
        let _ = writeln!(out, "shmbus doctor: root {}", root.display());
        for c in &checks {
            let _ = writeln!(out, "{:<4}  {:<15} {}", c.status.label(), c.check, c.detail);
            if let Some(fix) = &c.fix {
                let word = if c.status >= Status::Warn {
                    "fix"
                } else {
                    "hint"
                };
                let _ = writeln!(out, "{:<4}  {:<15} {word}: {fix}", "", "");
            }
        }
        let fails = checks.iter().filter(|c| c.status == Status::Fail).count();
        let warns = checks.iter().filter(|c| c.status == Status::Warn).count();
        let _ = writeln!(
            out,
            "{} checks: {fails} failed, {warns} warning(s)",
            checks.len()
        );
        print!("{out}");
    }
    Ok(if worst == Status::Fail {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Every ring of every bus under `root`.
fn rings_under(root: &Path) -> Rings {
    let mut rings = Rings::default();
    let Ok(buses) = fs::read_dir(root) else {
        return rings;
    };
    for bus in buses.flatten().filter(|e| e.path().is_dir()) {
        let Ok(topics) = model::topic_names(&bus.path(), None) else {
            continue;
        };
        for topic in topics {
            for ring in list_rings(&bus.path().join(topic)).unwrap_or_default() {
                if let Ok(meta) = fs::metadata(&ring.data_path) {
                    rings.count += 1;
                    rings.bytes += meta.len();
                    rings.largest = rings.largest.max(meta.len());
                }
            }
        }
    }
    rings
}

/// The nearest existing directory at or above `path`.
fn existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

fn statfs(path: &Path) -> Option<libc::statfs> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: an all-zero statfs is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is writable for the call.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st)
}

const TMPFS_MAGIC: i64 = 0x0102_1994;
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

// statfs field types differ between targets.
#[allow(clippy::unnecessary_cast)]
fn shm_space(root: &Path, rings: &Rings) -> Check {
    let at = existing(root);
    let Some(st) = statfs(&at) else {
        return check(
            "shm-space",
            Status::Fail,
            format!("cannot statfs {}", at.display()),
            Some("create the root directory's file system (a tmpfs such as /dev/shm)".into()),
        );
    };
    let block = st.f_bsize as u64;
    let size = st.f_blocks as u64 * block;
    let free = st.f_bavail as u64 * block;
    let kind = st.f_type as i64;
    let fs = match kind {
        TMPFS_MAGIC => "tmpfs",
        HUGETLBFS_MAGIC => "hugetlbfs",
        _ => "not a tmpfs",
    };
    let one_ring = RingConfig::default().capacity + 2 * 4096;
    let detail = format!(
        "{} ({fs}): {} total, {} free; {} ring(s) on the bus root use {}",
        at.display(),
        bytes(size),
        bytes(free),
        rings.count,
        bytes(rings.bytes)
    );
    let grow = format!(
        "give the tmpfs room for the rings you configure: `mount -o remount,size=1G {}` (Docker: `--shm-size=1g`; Kubernetes: an emptyDir with medium: Memory)",
        at.display()
    );
    if free < one_ring {
        check(
            "shm-space",
            Status::Fail,
            format!(
                "{detail}; less than one default ring ({}) fits: creating publishers fails with ENOSPC",
                bytes(one_ring)
            ),
            Some(grow),
        )
    } else if kind != TMPFS_MAGIC && kind != HUGETLBFS_MAGIC {
        check(
            "shm-space",
            Status::Warn,
            format!("{detail}; rings on a disk file system are written back to disk"),
            Some("point SHMBUS_ROOT (or --root) at a tmpfs such as /dev/shm".into()),
        )
    } else if free < 16 * one_ring {
        check(
            "shm-space",
            Status::Warn,
            format!("{detail}; room for fewer than 16 default rings"),
            Some(grow),
        )
    } else {
        check("shm-space", Status::Ok, detail, None)
    }
}

fn tree_modes(root: &Path) -> Check {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !root.exists() {
        return check(
            "tree-modes",
            Status::Ok,
            format!(
                "{} does not exist yet (the first publisher creates it, mode 0700)",
                root.display()
            ),
            None,
        );
    }
    let mut problems = Vec::new();
    let mut fixes = Vec::new();
    let mut seen = 0;
    let mut visit = |path: &Path, is_dir: bool| {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return;
        };
        seen += 1;
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            problems.push((
                Status::Fail,
                format!(
                    "{} is a symbolic link, which the bus refuses",
                    path.display()
                ),
            ));
            fixes.push(format!("rm {}", path.display()));
            return;
        }
        if meta.uid() != me {
            problems.push((
                Status::Fail,
                format!(
                    "{} is owned by uid {}, not {me}, so the bus refuses it (unless shared with a group)",
                    path.display(),
                    meta.uid()
                ),
            ));
            fixes.push(format!("chown {me} {}", path.display()));
        }
        let want = if is_dir { "700" } else { "600" };
        if mode & 0o002 != 0 {
            problems.push((
                Status::Fail,
                format!(
                    "{} has mode {mode:04o}: writable by others, so the bus refuses it",
                    path.display()
                ),
            ));
            fixes.push(format!("chmod {want} {}", path.display()));
        } else if mode & 0o005 != 0 || (!is_dir && mode & 0o111 != 0) {
            problems.push((
                Status::Warn,
                format!(
                    "{} has mode {mode:04o}: other users can read it",
                    path.display()
                ),
            ));
            fixes.push(format!("chmod {want} {}", path.display()));
        }
    };
    visit(root, true);
    for bus in fs::read_dir(root).into_iter().flatten().flatten() {
        let bus_path = bus.path();
        let is_dir = bus.file_type().is_ok_and(|t| t.is_dir());
        visit(&bus_path, is_dir);
        if !is_dir {
            continue;
        }
        for topic in fs::read_dir(&bus_path).into_iter().flatten().flatten() {
            let topic_path = topic.path();
            let is_dir = topic.file_type().is_ok_and(|t| t.is_dir());
            visit(&topic_path, is_dir);
            if !is_dir {
                continue;
            }
            for file in fs::read_dir(&topic_path).into_iter().flatten().flatten() {
                let is_dir = file.file_type().is_ok_and(|t| t.is_dir());
                visit(&file.path(), is_dir);
            }
        }
    }
    if problems.is_empty() {
        check(
            "tree-modes",
            Status::Ok,
            format!(
                "{} and its {} entries: owned by uid {me}, no access for others",
                root.display(),
                seen - 1
            ),
            None,
        )
    } else {
        let n = problems.len();
        let worst = problems.iter().map(|p| p.0).max().unwrap_or(Status::Warn);
        let text: Vec<String> = problems.into_iter().map(|p| p.1).collect();
        check(
            "tree-modes",
            worst,
            format!(
                "{n} problem(s) under {}: {}",
                root.display(),
                text.join("; ")
            ),
            Some(fixes.join(" && ")),
        )
    }
}

/// `RemoveIPC=` from logind's configuration, last one wins.
fn logind_remove_ipc() -> Option<String> {
    let mut files = vec![PathBuf::from("/etc/systemd/logind.conf")];
    for dir in [
        "/usr/lib/systemd/logind.conf.d",
        "/etc/systemd/logind.conf.d",
    ] {
        let mut more: Vec<PathBuf> = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let mut value = None;
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines() {
            if let Some(v) = line.trim().strip_prefix("RemoveIPC=") {
                value = Some(v.trim().to_owned());
            }
        }
    }
    value
}

fn remove_ipc() -> Check {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let systemd = Path::new("/run/systemd/system").exists();
    let setting = logind_remove_ipc();
    let removes = setting
        .as_deref()
        .is_none_or(|v| matches!(v, "yes" | "true" | "1" | "on"));
    if !systemd {
        return check(
            "remove-ipc",
            Status::Ok,
            "systemd is not running here: nothing removes shared memory at logout".into(),
            None,
        );
    }
    let detail = format!(
        "systemd-logind RemoveIPC={}",
        setting.as_deref().unwrap_or("yes (default)")
    );
    if !removes {
        check("remove-ipc", Status::Ok, detail, None)
    } else if uid < 1000 {
        check(
            "remove-ipc",
            Status::Ok,
            format!("{detail}; uid {uid} is a system user, which it spares"),
            None,
        )
    } else {
        check(
            "remove-ipc",
            Status::Warn,
            format!("{detail}: when uid {uid}'s last session ends, its /dev/shm files (live rings) are deleted"),
            Some("set `RemoveIPC=no` in /etc/systemd/logind.conf and `systemctl restart systemd-logind`, or run services as a system user".into()),
        )
    }
}

fn namespaces() -> Check {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let nspid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|s| s.split_whitespace().count())
        .unwrap_or(1);
    let container = if Path::new("/.dockerenv").exists() {
        Some("Docker")
    } else if Path::new("/run/.containerenv").exists() {
        Some("Podman")
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        Some("Kubernetes")
    } else {
        None
    };
    let nested = nspid > 1;
    let mut detail = match (container, nested) {
        (Some(c), _) => format!("in a {c} container"),
        (None, true) => format!("in a pid namespace {} level(s) below the host's", nspid - 1),
        (None, false) => "in the host's pid namespace".into(),
    };
    if container.is_none() && !nested {
        return check("namespaces", Status::Ok, detail, None);
    }
    detail.push_str(": liveness still works across pid namespaces (it is by file locks), but pids shown by `shmbus ls` are labels from each process's own namespace");
    check(
        "namespaces",
        Status::Info,
        detail,
        Some("share one /dev/shm (or the bus root) with every container of the bus: Docker `--ipc=shareable` / `--ipc=container:NAME` or a bind mount of the root; gVisor and Kata do not share locks with the host".into()),
    )
}

fn rlimit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is writable for the call.
    unsafe { libc::getrlimit(resource, &mut r) };
    (r.rlim_cur, r.rlim_max)
}

fn limit_text(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

fn open_files(rings: &Rings) -> Check {
    let (soft, hard) = rlimit(libc::RLIMIT_NOFILE);
    // A subscriber keeps two descriptors per ring (data and control file).
    let need = 2 * rings.count + 64;
    let detail = format!(
        "open files: soft {} hard {}; a subscriber of every topic holds 2 per ring: {} ring(s) now need {need} with headroom",
        limit_text(soft),
        limit_text(hard),
        rings.count
    );
    if soft < need {
        check(
            "open-files",
            Status::Fail,
            detail,
            Some(format!(
                "`ulimit -n {}` (systemd: LimitNOFILE=)",
                (need * 2).max(4096)
            )),
        )
    } else if soft < 1024 {
        check(
            "open-files",
            Status::Warn,
            format!("{detail}; below 1024 leaves little room for more publishers"),
            Some("`ulimit -n 4096` (systemd: LimitNOFILE=)".into()),
        )
    } else {
        check("open-files", Status::Ok, detail, None)
    }
}

fn memlock(rings: &Rings) -> Check {
    let (soft, _) = rlimit(libc::RLIMIT_MEMLOCK);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let largest = rings.largest.max(RingConfig::default().capacity + 2 * 4096);
    let detail = format!(
        "RLIMIT_MEMLOCK {}; largest ring {}",
        if soft == libc::RLIM_INFINITY {
            "unlimited".into()
        } else {
            bytes(soft)
        },
        bytes(largest)
    );
    if root || soft == libc::RLIM_INFINITY || soft >= largest {
        check(
            "memlock",
            Status::Ok,
            format!("{detail}: rings can be locked in memory"),
            None,
        )
    } else {
        check(
            "memlock",
            Status::Warn,
            format!("{detail}: locking a ring in memory (mlock) fails without CAP_IPC_LOCK"),
            Some(
                "`ulimit -l unlimited` (systemd: LimitMEMLOCK=infinity) or grant CAP_IPC_LOCK"
                    .into(),
            ),
        )
    }
}

fn optmem() -> Check {
    let Some(v) = fs::read_to_string("/proc/sys/net/core/optmem_max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        return check(
            "optmem-max",
            Status::Info,
            "net.core.optmem_max is not readable here".into(),
            None,
        );
    };
    // Each MSG_ZEROCOPY send in flight costs about 832 bytes of option memory.
    let in_flight = v / 832;
    let detail = format!(
        "net.core.optmem_max = {v} (this network namespace): about {in_flight} zero-copy sends in flight per socket"
    );
    if v < 131_072 {
        check(
            "optmem-max",
            Status::Warn,
            format!("{detail}; below the default 131072 a bridge's zero-copy sends hit ENOBUFS early and fall back to copies"),
            Some("`sysctl -w net.core.optmem_max=131072` in the bridge's network namespace (persist in /etc/sysctl.d/)".into()),
        )
    } else {
        check("optmem-max", Status::Ok, detail, None)
    }
}

/// `key=value` pairs of a bridge stats line.
fn pairs(line: &str) -> impl Iterator<Item = (&str, &str)> {
    line.split_whitespace().filter_map(|w| w.split_once('='))
}

fn bridge_zerocopy(stats: &Path) -> Check {
    let Ok(text) = fs::read_to_string(stats) else {
        return check(
            "bridge-zerocopy",
            Status::Info,
            format!(
                "no bridge stats at {} (no running bridge, or pass --bridge-stats FILE)",
                stats.display()
            ),
            None,
        );
    };
    let (mut completed, mut copied, mut peers) = (0u64, 0u64, 0);
    for line in text.lines().filter(|l| l.starts_with("peer ")) {
        peers += 1;
        for (k, v) in pairs(line) {
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "zc_completed_ids" => completed += v,
                "zc_copied_ids" => copied += v,
                _ => {}
            }
        }
    }
    let detail = format!(
        "{}: {peers} peer(s), {completed} zero-copy sends completed, {copied} of them copied by the kernel",
        stats.display()
    );
    if completed == 0 {
        check(
            "bridge-zerocopy",
            Status::Info,
            format!("{detail} (none yet)"),
            None,
        )
    } else if copied * 10 >= completed * 9 {
        check(
            "bridge-zerocopy",
            Status::Warn,
            format!("{detail}: zero-copy saves nothing on this path (loopback, veth, or a NIC without scatter-gather) and costs CPU"),
            Some("set `zerocopy = false` in the bridge's configuration for these peers".into()),
        )
    } else {
        check("bridge-zerocopy", Status::Ok, detail, None)
    }
}

/// The super options of the mount holding `path` (from mountinfo).
fn mount_options(path: &Path) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let path = fs::canonicalize(existing(path)).ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let mount_point = Path::new(fields.get(4)?);
        let sep = fields.iter().position(|f| *f == "-")?;
        let super_opts = fields.get(sep + 3)?;
        if path.starts_with(mount_point) {
            let depth = mount_point.components().count();
            if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                best = Some((depth, (*super_opts).to_owned()));
            }
        }
    }
    best.map(|(_, o)| o)
}

fn thp(root: &Path) -> Check {
    let setting = fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .find(|w| w.starts_with('['))
                .map(|w| w.trim_matches(['[', ']']).to_owned())
        });
    let huge_mount = mount_options(root).and_then(|o| {
        o.split(',')
            .find(|o| o.starts_with("huge="))
            .map(str::to_owned)
    });
    let detail = format!(
        "shmem_enabled = {}; the root's mount: {}",
        setting.as_deref().unwrap_or("unknown"),
        huge_mount.as_deref().unwrap_or("no huge= option")
    );
    let huge = huge_mount.as_deref().is_some_and(|h| h != "huge=never")
        || setting.as_deref() == Some("force");
    if huge {
        check(
            "thp-shmem",
            Status::Ok,
            format!("{detail}: rings get huge pages"),
            None,
        )
    } else {
        check(
            "thp-shmem",
            Status::Info,
            format!("{detail}: rings use 4 KiB pages (correct, a few more TLB misses on large rings)"),
            Some("for huge pages: `mount -t tmpfs -o size=1G,huge=within_size tmpfs /mnt/shmbus` and SHMBUS_ROOT=/mnt/shmbus".into()),
        )
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn futex_waitv() -> Check {
    const SYS_FUTEX_WAITV: libc::c_long = 449;
    // SAFETY: no waiters (NULL, 0): the kernel checks the arguments and
    // returns EINVAL if the call exists, ENOSYS if not.
    let r = unsafe {
        libc::syscall(
            SYS_FUTEX_WAITV,
            std::ptr::null::<u8>(),
            0u32,
            0u32,
            std::ptr::null::<u8>(),
            libc::CLOCK_MONOTONIC,
        )
    };
    if r == -1 && errno() == libc::ENOSYS {
        check(
            "futex-waitv",
            Status::Warn,
            "futex_waitv is missing (Linux < 5.16): a subscriber of many publishers sleeps on one ring at a time, waking on a timer for the others".into(),
            Some("run a kernel of 5.16 or later".into()),
        )
    } else {
        check(
            "futex-waitv",
            Status::Ok,
            "futex_waitv available: a subscriber sleeps on all its rings at once".into(),
            None,
        )
    }
}

fn io_uring() -> Check {
    let disabled = fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|s| s.trim().to_owned());
    // SAFETY: io_uring_setup with 0 entries and NULL params is refused by
    // argument checks (EINVAL/EFAULT) when the call exists; no ring is made.
    let r = unsafe { libc::syscall(libc::SYS_io_uring_setup, 0u32, std::ptr::null::<u8>()) };
    let e = errno();
    if r >= 0 {
        // SAFETY: a descriptor we own (not expected to happen).
        unsafe { libc::close(r as i32) };
    }
    let detail = format!(
        "kernel.io_uring_disabled = {}",
        disabled.as_deref().unwrap_or("unknown")
    );
    if r == -1 && (e == libc::ENOSYS || e == libc::EPERM) || disabled.as_deref() == Some("2") {
        check(
            "io-uring",
            Status::Info,
            format!("{detail}: io_uring is not available (only an optional path for the bridge would use it)"),
            Some("`sysctl -w kernel.io_uring_disabled=0` if policy allows".into()),
        )
    } else {
        check(
            "io-uring",
            Status::Ok,
            format!("{detail}: io_uring available"),
            None,
        )
    }
}

fn membarrier() -> Check {
    const MEMBARRIER_CMD_QUERY: libc::c_long = 0;
    const GLOBAL_EXPEDITED: libc::c_long = 1 << 1;
    const REGISTER_GLOBAL_EXPEDITED: libc::c_long = 1 << 2;
    // SAFETY: QUERY takes no pointers and has no effect.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0) };
    let need = GLOBAL_EXPEDITED | REGISTER_GLOBAL_EXPEDITED;
    if r >= 0 && r & need == need {
        check(
            "membarrier",
            Status::Ok,
            format!("membarrier commands {r:#x}: global expedited available (the sleeper pays the fence, not the publisher)"),
            None,
        )
    } else {
        check(
            "membarrier",
            Status::Warn,
            format!("membarrier global expedited unavailable (query: {r}): sleeping subscribers fall back to timed waits or the publisher to a full fence"),
            Some("run a kernel built with CONFIG_MEMBARRIER (4.16 or later)".into()),
        )
    }
}
