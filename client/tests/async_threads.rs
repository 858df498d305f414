//! 100 idle async subscribers share the process's reactor: a bounded number
//! of threads, not one per waiting receive. Alone in its test binary, so no
//! other test's threads are counted.

mod common;

use std::time::{Duration, Instant};

use common::TempRoot;
use shmbus_bus::RingStatus;

const SUBSCRIBERS: usize = 100;
const PATIENCE: Duration = Duration::from_secs(60);

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn idle_async_subscribers_use_a_bounded_number_of_threads() {
    let root = TempRoot::new("async-threads");
    let bus = root.bus();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // One topic each, with a publisher: every subscriber has a ring to
    // wait on.
    let mut publishers = Vec::new();
    let mut rings = Vec::new();
    let mut tasks = Vec::new();
    let before = threads();
    for k in 0..SUBSCRIBERS {
        let topic = format!("t{k}");
        let mut subscriber = bus.subscriber::<u64>(&topic).unwrap();
        let publisher = bus.publisher::<u64>(&topic).unwrap();
        rings.push(
            bus.topic_dir(&topic)
                .unwrap()
                .join(format!("{}.ring", publisher.id())),
        );
        publishers.push(publisher);
        tasks.push(rt.spawn(async move {
            let got = *subscriber.recv_async().await.unwrap();
            (got, subscriber)
        }));
    }
    // Every receive registered and asleep.
    let deadline = Instant::now() + PATIENCE;
    for ring in &rings {
        while RingStatus::read(ring).unwrap().waiters != 1 {
            assert!(
                Instant::now() < deadline,
                "{} has no waiter",
                ring.display()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let during = threads();
    // 100 rings fit one reactor shard (127 rings): one thread, plus at
    // most the runtime's own (its workers started above; tokio's blocking
    // pool is not used).
    assert_eq!(shmbus::reactor_threads(), 1);
    assert!(
        during <= before + 2,
        "{SUBSCRIBERS} waiting receives took {} threads (from {before} to {during})",
        during - before
    );
    for (k, publisher) in publishers.iter_mut().enumerate() {
        publisher.send(&(k as u64)).unwrap();
    }
    for (k, task) in tasks.into_iter().enumerate() {
        let (got, _subscriber) = rt.block_on(task).unwrap();
        assert_eq!(got, k as u64);
    }
    for ring in &rings {
        assert_eq!(RingStatus::read(ring).unwrap().waiters, 0);
    }
}
