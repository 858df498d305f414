//! Throughput and latency through two `shmbus-zenoh` gateways on loopback,
//! against plain Zenoh pub/sub between two processes with the same
//! payloads (the ceiling): 64 B, 4 KiB, 64 KiB.
//!
//! `cargo bench -p shmbus-zenoh --bench gateway --profile gateway-bench`
//! (release without LTO; prints a Markdown table). Each measurement runs real processes:
//!
//! - plain Zenoh: this process puts, a child process (this binary, role
//!   `zsink`/`zecho`) subscribes; both in peer mode on 127.0.0.1.
//! - gateways: this process writes a raw ring on bus A; gateway A exports
//!   it, gateway B imports it into a replica on bus B, which a child
//!   process (role `ssink`/`secho`) reads. Latency echoes back through a
//!   second topic (B exports, A imports).
//!
//! Throughput: messages per second at the receiver, first to last, with
//! the sender going as fast as it can (Zenoh congestion control Block; the
//! rings large enough that nothing laps), after a warm-up of one ring's
//! worth of messages (a ring's first lap costs a page fault per page in
//! every process that maps it; a running bus is past it); the median of
//! [`THROUGHPUT_ROUNDS`] runs, the parts taking turns in each round (the
//! host's load drifts; a ratio is the median of the rounds' ratios).
//! Latency: half the round trip of one message at a time, median and 99th
//! percentile of [`REPEATS`] x [`LAT_ROUNDS`] after [`LAT_WARMUP`] rounds
//! (the set-ups taking turns), in two gateway set-ups: the defaults
//! (export threads and subscribers sleep on the ring's futex when it is
//! empty), and low latency (`--export-spin-us 1000`, subscribers waiting
//! with `WaitStrategy::SpinThenYield`).
//!
//! A second ceiling: plain Zenoh with the gateways' attachment on every
//! put (same bytes, not decoded), since Zenoh's cost per sample grows with
//! an attachment (by up to a third at 64 B on the 2-vCPU machine).
//!
//! For profiling one part: `GW_BENCH_SIZES=4096 GW_BENCH_PARTS=gt` (of
//! `zt`, `gt`, `za`, `zl`, `gl`, `gs`); what is left out prints as NaN. Each
//! throughput run prints its measured window on stderr
//! (`window START,END`, CLOCK_MONOTONIC seconds), for
//! `perf record -k CLOCK_MONOTONIC -a` and `perf report --time START,END`.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use shmbus_bus::{ReadEvent, RingConfig, RingReader, RingWriter, StartAt, WaitStrategy};
use shmbus_zenoh::meta::{Kind, Meta};
use zenoh::{qos::CongestionControl, Wait};

const SIZES: [usize; 3] = [64, 4096, 65536];
/// Latency runs of each set-up (rounds pooled).
const REPEATS: usize = 3;
/// Throughput runs of each part, taking turns.
const THROUGHPUT_ROUNDS: usize = 5;
const LAT_ROUNDS: usize = 2000;
/// Round trips before the measured ones, on both sides: connections,
/// routes, caches and the rings' pages warm.
const LAT_WARMUP: usize = 300;
/// Throughput rings: large enough that the measured messages never lap.
const RING: u64 = 256 << 20;
/// Latency rings: the bus's default capacity (publishers' rings and the
/// gateway's replicas), lapped in the warm-up at 64 KiB.
const LAT_RING: u64 = 4 << 20;
/// `--export-spin-us` of the low-latency set-up.
const LOW_LATENCY_SPIN_US: &str = "1000";

/// Messages of one throughput run.
fn count_for(size: usize) -> u64 {
    match size {
        64 => 200_000,
        4096 => 40_000,
        _ => 4_000,
    }
}

/// Warm-up messages before a throughput run: nearly one lap of [`RING`]
/// (records are the payload and 16 bytes of header), never more: the
/// exporter reads as an observer, which a publisher does not wait for.
fn warmup_for(size: usize) -> u64 {
    RING / (size as u64 + 16) - 1
}

/// How the gateway path waits for the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// Gateway defaults; subscribers `WaitStrategy::default()`.
    Default,
    /// `--export-spin-us`; subscribers `SpinThenYield`.
    LowLatency,
}

impl Setup {
    fn arg(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::LowLatency => "low-latency",
        }
    }

    fn parse(s: &str) -> Self {
        if s == "low-latency" {
            Self::LowLatency
        } else {
            Self::Default
        }
    }

    fn wait(self) -> WaitStrategy {
        match self {
            Self::Default => WaitStrategy::default(),
            Self::LowLatency => WaitStrategy::SpinThenYield { spins: 64 },
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args[i].parse::<u64>().unwrap();
    match args.first().map(String::as_str) {
        Some("zsink") => return zsink(&args[1], arg(2), arg(3)),
        Some("zecho") => return zecho(&args[1]),
        Some("ssink") => return ssink(Path::new(&args[1]), arg(2), arg(3)),
        Some("secho") => return secho(Path::new(&args[1]), Setup::parse(&args[2])),
        _ => {}
    }
    // `cargo bench` passes `--bench`; anything else is ignored too.
    let sizes: Vec<usize> = std::env::var("GW_BENCH_SIZES").map_or(SIZES.to_vec(), |v| {
        v.split(',').filter_map(|s| s.parse().ok()).collect()
    });
    let parts = std::env::var("GW_BENCH_PARTS").unwrap_or_else(|_| "zt,gt,za,zl,gl,gs".into());
    let part = |name: &str| parts.split(',').any(|p| p == name);
    // The attachment the gateways put on every sample here.
    let attachment = Meta {
        kind: Kind::Message,
        seq: 0,
        origin: "bench-a".into(),
        publisher: "bench".into(),
        type_name: String::new(),
        type_fingerprint: 0,
    }
    .encode();
    println!("| payload | plain Zenoh msg/s | gateways msg/s | ratio | plain Zenoh + the gateways' {} B attachment msg/s | gateways / that | plain Zenoh one-way p50 / p99 µs | gateways, defaults: p50 / p99 µs | added p50 | gateways, low latency: p50 / p99 µs | added p50 |", attachment.len());
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for size in sizes {
        // The parts take turns within each round, so a slow spell of the
        // (shared) host hits them alike; a ratio is the median of the
        // rounds' ratios.
        let (mut zt, mut gt, mut za) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..THROUGHPUT_ROUNDS {
            if part("zt") {
                zt.push(plain_throughput(size, None));
            }
            if part("gt") {
                gt.push(gateway_throughput(size));
            }
            if part("za") {
                za.push(plain_throughput(size, Some(&attachment)));
            }
        }
        let (mut zl, mut gl, mut gs) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..REPEATS {
            if part("zl") {
                zl.extend(plain_latency_run(size));
            }
            if part("gl") {
                gl.extend(gateway_latency_run(size, Setup::Default, run));
            }
            if part("gs") {
                gs.extend(gateway_latency_run(size, Setup::LowLatency, run));
            }
        }
        let (zl, gl, gs) = (percentiles(zl), percentiles(gl), percentiles(gs));
        println!(
            "| {size} B | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.1} / {:.1} | {:.1} / {:.1} | {:+.1} µs | {:.1} / {:.1} | {:+.1} µs |",
            median(zt.clone()),
            median(gt.clone()),
            median(ratios(&gt, &zt)),
            median(za.clone()),
            median(ratios(&gt, &za)),
            zl.0,
            zl.1,
            gl.0,
            gl.1,
            gl.0 - zl.0,
            gs.0,
            gs.1,
            gs.0 - zl.0
        );
    }
}

/// The median (NaN for none).
fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs.get(runs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `a[i] / b[i]` of the rounds both ran.
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(a, b)| a / b).collect()
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn zenoh_config(listen: Option<&str>, connect: Option<&str>) -> zenoh::Config {
    let mut c = zenoh::Config::default();
    c.insert_json5("mode", "\"peer\"").unwrap();
    c.insert_json5("scouting/multicast/enabled", "false")
        .unwrap();
    if let Some(l) = listen {
        c.insert_json5("listen/endpoints", &format!("[\"{l}\"]"))
            .unwrap();
    }
    if let Some(e) = connect {
        c.insert_json5("connect/endpoints", &format!("[\"{e}\"]"))
            .unwrap();
    }
    c
}

fn child(role: &str, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .arg(role)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = c.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (c, rx)
}

fn line(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(300))
        .expect("the sink reports")
}

/// Parses the child's `elapsed_ns received` line.
fn rate(rx: &mpsc::Receiver<String>, count: u64) -> f64 {
    let line = line(rx);
    let mut it = line.split_whitespace();
    let ns: f64 = it.next().unwrap().parse().unwrap();
    let received: u64 = it.next().unwrap().parse().unwrap();
    assert_eq!(received, count, "lost messages in a throughput run");
    // First to last: count - 1 intervals.
    (count - 1) as f64 / (ns / 1e9)
}

/// Plain Zenoh's throughput; with `attachment` on every put (the
/// ceiling of a path that carries the gateway's metadata).
fn plain_throughput(size: usize, attachment: Option<&[u8]>) -> f64 {
    let (count, warm) = (count_for(size), warmup_for(size));
    let endpoint = format!("tcp/127.0.0.1:{}", port());
    let session = zenoh::open(zenoh_config(Some(&endpoint), None))
        .wait()
        .unwrap();
    // Block, as the gateways' exports (Zenoh's default for puts is Drop).
    let publisher = session
        .declare_publisher("bench/data")
        .congestion_control(CongestionControl::Block)
        .wait()
        .unwrap();
    let (mut sink, rx) = child("zsink", &[&endpoint, &warm.to_string(), &count.to_string()]);
    while !publisher.matching_status().wait().unwrap().matching() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let payload = vec![7u8; size];
    let put = || {
        let put = publisher.put(payload.clone());
        match attachment {
            Some(a) => put.attachment(a.to_vec()).wait().unwrap(),
            None => put.wait().unwrap(),
        }
    };
    for _ in 0..warm {
        put();
    }
    assert_eq!(line(&rx), "warm");
    let t0 = mono();
    for _ in 0..count {
        put();
    }
    let r = rate(&rx, count);
    eprintln!("window {:.6},{:.6}", t0, mono());
    let _ = sink.wait();
    r
}

fn zsink(endpoint: &str, warm: u64, count: u64) {
    let session = zenoh::open(zenoh_config(None, Some(endpoint)))
        .wait()
        .unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let mut first = None;
    let mut n = 0u64;
    let _sub = session
        .declare_subscriber("bench/data")
        .callback_mut(move |_s| {
            n += 1;
            if n == warm {
                println!("warm");
            }
            if n <= warm {
                return;
            }
            let now = Instant::now();
            let start = *first.get_or_insert(now);
            if n == warm + count {
                println!("{} {count}", (now - start).as_nanos());
                let _ = tx.send(());
            }
        })
        .wait()
        .unwrap();
    let _ = rx.recv_timeout(Duration::from_secs(300));
}

fn plain_latency_run(size: usize) -> Vec<Duration> {
    let endpoint = format!("tcp/127.0.0.1:{}", port());
    let session = zenoh::open(zenoh_config(Some(&endpoint), None))
        .wait()
        .unwrap();
    let publisher = session
        .declare_publisher("bench/ping")
        .congestion_control(CongestionControl::Block)
        .wait()
        .unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let _sub = session
        .declare_subscriber("bench/pong")
        .callback(move |_s| {
            let _ = tx.send(());
        })
        .wait()
        .unwrap();
    let (mut echo, _out) = child("zecho", &[&endpoint]);
    while !publisher.matching_status().wait().unwrap().matching() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let payload = vec![7u8; size];
    // Until the echo's publisher is routed back here.
    loop {
        publisher.put(payload.clone()).wait().unwrap();
        if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
            break;
        }
    }
    while rx.try_recv().is_ok() {}
    let mut rtts = Vec::with_capacity(LAT_ROUNDS);
    for round in 0..LAT_WARMUP + LAT_ROUNDS {
        let t = Instant::now();
        publisher.put(payload.clone()).wait().unwrap();
        rx.recv_timeout(Duration::from_secs(10)).expect("pong");
        if round >= LAT_WARMUP {
            rtts.push(t.elapsed());
        }
    }
    let _ = echo.kill();
    let _ = echo.wait();
    rtts
}

fn zecho(endpoint: &str) {
    let session = zenoh::open(zenoh_config(None, Some(endpoint)))
        .wait()
        .unwrap();
    let publisher = session
        .declare_publisher("bench/pong")
        .congestion_control(CongestionControl::Block)
        .wait()
        .unwrap();
    // Echo from the callback itself: no thread hand-off on the ceiling's
    // path.
    let _sub = session
        .declare_subscriber("bench/ping")
        .callback(move |s| {
            let _ = publisher.put(s.payload().clone()).wait();
        })
        .wait()
        .unwrap();
    loop {
        std::thread::park();
    }
}

/// Median and 99th percentile of one-way times (half the round trips),
/// µs; NaN for none.
fn percentiles(mut rtts: Vec<Duration>) -> (f64, f64) {
    if rtts.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    rtts.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6 / 2.0;
    (us(rtts[rtts.len() / 2]), us(rtts[rtts.len() * 99 / 100]))
}

/// Two gateways on roots `<dir>/a` and `<dir>/b`: a exports `data` and
/// `ping`, imports `pong`; b the other way round.
struct Pair {
    dir: PathBuf,
    gws: Vec<Child>,
}

impl Pair {
    fn start(tag: &str, import_capacity: u64, setup: Setup) -> Self {
        let dir = PathBuf::from(format!(
            "/dev/shm/shmbus-gw-bench-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let endpoint = format!("tcp/127.0.0.1:{}", port());
        let bin = env!("CARGO_BIN_EXE_shmbus-zenoh");
        let capacity = import_capacity.to_string();
        let common = |root: &str| -> Vec<String> {
            let mut args: Vec<String> = [
                "--root",
                root,
                "--bus",
                "b",
                "--no-multicast-scouting",
                "--import-capacity",
                &capacity,
                "--import-full-wait-ms",
                "10000",
                "--log-level",
                "warn",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if setup == Setup::LowLatency {
                args.extend(["--export-spin-us".into(), LOW_LATENCY_SPIN_US.into()]);
            }
            args
        };
        let a = Command::new(bin)
            .args(common(dir.join("a").to_str().unwrap()))
            .args(["--node-name", "bench-a", "--listen", &endpoint])
            .args([
                "--export",
                "data",
                "--export",
                "ping",
                "--import",
                "shmbus/b/pong",
            ])
            .spawn()
            .unwrap();
        let b = Command::new(bin)
            .args(common(dir.join("b").to_str().unwrap()))
            .args(["--node-name", "bench-b", "--connect", &endpoint])
            .args([
                "--export",
                "pong",
                "--import",
                "shmbus/b/data",
                "--import",
                "shmbus/b/ping",
            ])
            .spawn()
            .unwrap();
        Self {
            dir,
            gws: vec![a, b],
        }
    }

    fn root(&self, side: &str) -> PathBuf {
        self.dir.join(side)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for g in &mut self.gws {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(g.id() as libc::pid_t, libc::SIGTERM) };
            let _ = g.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A raw ring of `topic` on the bus at `root`.
fn writer(root: &Path, topic: &str, capacity: u64) -> RingWriter {
    let dir = shmbus_bus::topic_dir(root, "b", topic).unwrap();
    shmbus_bus::create_dir_all(root, &dir, 0o700).unwrap();
    let config = RingConfig {
        capacity,
        max_message: 65536,
        ..RingConfig::default()
    };
    RingWriter::create(&shmbus_bus::ring_path(&dir, "bench").unwrap(), &config).unwrap()
}

/// A reader of the first ring that appears in `topic` at `root`.
fn reader(root: &Path, topic: &str) -> RingReader {
    let dir = shmbus_bus::topic_dir(root, "b", topic).unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(e) = shmbus_bus::list_rings(&dir)
            .ok()
            .and_then(|l| l.into_iter().next())
        {
            if let Ok(r) = RingReader::open(&e.data_path, StartAt::Oldest) {
                return r;
            }
        }
        assert!(Instant::now() < end, "no ring in {}", dir.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Blocks for the next message and hands its payload to `f` (counting
/// gaps in `lost`).
fn next<T>(
    r: &mut RingReader,
    wait: WaitStrategy,
    lost: &mut u64,
    mut f: impl FnMut(&[u8]) -> T,
) -> T {
    loop {
        let empty = match r.try_read().unwrap() {
            ReadEvent::Message(m) => return f(m.payload()),
            ReadEvent::Gap { messages, .. } => {
                *lost += messages;
                false
            }
            ReadEvent::Empty => true,
            ReadEvent::Closed => panic!("ring closed"),
        };
        if empty {
            shmbus_bus::wait_any(&[&*r], wait, Some(Duration::from_millis(100)));
        }
    }
}

fn gateway_throughput(size: usize) -> f64 {
    let (count, warm) = (count_for(size), warmup_for(size));
    let pair = Pair::start(&format!("t{size}"), RING, Setup::Default);
    let (mut sink, rx) = child(
        "ssink",
        &[
            pair.root("b").to_str().unwrap(),
            &warm.to_string(),
            &count.to_string(),
        ],
    );
    let mut w = writer(&pair.root("a"), "data", RING);
    let payload = vec![7u8; size];
    for _ in 0..warm {
        w.write(&payload, WaitStrategy::default(), None).unwrap();
    }
    // The exporter has read the whole first lap: the measured messages
    // may overwrite it.
    assert_eq!(line(&rx), "warm");
    let t0 = mono();
    for _ in 0..count {
        w.write(&payload, WaitStrategy::default(), None).unwrap();
    }
    let r = rate(&rx, count);
    eprintln!("window {:.6},{:.6}", t0, mono());
    let _ = sink.wait();
    r
}

fn ssink(root: &Path, warm: u64, count: u64) {
    let mut r = reader(root, "data");
    let wait = WaitStrategy::default();
    let mut lost = 0;
    for _ in 0..warm {
        next(&mut r, wait, &mut lost, |_| ());
    }
    assert_eq!(lost, 0, "lost messages in the warm-up");
    println!("warm");
    next(&mut r, wait, &mut lost, |_| ());
    let start = Instant::now();
    for _ in 1..count {
        next(&mut r, wait, &mut lost, |_| ());
    }
    println!("{} {}", start.elapsed().as_nanos(), count - lost);
}

fn gateway_latency_run(size: usize, setup: Setup, run: usize) -> Vec<Duration> {
    let pair = Pair::start(&format!("l{size}-{}-{run}", setup.arg()), LAT_RING, setup);
    let (mut echo, _out) = child("secho", &[pair.root("b").to_str().unwrap(), setup.arg()]);
    let mut w = writer(&pair.root("a"), "ping", LAT_RING);
    let payload = vec![7u8; size];
    let wait = setup.wait();
    // The first pong ring appears once both directions are routed.
    w.write(&payload, WaitStrategy::default(), None).unwrap();
    let mut r = reader(&pair.root("a"), "pong");
    let mut lost = 0;
    next(&mut r, wait, &mut lost, |_| ());
    let mut rtts = Vec::with_capacity(LAT_ROUNDS);
    for round in 0..LAT_WARMUP + LAT_ROUNDS {
        let t = Instant::now();
        w.write(&payload, WaitStrategy::default(), None).unwrap();
        next(&mut r, wait, &mut lost, |_| ());
        if round >= LAT_WARMUP {
            rtts.push(t.elapsed());
        }
    }
    let _ = echo.kill();
    let _ = echo.wait();
    rtts
}

/// Echoes every ping's payload as a pong (one copy, ring to ring: as a
/// plain Zenoh echo re-sends the sample it got).
fn secho(root: &Path, setup: Setup) {
    let mut r = reader(root, "ping");
    let mut w = writer(root, "pong", LAT_RING);
    let mut lost = 0;
    loop {
        next(&mut r, setup.wait(), &mut lost, |payload| {
            w.write(payload, WaitStrategy::default(), None).unwrap();
        });
    }
}

fn mono() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
