//! A publisher that must not wait on a stuck subscriber: with untethered
//! eviction, a subscriber that holds it back longer than `evict_after` is
//! evicted, told so, and rejoins at the newest message.
//!
//! ```text
//! cargo run --example untethered
//! cargo run --example untethered -- --count 1000
//! ```
//!
//! Options: `--count N` ticks, one per millisecond (default 2000),
//! `--bus NAME`; `SHMBUS_ROOT=DIR`.
//!
//! Shows: `BusBuilder::evict_after`. The subscriber reads one tick, then
//! stalls for a second; the ring (4 KiB: 128 ticks) fills, the publisher
//! waits `evict_after` (100 ms), evicts it and goes on (it prints its
//! longest send).
//! The subscriber's next receive returns `Error::Evicted` once, then it
//! reads again from the newest tick. Without `evict_after` the publisher
//! would wait for it (Block: nothing is lost), and a subscriber whose
//! process died is evicted in any case. The two roles are threads here for
//! brevity.

mod common;

use std::time::{Duration, Instant};

use shmbus::{Bus, Error, TopicEvent};

fn main() -> Result<(), Error> {
    let count: u64 = common::arg("count").unwrap_or(2000);
    let bus = Bus::builder()
        .name(common::bus_name())
        .capacity(4096)
        .max_message(256)
        .evict_after(Some(Duration::from_millis(100)))
        .build()?;
    let mut subscriber = bus.subscriber::<u64>("ticks")?;
    let mut publisher = bus.publisher::<u64>("ticks")?;

    let stuck = std::thread::spawn(move || -> Result<(), Error> {
        let first = *subscriber.recv()?;
        println!("subscriber: read tick {first}, now stuck for 1 s");
        std::thread::sleep(Duration::from_secs(1));
        let (mut evicted, mut after_rejoin, mut last) = (false, 0u64, None);
        loop {
            match subscriber.recv_timeout(Duration::from_millis(200)) {
                Ok(tick) => {
                    if evicted && after_rejoin == 0 {
                        // Past a full ring (128 ticks): the publisher went on.
                        println!("subscriber: rejoined at tick {}", *tick);
                    }
                    after_rejoin += u64::from(evicted);
                    last = Some(*tick);
                }
                Err(e @ Error::Evicted { .. }) => {
                    println!("subscriber: {e}");
                    evicted = true;
                }
                Err(Error::Timeout(_)) => {}
                Err(e) => return Err(e),
            }
            let events = subscriber.take_events();
            if events
                .iter()
                .any(|e| matches!(e, TopicEvent::PublisherGone { .. }))
            {
                break;
            }
        }
        println!("subscriber: read {after_rejoin} ticks after rejoining, the last {last:?}");
        Ok(())
    });

    let mut longest = Duration::ZERO;
    for tick in 0..count {
        let start = Instant::now();
        publisher.send(&tick)?;
        longest = longest.max(start.elapsed());
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "publisher: sent {count} ticks, longest send {longest:?}, evictions {}",
        publisher.stats().evictions
    );
    drop(publisher); // closes the ring: the subscriber sees it gone
    stuck.join().expect("subscriber thread")?;
    Ok(())
}
