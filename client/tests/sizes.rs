//! Error kinds decided by sizes, never by rkyv's error text; reasons that
//! stay informative in release builds (where rkyv keeps no error text).
//! Run in debug and release: `cargo test -p shmbus [--release]`.

mod common;

use std::time::Duration;

use common::TempRoot;
use shmbus::{Error, Policy, StartAt, WaitStrategy};

/// Archived size of a `Vec<u8>` of `n` bytes: the bytes, padded to 4, then
/// the vector's 8-byte header.
fn vec_archive_len(n: usize) -> usize {
    n.div_ceil(4) * 4 + 8
}

#[test]
fn oversized_send_is_too_large_with_its_exact_size() {
    let root = TempRoot::new("too-large");
    let bus = root
        .builder()
        .capacity(1 << 16)
        .max_message(4096)
        .build()
        .unwrap();
    let mut publisher = bus.publisher::<Vec<u8>>("big").unwrap();
    let message = vec![7u8; 5000];
    let len = vec_archive_len(5000);
    assert_eq!(
        rkyv::to_bytes::<rkyv::rancor::Error>(&message)
            .unwrap()
            .len(),
        len
    );
    // Each entry point, with a first loan far smaller than the message
    // (the last message sent was small) and after a large one.
    publisher.send(&vec![1u8; 3]).unwrap();
    for attempt in 0..2 {
        let sends: [(&str, shmbus::Result<()>); 3] = [
            ("send", publisher.send(&message)),
            ("try_send", publisher.try_send(&message)),
            (
                "send_timeout",
                publisher.send_timeout(&message, Duration::from_millis(10)),
            ),
        ];
        for (what, result) in sends {
            match result {
                Err(Error::TooLarge { len: l, max }) => {
                    assert_eq!((l, max), (len, 4096), "{what} (attempt {attempt})");
                }
                other => panic!("{what} (attempt {attempt}): {other:?}"),
            }
        }
        publisher.send(&vec![1u8; 4000]).unwrap();
    }
    // Nothing of the refused messages reached the ring.
    assert_eq!(publisher.stats().published, 3);
}

#[test]
fn loan_write_too_large_reports_exact_size_and_commits_nothing() {
    let root = TempRoot::new("loan");
    let bus = root.bus();
    let mut subscriber = bus
        .subscriber_with::<Vec<u8>>("loan", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut publisher = bus.publisher::<Vec<u8>>("loan").unwrap();
    let mut loan = publisher.loan(64).unwrap();
    loan.write(&vec![1u8; 8]).unwrap();
    // A failed write overwrote the first archive: nothing valid is left.
    match loan.write(&vec![2u8; 100]) {
        Err(Error::TooLarge { len, max }) => assert_eq!((len, max), (vec_archive_len(100), 64)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(loan.commit(), Err(Error::Serialize(_))));
    assert_eq!(publisher.stats().published, 0);
    // The loan path still works afterwards.
    let mut loan = publisher.loan(64).unwrap();
    loan.write(&vec![3u8; 8]).unwrap();
    loan.commit().unwrap();
    let sample = subscriber.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(sample.as_slice(), &[3u8; 8]);
}

/// Bytes that are not a valid archived `Vec<u8>`: its 8-byte header points
/// far outside the payload.
fn garbage() -> Vec<u8> {
    let mut bytes = vec![0u8; 16];
    bytes[8..12].copy_from_slice(&1_000_000i32.to_le_bytes());
    bytes[12..16].copy_from_slice(&64u32.to_le_bytes());
    bytes
}

#[test]
fn invalid_message_reason_is_informative_in_every_build() {
    let root = TempRoot::new("invalid");
    let bus = root.bus();
    let mut subscriber = bus
        .subscriber_with::<Vec<u8>>("bad", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut publisher = bus.publisher::<Vec<u8>>("bad").unwrap();
    publisher.send_bytes(&garbage()).unwrap();
    publisher.send(&vec![5u8; 3]).unwrap();
    match subscriber.recv_timeout(Duration::from_secs(5)) {
        Err(Error::InvalidMessage {
            reason, type_name, ..
        }) => {
            assert_eq!(type_name, "Vec<u8>");
            // The length is ours, not rkyv's debug text: present in release.
            assert!(reason.contains("16-byte payload"), "{reason:?}");
            assert!(!reason.contains("without error information"), "{reason:?}");
        }
        Err(e) => panic!("{e}"),
        Ok(sample) => panic!("garbage accepted: {:?}", sample.bytes()),
    }
    // Skipped: the next message arrives.
    assert_eq!(
        subscriber
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .as_slice(),
        &[5u8; 3]
    );
}

#[test]
fn drain_skips_only_the_invalid_message() {
    let root = TempRoot::new("drain-invalid");
    let bus = root.bus();
    let mut subscriber = bus
        .subscriber_with::<Vec<u8>>("d", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut publisher = bus.publisher::<Vec<u8>>("d").unwrap();
    publisher.send(&vec![1]).unwrap();
    publisher.send_bytes(&garbage()).unwrap();
    publisher.send(&vec![2]).unwrap();
    publisher.send_bytes(&garbage()).unwrap();
    publisher.send(&vec![3]).unwrap();
    let mut got = Vec::new();
    let result = subscriber.drain(16, |m| got.push(m[0]));
    match result {
        Err(Error::InvalidMessage { reason, .. }) => {
            assert!(reason.contains("1 more invalid"), "{reason:?}");
        }
        other => panic!("{other:?}"),
    }
    // Every valid message was handed over, none silently consumed.
    assert_eq!(got, [1, 2, 3]);
    assert_eq!(subscriber.drain(16, |m| got.push(m[0])).unwrap(), 0);
}

#[test]
fn overwrite_rings_report_sizes_the_same_way() {
    let root = TempRoot::new("overwrite-size");
    let bus = root
        .builder()
        .policy(Policy::Overwrite)
        .capacity(1 << 14)
        .max_message(1000)
        .build()
        .unwrap();
    let mut publisher = bus.publisher::<String>("s").unwrap();
    match publisher.try_send(&"x".repeat(2000)) {
        Err(Error::TooLarge { len, max }) => assert_eq!((len, max), (2008, 1000)),
        other => panic!("{other:?}"),
    }
}
