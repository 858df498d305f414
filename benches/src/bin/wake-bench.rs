//! `wake-bench`: the cost of waking sleeping subscribers, per handshake.
//!
//! ```text
//! cargo run --release -p shmbus-benches --bin wake-bench [-- --bursts N --quick]
//! ```
//!
//! Real processes: the publisher is this process, every subscriber a child
//! (this binary with the `sub` role) reading with a blocking wait. Rows:
//!
//! 1. **bursty**: bursts of 100 messages every 1 ms (an absolute schedule),
//!    1, 4 and 16 subscribers that sleep between bursts, for each
//!    [`WakeHandshake`]: publisher latency of each `write` (p50, p99,
//!    p99.9), publisher CPU per burst (`getrusage`), subscribers' CPU per
//!    burst (sum), their sleeps per burst and delivery latency (p50/p99,
//!    publish to receipt);
//! 2. **steady**: nobody sleeps: writes back to back with no subscriber,
//!    and with one busy-spinning subscriber: messages/s, per handshake;
//! 3. **coalesce** (the demo's shape): 3 subscribers with the default wait,
//!    one `write` per message back to back: messages/s, subscriber sleeps
//!    (each costs at most one `FUTEX_WAKE`), per handshake;
//! 4. **spins**: the bursty row with 1 subscriber for several spin counts
//!    of `WaitStrategy::Block` (default handshake): how the spin before
//!    sleeping trades subscriber CPU against sleeps and latency.
//!
//! Numbers depend on the host (2 vCPU KVM guest here; membarrier IPIs are
//! virtualized): compare rows of one run, not across runs.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use shmbus_bus::{
    ReadEvent, RingConfig, RingReader, RingWriter, StartAt, WaitStrategy, WakeHandshake,
};

const BURST: u64 = 100;
const PERIOD: Duration = Duration::from_millis(1);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("sub") {
        return sub(&args[1..]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let bursts: u64 = flag(&args, "--bursts")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(if quick { 300 } else { 2_000 });
    let dir = std::env::temp_dir().join(format!("shmbus-wake-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_all(&dir, bursts, quick);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn name(h: WakeHandshake) -> &'static str {
    match h {
        WakeHandshake::Membarrier => "membarrier",
        WakeHandshake::Fence => "fence",
    }
}

fn run_all(dir: &Path, bursts: u64, quick: bool) -> Result<()> {
    let default_spins = match WaitStrategy::default() {
        WaitStrategy::Block { spins } => spins,
        _ => 0,
    };
    println!("# wake-bench: bursts of {BURST} every {PERIOD:?}, {bursts} bursts per row; default Block spins = {default_spins}");
    println!();
    println!("## bursty subscribers (sleep between bursts), default spins");
    println!();
    println!("| handshake | subs | write p50 ns | p99 ns | p99.9 ns | max µs | pub CPU µs/burst | subs CPU µs/burst | sleeps/burst | delivery p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut n = 0;
    for subs in [1usize, 4, 16] {
        for h in [WakeHandshake::Membarrier, WakeHandshake::Fence] {
            n += 1;
            let row = bursty(
                &dir.join(format!("b{n}.ring")),
                h,
                subs,
                default_spins,
                bursts,
            )?;
            println!(
                "| {} | {subs} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} |",
                name(h),
                row.write_p50,
                row.write_p99,
                row.write_p999,
                row.write_max as f64 / 1e3,
                row.pub_cpu_us / bursts as f64,
                row.subs_cpu_us / bursts as f64,
                row.sleeps as f64 / bursts as f64,
                row.deliver_p50 as f64 / 1e3,
                row.deliver_p99 as f64 / 1e3,
            );
        }
    }
    println!();
    println!("## steady throughput, nobody sleeps (16-byte payloads)");
    println!();
    println!("| handshake | subscribers | M msgs/s |");
    println!("|---|---|---:|");
    let count = if quick { 2_000_000 } else { 10_000_000 };
    for h in [WakeHandshake::Membarrier, WakeHandshake::Fence] {
        for spinning in [0usize, 1] {
            n += 1;
            let rate = steady(&dir.join(format!("s{n}.ring")), h, spinning, count)?;
            let who = if spinning == 0 {
                "none"
            } else {
                "1 busy-spinning"
            };
            println!("| {} | {who} | {:.1} |", name(h), rate / 1e6);
        }
    }
    println!();
    println!("## one write per message to 3 sleeping subscribers (default wait)");
    println!();
    println!("| handshake | M msgs/s | subscriber sleeps (≥ FUTEX_WAKEs) | subs CPU s |");
    println!("|---|---:|---:|---:|");
    let count = if quick { 300_000 } else { 2_000_000 };
    for h in [WakeHandshake::Membarrier, WakeHandshake::Fence] {
        n += 1;
        let (rate, sleeps, cpu) = coalesce(&dir.join(format!("c{n}.ring")), h, count)?;
        println!(
            "| {} | {:.2} | {sleeps} | {:.2} |",
            name(h),
            rate / 1e6,
            cpu / 1e6
        );
    }
    println!();
    println!("## spins before sleeping (1 bursty subscriber, default handshake)");
    println!();
    println!("| spins | sub CPU µs/burst | sleeps/burst | pub CPU µs/burst | write p99 ns | delivery p50 µs | p99 µs |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for spins in [0u32, 64, 256, 1024, 4096, 16384] {
        n += 1;
        let h = RingConfig::default().wake_handshake;
        let row = bursty(&dir.join(format!("p{n}.ring")), h, 1, spins, bursts)?;
        println!(
            "| {spins} | {:.1} | {:.2} | {:.1} | {} | {:.1} | {:.1} |",
            row.subs_cpu_us / bursts as f64,
            row.sleeps as f64 / bursts as f64,
            row.pub_cpu_us / bursts as f64,
            row.write_p99,
            row.deliver_p50 as f64 / 1e3,
            row.deliver_p99 as f64 / 1e3,
        );
    }
    Ok(())
}

/// Process CPU time (user + system), µs.
fn cpu_us() -> f64 {
    // SAFETY: an all-zero rusage is a valid out-buffer.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CLOCK_MONOTONIC, ns (the same clock in every process).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn config(h: WakeHandshake) -> RingConfig {
    RingConfig {
        capacity: 1 << 20,
        max_message: 64,
        slots: 32,
        wake_handshake: h,
        ..RingConfig::default()
    }
}

struct Sub {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Sub {
    fn start(path: &Path, wait: &str) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg("sub")
            .arg(path)
            .arg(wait)
            .stdout(Stdio::piped())
            .spawn()
            .context("spawn subscriber")?;
        let out = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?);
        let mut s = Self { child, out };
        let line = s.line()?;
        if line != "joined" {
            bail!("subscriber said {line:?}");
        }
        Ok(s)
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        Ok(line.trim().to_string())
    }

    /// The subscriber's final report: (received, cpu µs, sleeps, latencies).
    fn finish(mut self) -> Result<(u64, f64, u64, Vec<u64>)> {
        let line = self.line()?;
        let field = |k: &str| -> Result<&str> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .ok_or_else(|| anyhow!("no {k} in {line:?}"))
        };
        let received = field("received")?.parse()?;
        let cpu = field("cpu_us")?.parse()?;
        let sleeps = field("sleeps")?.parse()?;
        let lat: Vec<u64> = field("lat")?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("subscriber failed: {status}");
        }
        Ok((received, cpu, sleeps, lat))
    }
}

#[derive(Debug, Default)]
struct BurstyRow {
    write_p50: u64,
    write_p99: u64,
    write_p999: u64,
    write_max: u64,
    pub_cpu_us: f64,
    subs_cpu_us: f64,
    sleeps: u64,
    deliver_p50: u64,
    deliver_p99: u64,
}

fn bursty(
    path: &Path,
    h: WakeHandshake,
    subs: usize,
    spins: u32,
    bursts: u64,
) -> Result<BurstyRow> {
    let mut w = RingWriter::create(path, &config(h))?;
    let wait = format!("block:{spins}");
    let children = (0..subs)
        .map(|_| Sub::start(path, &wait))
        .collect::<Result<Vec<_>>>()?;
    // Let every subscriber fall asleep before the first burst.
    std::thread::sleep(Duration::from_millis(20));
    let mut lat = Vec::with_capacity((bursts * BURST) as usize);
    let cpu0 = cpu_us();
    let start = Instant::now();
    let mut seq = 0u64;
    for b in 0..bursts {
        let due = start + PERIOD * b as u32;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        for _ in 0..BURST {
            let mut payload = [0u8; 16];
            let t0 = now_ns();
            payload[..8].copy_from_slice(&t0.to_le_bytes());
            payload[8..].copy_from_slice(&seq.to_le_bytes());
            w.write(
                &payload,
                WaitStrategy::default(),
                Some(Duration::from_secs(10)),
            )?;
            lat.push(now_ns() - t0);
            seq += 1;
        }
    }
    let pub_cpu = cpu_us() - cpu0;
    drop(w);
    let mut row = BurstyRow {
        pub_cpu_us: pub_cpu,
        ..BurstyRow::default()
    };
    let mut deliver = Vec::new();
    for c in children {
        let (received, cpu, sleeps, l) = c.finish()?;
        if received != seq {
            bail!("a subscriber received {received} of {seq}");
        }
        row.subs_cpu_us += cpu;
        row.sleeps += sleeps;
        deliver.extend(l);
    }
    lat.sort_unstable();
    deliver.sort_unstable();
    row.write_p50 = pct(&lat, 0.5);
    row.write_p99 = pct(&lat, 0.99);
    row.write_p999 = pct(&lat, 0.999);
    row.write_max = lat.last().copied().unwrap_or(0);
    row.deliver_p50 = pct(&deliver, 0.5);
    row.deliver_p99 = pct(&deliver, 0.99);
    Ok(row)
}

fn steady(path: &Path, h: WakeHandshake, spinning: usize, count: u64) -> Result<f64> {
    let mut w = RingWriter::create(path, &config(h))?;
    let children = (0..spinning)
        .map(|_| Sub::start(path, "spin"))
        .collect::<Result<Vec<_>>>()?;
    let payload = [7u8; 16];
    let start = Instant::now();
    for _ in 0..count {
        w.write(
            &payload,
            WaitStrategy::BusySpin,
            Some(Duration::from_secs(10)),
        )?;
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    drop(w);
    for c in children {
        c.finish()?;
    }
    Ok(rate)
}

fn coalesce(path: &Path, h: WakeHandshake, count: u64) -> Result<(f64, u64, f64)> {
    let mut w = RingWriter::create(path, &config(h))?;
    let children = (0..3)
        .map(|_| Sub::start(path, "default"))
        .collect::<Result<Vec<_>>>()?;
    std::thread::sleep(Duration::from_millis(20));
    let start = Instant::now();
    for i in 0..count {
        let mut payload = [0u8; 16];
        payload[8..].copy_from_slice(&i.to_le_bytes());
        w.write(
            &payload,
            WaitStrategy::default(),
            Some(Duration::from_secs(10)),
        )?;
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    drop(w);
    let (mut sleeps, mut cpu) = (0, 0.0);
    for c in children {
        let (received, c_cpu, s, _) = c.finish()?;
        if received != count {
            bail!("a subscriber received {received} of {count}");
        }
        sleeps += s;
        cpu += c_cpu;
    }
    Ok((rate, sleeps, cpu))
}

/// The subscriber role: `sub <path> block:<spins>|default|spin`.
fn sub(args: &[String]) -> Result<()> {
    let path = PathBuf::from(args.first().ok_or_else(|| anyhow!("sub <path> <wait>"))?);
    let wait = match args.get(1).map(String::as_str) {
        Some("spin") => WaitStrategy::BusySpin,
        Some("default") | None => WaitStrategy::default(),
        Some(w) => WaitStrategy::Block {
            spins: w
                .strip_prefix("block:")
                .ok_or_else(|| anyhow!("wait {w:?}"))?
                .parse()?,
        },
    };
    let mut r = RingReader::open(&path, StartAt::Oldest)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "joined")?;
    out.flush()?;
    let cpu0 = cpu_us();
    let mut received = 0u64;
    let mut lat = Vec::new();
    loop {
        match r.read(wait, None)? {
            ReadEvent::Message(m) => {
                let p = m.payload();
                let sent = u64::from_le_bytes(p[..8].try_into()?);
                if sent != 0 && received.is_multiple_of(16) {
                    lat.push(now_ns().saturating_sub(sent));
                }
                received += 1;
            }
            ReadEvent::Closed => break,
            other => bail!("{other:?}"),
        }
    }
    let cpu = cpu_us() - cpu0;
    let lat: Vec<String> = lat.iter().map(u64::to_string).collect();
    writeln!(
        out,
        "done received={received} cpu_us={cpu:.0} sleeps={} lat={}",
        r.sleep_stats().sleeps,
        lat.join(",")
    )?;
    Ok(())
}
