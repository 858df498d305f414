//! Timeouts mean "the caller's time ran out", nothing else: a wait without
//! a timeout never reports one, and no timeout is too long.

mod common;

use std::{thread, time::Duration};

use common::TempRoot;
use shmbus::{Error, Policy, StartAt, WaitStrategy};

#[test]
fn recv_timeout_duration_max_waits_instead_of_panicking() {
    let root = TempRoot::new("recv-max");
    let bus = root.bus();
    let mut subscriber = bus.subscriber::<u64>("t").unwrap();
    let publisher_bus = bus.clone();
    let sender = thread::spawn(move || {
        let mut publisher = publisher_bus.publisher::<u64>("t").unwrap();
        // Let the subscriber attach, then send until one arrives.
        for i in 0..1000u64 {
            publisher.send(&i).unwrap();
            thread::sleep(Duration::from_millis(5));
        }
    });
    let sample = subscriber.recv_timeout(Duration::MAX).unwrap();
    assert!(*sample < 1000);
    drop(sample);
    drop(subscriber);
    sender.join().unwrap();
}

#[test]
fn send_timeout_duration_max_and_elapsed_timeouts() {
    let root = TempRoot::new("send-max");
    let bus = root
        .builder()
        .capacity(4096)
        .max_message(512)
        .build()
        .unwrap();
    let mut subscriber = bus
        .subscriber_with::<u64>("t", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut publisher = bus.publisher::<u64>("t").unwrap();
    publisher.send_timeout(&1, Duration::MAX).unwrap();
    assert_eq!(*subscriber.recv_timeout(Duration::MAX).unwrap(), 1);
    // Fill the ring; then a timed send reports the timeout it was given.
    while publisher.try_send(&2).is_ok() {}
    let timeout = Duration::from_millis(20);
    match publisher.send_timeout(&3, timeout) {
        Err(Error::Timeout(t)) => assert_eq!(t, timeout),
        other => panic!("{other:?}"),
    }
    assert!(matches!(publisher.try_send(&3), Err(Error::Full)));
    // And a timed receive on an empty topic reports its own.
    let mut empty = bus.subscriber::<u64>("empty").unwrap();
    match empty.recv_timeout(timeout).map(|s| *s) {
        Err(Error::Timeout(t)) => assert_eq!(t, timeout),
        other => panic!("{other:?}"),
    }
}

/// An Overwrite ring lapped again and again while the subscriber reads:
/// copies are torn and thrown away, gaps come and go, and `recv` keeps
/// waiting through all of it; it returns messages and never a timeout.
#[test]
fn recv_without_timeout_never_times_out_under_lapping() {
    let root = TempRoot::new("recv-lapped");
    let bus = root
        .builder()
        .policy(Policy::Overwrite)
        .capacity(4096)
        .max_message(1024)
        .build()
        .unwrap();
    let mut subscriber = bus.subscriber::<Vec<u8>>("lap").unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let bus = bus.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            let mut publisher = bus.publisher::<Vec<u8>>("lap").unwrap();
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                publisher.send(&vec![n as u8; 16 + n % 900]).unwrap();
                n += 1;
            }
        })
    };
    let mut received = 0;
    while received < 2000 {
        match subscriber.recv() {
            Ok(sample) => {
                // A validated copy: every byte is the message's own.
                let first = sample.first().copied();
                assert!(sample.iter().all(|b| Some(*b) == first));
                received += 1;
            }
            Err(Error::Timeout(t)) => panic!("recv() returned Timeout({t:?})"),
            Err(e) => panic!("{e}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(subscriber.lost_messages() > 0, "the ring was never lapped");
}
