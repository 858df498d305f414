//! `RingObserver::try_take` (owned copies, the Zenoh gateway's export):
//! against a publisher that laps it, every message it hands out is whole
//! and in order, and what it misses is counted exactly.

use std::path::PathBuf;

use shmbus_bus::{Policy, RingConfig, RingObserver, RingWriter, StartAt, Taken};

/// Message `seq`: its number, then bytes derived from it, length varying.
fn message(seq: u64) -> Vec<u8> {
    let len = 8 + (seq * 29 % 500) as usize;
    let mut m = seq.to_le_bytes().to_vec();
    m.extend((8..len).map(|i| (seq as usize * 31 + i) as u8));
    m
}

#[test]
fn taken_messages_are_whole_and_losses_exact_while_the_publisher_laps() {
    let dir = PathBuf::from(format!("/dev/shm/shmbus-test-{}-take", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.ring");
    let config = RingConfig {
        capacity: 8192,
        max_message: 1024,
        policy: Policy::Overwrite,
        ..RingConfig::default()
    };
    let mut writer = RingWriter::create(&path, &config).unwrap();
    let mut observer = RingObserver::open(&path, StartAt::Oldest).unwrap();
    const N: u64 = 200_000;
    let publisher = std::thread::spawn(move || {
        for seq in 0..N {
            writer.try_write(&message(seq)).unwrap();
        }
        writer
    });
    let (mut received, mut lost, mut next) = (0u64, 0u64, 0u64);
    loop {
        match observer.try_take().unwrap() {
            Taken::Message { sequence, payload } => {
                assert_eq!(sequence, next, "in order, gaps told");
                assert_eq!(payload, message(sequence), "whole");
                received += 1;
                next = sequence + 1;
            }
            Taken::Gap { messages, .. } => {
                lost += messages;
                next += messages;
            }
            Taken::Empty if publisher.is_finished() && next == N => break,
            Taken::Empty => std::thread::yield_now(),
            Taken::Closed => panic!("the publisher is alive"),
        }
    }
    let writer = publisher.join().unwrap();
    assert_eq!(received + lost, N);
    assert!(received > 0);
    drop(writer);
    // Gone and read: Closed.
    assert_eq!(observer.try_take().unwrap(), Taken::Closed);
    std::fs::remove_dir_all(&dir).unwrap();
}
