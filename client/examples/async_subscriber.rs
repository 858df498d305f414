//! One tokio task receiving from two topics at once with `select!`: poses
//! and battery readings, each from its own publisher.
//!
//! ```text
//! cargo run --example async_subscriber
//! cargo run --example async_subscriber -- --count 5 --interval-ms 1
//! ```
//!
//! Options: `--count N` messages per topic (default 20), `--interval-ms MS`
//! between sends (default 100), `--bus NAME`; `SHMBUS_ROOT=DIR`.
//!
//! Shows: `Subscriber::recv_async` parks the task, not a thread (one reactor
//! thread per 127 rings waits for all async subscribers of the process),
//! and is cancel-safe:
//! when `select!` takes one branch it drops the other's future, and that
//! topic's next message is still there for the next loop. The publishers are
//! threads standing in for two other services.

mod common;

use std::time::Duration;

use common::Pose;
use shmbus::Bus;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), shmbus::Error> {
    let count: u64 = common::arg("count").unwrap_or(20);
    let interval = Duration::from_millis(common::arg("interval-ms").unwrap_or(100));
    let bus = Bus::open(&common::bus_name())?;

    // Subscribe first: a subscriber that exists when a publisher starts gets
    // everything that publisher sends.
    let mut poses = bus.subscriber::<Pose>("pose")?;
    let mut battery = bus.subscriber::<f32>("battery")?;
    let services = start_publishers(&bus, count, interval)?;

    let (mut pose_count, mut battery_count) = (0, 0);
    while pose_count < count || battery_count < count {
        tokio::select! {
            pose = poses.recv_async(), if pose_count < count => {
                let pose = pose?;
                println!("pose {} x={:.3}", pose.frame, pose.xyz[0].to_native());
                pose_count += 1;
            }
            volts = battery.recv_async(), if battery_count < count => {
                println!("battery {:.2} V", volts?.to_native());
                battery_count += 1;
            }
        }
    }
    println!("received {pose_count} poses and {battery_count} battery readings");
    for service in services {
        service.join().expect("publisher thread")?;
    }
    Ok(())
}

type Service = std::thread::JoinHandle<Result<(), shmbus::Error>>;

/// Two publishers on their own threads, `count` messages each.
fn start_publishers(bus: &Bus, count: u64, interval: Duration) -> shmbus::Result<[Service; 2]> {
    let mut pose_publisher = bus.publisher::<Pose>("pose")?;
    let mut battery_publisher = bus.publisher::<f32>("battery")?;
    let poses = std::thread::spawn(move || {
        for frame in 0..count {
            pose_publisher.send(&Pose::at(frame))?;
            std::thread::sleep(interval);
        }
        Ok(())
    });
    let battery = std::thread::spawn(move || {
        for n in 0..count {
            battery_publisher.send(&(24.0 - n as f32 * 0.01))?;
            std::thread::sleep(interval * 3);
        }
        Ok(())
    });
    Ok([poses, battery])
}
