//! Publishes the README's `Pose` on topic `pose`, ten a second, until
//! stopped. Run the subscriber in another terminal:
//!
//! ```text
//! cargo run --example subscriber      # terminal 1
//! cargo run --example publisher       # terminal 2
//! ```
//!
//! Options: `--count N` stops after N poses, `--interval-ms MS` (default
//! 100), `--bus NAME`; `SHMBUS_ROOT=DIR` moves the bus root.
//!
//! Shows: a typed publisher. `send` serializes straight into the ring; it
//! waits only for a subscriber a whole ring behind, so with nobody
//! subscribed it never waits. A subscriber started first receives every
//! pose from the first one.

mod common;

use std::time::Duration;

use common::Pose;
use shmbus::Bus;

fn main() -> Result<(), shmbus::Error> {
    let count: Option<u64> = common::arg("count");
    let interval = Duration::from_millis(common::arg("interval-ms").unwrap_or(100));

    let bus = Bus::open(&common::bus_name())?;
    let mut publisher = bus.publisher::<Pose>("pose")?;
    println!("publishing on topic pose as {}", publisher.id());

    for frame in 0..count.unwrap_or(u64::MAX) {
        let pose = Pose::at(frame);
        publisher.send(&pose)?; // waits only if a subscriber is a full ring behind
        println!("sent pose {frame} x={:.3}", pose.xyz[0]);
        std::thread::sleep(interval);
    }
    // Dropping the publisher closes its ring: subscribers still read every
    // pose sent, then see the publisher gone.
    Ok(())
}
