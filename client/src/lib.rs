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
//! // Bus::open_default() uses /dev/shm/shmbus (or $SHMBUS_ROOT).
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
//! ## Guarantees
//!
//! - Order is kept per publisher, not across publishers.
//! - [`Policy::Block`] (default): nothing is lost; a publisher waits for the
//!   slowest live subscriber (or evicts it after `evict_after`, if set). A
//!   subscriber whose process died stops holding publishers back within
//!   [`shmbus_bus::LIVENESS_INTERVAL`] of the publisher needing the space.
//! - [`Policy::Overwrite`]: publishers never wait; subscribers get validated
//!   copies and exact loss counts ([`TopicEvent::Lost`]).
//! - Every archive is validated (rkyv `bytecheck`) before you see it, unless
//!   you opt out with the `unsafe` [`Subscriber::trust_publishers`].
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
