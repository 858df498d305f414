//! Untethered eviction seen by every receive call: a clear
//! [`Error::Evicted`], then the ring is read again from its newest message.

mod common;

use std::time::Duration;

use common::TempRoot;
use shmbus::{Bus, Error, Publisher, StartAt, Subscriber, WaitStrategy};

const EVICT_AFTER: Duration = Duration::from_millis(20);

/// A publisher whose ring evicted the subscriber, which has not noticed yet
/// and still finds its next (unread, not yet overwritten) record in place.
fn evicted(root: &TempRoot) -> (Bus, Subscriber<u64>, Publisher<u64>) {
    evicted_with_slots(root, 64)
}

fn evicted_with_slots(root: &TempRoot, slots: u32) -> (Bus, Subscriber<u64>, Publisher<u64>) {
    let bus = root
        .builder()
        .slots(slots)
        .capacity(4096)
        .max_message(256)
        .evict_after(Some(EVICT_AFTER))
        .build()
        .unwrap();
    let mut subscriber = bus
        .subscriber_with::<u64>("e", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut publisher = bus.publisher::<u64>("e").unwrap();
    assert!(subscriber.try_recv().unwrap().is_none()); // attaches
    let mut sent = 0;
    while publisher.try_send(&sent).is_ok() {
        sent += 1;
        assert!(sent < 10_000, "the subscriber never held the ring");
    }
    // Held back longer than EVICT_AFTER: the next gate check evicts.
    std::thread::sleep(EVICT_AFTER * 3);
    publisher.reap_dead_subscribers();
    assert_eq!(publisher.stats().evictions, 1);
    (bus, subscriber, publisher)
}

fn assert_evicted(result: Result<(), Error>, publisher: &Publisher<u64>) {
    match result {
        Err(Error::Evicted {
            topic,
            publisher: id,
        }) => {
            assert_eq!(topic, "e");
            assert_eq!(id, publisher.id());
        }
        Err(e) => panic!("not reported as an eviction: {e:?}"),
        Ok(()) => panic!("the eviction went unnoticed"),
    }
}

/// After the eviction error the subscriber reads the ring again.
fn assert_rejoined(subscriber: &mut Subscriber<u64>, publisher: &mut Publisher<u64>) {
    assert_eq!(publisher.stats().subscribers, 1, "not rejoined");
    publisher.send(&4242).unwrap();
    let got = subscriber.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(*got, 4242);
}

#[test]
fn try_recv_reports_eviction_and_rejoins() {
    let root = TempRoot::new("evict-try");
    let (_bus, mut subscriber, mut publisher) = evicted(&root);
    assert_evicted(subscriber.try_recv().map(drop), &publisher);
    assert_rejoined(&mut subscriber, &mut publisher);
}

#[test]
fn recv_timeout_reports_eviction_and_rejoins() {
    let root = TempRoot::new("evict-timeout");
    let (_bus, mut subscriber, mut publisher) = evicted(&root);
    assert_evicted(
        subscriber.recv_timeout(Duration::from_secs(5)).map(drop),
        &publisher,
    );
    assert_rejoined(&mut subscriber, &mut publisher);
}

#[test]
fn recv_reports_eviction_and_rejoins() {
    let root = TempRoot::new("evict-recv");
    let (_bus, mut subscriber, mut publisher) = evicted(&root);
    assert_evicted(subscriber.recv().map(drop), &publisher);
    assert_rejoined(&mut subscriber, &mut publisher);
}

#[test]
fn drain_reports_eviction_and_rejoins() {
    let root = TempRoot::new("evict-drain");
    let (_bus, mut subscriber, mut publisher) = evicted(&root);
    let mut seen = 0;
    assert_evicted(subscriber.drain(64, |_| seen += 1).map(drop), &publisher);
    assert_eq!(seen, 0);
    assert_rejoined(&mut subscriber, &mut publisher);
}

#[test]
fn recv_async_reports_eviction_and_rejoins() {
    let root = TempRoot::new("evict-async");
    let (_bus, mut subscriber, mut publisher) = evicted(&root);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let result = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), subscriber.recv_async())
            .await
            .expect("recv_async hung")
            .map(drop)
    });
    assert_evicted(result, &publisher);
    assert_rejoined(&mut subscriber, &mut publisher);
}

/// The rejoin must not need a second slot: the evicted one is left first.
#[test]
fn rejoins_a_ring_with_a_single_slot() {
    let root = TempRoot::new("evict-one-slot");
    let (_bus, mut subscriber, mut publisher) = evicted_with_slots(&root, 1);
    assert_evicted(subscriber.try_recv().map(drop), &publisher);
    assert_rejoined(&mut subscriber, &mut publisher);
    assert_eq!(subscriber.publishers(), [publisher.id().to_string()]);
}
