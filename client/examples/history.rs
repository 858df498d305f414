//! A late joiner reading history: a service logs its boot steps before
//! anyone listens; a subscriber started later, in another process, reads
//! them from the oldest message still in the ring.
//!
//! ```text
//! cargo run --example history
//! ```
//!
//! Options: `--count N` boot steps (default 5), `--bus NAME`;
//! `SHMBUS_ROOT=DIR`.
//!
//! Shows: `StartAt::Oldest` against the default `StartAt::Latest`. This
//! program publishes, then starts itself again as the late joiner
//! (`--late-joiner`) and keeps its publisher alive until the joiner is done:
//! a ring lives as long as a process uses it. History is what the ring
//! still holds; an older message is overwritten when, with no subscriber to
//! wait for, the publisher needs its space.

mod common;

use std::{process::Command, time::Duration};

use shmbus::{Bus, StartAt, WaitStrategy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: u64 = common::arg("count").unwrap_or(5);
    let bus_name = common::bus_name();
    let bus = Bus::open(&bus_name)?;
    if common::has("late-joiner") {
        return late_joiner(&bus, count);
    }

    let mut log = bus.publisher::<String>("boot-log")?;
    for step in 0..count {
        log.send(&format!("boot step {step}"))?; // nobody listens yet
    }
    println!("service: logged {count} boot steps with no subscriber");

    let joiner = Command::new(std::env::current_exe()?)
        .args([
            "--late-joiner",
            "--count",
            &count.to_string(),
            "--bus",
            &bus_name,
        ])
        .status()?;
    println!("service: the late joiner exited with {joiner}");
    drop(log);
    if !joiner.success() {
        return Err("the late joiner failed".into());
    }
    Ok(())
}

/// Runs in a second process, after the boot steps were published.
fn late_joiner(bus: &Bus, count: u64) -> Result<(), Box<dyn std::error::Error>> {
    let mut latest = bus.subscriber::<String>("boot-log")?; // StartAt::Latest
    let mut oldest =
        bus.subscriber_with::<String>("boot-log", StartAt::Oldest, WaitStrategy::default())?;

    for _ in 0..count {
        let line = oldest.recv_timeout(Duration::from_secs(10))?;
        println!(
            "late joiner (oldest): {} (#{})",
            line.as_str(),
            line.sequence()
        );
    }
    let missed = latest.try_recv()?.is_none();
    println!("late joiner (latest): sees none of them: {missed}");
    Ok(())
}
