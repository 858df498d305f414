//! A TCP socket that sends ring slices with `MSG_ZEROCOPY` (Linux).
//!
//! [`ZeroCopySocket`] wraps a connected [`TcpStream`]. It enables
//! `SO_ZEROCOPY` (falling back to plain sends if the kernel refuses), sends a
//! frame header plus up to two payload slices in one `sendmsg` (the ring
//! wraps at most once per slice), and drains the socket error queue for
//! completion notifications, which it feeds to a [`ZcTracker`].
//!
//! # The payload contract
//!
//! With `MSG_ZEROCOPY` the kernel reads the payload pages *after*
//! [`ZeroCopySocket::send_vectored`] returns. The caller must not modify the
//! payload bytes until [`ZcTracker::released_position`] (via
//! [`ZeroCopySocket::tracker`]) has passed the `release_to` position given
//! with them. Breaking this is not memory-unsafe (the kernel holds its own
//! page references, so even unmapped pages stay valid for it), but the peer
//! may receive the modified bytes. For the bridge this is the rule "ring
//! space is released at `min(peer ACK, zero-copy completion)`".
//!
//! The frame header (and the trailer, the frame's authentication tag) are
//! usually built in temporary buffers, so they are copied into a slot owned
//! by the socket before a zero-copy send; the slot is not reused until that
//! send completes.
//!
//! # Fallbacks (MACHINE-FACTS §1-3, the kernel's `msg_zerocopy.rst`)
//!
//! - `SO_ZEROCOPY` refused: every send is plain.
//! - Payload below [`ZcPolicy::min_zerocopy_bytes`]: plain.
//! - Completions flagged `SO_EE_CODE_ZEROCOPY_COPIED` (loopback and veth
//!   always do this: the kernel made a deferred copy): after
//!   [`ZcPolicy::copied_ids_before_plain`] such ids the socket switches to
//!   plain sends for good.
//! - `ENOBUFS` (the socket's optmem is used up by in-flight zero-copy
//!   buffers; it comes back at once even on a blocking socket): the call is
//!   retried as a plain send, and the rest of that slice goes plain. Counted
//!   in [`ZcStats::enobufs_fallbacks`](crate::proto::zc::ZcStats).

use std::{
    io,
    mem::{self, MaybeUninit},
    net::TcpStream,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    ptr,
    time::{Duration, Instant},
};

use crate::{
    error::BridgeError,
    proto::zc::{ZcPolicy, ZcTracker},
};

/// `SO_EE_ORIGIN_ZEROCOPY` from `<linux/errqueue.h>` (not exported by libc).
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
/// `SO_EE_CODE_ZEROCOPY_COPIED` from `<linux/errqueue.h>`.
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;

/// Largest header that can be sent with a zero-copy payload in one call;
/// longer headers make the call plain. A DATA header is 24 bytes.
pub const MAX_ZEROCOPY_HEADER_LEN: usize = 64;
/// Largest trailer that can be sent with a zero-copy payload in one call
/// (a frame's 16-byte tag); longer trailers make the call plain.
pub const MAX_ZEROCOPY_TRAILER_LEN: usize = 32;
const SLOT_LEN: usize = MAX_ZEROCOPY_HEADER_LEN + MAX_ZEROCOPY_TRAILER_LEN;

/// Header slots: one per zero-copy call in flight, so at most this many
/// zero-copy calls are in flight; beyond, calls are plain until completions
/// are reaped.
const HEADER_SLOTS: usize = 256;

/// Control buffer for `recvmsg(MSG_ERRQUEUE)`, aligned for `cmsghdr`. One
/// notification carries one `IP_RECVERR` message (header, `sock_extended_err`
/// and the offender address); 256 bytes leave room for several.
#[repr(C, align(8))]
struct CmsgBuf([MaybeUninit<u8>; 256]);

const _: () = assert!(mem::align_of::<libc::cmsghdr>() <= mem::align_of::<CmsgBuf>());

/// What one [`ZeroCopySocket::send_vectored`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendReport {
    /// Bytes sent (header plus payload).
    pub bytes: usize,
    /// `sendmsg` calls made with `MSG_ZEROCOPY` that sent bytes.
    pub zerocopy_calls: u32,
    /// Plain `sendmsg` calls that sent bytes.
    pub plain_calls: u32,
    /// Zero-copy calls refused with `ENOBUFS` and retried plainly.
    pub enobufs_fallbacks: u32,
    /// Times the socket was full and the call waited for `POLLOUT`.
    pub would_block_waits: u32,
}

/// What one [`ZeroCopySocket::poll_completions`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompletionReport {
    /// Zero-copy notifications processed.
    pub notifications: u32,
    /// Send ids they completed.
    pub ids: u64,
    /// Of those, ids flagged COPIED.
    pub copied_ids: u64,
    /// The tracker's released position afterwards.
    pub released_position: u64,
    /// Whether zero-copy was switched off by these completions.
    pub switched_to_plain: bool,
    /// Error-queue messages that were not zero-copy notifications (ignored).
    pub other_messages: u32,
}

/// Cumulative socket-level counters (the zero-copy ones live in
/// [`ZcTracker::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Sends that needed more than one `sendmsg` call.
    pub partial_sends: u64,
    /// Waits for `POLLOUT` after `EAGAIN`.
    pub would_block_waits: u64,
    /// Calls made plain because all header slots were in flight.
    pub header_slot_fallbacks: u64,
    /// Error-queue messages that were not zero-copy notifications.
    pub other_errqueue_messages: u64,
}

/// A connected TCP socket with `MSG_ZEROCOPY` sends and completion tracking.
#[derive(Debug)]
pub struct ZeroCopySocket {
    stream: TcpStream,
    tracker: ZcTracker,
    so_zerocopy: bool,
    /// Stable storage for headers of zero-copy calls: slot `id % HEADER_SLOTS`
    /// belongs to the call with kernel id `id` until it completes. `None`
    /// only during `Drop`.
    header_slots: Option<Box<[[u8; SLOT_LEN]]>>,
    send_timeout: Option<Duration>,
    stats: SocketStats,
}

impl ZeroCopySocket {
    /// Wraps a connected stream whose first sent ring byte is at
    /// `start_position`, and tries to enable `SO_ZEROCOPY`. If the kernel
    /// refuses, the socket works with plain sends
    /// ([`ZeroCopySocket::zerocopy_available`] is false).
    ///
    /// The stream must be fresh for zero-copy: the kernel's id counter must
    /// not have been advanced by earlier `MSG_ZEROCOPY` sends on it.
    pub fn new(stream: TcpStream, policy: ZcPolicy, start_position: u64) -> Self {
        let so_zerocopy =
            set_int_opt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ZEROCOPY, 1).is_ok();
        let mut tracker = ZcTracker::new(policy, start_position);
        if !so_zerocopy {
            tracker.disable_zerocopy();
        }
        Self {
            stream,
            tracker,
            so_zerocopy,
            header_slots: Some(vec![[0u8; SLOT_LEN]; HEADER_SLOTS].into_boxed_slice()),
            send_timeout: None,
            stats: SocketStats::default(),
        }
    }

    /// Whether the kernel accepted `SO_ZEROCOPY`.
    pub fn zerocopy_available(&self) -> bool {
        self.so_zerocopy
    }

    /// Whether the next large send would use zero-copy (available and not
    /// switched off by the policy).
    pub fn zerocopy_active(&self) -> bool {
        self.so_zerocopy && self.tracker.zerocopy_enabled()
    }

    /// The completion tracker: released position, in-flight count, counters.
    pub fn tracker(&self) -> &ZcTracker {
        &self.tracker
    }

    /// Replaces the zero-copy policy (before the first send).
    pub fn set_policy(&mut self, policy: ZcPolicy) {
        self.tracker.set_policy(policy);
    }

    /// Socket-level counters.
    pub fn stats(&self) -> &SocketStats {
        &self.stats
    }

    /// The stream, e.g. to read ACKs from the peer (`Read` is implemented for
    /// `&TcpStream`) or to set options.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// How long [`ZeroCopySocket::send_vectored`] may wait for the socket to
    /// become writable in total; `None` waits indefinitely.
    pub fn set_send_timeout(&mut self, timeout: Option<Duration>) {
        self.send_timeout = timeout;
    }

    /// Sets the send buffer size; with `force` uses `SO_SNDBUFFORCE`, which
    /// ignores `net.core.wmem_max` but needs `CAP_NET_ADMIN`. Returns the size
    /// the kernel reports afterwards (it doubles the request for bookkeeping).
    ///
    /// # Errors
    ///
    /// The `setsockopt`/`getsockopt` error, e.g. `EPERM` for `force` without
    /// the capability, or [`BridgeError::InvalidArgument`] if `bytes` exceeds
    /// `i32::MAX`.
    pub fn set_send_buffer_size(&self, bytes: usize, force: bool) -> Result<usize, BridgeError> {
        let value = i32::try_from(bytes)
            .map_err(|_| BridgeError::InvalidArgument("send buffer size above i32::MAX"))?;
        let opt = if force {
            libc::SO_SNDBUFFORCE
        } else {
            libc::SO_SNDBUF
        };
        set_int_opt(self.stream.as_raw_fd(), libc::SOL_SOCKET, opt, value)
            .map_err(|e| BridgeError::io("setsockopt(SO_SNDBUF)", e))?;
        let got = get_int_opt(self.stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF)
            .map_err(|e| BridgeError::io("getsockopt(SO_SNDBUF)", e))?;
        Ok(usize::try_from(got).unwrap_or(0))
    }

    /// Sends `header` followed by the `payload` slices (at most two: a ring
    /// slice that wraps), all of it, and records that ring space up to
    /// `release_to` may be released once the kernel is done with this send.
    ///
    /// With `zerocopy` the payload is sent with `MSG_ZEROCOPY` if the socket
    /// supports it, the policy allows it (size threshold, not switched off)
    /// and `header.len() <= MAX_ZEROCOPY_HEADER_LEN`. Partial sends,
    /// `EINTR`, `EAGAIN` (waits for `POLLOUT`, reaping completions meanwhile)
    /// and `ENOBUFS` (retries plainly) are handled here. Works on blocking and
    /// non-blocking sockets.
    ///
    /// See the module docs for the payload contract.
    ///
    /// # Errors
    ///
    /// - [`BridgeError::InvalidArgument`]: more than two payload slices, or
    ///   `release_to` below an earlier send's.
    /// - [`BridgeError::Io`]: the socket failed, or the send timeout elapsed
    ///   (`ErrorKind::TimedOut`). Part of the data may have been sent, so the
    ///   stream is no longer at a frame boundary: close the connection. The
    ///   tracker stays consistent, so ring space is still released correctly.
    /// - [`BridgeError::ZeroCopy`]: a completion reaped while waiting did not
    ///   match what was sent.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::net::TcpStream;
    /// use shmbus_bridge::io::zerocopy::ZeroCopySocket;
    /// use shmbus_bridge::proto::{frame::DataHeader, zc::ZcPolicy};
    ///
    /// let ring = vec![7u8; 1 << 20]; // stands in for a mapped ring
    /// let mut sock = ZeroCopySocket::new(TcpStream::connect("127.0.0.1:7878")?, ZcPolicy::default(), 0);
    /// // A slice that wraps: the last 4 KiB of the ring, then the first 60 KiB.
    /// let (tail, head) = (&ring[(1 << 20) - 4096..], &ring[..60 * 1024]);
    /// let hdr = DataHeader { stream: 1, start_position: (1 << 20) - 4096, len: 64 * 1024 }.encode()?;
    /// sock.send_vectored(&hdr, &[tail, head], (1 << 20) - 4096 + 64 * 1024, true)?;
    /// sock.poll_completions()?;
    /// let releasable = sock.tracker().released_position();
    /// # let _ = releasable;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_vectored(
        &mut self,
        header: &[u8],
        payload: &[&[u8]],
        release_to: u64,
        zerocopy: bool,
    ) -> Result<SendReport, BridgeError> {
        self.send_frame(header, payload, &[], release_to, zerocopy)
    }

    /// [`ZeroCopySocket::send_vectored`] with a `trailer` after the payload
    /// (a frame's authentication tag), sent in the same call; it is copied
    /// into the socket's slot like the header, so a zero-copy send needs
    /// `trailer.len() <= MAX_ZEROCOPY_TRAILER_LEN`.
    ///
    /// # Errors
    ///
    /// As [`ZeroCopySocket::send_vectored`].
    pub fn send_frame(
        &mut self,
        header: &[u8],
        payload: &[&[u8]],
        trailer: &[u8],
        release_to: u64,
        zerocopy: bool,
    ) -> Result<SendReport, BridgeError> {
        if payload.len() > 2 {
            return Err(BridgeError::InvalidArgument(
                "at most two payload slices per send",
            ));
        }
        if release_to < self.tracker.sent_position() {
            return Err(BridgeError::InvalidArgument(
                "release_to is below an earlier send's",
            ));
        }
        let payload_len: usize = payload.iter().map(|p| p.len()).sum();
        let total = header.len() + payload_len + trailer.len();
        let deadline = self.send_timeout.map(|t| Instant::now() + t);
        let mut use_zc = zerocopy
            && self.so_zerocopy
            && header.len() <= MAX_ZEROCOPY_HEADER_LEN
            && trailer.len() <= MAX_ZEROCOPY_TRAILER_LEN
            && self.tracker.wants_zerocopy(payload_len);
        let mut report = SendReport::default();
        let mut sent = 0usize;
        if total == 0 {
            self.tracker.on_plain_send(release_to)?;
            return Ok(report);
        }
        while sent < total {
            let call_zc = use_zc && self.header_slot_available()?;
            let r = self.sendmsg_once(header, payload, trailer, sent, call_zc);
            match r {
                Ok(n) => {
                    sent += n;
                    let finished = sent == total;
                    if call_zc {
                        // Cannot fail: release_to was checked above, and
                        // in_flight < HEADER_SLOTS < MAX_IN_FLIGHT.
                        self.tracker
                            .on_zerocopy_send(finished.then_some(release_to))?;
                        report.zerocopy_calls += 1;
                    } else {
                        if finished {
                            self.tracker.on_plain_send(release_to)?;
                        } else {
                            self.tracker.on_partial_plain_send();
                        }
                        report.plain_calls += 1;
                    }
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::EAGAIN) => {
                        self.wait_writable(deadline)?;
                        report.would_block_waits += 1;
                    }
                    Some(libc::ENOBUFS) if call_zc => {
                        // Optmem exhausted by in-flight zero-copy buffers:
                        // send this call, and the rest of the slice, plainly.
                        self.tracker.on_enobufs();
                        report.enobufs_fallbacks += 1;
                        use_zc = false;
                    }
                    _ => return Err(BridgeError::io("sendmsg", e)),
                },
            }
        }
        report.bytes = sent;
        self.stats.bytes_sent += sent as u64;
        self.stats.would_block_waits += u64::from(report.would_block_waits);
        if report.zerocopy_calls + report.plain_calls > 1 {
            self.stats.partial_sends += 1;
        }
        Ok(report)
    }

    /// Whether the header slot for the next zero-copy id is free, reaping
    /// completions once if it is not.
    fn header_slot_available(&mut self) -> Result<bool, BridgeError> {
        if self.tracker.in_flight() < HEADER_SLOTS {
            return Ok(true);
        }
        self.poll_completions()?;
        if self.tracker.in_flight() < HEADER_SLOTS {
            return Ok(true);
        }
        self.stats.header_slot_fallbacks += 1;
        Ok(false)
    }

    /// One `sendmsg` of everything from byte `skip` on (header, payload,
    /// trailer). Returns the bytes sent (> 0) or the OS error.
    fn sendmsg_once(
        &mut self,
        header: &[u8],
        payload: &[&[u8]],
        trailer: &[u8],
        skip: usize,
        zc: bool,
    ) -> io::Result<usize> {
        let mut iov = [libc::iovec {
            iov_base: ptr::null_mut(),
            iov_len: 0,
        }; 4];
        let mut n = 0;
        let header_rest = header.get(skip..).unwrap_or(&[]);
        let payload_len: usize = payload.iter().map(|p| p.len()).sum();
        let trailer_skip = skip.saturating_sub(header.len() + payload_len);
        let trailer_rest = trailer.get(trailer_skip..).unwrap_or(&[]);
        // The kernel keeps reading header and trailer after we return, so
        // for a zero-copy call they go from a slot that stays untouched
        // until this id completes: slots are indexed by id, and
        // `header_slot_available` ensured fewer than HEADER_SLOTS ids are in
        // flight. Lengths were checked against the slot's halves.
        let slot: Option<&mut [u8; SLOT_LEN]> = if zc {
            let slot_index = self.tracker.next_id() as usize % HEADER_SLOTS;
            let slots = self
                .header_slots
                .as_mut()
                .ok_or_else(|| io::Error::other("socket is being dropped"))?;
            Some(&mut slots[slot_index])
        } else {
            None
        };
        let (slot_head, slot_tail): (Option<&mut [u8]>, Option<&mut [u8]>) = match slot {
            Some(s) => {
                let (h, t) = s.split_at_mut(MAX_ZEROCOPY_HEADER_LEN);
                (Some(h), Some(t))
            }
            None => (None, None),
        };
        if !header_rest.is_empty() {
            let src: &[u8] = match slot_head {
                Some(h) => {
                    let dst = &mut h[..header_rest.len()];
                    dst.copy_from_slice(header_rest);
                    dst
                }
                None => header_rest,
            };
            iov[n] = iovec(src);
            n += 1;
        }
        let mut skip_payload = skip.saturating_sub(header.len());
        for part in payload {
            if skip_payload >= part.len() {
                skip_payload -= part.len();
                continue;
            }
            iov[n] = iovec(&part[skip_payload..]);
            skip_payload = 0;
            n += 1;
        }
        if !trailer_rest.is_empty() {
            let src: &[u8] = match slot_tail {
                Some(t) => {
                    let dst = &mut t[..trailer_rest.len()];
                    dst.copy_from_slice(trailer_rest);
                    dst
                }
                None => trailer_rest,
            };
            iov[n] = iovec(src);
            n += 1;
        }
        // SAFETY: an all-zero msghdr is valid (null name/control, no iovecs).
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = n as _;
        // MSG_DONTWAIT: a full socket returns EAGAIN at once and the wait for
        // POLLOUT happens in `wait_writable`, bounded by the send timeout,
        // whether or not the descriptor is blocking (the kernel's own
        // SO_SNDTIMEO would otherwise decide how long a send holds ring bytes).
        let flags =
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT | if zc { libc::MSG_ZEROCOPY } else { 0 };
        // The kernel's later reads for MSG_ZEROCOPY go through its own page
        // references, not these pointers.
        // SAFETY: `msg` points to `n` iovecs, each a live, readable borrowed
        // slice (`header`, `trailer`, a slot, or `payload`) outliving this call.
        let r = unsafe { libc::sendmsg(self.stream.as_raw_fd(), &msg, flags) };
        match r {
            r if r > 0 => Ok(r as usize),
            0 => Err(io::Error::from(io::ErrorKind::WriteZero)),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Waits for `POLLOUT`, reaping completions when `POLLERR` signals them.
    fn wait_writable(&mut self, deadline: Option<Instant>) -> Result<(), BridgeError> {
        let revents = poll_fd(self.stream.as_raw_fd(), libc::POLLOUT, deadline)?;
        if revents == 0 {
            return Err(BridgeError::io(
                "waiting for the socket to become writable",
                io::Error::from(io::ErrorKind::TimedOut),
            ));
        }
        if revents & libc::POLLERR != 0 {
            self.poll_completions()?;
        }
        Ok(())
    }

    /// Drains the socket error queue without blocking and feeds every
    /// zero-copy notification to the tracker.
    ///
    /// # Errors
    ///
    /// [`BridgeError::Io`] if `recvmsg` fails or a control message was
    /// truncated; [`BridgeError::ZeroCopy`] if a notification names ids that
    /// were not in flight (the kernel and the tracker disagree: close the
    /// connection).
    pub fn poll_completions(&mut self) -> Result<CompletionReport, BridgeError> {
        let mut report = CompletionReport {
            released_position: self.tracker.released_position(),
            ..CompletionReport::default()
        };
        loop {
            let mut cbuf = CmsgBuf([MaybeUninit::uninit(); 256]);
            // SAFETY: an all-zero msghdr is valid (null name, no iovecs).
            let mut msg: libc::msghdr = unsafe { mem::zeroed() };
            msg.msg_control = cbuf.0.as_mut_ptr().cast();
            msg.msg_controllen = cbuf.0.len() as _;
            // SAFETY: `msg` describes no data buffers and a control buffer of
            // `msg_controllen` writable bytes that lives across the call.
            let r = unsafe {
                libc::recvmsg(
                    self.stream.as_raw_fd(),
                    &mut msg,
                    libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    _ => return Err(BridgeError::io("recvmsg(MSG_ERRQUEUE)", e)),
                }
            }
            if msg.msg_flags & libc::MSG_CTRUNC != 0 {
                return Err(BridgeError::io(
                    "recvmsg(MSG_ERRQUEUE)",
                    io::Error::other("control message truncated"),
                ));
            }
            for ee in extended_errors(&msg) {
                if ee.ee_origin != SO_EE_ORIGIN_ZEROCOPY {
                    report.other_messages += 1;
                    self.stats.other_errqueue_messages += 1;
                    continue;
                }
                let copied = ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0;
                let c = self.tracker.on_completion(ee.ee_info, ee.ee_data, copied)?;
                report.notifications += 1;
                report.ids += c.ids;
                if copied {
                    report.copied_ids += c.ids;
                }
                report.switched_to_plain |= c.switched_to_plain;
                report.released_position = c.released_position;
            }
        }
        Ok(report)
    }

    /// Waits up to `timeout` for completion notifications and processes them.
    /// Returns at once if nothing is in flight.
    ///
    /// # Errors
    ///
    /// As [`ZeroCopySocket::poll_completions`], and `poll` failures.
    pub fn wait_completions(&mut self, timeout: Duration) -> Result<CompletionReport, BridgeError> {
        let deadline = Instant::now() + timeout;
        loop {
            let report = self.poll_completions()?;
            if report.notifications > 0
                || self.tracker.in_flight() == 0
                || Instant::now() >= deadline
            {
                return Ok(report);
            }
            // POLLERR is reported whether requested or not; ask for nothing
            // else. A hung-up socket reports POLLHUP at once: sleep briefly
            // then, so that late completions are still awaited without spinning.
            let revents = poll_fd(self.stream.as_raw_fd(), 0, Some(deadline))?;
            if revents == 0 {
                return Ok(report);
            }
            if revents & libc::POLLERR == 0 {
                std::thread::sleep(
                    Duration::from_millis(1)
                        .min(deadline.saturating_duration_since(Instant::now())),
                );
            }
        }
    }
}

impl AsRawFd for ZeroCopySocket {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

impl AsFd for ZeroCopySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl Drop for ZeroCopySocket {
    fn drop(&mut self) {
        // Zero-copy sends still in flight may be read by the kernel after the
        // socket is closed (TCP keeps sending queued data). Their headers live
        // in the slots, so the slots must outlive them: leak them (16 KiB)
        // rather than let the allocator reuse memory the kernel still sends.
        if self.tracker.in_flight() > 0 {
            if let Some(slots) = self.header_slots.take() {
                Box::leak(slots);
            }
        }
    }
}

fn iovec(s: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: s.as_ptr().cast_mut().cast(),
        iov_len: s.len(),
    }
}

/// Iterates the `sock_extended_err` payloads of `IP_RECVERR`/`IPV6_RECVERR`
/// control messages in `msg`, after `recvmsg` filled it.
fn extended_errors(msg: &libc::msghdr) -> impl Iterator<Item = libc::sock_extended_err> + '_ {
    let control = msg.msg_control as usize;
    // `msg_controllen` is `usize` on glibc and `socklen_t` on musl.
    #[allow(clippy::unnecessary_cast)]
    let control_len = msg.msg_controllen as usize;
    // SAFETY: `msg` was filled by a successful recvmsg: msg_control points to
    // a live buffer and msg_controllen is the number of bytes the kernel
    // wrote into it. CMSG_FIRSTHDR only reads these two fields.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    std::iter::from_fn(move || {
        while !cmsg.is_null() {
            let current = cmsg;
            // CMSG_FIRSTHDR/CMSG_NXTHDR return either null or a pointer to a
            // cmsghdr lying entirely inside the control buffer, which is
            // aligned for cmsghdr (CmsgBuf).
            // SAFETY: `current` is such a header; NXTHDR bounds-checks the next.
            cmsg = unsafe { libc::CMSG_NXTHDR(msg, current) };
            // SAFETY: as above, `current` points to a complete, aligned
            // cmsghdr inside the buffer.
            let hdr = unsafe { ptr::read(current) };
            let is_recverr = matches!(
                (hdr.cmsg_level, hdr.cmsg_type),
                (libc::SOL_IP, libc::IP_RECVERR) | (libc::SOL_IPV6, libc::IPV6_RECVERR)
            );
            let need = {
                // SAFETY: CMSG_LEN is a pure computation.
                let l = unsafe { libc::CMSG_LEN(mem::size_of::<libc::sock_extended_err>() as u32) };
                l as usize
            };
            let offset = current as usize - control;
            if !is_recverr || (hdr.cmsg_len as usize) < need || offset + need > control_len {
                continue;
            }
            // The message is at least CMSG_LEN(size_of ee) long and, checked
            // just above, lies within the bytes the kernel wrote.
            // SAFETY: so CMSG_DATA(current) has size_of::<sock_extended_err>()
            // readable bytes; read_unaligned needs no alignment; plain integers.
            let ee = unsafe {
                ptr::read_unaligned(libc::CMSG_DATA(current).cast::<libc::sock_extended_err>())
            };
            return Some(ee);
        }
        None
    })
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and the length passed is its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            ptr::from_ref(&value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` is writable for `len` bytes and `len` is a live socklen_t.
    let r =
        unsafe { libc::getsockopt(fd, level, name, ptr::from_mut(&mut value).cast(), &mut len) };
    if r == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Polls one fd until an event or the deadline; returns `revents` (0 on
/// timeout). Retries on `EINTR`.
fn poll_fd(
    fd: RawFd,
    events: libc::c_short,
    deadline: Option<Instant>,
) -> Result<libc::c_short, BridgeError> {
    loop {
        let timeout_ms: libc::c_int = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so that a sub-millisecond remainder still waits.
                let ms = left.as_micros().div_ceil(1000);
                libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
            }
        };
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: `pfd` is one live pollfd and the count passed is 1.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r >= 0 {
            return Ok(pfd.revents);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(BridgeError::io("poll", e));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Read,
        net::{TcpListener, TcpStream},
        thread,
    };

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn plain_send_of_header_and_two_slices_in_order() {
        let (c, mut s) = pair();
        let mut sock = ZeroCopySocket::new(c, ZcPolicy::default(), 10);
        assert!(sock.zerocopy_available());
        let r = sock
            .send_vectored(b"HDR", &[b"abc", b"defg"], 17, false)
            .unwrap();
        assert_eq!(r.bytes, 10);
        assert_eq!(r.zerocopy_calls, 0);
        assert_eq!(sock.tracker().released_position(), 17);
        let mut got = [0u8; 10];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"HDRabcdefg");
    }

    #[test]
    fn rejects_bad_arguments() {
        let (c, _s) = pair();
        let mut sock = ZeroCopySocket::new(c, ZcPolicy::default(), 100);
        assert!(matches!(
            sock.send_vectored(b"", &[b"a", b"b", b"c"], 103, false),
            Err(BridgeError::InvalidArgument(_))
        ));
        assert!(matches!(
            sock.send_vectored(b"", &[b"a"], 99, false),
            Err(BridgeError::InvalidArgument(_))
        ));
        // Nothing sent: an empty send just records the position.
        assert_eq!(sock.send_vectored(b"", &[], 100, true).unwrap().bytes, 0);
    }

    #[test]
    fn small_zerocopy_request_goes_plain_below_threshold() {
        let (c, mut s) = pair();
        let mut sock = ZeroCopySocket::new(c, ZcPolicy::default(), 0);
        let payload = vec![1u8; 1000];
        let r = sock
            .send_vectored(&[9; 24], &[&payload], 1000, true)
            .unwrap();
        assert_eq!(r.zerocopy_calls, 0);
        assert_eq!(r.plain_calls, 1);
        let h = thread::spawn(move || {
            let mut v = vec![0u8; 1024];
            s.read_exact(&mut v).unwrap();
            v
        });
        let v = h.join().unwrap();
        assert_eq!(&v[..24], &[9; 24]);
        assert!(v[24..].iter().all(|&b| b == 1));
    }

    #[test]
    fn zerocopy_header_slot_is_a_copy() {
        // The caller's header buffer may be reused right after the call.
        let (c, mut s) = pair();
        let policy = ZcPolicy {
            min_zerocopy_bytes: 1,
            copied_ids_before_plain: None,
        };
        let mut sock = ZeroCopySocket::new(c, policy, 0);
        let payload = vec![5u8; 64 * 1024];
        let mut header = [1u8; 24];
        sock.send_vectored(&header, &[&payload], 65536, true)
            .unwrap();
        header.fill(2);
        sock.send_vectored(&header, &[&payload], 131072, true)
            .unwrap();
        let mut got = vec![0u8; 2 * (24 + 65536)];
        s.read_exact(&mut got).unwrap();
        assert!(got[..24].iter().all(|&b| b == 1));
        assert!(got[24 + 65536..24 + 65536 + 24].iter().all(|&b| b == 2));
        // Bounded: each wait returns after at most 10 s.
        for _ in 0..6 {
            if sock.tracker().in_flight() == 0 {
                break;
            }
            sock.wait_completions(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(sock.tracker().released_position(), 131072);
        assert_eq!(sock.tracker().stats().completed_ids, 2);
    }
}
