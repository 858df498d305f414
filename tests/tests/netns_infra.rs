//! The network test rig itself: two namespaces joined by veth
//! (`shmbus_tests::netns`), nftables random loss, tbf rate limits,
//! per-namespace sysctls, and the `fault-proxy` helper (forwarding, cuts at
//! a byte count or on command, pause, delay, throttling, refusing).
//!
//! Every test skips, saying why, when namespaces are not available (not root,
//! or `ip`/`tc`/`nft` missing). Timing is asserted only as lower bounds that
//! the fault itself guarantees (a delay or a rate limit makes a transfer take
//! at least so long), never as speeds.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use shmbus_tests::{
    harness::{field_u64, Proc, TestEnv, LINE_TIMEOUT},
    netns::{self, NetPair, Side},
};

const PEER: &str = env!("CARGO_BIN_EXE_peer");
const PROXY: &str = env!("CARGO_BIN_EXE_fault-proxy");

/// Socket timeout: a bug fails the test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(15);

const MIB: usize = 1 << 20;

fn unavailable() -> bool {
    match netns::available() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("skipped: {why}");
            true
        }
    }
}

/// Deterministic bytes (xorshift) that differ per `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn with_timeouts(s: TcpStream) -> TcpStream {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Echoes `conns` connections (one thread each), each until EOF or error,
/// then half-closes it.
fn echo_server(listener: TcpListener, conns: usize) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..conns {
            let Ok((conn, _)) = listener.accept() else {
                return;
            };
            let mut conn = with_timeouts(conn);
            workers.push(thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = conn.shutdown(Shutdown::Write);
            }));
        }
        for w in workers {
            let _ = w.join();
        }
    })
}

/// What a sink connection received, and the error that ended it (None: EOF).
type Sunk = (Vec<u8>, Option<io::ErrorKind>);

/// Reads `conns` connections one after another, each to EOF or error.
fn sink_server(listener: TcpListener, conns: usize) -> JoinHandle<Vec<Sunk>> {
    thread::spawn(move || {
        (0..conns)
            .map(|_| {
                let (conn, _) = listener.accept().expect("sink accept");
                read_to_end(&mut with_timeouts(conn))
            })
            .collect()
    })
}

fn read_to_end(s: &mut TcpStream) -> Sunk {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (got, Some(e.kind())),
        }
    }
}

/// Sends `data` (then half-closes) while reading the echo; asserts the echo
/// is identical.
fn round_trip(stream: &TcpStream, data: &[u8]) {
    let mut writer = stream.try_clone().unwrap();
    let owned = data.to_vec();
    let sender = thread::spawn(move || {
        writer.write_all(&owned)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut reader = stream.try_clone().unwrap();
    let (echo, err) = read_to_end(&mut reader);
    sender.join().unwrap().expect("send");
    assert_eq!(
        err,
        None,
        "echo ended by an error after {} bytes",
        echo.len()
    );
    assert_eq!(echo.len(), data.len(), "echo length");
    assert!(echo == data, "echo content differs");
}

/// Sends `data` and reads the same number of bytes back, keeping the
/// connection open.
fn echo_exchange(stream: &mut TcpStream, data: &[u8]) {
    let mut writer = stream.try_clone().unwrap();
    let owned = data.to_vec();
    let sender = thread::spawn(move || writer.write_all(&owned));
    let mut echo = vec![0u8; data.len()];
    stream.read_exact(&mut echo).expect("read echo");
    sender.join().unwrap().expect("send");
    assert!(echo == data, "echo content differs");
}

/// Reads until the peer closes (EOF or reset); fails on a timeout.
fn expect_closed(stream: &mut TcpStream) -> Sunk {
    let (got, err) = read_to_end(stream);
    assert!(
        matches!(
            err,
            None | Some(io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted)
        ),
        "expected EOF or reset, got {err:?}"
    );
    (got, err)
}

/// The proxy started inside `side`, listening on that side's address.
fn start_proxy(
    env: &TestEnv,
    pair: &NetPair,
    side: Side,
    upstream: SocketAddr,
    extra: &[&str],
) -> (Proc, SocketAddr) {
    let mut cmd = pair.command_in(side, PROXY);
    cmd.arg("--listen")
        .arg(pair.sock_addr(side, 0).to_string())
        .arg("--upstream")
        .arg(upstream.to_string())
        .args(extra);
    let mut proxy = env.spawn("fault-proxy", cmd);
    let line = proxy.expect_line("listening ", LINE_TIMEOUT);
    let addr = line["listening ".len()..].parse().expect("proxy address");
    (proxy, addr)
}

/// A TCP echo between the namespaces: server on A, client on B, 4 MiB
/// intact, the peer address is B's, and `command_in` runs a process in the
/// right namespace.
#[test]
fn echo_across_the_veth_pair() {
    if unavailable() {
        return;
    }
    let pair = NetPair::create("echo").unwrap();
    let listener = pair.listen(Side::A, 0).unwrap();
    let server_addr = listener.local_addr().unwrap();
    assert_eq!(server_addr.ip(), pair.addr(Side::A));
    let server = echo_server(listener, 1);
    let client = with_timeouts(pair.connect(Side::B, server_addr).unwrap());
    assert_eq!(client.local_addr().unwrap().ip(), pair.addr(Side::B));
    round_trip(&client, &pattern(1, 4 * MIB));
    server.join().unwrap();

    for side in [Side::A, Side::B] {
        let out = pair
            .command_in(side, netns::find_program("ip").unwrap())
            .args(["-o", "-4", "addr", "show"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("{}/30", pair.addr(side))), "{text}");
        assert!(
            !text.contains(&format!("{}/30", pair.addr(side.other()))),
            "{text}"
        );
        assert!(text.contains(pair.dev(side)), "{text}");
    }
}

/// 5% random loss of TCP packets on both sides: TCP still delivers every byte in order, and
/// the nftables counters saw drops. Runs rounds of 1 MiB until at least
/// 4 MiB went through *and* something was dropped (drops hit GSO
/// super-packets, so a few MiB can be few packets).
#[test]
fn random_drop_still_delivers_and_counts_drops() {
    if unavailable() {
        return;
    }
    let pair = NetPair::create("drop").unwrap();
    for side in [Side::A, Side::B] {
        pair.drop_random(side, 5).unwrap();
        assert_eq!(pair.drop_count(side).unwrap(), 0);
    }
    assert!(pair.drop_random(Side::A, 101).is_err());
    let listener = pair.listen(Side::A, 0).unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = echo_server(listener, 1);
    let mut client = with_timeouts(pair.connect(Side::B, server_addr).unwrap());
    let mut moved = 0;
    let mut round = 0;
    let drops = loop {
        echo_exchange(&mut client, &pattern(100 + round, MIB));
        moved += MIB;
        round += 1;
        let drops = pair.drop_count(Side::A).unwrap() + pair.drop_count(Side::B).unwrap();
        if moved >= 4 * MIB && drops > 0 {
            break drops;
        }
        assert!(moved < 64 * MIB, "no packet dropped in {moved} bytes at 5%");
    };
    eprintln!("moved {moved} bytes each way, {drops} packets dropped");
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut client), (Vec::new(), None));
    server.join().unwrap();

    for side in [Side::A, Side::B] {
        pair.clear_drops(side).unwrap();
        pair.clear_drops(side).unwrap();
        assert_eq!(pair.drop_count(side).unwrap(), 0);
    }
}

/// `optmem_max` is set in one namespace only; tbf limits the rate (a
/// transfer takes at least its size over the rate) and is removed again.
#[test]
fn sysctl_and_rate_limit_apply_to_one_namespace() {
    if unavailable() {
        return;
    }
    let root_before = std::fs::read_to_string("/proc/sys/net/core/optmem_max").unwrap();
    let pair = NetPair::create("tbf").unwrap();
    let default_b = pair.sysctl(Side::B, "net.core.optmem_max").unwrap();
    pair.set_optmem_max(Side::A, 4096).unwrap();
    assert_eq!(pair.sysctl(Side::A, "net.core.optmem_max").unwrap(), "4096");
    assert_eq!(
        pair.sysctl(Side::B, "net.core.optmem_max").unwrap(),
        default_b
    );
    assert_ne!(default_b, "4096");
    let root_after = std::fs::read_to_string("/proc/sys/net/core/optmem_max").unwrap();
    assert_eq!(
        root_before, root_after,
        "the root namespace must not change"
    );
    assert!(pair.set_sysctl(Side::A, "vm.swappiness", "1").is_err());

    // 16 Mbit/s = 2 MB/s; 1 MiB needs at least ~0.5 s beyond the burst.
    let rate_bits = 16_000_000;
    pair.rate_limit(Side::A, rate_bits).unwrap();
    assert!(pair.qdisc(Side::A).unwrap().contains("tbf"));
    assert!(!pair.qdisc(Side::B).unwrap().contains("tbf"));
    let listener = pair.listen(Side::B, 0).unwrap();
    let sink = sink_server(listener.try_clone().unwrap(), 1);
    let data = pattern(7, MIB);
    let mut client = with_timeouts(
        pair.connect(Side::A, listener.local_addr().unwrap())
            .unwrap(),
    );
    let start = Instant::now();
    client.write_all(&data).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let got = sink.join().unwrap();
    let took = start.elapsed();
    assert_eq!(got[0].1, None);
    assert!(got[0].0 == data, "data differs");
    let floor = Duration::from_secs_f64((MIB - 64 * 1024) as f64 * 8.0 / rate_bits as f64);
    assert!(took >= floor, "1 MiB at 16 Mbit/s took only {took:?}");
    assert!(took < Duration::from_secs(20), "sanity: {took:?}");
    eprintln!("1 MiB over tbf 16 Mbit/s took {took:?}");

    pair.clear_rate_limit(Side::A).unwrap();
    pair.clear_rate_limit(Side::A).unwrap();
    assert!(!pair.qdisc(Side::A).unwrap().contains("tbf"));
}

/// The proxy (in B) forwards intact data to an echo server (in A), and its
/// control channel works: pause holds data back until resume, delay adds
/// latency, cut ends the connection (the client sees EOF/reset) while new
/// connections still work, down refuses connections until up.
#[test]
fn proxy_forwards_and_obeys_control_commands() {
    if unavailable() {
        return;
    }
    let env = TestEnv::new("proxy-control", PEER, Duration::from_secs(60));
    let pair = NetPair::create("proxy-control").unwrap();
    let listener = pair.listen(Side::A, 0).unwrap();
    let upstream = listener.local_addr().unwrap();
    let server = echo_server(listener, 3);
    let (mut proxy, at) = start_proxy(&env, &pair, Side::B, upstream, &[]);
    let connect = || with_timeouts(pair.connect(Side::B, at).unwrap());

    let mut client = connect();
    proxy.expect_line("open conn=1", LINE_TIMEOUT);
    echo_exchange(&mut client, &pattern(2, 2 * MIB));

    proxy.send_line("pause");
    proxy.expect_line("ok pause", LINE_TIMEOUT);
    let held = pattern(3, 1000);
    client.write_all(&held).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = client.read(&mut byte);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)),
        "data passed a paused proxy: {early:?}"
    );
    proxy.send_line("resume");
    proxy.expect_line("ok resume", LINE_TIMEOUT);
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut echo = vec![0u8; held.len()];
    client.read_exact(&mut echo).unwrap();
    assert!(echo == held, "held data differs");

    proxy.send_line("delay 60");
    proxy.expect_line("ok delay 60", LINE_TIMEOUT);
    let start = Instant::now();
    echo_exchange(&mut client, b"ping");
    let rtt = start.elapsed();
    assert!(
        rtt >= Duration::from_millis(120),
        "two 60 ms delays, yet rtt {rtt:?}"
    );
    proxy.send_line("delay 0");
    proxy.expect_line("ok delay 0", LINE_TIMEOUT);

    proxy.send_line("cut");
    proxy.expect_line("cut conn=1 reason=command mode=rst", LINE_TIMEOUT);
    proxy.expect_line("ok cut conns=1", LINE_TIMEOUT);
    let (rest, _) = expect_closed(&mut client);
    assert!(rest.is_empty(), "{} unexpected bytes", rest.len());

    let mut second = connect();
    proxy.expect_line("open conn=2", LINE_TIMEOUT);
    echo_exchange(&mut second, &pattern(4, 64 * 1024));

    proxy.send_line("down");
    proxy.expect_line("cut conn=2 reason=down", LINE_TIMEOUT);
    proxy.expect_line("ok down", LINE_TIMEOUT);
    expect_closed(&mut second);
    let mut refused = connect();
    proxy.expect_line("refused from=", LINE_TIMEOUT);
    expect_closed(&mut refused);
    proxy.send_line("up");
    proxy.expect_line("ok up", LINE_TIMEOUT);

    let third = connect();
    proxy.expect_line("open conn=3", LINE_TIMEOUT);
    round_trip(&third, &pattern(5, 256 * 1024));
    proxy.expect_line("closed conn=3", LINE_TIMEOUT);
    proxy.send_line("stats");
    let stats = proxy.expect_line("stats ", LINE_TIMEOUT);
    assert_eq!(field_u64(&stats, "cuts"), 2, "{stats}");
    assert_eq!(field_u64(&stats, "conns"), 0, "{stats}");
    let sent = (2 * MIB + 1000 + 4 + 64 * 1024 + 256 * 1024) as u64;
    assert_eq!(field_u64(&stats, "a2b"), sent, "{stats}");
    assert_eq!(field_u64(&stats, "b2a"), sent, "{stats}");
    proxy.send_line("bogus");
    proxy.expect_line("error unknown command", LINE_TIMEOUT);
    server.join().unwrap();
}

/// `--cut-after-bytes N`: the upstream receives exactly the first N bytes
/// (a frame straddling N is cut in half), the connection then breaks both
/// ways, in `rst` and in `fin` mode.
#[test]
fn proxy_cuts_mid_stream_after_n_bytes() {
    if unavailable() {
        return;
    }
    let env = TestEnv::new("proxy-cut", PEER, Duration::from_secs(60));
    let pair = NetPair::create("proxy-cut").unwrap();
    const N: usize = 100_003;
    for mode in ["rst", "fin"] {
        let listener = pair.listen(Side::A, 0).unwrap();
        let upstream = listener.local_addr().unwrap();
        let sink = sink_server(listener, 1);
        let (mut proxy, at) = start_proxy(
            &env,
            &pair,
            Side::B,
            upstream,
            &["--cut-after-bytes", &N.to_string(), "--cut-mode", mode],
        );
        let data = pattern(6, MIB);
        let mut client = with_timeouts(pair.connect(Side::B, at).unwrap());
        let mut writer = client.try_clone().unwrap();
        let to_send = data.clone();
        let sender = thread::spawn(move || writer.write_all(&to_send));
        let line = proxy.expect_line("cut conn=1 reason=after-bytes", LINE_TIMEOUT);
        assert!(line.contains(&format!("mode={mode}")), "{line}");
        assert_eq!(field_u64(&line, "a2b"), N as u64, "{line}");
        assert_eq!(field_u64(&line, "total_a2b"), N as u64, "{line}");
        let sunk = sink.join().unwrap();
        let (got, how) = &sunk[0];
        assert_eq!(
            got.len(),
            N,
            "mode {mode}: upstream got {} bytes, ended by {how:?}",
            got.len()
        );
        assert!(got[..] == data[..N], "mode {mode}: upstream bytes differ");
        match mode {
            "fin" => assert_eq!(*how, None, "fin mode ends with EOF"),
            _ => assert_eq!(
                *how,
                Some(io::ErrorKind::ConnectionReset),
                "rst mode ends with a reset"
            ),
        }
        expect_closed(&mut client);
        // The sender may or may not see the break: a cut client's kernel may
        // have taken the whole 1 MiB into its buffers before the cut.
        let _ = sender.join().unwrap();
        drop(proxy);
    }
}

/// `--cut-every-bytes N` cuts again after every further N bytes: a client
/// that reconnects three times gets exactly N bytes through each time.
#[test]
fn proxy_cuts_every_n_bytes_across_reconnects() {
    if unavailable() {
        return;
    }
    let env = TestEnv::new("proxy-every", PEER, Duration::from_secs(60));
    let pair = NetPair::create("proxy-every").unwrap();
    const N: usize = 50_000;
    let listener = pair.listen(Side::A, 0).unwrap();
    let upstream = listener.local_addr().unwrap();
    let sink = sink_server(listener, 3);
    let (mut proxy, at) = start_proxy(
        &env,
        &pair,
        Side::B,
        upstream,
        &["--cut-every-bytes", &N.to_string()],
    );
    for i in 1..=3u64 {
        let data = pattern(10 + i, 3 * N);
        let mut client = with_timeouts(pair.connect(Side::B, at).unwrap());
        let mut writer = client.try_clone().unwrap();
        let sender = thread::spawn(move || writer.write_all(&data));
        let line = proxy.expect_line(&format!("cut conn={i} reason=every-bytes"), LINE_TIMEOUT);
        assert_eq!(field_u64(&line, "a2b"), N as u64, "{line}");
        assert_eq!(field_u64(&line, "total_a2b"), i * N as u64, "{line}");
        expect_closed(&mut client);
        let _ = sender.join().unwrap();
    }
    for (i, (got, how)) in sink.join().unwrap().iter().enumerate() {
        assert_eq!(got.len(), N, "connection {i} ended by {how:?}");
        assert!(
            got[..] == pattern(11 + i as u64, N)[..],
            "connection {i} bytes differ"
        );
    }
}

/// `--throttle-bytes-per-sec` and `--delay-ms` from the command line: data
/// arrives intact, no sooner than the rate allows.
#[test]
fn proxy_throttles_and_delays() {
    if unavailable() {
        return;
    }
    let env = TestEnv::new("proxy-throttle", PEER, Duration::from_secs(60));
    let pair = NetPair::create("proxy-throttle").unwrap();
    let listener = pair.listen(Side::A, 0).unwrap();
    let upstream = listener.local_addr().unwrap();
    let sink = sink_server(listener, 1);
    const RATE: usize = 400_000;
    const LEN: usize = 300_000;
    let (mut proxy, at) = start_proxy(
        &env,
        &pair,
        Side::B,
        upstream,
        &[
            "--throttle-bytes-per-sec",
            &RATE.to_string(),
            "--delay-ms",
            "20",
        ],
    );
    let data = pattern(20, LEN);
    let start = Instant::now();
    let mut client = with_timeouts(pair.connect(Side::B, at).unwrap());
    client.write_all(&data).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let sunk = sink.join().unwrap();
    let took = start.elapsed();
    assert_eq!(sunk[0].1, None);
    assert!(sunk[0].0 == data, "throttled data differs");
    // Everything but the first 1/50 s piece waits for the pacer.
    let floor = Duration::from_secs_f64((LEN - RATE / 50) as f64 / RATE as f64);
    assert!(
        took >= floor,
        "{LEN} bytes at {RATE} B/s took only {took:?}"
    );
    assert!(took < Duration::from_secs(20), "sanity: {took:?}");
    eprintln!("{LEN} bytes at {RATE} B/s took {took:?}");
    proxy.expect_line("closed conn=1", LINE_TIMEOUT);
}

/// Namespaces are gone once their pair is dropped.
#[test]
fn namespaces_are_deleted_on_drop() {
    if unavailable() {
        return;
    }
    let pair = NetPair::create("drop-check").unwrap();
    let names = [pair.ns(Side::A).to_string(), pair.ns(Side::B).to_string()];
    let exists = |n: &str| std::path::Path::new("/run/netns").join(n).exists();
    assert!(names.iter().all(|n| exists(n)));
    drop(pair);
    assert!(!names.iter().any(|n| exists(n)), "{names:?} still exist");
}
