//! The shmbus bridge: carries shmbus topics between hosts over TCP.
//!
//! A bridge subscribes to the local rings of exported topics and forwards
//! whole ring slices — record headers included, the wire format *is* the ring
//! format — to a peer bridge, sending them with `MSG_ZEROCOPY` straight from
//! the mapped pages. The peer receives each slice straight into a local
//! replica ring, where its own subscribers read the records in place.
//!
//! ```text
//! service ──rkyv──▶ ring (shm) ──bridge: sendmsg(MSG_ZEROCOPY)──▶ TCP
//!     TCP ──bridge: recv into replica ring──▶ ring (shm) ──▶ remote service
//! ```
//!
//! # Layers
//!
//! - [`proto`]: the sans-IO core, deterministic and tested without sockets
//!   or clocks.
//!   - [`proto::frame`]: the wire frames (layout in the module docs), with
//!     bounds-checked decoding that never panics and a DATA header that is
//!     encoded on its own so the payload can be sent from ring memory.
//!   - [`proto::handshake`]: Noise IK between two nodes' static key pairs,
//!     checked against the allowlist; the peer's name comes from it.
//!   - [`proto::seal`]: every frame after the handshake authenticated
//!     (ChaCha20-Poly1305, per-direction keys, implicit counters), ring
//!     bytes as associated data so they are still sent zero-copy; or
//!     encrypted, on request.
//!   - [`proto::zc`]: `MSG_ZEROCOPY` completion bookkeeping: which ring
//!     position the kernel no longer reads, and the fallback-to-plain policy.
//!   - [`proto::stream`]: per-stream positions: what the sender may release
//!     or must keep pinned, and which DATA/GAP/END a receiver accepts.
//!   - [`proto::session`]: the per-connection protocol machines: which
//!     frame is legal when, the stream lifecycle, per-stream credit, gaps
//!     and resume ([`proto::session::export`] the sender half,
//!     [`proto::session::import`] the receiver half).
//! - [`io`]: the syscalls. [`io::zerocopy::ZeroCopySocket`] sends a DATA
//!   header plus up to two ring slices per `sendmsg` and parses completion
//!   notifications; [`io::frame_reader::FrameReader`] reads frames with DATA
//!   payloads going straight into their destination.
//! - [`identity`]: key pairs, key files (`O_NOFOLLOW`, owner and mode
//!   checked on the open descriptor, secrets zeroized) and the allowlist.
//! - [`config`]: the daemon's TOML configuration with command-line overrides,
//!   allow-lists and export modes (untethered by default: a slow remote must
//!   never hold local publishers back).
//! - [`daemon`]: the `shmbus-bridge` daemon: ring discovery (inotify),
//!   connections (one sender and one receiver thread each), replica rings,
//!   counters and Prometheus metrics, systemd notifications, reload.
//! - [`error`]: [`BridgeError`], wrapping each module's error type.
//! - [`log`]: logging through `tracing` (the crate's `log::info!` & co.).
//! - [`signals`]: SIGTERM/SIGINT stop, SIGUSR1 counters, SIGHUP reload.
//!
//! # Data path
//!
//! Sender, per exported ring: take the committed slice `[sent, tail)` (two
//! `&[u8]` if it wraps), encode a [`DataHeader`](proto::frame::DataHeader),
//! compute the frame's tag over header and ring bytes in place
//! ([`proto::seal`]), call
//! [`ZeroCopySocket::send_frame`](io::zerocopy::ZeroCopySocket::send_frame)
//! with header, slices and tag and the connection's byte offset after them
//! as `release_to`, reap completions, and map them back to ring positions
//! ([`proto::stream::ExportPositions`]). Tethered exports release ring space
//! at `min(peer ACK, kernel completion)`; untethered ones pin it only while
//! the kernel may still read it.
//!
//! Receiver: [`FrameReader`](io::frame_reader::FrameReader) reads each
//! frame and opens it (control frames are handed out only once their tag
//! verified); for DATA, which arrives only within the credit the receiver
//! granted (room the replica ring promised, so claiming it never waits), it
//! reads exactly `len` bytes into the `&mut [u8]` claimed in the replica
//! ring, then the tag, and only then does the daemon validate the record
//! framing, publish, ACK, and grant more credit as local subscribers make
//! room. A GAP becomes gap records in the same replica: local subscribers
//! see the exact count of lost messages.
//!
//! # Example
//!
//! ```
//! use shmbus_bridge::proto::frame::{decode, DataHeader, Decoded, Frame};
//!
//! let ring = [0xAAu8; 100];
//! let hdr = DataHeader { stream: 3, start_position: 4000, len: ring.len() as u32 }.encode()?;
//! // On the wire: `hdr`, then the ring bytes (sent from the ring itself).
//! let Decoded::Frame { frame: Frame::Data(d), consumed } = decode(&hdr)? else { unreachable!() };
//! assert_eq!((d.start_position, d.len, consumed), (4000, 100, hdr.len()));
//! # Ok::<(), shmbus_bridge::proto::frame::FrameError>(())
//! ```

pub mod config;
#[cfg(target_os = "linux")]
pub mod daemon;
pub mod error;
pub mod identity;
pub mod io;
pub mod log;
pub mod proto;
pub mod signals;
#[cfg(test)]
mod test_util;

pub use error::BridgeError;
