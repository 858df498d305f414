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
//! rings large enough that nothing laps). Latency: half the round trip of
//! one message at a time, median and 99th percentile of 2000.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use shmbus_bus::{ReadEvent, RingConfig, RingReader, RingWriter, StartAt, WaitStrategy};
use zenoh::{qos::CongestionControl, Wait};

const SIZES: [usize; 3] = [64, 4096, 65536];
const LAT_ROUNDS: usize = 2000;
const RING: u64 = 256 << 20;

fn count_for(size: usize) -> u64 {
    match size {
        64 => 200_000,
        4096 => 40_000,
        _ => 4_000,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("zsink") => return zsink(&args[1], args[2].parse().unwrap()),
        Some("zecho") => return zecho(&args[1]),
        Some("ssink") => return ssink(Path::new(&args[1]), args[2].parse().unwrap()),
        Some("secho") => return secho(Path::new(&args[1])),
        _ => {}
    }
    // `cargo bench` passes `--bench`; anything else is ignored too.
    println!("| payload | plain Zenoh msg/s | gateways msg/s | ratio | plain Zenoh one-way p50 / p99 µs | gateways one-way p50 / p99 µs | added p50 µs |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for size in SIZES {
        let zt = plain_throughput(size);
        let gt = gateway_throughput(size);
        let zl = plain_latency(size);
        let gl = gateway_latency(size);
        println!(
            "| {size} B | {zt:.0} | {gt:.0} | {:.2} | {:.1} / {:.1} | {:.1} / {:.1} | {:+.1} |",
            gt / zt,
            zl.0,
            zl.1,
            gl.0,
            gl.1,
            gl.0 - zl.0
        );
    }
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

/// Parses the child's `elapsed_ns received` line.
fn rate(rx: &mpsc::Receiver<String>, count: u64) -> f64 {
    let line = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("the sink reports");
    let mut it = line.split_whitespace();
    let ns: f64 = it.next().unwrap().parse().unwrap();
    let received: u64 = it.next().unwrap().parse().unwrap();
    assert_eq!(received, count, "lost messages in a throughput run");
    // First to last: count - 1 intervals.
    (count - 1) as f64 / (ns / 1e9)
}

fn plain_throughput(size: usize) -> f64 {
    let count = count_for(size);
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
    let (mut sink, rx) = child("zsink", &[&endpoint, &count.to_string()]);
    while !publisher.matching_status().wait().unwrap().matching() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let payload = vec![7u8; size];
    for _ in 0..count {
        publisher.put(payload.clone()).wait().unwrap();
    }
    let r = rate(&rx, count);
    let _ = sink.wait();
    r
}

fn zsink(endpoint: &str, count: u64) {
    let session = zenoh::open(zenoh_config(None, Some(endpoint)))
        .wait()
        .unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let mut first = None;
    let mut n = 0u64;
    let _sub = session
        .declare_subscriber("bench/data")
        .callback_mut(move |_s| {
            let now = Instant::now();
            let start = *first.get_or_insert(now);
            n += 1;
            if n == count {
                println!("{} {n}", (now - start).as_nanos());
                let _ = tx.send(());
            }
        })
        .wait()
        .unwrap();
    let _ = rx.recv_timeout(Duration::from_secs(100));
}

fn plain_latency(size: usize) -> (f64, f64) {
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
    for _ in 0..LAT_ROUNDS {
        let t = Instant::now();
        publisher.put(payload.clone()).wait().unwrap();
        rx.recv_timeout(Duration::from_secs(10)).expect("pong");
        rtts.push(t.elapsed());
    }
    let _ = echo.kill();
    let _ = echo.wait();
    percentiles(rtts)
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

fn percentiles(mut rtts: Vec<Duration>) -> (f64, f64) {
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
    fn start(tag: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/dev/shm/shmbus-gw-bench-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let endpoint = format!("tcp/127.0.0.1:{}", port());
        let bin = env!("CARGO_BIN_EXE_shmbus-zenoh");
        let capacity = RING.to_string();
        let common = |root: &str| -> Vec<String> {
            [
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
            .collect()
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
fn writer(root: &Path, topic: &str) -> RingWriter {
    let dir = shmbus_bus::topic_dir(root, "b", topic).unwrap();
    shmbus_bus::create_dir_all(root, &dir, 0o700).unwrap();
    let config = RingConfig {
        capacity: RING,
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

/// Blocks for the next message's payload length (counting gaps in `lost`).
fn next(r: &mut RingReader, lost: &mut u64) -> usize {
    loop {
        let empty = match r.try_read().unwrap() {
            ReadEvent::Message(m) => return m.payload().len(),
            ReadEvent::Gap { messages, .. } => {
                *lost += messages;
                false
            }
            ReadEvent::Empty => true,
            ReadEvent::Closed => panic!("ring closed"),
        };
        if empty {
            shmbus_bus::wait_any(
                &[&*r],
                WaitStrategy::default(),
                Some(Duration::from_millis(100)),
            );
        }
    }
}

fn gateway_throughput(size: usize) -> f64 {
    let count = count_for(size);
    let pair = Pair::start(&format!("t{size}"));
    let (mut sink, rx) = child(
        "ssink",
        &[pair.root("b").to_str().unwrap(), &count.to_string()],
    );
    let mut w = writer(&pair.root("a"), "data");
    let payload = vec![7u8; size];
    for _ in 0..count {
        w.write(&payload, WaitStrategy::default(), None).unwrap();
    }
    let r = rate(&rx, count);
    let _ = sink.wait();
    r
}

fn ssink(root: &Path, count: u64) {
    let mut r = reader(root, "data");
    let mut lost = 0;
    next(&mut r, &mut lost);
    let start = Instant::now();
    for _ in 1..count {
        next(&mut r, &mut lost);
    }
    println!("{} {}", start.elapsed().as_nanos(), count - lost);
}

fn gateway_latency(size: usize) -> (f64, f64) {
    let pair = Pair::start(&format!("l{size}"));
    let (mut echo, _out) = child("secho", &[pair.root("b").to_str().unwrap()]);
    let mut w = writer(&pair.root("a"), "ping");
    let payload = vec![7u8; size];
    // The first pong ring appears once both directions are routed.
    w.write(&payload, WaitStrategy::default(), None).unwrap();
    let mut r = reader(&pair.root("a"), "pong");
    let mut lost = 0;
    next(&mut r, &mut lost);
    let mut rtts = Vec::with_capacity(LAT_ROUNDS);
    for _ in 0..LAT_ROUNDS {
        let t = Instant::now();
        w.write(&payload, WaitStrategy::default(), None).unwrap();
        next(&mut r, &mut lost);
        rtts.push(t.elapsed());
    }
    let _ = echo.kill();
    let _ = echo.wait();
    percentiles(rtts)
}

fn secho(root: &Path) {
    let mut r = reader(root, "ping");
    let mut w = writer(root, "pong");
    let mut lost = 0;
    loop {
        let len = next(&mut r, &mut lost);
        w.write(&vec![7u8; len], WaitStrategy::default(), None)
            .unwrap();
    }
}
