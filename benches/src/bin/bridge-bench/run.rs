//! One table row: a path, a variant and a message size, measured over a
//! few rounds; and the markdown table of all rows.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use shmbus_bus::{ring_path, topic_dir, wait_any, RingReader, StartAt, WaitStrategy};

use shmbus_bridge::identity::StaticKeypair;

use crate::{child::Proc, netns::VethPair, payload, roles::HELLO_SEQ};

/// Bus, topic and publisher id used on both roots.
const BUS: &str = "bench";
const TOPIC: &str = "blk";

/// Ring capacity of the published ring (the replica mirrors it).
const RING_CAPACITY: u64 = 32 << 20;

/// The exporting bridge's counters shown in the table.
const STAT_KEYS: [&str; 5] = [
    "zc_sends",
    "plain_sends",
    "enobufs",
    "zc_copied_ids",
    "zc_switched_to_plain",
];

/// Where the bytes travel.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Path<'a> {
    /// 127.0.0.1 in the root namespace.
    Loopback,
    /// From namespace `a` to namespace `b` over the veth.
    Veth(&'a VethPair),
}

impl Path<'_> {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Path::Loopback => "loopback",
            Path::Veth(_) => "veth",
        }
    }

    /// Listen address on side `side` (port 0).
    fn listen(&self, side: usize) -> String {
        match self {
            Path::Loopback => "127.0.0.1:0".into(),
            Path::Veth(p) => format!("{}:0", p.addr(side)),
        }
    }

    fn command(&self, side: usize, role: &str, args: &[String]) -> Result<Command> {
        let mut cmd = Command::new(std::env::current_exe().context("own executable")?);
        cmd.arg(role).args(args).env_remove("SHMBUS_ROOT");
        if let Path::Veth(p) = self {
            p.enter(side, &mut cmd)?;
        }
        Ok(cmd)
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variant {
    /// Plain TCP between two processes.
    Tcp,
    /// Plain TCP with ChaCha20-Poly1305 tags over the same bytes, checked
    /// by the receiver: the ceiling for an authenticated link.
    TcpAead,
    /// Bridge pair, `--protection auth` (the default), zero-copy allowed.
    BridgeAuth,
    /// Bridge pair, `--protection encrypt`.
    BridgeEncrypt,
}

impl Variant {
    /// Every variant, in table order.
    pub(crate) const ALL: [Variant; 4] = [
        Variant::Tcp,
        Variant::TcpAead,
        Variant::BridgeAuth,
        Variant::BridgeEncrypt,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Variant::Tcp => "plain TCP",
            Variant::TcpAead => "TCP + same AEAD (ceiling)",
            Variant::BridgeAuth => "bridge, auth",
            Variant::BridgeEncrypt => "bridge, encrypt",
        }
    }

    pub(crate) fn is_tcp(self) -> bool {
        matches!(self, Variant::Tcp | Variant::TcpAead)
    }
}

/// One round's result.
#[derive(Debug, Clone, Copy)]
struct Round {
    secs: f64,
    /// Publisher CPU seconds (the TCP sender's for `Tcp`).
    pub_cpu: f64,
    /// Exporting bridge CPU seconds (0 for TCP).
    exp_cpu: f64,
    /// Receiving side CPU seconds: the importing bridge plus this process's
    /// draining thread, or the TCP receiver.
    recv_cpu: f64,
}

/// A measured row.
#[derive(Debug)]
pub(crate) struct Row {
    path: &'static str,
    variant: Variant,
    size: usize,
    count: u64,
    rounds: Vec<Round>,
    /// The exporting bridge's counters, summed over rounds.
    stats: BTreeMap<String, u64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Row {
    /// Runs `rounds` rounds of `count` messages of `size` bytes.
    pub(crate) fn measure(
        path: &Path<'_>,
        variant: Variant,
        size: usize,
        count: u64,
        rounds: usize,
    ) -> Result<Self> {
        let mut row = Self {
            path: path.name(),
            variant,
            size,
            count,
            rounds: Vec::new(),
            stats: BTreeMap::new(),
        };
        for _ in 0..rounds {
            let r = match variant {
                Variant::Tcp => tcp_round(path, size, count, false),
                Variant::TcpAead => tcp_round(path, size, count, true),
                Variant::BridgeAuth => bridge_round(path, size, count, "auth", &mut row.stats),
                Variant::BridgeEncrypt => {
                    bridge_round(path, size, count, "encrypt", &mut row.stats)
                }
            }
            .with_context(|| format!("{} {} {size} B", path.name(), variant.name()))?;
            row.rounds.push(r);
        }
        Ok(row)
    }

    fn bytes(&self) -> f64 {
        (self.count * self.size as u64) as f64
    }

    /// Median GB/s (payload bytes, 1 GB = 1e9 B).
    pub(crate) fn gbps(&self) -> f64 {
        median(
            self.rounds
                .iter()
                .map(|r| self.bytes() / r.secs / 1e9)
                .collect(),
        )
    }

    fn msgs_per_sec(&self) -> f64 {
        median(
            self.rounds
                .iter()
                .map(|r| self.count as f64 / r.secs)
                .collect(),
        )
    }

    fn cpu_per_gb(&self, f: impl Fn(&Round) -> f64) -> f64 {
        median(
            self.rounds
                .iter()
                .map(|r| f(r) / (self.bytes() / 1e9))
                .collect(),
        )
    }

    fn sender_cpu_per_gb(&self) -> f64 {
        self.cpu_per_gb(|r| r.pub_cpu + r.exp_cpu)
    }

    fn receiver_cpu_per_gb(&self) -> f64 {
        self.cpu_per_gb(|r| r.recv_cpu)
    }

    /// One line for stderr while the run goes on.
    pub(crate) fn progress(&self) -> String {
        format!(
            "{} {} B {}: {:.2} GB/s, {:.2} sender CPU s/GB",
            self.path,
            self.size,
            self.variant.name(),
            self.gbps(),
            self.sender_cpu_per_gb()
        )
    }
}

fn size_name(size: usize) -> String {
    if size >= 1024 && size & 1023 == 0 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// GB/s of plain TCP and of TCP + AEAD (the ceiling) for the same path
/// and size.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Baselines {
    pub(crate) tcp: Option<f64>,
    pub(crate) ceiling: Option<f64>,
}

/// The markdown table.
pub(crate) fn table(rows: &[(Row, Baselines)]) -> String {
    let mut s = String::new();
    s.push_str("| path | msg | variant | MiB/run | msgs/s | GB/s | × TCP | × ceiling | sender CPU s/GB | of it: publisher + exporting bridge | receiver CPU s/GB | GB/s per round | ");
    s.push_str(&STAT_KEYS.join(" | "));
    s.push_str(" |\n|");
    s.push_str(&"---|".repeat(12 + STAT_KEYS.len()));
    s.push('\n');
    for (row, base) in rows {
        let of =
            |b: Option<f64>| b.map_or_else(|| "?".into(), |c| format!("{:.2}", row.gbps() / c));
        let ratio = of(base.tcp);
        let of_ceiling = of(base.ceiling);
        let per_round: Vec<String> = row
            .rounds
            .iter()
            .map(|r| format!("{:.2}", row.bytes() / r.secs / 1e9))
            .collect();
        let split = if row.variant.is_tcp() {
            "–".to_owned()
        } else {
            format!(
                "{:.2} + {:.2}",
                row.cpu_per_gb(|r| r.pub_cpu),
                row.cpu_per_gb(|r| r.exp_cpu)
            )
        };
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {:.3e} | {:.2} | {} | {} | {:.2} | {} | {:.2} | {} |",
            row.path,
            size_name(row.size),
            row.variant.name(),
            row.bytes() as u64 >> 20,
            row.msgs_per_sec(),
            row.gbps(),
            ratio,
            of_ceiling,
            row.sender_cpu_per_gb(),
            split,
            row.receiver_cpu_per_gb(),
            per_round.join(" / ")
        );
        for k in STAT_KEYS {
            if row.variant.is_tcp() {
                s.push_str(" – |");
            } else {
                let _ = write!(s, " {} |", row.stats.get(k).copied().unwrap_or(0));
            }
        }
        s.push('\n');
    }
    s.push_str("\nStats columns: the exporting bridge's counters summed over the rounds of the row (`stream` and `peer` lines of its stats file). × ceiling: GB/s over the TCP + AEAD row of the same path and size.\n");
    s
}

fn tcp_round(path: &Path<'_>, size: usize, count: u64, aead: bool) -> Result<Round> {
    let listen = path.listen(1);
    let mut recv_args = vec!["--listen".into(), listen.clone()];
    if aead {
        recv_args.extend([
            "--aead".into(),
            "--size".into(),
            size.to_string(),
            "--count".into(),
            count.to_string(),
        ]);
    }
    let mut recv = Proc::spawn("tcp-recv", path.command(1, "tcp-recv", &recv_args)?)?;
    let port_line = recv.line()?;
    let port = port_line
        .strip_prefix("port ")
        .context("tcp-recv port line")?;
    let host = listen.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
    let mut args = vec![
        "--addr".into(),
        format!("{host}:{port}"),
        "--size".into(),
        size.to_string(),
        "--count".into(),
        count.to_string(),
    ];
    if aead {
        args.push("--aead".into());
    }
    let mut send = Proc::spawn("tcp-send", path.command(0, "tcp-send", &args)?)?;
    if send.line()? != "ready" {
        bail!("tcp-send did not say ready");
    }
    let t0 = Instant::now();
    send.send("go")?;
    let done = recv.line()?;
    let secs = t0.elapsed().as_secs_f64();
    let got: u64 = done
        .strip_prefix("done ")
        .and_then(|n| n.parse().ok())
        .context("tcp-recv done line")?;
    if got != count * size as u64 {
        bail!("tcp-recv got {got} bytes, expected {}", count * size as u64);
    }
    let sender_cpu = send.finish()?;
    let recv_cpu = recv.finish()?;
    Ok(Round {
        secs,
        pub_cpu: sender_cpu,
        exp_cpu: 0.0,
        recv_cpu,
    })
}

/// A private directory under /dev/shm, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // Relaxed: only uniqueness of the number matters.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = PathBuf::from(format!("/dev/shm/shmbus-bbench-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// Adds the `key=value` counters of `STAT_KEYS` in `text` to `into`.
fn add_stats(text: &str, into: &mut BTreeMap<String, u64>) {
    for tok in text.split_whitespace() {
        if let Some((k, v)) = tok.split_once('=') {
            if STAT_KEYS.contains(&k) {
                if let Ok(v) = v.parse::<u64>() {
                    *into.entry(k.to_owned()).or_default() += v;
                }
            }
        }
    }
}

/// The replica ring the importing bridge made under `dir`.
fn find_replica(dir: &std::path::Path, timeout: Duration) -> Result<PathBuf> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if !name.starts_with('.') && name.ends_with(".ring") {
                    return Ok(e.path());
                }
            }
        }
        if Instant::now() > end {
            bail!("no replica ring in {} within {timeout:?}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Drains `reader` until `want` more messages arrived, checking each
/// against `next_seq` (advanced); fails after 20 s without progress.
fn drain(reader: &mut RingReader, want: u64, next_seq: &mut u64, size: usize) -> Result<()> {
    let mut got = 0u64;
    let mut bad = 0u64;
    let mut last_progress = Instant::now();
    while got < want {
        let room = usize::try_from((want - got).min(1 << 16))?;
        let d = reader.drain(room, |m| {
            // The warm-up message is HELLO_SEQ (u64::MAX): the next is 0.
            let seq = *next_seq;
            if m.len() != size || !payload::check(m, seq) {
                bad += 1;
            }
            *next_seq = seq.wrapping_add(1);
        })?;
        if bad > 0 {
            bail!(
                "{bad} messages with a wrong length, sequence or check byte (before #{next_seq})"
            );
        }
        if d.lost_messages > 0 {
            bail!("lost {} messages on a tethered path", d.lost_messages);
        }
        got += d.messages as u64;
        if d.messages > 0 {
            last_progress = Instant::now();
        } else {
            if d.closed {
                bail!("replica closed after {got} of {want} messages");
            }
            if last_progress.elapsed() > Duration::from_secs(20) {
                bail!("no progress for 20 s after {got} of {want} messages");
            }
            wait_any(
                &[&*reader],
                WaitStrategy::default(),
                Some(Duration::from_millis(10)),
            );
        }
    }
    Ok(())
}

/// Key pairs for the two bridges, each allowlisting the other; returns
/// each one's `--key-file`/`--allowlist` flags.
fn identities(dir: &std::path::Path) -> Result<[Vec<String>; 2]> {
    let names = ["exp", "imp"];
    let pairs = [StaticKeypair::generate()?, StaticKeypair::generate()?];
    let mut out: [Vec<String>; 2] = Default::default();
    for (i, name) in names.iter().enumerate() {
        let key = dir.join(format!("{name}.key"));
        pairs[i].write_new(&key, name)?;
        let other = 1 - i;
        let allow = dir.join(format!("{name}.allow"));
        std::fs::write(
            &allow,
            format!("{} {}\n", pairs[other].public(), names[other]),
        )?;
        out[i] = vec![
            "--key-file".into(),
            s(&key),
            "--allowlist".into(),
            s(&allow),
        ];
    }
    Ok(out)
}

/// CPU seconds the calling thread has used.
fn thread_cpu() -> f64 {
    // SAFETY: rusage is plain data, filled in by getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD with a pointer to a live rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn bridge_round(
    path: &Path<'_>,
    size: usize,
    count: u64,
    protection: &str,
    stats: &mut BTreeMap<String, u64>,
) -> Result<Round> {
    let dir = TempDir::new()?;
    let root_a = dir.0.join("a");
    let root_b = dir.0.join("b");
    let [exp_keys, imp_keys] = identities(&dir.0)?;
    let stats_file = dir.0.join("exporter.stats");
    let common = vec![
        "--bus".to_owned(),
        BUS.into(),
        "--protection".into(),
        protection.into(),
    ];
    let mut exp_args = vec![
        "--node-name".to_owned(),
        "exp".into(),
        "--root".into(),
        s(&root_a),
        "--listen".into(),
        path.listen(0),
        "--export".into(),
        format!("{TOPIC}:tethered"),
        "--stats-file".into(),
        s(&stats_file),
    ];
    if matches!(path, Path::Veth(_)) {
        exp_args.push("--allow-non-loopback-listen".into());
    }
    exp_args.extend(common.iter().cloned());
    exp_args.extend(exp_keys);
    let exporter = Proc::spawn("exporting bridge", path.command(0, "bridge", &exp_args)?)?;
    let line = exporter.wait_log("listening on ", Duration::from_secs(10))?;
    let addr = line
        .rsplit("listening on ")
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let mut imp_args = vec![
        "--node-name".to_owned(),
        "imp".into(),
        "--root".into(),
        s(&root_b),
        "--listen".into(),
        "off".into(),
        "--peer".into(),
        format!("exp={addr}"),
        "--import".into(),
        TOPIC.into(),
    ];
    imp_args.extend(common);
    imp_args.extend(imp_keys);
    let importer = Proc::spawn("importing bridge", path.command(1, "bridge", &imp_args)?)?;
    importer.wait_log("connected to peer exp", Duration::from_secs(10))?;

    let ring = ring_path(&topic_dir(&root_a, BUS, TOPIC)?, "pub")?;
    let pub_args = [
        "--ring".into(),
        s(&ring),
        "--size".into(),
        size.to_string(),
        "--count".into(),
        count.to_string(),
        "--capacity".into(),
        RING_CAPACITY.to_string(),
        "--max-message".into(),
        (size + 64).to_string(),
    ];
    let mut publisher = Proc::spawn("publisher", path.command(0, "publish", &pub_args)?)?;
    if publisher.line()? != "ready" {
        bail!("publisher did not say ready");
    }
    let replica = find_replica(&topic_dir(&root_b, BUS, TOPIC)?, Duration::from_secs(10))?;
    let mut reader = RingReader::open_waiting(&replica, StartAt::Oldest, Duration::from_secs(1))
        .with_context(|| format!("open replica {}", replica.display()))?;
    let mut next_seq = HELLO_SEQ;
    drain(&mut reader, 1, &mut next_seq, size).context("warm-up message")?;
    if next_seq != 0 {
        bail!("warm-up message missing");
    }
    let t0 = Instant::now();
    let drain_cpu0 = thread_cpu();
    publisher.send("go")?;
    drain(&mut reader, count, &mut next_seq, size)?;
    let secs = t0.elapsed().as_secs_f64();
    let drain_cpu = thread_cpu() - drain_cpu0;
    drop(reader);
    if publisher.line()? != "sent" {
        bail!("publisher did not say sent");
    }
    let pub_cpu = publisher.finish()?;
    let exp_cpu = exporter.finish()?;
    let imp_cpu = importer.finish()?;
    let text = std::fs::read_to_string(&stats_file)
        .with_context(|| format!("read {}", stats_file.display()))?;
    add_stats(&text, stats);
    Ok(Round {
        secs,
        pub_cpu,
        exp_cpu,
        recv_cpu: imp_cpu + drain_cpu,
    })
}
