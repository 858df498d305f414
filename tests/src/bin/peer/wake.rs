//! Peer modes for the wake-up tests (`tests/tests/wakeups.rs`, issue 9).
//!
//! ```text
//! peer wake-pub --path P --bursts N --acks FILE --subs K [--burst-max B]
//!      [--pause-max-us U] [--seed S] [--handshake membarrier|fence]
//! peer wake-count --path P --acks FILE --index I [--slice-ms MS] [--spins N]
//! ```
//!
//! - `wake-pub`: creates a bus-level [`RingWriter`] (Block) at `--path` with
//!   the given handshake, prints `ready handshake=<h>`, waits for a line on
//!   stdin (the test sends it once every subscriber joined), then sends
//!   `--bursts` bursts of 1..=`B` messages, one `write` per message (the
//!   payload is the message's number, 8 bytes little-endian). After each
//!   burst it waits until all `K` subscribers acknowledged every message
//!   (their counts in `--acks`, 8 bytes each), then pauses a random
//!   0..=`U` µs (two bursts in three). Waiting for the acknowledgements
//!   makes a lost wake-up visible: nothing else would wake that sleeper, so
//!   its sleep runs to its timeout with the burst there. Prints `done
//!   sent=<n>` and closes the ring. Exit 0, 1 on an error (or after 60 s
//!   without an acknowledgement: `stuck`).
//! - `wake-count`: joins the ring at `--path` (oldest record), sets its
//!   sleep slice to `--slice-ms` (default 10 000) and receives with
//!   `Block { spins: N }` (default 0: every empty poll sleeps) and no
//!   timeout until the ring closes, checking that the numbers arrive
//!   0, 1, 2, ..., storing its count in slot `I` of `--acks` after each.
//!   Prints `joined handshake=<h>`, then `finished
//!   received=<n> sleeps=<n> ready=<n> woken=<n> timeouts=<n>
//!   timeouts_with_data=<n>` (its [`shmbus_bus::SleepStats`]). Exit 0 if
//!   every number arrived in order, 1 otherwise.

use std::{
    fs::File,
    io::BufRead,
    os::unix::fs::FileExt,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use shmbus_bus::{
    ReadEvent, RingConfig, RingReader, RingWriter, StartAt, WaitStrategy, WakeHandshake,
};
use shmbus_tests::{args::Args, hostile::SplitMix};

use super::say;

fn done(r: Result<(), String>, mode: &str) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("error {e}"));
            eprintln!("peer {mode}: {e}");
            ExitCode::from(1)
        }
    }
}

fn handshake_name(h: Option<WakeHandshake>) -> &'static str {
    match h {
        Some(WakeHandshake::Membarrier) => "membarrier",
        Some(WakeHandshake::Fence) => "fence",
        None => "none",
    }
}

/// `wake-pub`: see the module docs.
pub(crate) fn wake_pub(args: Args) -> ExitCode {
    done(run_wake_pub(args), "wake-pub")
}

fn run_wake_pub(mut args: Args) -> Result<(), String> {
    let _ = args.opt::<PathBuf>("root")?;
    let path: PathBuf = args.req("path")?;
    let bursts: u64 = args.req("bursts")?;
    let burst_max: u64 = args.or("burst-max", 8)?;
    let pause_max_us: u64 = args.or("pause-max-us", 300)?;
    let seed: u64 = args.or("seed", 1)?;
    let acks: PathBuf = args.req("acks")?;
    let subs: u64 = args.req("subs")?;
    let handshake = match args.or("handshake", "membarrier".to_string())?.as_str() {
        "membarrier" => WakeHandshake::Membarrier,
        "fence" => WakeHandshake::Fence,
        h => return Err(format!("--handshake {h:?}: membarrier or fence")),
    };
    args.finish()?;
    let config = RingConfig {
        capacity: 1 << 16,
        max_message: 64,
        wake_handshake: handshake,
        ..RingConfig::default()
    };
    let mut writer = RingWriter::create(&path, &config).map_err(|e| format!("create: {e}"))?;
    say(&format!(
        "ready handshake={}",
        handshake_name(writer.info().wake_handshake)
    ));
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("stdin: {e}"))?;
    let acks = File::open(&acks).map_err(|e| format!("acks: {e}"))?;
    let mut rng = SplitMix(seed);
    let mut sent = 0u64;
    for _ in 0..bursts {
        for _ in 0..=rng.below(burst_max.max(1)) {
            writer
                .write(
                    &sent.to_le_bytes(),
                    WaitStrategy::default(),
                    Some(Duration::from_secs(60)),
                )
                .map_err(|e| format!("write {sent}: {e}"))?;
            sent += 1;
        }
        let since = Instant::now();
        while (0..subs).any(|i| ack_of(&acks, i) < sent) {
            if since.elapsed() > Duration::from_secs(60) {
                return Err(format!("stuck: no acknowledgement of {sent} for 60 s"));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        if rng.below(3) != 0 && pause_max_us > 0 {
            std::thread::sleep(Duration::from_micros(rng.below(pause_max_us + 1)));
        }
    }
    say(&format!("done sent={sent}"));
    drop(writer);
    Ok(())
}

/// Subscriber `i`'s acknowledged count in the acks file.
fn ack_of(acks: &File, i: u64) -> u64 {
    let mut b = [0u8; 8];
    match acks.read_exact_at(&mut b, 8 * i) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => 0,
    }
}

/// `wake-count`: see the module docs.
pub(crate) fn wake_count(args: Args) -> ExitCode {
    done(run_wake_count(args), "wake-count")
}

fn run_wake_count(mut args: Args) -> Result<(), String> {
    let _ = args.opt::<PathBuf>("root")?;
    let path: PathBuf = args.req("path")?;
    let slice_ms: u64 = args.or("slice-ms", 10_000)?;
    let spins: u32 = args.or("spins", 0)?;
    let acks: PathBuf = args.req("acks")?;
    let index: u64 = args.req("index")?;
    args.finish()?;
    let acks = std::fs::OpenOptions::new()
        .write(true)
        .open(&acks)
        .map_err(|e| format!("acks: {e}"))?;
    let mut reader = RingReader::open(&path, StartAt::Oldest).map_err(|e| format!("open: {e}"))?;
    reader.set_max_sleep(Duration::from_millis(slice_ms));
    say(&format!(
        "joined handshake={}",
        handshake_name(reader.info().wake_handshake)
    ));
    let mut received = 0u64;
    loop {
        match reader.read(WaitStrategy::Block { spins }, None) {
            Ok(ReadEvent::Message(m)) => {
                let n = m
                    .payload()
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
                    .ok_or("short payload")?;
                if n != received {
                    return Err(format!("got message {n}, expected {received}"));
                }
                received += 1;
                acks.write_all_at(&received.to_le_bytes(), 8 * index)
                    .map_err(|e| format!("ack: {e}"))?;
            }
            Ok(ReadEvent::Closed) => break,
            Ok(other) => return Err(format!("after {received}: {other:?}")),
            Err(e) => return Err(format!("after {received}: {e}")),
        }
    }
    let s = reader.sleep_stats();
    say(&format!(
        "finished received={received} sleeps={} ready={} woken={} timeouts={} timeouts_with_data={}",
        s.sleeps, s.ready_at_recheck, s.woken, s.timeouts, s.timeouts_with_data
    ));
    Ok(())
}
