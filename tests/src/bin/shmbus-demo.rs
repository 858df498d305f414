//! `shmbus-demo`: shmbus end to end on the default bus, in separate processes.
//!
//! ```text
//! cargo run --release -p shmbus-tests --bin shmbus-demo [-- --count N --rounds N]
//! ```
//!
//! Run without a subcommand it is the orchestrator: it opens the default bus
//! (`Bus::open_default()`: `$SHMBUS_ROOT`, else `/dev/shm/shmbus`), then runs
//! each [`Stage`] in order, starting copies of itself as the stage's
//! processes and relaying their output with a `[role]` prefix:
//!
//! 1. throughput: 1 publisher and 3 subscriber processes; the publisher
//!    sends `--count` small typed messages (default 2 million), every
//!    subscriber receives all of them (two read in place one by one, one in
//!    batches) and checks order and content;
//! 2. bridge hop over loopback: two `shmbus-bridge` daemons (run as
//!    processes of this binary through the bridge library) carry a topic from
//!    this bus to a second bus root, the "remote host", over 127.0.0.1; a
//!    subscriber there reads the publisher's messages in place and reports
//!    messages/s and the latency the hop adds;
//! 3. latency: ping-pong between two processes that busy-spin; one-way
//!    latency is half the measured round trip.
//!
//! Topics are named after the orchestrator's pid, so runs never collide; the
//! rings are removed by their publishers and the empty topic directories by
//! the orchestrator. Children die with the orchestrator (`PR_SET_PDEATHSIG`),
//! and a watchdog ends the demo if a stage hangs.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, ExitCode, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use rkyv::{Archive, Deserialize, Serialize};
use shmbus::{Bus, Error, StartAt, TopicEvent, WaitStrategy};
use shmbus_tests::args::Args;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// The throughput stage's message: a small market-data style tick.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy)]
struct Tick {
    seq: u64,
    sent_ns: u64,
    price: f64,
    qty: u32,
    symbol: [u8; 8],
}

impl Tick {
    fn new(seq: u64) -> Self {
        Self {
            seq,
            sent_ns: 0,
            price: seq as f64 * 0.25,
            qty: (seq as u32) ^ 0x5555,
            symbol: *b"SHMBUS\0\0",
        }
    }

    fn check(a: &ArchivedTick, seq: u64) -> bool {
        let want = Self::new(seq);
        a.seq == want.seq && a.price == want.price && a.qty == want.qty && a.symbol == want.symbol
    }
}

/// The latency stage's message.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy)]
struct Ping {
    seq: u64,
}

/// Most time the whole demo may take before the watchdog ends it.
const WATCHDOG: Duration = Duration::from_secs(120);
/// Most time a process waits for its peers to show up or for a message.
const PEER_WAIT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    let role = match argv.peek() {
        Some(a) if !a.starts_with("--") => argv.next(),
        _ => None,
    };
    let result = Args::parse(argv, &[]).map_err(Into::into).and_then(|args| {
        match role.as_deref() {
            None => orchestrate(args),
            Some(role) => {
                // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
                match role {
                    "publisher" => run_publisher(args),
                    "subscriber" => run_subscriber(args),
                    "ping" => run_ping(args),
                    "bridge" => run_bridge(args),
                    "pong" => run_pong(args),
                    other => Err(format!("unknown role {other:?}").into()),
                }
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmbus-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- orchestrator

/// What every stage gets.
struct Demo {
    /// Prefix of this run's topic names.
    run: String,
    count: u64,
    rounds: u64,
    /// Children of the current stage, for the watchdog.
    children: Arc<Mutex<Vec<u32>>>,
}

/// One step of the demo.
struct Stage {
    name: &'static str,
    run: fn(&Demo) -> Result<()>,
}

/// The demo's stages, run in order.
const STAGES: &[Stage] = &[
    Stage {
        name: "throughput: 1 publisher -> 3 subscribers, send_batch of 64",
        run: stage_throughput_batched,
    },
    Stage {
        name: "throughput: 1 publisher -> 3 subscribers, one send per message",
        run: stage_throughput_single,
    },
    Stage {
        name: "bridge hop over loopback: publisher -> bridge -> TCP -> bridge -> subscriber",
        run: stage_bridge_hop,
    },
    Stage {
        name: "latency: ping-pong between 2 processes, busy-spin",
        run: stage_latency,
    },
];

fn orchestrate(mut args: Args) -> Result<()> {
    let count = args.or("count", 2_000_000u64)?;
    let rounds = args.or("rounds", 100_000u64)?;
    args.finish()?;
    let bus = Bus::open_default()?;
    println!(
        "shmbus demo on bus {:?} at {} (set {} to use another root)",
        bus.name(),
        bus.root().display(),
        shmbus_bus::ROOT_ENV
    );
    let demo = Demo {
        run: format!("demo-{}", std::process::id()),
        count,
        rounds,
        children: Arc::default(),
    };
    start_watchdog(demo.children.clone());
    let started = Instant::now();
    let mut result = Ok(());
    for (i, stage) in STAGES.iter().enumerate() {
        println!("\n== stage {}: {}", i + 1, stage.name);
        if let Err(e) = (stage.run)(&demo) {
            result = Err(format!("stage {:?} failed: {e}", stage.name).into());
            break;
        }
    }
    for suffix in ["ticks", "ticks1", "bridged", "ping", "pong"] {
        if let Ok(dir) = bus.topic_dir(&format!("{}-{suffix}", demo.run)) {
            // Rings are removed by their owners; a sweep catches what a killed
            // process left, and only an empty directory is removed.
            let _ = shmbus_bus::sweep_topic(&dir);
            let _ = std::fs::remove_dir(dir);
        }
    }
    if result.is_ok() {
        println!(
            "\ndemo finished in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    result
}

fn start_watchdog(children: Arc<Mutex<Vec<u32>>>) {
    thread::spawn(move || {
        thread::sleep(WATCHDOG);
        eprintln!("shmbus-demo: still running after {WATCHDOG:?}; stopping");
        for &pid in children.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        std::process::exit(2);
    });
}

/// A child process whose stdout is relayed with a `[label]` prefix.
struct Relayed {
    label: String,
    child: Child,
    relay: thread::JoinHandle<()>,
}

fn spawn(demo: &Demo, label: &str, args: &[&str]) -> Result<Relayed> {
    spawn_with(demo, label, args, None)
}

/// Like [`spawn`]; `root` sets `SHMBUS_ROOT` for the child (another "host"),
/// and the child's stdin is a pipe it may watch for the orchestrator's EOF.
fn spawn_with(demo: &Demo, label: &str, args: &[&str], root: Option<&str>) -> Result<Relayed> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stdin(Stdio::piped());
    if let Some(root) = root {
        command.env(shmbus_bus::ROOT_ENV, root);
    }
    let mut child = command.spawn()?;
    demo.children
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(child.id());
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let prefix = format!("[{label}]");
    let relay = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{prefix:<14} {line}");
        }
    });
    Ok(Relayed {
        label: label.to_string(),
        child,
        relay,
    })
}

fn wait_all(procs: Vec<Relayed>) -> Result<()> {
    let mut failed = Vec::new();
    for mut p in procs {
        let status = p.child.wait()?;
        let _ = p.relay.join();
        if !status.success() {
            failed.push(format!("{} ({status})", p.label));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")).into())
    }
}

fn stage_throughput_batched(demo: &Demo) -> Result<()> {
    throughput(demo, "ticks", demo.count, 64)
}

fn stage_throughput_single(demo: &Demo) -> Result<()> {
    throughput(demo, "ticks1", demo.count / 4, 1)
}

/// 1 publisher and 3 subscriber processes; `batch` > 1 publishes with
/// `send_batch` (one wake-up per batch), else with `send`.
fn throughput(demo: &Demo, suffix: &str, count: u64, batch: usize) -> Result<()> {
    let topic = format!("{}-{suffix}", demo.run);
    let count = count.to_string();
    let batch = batch.to_string();
    let mut procs = Vec::new();
    // Subscribers first: the publisher waits until all three joined its ring.
    for (i, mode) in ["recv", "recv", "drain"].iter().enumerate() {
        let index = (i + 1).to_string();
        let args = [
            "subscriber",
            "--topic",
            &topic,
            "--count",
            &count,
            "--index",
            &index,
            "--mode",
            mode,
        ];
        procs.push(spawn(demo, &format!("subscriber {index}"), &args)?);
    }
    let args = [
        "publisher",
        "--topic",
        &topic,
        "--count",
        &count,
        "--subscribers",
        "3",
        "--batch",
        &batch,
    ];
    procs.push(spawn(demo, "publisher", &args)?);
    wait_all(procs)
}

fn stage_latency(demo: &Demo) -> Result<()> {
    let ping = format!("{}-ping", demo.run);
    let pong = format!("{}-pong", demo.run);
    let rounds = demo.rounds.to_string();
    let pong_proc = spawn(demo, "pong", &["pong", "--ping", &ping, "--pong", &pong])?;
    let ping_proc = spawn(
        demo,
        "ping",
        &[
            "ping", "--ping", &ping, "--pong", &pong, "--rounds", &rounds,
        ],
    )?;
    wait_all(vec![ping_proc, pong_proc])
}

/// Two bridge daemons between this bus and a second root (the remote host)
/// over 127.0.0.1; a publisher here, a subscriber there.
fn stage_bridge_hop(demo: &Demo) -> Result<()> {
    let topic = format!("{}-bridged", demo.run);
    let remote_root = format!("/dev/shm/shmbus-demo-remote-{}", std::process::id());
    let keys = format!("/dev/shm/shmbus-demo-keys-{}", std::process::id());
    let cleanup = || {
        let _ = std::fs::remove_dir_all(&remote_root);
        let _ = std::fs::remove_dir_all(&keys);
    };
    let result = (|| -> Result<()> {
        // A key pair per bridge; each one's allowlist holds the other's key.
        shmbus_tests::netns::write_bridge_identities(
            std::path::Path::new(&keys),
            &["local", "remote"],
        )?;
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let local_root = Bus::open_default()?.root().display().to_string();
        let count = (demo.count / 4).to_string();
        // Importer on the "remote host" listens; the exporter dials it.
        let importer = spawn_with(
            demo,
            "bridge remote",
            &[
                "bridge",
                "--node",
                "remote",
                "--root",
                &remote_root,
                "--listen",
                &listen,
                "--import",
                &topic,
                "--keys",
                &keys,
            ],
            None,
        )?;
        let export = format!("{topic}:tethered");
        let peer = format!("remote={listen}");
        let exporter = spawn_with(
            demo,
            "bridge local",
            &[
                "bridge",
                "--node",
                "local",
                "--root",
                &local_root,
                "--listen",
                "off",
                "--peer",
                &peer,
                "--export",
                &export,
                "--keys",
                &keys,
            ],
            None,
        )?;
        let subscriber = spawn_with(
            demo,
            "remote sub",
            &[
                "subscriber",
                "--topic",
                &topic,
                "--count",
                &count,
                "--index",
                "1",
                "--mode",
                "recv",
            ],
            Some(&remote_root),
        )?;
        // The exporting bridge's reader is the one subscriber the publisher waits for.
        let publisher = spawn(
            demo,
            "publisher",
            &[
                "publisher",
                "--topic",
                &topic,
                "--count",
                &count,
                "--subscribers",
                "1",
                "--batch",
                "64",
                "--stamp",
                "true",
                "--settle-ms",
                "300",
            ],
        )?;
        let pubsub = wait_all(vec![publisher, subscriber]);
        // Closing their stdin stops the bridges; they print their counters.
        let bridges = wait_all(vec![exporter, importer]);
        pubsub.and(bridges)
    })();
    cleanup();
    result
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

// ---------------------------------------------------------------- processes

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A bridge daemon, through the `shmbus-bridge` library: runs until the
/// orchestrator closes our stdin, then prints its counters.
fn run_bridge(mut args: Args) -> Result<()> {
    let node: String = args.req("node")?;
    let root: String = args.req("root")?;
    let listen: String = args.req("listen")?;
    let keys: String = args.req("keys")?;
    let peer: Option<String> = args.opt("peer")?;
    let export: Option<String> = args.opt("export")?;
    let import: Option<String> = args.opt("import")?;
    args.finish()?;
    let mut argv = vec![
        "shmbus-bridge".to_string(),
        "--node-name".into(),
        node.clone(),
        "--root".into(),
        root,
        "--listen".into(),
        listen,
        "--log-level".into(),
        "warn".into(),
    ];
    argv.extend(shmbus_tests::netns::bridge_identity_args(
        std::path::Path::new(&keys),
        &node,
    ));
    for (flag, value) in [("--peer", peer), ("--export", export), ("--import", import)] {
        if let Some(v) = value {
            argv.push(flag.into());
            argv.push(v);
        }
    }
    let cli = <shmbus_bridge::config::Cli as clap::Parser>::try_parse_from(argv)?;
    let config = shmbus_bridge::config::Config::load(&cli)?;
    let daemon = shmbus_bridge::daemon::Daemon::new(config);
    let stopper = daemon.clone();
    thread::spawn(move || {
        // EOF on stdin: the orchestrator is done with us.
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        stopper.shutdown();
    });
    daemon.run()?;
    for line in daemon.stats_text().lines() {
        if line.starts_with("stream") || line.starts_with("peer") {
            say(line);
        }
    }
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn millions(x: f64) -> String {
    format!("{:.2} M", x / 1e6)
}

fn run_publisher(mut args: Args) -> Result<()> {
    let topic: String = args.req("topic")?;
    let count: u64 = args.req("count")?;
    let subscribers: usize = args.req("subscribers")?;
    let batch: usize = args.or("batch", 1)?;
    let stamp: bool = args.or("stamp", false)?;
    let settle_ms: u64 = args.or("settle-ms", 0)?;
    args.finish()?;
    let bus = Bus::open_default()?;
    let mut publisher = bus.publisher::<Tick>(&topic)?;
    let tick = |seq| Tick {
        sent_ns: if stamp { monotonic_ns() } else { 0 },
        ..Tick::new(seq)
    };
    say(&format!(
        "pid {}: ring {}, {} KiB, waiting for {subscribers} subscribers",
        std::process::id(),
        publisher.id(),
        bus.topic_options().capacity >> 10
    ));
    let deadline = Instant::now() + PEER_WAIT;
    while publisher.stats().subscribers < subscribers {
        if Instant::now() > deadline {
            return Err("subscribers did not join".into());
        }
        thread::sleep(Duration::from_millis(1));
    }
    let archived = rkyv::to_bytes::<rkyv::rancor::Error>(&Tick::new(0))?.len();
    let mut first = 0;
    if settle_ms > 0 {
        // Over a bridge, the remote replica ring appears with the first
        // message; give the remote subscriber time to attach before the rest.
        publisher.send(&tick(0))?;
        thread::sleep(Duration::from_millis(settle_ms));
        first = 1;
    }
    let started = Instant::now();
    if batch <= 1 {
        for seq in first..count {
            publisher.send(&tick(seq))?;
        }
    } else {
        // One tail store and at most one wake-up per batch.
        let mut ticks = Vec::with_capacity(batch);
        let mut seq = first;
        while seq < count {
            ticks.clear();
            ticks.extend((seq..count.min(seq + batch as u64)).map(tick));
            publisher.send_batch(ticks.iter())?;
            seq += ticks.len() as u64;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let stats = publisher.stats();
    let api = if batch <= 1 {
        "send".to_string()
    } else {
        format!("send_batch of {batch}")
    };
    say(&format!(
        "{api}: {count} Tick messages ({archived} B archived, {} B per ring record) in {secs:.3} s: \
         {} msg/s, {:.0} MB/s of messages, {:.0} MB/s through the ring; found the ring full {} times",
        stats.tail / count.max(1),
        millions(count as f64 / secs),
        (count * archived as u64) as f64 / secs / 1e6,
        stats.tail as f64 / secs / 1e6,
        stats.full_events
    ));
    Ok(())
}

fn run_subscriber(mut args: Args) -> Result<()> {
    let topic: String = args.req("topic")?;
    let count: u64 = args.req("count")?;
    let index: u32 = args.req("index")?;
    let mode: String = args.req("mode")?;
    args.finish()?;
    let bus = Bus::open_default()?;
    let mut sub = bus.subscriber_with::<Tick>(&topic, StartAt::Oldest, WaitStrategy::default())?;
    say(&format!("pid {}: subscribed ({mode})", std::process::id()));
    let mut next = 0u64;
    let mut bad = 0u64;
    let mut started = None;
    // Publish-to-receive latencies of stamped messages (every 64th).
    let mut latencies = Vec::new();
    while next < count {
        if mode == "drain" {
            let n = sub.drain(4096, |t| {
                bad += u64::from(!Tick::check(t, next));
                next += 1;
            })?;
            if n > 0 {
                started.get_or_insert_with(Instant::now);
                continue;
            }
        }
        match sub.recv_timeout(PEER_WAIT) {
            Ok(t) => {
                started.get_or_insert_with(Instant::now);
                bad += u64::from(!Tick::check(&t, next));
                let sent = t.sent_ns.to_native();
                if sent != 0 && next % 64 == 0 {
                    latencies.push(monotonic_ns().saturating_sub(sent));
                }
                next += 1;
            }
            Err(Error::Timeout(d)) if d.is_zero() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let secs = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    // Stay until the publisher is gone, so the last reader removes its ring.
    let deadline = Instant::now() + PEER_WAIT;
    let mut gone = false;
    while !gone && Instant::now() < deadline {
        match sub.recv_timeout(Duration::from_millis(50)) {
            Ok(_) => return Err("a message beyond the count".into()),
            Err(Error::Timeout(_)) => {}
            Err(e) => return Err(e.into()),
        }
        gone = sub
            .take_events()
            .iter()
            .any(|e| matches!(e, TopicEvent::PublisherGone { .. }));
    }
    let how = if mode == "drain" {
        "drain batches"
    } else {
        "recv, in place"
    };
    if !latencies.is_empty() {
        latencies.sort_unstable();
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        say(&format!(
            "publish-to-receive latency under full load ({} samples): median {:.1} us, p99 {:.1} us",
            latencies.len(),
            pct(0.5) as f64 / 1e3,
            pct(0.99) as f64 / 1e3
        ));
    }
    say(&format!(
        "subscriber {index} ({how}): {next} messages in {secs:.3} s: {} msg/s; \
         order and content {}",
        millions(next as f64 / secs.max(1e-9)),
        if bad == 0 {
            "ok".to_string()
        } else {
            format!("WRONG in {bad}")
        }
    ));
    if bad == 0 {
        Ok(())
    } else {
        Err(format!("{bad} messages out of order or damaged").into())
    }
}

/// Pong: echoes every ping until the ping publisher is gone.
fn run_pong(mut args: Args) -> Result<()> {
    let ping: String = args.req("ping")?;
    let pong: String = args.req("pong")?;
    args.finish()?;
    let bus = Bus::open_default()?;
    // Publisher first: when the pinger sees us subscribed, our pong ring exists.
    let mut publisher = bus.publisher::<Ping>(&pong)?;
    publisher.set_wait_strategy(WaitStrategy::BusySpin);
    let mut sub = bus.subscriber_with::<Ping>(&ping, StartAt::Oldest, WaitStrategy::BusySpin)?;
    let mut echoed = 0u64;
    let deadline = Instant::now() + PEER_WAIT;
    loop {
        let got = match sub.recv_timeout(Duration::from_millis(50)) {
            Ok(p) => Some(p.seq.to_native()),
            Err(Error::Timeout(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(seq) = got {
            publisher.send(&Ping { seq })?;
            echoed += 1;
            continue;
        }
        let gone = sub
            .take_events()
            .iter()
            .any(|e| matches!(e, TopicEvent::PublisherGone { .. }));
        if gone {
            break;
        }
        if echoed == 0 && Instant::now() > deadline {
            return Err("no ping arrived".into());
        }
    }
    say(&format!(
        "pid {}: echoed {echoed} pings",
        std::process::id()
    ));
    Ok(())
}

/// Ping: sends a ping, busy-waits for its pong, `rounds` times after a warm-up.
fn run_ping(mut args: Args) -> Result<()> {
    let ping: String = args.req("ping")?;
    let pong: String = args.req("pong")?;
    let rounds: u64 = args.req("rounds")?;
    args.finish()?;
    let warmup = (rounds / 10).max(1_000);
    let bus = Bus::open_default()?;
    let mut publisher = bus.publisher::<Ping>(&ping)?;
    publisher.set_wait_strategy(WaitStrategy::BusySpin);
    let mut sub = bus.subscriber_with::<Ping>(&pong, StartAt::Oldest, WaitStrategy::BusySpin)?;
    let deadline = Instant::now() + PEER_WAIT;
    while publisher.stats().subscribers < 1 {
        if Instant::now() > deadline {
            return Err("pong did not subscribe".into());
        }
        thread::sleep(Duration::from_millis(1));
    }
    let mut rtts = Vec::with_capacity(rounds as usize);
    for seq in 0..warmup + rounds {
        let sent = Instant::now();
        publisher.send(&Ping { seq })?;
        let back = loop {
            match sub.recv_timeout(PEER_WAIT) {
                Ok(p) => break p.seq.to_native(),
                Err(Error::Timeout(d)) if d.is_zero() => {}
                Err(e) => return Err(e.into()),
            }
        };
        let rtt = sent.elapsed();
        if back != seq {
            return Err(format!("pong {back} for ping {seq}").into());
        }
        if seq >= warmup {
            rtts.push(rtt.as_nanos() as u64);
        }
    }
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize] as f64 / 2.0;
    say(&format!(
        "{rounds} round trips (after {warmup} warm-up), one-way = round trip / 2: \
         min {:.0} ns, median {:.0} ns, p99 {:.0} ns, p99.9 {:.0} ns, max {:.1} us",
        pct(0.0),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        pct(1.0) / 1000.0
    ));
    Ok(())
}
