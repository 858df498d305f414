//! `shmbus bench`: a short self-benchmark of this host (one minute by
//! default): one-way latency (half a ping-pong round trip) and throughput,
//! for 64 B and 4 KiB messages, raw rings (`shmbus-bus`) and typed
//! messages (`shmbus`, `Vec<u8>` archives, validated), two threads on a
//! private bus root. Built on the library crates only.

use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;
use shmbus::Bus;
use shmbus_bus::{ReadEvent, RingConfig, RingReader, RingWriter, StartAt, WaitStrategy};

use crate::{
    text::{bytes, count, nanos, Table},
    Where,
};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Total seconds, shared by the 8 measurements.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// How readers wait: spin (a core each), yield, or block (futex after a
    /// short spin, the library's default).
    #[arg(long, value_enum, default_value = "block")]
    wait: Wait,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Wait {
    Spin,
    Yield,
    Block,
}

impl Wait {
    fn strategy(self) -> WaitStrategy {
        match self {
            Self::Spin => WaitStrategy::BusySpin,
            Self::Yield => WaitStrategy::SpinThenYield { spins: 256 },
            Self::Block => WaitStrategy::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Api {
    Raw,
    Typed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Latency,
    Throughput,
}

#[derive(Debug, Default, Serialize)]
struct Outcome {
    messages: u64,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_per_s: Option<f64>,
    /// One-way latency percentiles, nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    p50_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p999_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_ns: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Result_ {
    api: Api,
    kind: Kind,
    size: usize,
    #[serde(flatten)]
    outcome: Outcome,
}

const SIZES: [usize; 2] = [64, 4096];
const CAPACITY: u64 = 4 << 20;
const MAX_MESSAGE: u64 = 64 << 10;

/// A private bus root, removed on drop.
struct TempRoot(PathBuf);

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn run(place: &Where, args: &Args) -> anyhow::Result<ExitCode> {
    // Inside the configured root (on its file system), under a hidden name
    // no bus can have.
    let base = place.root();
    let tmp = TempRoot(base.join(format!(".bench-{}", std::process::id())));
    shmbus_bus::create_dir_all(&base, &tmp.0, 0o700)?;
    let mut cases = Vec::new();
    for api in [Api::Raw, Api::Typed] {
        for size in SIZES {
            for kind in [Kind::Latency, Kind::Throughput] {
                cases.push((api, kind, size));
            }
        }
    }
    let slice = Duration::from_secs_f64((args.seconds / cases.len() as f64).max(0.05));
    let wait = args.wait.strategy();
    let progress = std::io::stderr().is_terminal() && !place.json;
    let started = Instant::now();
    let total = slice * cases.len() as u32;
    let mut results = Vec::new();
    for (i, &(api, kind, size)) in cases.iter().enumerate() {
        let label = format!(
            "{} {} {}",
            match api {
                Api::Raw => "raw",
                Api::Typed => "typed",
            },
            bytes(size as u64),
            match kind {
                Kind::Latency => "latency",
                Kind::Throughput => "throughput",
            }
        );
        let done = Arc::new(AtomicBool::new(false));
        let bar = progress.then(|| {
            let done = done.clone();
            let label = label.clone();
            let base = slice * i as u32;
            thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    draw(
                        base + started.elapsed().saturating_sub(base).min(slice),
                        total,
                        &label,
                    );
                    thread::sleep(Duration::from_millis(100));
                }
            })
        });
        let root = tmp.0.join(format!("case{i}"));
        shmbus_bus::create_dir_all(&tmp.0, &root, 0o700)?;
        let outcome = match (api, kind) {
            (Api::Raw, Kind::Latency) => raw_latency(&root, size, slice, wait)?,
            (Api::Raw, Kind::Throughput) => raw_throughput(&root, size, slice, wait)?,
            (Api::Typed, Kind::Latency) => typed_latency(&root, size, slice, wait)?,
            (Api::Typed, Kind::Throughput) => typed_throughput(&root, size, slice, wait)?,
        };
        done.store(true, Ordering::Relaxed);
        if let Some(bar) = bar {
            let _ = bar.join();
        }
        results.push(Result_ {
            api,
            kind,
            size,
            outcome,
        });
    }
    if progress {
        draw(total, total, "done");
        eprintln!();
    }
    if place.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", render(&results, args));
    }
    Ok(ExitCode::SUCCESS)
}

fn draw(at: Duration, total: Duration, label: &str) {
    const WIDTH: usize = 30;
    let frac = (at.as_secs_f64() / total.as_secs_f64().max(1e-9)).min(1.0);
    let filled = (frac * WIDTH as f64) as usize;
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r[{}{}] {:>3.0}% {label:<24}",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        frac * 100.0
    );
    let _ = err.flush();
}

fn render(results: &[Result_], args: &Args) -> String {
    let mut t = Table::new(&[
        "API", "SIZE", "MEASURE", "P50", "P99", "P99.9", "MAX", "MSGS/S", "BYTES/S",
    ]);
    let us = |v: Option<u64>| v.map_or("-".into(), nanos);
    for r in results {
        t.row(vec![
            format!("{:?}", r.api).to_lowercase(),
            bytes(r.size as u64),
            format!("{:?}", r.kind).to_lowercase(),
            us(r.outcome.p50_ns),
            us(r.outcome.p99_ns),
            us(r.outcome.p999_ns),
            us(r.outcome.max_ns),
            r.outcome.messages_per_s.map_or("-".into(), count),
            r.outcome
                .bytes_per_s
                .map_or("-".into(), |b| format!("{}/s", bytes(b as u64))),
        ]);
    }
    format!(
        "{}latency: one way (half a round trip between two threads); throughput: one publisher, one subscriber; wait: {:?}; {:.0} s in all\n",
        t.render(""),
        args.wait,
        args.seconds
    )
}

fn ring_config() -> RingConfig {
    RingConfig {
        capacity: CAPACITY,
        max_message: MAX_MESSAGE,
        ..RingConfig::default()
    }
}

fn percentiles(mut ns: Vec<u64>, seconds: f64) -> Outcome {
    ns.sort_unstable();
    let at = |q: f64| {
        ns.get(((ns.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    Outcome {
        messages: ns.len() as u64,
        seconds,
        p50_ns: at(0.5),
        p99_ns: at(0.99),
        p999_ns: at(0.999),
        max_ns: ns.last().copied(),
        ..Outcome::default()
    }
}

/// Reads one message with `reader`, handing its payload to `f`; `false`
/// when the ring is closed.
fn read_one(
    reader: &mut RingReader,
    wait: WaitStrategy,
    f: impl FnOnce(&[u8]),
) -> anyhow::Result<bool> {
    loop {
        match reader.read(wait, Some(Duration::from_secs(5)))? {
            ReadEvent::Message(m) => {
                f(m.payload());
                return Ok(true);
            }
            ReadEvent::Closed => return Ok(false),
            ReadEvent::Empty | ReadEvent::Gap { .. } => {}
        }
    }
}

fn raw_latency(
    dir: &Path,
    size: usize,
    time: Duration,
    wait: WaitStrategy,
) -> anyhow::Result<Outcome> {
    let mut ping = RingWriter::create(&dir.join("ping.ring"), &ring_config())?;
    let mut ping_r = RingReader::open(&dir.join("ping.ring"), StartAt::Oldest)?;
    let mut pong = RingWriter::create(&dir.join("pong.ring"), &ring_config())?;
    let mut pong_r = RingReader::open(&dir.join("pong.ring"), StartAt::Oldest)?;
    let echo = thread::spawn(move || -> anyhow::Result<()> {
        let mut buf = Vec::new();
        while read_one(&mut ping_r, wait, |p| {
            buf.clear();
            buf.extend_from_slice(p);
        })? {
            pong.write(&buf, wait, None)?;
        }
        Ok(())
    });
    let payload = vec![0x5au8; size];
    let mut samples = Vec::new();
    let start = Instant::now();
    let warmup = time / 10;
    while start.elapsed() < time {
        let t0 = Instant::now();
        ping.write(&payload, wait, None)?;
        read_one(&mut pong_r, wait, |_| {})?;
        if start.elapsed() > warmup {
            samples.push(t0.elapsed().as_nanos() as u64 / 2);
        }
    }
    drop(ping);
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    Ok(percentiles(samples, time.as_secs_f64()))
}

fn rate(messages: u64, size: usize, seconds: f64) -> Outcome {
    Outcome {
        messages,
        seconds,
        messages_per_s: Some(messages as f64 / seconds),
        bytes_per_s: Some((messages * size as u64) as f64 / seconds),
        ..Outcome::default()
    }
}

fn raw_throughput(
    dir: &Path,
    size: usize,
    time: Duration,
    wait: WaitStrategy,
) -> anyhow::Result<Outcome> {
    let path = dir.join("flood.ring");
    let mut writer = RingWriter::create(&path, &ring_config())?;
    let mut reader = RingReader::open(&path, StartAt::Oldest)?;
    let sink = thread::spawn(move || -> anyhow::Result<(u64, Instant)> {
        let mut n = 0u64;
        loop {
            let d = reader.drain(4096, |_| {})?;
            n += d.messages as u64;
            if d.closed {
                return Ok((n, Instant::now()));
            }
            if d.messages == 0 {
                // Nothing ready: wait for one (the library's wait).
                if !read_one(&mut reader, wait, |_| {})? {
                    return Ok((n, Instant::now()));
                }
                n += 1;
            }
        }
    });
    let payload = vec![0xa5u8; size];
    let start = Instant::now();
    while start.elapsed() < time {
        for _ in 0..64 {
            writer.write(&payload, wait, None)?;
        }
    }
    drop(writer);
    let (n, end) = sink
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    Ok(rate(n, size, end.duration_since(start).as_secs_f64()))
}

fn typed_latency(
    dir: &Path,
    size: usize,
    time: Duration,
    wait: WaitStrategy,
) -> anyhow::Result<Outcome> {
    let bus = Bus::builder()
        .root(dir)
        .capacity(CAPACITY)
        .max_message(MAX_MESSAGE)
        .build()?;
    let mut ping_sub = bus.subscriber_with::<Vec<u8>>("ping", StartAt::Oldest, wait)?;
    let mut pong_sub = bus.subscriber_with::<Vec<u8>>("pong", StartAt::Oldest, wait)?;
    let mut ping = bus.publisher::<Vec<u8>>("ping")?;
    let mut pong = bus.publisher::<Vec<u8>>("pong")?;
    ping.set_wait_strategy(wait);
    pong.set_wait_strategy(wait);
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        thread::spawn(move || -> anyhow::Result<()> {
            let mut buf = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match ping_sub.recv_timeout(Duration::from_millis(100)) {
                    Ok(sample) => {
                        buf.clear();
                        buf.extend_from_slice(sample.as_slice());
                        drop(sample);
                        pong.send(&buf)?;
                    }
                    Err(shmbus::Error::Timeout(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
    };
    let payload = vec![0x5au8; size];
    let mut samples = Vec::new();
    let start = Instant::now();
    let warmup = time / 10;
    while start.elapsed() < time {
        let t0 = Instant::now();
        ping.send(&payload)?;
        let sample = pong_sub.recv_timeout(Duration::from_secs(5))?;
        drop(sample);
        if start.elapsed() > warmup {
            samples.push(t0.elapsed().as_nanos() as u64 / 2);
        }
    }
    stop.store(true, Ordering::Relaxed);
    echo.join()
        .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
    Ok(percentiles(samples, time.as_secs_f64()))
}

fn typed_throughput(
    dir: &Path,
    size: usize,
    time: Duration,
    wait: WaitStrategy,
) -> anyhow::Result<Outcome> {
    let bus = Bus::builder()
        .root(dir)
        .capacity(CAPACITY)
        .max_message(MAX_MESSAGE)
        .build()?;
    let mut sub = bus.subscriber_with::<Vec<u8>>("flood", StartAt::Oldest, wait)?;
    let mut publisher = bus.publisher::<Vec<u8>>("flood")?;
    publisher.set_wait_strategy(wait);
    let sent = Arc::new(AtomicU64::new(u64::MAX));
    let sink = {
        let sent = sent.clone();
        thread::spawn(move || -> anyhow::Result<(u64, Instant)> {
            let mut n = 0u64;
            loop {
                let got = sub.drain(4096, |_| {})? as u64;
                n += got;
                if n >= sent.load(Ordering::Acquire) {
                    return Ok((n, Instant::now()));
                }
                if got == 0 {
                    match sub.recv_timeout(Duration::from_millis(100)) {
                        Ok(_) => n += 1,
                        Err(shmbus::Error::Timeout(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        })
    };
    let payload = vec![0xa5u8; size];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < time {
        for _ in 0..64 {
            publisher.send(&payload)?;
        }
        n += 64;
    }
    // Release: the count is read with Acquire by the subscriber thread.
    sent.store(n, Ordering::Release);
    let (got, end) = sink
        .join()
        .map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    Ok(rate(got, size, end.duration_since(start).as_secs_f64()))
}
