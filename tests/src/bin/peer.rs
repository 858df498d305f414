//! `peer`: the helper process of the multi-process tests.
//!
//! ```text
//! peer publish --root R --topic T --id N --count C [--size S | --size-max S]
//!      [--policy block|overwrite] [--capacity B] [--max-message B] [--slots N]
//!      [--loan] [--batch K] [--rate MSGS_PER_S] [--wait-subscribers K]
//!      [--hang-in-loan-after K] [--progress-every N] [--linger] [--bus NAME]
//! peer subscribe --root R --topic T --expect-publishers P [--count C]
//!      [--start oldest|latest] [--report FILE] [--stall-after K]
//!      [--delay-us U] [--delay-every K] [--wait block|spin|yield] [--drain]
//!      [--timeout-s S] [--bus NAME]
//! ```
//!
//! (More modes: `peer/core_v2.rs`, `peer/wake.rs`; `chaos-pub` and
//! `chaos-sub` are the kill-chaos roles of `shmbus_tests::chaos`.)
//!
//! Both print progress lines on stdout that tests wait for:
//!
//! - publisher: `ready ring=<id> path=<file>`, `subscribers <n>`, `sent <n>`
//!   (after `n` messages are committed), `in-loan seq=<k>` (then it sleeps
//!   holding an uncommitted loan until killed), `done published=<n>
//!   evictions=<n> full=<n>`, `lingering` (keeps the ring open until stdin
//!   reaches EOF);
//! - subscriber: `subscribed`, `joined <ring>`, `lost <ring> <n>`, `gone
//!   <ring>`, `error kind=<k> ring=<r> <detail>`, `stalled` (waits for a line
//!   or EOF on stdin), `resumed`, `finished received=<n> lost=<n> errors=<n>`.
//!
//! The subscriber verifies every message (content, checksum, per-publisher
//! order with exact loss accounting, ring sequence numbers) and stops once
//! `P` publishers are gone or unreadable; it writes a [`Report`] and exits 0
//! if nothing was wrong, 1 otherwise. Usage errors exit 2, publisher errors 3.
//! Both die with their parent (`PR_SET_PDEATHSIG`).

use std::{
    io::Write,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use shmbus::{Bus, Error, Policy, Publisher, StartAt, WaitStrategy};
#[path = "peer/core_v2.rs"]
mod core_v2;
#[path = "peer/wake.rs"]
mod wake;

use shmbus_tests::{
    args::Args,
    msg::{SizeSpec, TestMsg},
    report::Report,
    tracker::Tracker,
};

fn main() -> ExitCode {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mut argv = std::env::args().skip(1);
    let role = argv.next().unwrap_or_default();
    let flags = ["loan", "linger", "drain", "group", "local"];
    let args = match Args::parse(argv, &flags) {
        Ok(a) => a,
        Err(e) => return usage(&e),
    };
    match role.as_str() {
        "publish" => publish(args),
        "subscribe" => subscribe(args),
        "hold" => core_v2::hold(args),
        "ring-publish" => core_v2::ring_publish(args),
        "ring-storm" => core_v2::ring_storm(args),
        "sweep" => core_v2::sweep(args),
        "fill" => core_v2::fill(args),
        "access" => core_v2::access(args),
        "hw-pub" => core_v2::hw_pub(args),
        "hw-sub" => core_v2::hw_sub(args),
        "wake-sub" => core_v2::wake_sub(args),
        "fork-reader" => core_v2::fork_reader(args),
        "wake-pub" => wake::wake_pub(args),
        "wake-count" => wake::wake_count(args),
        "chaos-pub" => ExitCode::from(shmbus_tests::chaos::publisher::run(args)),
        "chaos-sub" => ExitCode::from(shmbus_tests::chaos::subscriber::run(args)),
        other => usage(&format!("unknown subcommand {other:?}")),
    }
}

fn usage(e: &str) -> ExitCode {
    eprintln!(
        "peer: {e}\nusage: peer publish|subscribe --root R --topic T ... (see src/bin/peer.rs)"
    );
    ExitCode::from(2)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn bus_from(args: &mut Args) -> Result<Bus, String> {
    let root: PathBuf = args.req("root")?;
    let name: String = args.or("bus", shmbus_bus::DEFAULT_BUS.to_string())?;
    let policy = match args.or("policy", "block".to_string())?.as_str() {
        "block" => Policy::Block,
        "overwrite" => Policy::Overwrite,
        p => return Err(format!("--policy {p:?}: block or overwrite")),
    };
    let capacity = args.or("capacity", 1u64 << 16)?;
    let max_message = shmbus_bus::max_message_limit(capacity).min(1 << 14);
    Bus::builder()
        .root(root)
        .name(name)
        .group_access(args.flag("group"))
        .capacity(capacity)
        .max_message(args.or("max-message", max_message)?)
        .slots(args.or("slots", 8u32)?)
        .policy(policy)
        .build()
        .map_err(|e| e.to_string())
}

struct PublishPlan {
    topic: String,
    id: u32,
    count: u64,
    size: SizeSpec,
    loan: bool,
    batch: usize,
    rate: Option<f64>,
    wait_subscribers: usize,
    hang_after: Option<u64>,
    progress_every: u64,
    linger: bool,
    retry: Option<Duration>,
    stats_every: Option<Duration>,
}

fn publish(mut args: Args) -> ExitCode {
    let parsed = (|| -> Result<(Bus, PublishPlan), String> {
        let bus = bus_from(&mut args)?;
        let size = match (args.opt("size")?, args.opt("size-max")?) {
            (Some(n), None) => SizeSpec::Fixed(n),
            (None, Some(n)) => SizeSpec::UpTo(n),
            (None, None) => SizeSpec::UpTo(200),
            _ => return Err("--size and --size-max exclude each other".into()),
        };
        let plan = PublishPlan {
            topic: args.req("topic")?,
            id: args.req("id")?,
            count: args.req("count")?,
            size,
            loan: args.flag("loan"),
            batch: args.or("batch", 1usize)?.max(1),
            rate: args.opt("rate")?,
            wait_subscribers: args.or("wait-subscribers", 0usize)?,
            hang_after: args.opt("hang-in-loan-after")?,
            progress_every: args.or("progress-every", 0u64)?,
            linger: args.flag("linger"),
            retry: args.opt("retry-ms")?.map(Duration::from_millis),
            stats_every: args.opt("stats-every-ms")?.map(Duration::from_millis),
        };
        args.finish()?;
        Ok((bus, plan))
    })();
    let (bus, plan) = match parsed {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
    match run_publisher(&bus, &plan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer publish: {e}");
            ExitCode::from(3)
        }
    }
}

fn run_publisher(bus: &Bus, plan: &PublishPlan) -> Result<(), Error> {
    let mut publisher = bus.publisher_named::<TestMsg>(&plan.topic, &format!("p{}", plan.id))?;
    let path = bus
        .topic_dir(&plan.topic)?
        .join(format!("{}.ring", publisher.id()));
    say(&format!(
        "ready ring={} path={}",
        publisher.id(),
        path.display()
    ));
    if plan.wait_subscribers > 0 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while publisher.stats().subscribers < plan.wait_subscribers {
            if Instant::now() > deadline {
                return Err(Error::Timeout(Duration::from_secs(30)));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        say(&format!("subscribers {}", publisher.stats().subscribers));
    }
    let start = Instant::now();
    let mut batch = Vec::with_capacity(plan.batch);
    let mut seq = 0;
    let mut blocked = 0u64;
    let mut last_stats = None;
    while seq < plan.count {
        let msg = TestMsg::new(plan.id, seq, plan.size.len(plan.id, seq));
        if plan.hang_after == Some(seq) {
            hang_in_loan(&mut publisher, &msg)?;
        }
        if let Some(rate) = plan.rate {
            let due = start + Duration::from_secs_f64(seq as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        if plan.batch > 1 {
            batch.push(msg);
            if batch.len() == plan.batch || seq + 1 == plan.count {
                publisher.send_batch(batch.iter())?;
                batch.clear();
            } else {
                seq += 1;
                continue;
            }
        } else if plan.loan {
            let len = archived_len(&msg)?;
            let mut loan = publisher.loan(len)?;
            loan.write(&msg)?;
            loan.commit()?;
        } else if let Some(retry) = plan.retry {
            // Short timed sends, so the stats lines keep coming while the
            // ring is full (each retry that finds it full counts a full event).
            loop {
                match publisher.send_timeout(&msg, retry) {
                    Ok(()) => break,
                    Err(Error::Timeout(_)) => {
                        blocked += 1;
                        say_stats(&publisher, blocked, &mut last_stats, plan.stats_every);
                    }
                    Err(e) => return Err(e),
                }
            }
        } else {
            publisher.send(&msg)?;
        }
        say_stats(&publisher, blocked, &mut last_stats, plan.stats_every);
        seq += 1;
        if plan.progress_every > 0 && seq % plan.progress_every == 0 {
            say(&format!("sent {seq}"));
        }
    }
    let stats = publisher.stats();
    say(&format!(
        "done published={} evictions={} full={}",
        stats.published, stats.evictions, stats.full_events
    ));
    if plan.linger {
        say("lingering");
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    }
    Ok(())
}

/// Prints `stats published=<n> full=<n> evictions=<n> subscribers=<n>
/// blocked=<n>` at most once per `every`.
fn say_stats(
    publisher: &Publisher<TestMsg>,
    blocked: u64,
    last: &mut Option<Instant>,
    every: Option<Duration>,
) {
    let Some(every) = every else { return };
    if last.is_some_and(|t| t.elapsed() < every) {
        return;
    }
    *last = Some(Instant::now());
    let s = publisher.stats();
    say(&format!(
        "stats published={} full={} evictions={} subscribers={} blocked={blocked}",
        s.published, s.full_events, s.evictions, s.subscribers
    ));
}

fn archived_len(msg: &TestMsg) -> Result<usize, Error> {
    rkyv::to_bytes::<rkyv::rancor::Error>(msg)
        .map(|b| b.len())
        .map_err(|e| Error::Serialize(e.to_string()))
}

/// Reserves and fills a loan with `msg`, announces it, and never commits:
/// the test kills this process while the loan is outstanding.
fn hang_in_loan(publisher: &mut Publisher<TestMsg>, msg: &TestMsg) -> Result<(), Error> {
    let len = archived_len(msg)?;
    let mut loan = publisher.loan(len)?;
    loan.write(msg)?;
    say(&format!("in-loan seq={}", msg.seq));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

struct SubscribePlan {
    topic: String,
    publishers: usize,
    count: Option<u64>,
    start: StartAt,
    report: Option<PathBuf>,
    stall_after: Option<u64>,
    delay: Duration,
    delay_every: u64,
    wait: WaitStrategy,
    drain: bool,
    timeout: Duration,
    exit_after: Option<u64>,
}

fn subscribe(mut args: Args) -> ExitCode {
    let parsed = (|| -> Result<(Bus, SubscribePlan), String> {
        let bus = bus_from(&mut args)?;
        let start = match args.or("start", "oldest".to_string())?.as_str() {
            "oldest" => StartAt::Oldest,
            "latest" => StartAt::Latest,
            s => return Err(format!("--start {s:?}: oldest or latest")),
        };
        let wait = match args.or("wait", "block".to_string())?.as_str() {
            "block" => WaitStrategy::default(),
            "spin" => WaitStrategy::BusySpin,
            "yield" => WaitStrategy::SpinThenYield { spins: 64 },
            w => return Err(format!("--wait {w:?}: block, spin or yield")),
        };
        let plan = SubscribePlan {
            topic: args.req("topic")?,
            publishers: args.req("expect-publishers")?,
            count: args.opt("count")?,
            start,
            report: args.opt("report")?,
            stall_after: args.opt("stall-after")?,
            delay: Duration::from_micros(args.or("delay-us", 0u64)?),
            delay_every: args.or("delay-every", 1u64)?.max(1),
            wait,
            drain: args.flag("drain"),
            timeout: Duration::from_secs(args.or("timeout-s", 60u64)?),
            exit_after: args.opt("exit-after")?,
        };
        args.finish()?;
        Ok((bus, plan))
    })();
    let (bus, plan) = match parsed {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
    let report = run_subscriber(&bus, &plan);
    if let Some(path) = &plan.report {
        if let Err(e) = report.write_to(path) {
            eprintln!("peer subscribe: cannot write {}: {e}", path.display());
            return ExitCode::from(3);
        }
    }
    say(&format!(
        "finished received={} lost={} errors={}",
        report.total_received(),
        report.total_lost(),
        report.errors.len()
    ));
    if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprint!("{report}");
        ExitCode::from(1)
    }
}

/// Prints the errors recorded since the last call.
fn announce_errors(tracker: &Tracker, printed: &mut usize) {
    for e in &tracker.report().errors[*printed..] {
        say(&format!(
            "error kind={} ring={} {}",
            e.kind,
            e.ring.as_deref().unwrap_or("-"),
            e.detail.replace('\n', " ")
        ));
    }
    *printed = tracker.report().errors.len();
}

fn stall() {
    say("stalled");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    say("resumed");
}

fn run_subscriber(bus: &Bus, plan: &SubscribePlan) -> Report {
    let mut tracker = Tracker::new(plan.start == StartAt::Oldest);
    let mut printed = 0;
    let mut sub = match bus.subscriber_with::<TestMsg>(&plan.topic, plan.start, plan.wait) {
        Ok(s) => s,
        Err(e) => {
            tracker.on_error(&e);
            announce_errors(&tracker, &mut printed);
            return tracker.finish(None, None);
        }
    };
    say("subscribed");
    let deadline = Instant::now() + plan.timeout;
    let mut received = 0u64;
    let mut stalled = false;
    loop {
        if plan.stall_after.is_some_and(|k| received >= k) && !stalled {
            stalled = true;
            stall();
        }
        if tracker.finished(plan.publishers) || plan.exit_after.is_some_and(|n| received >= n) {
            break;
        }
        if Instant::now() > deadline {
            tracker.error(
                "timeout",
                None,
                format!("not finished after {:?}", plan.timeout),
            );
            break;
        }
        let before = received;
        if plan.drain {
            // Batches: one release per ring per batch. Ring ids are not known
            // here; order is tracked by the publisher id in the messages.
            match sub.drain(256, |m| {
                tracker.on_message(None, m);
            }) {
                Ok(n) => received += n as u64,
                Err(e) => tracker.on_error(&e),
            }
        }
        let mut pending = None;
        if received == before {
            match sub.recv_timeout(Duration::from_millis(100)) {
                Ok(sample) => {
                    let ring = sample.publisher().to_string();
                    let (id, seq) = tracker.check_content(Some(&ring), &sample);
                    if sample.sequence() != seq {
                        tracker.error(
                            "ring-seq",
                            Some(&ring),
                            format!(
                                "ring sequence {} carries message seq {seq}",
                                sample.sequence()
                            ),
                        );
                    }
                    pending = Some((ring, id, seq));
                    received += 1;
                }
                Err(Error::Timeout(_)) => {}
                Err(e) => tracker.on_error(&e),
            }
        }
        for event in sub.take_events() {
            match &event {
                shmbus::TopicEvent::PublisherJoined { publisher } => {
                    say(&format!("joined {publisher}"))
                }
                shmbus::TopicEvent::PublisherGone { publisher } => {
                    say(&format!("gone {publisher}"))
                }
                shmbus::TopicEvent::Lost {
                    publisher,
                    messages,
                    ..
                } => {
                    say(&format!("lost {publisher} {messages}"));
                }
            }
            tracker.on_event(&event);
        }
        if let Some((ring, id, seq)) = pending {
            tracker.on_seq(Some(&ring), id, seq);
        }
        announce_errors(&tracker, &mut printed);
        if !plan.delay.is_zero() && received / plan.delay_every != before / plan.delay_every {
            std::thread::sleep(plan.delay);
        }
    }
    let count = if plan.exit_after.is_some() {
        None
    } else {
        plan.count
    };
    let report = tracker.finish(count, Some(plan.publishers));
    for e in &report.errors[printed..] {
        say(&format!(
            "error kind={} ring={} {}",
            e.kind,
            e.ring.as_deref().unwrap_or("-"),
            e.detail
        ));
    }
    report
}
