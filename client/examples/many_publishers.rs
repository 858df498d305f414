//! One topic, three publisher processes, one subscriber: messages of each
//! publisher arrive in the order it sent them; publishers interleave.
//!
//! ```text
//! cargo run --example many_publishers
//! ```
//!
//! Options: `--count N` messages per publisher (default 1000),
//! `--bus NAME`; `SHMBUS_ROOT=DIR`.
//!
//! Shows: a topic is one ring per publisher. This program subscribes, then
//! starts itself three times as a publisher (`--publisher K`); the
//! subscriber serves the rings round robin. Order holds per publisher (the
//! check below), never across publishers: there is no global order.

mod common;

use std::{collections::BTreeMap, process::Command, time::Duration};

use rkyv::{Archive, Deserialize, Serialize};
use shmbus::Bus;

#[derive(Archive, Serialize, Deserialize)]
struct Count {
    publisher: u32,
    n: u64,
}

const PUBLISHERS: u32 = 3;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: u64 = common::arg("count").unwrap_or(1000);
    let bus_name = common::bus_name();
    let bus = Bus::open(&bus_name)?;
    if let Some(k) = common::arg::<u32>("publisher") {
        let mut publisher = bus.publisher_named::<Count>("counts", &format!("counter{k}"))?;
        for n in 0..count {
            publisher.send(&Count { publisher: k, n })?;
        }
        return Ok(());
    }

    // Subscribed before the publishers start, so it gets all they send.
    let mut subscriber = bus.subscriber::<Count>("counts")?;
    let mut children = Vec::new();
    for k in 0..PUBLISHERS {
        children.push(
            Command::new(std::env::current_exe()?)
                .args(["--publisher", &k.to_string(), "--count", &count.to_string()])
                .args(["--bus", &bus_name])
                .spawn()?,
        );
    }

    let mut next: BTreeMap<String, u64> = BTreeMap::new(); // per publisher id
    let mut arrivals = Vec::new();
    for _ in 0..count * u64::from(PUBLISHERS) {
        let message = subscriber.recv_timeout(Duration::from_secs(30))?;
        let expected = next.entry(message.publisher().to_string()).or_insert(0);
        if message.n != *expected {
            return Err(format!(
                "{}: got {} after {}",
                message.publisher(),
                message.n,
                *expected
            )
            .into());
        }
        *expected += 1;
        if arrivals.len() < 12 {
            arrivals.push(format!("{}:{}", message.publisher, message.n));
        }
    }
    for child in &mut children {
        child.wait()?;
    }
    println!("first arrivals (publisher:n): {}", arrivals.join(" "));
    for (id, n) in &next {
        println!("{id}: {n} messages, in order");
    }
    Ok(())
}
