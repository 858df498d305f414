//! `shmbus-bus`: the byte layer of shmbus.
//!
//! A topic is a directory of rings, one per publisher; each ring is a data
//! file `<id>.ring` (written by its publisher only, mapped read-only by
//! everyone else) and a control file `<id>.ctl` (the subscriber slots) on a
//! tmpfs, under `/dev/shm/shmbus-<uid>/<bus>/<topic>/` by default. Each ring
//! has exactly one writer ([`RingWriter`]) and any number of subscribers
//! ([`RingReader`]) that read records in place. This crate knows bytes only;
//! the typed API (rkyv) is the `shmbus` crate.
//!
//! Three layers, one folder each:
//! - `ring/`: the lock-free algorithm over any memory (model-checked with
//!   loom): writer, reader, the subscriber table and gate, the record rules.
//! - `shm/`: the operating system: ring files and mappings, liveness locks,
//!   the topic's registry and listing ([`list_rings`]), futexes and waiting
//!   ([`wait_any`]), removing stale rings ([`sweep_topic`]).
//! - `handle/`: the public handles: [`RingWriter`] and [`Loan`],
//!   [`RingReader`], [`RingObserver`] (no slot), [`RawReader`] /
//!   [`ReplicaWriter`] (ring bytes out and in, for the bridge),
//!   [`RingStatus`] (a snapshot for tools).
//!
//! [`layout`] is the byte layout both sides agree on; `docs/layout.md`
//! describes it for peers in other languages, and the `raw_bytes` example
//! of the `shmbus` crate walks a ring's records from its file.
//!
//! What is guaranteed, and what is not, is listed in the `shmbus` crate's
//! documentation and the README's "Guarantees and limits" table: this layer
//! gives the same except type checks and archive validation, which are the
//! typed layer's. Every word read from a ring file is checked in release
//! builds: a damaged ring is an [`Error`], never undefined behaviour, a
//! panic or a hang (`hostile_control_words_table`, `hostile_words_random`
//! and `tests/tests/corrupt.rs` in the workspace's multi-process tests).
//!
//! # Example
//!
//! ```
//! use shmbus_bus::{RingConfig, RingReader, RingWriter, StartAt, ReadEvent, WaitStrategy};
//! use std::time::Duration;
//!
//! let dir = std::env::temp_dir().join(format!("shmbus-doc-lib-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("publisher-1.ring");
//!
//! let mut writer = RingWriter::create(&path, &RingConfig::default()).unwrap();
//! let mut reader = RingReader::open(&path, StartAt::Oldest).unwrap();
//! writer.write_batch([&b"one"[..], b"two"], WaitStrategy::default(), None).unwrap();
//!
//! let mut got = Vec::new();
//! reader.drain(16, |payload| got.push(payload.to_vec())).unwrap();
//! assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
//!
//! drop(writer); // closes the ring
//! assert!(matches!(
//!     reader.read(WaitStrategy::default(), Some(Duration::from_secs(1))).unwrap(),
//!     ReadEvent::Closed
//! ));
//! # drop(reader); std::fs::remove_dir_all(&dir).unwrap();
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
// Under loom only the ring algorithm and its models are built.
#![cfg_attr(loom, allow(dead_code))]

pub mod layout;
pub(crate) mod ring;
mod sync;

#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod handle;
mod shm;

pub use ring::gate::LIVENESS_INTERVAL;
pub use ring::Policy;
pub use shm::membarrier::WakeHandshake;

#[cfg(not(loom))]
pub use crate::ring::writer::Skip;
#[cfg(not(loom))]
pub use crate::{
    error::Error,
    handle::{
        inspect::{RingStatus, SlotKind, SubscriberStatus},
        observer::{Observed, RingObserver, Taken},
        raw::{RawChunk, RawReader, ReplicaChunk, ReplicaWriter},
        reactor::{wait_registered, Doorbell, WaitRegistration, MAX_REGISTERED},
        reader::{
            wait_any, wait_probes, Drained, Message, ReadEvent, ReaderOptions, ReadyProbe,
            RingReader, SleepStats, StartAt, CLOSE_GRACE,
        },
        writer::{Loan, RingWriter, WriterStats},
    },
    shm::{
        futex::FUTEX_WAITV_MAX,
        listing::{list_rings, RingEntry},
        liveness::ProcessId,
        paths::{
            create_dir_all, default_root, publisher_id_of, ring_path, topic_dir, validate_name,
            CTL_EXT, DEFAULT_BUS, DEFAULT_ROOT, MAX_NAME_LEN, RING_EXT, ROOT_ENV,
        },
        registry::Registration,
        segment::{
            control_path_of, inspect_ring, max_message_limit, RingConfig, SegmentInfo, INIT_WAIT,
        },
        sweep::sweep_topic,
        wait::{WaitStrategy, MAX_SLEEP},
    },
};
