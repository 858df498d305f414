//! The socket side of the sender: sealing frames and writing them.
//!
//! Every frame leaves sealed ([`seal`](crate::proto::seal)): control frames
//! through [`Scratch`], which seals each one as it is queued, DATA frames in
//! [`Wire::send_data`]. In `auth` mode a DATA frame's tag is computed over
//! the ring bytes in place and sent after them in the same `sendmsg`, so the
//! payload still goes from the ring with `MSG_ZEROCOPY`. In `encrypt` mode
//! the ring bytes are copied into a buffer, encrypted there and sent with a
//! plain send. The tag makes the bridge's reading of the ring part of what
//! is authenticated: a ring byte changed between the read for the tag and
//! the kernel's read for the wire (only a process with write access to the
//! ring can: the publisher's user) arrives with a tag that fails, and the
//! peer closes the connection instead of publishing bytes no one vouched for.

use std::{sync::Arc, time::Duration};

use crate::{
    error::BridgeError,
    io::zerocopy::{SendReport, ZeroCopySocket},
    proto::{
        frame::{DataHeader, Frame, DATA_HEADER_LEN},
        seal::{Direction, Protection, SealError, TAG_LEN},
    },
};

use super::super::stats::PeerStats;

/// Sealed control frames waiting to be sent, and the sending direction's
/// key and counter. Frames are sealed in the order they are queued, which
/// is the order they are sent: the counter and the wire agree. The buffer
/// is emptied only by [`Wire::flush`] (a frame sealed and then dropped
/// would break the counter sequence).
pub(super) struct Scratch {
    buf: Vec<u8>,
    keys: Direction,
    /// The counter ran out (after 2^64 - 1 frames): the connection must end.
    exhausted: bool,
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("len", &self.buf.len())
            .field("keys", &self.keys)
            .finish()
    }
}

impl Scratch {
    /// Queues one encoded frame, sealed.
    fn push_encoded(&mut self, frame: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(frame);
        if self.keys.seal_control(&mut self.buf, start).is_err() {
            self.buf.truncate(start);
            self.exhausted = true;
        }
    }
}

/// A DATA frame to send: ring bytes `start..end` of a stream, as one or two
/// slices (the ring wraps at most once).
pub(super) struct DataFrame<'a> {
    pub(super) stream: u32,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) slices: (&'a [u8], &'a [u8]),
    /// Send with `MSG_ZEROCOPY` if the socket's policy allows.
    pub(super) zerocopy: bool,
    /// How long the send may wait for the socket in total.
    pub(super) timeout: Duration,
}

/// The connection's socket, what has been written to it, and the control
/// frames waiting to go.
#[derive(Debug)]
pub(super) struct Wire {
    pub(super) sock: ZeroCopySocket,
    /// Bytes handed to the socket so far: the zero-copy tracker's position.
    pub(super) conn_offset: u64,
    scratch: Scratch,
    /// Buffer for DATA payloads encrypted in `encrypt` mode.
    encrypted: Vec<u8>,
    /// How long a control frame write may wait for the socket.
    control_timeout: Duration,
    stats: Arc<PeerStats>,
}

impl Wire {
    pub(super) fn new(
        sock: ZeroCopySocket,
        keys: Direction,
        control_timeout: Duration,
        stats: Arc<PeerStats>,
    ) -> Self {
        Self {
            sock,
            conn_offset: 0,
            scratch: Scratch {
                buf: Vec::new(),
                keys,
                exhausted: false,
            },
            encrypted: Vec::new(),
            control_timeout,
            stats,
        }
    }

    /// How long a control frame write may wait for the socket from now on.
    pub(super) fn set_control_timeout(&mut self, timeout: Duration) {
        self.control_timeout = timeout;
    }

    /// Queues a control frame, sealed; [`Wire::flush`] sends it.
    pub(super) fn queue(&mut self, frame: &Frame<'_>) {
        // Frames built by the sender are valid by construction (names and
        // geometry come from validated ring headers).
        let mut v = Vec::with_capacity(frame.encoded_len());
        if frame.encode_to_vec(&mut v).is_ok() {
            self.scratch.push_encoded(&v);
        }
    }

    /// Queues an already encoded control frame, sealed.
    pub(super) fn queue_encoded(&mut self, frame: &[u8]) {
        self.scratch.push_encoded(frame);
    }

    /// Sends the queued control frames (plain send).
    pub(super) fn flush(&mut self) -> Result<(), BridgeError> {
        self.flush_within(self.control_timeout)
    }

    /// As [`Self::flush`], waiting for a full socket at most `timeout`:
    /// the caller holds ring bytes pinned (a read of an untethered export)
    /// that may not stay pinned past their deadline while control frames
    /// wait for room.
    pub(super) fn flush_within(&mut self, timeout: Duration) -> Result<(), BridgeError> {
        if self.scratch.exhausted {
            return Err(BridgeError::io(
                "seal",
                std::io::Error::other(SealError::CounterExhausted),
            ));
        }
        if self.scratch.buf.is_empty() {
            return Ok(());
        }
        let len = self.scratch.buf.len() as u64;
        let end = self.conn_offset + len;
        self.sock
            .set_send_timeout(Some(timeout.min(self.control_timeout)));
        let r = self.sock.send_vectored(&self.scratch.buf, &[], end, false);
        self.scratch.buf.clear();
        r?;
        self.conn_offset = end;
        self.stats.bytes_sent.add(len);
        Ok(())
    }

    /// The zero-copy tracker's released connection offset.
    pub(super) fn released(&self) -> u64 {
        self.sock.tracker().released_position()
    }

    /// Sends one DATA frame (queued control frames first: they were sealed
    /// with lower counters). Returns the connection offset just past it and
    /// what the socket did.
    ///
    /// The caller keeps the slices protected from the publisher until the
    /// tracker has released the returned offset.
    pub(super) fn send_data(
        &mut self,
        d: &DataFrame<'_>,
    ) -> Result<(u64, SendReport), BridgeError> {
        let (a, b) = d.slices;
        let len = d.end - d.start;
        // Bounded by the session (at most MAX_DATA_LEN), so this always fits.
        let len32 =
            u32::try_from(len).map_err(|_| BridgeError::InvalidArgument("chunk too long"))?;
        let header = DataHeader {
            stream: d.stream,
            start_position: d.start,
            len: len32,
        }
        .encode()?;
        // The read that found these bytes pinned them: queued control
        // frames (a heartbeat) may not hold them longer than the DATA may.
        self.flush_within(d.timeout)?;
        let conn_end = self.conn_offset + DATA_HEADER_LEN as u64 + len + TAG_LEN as u64;
        let mut seal = self
            .scratch
            .keys
            .begin()
            .map_err(|e| BridgeError::io("seal", std::io::Error::other(e)))?;
        seal.aad(&header);
        self.sock.set_send_timeout(Some(d.timeout));
        let report = match self.scratch.keys.protection() {
            Protection::Auth => {
                // The ring bytes are associated data: read here for the tag,
                // read again by the kernel for the wire, never copied.
                seal.aad(a);
                seal.aad(b);
                let tag = seal.tag();
                let one = [a];
                let two = [a, b];
                let parts: &[&[u8]] = if b.is_empty() { &one } else { &two };
                self.sock
                    .send_frame(&header, parts, &tag, conn_end, d.zerocopy)?
            }
            Protection::Encrypt => {
                // Encryption needs a copy: the ring is read-only to the bridge.
                let buf = &mut self.encrypted;
                buf.clear();
                buf.extend_from_slice(a);
                buf.extend_from_slice(b);
                seal.encrypt(buf);
                let tag = seal.tag();
                self.sock
                    .send_frame(&header, &[&buf[..]], &tag, conn_end, false)?
            }
        };
        self.conn_offset = conn_end;
        self.stats.bytes_sent.add(report.bytes as u64);
        Ok((conn_end, report))
    }
}
