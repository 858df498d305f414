//! sd_notify on a real datagram socket: the test binds a Unix datagram
//! socket, passes it to the real daemon as `NOTIFY_SOCKET` (with a
//! `WATCHDOG_USEC`, as systemd would), and reads READY=1, WATCHDOG=1,
//! RELOADING=1 + READY=1 around a SIGHUP, and STOPPING=1 at SIGTERM.

mod common;

use std::{
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use common::{Daemon, TestDir, Watchdog};

/// Reads datagrams until one contains the line `line`; returns every line
/// read up to and including it. Panics after `timeout`.
fn wait_for(sock: &UnixDatagram, line: &str, timeout: Duration) -> Vec<String> {
    let end = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no {line:?} within {timeout:?}; got {seen:?}"
        );
        sock.set_read_timeout(Some(left)).unwrap();
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let found = text.lines().any(|l| l == line);
        seen.extend(text.lines().map(str::to_owned));
        if found {
            return seen;
        }
    }
}

#[test]
fn ready_watchdog_reload_and_stopping_reach_the_notify_socket() {
    let _watchdog = Watchdog::new("notify", Duration::from_secs(180));
    let dir = TestDir::new("ops-notify");
    let keys = dir.keys(&["alpha", "beta"]);
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let root = dir.join("root");
    let mut args: Vec<String> = keys.args("alpha");
    args.extend(
        [
            "--node-name",
            "alpha",
            "--root",
            root.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--export",
            "*",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // A 2 s watchdog: keep-alives every second.
    let mut d = Daemon::start_env(
        "alpha",
        &dir,
        &args,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let before_ready = wait_for(&sock, "READY=1", Duration::from_secs(30));
    assert!(
        !before_ready.iter().any(|l| l == "WATCHDOG=1"),
        "{before_ready:?}"
    );
    // Ready comes after the listener is bound (and its address logged;
    // the test's log reader may see the line a moment later).
    d.wait_log("listening on ", Duration::from_secs(30));
    // Keep-alives keep coming while the daemon runs.
    for _ in 0..3 {
        wait_for(&sock, "WATCHDOG=1", Duration::from_secs(30));
    }

    d.signal(libc::SIGHUP);
    wait_for(&sock, "RELOADING=1", Duration::from_secs(30));
    wait_for(&sock, "READY=1", Duration::from_secs(30));
    d.wait_log("reloaded the configuration", Duration::from_secs(30));

    d.signal(libc::SIGTERM);
    wait_for(&sock, "STOPPING=1", Duration::from_secs(30));
    assert!(d.terminate(), "clean exit after SIGTERM");
}
