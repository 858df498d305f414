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
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod bus;
mod codec;
mod error;
mod publisher;
mod subscriber;

pub use crate::{
    bus::{Bus, BusBuilder, TopicOptions},
    codec::{
        fingerprint, fingerprint_named, type_name, ArchiveWriter, Checkable, Publishable, MAX_ALIGN,
    },
    error::{Error, Result},
    publisher::{MessageLoan, Publisher},
    subscriber::{Sample, Subscriber, TopicEvent},
};
pub use shmbus_bus::{Policy, StartAt, WaitStrategy, WriterStats};

/// rkyv, re-exported so users derive with the exact version shmbus uses.
pub use rkyv;
