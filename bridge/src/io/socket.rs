//! Small socket helpers the daemon needs beyond `std::net`.

use std::{io, mem, os::fd::RawFd, time::Duration};

/// Resets a connected TCP socket without closing its descriptor
/// (`connect(AF_UNSPEC)`, which runs the kernel's `tcp_disconnect`): the
/// unsent and unacknowledged data is dropped and the peer gets a RST. Queued
/// `MSG_ZEROCOPY` buffers are freed with it, so their completions can still
/// be read from the error queue of the open descriptor afterwards.
///
/// # Errors
///
/// The `connect` error.
pub fn tcp_disconnect(fd: RawFd) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr is valid; only the family is read for AF_UNSPEC.
    let mut addr: libc::sockaddr = unsafe { mem::zeroed() };
    addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: `addr` is a live sockaddr and the length passed is its size.
    let r = unsafe {
        libc::connect(
            fd,
            &addr,
            mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets `TCP_NOTSENT_LOWAT`: `POLLOUT` then means fewer than `bytes` are
/// queued unsent (not merely "the send buffer has room"), so a sender that
/// writes bulk data only when `POLLOUT` keeps at most `bytes` plus one write
/// ahead of its next control frame, instead of a whole send buffer (megabytes
/// with autotuning).
///
/// # Errors
///
/// The `setsockopt` error.
pub fn set_notsent_lowat(fd: RawFd, bytes: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` is a live c_int and the length passed is its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&raw const value).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes queued on the socket and not yet sent (`SIOCOUTQNSD`).
///
/// # Errors
///
/// The `ioctl` error.
pub fn unsent_bytes(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQNSD writes one c_int to the live `n`.
    let r = unsafe { libc::ioctl(fd, SIOCOUTQNSD, &raw mut n) };
    if r == 0 {
        Ok(usize::try_from(n).unwrap_or(0))
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `SIOCOUTQNSD` from `<linux/sockios.h>` (not exported by libc).
const SIOCOUTQNSD: libc::Ioctl = 0x894B;

/// Waits up to `timeout` for `events` (plus `POLLERR`/`POLLHUP`, always
/// reported) on `fd`; returns the `revents` (0 on timeout, also on `EINTR`).
///
/// # Errors
///
/// The `poll` error other than `EINTR`.
pub fn poll_once(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<libc::c_short> {
    let ms = libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: `pfd` is one live pollfd and the count passed is 1.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r >= 0 {
        return Ok(pfd.revents);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::Interrupted {
        Ok(0)
    } else {
        Err(e)
    }
}

/// Whether the socket can take more data right now (`POLLOUT`).
///
/// # Errors
///
/// The `poll` error.
pub fn writable(fd: RawFd) -> io::Result<bool> {
    Ok(poll_once(fd, libc::POLLOUT, Duration::ZERO)? & libc::POLLOUT != 0)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd,
    };

    use super::*;

    #[test]
    fn disconnect_resets_the_peer_and_keeps_the_fd() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert!(writable(c.as_raw_fd()).unwrap());
        tcp_disconnect(c.as_raw_fd()).unwrap();
        let r = s.read(&mut b);
        assert!(matches!(r, Ok(0)) || r.is_err(), "{r:?}");
        // The descriptor is still ours and valid for poll.
        poll_once(c.as_raw_fd(), 0, Duration::ZERO).unwrap();
    }

    #[test]
    fn notsent_lowat_holds_pollout_while_unsent_bytes_exceed_it() {
        const LOWAT: usize = 16 << 10;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        set_notsent_lowat(c.as_raw_fd(), LOWAT as u32).unwrap();
        c.set_nonblocking(true).unwrap();
        // The peer does not read yet: fill its window and our queue.
        let buf = vec![0u8; 64 << 10];
        loop {
            match c.write(&buf) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(unsent_bytes(c.as_raw_fd()).unwrap() > LOWAT);
        assert!(!writable(c.as_raw_fd()).unwrap());
        // Drain the peer bit by bit: whenever POLLOUT shows, fewer than
        // LOWAT bytes are unsent (the count only falls after the poll, as
        // nothing writes meanwhile).
        let mut sink = vec![0u8; 4096];
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if writable(c.as_raw_fd()).unwrap() {
                assert!(unsent_bytes(c.as_raw_fd()).unwrap() < LOWAT);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never writable");
            let _ = s.read(&mut sink).unwrap();
        }
    }
}
