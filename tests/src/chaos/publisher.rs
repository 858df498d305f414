//! The chaos publisher role (`peer chaos-pub`).
//!
//! ```text
//! peer chaos-pub --root R --topic T --id PUB --policy block|overwrite
//!      --capacity BYTES [--evict-after-ms MS] [--rate MSGS_PER_S]
//!      [--size-max BYTES] [--status-ms MS]
//! ```
//!
//! Publishes checksummed [`TestMsg`]s with sequences 0, 1, 2, ... at a
//! steady rate until its standard input reaches EOF, then stops cleanly.
//! It times every send and logs ([`super::lines`]): `ready` once the ring
//! exists, `c` (messages committed so far, longest send) every
//! `--status-ms`, and `done` with the exact count at a clean stop. A `c`
//! line is written only after the sends it counts returned, so the logged
//! count is a lower bound of what was committed if the process is killed.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use shmbus::{Bus, Error, Policy};

use super::{
    lines::{emit, Line},
    mono_us,
};
use crate::{
    args::Args,
    msg::{SizeSpec, TestMsg},
};

/// How long one send may wait before it is logged as a violation (and
/// retried): far beyond any bound the checker accepts.
const SEND_GIVE_UP: Duration = Duration::from_secs(30);

/// What the role was asked to do.
#[derive(Debug)]
struct Plan {
    topic: String,
    id: u32,
    rate: f64,
    size: SizeSpec,
    status: Duration,
}

/// Sets the returned flag once standard input reaches EOF (the driver
/// closed its end: stop cleanly).
pub fn stop_on_stdin_eof() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            while matches!(std::io::Read::read(&mut std::io::stdin(), &mut buf), Ok(n) if n > 0) {}
            // Relaxed: the flag is the only datum handed over; the
            // readers poll it and need no other memory from this thread.
            flag.store(true, Ordering::Relaxed);
        });
    if spawned.is_err() {
        // Without the thread the role could never stop cleanly.
        stop.store(true, Ordering::Relaxed);
    }
    stop
}

/// Builds the bus of a chaos role from `--root`, `--policy`, `--capacity`
/// and `--evict-after-ms`.
///
/// # Errors
///
/// A bad or missing option, or the bus cannot be opened.
pub fn bus_from(args: &mut Args) -> Result<Bus, String> {
    let root: PathBuf = args.req("root")?;
    let policy = match args.or("policy", "block".to_string())?.as_str() {
        "block" => Policy::Block,
        "overwrite" => Policy::Overwrite,
        p => return Err(format!("--policy {p:?}: block or overwrite")),
    };
    let capacity: u64 = args.or("capacity", 1 << 16)?;
    let evict: Option<u64> = args.opt("evict-after-ms")?;
    Bus::builder()
        .root(root)
        .capacity(capacity)
        .max_message(shmbus_bus::max_message_limit(capacity).min(4096))
        .slots(32)
        .policy(policy)
        .evict_after(evict.map(Duration::from_millis))
        .build()
        .map_err(|e| e.to_string())
}

/// Runs the role; the exit code for `main`.
pub fn run(mut args: Args) -> u8 {
    let parsed = (|| -> Result<(Bus, Plan), String> {
        let bus = bus_from(&mut args)?;
        let plan = Plan {
            topic: args.req("topic")?,
            id: args.req("id")?,
            rate: args.or("rate", 1000.0)?,
            size: SizeSpec::UpTo(args.or("size-max", 200usize)?),
            status: Duration::from_millis(args.or("status-ms", 20u64)?),
        };
        args.finish()?;
        if !plan.rate.is_finite() || plan.rate <= 0.0 {
            return Err("--rate must be positive".into());
        }
        Ok((bus, plan))
    })();
    let (bus, plan) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("peer chaos-pub: {e}");
            return 2;
        }
    };
    let stop = stop_on_stdin_eof();
    match publish(&bus, &plan, &stop) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("peer chaos-pub: {e}");
            3
        }
    }
}

fn publish(bus: &Bus, plan: &Plan, stop: &AtomicBool) -> Result<(), Error> {
    let label = format!("c{}", plan.id);
    let mut publisher = bus.publisher_named::<TestMsg>(&plan.topic, &label)?;
    emit(&Line::Ready {
        t: mono_us(),
        publisher: plan.id,
        ring: publisher.id().to_string(),
    });
    let period = Duration::from_secs_f64(1.0 / plan.rate);
    let mut due = Instant::now();
    let mut seq = 0u64;
    let mut max_stall = Duration::ZERO;
    let mut last_status = Instant::now();
    // Relaxed: see `stop_on_stdin_eof`.
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if let Some(wait) = due.checked_duration_since(now) {
            std::thread::sleep(wait);
        } else if now - due > Duration::from_millis(100) {
            // Behind (blocked or descheduled): no burst to catch up.
            due = now;
        }
        due += period;
        let msg = TestMsg::new(plan.id, seq, plan.size.len(plan.id, seq));
        let started = Instant::now();
        loop {
            match publisher.send_timeout(&msg, SEND_GIVE_UP) {
                Ok(()) => break,
                Err(Error::Timeout(_)) => emit(&Line::Violation {
                    t: mono_us(),
                    kind: "stall".into(),
                    detail: format!(
                        "publisher {} seq {seq}: send blocked over {SEND_GIVE_UP:?}",
                        plan.id
                    ),
                }),
                Err(e) => return Err(e),
            }
        }
        max_stall = max_stall.max(started.elapsed());
        seq += 1;
        if last_status.elapsed() >= plan.status {
            last_status = Instant::now();
            emit(&Line::Committed {
                t: mono_us(),
                publisher: plan.id,
                committed: seq,
                max_stall_us: max_stall.as_micros() as u64,
            });
        }
    }
    emit(&Line::Done {
        t: mono_us(),
        publisher: plan.id,
        committed: seq,
        max_stall_us: max_stall.as_micros() as u64,
    });
    drop(publisher);
    Ok(())
}
