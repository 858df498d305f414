//! `Subscriber::recv_async` in a tokio runtime, fed by another process.
//!
//! Proves: every message of a publisher process arrives through
//! `recv_async`, in order and intact, then `PublisherGone`; and idle waits do
//! not block the runtime (a ticker task on the same single-threaded runtime
//! keeps running while the receive waits for the rate-limited publisher).

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use shmbus::{Error, StartAt, WaitStrategy};
use shmbus_tests::{
    harness::{TestEnv, LINE_TIMEOUT},
    msg::TestMsg,
    tracker::Tracker,
};

const PEER: &str = env!("CARGO_BIN_EXE_peer");
const COUNT: u64 = 2_000;

#[tokio::test(flavor = "current_thread")]
async fn recv_async_receives_from_another_process() {
    let env = TestEnv::new("async", PEER, Duration::from_secs(60));
    let topic = "async";
    let mut sub = env
        .bus()
        .subscriber_with::<TestMsg>(topic, StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut publisher = env.peer(
        "publisher",
        &[
            "publish",
            "--topic",
            topic,
            "--id",
            "5",
            "--count",
            &COUNT.to_string(),
            "--size-max",
            "300",
            "--rate",
            "10000",
            "--wait-subscribers",
            "1",
        ],
    );

    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(2));
            loop {
                every.tick().await;
                // Relaxed: a counter read after the receive loop.
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let mut tracker = Tracker::new(true);
    let deadline = Instant::now() + LINE_TIMEOUT;
    while !tracker.finished(1) {
        assert!(Instant::now() < deadline, "{}", tracker.report());
        let mut pending = None;
        match tokio::time::timeout(Duration::from_millis(200), sub.recv_async()).await {
            Ok(Ok(sample)) => {
                let ring = sample.publisher().to_string();
                let (id, seq) = tracker.check_content(Some(&ring), &sample);
                pending = Some((ring, id, seq));
            }
            Ok(Err(Error::Timeout(_))) | Err(_) => {}
            Ok(Err(e)) => tracker.on_error(&e),
        }
        for event in sub.take_events() {
            tracker.on_event(&event);
        }
        if let Some((ring, id, seq)) = pending {
            tracker.on_seq(Some(&ring), id, seq);
        }
    }
    ticker.abort();
    publisher.wait_ok(LINE_TIMEOUT);
    let report = tracker.finish(Some(COUNT), Some(1));
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(report.publisher(5).received, COUNT, "{report}");
    assert!(
        ticks.load(Ordering::Relaxed) > 0,
        "the runtime's only thread was blocked"
    );
}
