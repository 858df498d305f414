//! Two "hosts" on one machine: a pair of network namespaces joined by a veth
//! link, with fault injection (random loss with nftables, rate limits with
//! tbf, per-namespace sysctls).
//!
//! [`NetPair::create`] makes namespaces `sb<pid>a<n>` and `sb<pid>b<n>`, a
//! veth pair created *directly inside them* (the devices never appear in the
//! root namespace), and a /30 from `10.64.0.0/10` chosen per instance. Only
//! the two namespaces are ever configured: the root namespace's links,
//! addresses and routes are never touched. Dropping the pair deletes both
//! namespaces, and with them the veth, the nftables table and the qdisc.
//!
//! Namespaces left behind by a test process that was killed (the harness
//! watchdog aborts a stuck test) are deleted by the next `create` in another
//! process: the pid in the name tells whether the owner is still alive.
//!
//! Code runs inside a namespace in two ways:
//!
//! - [`NetPair::command_in`]: a child process, moved into the namespace by
//!   `setns(2)` in a `pre_exec` hook on a namespace fd opened by the parent.
//!   Unlike `ip netns exec` this needs no `ip` binary in the child, no private
//!   mount namespace or `/sys` remount, and leaves the [`Command`] free to be
//!   configured and spawned like any other (e.g. by `TestEnv::spawn`, which
//!   then kills the real program, not a wrapper).
//! - [`NetPair::run_in`]: a closure on a fresh thread that has joined the
//!   namespace. Sockets keep the namespace they were created in, so a test
//!   can create a listener "on host A" and a client "on host B" in-process
//!   ([`NetPair::listen`], [`NetPair::connect`]) and use them from any thread.
//!
//! Declare the `NetPair` before the processes a test starts in it so it is
//! dropped after them (a namespace with live processes loses its name but
//! lives on until they exit).
//!
//! ```no_run
//! use shmbus_tests::netns::{self, NetPair, Side};
//! use std::io::{Read, Write};
//!
//! if let Err(why) = netns::available() {
//!     eprintln!("skipped: {why}");
//!     return;
//! }
//! let pair = NetPair::create("doc").unwrap();
//! let listener = pair.listen(Side::A, 0).unwrap();
//! let server = listener.local_addr().unwrap();
//! let mut client = pair.connect(Side::B, server).unwrap();
//! let (mut conn, from) = listener.accept().unwrap();
//! assert_eq!(from.ip(), pair.addr(Side::B));
//! client.write_all(b"hi").unwrap();
//! let mut buf = [0u8; 2];
//! conn.read_exact(&mut buf).unwrap();
//! pair.drop_random(Side::A, 5).unwrap();
//! pair.rate_limit(Side::B, 50_000_000).unwrap();
//! ```

use std::{
    ffi::OsStr,
    fmt,
    fs::File,
    io::{self, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, OnceLock,
    },
    thread,
};

/// Where `ip netns add` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";

/// The nftables table this module owns inside a namespace.
const NFT_TABLE: &str = "shmbus_fault";

/// `10.64.0.0/10`: the addresses of every pair are carved from here.
const ADDR_BASE: u32 = u32::from_be_bytes([10, 64, 0, 0]);

/// Number of /30 blocks in `10.64.0.0/10`.
const BLOCKS: u32 = 1 << 20;

/// Linux's limit on interface names (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

static NEXT_PAIR: AtomicU32 = AtomicU32::new(0);

/// Serializes namespace creation in this process: concurrent first-time
/// `ip netns add` calls race on setting up `/run/netns` as a shared mount.
static CREATE: Mutex<()> = Mutex::new(());

/// One end of a [`NetPair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The first namespace (`.1` of the /30).
    A,
    /// The second namespace (`.2` of the /30).
    B,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    /// The other end.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// The programs this module runs, found once.
#[derive(Debug, Clone)]
struct Tools {
    ip: PathBuf,
    nft: PathBuf,
    tc: PathBuf,
}

static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();

/// `name` on `PATH`, or in the usual system directories (`/usr/sbin` is
/// often missing from a non-login root `PATH`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn tools() -> Result<&'static Tools, String> {
    TOOLS
        .get_or_init(|| {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let euid = unsafe { libc::geteuid() };
            if euid != 0 {
                return Err(format!(
                    "network namespaces need root (euid is {euid}); run the tests as root"
                ));
            }
            let find = |name: &str, package: &str| {
                find_program(name).ok_or_else(|| {
                    format!("`{name}` not found; install {package} (apt-get install {package})")
                })
            };
            let tools = Tools {
                ip: find("ip", "iproute2")?,
                tc: find("tc", "iproute2")?,
                nft: find("nft", "nftables")?,
            };
            can_unshare_net()?;
            Ok(tools)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Tries `unshare(CLONE_NEWNET)` on a throwaway thread: root inside a
/// container without `CAP_SYS_ADMIN` cannot make namespaces.
fn can_unshare_net() -> Result<(), String> {
    thread::spawn(|| {
        // SAFETY: unshare takes plain flags; it only changes this thread's
        // network namespace, and the thread ends right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 {
            Ok(())
        } else {
            Err(format!(
                "cannot create a network namespace ({}); needs CAP_SYS_ADMIN",
                io::Error::last_os_error()
            ))
        }
    })
    .join()
    .unwrap_or_else(|_| Err("namespace probe thread panicked".to_string()))
}

/// Whether this process can build a [`NetPair`]: `Err(reason)` when not
/// root, when `ip`, `tc` or `nft` are missing, or when namespaces cannot be
/// created. Tests skip with the reason:
///
/// ```no_run
/// if let Err(why) = shmbus_tests::netns::available() {
///     eprintln!("skipped: {why}");
///     return;
/// }
/// ```
///
/// # Errors
///
/// The reason, saying what to install or how to run.
pub fn available() -> Result<(), String> {
    tools().map(|_| ())
}

/// A [`Command`] running `program` inside the named namespace (a name under
/// `/run/netns`, as `ip netns` makes). The namespace file is opened now and
/// joined with `setns(2)` in the child between fork and exec; if it cannot be
/// opened, spawning fails with that error.
pub fn command_in(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let ns_file = File::open(Path::new(NETNS_DIR).join(ns));
    let mut cmd = Command::new(program);
    // Only the raw errno crosses into the child: `io::Error` is not Clone
    // and the hook must not allocate.
    let ns_file = ns_file.map_err(|e| e.raw_os_error().unwrap_or(libc::ENOENT));
    let hook = move || match &ns_file {
        Ok(file) => {
            // SAFETY: setns takes an fd we own (the File lives in this
            // closure) and a plain flag.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
        Err(errno) => Err(io::Error::from_raw_os_error(*errno)),
    };
    // SAFETY: the hook runs in the forked child before exec. It only calls
    // setns(2) and reads errno, both async-signal-safe, and allocates nothing
    // (`last_os_error`/`from_raw_os_error` build unboxed errors).
    unsafe { cmd.pre_exec(hook) };
    cmd
}

/// Runs `cmd` to completion, feeding it `input`; its stdout, or an error
/// naming the command and quoting its stderr.
fn run(mut cmd: Command, input: Option<&str>) -> io::Result<String> {
    let what = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {what}: {e}")))?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            input
                .map(|i| format!("\n  input:\n{i}"))
                .unwrap_or_default()
        )))
    }
}

/// The pid in a name this module made (`sb<pid>a<n>` / `sb<pid>b<n>`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("sb")?;
    let split = rest.find(['a', 'b'])?;
    let (pid, n) = (&rest[..split], &rest[split + 1..]);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(pid) && digits(n) {
        pid.parse().ok()
    } else {
        None
    }
}

/// Deletes namespaces of ours whose owner process is gone. Called once per
/// process before its first creation, so a name with our own pid is a
/// leftover of an earlier process that had the same pid.
fn sweep_stale(ip: &Path) {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    let me = std::process::id();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == me || !Path::new(&format!("/proc/{pid}")).exists() {
            let mut cmd = Command::new(ip);
            cmd.args(["netns", "delete", &name]);
            match run(cmd, None) {
                Ok(_) => eprintln!("netns: deleted stale namespace {name} (owner {pid} is gone)"),
                Err(e) => eprintln!("netns: cannot delete stale namespace {name}: {e}"),
            }
        }
    }
}

static SWEPT: OnceLock<()> = OnceLock::new();

/// Two network namespaces joined by a veth pair, deleted on drop.
///
/// See the [module docs](self) for an example.
pub struct NetPair {
    tag: String,
    ns: [String; 2],
    addr: [Ipv4Addr; 2],
    tools: &'static Tools,
    /// How many namespaces exist (0..=2), for cleanup after a failed create.
    made: usize,
}

impl fmt::Debug for NetPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetPair")
            .field("tag", &self.tag)
            .field("a", &format_args!("{} {}/30", self.ns[0], self.addr[0]))
            .field("b", &format_args!("{} {}/30", self.ns[1], self.addr[1]))
            .finish()
    }
}

impl NetPair {
    /// Makes the two namespaces, the veth link between them (named like its
    /// namespace), addresses `.1`/`.2` of a /30 chosen from the pid and a
    /// per-process counter, and brings up `lo` and the veth on both sides.
    /// `tag` names the pair in messages.
    ///
    /// # Errors
    ///
    /// [`available`]'s reason as `Unsupported`, or the failing command with
    /// its stderr. Anything already made is deleted.
    pub fn create(tag: &str) -> io::Result<Self> {
        let tools = tools().map_err(|why| io::Error::new(io::ErrorKind::Unsupported, why))?;
        // Relaxed: only uniqueness is needed, which atomicity gives.
        let n = NEXT_PAIR.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let ns = [format!("sb{pid}a{n}"), format!("sb{pid}b{n}")];
        if ns[0].len() > IFNAME_MAX {
            return Err(io::Error::other(format!(
                "pair name {} is longer than an interface name may be",
                ns[0]
            )));
        }
        let block = (pid.wrapping_mul(64).wrapping_add(n)) % BLOCKS;
        let net = ADDR_BASE + block * 4;
        let mut pair = Self {
            tag: tag.to_string(),
            ns,
            addr: [Ipv4Addr::from(net + 1), Ipv4Addr::from(net + 2)],
            tools,
            made: 0,
        };
        let guard = CREATE.lock().unwrap_or_else(|p| p.into_inner());
        SWEPT.get_or_init(|| sweep_stale(&tools.ip));
        for i in 0..2 {
            pair.ip(&["netns", "add", &pair.ns[i]], None)?;
            pair.made += 1;
        }
        let [a, b] = &pair.ns;
        pair.ip(
            &[
                "link", "add", "name", a, "netns", a, "type", "veth", "peer", "name", b, "netns", b,
            ],
            None,
        )?;
        drop(guard);
        for side in [Side::A, Side::B] {
            let dev = pair.dev(side);
            let script = format!(
                "link set lo up\naddr add {}/30 dev {dev}\nlink set {dev} up\n",
                pair.addr(side)
            );
            pair.ip(&["-n", pair.ns(side), "-batch", "-"], Some(&script))?;
        }
        Ok(pair)
    }

    fn ip(&self, args: &[&str], input: Option<&str>) -> io::Result<String> {
        let mut cmd = Command::new(&self.tools.ip);
        cmd.args(args);
        run(cmd, input)
    }

    /// Runs a tool (`nft`, `tc`) inside `side`'s namespace.
    fn tool_in(
        &self,
        side: Side,
        tool: &Path,
        args: &[&str],
        input: Option<&str>,
    ) -> io::Result<String> {
        let mut cmd = self.command_in(side, tool);
        cmd.args(args);
        run(cmd, input)
    }

    /// The tag given to [`Self::create`].
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The namespace's name (as `ip netns list` shows it).
    pub fn ns(&self, side: Side) -> &str {
        &self.ns[side.index()]
    }

    /// The veth device inside `side`'s namespace.
    pub fn dev(&self, side: Side) -> &str {
        // Each end is named like the namespace it lives in.
        self.ns(side)
    }

    /// `side`'s address on the link.
    pub fn addr(&self, side: Side) -> Ipv4Addr {
        self.addr[side.index()]
    }

    /// `side`'s address with `port`.
    pub fn sock_addr(&self, side: Side, port: u16) -> SocketAddr {
        SocketAddr::from((self.addr(side), port))
    }

    /// A [`Command`] running `program` inside `side`'s namespace; see
    /// [`command_in`].
    pub fn command_in(&self, side: Side, program: impl AsRef<OsStr>) -> Command {
        command_in(self.ns(side), program)
    }

    /// Runs `f` on a new thread that has joined `side`'s namespace and
    /// returns its result. Sockets made in `f` stay in that namespace.
    ///
    /// # Errors
    ///
    /// If the namespace cannot be joined.
    ///
    /// # Panics
    ///
    /// If `f` panics.
    pub fn run_in<T: Send>(&self, side: Side, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let file = File::open(Path::new(NETNS_DIR).join(self.ns(side)))?;
        thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns takes an fd that `file` keeps open and a
                // plain flag; it changes only this scoped thread's namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// A listener on `side`'s link address and `port` (0: any free port).
    ///
    /// # Errors
    ///
    /// As [`Self::run_in`] or `bind`.
    pub fn listen(&self, side: Side, port: u16) -> io::Result<TcpListener> {
        let at = self.sock_addr(side, port);
        self.run_in(side, || TcpListener::bind(at))?
    }

    /// A TCP connection from inside `side`'s namespace to `to`.
    ///
    /// # Errors
    ///
    /// As [`Self::run_in`] or `connect`.
    pub fn connect(&self, side: Side, to: SocketAddr) -> io::Result<TcpStream> {
        self.run_in(side, || TcpStream::connect(to))?
    }

    /// Reads a sysctl (`net.core.optmem_max`) as seen inside `side`'s
    /// namespace.
    ///
    /// # Errors
    ///
    /// A key outside `net.` (not per namespace), or one this namespace does
    /// not have, or a read error.
    pub fn sysctl(&self, side: Side, key: &str) -> io::Result<String> {
        let path = sysctl_path(key)?;
        let text = self.run_in(side, || std::fs::read_to_string(&path))??;
        Ok(text.trim().to_string())
    }

    /// Sets a per-namespace sysctl inside `side`'s namespace. Only `net.`
    /// keys are accepted: others would change the whole machine.
    ///
    /// # Errors
    ///
    /// As [`Self::sysctl`], or the kernel rejecting the value.
    pub fn set_sysctl(&self, side: Side, key: &str, value: &str) -> io::Result<()> {
        let path = sysctl_path(key)?;
        self.run_in(side, || std::fs::write(&path, value))?
            .map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}={value}: {e}")))
    }

    /// Sets `net.core.optmem_max` (per namespace; 131072 by default) inside
    /// `side`'s namespace. A small value (e.g. 4096) makes `MSG_ZEROCOPY`
    /// sends fail with `ENOBUFS` quickly.
    ///
    /// # Errors
    ///
    /// As [`Self::set_sysctl`].
    pub fn set_optmem_max(&self, side: Side, bytes: u32) -> io::Result<()> {
        self.set_sysctl(side, "net.core.optmem_max", &bytes.to_string())
    }

    /// Drops `percent`% of the TCP packets leaving `side` on the veth, at
    /// random (nftables `meta l4proto tcp numgen random mod 100 < N counter
    /// drop` on output, in a table of our own). Only TCP: the kernel's own
    /// background packets on a fresh link (IPv6 neighbour discovery) neither
    /// count nor vanish. Replaces an earlier rule and resets its counter.
    /// Packets are dropped before segmentation, so one drop can be a whole
    /// GSO super-packet of up to 64 KiB.
    ///
    /// # Errors
    ///
    /// `percent` over 100, or `nft` failing.
    pub fn drop_random(&self, side: Side, percent: u8) -> io::Result<()> {
        if percent > 100 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("drop percentage {percent} is over 100"),
            ));
        }
        let script = format!(
            "add table inet {NFT_TABLE}\n\
             add chain inet {NFT_TABLE} output {{ type filter hook output priority 0; policy accept; }}\n\
             flush chain inet {NFT_TABLE} output\n\
             add rule inet {NFT_TABLE} output oifname \"{dev}\" meta l4proto tcp numgen random mod 100 < {percent} counter drop\n",
            dev = self.dev(side)
        );
        self.tool_in(side, &self.tools.nft, &["-f", "-"], Some(&script))
            .map(drop)
    }

    /// Packets dropped by [`Self::drop_random`] on `side` since it was last
    /// set (0 when no drop rule is in place).
    ///
    /// # Errors
    ///
    /// `nft` failing, or output without a counter.
    pub fn drop_count(&self, side: Side) -> io::Result<u64> {
        let listing = self.tool_in(side, &self.tools.nft, &["list", "tables"], None)?;
        if !listing.contains(NFT_TABLE) {
            return Ok(0);
        }
        let chain = self.tool_in(
            side,
            &self.tools.nft,
            &["list", "chain", "inet", NFT_TABLE, "output"],
            None,
        )?;
        parse_counter(&chain).ok_or_else(|| io::Error::other(format!("no counter in {chain:?}")))
    }

    /// Removes the drop rule (and our table) from `side`. Idempotent.
    ///
    /// # Errors
    ///
    /// `nft` failing.
    pub fn clear_drops(&self, side: Side) -> io::Result<()> {
        let script = format!("add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n");
        self.tool_in(side, &self.tools.nft, &["-f", "-"], Some(&script))
            .map(drop)
    }

    /// Limits traffic leaving `side` on the veth to `bits_per_sec` with a tbf
    /// root qdisc (burst: 10 ms worth of traffic, at least 16 KiB; queue: 100
    /// ms). Replaces an earlier limit.
    ///
    /// # Errors
    ///
    /// A rate of 0, or `tc` failing.
    pub fn rate_limit(&self, side: Side, bits_per_sec: u64) -> io::Result<()> {
        if bits_per_sec == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a rate limit of 0 bit/s would stop all traffic; use drop_random(side, 100)",
            ));
        }
        let burst = (bits_per_sec / 8 / 100).max(16 * 1024);
        self.tool_in(
            side,
            &self.tools.tc,
            &[
                "qdisc",
                "replace",
                "dev",
                self.dev(side),
                "root",
                "tbf",
                "rate",
                &format!("{bits_per_sec}bit"),
                "burst",
                &format!("{burst}b"),
                "latency",
                "100ms",
            ],
            None,
        )
        .map(drop)
    }

    /// `tc qdisc show` for `side`'s veth.
    ///
    /// # Errors
    ///
    /// `tc` failing.
    pub fn qdisc(&self, side: Side) -> io::Result<String> {
        self.tool_in(
            side,
            &self.tools.tc,
            &["qdisc", "show", "dev", self.dev(side)],
            None,
        )
    }

    /// Removes a [`Self::rate_limit`] from `side`. Idempotent.
    ///
    /// # Errors
    ///
    /// `tc` failing.
    pub fn clear_rate_limit(&self, side: Side) -> io::Result<()> {
        if !self.qdisc(side)?.contains("tbf") {
            return Ok(());
        }
        self.tool_in(
            side,
            &self.tools.tc,
            &["qdisc", "del", "dev", self.dev(side), "root"],
            None,
        )
        .map(drop)
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in &self.ns[..self.made] {
            if let Err(e) = self.ip(&["netns", "delete", ns], None) {
                eprintln!(
                    "netns: cannot delete namespace {ns} of pair {}: {e}",
                    self.tag
                );
            }
        }
    }
}

/// Key pairs and allowlists for bridge daemons of a test (or the demo):
/// for each name, `<dir>/<name>.key` (mode 0600, with `<name>.key.pub`) and
/// `<dir>/<name>.allow` listing every *other* name's public key. Existing
/// files are replaced. Pass [`bridge_identity_args`] to each daemon.
///
/// # Errors
///
/// If a file cannot be written.
pub fn write_bridge_identities(dir: &Path, names: &[&str]) -> io::Result<()> {
    use shmbus_bridge::identity::StaticKeypair;
    std::fs::create_dir_all(dir)?;
    let mut lines = Vec::new();
    for name in names {
        let kp = StaticKeypair::generate().map_err(io::Error::other)?;
        let key = dir.join(format!("{name}.key"));
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(dir.join(format!("{name}.key.pub")));
        kp.write_new(&key, name).map_err(io::Error::other)?;
        lines.push((name.to_string(), format!("{} {name}\n", kp.public())));
    }
    for (name, _) in &lines {
        let list: String = lines
            .iter()
            .filter(|(n, _)| n != name)
            .map(|(_, l)| l.as_str())
            .collect();
        let p = dir.join(format!("{name}.allow"));
        std::fs::write(&p, list)?;
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    }
    Ok(())
}

/// `--key-file <dir>/<name>.key --allowlist <dir>/<name>.allow`.
pub fn bridge_identity_args(dir: &Path, name: &str) -> Vec<String> {
    vec![
        "--key-file".into(),
        dir.join(format!("{name}.key")).display().to_string(),
        "--allowlist".into(),
        dir.join(format!("{name}.allow")).display().to_string(),
    ]
}

/// `/proc/sys/<key with dots as slashes>` for a `net.` key.
fn sysctl_path(key: &str) -> io::Result<PathBuf> {
    let valid = key.starts_with("net.")
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        && !key.contains("..");
    if !valid {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("sysctl {key:?}: only per-namespace `net.` keys may be set from a test"),
        ));
    }
    Ok(PathBuf::from("/proc/sys").join(key.replace('.', "/")))
}

/// Sum of `counter packets N` in an `nft list` output.
fn parse_counter(listing: &str) -> Option<u64> {
    let mut total = None;
    let mut words = listing.split_whitespace();
    while let Some(w) = words.next() {
        if w == "counter" && words.next() == Some("packets") {
            let n: u64 = words.next()?.parse().ok()?;
            total = Some(total.unwrap_or(0) + n);
        }
    }
    total
}

/// Hosts on one LAN: `n` namespaces, each with a veth whose other end is a
/// port of a Linux bridge (multicast snooping off, so multicast scouting
/// reaches every host) in a hub namespace, addresses `10.77.0.<i+1>/24` and
/// a route for multicast. Unlike a [`NetPair`], three or more hosts see
/// each other's multicast, as on a switch. Deleted on drop.
pub struct Lan {
    hub: String,
    hosts: Vec<String>,
    tools: &'static Tools,
    /// Namespaces made so far (hub first), for cleanup after a failed create.
    made: Vec<String>,
}

impl fmt::Debug for Lan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lan")
            .field("hub", &self.hub)
            .field("hosts", &self.hosts)
            .finish()
    }
}

impl Lan {
    /// Makes the hub with its bridge and `n` hosts (at most 9) joined to it.
    ///
    /// # Errors
    ///
    /// [`available`]'s reason as `Unsupported`, or the failing command with
    /// its stderr. Anything already made is deleted.
    pub fn create(n: usize) -> io::Result<Self> {
        let tools = tools().map_err(|why| io::Error::new(io::ErrorKind::Unsupported, why))?;
        if !(1..=9).contains(&n) {
            return Err(io::Error::other("a LAN has 1 to 9 hosts"));
        }
        // Relaxed: only uniqueness is needed.
        let k = NEXT_PAIR.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Names `owner_pid` parses, so a killed test's LAN is swept too.
        let hub = format!("sb{pid}a{}", k * 10);
        let hosts: Vec<String> = (1..=n)
            .map(|i| format!("sb{pid}b{}", k * 10 + i as u32))
            .collect();
        let mut lan = Self {
            hub,
            hosts,
            tools,
            made: Vec::new(),
        };
        let guard = CREATE.lock().unwrap_or_else(|p| p.into_inner());
        SWEPT.get_or_init(|| sweep_stale(&tools.ip));
        for ns in std::iter::once(lan.hub.clone()).chain(lan.hosts.clone()) {
            lan.ip(&["netns", "add", &ns], None)?;
            lan.made.push(ns);
        }
        lan.ip(
            &["-n", &lan.hub, "-batch", "-"],
            Some("link set lo up\nlink add br0 type bridge mcast_snooping 0\nlink set br0 up\n"),
        )?;
        for (i, host) in lan.hosts.iter().enumerate() {
            let port = format!("p{i}");
            lan.ip(
                &[
                    "link", "add", "name", host, "netns", host, "type", "veth", "peer", "name",
                    &port, "netns", &lan.hub,
                ],
                None,
            )?;
            lan.ip(
                &["-n", &lan.hub, "-batch", "-"],
                Some(&format!("link set {port} master br0\nlink set {port} up\n")),
            )?;
            let script = format!(
                "link set lo up\naddr add {}/24 dev {host}\nlink set {host} up\nroute add 224.0.0.0/4 dev {host}\n",
                Self::addr_of(i)
            );
            lan.ip(&["-n", host, "-batch", "-"], Some(&script))?;
        }
        drop(guard);
        Ok(lan)
    }

    fn addr_of(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, i as u8 + 1)
    }

    fn ip(&self, args: &[&str], input: Option<&str>) -> io::Result<String> {
        let mut cmd = Command::new(&self.tools.ip);
        cmd.args(args);
        run(cmd, input)
    }

    /// Host `i`'s namespace (0-based).
    pub fn ns(&self, i: usize) -> &str {
        &self.hosts[i]
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Self::addr_of(i)
    }

    /// A [`Command`] running `program` on host `i`; see [`command_in`].
    pub fn command_in(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        command_in(self.ns(i), program)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            if let Err(e) = self.ip(&["netns", "delete", ns], None) {
                eprintln!("netns: cannot delete namespace {ns}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys() {
        assert_eq!(owner_pid("sb1234a0"), Some(1234));
        assert_eq!(owner_pid("sb7b12"), Some(7));
        assert_eq!(owner_pid("sb12a"), None);
        assert_eq!(owner_pid("sbxa1"), None);
        assert_eq!(owner_pid("kp1"), None);
        assert_eq!(owner_pid("sb12c3"), None);
        assert_eq!(
            sysctl_path("net.core.optmem_max").unwrap(),
            Path::new("/proc/sys/net/core/optmem_max")
        );
        assert!(sysctl_path("vm.nr_hugepages").is_err());
        assert!(sysctl_path("net/../vm").is_err());
        assert!(sysctl_path("net..core").is_err());
    }

    #[test]
    fn counters_are_parsed() {
        let listing = "table inet shmbus_fault {\n\tchain output {\n\t\ttype filter hook output \
                       priority filter; policy accept;\n\t\toifname \"x\" numgen random mod 100 \
                       < 5 counter packets 17 bytes 9000 drop\n\t}\n}\n";
        assert_eq!(parse_counter(listing), Some(17));
        assert_eq!(parse_counter("table inet t { }"), None);
    }
}
