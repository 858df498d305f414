//! The formulas of `docs/sizing.md`, checked on real rings:
//!
//! - a record takes `16 + round_up(len, 16)` bytes, so a Block ring of
//!   capacity `C` holds `C / record` unread messages when the record size
//!   divides `C`, and after a wrap one fewer at most when it does not (the
//!   end of the ring is padded);
//! - a typed message's `len` is its rkyv archive's length;
//! - the data file is `8 KiB + C`, the control file `256 + 128 * slots`
//!   rounded up to 4 KiB pages, a topic's subscriber registry 16,448
//!   bytes, and a tmpfs of `S` bytes holds
//!   `S / (data + control)` rings (the 64 MiB of Docker's default
//!   `/dev/shm` hold 15 default rings of 4 MiB; the 16th is `ENOSPC`).

use std::{path::Path, time::Duration};

use shmbus::{Bus, Error};
use shmbus_bus::{
    layout::{control_file_len, record_size},
    max_message_limit, RingConfig, RingReader, RingWriter, StartAt,
};
use shmbus_tests::{
    harness::TestEnv,
    isolation::{is_root, skip, TmpfsMount},
};

const PEER: &str = env!("CARGO_BIN_EXE_peer");

/// Writes `len`-byte payloads with `try_write` until the ring is full.
fn fill(writer: &mut RingWriter, len: usize) -> u64 {
    let payload = vec![0x5a; len];
    let mut n = 0;
    loop {
        match writer.try_write(&payload) {
            Ok(()) => n += 1,
            Err(shmbus_bus::Error::Full) => return n,
            Err(e) => panic!("unexpected error filling the ring: {e}"),
        }
    }
}

/// Reads every unread message; returns how many.
fn drain(reader: &mut RingReader) -> u64 {
    let mut n = 0;
    while reader
        .drain(usize::MAX, |_| n += 1)
        .expect("drain")
        .messages
        > 0
    {}
    n
}

#[test]
fn block_ring_holds_capacity_over_record_size_messages() {
    let env = TestEnv::new("guide-sizing", PEER, Duration::from_secs(60));
    let dir = env.root().join("sizing");
    shmbus_bus::create_dir_all(env.root(), &dir, 0o700).unwrap();
    let cases = [
        (4096u64, 0usize),
        (4096, 64),
        (4096, 100),
        (65536, 16),
        (65536, 64),
        (65536, 1000),
        (65536, 4080),
        (1 << 20, 8),
        (1 << 20, 32752),
    ];
    for (i, (capacity, len)) in cases.into_iter().enumerate() {
        let config = RingConfig {
            capacity,
            max_message: max_message_limit(capacity),
            slots: 8,
            ..RingConfig::default()
        };
        let path = dir.join(format!("case{i}.ring"));
        let mut writer = RingWriter::create(&path, &config).unwrap();
        // A subscriber that has read nothing gates the publisher.
        let mut reader = RingReader::open(&path, StartAt::Oldest).unwrap();
        let record = record_size(len as u64);
        let fits = capacity / record;
        assert_eq!(
            fill(&mut writer, len),
            fits,
            "capacity {capacity}, {len}-byte payloads, {record}-byte records"
        );
        // Second lap: the end of the ring may be padded.
        assert_eq!(drain(&mut reader), fits);
        let again = fill(&mut writer, len);
        if capacity % record == 0 {
            assert_eq!(again, fits, "capacity {capacity}, record {record}");
        } else {
            assert!(
                again == fits || again + 1 == fits,
                "capacity {capacity}, record {record}: {again} fit after a wrap, not {fits} or one less"
            );
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            8192 + capacity,
            "data file size"
        );
        let ctl = path.with_extension("ctl");
        assert_eq!(
            std::fs::metadata(&ctl).unwrap().len(),
            ((256 + 128 * 8u64).div_ceil(4096)) * 4096,
            "control file size"
        );
    }
    assert_eq!(control_file_len(64), 12288, "the default 64 slots");
    assert_eq!(control_file_len(1024), 135168, "the most slots");
    assert_eq!(max_message_limit(4 << 20), (2 << 20) - 16);
    assert_eq!(
        max_message_limit(2 << 20),
        (1 << 20) - 16,
        "1 MiB needs 4 MiB"
    );
}

#[test]
fn typed_message_size_is_its_archive_length() {
    let env = TestEnv::new("guide-sizing-typed", PEER, Duration::from_secs(60));
    let capacity = 65536u64;
    let bus = Bus::builder()
        .root(env.root())
        .capacity(capacity)
        .max_message(4096)
        .build()
        .unwrap();
    for (i, n) in [0usize, 1, 64, 300, 1000].into_iter().enumerate() {
        let topic = format!("t{i}");
        let msg = vec![1u8; n];
        let archived = rkyv::to_bytes::<rkyv::rancor::Error>(&msg).unwrap().len() as u64;
        // A Vec<u8> archives as its bytes plus an 8-byte relative pointer
        // and length, 4-aligned.
        assert_eq!(archived, (n as u64).div_ceil(4) * 4 + 8, "Vec<u8> of {n}");
        let _sub = bus.subscriber::<Vec<u8>>(&topic).unwrap();
        // The topic's registry: a 64-byte header and 256 entries of 64.
        let registry = env
            .root()
            .join("default")
            .join(&topic)
            .join("subscribers.reg");
        assert_eq!(std::fs::metadata(registry).unwrap().len(), 64 + 256 * 64);
        let mut publisher = bus.publisher::<Vec<u8>>(&topic).unwrap();
        let mut sent = 0;
        let full = loop {
            match publisher.try_send(&msg) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(full, Error::Full), "{full:?}");
        assert_eq!(sent, capacity / record_size(archived), "Vec<u8> of {n}");
    }
}

/// Creates default publishers on `root` until creation fails.
fn rings_until_full(root: &Path) -> (u64, Error) {
    let bus = Bus::builder().root(root).build().unwrap();
    let mut publishers = Vec::new();
    loop {
        match bus.publisher::<u64>(&format!("t{}", publishers.len())) {
            Ok(p) => publishers.push(p),
            Err(e) => return (publishers.len() as u64, e),
        }
    }
}

#[test]
fn docker_default_shm_holds_fifteen_default_rings() {
    let test = "guide-sizing-tmpfs";
    if skip(
        test,
        (!is_root()).then(|| "needs root to mount a tmpfs".to_string()),
    ) {
        return;
    }
    let env = TestEnv::new(test, PEER, Duration::from_secs(60));
    let mount = match TmpfsMount::new(&env.root().join("shm"), "64m") {
        Ok(m) => m,
        Err(e) => {
            skip(test, Some(e));
            return;
        }
    };
    let defaults = RingConfig::default();
    let per_ring = 8192 + defaults.capacity + control_file_len(defaults.slots) as u64;
    let expected = (64u64 << 20) / per_ring;
    assert_eq!(expected, 15);
    let (made, err) = rings_until_full(mount.path());
    assert_eq!(made, expected, "rings of {per_ring} bytes on 64 MiB");
    assert!(
        err.to_string().contains("No space left on device"),
        "the ring that does not fit: {err}"
    );
}
