//! Reading frames from a socket: control frames through a small buffer,
//! DATA payloads straight into their destination (the replica ring).
//!
//! [`FrameReader`] reads whatever the socket has into a 64 KiB buffer, so a
//! burst of small frames costs one `read` call. [`FrameReader::next_frame`]
//! hands out one frame's bytes (for DATA: only the 24-byte header), ready for
//! [`decode`](crate::proto::frame::decode). [`FrameReader::read_payload`]
//! then moves the payload: first the part already buffered (a small copy),
//! then the rest with `readv` directly into the caller's buffers, so a large
//! DATA payload crosses from the kernel to the ring exactly once.
//!
//! The socket is expected to have a short receive timeout (a "slice"); each
//! slice without data lets the reader check the stop flag and the peer's
//! idle time.
//!
//! Every frame is authenticated here, after the handshake
//! ([`seal`](crate::proto::seal)): a control frame is handed out only once
//! its tag verified (and its body was decrypted, in `encrypt` mode); a DATA
//! payload is authenticated as it lies in its destination, and
//! [`FrameReader::read_payload`] returns `Ok` only once the tag after it
//! verified — the caller publishes nothing before. A frame that fails is
//! [`ReadError::Auth`]: the stream cannot be trusted any more, close it.

use std::{
    io::{self, IoSliceMut, Read},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::proto::{
    frame::{FrameError, FrameHeader, FrameType, HEADER_LEN},
    seal::{Direction, FrameSeal, Protection, SealError, TAG_LEN},
};

/// Size of the read buffer; larger than any control frame (the largest,
/// a full HEARTBEAT, is about 12 KiB).
pub const BUFFER_LEN: usize = 64 << 10;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Eof,
    /// Nothing arrived for longer than the peer timeout.
    #[error("no data from the peer for {0:?} (peer timeout)")]
    Idle(Duration),
    /// The stop flag was raised.
    #[error("stopped")]
    Stopped,
    /// The bytes do not form a valid frame header.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame failed authentication.
    #[error(transparent)]
    Auth(#[from] SealError),
    /// The caller asked for the next frame before reading a DATA payload.
    #[error("next frame requested before the DATA payload was read")]
    PayloadPending,
    /// The socket failed.
    #[error("receive failed: {0}")]
    Io(#[from] io::Error),
}

/// Buffered frame reader (see the module docs).
#[derive(Debug)]
pub struct FrameReader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    last_rx: Instant,
    idle_timeout: Duration,
    bytes: u64,
    /// The receiving direction's key and counter.
    keys: Direction,
    /// The AEAD of the DATA frame whose payload is to be read next.
    data: Option<FrameSeal>,
}

impl FrameReader {
    /// A reader that opens frames with `keys` (the session's receiving
    /// direction) and fails with [`ReadError::Idle`] after `idle_timeout`
    /// without a byte from the peer.
    pub fn new(idle_timeout: Duration, keys: Direction) -> Self {
        Self {
            buf: vec![0u8; BUFFER_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
            last_rx: Instant::now(),
            idle_timeout,
            bytes: 0,
            keys,
            data: None,
        }
    }

    /// The counter of the next frame to open.
    pub fn next_counter(&self) -> u64 {
        self.keys.next_counter()
    }

    /// Changes the idle timeout.
    pub fn set_idle_timeout(&mut self, timeout: Duration) {
        self.idle_timeout = timeout;
    }

    /// Restarts the idle clock, e.g. after this side stalled on its own.
    pub fn touch(&mut self) {
        self.last_rx = Instant::now();
    }

    /// Bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.bytes
    }

    /// The next frame's bytes, authenticated: the whole frame, or for DATA
    /// its 24-byte header (the payload follows; read it with
    /// [`Self::read_payload`] or [`Self::skip_payload`], which verify the
    /// frame's tag). `Ok(None)` when a receive slice passed without a
    /// complete frame: call again after checking other work.
    ///
    /// # Errors
    ///
    /// [`ReadError`]; a bad header is reported as soon as its 8 bytes are in,
    /// a control frame that fails authentication as [`ReadError::Auth`].
    pub fn next_frame<R: Read>(
        &mut self,
        src: &mut R,
        stop: &AtomicBool,
    ) -> Result<Option<&[u8]>, ReadError> {
        if self.data.is_some() {
            return Err(ReadError::PayloadPending);
        }
        if !self.fill(src, HEADER_LEN, stop)? {
            return Ok(None);
        }
        let header_bytes: &[u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
            .try_into()
            .map_err(|_| io::Error::other("header slice"))?;
        let header = FrameHeader::parse(header_bytes)?;
        // At most max body of a control frame + 8 + the tag, far below BUFFER_LEN.
        let need = header.prefix_len();
        let is_data = header.frame_type == FrameType::Data;
        let tag_len = if is_data { 0 } else { TAG_LEN };
        if !self.fill(src, need + tag_len, stop)? {
            return Ok(None);
        }
        let range = self.start..self.start + need;
        if is_data {
            // The fixed DATA fields are associated data in both modes; the
            // tag comes after the payload.
            let mut seal = self.keys.begin()?;
            seal.aad(&self.buf[range.clone()]);
            self.data = Some(seal);
        } else {
            let (frame, rest) = self.buf[self.start..].split_at_mut(need);
            let tag: [u8; TAG_LEN] = rest[..TAG_LEN]
                .try_into()
                .map_err(|_| io::Error::other("tag slice"))?;
            self.keys.open_control(frame, &tag)?;
        }
        self.start += need + tag_len;
        Ok(Some(&self.buf[range]))
    }

    /// Reads a DATA payload of `len` bytes into nothing, authenticating it:
    /// for a DATA frame the caller cannot use. `Ok` means the peer really
    /// sent it (a protocol error on its part); [`ReadError::Auth`] that it
    /// did not (injected or changed on the way).
    ///
    /// # Errors
    ///
    /// [`ReadError`].
    pub fn skip_payload<R: Read>(
        &mut self,
        src: &mut R,
        len: u64,
        stop: &AtomicBool,
    ) -> Result<(), ReadError> {
        let mut scratch = vec![0u8; (len.min(BUFFER_LEN as u64)) as usize];
        let mut left = len;
        while left > 0 {
            let n = left.min(scratch.len() as u64) as usize;
            self.read_into(src, &mut [&mut scratch[..n]], stop)?;
            self.absorb(&scratch[..n]);
            left -= n as u64;
        }
        self.finish_data(src, &mut [], stop)
    }

    /// Reads the payload of the DATA frame just returned by
    /// [`Self::next_frame`]: exactly the total length of `dst`, into its
    /// buffers in order (buffered bytes first, then straight from the
    /// socket), then the tag, and verifies it; in `encrypt` mode decrypts
    /// `dst` in place after that.
    ///
    /// # Errors
    ///
    /// [`ReadError`], [`ReadError::Auth`] if the frame is not authentic;
    /// `dst` holds unverified bytes then: do not publish them.
    pub fn read_payload<R: Read>(
        &mut self,
        src: &mut R,
        dst: &mut [&mut [u8]],
        stop: &AtomicBool,
    ) -> Result<(), ReadError> {
        self.read_into(src, dst, stop)?;
        for piece in dst.iter() {
            self.absorb(piece);
        }
        self.finish_data(src, dst, stop)
    }

    fn absorb(&mut self, piece: &[u8]) {
        let protection = self.keys.protection();
        if let Some(seal) = self.data.as_mut() {
            match protection {
                Protection::Auth => seal.aad(piece),
                Protection::Encrypt => seal.absorb_ciphertext(piece),
            }
        }
    }

    /// Reads the DATA frame's tag and verifies it; decrypts `dst` on success
    /// in `encrypt` mode.
    fn finish_data<R: Read>(
        &mut self,
        src: &mut R,
        dst: &mut [&mut [u8]],
        stop: &AtomicBool,
    ) -> Result<(), ReadError> {
        while !self.fill(src, TAG_LEN, stop)? {}
        let tag: [u8; TAG_LEN] = self.buf[self.start..self.start + TAG_LEN]
            .try_into()
            .map_err(|_| io::Error::other("tag slice"))?;
        self.start += TAG_LEN;
        let counter = self.keys.next_counter().wrapping_sub(1);
        let seal = self.data.take().ok_or(ReadError::PayloadPending)?;
        let mut ks = seal
            .verify(&tag)
            .map_err(|()| SealError::BadTag { counter })?;
        if self.keys.protection() == Protection::Encrypt {
            for piece in dst.iter_mut() {
                ks.apply(piece);
            }
        }
        Ok(())
    }

    /// Reads exactly the total length of `dst` into its buffers, in order.
    fn read_into<R: Read>(
        &mut self,
        src: &mut R,
        dst: &mut [&mut [u8]],
        stop: &AtomicBool,
    ) -> Result<(), ReadError> {
        // Index of the buffer being filled and the offset in it.
        let (mut i, mut off) = (0usize, 0usize);
        while i < dst.len() {
            let room = dst[i].len() - off;
            if room == 0 {
                i += 1;
                off = 0;
                continue;
            }
            let buffered = self.end - self.start;
            if buffered > 0 {
                let n = buffered.min(room);
                dst[i][off..off + n].copy_from_slice(&self.buf[self.start..self.start + n]);
                self.start += n;
                off += n;
                continue;
            }
            // Nothing buffered: read into the destination directly.
            let n = {
                let (head, rest) = dst.split_at_mut(i + 1);
                let mut slices: Vec<IoSliceMut<'_>> = Vec::with_capacity(1 + rest.len());
                slices.push(IoSliceMut::new(&mut head[i][off..]));
                for b in rest.iter_mut() {
                    slices.push(IoSliceMut::new(b));
                }
                match src.read_vectored(&mut slices) {
                    Ok(0) => return Err(ReadError::Eof),
                    Ok(n) => n,
                    Err(e) if is_timeout(&e) => {
                        self.check_idle(stop)?;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(ReadError::Io(e)),
                }
            };
            self.on_received(n);
            // Advance (i, off) over the n bytes just written.
            let mut left = n;
            while left > 0 && i < dst.len() {
                let take = left.min(dst[i].len() - off);
                off += take;
                left -= take;
                if off == dst[i].len() {
                    i += 1;
                    off = 0;
                }
            }
        }
        Ok(())
    }

    /// Ensures at least `need` bytes are buffered from `start`; false if a
    /// receive slice passed first.
    fn fill<R: Read>(
        &mut self,
        src: &mut R,
        need: usize,
        stop: &AtomicBool,
    ) -> Result<bool, ReadError> {
        if self.end - self.start >= need {
            return Ok(true);
        }
        if self.start > 0 && self.start + need > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        } else if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        while self.end - self.start < need {
            match src.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(ReadError::Eof),
                Ok(n) => {
                    self.end += n;
                    self.on_received(n);
                }
                Err(e) if is_timeout(&e) => {
                    self.check_idle(stop)?;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        Ok(true)
    }

    fn on_received(&mut self, n: usize) {
        self.bytes += n as u64;
        self.last_rx = Instant::now();
    }

    fn check_idle(&self, stop: &AtomicBool) -> Result<(), ReadError> {
        // Relaxed: a flag polled once per receive slice; no data is published with it.
        if stop.load(Ordering::Relaxed) {
            return Err(ReadError::Stopped);
        }
        let idle = self.last_rx.elapsed();
        if idle > self.idle_timeout {
            return Err(ReadError::Idle(idle));
        }
        Ok(())
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::proto::frame::{decode, Ack, DataHeader, Decoded, Frame};

    /// A source that returns scripted reads: bytes in pieces, or timeouts.
    struct Script(VecDeque<Option<Vec<u8>>>);

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.pop_front() {
                None => Ok(0),
                Some(None) => Err(io::ErrorKind::WouldBlock.into()),
                Some(Some(mut bytes)) => {
                    let n = bytes.len().min(buf.len());
                    buf[..n].copy_from_slice(&bytes[..n]);
                    if n < bytes.len() {
                        self.0.push_front(Some(bytes.split_off(n)));
                    }
                    Ok(n)
                }
            }
        }
    }

    fn keys(p: Protection) -> (Direction, Direction) {
        (Direction::new([3; 32], p), Direction::new([3; 32], p))
    }

    fn reader(p: Protection) -> (Direction, FrameReader) {
        let (send, recv) = keys(p);
        (send, FrameReader::new(Duration::from_secs(60), recv))
    }

    fn plain_ack(stream: u32, position: u64) -> Vec<u8> {
        let mut v = Vec::new();
        Frame::Ack(Ack { stream, position })
            .encode_to_vec(&mut v)
            .unwrap();
        v
    }

    fn ack(send: &mut Direction, stream: u32, position: u64) -> Vec<u8> {
        let mut v = plain_ack(stream, position);
        send.seal_control(&mut v, 0).unwrap();
        v
    }

    /// A sealed DATA frame: header, payload (encrypted in `encrypt` mode), tag.
    fn data(send: &mut Direction, payload: &[u8]) -> Vec<u8> {
        let header = DataHeader {
            stream: 3,
            start_position: 0,
            len: payload.len() as u32,
        }
        .encode()
        .unwrap();
        let mut seal = send.begin().unwrap();
        seal.aad(&header);
        let mut body = payload.to_vec();
        match send.protection() {
            Protection::Auth => seal.aad(&body),
            Protection::Encrypt => seal.encrypt(&mut body),
        }
        let mut wire = header.to_vec();
        wire.extend(&body);
        wire.extend(seal.tag());
        wire
    }

    #[test]
    fn frames_split_across_reads_and_timeouts() {
        let (mut send, mut r) = reader(Protection::Auth);
        let a = ack(&mut send, 1, 16);
        let b = ack(&mut send, 2, 32);
        let mut all = a.clone();
        all.extend(&b);
        let (x, y) = all.split_at(5);
        let mut src = Script(VecDeque::from([Some(x.to_vec()), None, Some(y.to_vec())]));
        let stop = AtomicBool::new(false);
        assert!(r.next_frame(&mut src, &stop).unwrap().is_none());
        assert_eq!(
            r.next_frame(&mut src, &stop).unwrap().unwrap(),
            &plain_ack(1, 16)[..]
        );
        assert_eq!(
            r.next_frame(&mut src, &stop).unwrap().unwrap(),
            &plain_ack(2, 32)[..]
        );
        assert!(matches!(r.next_frame(&mut src, &stop), Err(ReadError::Eof)));
        assert_eq!(r.bytes_received(), all.len() as u64);
    }

    fn payload_round_trip(p: Protection, tamper: Option<usize>) -> Result<Vec<u8>, ReadError> {
        let (mut send, mut r) = reader(p);
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = data(&mut send, &payload);
        if let Some(at) = tamper {
            wire[at] ^= 0x40;
        }
        wire.extend(ack(&mut send, 3, 100_000));
        // Deliver in uneven pieces with timeouts between them.
        let mut script = VecDeque::new();
        for piece in wire.chunks(7919) {
            script.push_back(Some(piece.to_vec()));
            script.push_back(None);
        }
        let mut src = Script(script);
        let stop = AtomicBool::new(false);
        let d = loop {
            if let Some(bytes) = r.next_frame(&mut src, &stop)? {
                match decode(bytes).unwrap() {
                    Decoded::Frame {
                        frame: Frame::Data(d),
                        ..
                    } => break d,
                    other => panic!("{other:?}"),
                }
            }
        };
        assert!(matches!(
            r.next_frame(&mut src, &stop),
            Err(ReadError::PayloadPending)
        ));
        let mut stamp = [0u8; 8];
        let mut a = vec![0u8; 60_000];
        let mut b = vec![0u8; d.len as usize - 8 - 60_000];
        r.read_payload(&mut src, &mut [&mut stamp, &mut a, &mut b], &stop)?;
        let mut got = stamp.to_vec();
        got.extend(&a);
        got.extend(&b);
        assert_eq!(got, payload);
        let next = loop {
            if let Some(bytes) = r.next_frame(&mut src, &stop)? {
                break bytes.to_vec();
            }
        };
        assert_eq!(next, plain_ack(3, 100_000));
        Ok(got)
    }

    #[test]
    fn payload_goes_partly_from_buffer_partly_direct() {
        for p in [Protection::Auth, Protection::Encrypt] {
            payload_round_trip(p, None).unwrap();
        }
    }

    /// One flipped bit anywhere in a DATA frame (header, payload, tag) is an
    /// authentication failure, reported by `read_payload` before the caller
    /// publishes anything.
    #[test]
    fn tampered_data_fails_authentication() {
        for p in [Protection::Auth, Protection::Encrypt] {
            for at in [10, 24, 50_000, 100_023] {
                let r = payload_round_trip(p, Some(at));
                assert!(
                    matches!(r, Err(ReadError::Auth(SealError::BadTag { counter: 0 }))),
                    "{p:?} at {at}: {:?}",
                    r.map(|v| v.len())
                );
            }
        }
    }

    #[test]
    fn skipped_payload_is_still_authenticated() {
        for tamper in [false, true] {
            let (mut send, mut r) = reader(Protection::Auth);
            let mut wire = data(&mut send, &[7u8; 200_000]);
            if tamper {
                wire[1000] ^= 1;
            }
            wire.extend(ack(&mut send, 1, 1));
            let mut src = Script(VecDeque::from([Some(wire)]));
            let stop = AtomicBool::new(false);
            r.next_frame(&mut src, &stop).unwrap().unwrap();
            let res = r.skip_payload(&mut src, 200_000, &stop);
            assert_eq!(res.is_err(), tamper, "{res:?}");
            if !tamper {
                assert!(r.next_frame(&mut src, &stop).unwrap().is_some());
            }
        }
    }

    /// A control frame replayed right after itself fails.
    #[test]
    fn replayed_control_frame_fails() {
        let (mut send, mut r) = reader(Protection::Auth);
        let a = ack(&mut send, 1, 16);
        let mut wire = a.clone();
        wire.extend(&a);
        let mut src = Script(VecDeque::from([Some(wire)]));
        let stop = AtomicBool::new(false);
        assert!(r.next_frame(&mut src, &stop).unwrap().is_some());
        assert!(matches!(
            r.next_frame(&mut src, &stop),
            Err(ReadError::Auth(SealError::BadTag { counter: 1 }))
        ));
    }

    #[test]
    fn garbage_is_rejected_at_the_header() {
        let mut src = Script(VecDeque::from([Some(b"GET / HTTP/1.1\r\n".to_vec())]));
        let stop = AtomicBool::new(false);
        let (_, mut r) = reader(Protection::Auth);
        assert!(matches!(
            r.next_frame(&mut src, &stop),
            Err(ReadError::Frame(FrameError::BadMagic { .. }))
        ));
    }

    #[test]
    fn stop_and_idle_are_noticed_on_timeouts() {
        let stop = AtomicBool::new(true);
        let (_, mut r) = reader(Protection::Auth);
        let mut src = Script(VecDeque::from([None]));
        assert!(matches!(
            r.next_frame(&mut src, &stop),
            Err(ReadError::Stopped)
        ));
        let stop = AtomicBool::new(false);
        let mut r = FrameReader::new(Duration::ZERO, keys(Protection::Auth).1);
        std::thread::sleep(Duration::from_millis(2));
        let mut src = Script(VecDeque::from([None]));
        assert!(matches!(
            r.next_frame(&mut src, &stop),
            Err(ReadError::Idle(_))
        ));
    }
}
