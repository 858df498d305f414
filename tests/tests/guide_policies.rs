//! Claims of `docs/policies.md` that no other test states directly:
//! where a subscriber starts (`StartAt::Latest` by default: only what is
//! published after it joined; `StartAt::Oldest`: also what the ring still
//! holds), and that an Overwrite publisher never waits for a subscriber that
//! does not read, which then learns exactly how much it lost.

use std::time::Duration;

use shmbus::{Bus, Policy, StartAt, WaitStrategy};
use shmbus_tests::harness::TestEnv;

const PEER: &str = env!("CARGO_BIN_EXE_peer");

/// Receives until nothing arrives for 50 ms.
fn received(sub: &mut shmbus::Subscriber<u64>) -> Vec<u64> {
    let mut got = Vec::new();
    while let Ok(m) = sub.recv_timeout(Duration::from_millis(50)) {
        got.push(m.to_native());
    }
    got
}

#[test]
fn latest_starts_after_joining_oldest_reads_what_the_ring_holds() {
    let env = TestEnv::new("guide-start-at", PEER, Duration::from_secs(60));
    let bus = Bus::builder().root(env.root()).build().unwrap();
    let mut publisher = bus.publisher::<u64>("history").unwrap();
    for i in 0..10u64 {
        publisher.send(&i).unwrap();
    }
    let mut latest = bus
        .subscriber_with::<u64>("history", StartAt::Latest, WaitStrategy::default())
        .unwrap();
    let mut oldest = bus
        .subscriber_with::<u64>("history", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut default = bus.subscriber::<u64>("history").unwrap();
    for i in 10..13u64 {
        publisher.send(&i).unwrap();
    }
    assert_eq!(received(&mut latest), [10, 11, 12]);
    assert_eq!(
        received(&mut default),
        [10, 11, 12],
        "the default is Latest"
    );
    assert_eq!(received(&mut oldest), (0..13).collect::<Vec<_>>());
}

#[test]
fn overwrite_publisher_never_waits_and_the_reader_counts_its_loss() {
    let env = TestEnv::new("guide-overwrite", PEER, Duration::from_secs(60));
    let bus = Bus::builder()
        .root(env.root())
        .capacity(4096)
        .max_message(64)
        .policy(Policy::Overwrite)
        .build()
        .unwrap();
    let mut sub = bus.subscriber::<u64>("lossy").unwrap();
    let mut publisher = bus.publisher::<u64>("lossy").unwrap();
    // 10,000 messages of 32 bytes through a 4 KiB ring nobody reads: a
    // Block ring would be full after 128; try_send never is here.
    for i in 0..10_000u64 {
        publisher
            .try_send(&i)
            .expect("Overwrite never refuses a send");
    }
    let got = received(&mut sub);
    assert!(!got.is_empty() && got.len() <= 128, "{}", got.len());
    assert_eq!(got.last(), Some(&9_999), "the newest message is there");
    assert_eq!(
        got.len() as u64 + sub.lost_messages(),
        10_000,
        "received plus lost equals published"
    );
}
