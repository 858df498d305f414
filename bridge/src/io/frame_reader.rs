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

use std::{
    io::{self, IoSliceMut, Read},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::proto::frame::{FrameError, FrameHeader, HEADER_LEN};

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
}

impl FrameReader {
    /// A reader that fails with [`ReadError::Idle`] after `idle_timeout`
    /// without a byte from the peer.
    pub fn new(idle_timeout: Duration) -> Self {
        Self {
            buf: vec![0u8; BUFFER_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
            last_rx: Instant::now(),
            idle_timeout,
            bytes: 0,
        }
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

    /// The next frame's bytes: the whole frame, or for DATA its 24-byte
    /// header (the payload follows; read it with [`Self::read_payload`]).
    /// `Ok(None)` when a receive slice passed without a complete frame: call
    /// again after checking other work.
    ///
    /// # Errors
    ///
    /// [`ReadError`]; a bad header is reported as soon as its 8 bytes are in.
    pub fn next_frame<R: Read>(
        &mut self,
        src: &mut R,
        stop: &AtomicBool,
    ) -> Result<Option<&[u8]>, ReadError> {
        if !self.fill(src, HEADER_LEN, stop)? {
            return Ok(None);
        }
        let header_bytes: &[u8; HEADER_LEN] = self.buf[self.start..self.start + HEADER_LEN]
            .try_into()
            .map_err(|_| io::Error::other("header slice"))?;
        let header = FrameHeader::parse(header_bytes)?;
        // At most max body of a control frame + 8, far below BUFFER_LEN.
        let need = header.prefix_len();
        if !self.fill(src, need, stop)? {
            return Ok(None);
        }
        let range = self.start..self.start + need;
        self.start += need;
        Ok(Some(&self.buf[range]))
    }

    /// Reads exactly the total length of `dst` into its buffers, in order:
    /// buffered bytes first, then straight from the socket.
    ///
    /// # Errors
    ///
    /// [`ReadError`]; part of `dst` may have been written.
    pub fn read_payload<R: Read>(
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

    fn ack(stream: u32, position: u64) -> Vec<u8> {
        let mut v = Vec::new();
        Frame::Ack(Ack { stream, position })
            .encode_to_vec(&mut v)
            .unwrap();
        v
    }

    #[test]
    fn frames_split_across_reads_and_timeouts() {
        let a = ack(1, 16);
        let b = ack(2, 32);
        let mut all = a.clone();
        all.extend(&b);
        let (x, y) = all.split_at(5);
        let mut src = Script(VecDeque::from([Some(x.to_vec()), None, Some(y.to_vec())]));
        let stop = AtomicBool::new(false);
        let mut r = FrameReader::new(Duration::from_secs(60));
        assert!(r.next_frame(&mut src, &stop).unwrap().is_none());
        assert_eq!(r.next_frame(&mut src, &stop).unwrap().unwrap(), &a[..]);
        assert_eq!(r.next_frame(&mut src, &stop).unwrap().unwrap(), &b[..]);
        assert!(matches!(r.next_frame(&mut src, &stop), Err(ReadError::Eof)));
        assert_eq!(r.bytes_received(), all.len() as u64);
    }

    #[test]
    fn payload_goes_partly_from_buffer_partly_direct() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let header = DataHeader {
            stream: 3,
            start_position: 0,
            len: payload.len() as u32,
        }
        .encode()
        .unwrap();
        let mut wire = header.to_vec();
        wire.extend(&payload);
        wire.extend(ack(3, 100_000));
        // Deliver in uneven pieces with timeouts between them.
        let mut script = VecDeque::new();
        for piece in wire.chunks(7919) {
            script.push_back(Some(piece.to_vec()));
            script.push_back(None);
        }
        let mut src = Script(script);
        let stop = AtomicBool::new(false);
        let mut r = FrameReader::new(Duration::from_secs(60));
        let d = loop {
            if let Some(bytes) = r.next_frame(&mut src, &stop).unwrap() {
                match decode(bytes).unwrap() {
                    Decoded::Frame {
                        frame: Frame::Data(d),
                        ..
                    } => break d,
                    other => panic!("{other:?}"),
                }
            }
        };
        let mut stamp = [0u8; 8];
        let mut a = vec![0u8; 60_000];
        let mut b = vec![0u8; d.len as usize - 8 - 60_000];
        r.read_payload(&mut src, &mut [&mut stamp, &mut a, &mut b], &stop)
            .unwrap();
        let mut got = stamp.to_vec();
        got.extend(&a);
        got.extend(&b);
        assert_eq!(got, payload);
        let next = loop {
            if let Some(bytes) = r.next_frame(&mut src, &stop).unwrap() {
                break bytes.to_vec();
            }
        };
        assert_eq!(next, ack(3, 100_000));
    }

    #[test]
    fn garbage_is_rejected_at_the_header() {
        let mut src = Script(VecDeque::from([Some(b"GET / HTTP/1.1\r\n".to_vec())]));
        let stop = AtomicBool::new(false);
        let mut r = FrameReader::new(Duration::from_secs(60));
        assert!(matches!(
            r.next_frame(&mut src, &stop),
            Err(ReadError::Frame(FrameError::BadMagic { .. }))
        ));
    }

    #[test]
    fn stop_and_idle_are_noticed_on_timeouts() {
        let stop = AtomicBool::new(true);
        let mut r = FrameReader::new(Duration::from_secs(60));
        let mut src = Script(VecDeque::from([None]));
        assert!(matches!(
            r.next_frame(&mut src, &stop),
            Err(ReadError::Stopped)
        ));
        let stop = AtomicBool::new(false);
        let mut r = FrameReader::new(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        let mut src = Script(VecDeque::from([None]));
        assert!(matches!(
            r.next_frame(&mut src, &stop),
            Err(ReadError::Idle(_))
        ));
    }
}
