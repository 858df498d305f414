//! Message channels over byte-stream file descriptors (Unix stream sockets,
//! pipes), shared by the `uds` and `pipe` systems.
//!
//! Messages have the fixed size of the channel, so there is no framing header.
//! The sender writes each message with `write(2)` (one call per message and
//! receiver, more if the kernel takes it in parts). The receiver reads greedily
//! into a buffer of at least 64 KiB and hands out whole messages from it, as
//! any buffered reader would. In spinning modes both ends are non-blocking and
//! `EAGAIN` is an empty poll; in [`Wait::Block`] mode both ends block in the
//! kernel.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};

use crate::payload;
use crate::transport::{Rx, Tx, Wait};

/// Sets or clears `O_NONBLOCK` on a descriptor.
pub fn set_nonblocking(file: &File, nonblocking: bool) -> Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error()).context("fcntl(F_GETFL)");
    }
    let flags = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL with an int flag word on a descriptor we own.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(std::io::Error::last_os_error()).context("fcntl(F_SETFL)");
    }
    Ok(())
}

/// Sending end: one descriptor per receiver; each message is written to all.
#[derive(Debug)]
pub struct FdTx {
    files: Vec<File>,
    staging: Vec<u8>,
    wait: Wait,
}

impl FdTx {
    /// Wraps connected descriptors, switching them to the mode `wait` needs.
    pub fn new(files: Vec<File>, msg_len: usize, wait: Wait) -> Result<FdTx> {
        for f in &files {
            set_nonblocking(f, wait != Wait::Block)?;
        }
        Ok(FdTx {
            files,
            staging: vec![0; msg_len],
            wait,
        })
    }
}

fn write_all(mut file: &File, mut buf: &[u8], wait: Wait) -> Result<()> {
    while !buf.is_empty() {
        match file.write(buf) {
            Ok(0) => bail!("the receiver closed the stream"),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => wait.idle(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("write to the stream failed"),
        }
    }
    Ok(())
}

impl Tx for FdTx {
    fn send(&mut self, seq: u64) -> Result<()> {
        payload::write(seq, &mut self.staging);
        for f in &self.files {
            write_all(f, &self.staging, self.wait)?;
        }
        Ok(())
    }
}

/// Receiving end over one descriptor.
#[derive(Debug)]
pub struct FdRx {
    file: File,
    msg_len: usize,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FdRx {
    /// Wraps a connected descriptor, switching it to the mode `wait` needs.
    pub fn new(file: File, msg_len: usize, wait: Wait) -> Result<FdRx> {
        set_nonblocking(&file, wait != Wait::Block)?;
        Ok(FdRx {
            file,
            msg_len,
            buf: vec![0; (2 * msg_len).max(64 * 1024)],
            start: 0,
            end: 0,
        })
    }

    /// Hands out the next whole buffered message, if there is one.
    fn take(&mut self) -> Result<Option<u64>> {
        if self.end - self.start < self.msg_len {
            return Ok(None);
        }
        let msg = &self.buf[self.start..self.start + self.msg_len];
        let seq = payload::check(msg, self.msg_len)?;
        self.start += self.msg_len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(Some(seq))
    }

    /// One `read(2)`: `Ok(false)` on `EAGAIN`/`EINTR`.
    fn fill(&mut self) -> Result<bool> {
        if self.start > 0 {
            // Keep the partial message at the front so a whole one always fits
            // (the buffer holds at least two messages).
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        match self.file.read(&mut self.buf[self.end..]) {
            Ok(0) => bail!("the sender closed the stream before the end message"),
            Ok(n) => {
                self.end += n;
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                Ok(false)
            }
            Err(e) => Err(e).context("read from the stream failed"),
        }
    }
}

impl Rx for FdRx {
    fn try_recv(&mut self) -> Result<Option<u64>> {
        if let Some(seq) = self.take()? {
            return Ok(Some(seq));
        }
        if self.fill()? {
            return self.take();
        }
        Ok(None)
    }

    fn recv_blocking(&mut self) -> Result<u64> {
        loop {
            if let Some(seq) = self.take()? {
                return Ok(seq);
            }
            self.fill()?;
        }
    }
}
