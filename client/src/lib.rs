//! # shmbus
//!
//! Zero-copy publish/subscribe between processes on one host, over rings in
//! shared memory. A [`Publisher`] serializes a message with rkyv *directly
//! into* its ring; every [`Subscriber`] reads the archived message *in place*.
//!
//! ```
//! use rkyv::{Archive, Deserialize, Serialize};
//! use shmbus::Bus;
//! use std::time::Duration;
//!
//! #[derive(Archive, Serialize, Deserialize, Debug)]
//! struct Pose {
//!     frame: u64,
//!     xyz: [f32; 3],
//!     label: String,
//! }
//!
//! # let root = std::env::temp_dir().join(format!("shmbus-doc-lib-{}", std::process::id()));
//! // Bus::open_default() uses /dev/shm/shmbus-<uid> (or $SHMBUS_ROOT).
//! let bus = Bus::builder().root(&root).build()?;
//! let mut subscriber = bus.subscriber::<Pose>("pose")?;
//! let mut publisher = bus.publisher::<Pose>("pose")?;
//!
//! publisher.send(&Pose { frame: 1, xyz: [0.5, 1.0, 2.0], label: "base".into() })?;
//!
//! let pose = subscriber.recv_timeout(Duration::from_secs(5))?; // &ArchivedPose in the ring
//! assert_eq!(pose.frame, 1);
//! assert_eq!(pose.label, "base");
//! # drop(pose); drop((subscriber, publisher)); std::fs::remove_dir_all(&root).ok();
//! # Ok::<(), shmbus::Error>(())
//! ```
//!
//! ## What is guaranteed
//!
//! Each promise names the test that fails if it stops being true (in
//! `client/tests/` or the multi-process `tests/tests/`); the README's
//! [Guarantees and limits] table has the full list with the numbers.
//!
//! - **Order per publisher**: messages of one publisher arrive in the order
//!   it sent them (`three_publishers_three_subscribers_exactly_once_in_order`,
//!   `many_publishers_keep_their_own_order`).
//! - [`Policy::Block`] (default) **loses nothing**: a publisher waits for
//!   the slowest live subscriber, [`Publisher::try_send`] returns
//!   [`Error::Full`], [`Publisher::send_timeout`] [`Error::Timeout`]
//!   (`full_ring_gives_full_and_timeout_and_loses_nothing`); the bytes under
//!   a held [`Sample`] never change
//!   (`held_sample_never_changes_subscriber_in_pid_namespace`).
//! - **Early subscribers get everything**: a subscriber that exists when a
//!   publisher starts receives that publisher's first message and all after
//!   it (`early_subscribers_get_everything_even_when_stopped`).
//! - **A dead subscriber never stalls a publisher**: a publisher held back by
//!   a subscriber whose process died frees its slot once the kernel dropped
//!   the dead process's lock (probed at most every
//!   [`shmbus_bus::LIVENESS_INTERVAL`]; no pid, no timer decides)
//!   (`killed_subscriber_is_evicted_and_publisher_goes_on`).
//! - **A dead publisher loses nothing committed**: subscribers read every
//!   message it committed, never an uncommitted loan, then get
//!   [`TopicEvent::PublisherGone`] (`killed_publisher_mid_stream`,
//!   `killed_publisher_holding_a_loan`).
//! - [`Policy::Overwrite`]: publishers never wait; subscribers get validated
//!   copies and exact loss counts ([`TopicEvent::Lost`],
//!   [`Subscriber::lost_messages`]): received plus lost is what was
//!   published (`overwrite_received_plus_lost_equals_published`).
//! - **Untethered eviction** (opt-in, [`BusBuilder::evict_after`]): a live
//!   subscriber that holds a publisher back longer is evicted, gets
//!   [`Error::Evicted`] once and rejoins at the newest message
//!   (`try_recv_reports_eviction_and_rejoins` and its siblings).
//! - **Validation**: every archive is checked with rkyv's `bytecheck` before
//!   you see it, unless you opt out with the `unsafe`
//!   [`Subscriber::trust_publishers`]; a bad archive is
//!   [`Error::InvalidMessage`] and reading goes on
//!   (`invalid_archive_is_skipped_and_reading_goes_on`); a damaged ring is
//!   [`Error::Bus`] naming the file, never UB or a panic
//!   (`hostile_control_words_table`).
//!
//! ## What is not
//!
//! - **No order across publishers**: a topic is one ring per publisher,
//!   served round robin.
//! - **No protection from a hostile publisher**: validation checks
//!   structure, not content, and a process with write access to the ring
//!   (the publisher's user) can change bytes after they were validated.
//!   For publishers you do not trust, receive with
//!   [`Subscriber::distrust_publishers`] (copy, then validate:
//!   `in_place_reads_see_a_scribbler_which_is_why_copy_mode_exists`).
//! - **Subscribers of one ring trust each other for flow control**: they
//!   share its control file, so a hostile one can hold the publisher back or
//!   cost another subscriber messages (never make a reader read out of
//!   bounds: `hostile_control_words_table`).
//! - **Liveness needs shared file locks**: it holds across pid namespaces
//!   (containers sharing `/dev/shm`:
//!   `namespaced_subscriber_never_deletes_a_live_host_ring`), not across VM
//!   or sandbox boundaries
//!   (Kata, gVisor). A child forked without exec shares its parent's
//!   handles' locks: a dead parent looks alive until the child exits.
//! - **Linux only** (futexes, open-file-description locks, `membarrier`),
//!   **64-bit little-endian only** (a compile error on other targets).
//!
//! [Guarantees and limits]: https://docs.rs/crate/shmbus/latest/source/README.md
//!
//! ## Big messages, async receive
//!
//! - A large byte payload can be written straight into the ring, with no
//!   `Vec` first: a writer-side twin of the message type with a [`Fill`]
//!   field, sent with [`Publisher::send_filled`] (see [`Fill`]).
//! - [`Subscriber::recv_async`] (feature `tokio`, on by default) parks the
//!   task, not a thread: one reactor thread per
//!   [`shmbus_bus::MAX_REGISTERED`] rings waits for every async subscriber
//!   of the process ([`reactor_threads`]).
//!
//! ## Message types
//!
//! Every ring carries the name of its message type and a fingerprint; a
//! publisher or subscriber of another fingerprint gets
//! [`Error::TypeMismatch`] naming both types.
//! The fingerprint ([`fingerprint_named`]) hashes:
//!
//! - the **type name**: by default [`type_name`], Rust's type name with every
//!   path reduced to its last segment (`robot_msgs::pose::Pose` → `Pose`,
//!   `alloc::vec::Vec<u8>` → `Vec<u8>`), so neither the crate's path nor how
//!   a compiler version spells paths matters; or a name you declare per
//!   topic with [`Bus::typed_publisher`] /
//!   [`Bus::typed_subscriber`];
//! - the **archived layout** of the root type: size and alignment of
//!   `T::Archived`, which rkyv fixes by construction (derived archived
//!   structs are `#[repr(C)]`, enums `#[repr(uN)]`, primitives have fixed
//!   sizes and byte orders), so they are the same for every build of the
//!   same definition;
//! - the **rkyv format** (endianness, primitive alignment, pointer width).
//!
//! Publishers and subscribers agree on a topic's type when their
//! fingerprints are equal. How services share a message type: best, a
//! shared message crate that every service depends on (one definition, so
//! one name and layout, whatever compiler builds each service); or
//! separate definitions with the same declared name and the same fields,
//! which the fingerprint accepts as one type. Two different types that
//! happen to share a name (`a::Pose`, `b::Pose`) should be declared under
//! distinct names if they travel on one bus. The layout part only
//! covers the root type's inline bytes (a `Vec<u32>` and a `Vec<u64>` field
//! archive to the same size): the name is the contract, the layout a check
//! against the common mistakes. Bytes that still do not fit are caught by
//! validation ([`Error::InvalidMessage`]).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod bus;
mod codec;
mod error;
mod fill;
mod publisher;
#[cfg(feature = "tokio")]
mod reactor;
mod subscriber;

#[cfg(feature = "tokio")]
pub use crate::reactor::reactor_threads;
pub use crate::{
    bus::{Bus, BusBuilder, TopicOptions},
    codec::{
        fingerprint, fingerprint_named, type_name, ArchiveWriter, Checkable, Publishable, MAX_ALIGN,
    },
    error::{Error, Result},
    fill::{Fill, Row, MAX_FILL},
    publisher::{MessageLoan, Publisher},
    subscriber::{Sample, Subscriber, TopicEvent},
};
pub use shmbus_bus::{Policy, StartAt, WaitStrategy, WriterStats};

/// rkyv, re-exported so users derive with the exact version shmbus uses.
pub use rkyv;
