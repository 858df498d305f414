//! Two network namespaces joined by a veth pair, for the "two hosts" rows.
//! The veth is created directly inside the namespaces, so the root
//! namespace is never touched; dropping [`VethPair`] deletes both
//! namespaces (and the veth with them). Children join a namespace with
//! `setns(2)` before `exec`.

use std::{
    fs::File,
    net::Ipv4Addr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// Two namespaces `<prefix>a` / `<prefix>b` with a veth between them.
#[derive(Debug)]
pub(crate) struct VethPair {
    ip: PathBuf,
    ns: [String; 2],
    addr: [Ipv4Addr; 2],
}

/// `name` on `PATH` or in the usual system directories.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Why the veth rows cannot run here, if they cannot.
pub(crate) fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("network namespaces need root (euid is {euid})"));
    }
    if find_program("ip").is_none() {
        return Some("`ip` not found (apt-get install iproute2)".into());
    }
    None
}

impl VethPair {
    /// Creates the namespaces, the veth (MTU 1500) and a /30 between them.
    pub(crate) fn create() -> Result<Self> {
        let ip = find_program("ip").context("`ip` not found")?;
        let pid = std::process::id();
        let pair = Self {
            ip,
            ns: [format!("bbench{pid}a"), format!("bbench{pid}b")],
            addr: [Ipv4Addr::new(10, 213, 77, 1), Ipv4Addr::new(10, 213, 77, 2)],
        };
        for ns in &pair.ns {
            pair.ip(&["netns", "add", ns])?;
        }
        pair.ip(&[
            "-n",
            &pair.ns[0],
            "link",
            "add",
            "bb0",
            "type",
            "veth",
            "peer",
            "name",
            "bb1",
            "netns",
            &pair.ns[1],
        ])?;
        for (i, dev) in ["bb0", "bb1"].iter().enumerate() {
            let ns = &pair.ns[i];
            let cidr = format!("{}/30", pair.addr[i]);
            pair.ip(&["-n", ns, "addr", "add", &cidr, "dev", dev])?;
            pair.ip(&["-n", ns, "link", "set", dev, "up"])?;
            pair.ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(&self.ip)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run ip {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "ip {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The address of side 0 (`a`) or 1 (`b`).
    pub(crate) fn addr(&self, side: usize) -> Ipv4Addr {
        self.addr[side]
    }

    /// Makes `cmd` run inside namespace `side` (0 or 1).
    pub(crate) fn enter(&self, side: usize, cmd: &mut Command) -> Result<()> {
        let path = format!("/run/netns/{}", self.ns[side]);
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: the hook runs in the forked child before exec and only
        // calls setns(2), which is async-signal-safe; `file` is moved into
        // the closure, so its descriptor is open in the child at that point.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = self.ip(&["netns", "delete", ns]);
        }
    }
}
