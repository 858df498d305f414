//! Receives the `Pose`s of every publisher of topic `pose`, blocking
//! between them, and prints each as it reads it in place.
//!
//! ```text
//! cargo run --example subscriber      # terminal 1
//! cargo run --example publisher       # terminal 2 (start more: each is its own ring)
//! ```
//!
//! Options: `--count N` stops after N poses, `--bus NAME`;
//! `SHMBUS_ROOT=DIR` moves the bus root.
//!
//! Shows: a typed subscriber, a blocking `recv` (asleep in the kernel, no
//! CPU, while nothing comes), the archived message read where the publisher
//! wrote it, and the topic's events (publishers joining and leaving).

mod common;

use common::Pose;
use shmbus::{Bus, TopicEvent};

fn main() -> Result<(), shmbus::Error> {
    let count: Option<u64> = common::arg("count");

    let bus = Bus::open(&common::bus_name())?;
    let mut subscriber = bus.subscriber::<Pose>("pose")?;
    println!("waiting for poses on topic pose");

    for _ in 0..count.unwrap_or(u64::MAX) {
        let pose = subscriber.recv()?; // &ArchivedPose, validated, in the shared ring
        println!(
            "received pose {} x={:.3} label={} from {} (#{})",
            pose.frame,
            pose.xyz[0].to_native(),
            pose.label,
            pose.publisher(),
            pose.sequence()
        );
        drop(pose); // releases the ring space; hold samples briefly
        for event in subscriber.take_events() {
            match event {
                TopicEvent::PublisherJoined { publisher } => println!("{publisher} joined"),
                TopicEvent::PublisherGone { publisher } => println!("{publisher} is gone"),
                TopicEvent::Lost {
                    publisher,
                    messages,
                    ..
                } => {
                    println!("lost {messages} poses of {publisher}")
                }
            }
        }
    }
    Ok(())
}
