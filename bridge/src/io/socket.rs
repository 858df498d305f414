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
}
