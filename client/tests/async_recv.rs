//! `Subscriber::recv_async` over the process's reactor: cancel safety (a
//! dropped future leaves no waiter registered and loses nothing) and
//! delivery from a publisher in another process.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::TempRoot;
use shmbus::{Bus, StartAt, WaitStrategy};
use shmbus_bus::RingStatus;

/// Bound on how long a test waits for something that must happen (a
/// liveness bound for a loaded CI machine, never a speed claim).
const PATIENCE: Duration = Duration::from_secs(60);

/// The one ring file of a topic.
fn ring_of(bus: &Bus, topic: &str) -> PathBuf {
    let dir = bus.topic_dir(topic).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "ring"));
        if let Some(path) = found {
            return path;
        }
        assert!(Instant::now() < deadline, "no ring in {}", dir.display());
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn waiters(ring: &Path) -> u32 {
    RingStatus::read(ring).unwrap().waiters
}

/// Waits (async) until the ring counts `n` waiters.
async fn until_waiters(ring: &Path, n: u32) {
    let deadline = Instant::now() + PATIENCE;
    while waiters(ring) != n {
        assert!(
            Instant::now() < deadline,
            "the ring never counted {n} waiters (has {})",
            waiters(ring)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A `recv_async` future dropped by `select!` while it waits leaves no
/// waiter counted on the ring (the count goes back as the future drops,
/// without waiting for any thread), and the next message still arrives.
#[test]
fn dropped_future_in_select_leaves_no_waiter_registered() {
    let root = TempRoot::new("async-select");
    let bus = root.bus();
    let mut subscriber = bus.subscriber::<u64>("t").unwrap();
    let mut publisher = bus.publisher::<u64>("t").unwrap();
    let ring = ring_of(&bus, "t");
    assert_eq!(waiters(&ring), 0);
    runtime().block_on(async {
        for round in 0..20u64 {
            tokio::select! {
                got = subscriber.recv_async() => panic!("nothing was sent: {:?}", got.map(|s| *s)),
                // Completes once the receive is registered and asleep.
                () = until_waiters(&ring, 1) => {}
            }
            // The receive future is dropped: its registration is gone now.
            assert_eq!(waiters(&ring), 0, "round {round}: a waiter was left behind");
            publisher.send(&round).unwrap();
            let got = subscriber.recv_async().await.unwrap();
            assert_eq!(*got, round, "a message was lost or reordered");
        }
    });
    assert!(shmbus::reactor_threads() >= 1);
}

/// Futures dropped at random points while a publisher streams: every
/// message arrives exactly once, in order.
#[test]
fn cancelled_receives_lose_nothing() {
    const N: u64 = if cfg!(debug_assertions) {
        5_000
    } else {
        20_000
    };
    let root = TempRoot::new("async-cancel");
    let bus = root.bus();
    let mut subscriber = bus.subscriber::<u64>("t").unwrap();
    let mut publisher = bus.publisher::<u64>("t").unwrap();
    let sender = std::thread::spawn(move || {
        for i in 0..N {
            publisher.send(&i).unwrap();
            if i % 16 == 0 {
                // Let the receiver run dry and wait now and then.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        publisher
    });
    let (mut next, mut cancelled) = (0u64, 0u64);
    runtime().block_on(async {
        while next < N {
            tokio::select! {
                got = subscriber.recv_async() => {
                    assert_eq!(*got.unwrap(), next);
                    next += 1;
                }
                // Ready at its second poll: a receive that had to wait is
                // dropped right after it registered, most of the time.
                () = tokio::task::yield_now() => cancelled += 1,
            }
        }
    });
    assert!(
        cancelled > 0,
        "no receive was ever cancelled: the test tested nothing"
    );
    let publisher = sender.join().unwrap();
    assert!(subscriber.try_recv().unwrap().is_none());
    let ring = ring_of(&bus, "t");
    assert_eq!(waiters(&ring), 0);
    drop(publisher);
    eprintln!("{N} messages, {cancelled} receives cancelled");
}

/// Environment variable that turns `helper_publisher_process` into the
/// publisher of `messages_arrive_from_a_publisher_in_another_process`.
const HELPER_ENV: &str = "SHMBUS_ASYNC_HELPER_ROOT";
const HELPER_MESSAGES: u64 = 2_000;

/// Not a test of its own: the publisher process of the next test (the test
/// binary runs itself again with `HELPER_ENV` set). Without it, returns.
#[test]
fn helper_publisher_process() {
    let Ok(root) = std::env::var(HELPER_ENV) else {
        return;
    };
    let bus = Bus::builder().root(&root).build().unwrap();
    let mut publisher = bus.publisher_named::<u64>("remote", "child").unwrap();
    // Until the parent's subscriber is in (it registered before we started,
    // so it is pre-joined: wait for its slot to count).
    let deadline = Instant::now() + PATIENCE;
    while publisher.stats().subscribers < 1 {
        assert!(Instant::now() < deadline, "no subscriber joined");
        std::thread::sleep(Duration::from_millis(1));
    }
    for i in 0..HELPER_MESSAGES {
        publisher.send(&i).unwrap();
        if i % 100 == 99 {
            // Idle gaps: the subscriber goes to sleep in the reactor.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// An async subscriber receives everything a publisher in another process
/// sends, in order, waking through the reactor between bursts.
#[test]
fn messages_arrive_from_a_publisher_in_another_process() {
    let root = TempRoot::new("async-remote");
    let bus = root.bus();
    let mut subscriber = bus
        .subscriber_with::<u64>("remote", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["helper_publisher_process", "--exact", "--nocapture"])
        .env(HELPER_ENV, &root.0)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    runtime().block_on(async {
        for i in 0..HELPER_MESSAGES {
            let got = tokio::time::timeout(PATIENCE, subscriber.recv_async())
                .await
                .expect("the child stopped sending")
                .unwrap();
            assert_eq!(*got, i);
            assert!(got.publisher().starts_with("child-"));
        }
    });
    assert!(
        child.wait().unwrap().success(),
        "the publisher process failed"
    );
}

/// An async subscriber with no publisher yet finds one created while it
/// waits (the reactor watches the topic directory) and receives from it.
#[test]
fn waiting_subscriber_finds_a_new_publisher() {
    let root = TempRoot::new("async-new-pub");
    let bus = root.bus();
    let mut subscriber = bus.subscriber::<u64>("late").unwrap();
    let bus2 = root.bus();
    let sender = std::thread::spawn(move || {
        // Not a timing assumption: the receive below succeeds whenever the
        // publisher comes; this pause only makes it likely that the
        // subscriber is already asleep in the reactor by then.
        std::thread::sleep(Duration::from_millis(100));
        let mut publisher = bus2.publisher::<u64>("late").unwrap();
        publisher.send(&42).unwrap();
        publisher
    });
    runtime().block_on(async {
        let got = tokio::time::timeout(PATIENCE, subscriber.recv_async())
            .await
            .expect("the new publisher was never found")
            .unwrap();
        assert_eq!(*got, 42);
    });
    drop(sender.join().unwrap());
}

/// More rings than one reactor thread sleeps on (127): the subscriber's
/// registrations are spread over shards, and a message on any ring wakes
/// it.
#[test]
fn rings_beyond_one_reactor_shard_wake_their_subscriber() {
    const PUBLISHERS: usize = shmbus_bus::MAX_REGISTERED + 5;
    let root = TempRoot::new("async-shards");
    let bus = root
        .builder()
        .capacity(1 << 16)
        .max_message(1 << 12)
        .build()
        .unwrap();
    let mut subscriber = bus.subscriber::<u64>("many").unwrap();
    let mut publishers: Vec<_> = (0..PUBLISHERS)
        .map(|_| bus.publisher::<u64>("many").unwrap())
        .collect();
    let rt = runtime();
    // Attach every ring first (they are found by the directory scan).
    rt.block_on(async {
        let deadline = Instant::now() + PATIENCE;
        while subscriber.publishers().len() < PUBLISHERS {
            assert!(Instant::now() < deadline, "rings not attached");
            assert!(subscriber.try_recv().unwrap().is_none());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let ring = |p: &shmbus::Publisher<u64>| {
        bus.topic_dir("many")
            .unwrap()
            .join(format!("{}.ring", p.id()))
    };
    // The last ring (beyond the first shard's 127), the first, a middle one:
    // sent to while the receive sleeps registered on every ring, so only
    // the reactor's wake can complete it.
    for k in [PUBLISHERS - 1, 0, PUBLISHERS / 2] {
        let path = ring(&publishers[k]);
        let publisher = &mut publishers[k];
        let got = rt.block_on(async {
            let send = async {
                until_waiters(&path, 1).await;
                publisher.send(&(k as u64)).unwrap();
                std::future::pending::<()>().await;
            };
            let receive = async {
                tokio::select! {
                    got = subscriber.recv_async() => *got.unwrap(),
                    () = send => unreachable!("pending() returned"),
                }
            };
            tokio::time::timeout(PATIENCE, receive)
                .await
                .expect("the message never woke the subscriber")
        });
        assert_eq!(got, k as u64);
    }
    assert!(shmbus::reactor_threads() >= 2);
    for p in &publishers {
        assert_eq!(waiters(&ring(p)), 0);
    }
}
