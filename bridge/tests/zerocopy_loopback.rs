//! `ZeroCopySocket` over real loopback TCP sockets: ring slices from an mmap
//! are sent as DATA frames with `MSG_ZEROCOPY`, the receiver reads each
//! payload straight into its destination, and every completion is accounted
//! for.

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    thread,
    time::Duration,
};

use memmap2::MmapMut;
use shmbus_bridge::{
    io::zerocopy::ZeroCopySocket,
    proto::{
        frame::{decode, DataHeader, Decoded, Frame, FrameHeader, DATA_HEADER_LEN, HEADER_LEN},
        zc::ZcPolicy,
    },
};

/// Byte at absolute stream position `p`. Depends on the lap (`p >> 20`), so
/// a slice overwritten before release would be detected.
fn pattern(p: u64) -> u8 {
    (p ^ (p >> 8) ^ (p >> 20).wrapping_mul(0x9D)) as u8
}

/// Reads one DATA header the way the phase-2 receiver will: the fixed frame
/// header, then the rest of the prefix, then decode.
fn read_data_header(s: &mut TcpStream) -> DataHeader {
    let mut buf = [0u8; DATA_HEADER_LEN];
    s.read_exact(&mut buf[..HEADER_LEN]).unwrap();
    let head = FrameHeader::parse(buf[..HEADER_LEN].try_into().unwrap()).unwrap();
    let prefix = head.prefix_len();
    assert_eq!(prefix, DATA_HEADER_LEN, "only DATA frames are sent here");
    s.read_exact(&mut buf[HEADER_LEN..prefix]).unwrap();
    match decode(&buf[..prefix]).unwrap() {
        Decoded::Frame {
            frame: Frame::Data(d),
            consumed,
        } => {
            assert_eq!(consumed, prefix);
            d
        }
        other => panic!("expected DATA, got {other:?}"),
    }
}

/// Accepts one connection and receives `total` stream bytes into a buffer,
/// checking that DATA frames are contiguous.
fn spawn_receiver(listener: TcpListener, total: u64) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut dest = vec![0u8; total as usize];
        let mut next = 0u64;
        while next < total {
            let d = read_data_header(&mut s);
            assert_eq!(d.start_position, next, "DATA frames must be contiguous");
            let end = d.end_position();
            assert!(end <= total);
            // Straight into the destination slice, as into a replica ring.
            s.read_exact(&mut dest[next as usize..end as usize])
                .unwrap();
            next = end;
        }
        dest
    })
}

/// Waits (bounded) until every zero-copy send has completed.
fn drain(sock: &mut ZeroCopySocket) {
    for _ in 0..30 {
        if sock.tracker().in_flight() == 0 {
            return;
        }
        sock.wait_completions(Duration::from_secs(2)).unwrap();
    }
    panic!(
        "zero-copy completions missing: {} sends still in flight",
        sock.tracker().in_flight()
    );
}

/// Streams `total` bytes through a `ring_len` ring: the producer refills ring
/// space only after the tracker released it, the sender ships contiguous
/// slices (two at the wrap) of at most `chunk` bytes.
fn stream_through_ring(addr: &str, ring_len: usize, chunk: usize, total: u64) {
    let listener = TcpListener::bind(addr).unwrap();
    let peer: SocketAddr = listener.local_addr().unwrap();
    let receiver = spawn_receiver(listener, total);

    let mut ring = MmapMut::map_anon(ring_len).unwrap();
    let policy = ZcPolicy {
        min_zerocopy_bytes: 4096,
        copied_ids_before_plain: Some(8),
    };
    let mut sock = ZeroCopySocket::new(TcpStream::connect(peer).unwrap(), policy, 0);
    assert!(sock.zerocopy_available(), "SO_ZEROCOPY refused on loopback");
    let cap = ring_len as u64;
    let (mut written, mut sent) = (0u64, 0u64);
    let mut zc_calls_after_switch = 0u32;
    let mut waits = 0u32;
    while sent < total {
        // Producer: fill released space only.
        let limit = (sock.tracker().released_position() + cap).min(total);
        while written < limit {
            ring[(written % cap) as usize] = pattern(written);
            written += 1;
        }
        if sent == written {
            // Ring full of unreleased bytes: wait for completions.
            sock.wait_completions(Duration::from_secs(2)).unwrap();
            waits += 1;
            assert!(waits < 10_000, "no progress: completions stopped");
            continue;
        }
        let len = (written - sent).min(chunk as u64);
        let start = (sent % cap) as usize;
        let first = (len as usize).min(ring_len - start);
        let (a, b) = (&ring[start..start + first], &ring[..len as usize - first]);
        let hdr = DataHeader {
            stream: 1,
            start_position: sent,
            len: len as u32,
        }
        .encode()
        .unwrap();
        let was_active = sock.zerocopy_active();
        let r = sock.send_vectored(&hdr, &[a, b], sent + len, true).unwrap();
        assert_eq!(r.bytes, DATA_HEADER_LEN + len as usize);
        if !was_active {
            zc_calls_after_switch += r.zerocopy_calls;
        }
        sent += len;
        sock.poll_completions().unwrap();
    }
    drain(&mut sock);
    let got = receiver.join().unwrap();
    assert_eq!(got.len() as u64, total);
    for (p, &byte) in got.iter().enumerate() {
        assert_eq!(byte, pattern(p as u64), "wrong byte at stream position {p}");
    }

    let st = *sock.tracker().stats();
    eprintln!("{addr}: {st:?} {:?}", sock.stats());
    assert_eq!(sock.tracker().released_position(), total);
    assert!(st.zerocopy_sends > 0, "no zero-copy send was made: {st:?}");
    // Every zero-copy call got exactly one completion.
    assert_eq!(st.completed_ids, st.zerocopy_sends, "{st:?}");
    // Loopback always takes the deferred-copy path (MACHINE-FACTS §1).
    assert_eq!(st.copied_ids, st.completed_ids, "{st:?}");
    assert_eq!(st.zerocopy_ids, 0);
    assert!(!sock.zerocopy_active());
    assert_eq!(st.switched_to_plain, 1);
    assert_eq!(zc_calls_after_switch, 0);
    assert!(
        st.plain_sends > 0,
        "nothing was sent plainly after the switch: {st:?}"
    );
}

#[test]
fn zerocopy_loopback_v4_delivers_identical_bytes_and_switches_to_plain() {
    // 8 MiB through a 1 MiB ring in slices of up to 200 KiB (not a divisor
    // of the ring, so slices wrap).
    stream_through_ring("127.0.0.1:0", 1 << 20, 200 * 1024, 8 << 20);
}

#[test]
fn zerocopy_loopback_v6_parses_ipv6_recverr() {
    stream_through_ring("[::1]:0", 512 * 1024, 96 * 1024, 4 << 20);
}

/// Forces `ENOBUFS` as in MACHINE-FACTS §3: with a huge forced send buffer
/// and a receiver that does not read, zero-copy sends pile up in the write
/// queue until the socket's optmem (`net.core.optmem_max`, 832 bytes per
/// in-flight zero-copy buffer of up to 512 KiB) is used up. Needs
/// `CAP_NET_ADMIN` for `SO_SNDBUFFORCE` (root on the project's machines).
#[test]
fn zerocopy_enobufs_falls_back_to_plain_send() {
    const SLICE: usize = 512 * 1024;
    let optmem: usize = std::fs::read_to_string("/proc/sys/net/core/optmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let sends = optmem / 832 + 64;
    let total = (sends * SLICE) as u64;

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = listener.local_addr().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let receiver = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        // Stall until the sender is done (bounded, so a sender blocked on a
        // full buffer cannot hang the test).
        let _ = go_rx.recv_timeout(Duration::from_secs(120));
        let mut buf = vec![0u8; SLICE];
        let mut next = 0u64;
        while next < total {
            let d = read_data_header(&mut s);
            assert_eq!(d.start_position, next);
            s.read_exact(&mut buf[..d.len as usize]).unwrap();
            for (i, &b) in buf[..d.len as usize].iter().enumerate() {
                assert_eq!(b, pattern(i as u64), "payload byte {i} of frame at {next}");
            }
            next = d.end_position();
        }
    });

    let mut src = MmapMut::map_anon(SLICE).unwrap();
    for (i, b) in src.iter_mut().enumerate() {
        *b = pattern(i as u64);
    }
    let policy = ZcPolicy {
        min_zerocopy_bytes: 1,
        copied_ids_before_plain: None,
    };
    let mut sock = ZeroCopySocket::new(TcpStream::connect(peer).unwrap(), policy, 0);
    let sndbuf = sock
        .set_send_buffer_size(256 << 20, true)
        .expect("SO_SNDBUFFORCE needs CAP_NET_ADMIN (run as root)");
    assert!(
        sndbuf >= 2 * sends * SLICE,
        "send buffer {sndbuf} too small"
    );
    let mut pos = 0u64;
    for _ in 0..sends {
        let hdr = DataHeader {
            stream: 1,
            start_position: pos,
            len: SLICE as u32,
        }
        .encode()
        .unwrap();
        pos += SLICE as u64;
        sock.send_vectored(&hdr, &[&src[..]], pos, true).unwrap();
    }
    go_tx.send(()).unwrap();
    receiver.join().unwrap();
    drain(&mut sock);
    let st = *sock.tracker().stats();
    assert!(
        st.enobufs_fallbacks > 0,
        "no ENOBUFS after {sends} stalled zero-copy sends of 512 KiB (optmem_max {optmem}): {st:?}"
    );
    assert!(st.zerocopy_sends > 0);
    assert_eq!(st.completed_ids, st.zerocopy_sends, "{st:?}");
    assert_eq!(sock.tracker().released_position(), total);
    eprintln!("ENOBUFS test: {st:?}");
}

/// A non-blocking socket whose peer does not read: the send fills the socket
/// buffers, gets `EAGAIN`, waits for `POLLOUT`, and gives up at the send
/// timeout with a typed error. What did go out is an exact prefix, and the
/// unfinished slice is never reported as releasable.
#[test]
fn stalled_peer_send_times_out_without_releasing() {
    const LEN: usize = 16 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = listener.local_addr().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let receiver = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let _ = go_rx.recv_timeout(Duration::from_secs(120));
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut src = MmapMut::map_anon(LEN).unwrap();
    for (i, b) in src.iter_mut().enumerate() {
        *b = pattern(i as u64);
    }
    let stream = TcpStream::connect(peer).unwrap();
    stream.set_nonblocking(true).unwrap();
    let policy = ZcPolicy {
        min_zerocopy_bytes: 1,
        copied_ids_before_plain: None,
    };
    let mut sock = ZeroCopySocket::new(stream, policy, 0);
    sock.set_send_timeout(Some(Duration::from_millis(200)));
    let hdr = DataHeader {
        stream: 9,
        start_position: 0,
        len: LEN as u32,
    }
    .encode()
    .unwrap();
    let err = sock
        .send_vectored(&hdr, &[&src[..]], LEN as u64, true)
        .expect_err("16 MiB cannot fit into the buffers of a peer that does not read");
    assert_eq!(err.io_kind(), Some(std::io::ErrorKind::TimedOut), "{err}");
    assert_eq!(sock.tracker().released_position(), 0);
    assert!(sock.tracker().stats().zerocopy_sends > 0);

    sock.stream().shutdown(std::net::Shutdown::Write).unwrap();
    go_tx.send(()).unwrap();
    let got = receiver.join().unwrap();
    assert!(got.len() > DATA_HEADER_LEN && got.len() < DATA_HEADER_LEN + LEN);
    assert_eq!(&got[..DATA_HEADER_LEN], &hdr);
    for (i, &b) in got[DATA_HEADER_LEN..].iter().enumerate() {
        assert_eq!(b, pattern(i as u64), "byte {i} of the partial payload");
    }
    drain(&mut sock);
    // Every partial call completed, yet the unfinished slice stays pinned.
    let st = *sock.tracker().stats();
    assert_eq!(st.completed_ids, st.zerocopy_sends);
    assert_eq!(sock.tracker().released_position(), 0);
}

/// `send_frame` with a trailer (a frame's tag) and `MSG_ZEROCOPY`: header,
/// both payload slices and the trailer arrive in order, byte for byte, for
/// every send, while the trailers live in the socket's slots (each send's
/// trailer differs, so a slot reused too early would show); and every
/// zero-copy id completes.
#[test]
fn zerocopy_send_frame_carries_the_trailer() {
    const SENDS: usize = 48;
    const PART: usize = 40 << 10;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let total = SENDS * (DATA_HEADER_LEN + 2 * PART + 16);
    let receiver = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut all = vec![0u8; total];
        s.read_exact(&mut all).unwrap();
        all
    });
    let mut sock = ZeroCopySocket::new(
        TcpStream::connect(addr).unwrap(),
        ZcPolicy {
            copied_ids_before_plain: None,
            ..ZcPolicy::default()
        },
        0,
    );
    assert!(sock.zerocopy_available());
    let a: Vec<u8> = (0..PART).map(|i| pattern(i as u64)).collect();
    let b: Vec<u8> = (0..PART).map(|i| pattern(i as u64 + 7)).collect();
    let mut expected = Vec::with_capacity(total);
    let mut pos = 0u64;
    let mut zc_calls = 0;
    for n in 0..SENDS {
        let hdr = DataHeader {
            stream: 1,
            start_position: (n * 2 * PART) as u64,
            len: (2 * PART) as u32,
        }
        .encode()
        .unwrap();
        let trailer = [n as u8 ^ 0xA5; 16];
        pos += (DATA_HEADER_LEN + 2 * PART + 16) as u64;
        let r = sock
            .send_frame(&hdr, &[&a[..], &b[..]], &trailer, pos, true)
            .unwrap();
        zc_calls += r.zerocopy_calls;
        expected.extend_from_slice(&hdr);
        expected.extend_from_slice(&a);
        expected.extend_from_slice(&b);
        expected.extend_from_slice(&trailer);
    }
    let got = receiver.join().unwrap();
    assert!(got == expected, "the byte stream differs");
    assert!(zc_calls > 0, "no zero-copy call was made");
    drain(&mut sock);
    assert_eq!(sock.tracker().released_position(), pos);
}
