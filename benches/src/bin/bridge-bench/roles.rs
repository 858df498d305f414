//! The child processes of the benchmark, selected by the first argument:
//! `bridge` (a bridge daemon), `publish` (a raw ring publisher), `tcp-send`
//! and `tcp-recv` (the plain-TCP ceiling). Each dies with its parent
//! (`PR_SET_PDEATHSIG`) and is driven over stdin/stdout by the driver:
//! a line `ready` means "set up, waiting"; the driver answers `go`.

use std::{
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use shmbus_bridge::{
    config::{Cli, Config, LogLevel},
    daemon::Daemon,
    log,
    proto::seal::{Direction, Protection, TAG_LEN},
};
use shmbus_bus::{create_dir_all, Policy, RingConfig, RingWriter, WaitStrategy};

use crate::payload;

/// Largest write the TCP sender makes and largest batch the publisher
/// publishes at once.
pub(crate) const BATCH_BYTES: usize = 256 << 10;

/// Sequence number of the warm-up message the publisher sends before `go`.
pub(crate) const HELLO_SEQ: u64 = u64::MAX;

/// The key of the `--aead` TCP rows (a benchmark, not a secret).
const BENCH_KEY: [u8; 32] = [0x5a; 32];

/// Sizes of the writes `tcp-send` makes for `count` messages of `size`
/// bytes: batches of about [`BATCH_BYTES`], the last one shorter.
fn batches(size: usize, count: u64) -> impl Iterator<Item = usize> {
    let per_batch = (BATCH_BYTES / size).max(1) as u64;
    let full = count / per_batch;
    let rest = count % per_batch;
    (0..full)
        .map(move |_| per_batch as usize * size)
        .chain((rest > 0).then_some(rest as usize * size))
}

fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// Waits for the driver's `go` line on stdin.
fn wait_go() -> Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "go" {
        bail!("expected `go` on stdin, got {line:?}");
    }
    Ok(())
}

/// Blocks until stdin reaches EOF (the driver is done with us).
fn wait_eof() {
    let mut buf = [0u8; 64];
    while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
}

fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Runs a child role; `args` excludes the program name and the role.
pub(crate) fn run(role: &str, args: &[String]) -> Result<()> {
    die_with_parent();
    match role {
        "bridge" => bridge(args),
        "publish" => publish(args),
        "tcp-send" => tcp_send(args),
        "tcp-recv" => tcp_recv(args),
        _ => bail!("unknown role {role:?}"),
    }
}

/// `bridge [shmbus-bridge flags]`: the real daemon, stopped by stdin EOF;
/// writes its counters to `--stats-file` at exit.
fn bridge(args: &[String]) -> Result<()> {
    let argv = std::iter::once("shmbus-bridge".to_owned()).chain(args.iter().cloned());
    let cli = <Cli as clap::Parser>::try_parse_from(argv).context("bridge flags")?;
    let config = Config::load(&cli).context("bridge config")?;
    log::init(config.log_level, &config.node_name);
    for w in &config.warnings {
        log::write(LogLevel::Warn, format_args!("{w}"));
    }
    let daemon = Daemon::new(config);
    let on_eof = daemon.clone();
    thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            wait_eof();
            on_eof.shutdown();
        })
        .context("start the stdin thread")?;
    let result = daemon.run();
    daemon.write_stats_file();
    result.context("bridge daemon failed")
}

/// Parses `--name value` pairs.
struct Flags<'a>(&'a [String]);

impl Flags<'_> {
    fn get(&self, name: &str) -> Result<&str> {
        self.0
            .iter()
            .position(|a| a == name)
            .and_then(|i| self.0.get(i + 1))
            .map(String::as_str)
            .with_context(|| format!("missing {name}"))
    }

    fn num(&self, name: &str) -> Result<u64> {
        let v = self.get(name)?;
        v.parse()
            .with_context(|| format!("{name} {v:?} is not a number"))
    }
}

/// `publish --ring PATH --size N --count N --capacity N --max-message N`:
/// creates a Block ring, waits for the exporting bridge to attach, sends
/// one warm-up message, says `ready`, and on `go` publishes `count`
/// messages of `size` bytes in batches of about [`BATCH_BYTES`].
fn publish(args: &[String]) -> Result<()> {
    let f = Flags(args);
    let ring = PathBuf::from(f.get("--ring")?);
    let size = usize::try_from(f.num("--size")?)?;
    let count = f.num("--count")?;
    let config = RingConfig {
        capacity: f.num("--capacity")?,
        max_message: f.num("--max-message")?,
        policy: Policy::Block,
        ..RingConfig::default()
    };
    if let Some(dir) = ring.parent() {
        create_dir_all(dir, dir, 0o700)?;
    }
    let mut writer = RingWriter::create(&ring, &config)
        .with_context(|| format!("create ring {}", ring.display()))?;
    let end = Instant::now() + Duration::from_secs(15);
    while writer.stats().subscribers == 0 {
        if Instant::now() > end {
            bail!("no bridge attached to {} within 15 s", ring.display());
        }
        thread::sleep(Duration::from_millis(2));
    }
    let wait = WaitStrategy::default();
    let timeout = Some(Duration::from_secs(30));
    let mut hello = vec![0u8; size];
    payload::fill(&mut hello, HELLO_SEQ);
    writer.write(&hello, wait, timeout)?;
    say("ready")?;
    wait_go()?;
    let per_batch = (BATCH_BYTES / size).max(1);
    let mut bufs = vec![vec![0u8; size]; per_batch];
    let mut seq = 0u64;
    while seq < count {
        let n = usize::try_from((count - seq).min(per_batch as u64))?;
        for (i, b) in bufs[..n].iter_mut().enumerate() {
            payload::stamp(b, seq + i as u64);
        }
        let written = writer.write_batch(bufs[..n].iter().map(Vec::as_slice), wait, timeout)?;
        seq += written as u64;
    }
    say("sent")?;
    wait_eof();
    Ok(())
}

/// `tcp-recv --listen IP:PORT [--aead --size N --count N]`: says `port
/// N`, accepts one connection, reads and discards until EOF, says `done
/// BYTES`. With `--aead` every batch `tcp-send --aead` writes is followed
/// by a 16-byte tag, which is checked (ChaCha20-Poly1305 over the batch as
/// associated data, a counter per batch: the bridge's `auth` mode, without
/// the bridge) and not counted in BYTES.
fn tcp_recv(args: &[String]) -> Result<()> {
    let f = Flags(args);
    let listener = TcpListener::bind(f.get("--listen")?)?;
    say(&format!("port {}", listener.local_addr()?.port()))?;
    let (mut conn, _) = listener.accept()?;
    if args.iter().any(|a| a == "--aead") {
        let size = usize::try_from(f.num("--size")?)?;
        let count = f.num("--count")?;
        let mut keys = Direction::new(BENCH_KEY, Protection::Auth);
        let mut buf = vec![0u8; BATCH_BYTES.max(size) + TAG_LEN];
        let mut total = 0u64;
        for len in batches(size, count) {
            conn.read_exact(&mut buf[..len + TAG_LEN])?;
            let (data, tag) = buf[..len + TAG_LEN].split_at(len);
            let mut seal = keys.begin()?;
            seal.aad(data);
            let tag: [u8; TAG_LEN] = tag.try_into()?;
            if seal.verify(&tag).is_err() {
                bail!("batch tag does not verify");
            }
            total += len as u64;
        }
        say(&format!("done {total}"))?;
        return Ok(());
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    say(&format!("done {total}"))?;
    Ok(())
}

/// `tcp-send --addr IP:PORT --size N --count N [--aead]`: connects, says
/// `ready`, and on `go` writes `count` messages of `size` bytes (the same
/// bytes the publisher writes) in writes of about [`BATCH_BYTES`]; with
/// `--aead` each write is followed by its tag (see [`tcp_recv`]).
fn tcp_send(args: &[String]) -> Result<()> {
    let f = Flags(args);
    let aead = args.iter().any(|a| a == "--aead");
    let mut keys = Direction::new(BENCH_KEY, Protection::Auth);
    let addr: SocketAddr = f.get("--addr")?.parse()?;
    let size = usize::try_from(f.num("--size")?)?;
    let count = f.num("--count")?;
    let mut conn = TcpStream::connect(addr)?;
    say("ready")?;
    wait_go()?;
    let per_batch = (BATCH_BYTES / size).max(1);
    let mut buf = vec![0u8; per_batch * size];
    for (i, m) in buf.chunks_exact_mut(size).enumerate() {
        payload::fill(m, i as u64);
    }
    let mut seq = 0u64;
    while seq < count {
        let n = usize::try_from((count - seq).min(per_batch as u64))?;
        for (i, m) in buf[..n * size].chunks_exact_mut(size).enumerate() {
            payload::stamp(m, seq + i as u64);
        }
        conn.write_all(&buf[..n * size])?;
        if aead {
            let mut seal = keys.begin()?;
            seal.aad(&buf[..n * size]);
            conn.write_all(&seal.tag())?;
        }
        seq += n as u64;
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    Ok(())
}
