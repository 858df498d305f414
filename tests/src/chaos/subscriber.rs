//! The chaos subscriber role (`peer chaos-sub`).
//!
//! ```text
//! peer chaos-sub --root R --topic T --mode tethered|untethered|lossy
//!      [--local] [--pause-every N --pause-ms MS] [--snapshot-ms MS]
//!      [--finish-timeout-s S]
//! ```
//!
//! Subscribes from the oldest message and checks every message as it
//! arrives: its checksum and payload ([`crate::msg::verify`]), that the
//! ring's own sequence number matches the message's (`--local`: rings
//! written by the publisher itself; a replica's numbering is the bridge's),
//! and the accounting of [`super::seqtrack`] for `--mode`. Every problem is
//! logged at once as a `v` line; ring states (`s`) every `--snapshot-ms`
//! and when a ring is gone (`gone`). `--pause-every N --pause-ms MS` sleeps
//! after every N messages, to be evicted (untethered) or lapped
//! (overwrite). A `finish` line on standard input makes it drain until no
//! publisher is left (or `--finish-timeout-s` passes, a violation), EOF
//! stops it at once; either way it logs every ring, the per-publisher
//! unions (`u`) and `final`.

use std::{
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use shmbus::{Bus, Error, StartAt, TopicEvent, WaitStrategy};

use super::{
    lines::{emit, Line},
    mono_us,
    publisher::bus_from,
    seqtrack::{Mode, SeqTrack},
};
use crate::{args::Args, msg::TestMsg};

/// Standard input said nothing yet.
const RUN: u8 = 0;
/// Standard input said `finish`: drain, then stop.
const FINISH: u8 = 1;
/// Standard input reached EOF: stop now.
const STOP: u8 = 2;

#[derive(Debug)]
struct Plan {
    topic: String,
    mode: Mode,
    local: bool,
    pause_every: u64,
    pause: Duration,
    snapshot: Duration,
    finish_timeout: Duration,
}

fn watch_stdin() -> Arc<AtomicU8> {
    let state = Arc::new(AtomicU8::new(RUN));
    let flag = state.clone();
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                if line.trim() == "finish" {
                    // Relaxed: the state is the only datum handed over.
                    flag.store(FINISH, Ordering::Relaxed);
                }
                line.clear();
            }
            // Relaxed: as above.
            flag.store(STOP, Ordering::Relaxed);
        });
    if spawned.is_err() {
        state.store(STOP, Ordering::Relaxed);
    }
    state
}

/// Runs the role; the exit code for `main`.
pub fn run(mut args: Args) -> u8 {
    let parsed = (|| -> Result<(Bus, Plan), String> {
        let bus = bus_from(&mut args)?;
        let plan = Plan {
            topic: args.req("topic")?,
            mode: args.req("mode")?,
            local: args.flag("local"),
            pause_every: args.or("pause-every", 0u64)?,
            pause: Duration::from_millis(args.or("pause-ms", 0u64)?),
            snapshot: Duration::from_millis(args.or("snapshot-ms", 100u64)?),
            finish_timeout: Duration::from_secs(args.or("finish-timeout-s", 30u64)?),
        };
        args.finish()?;
        Ok((bus, plan))
    })();
    let (bus, plan) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("peer chaos-sub: {e}");
            return 2;
        }
    };
    let state = watch_stdin();
    match subscribe(&bus, &plan, &state) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("peer chaos-sub: {e}");
            3
        }
    }
}

fn violations(found: Vec<(String, String)>) {
    for (kind, detail) in found {
        emit(&Line::Violation {
            t: mono_us(),
            kind,
            detail,
        });
    }
}

fn subscribe(bus: &Bus, plan: &Plan, state: &AtomicU8) -> Result<(), Error> {
    let mut sub =
        bus.subscriber_with::<TestMsg>(&plan.topic, StartAt::Oldest, WaitStrategy::default())?;
    emit(&Line::Subscribed { t: mono_us() });
    let mut track = SeqTrack::new(plan.mode);
    let mut received = 0u64;
    let mut last_snapshot = Instant::now();
    let mut finishing: Option<Instant> = None;
    let mut drained = false;
    loop {
        // Relaxed: see `watch_stdin`.
        match state.load(Ordering::Relaxed) {
            STOP => break,
            FINISH if finishing.is_none() => finishing = Some(Instant::now()),
            _ => {}
        }
        if let Some(since) = finishing {
            if sub.publishers().is_empty() {
                drained = true;
                break;
            }
            if since.elapsed() > plan.finish_timeout {
                violations(vec![(
                    "drain".into(),
                    format!(
                        "publishers {:?} not gone {:?} after finish",
                        sub.publishers(),
                        plan.finish_timeout
                    ),
                )]);
                break;
            }
        }
        let mut pending = None;
        match sub.recv_timeout(Duration::from_millis(50)) {
            Ok(sample) => {
                let ring = sample.publisher().to_string();
                let msg: &crate::msg::ArchivedTestMsg = &sample;
                let (publisher, seq) = (msg.publisher.to_native(), msg.seq.to_native());
                if let Err(detail) = crate::msg::verify(msg) {
                    violations(vec![("content".into(), format!("{ring}: {detail}"))]);
                }
                if plan.local && sample.sequence() != seq {
                    violations(vec![(
                        "ring-seq".into(),
                        format!(
                            "{ring}: ring sequence {} carries seq {seq}",
                            sample.sequence()
                        ),
                    )]);
                }
                pending = Some((ring, publisher, seq));
                received += 1;
            }
            Err(Error::Timeout(_)) => {}
            Err(Error::Evicted { publisher, .. }) => violations(track.on_evicted(&publisher)),
            Err(e) => violations(vec![("recv".into(), e.to_string())]),
        }
        // Events before the message they came with: a `Lost` precedes the
        // message it explains.
        let mut gone = Vec::new();
        for event in sub.take_events() {
            match event {
                TopicEvent::PublisherJoined { .. } => {}
                TopicEvent::Lost {
                    publisher,
                    messages,
                    ..
                } => violations(track.on_lost(&publisher, messages)),
                TopicEvent::PublisherGone { publisher } => gone.push(publisher),
            }
        }
        if let Some((ring, publisher, seq)) = pending.clone() {
            violations(track.on_message(&ring, publisher, seq));
        }
        for ring in gone {
            violations(track.on_gone(&ring));
            for line in track.take_dirty(mono_us()) {
                emit(&Line::Ring(line));
            }
            emit(&Line::Gone { t: mono_us(), ring });
        }
        if last_snapshot.elapsed() >= plan.snapshot {
            last_snapshot = Instant::now();
            for line in track.take_dirty(mono_us()) {
                emit(&Line::Ring(line));
            }
        }
        let got_one = pending.is_some();
        if got_one && plan.pause_every > 0 && received % plan.pause_every == 0 {
            std::thread::sleep(plan.pause);
        }
    }
    let t = mono_us();
    for line in track.all_rings(t) {
        emit(&Line::Ring(line));
    }
    for (publisher, lo, hi, missing) in track.unions() {
        emit(&Line::Union {
            t,
            publisher,
            lo,
            hi,
            missing,
        });
    }
    emit(&Line::Final {
        t: mono_us(),
        drained,
    });
    Ok(())
}
