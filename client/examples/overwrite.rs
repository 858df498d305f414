//! A lossy sensor topic: the sensor publishes as fast as it can and never
//! waits; a slow display reads what it can and learns exactly what it
//! missed.
//!
//! ```text
//! cargo run --example overwrite
//! cargo run --example overwrite -- --count 2000
//! ```
//!
//! Options: `--count N` readings (default 10000), `--bus NAME`;
//! `SHMBUS_ROOT=DIR`.
//!
//! Shows: `Policy::Overwrite`. The sensor's ring is small (4 KiB: 128
//! readings of 32 bytes with their headers); when the display falls a lap
//! behind, the publisher
//! overwrites, and the display gets `TopicEvent::Lost` with the exact
//! count: received plus lost is everything published. Under Overwrite a
//! sample is a validated copy, since the ring may be overwritten meanwhile.
//! The two roles are threads here for brevity.

mod common;

use std::time::Duration;

use rkyv::{Archive, Deserialize, Serialize};
use shmbus::{Bus, Error, Policy, TopicEvent};

#[derive(Archive, Serialize, Deserialize)]
struct Reading {
    n: u64,
    celsius: f32,
}

fn main() -> Result<(), Error> {
    let count: u64 = common::arg("count").unwrap_or(10_000);
    let bus = Bus::builder()
        .name(common::bus_name())
        .policy(Policy::Overwrite)
        .capacity(4096)
        .max_message(256)
        .build()?;
    let mut display = bus.subscriber::<Reading>("temperature")?;
    let mut sensor = bus.publisher::<Reading>("temperature")?;

    let sensor = std::thread::spawn(move || -> Result<(), Error> {
        for n in 0..count {
            sensor.send(&Reading {
                n,
                celsius: 20.0 + (n % 50) as f32 * 0.1,
            })?; // never waits
        }
        println!("sensor: published {count} readings, never waited");
        Ok(())
    }); // the publisher drops at the end of the thread: its ring closes

    let (mut received, mut lost, mut last) = (0u64, 0u64, None);
    loop {
        match display.recv_timeout(Duration::from_millis(100)) {
            Ok(reading) => {
                received += 1;
                last = Some(reading.n.to_native());
                std::thread::sleep(Duration::from_micros(200)); // a slow display
            }
            Err(Error::Timeout(_)) => {}
            Err(e) => return Err(e),
        }
        let mut gone = false;
        for event in display.take_events() {
            match event {
                TopicEvent::Lost { messages, .. } => {
                    lost += messages;
                    let after = last.map_or("the start".to_string(), |n| format!("#{n}"));
                    println!("display: lost {messages} readings after {after}");
                }
                TopicEvent::PublisherGone { .. } => gone = true,
                TopicEvent::PublisherJoined { .. } => {}
            }
        }
        if gone {
            break;
        }
    }
    sensor.join().expect("sensor thread")?;
    println!(
        "display: received {received}, lost {lost}, of {count} published (lost_messages() = {})",
        display.lost_messages()
    );
    Ok(())
}
