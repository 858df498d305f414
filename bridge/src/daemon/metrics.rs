//! Prometheus metrics: the daemon's [`Stats`] in the text exposition format
//! (version 0.0.4), served at `GET /metrics` on `metrics_listen`.
//!
//! The responder is a small HTTP/1.x server on one thread, not a crate: it
//! answers one request per connection (`Connection: close`), so it needs no
//! keep-alive, chunking or routing, and the whole server is the bounds it
//! enforces. A request line and headers larger than [`MAX_REQUEST`] bytes,
//! or not complete within [`IO_TIMEOUT`], get no answer; any method or path
//! other than `GET /metrics` gets 404. Connections are served one after the
//! other, so a scraper that stalls delays the next by at most `IO_TIMEOUT`
//! and the responder holds one request buffer, whatever arrives.
//!
//! # Families
//!
//! Bridge-wide (no labels beyond `reason`): `shmbus_bridge_uptime_seconds`,
//! `..._connected_peers`,
//! `..._handshake_failures_total{reason}` (see [`HandshakeFailure`]),
//! `..._rejected_connections_total`, `..._auth_failures_total`,
//! `..._sessions_revoked_total`, `..._peers_expired_total`,
//! `..._reloads_total`, `..._reload_failures_total`.
//! Per peer (`peer`): `shmbus_bridge_peer_*`. Per stream (`peer`, `dir` =
//! `out`|`in`, `topic`, `publisher`): `shmbus_bridge_stream_*`, counters
//! ending in `_total` and the gauges `..._position` and `..._peer_tail`.

use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::atomic::Ordering,
    time::Duration,
};

use super::{
    stats::{HandshakeFailure, PeerStats, Stats, StreamStats},
    Shared,
};
use crate::log;

/// Largest request (request line and headers) read.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Longest wait for a request to arrive or a response to be taken.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `value` escaped for a label value: `\`, `"` and newline become `\\`,
/// `\"` and `\n` (the exposition format's only escapes).
///
/// # Examples
///
/// ```
/// use shmbus_bridge::daemon::metrics::escape_label;
/// assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
/// ```
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// One metric family: name, help, type and the lines of its series.
fn family(out: &mut String, name: &str, kind: &str, help: &str, series: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in series {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

type PeerField = fn(&PeerStats) -> u64;
type StreamField = fn(&StreamStats) -> u64;

/// Per-peer families: (suffix, type, help, value).
const PEER_FAMILIES: &[(&str, &str, &str, PeerField)] = &[
    (
        "connected",
        "gauge",
        "1 while a connection with the peer is established.",
        |p| {
            // Relaxed: a display value.
            u64::from(p.connected.load(Ordering::Relaxed))
        },
    ),
    (
        "connections_total",
        "counter",
        "Authenticated connections with the peer.",
        |p| p.connections.get(),
    ),
    (
        "protocol_errors_total",
        "counter",
        "Connections that ended with a protocol error.",
        |p| p.protocol_errors.get(),
    ),
    (
        "auth_failures_total",
        "counter",
        "Frames from the peer that failed authentication.",
        |p| p.auth_failures.get(),
    ),
    (
        "limit_refusals_total",
        "counter",
        "Streams or subscriptions refused by a per-peer limit.",
        |p| p.limit_refusals.get(),
    ),
    (
        "sent_bytes_total",
        "counter",
        "Bytes written to the peer.",
        |p| p.bytes_sent.get(),
    ),
    (
        "received_bytes_total",
        "counter",
        "Bytes read from the peer.",
        |p| p.bytes_received.get(),
    ),
    (
        "zerocopy_completed_total",
        "counter",
        "Zero-copy send ids completed by the kernel.",
        |p| p.zc_completed_ids.get(),
    ),
    (
        "zerocopy_copied_total",
        "counter",
        "Zero-copy send ids the kernel completed by copying.",
        |p| p.zc_copied_ids.get(),
    ),
    (
        "zerocopy_switched_to_plain_total",
        "counter",
        "Connections switched to plain sends because zero-copy sends were copied.",
        |p| p.zc_switched_to_plain.get(),
    ),
];

/// Per-stream families: (suffix, type, help, value).
const STREAM_FAMILIES: &[(&str, &str, &str, StreamField)] = &[
    (
        "bytes_total",
        "counter",
        "Ring bytes sent (out) or received (in).",
        |s| s.bytes.get(),
    ),
    (
        "messages_total",
        "counter",
        "Data records sent or received.",
        |s| s.messages.get(),
    ),
    (
        "frames_total",
        "counter",
        "DATA frames sent or received.",
        |s| s.frames.get(),
    ),
    (
        "zerocopy_sends_total",
        "counter",
        "sendmsg calls with MSG_ZEROCOPY.",
        |s| s.zc_sends.get(),
    ),
    (
        "plain_sends_total",
        "counter",
        "Plain (copying) sendmsg calls.",
        |s| s.plain_sends.get(),
    ),
    (
        "enobufs_total",
        "counter",
        "Zero-copy sends refused with ENOBUFS and sent plainly.",
        |s| s.enobufs.get(),
    ),
    (
        "gaps_total",
        "counter",
        "Gaps sent (out) or received (in).",
        |s| s.gaps.get(),
    ),
    ("gap_bytes_total", "counter", "Bytes lost in gaps.", |s| {
        s.gap_bytes.get()
    }),
    (
        "lost_messages_total",
        "counter",
        "Messages lost in gaps.",
        |s| s.lost_messages.get(),
    ),
    (
        "credit_stalls_total",
        "counter",
        "Times the stream had data but no credit.",
        |s| s.credit_stalls.get(),
    ),
    (
        "pin_resets_total",
        "counter",
        "Connections reset because zero-copy sends stayed pinned past the deadline.",
        |s| s.pin_resets.get(),
    ),
    (
        "position",
        "gauge",
        "Next position to send (out) or the replica's position (in).",
        |s| s.position.get(),
    ),
    (
        "peer_tail",
        "gauge",
        "The ring's tail (out) or the sender's tail from its heartbeat (in).",
        |s| s.peer_tail.get(),
    ),
];

/// The metrics of `stats` in the text exposition format 0.0.4.
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();
    let node = format!("node=\"{}\"", escape_label(stats.node()));
    let _ = writeln!(
        out,
        "# HELP shmbus_bridge_uptime_seconds Seconds since the daemon started.\n# TYPE shmbus_bridge_uptime_seconds gauge\nshmbus_bridge_uptime_seconds{{{node}}} {:.3}",
        stats.uptime().as_secs_f64()
    );
    let reasons: Vec<(String, u64)> = HandshakeFailure::ALL
        .iter()
        .map(|r| {
            (
                format!("reason=\"{}\"", r.as_str()),
                stats.handshake_failures_by(*r),
            )
        })
        .collect();
    family(
        &mut out,
        "shmbus_bridge_handshake_failures_total",
        "counter",
        "Handshakes that failed, by reason.",
        &reasons,
    );
    let peers_now = stats.peers();
    let connected = peers_now
        .iter()
        // Relaxed: a display value.
        .filter(|(_, p)| p.connected.load(Ordering::Relaxed))
        .count();
    family(
        &mut out,
        "shmbus_bridge_connected_peers",
        "gauge",
        "Peers with an established connection now.",
        &[(String::new(), connected as u64)],
    );
    let bridge: [(&str, &str, u64); 6] = [
        (
            "rejected_connections_total",
            "Connections closed at accept: too many pending handshakes.",
            stats.rejected_connections.get(),
        ),
        (
            "auth_failures_total",
            "Frames that failed authentication, all peers.",
            stats.auth_failures.get(),
        ),
        (
            "sessions_revoked_total",
            "Live connections closed because their key left the allowlist.",
            stats.sessions_revoked.get(),
        ),
        (
            "peers_expired_total",
            "Peers whose state was dropped after peer_state_expiry.",
            stats.peers_expired.get(),
        ),
        (
            "reloads_total",
            "Configuration reloads that took effect.",
            stats.reloads.get(),
        ),
        (
            "reload_failures_total",
            "Configuration reloads refused.",
            stats.reload_failures.get(),
        ),
    ];
    for (suffix, help, value) in bridge {
        family(
            &mut out,
            &format!("shmbus_bridge_{suffix}"),
            "counter",
            help,
            &[(String::new(), value)],
        );
    }
    let peers: Vec<(String, std::sync::Arc<PeerStats>)> = peers_now
        .into_iter()
        .map(|(name, p)| (format!("peer=\"{}\"", escape_label(&name)), p))
        .collect();
    for (suffix, kind, help, field) in PEER_FAMILIES {
        let series: Vec<(String, u64)> = peers
            .iter()
            .map(|(labels, p)| (labels.clone(), field(p)))
            .collect();
        family(
            &mut out,
            &format!("shmbus_bridge_peer_{suffix}"),
            kind,
            help,
            &series,
        );
    }
    let streams: Vec<(String, std::sync::Arc<StreamStats>)> = stats
        .streams()
        .into_iter()
        .map(|((peer, dir, topic, publisher), s)| {
            (
                format!(
                    "peer=\"{}\",dir=\"{}\",topic=\"{}\",publisher=\"{}\"",
                    escape_label(&peer),
                    dir.as_str(),
                    escape_label(&topic),
                    escape_label(&publisher)
                ),
                s,
            )
        })
        .collect();
    for (suffix, kind, help, field) in STREAM_FAMILIES {
        let series: Vec<(String, u64)> = streams
            .iter()
            .map(|(labels, s)| (labels.clone(), field(s)))
            .collect();
        family(
            &mut out,
            &format!("shmbus_bridge_stream_{suffix}"),
            kind,
            help,
            &series,
        );
    }
    out
}

/// Serves `GET /metrics` on `listener` until the daemon stops.
pub(crate) fn serve(shared: &Shared, listener: &TcpListener) {
    while !shared.stopping() {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                if let Err(e) = answer(shared, stream) {
                    log::debug!("metrics request failed: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = crate::io::socket::poll_once(
                    listener.as_raw_fd(),
                    libc::POLLIN,
                    Duration::from_millis(100),
                );
            }
            Err(e) => {
                log::warning!("metrics: accept failed: {e}");
                shared.sleep(Duration::from_millis(100));
            }
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics,
    Other,
    /// Too large, cut off, or not HTTP: no answer.
    Unreadable,
}

/// Reads one request's head (bounded, timed out) and classifies it.
fn read_request(stream: &mut TcpStream) -> std::io::Result<Request> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    loop {
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if len == buf.len() {
            return Ok(Request::Unreadable);
        }
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(Request::Unreadable);
        }
        len += n;
    }
    Ok(classify(&buf[..len]))
}

/// `GET /metrics` (with or without a query string), HTTP/1.0 or 1.1.
fn classify(head: &[u8]) -> Request {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Request::Unreadable;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Unreadable;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Unreadable;
    }
    let path = target.split('?').next().unwrap_or(target);
    if method == "GET" && path == "/metrics" {
        Request::Metrics
    } else {
        Request::Other
    }
}

fn answer(shared: &Shared, mut stream: TcpStream) -> std::io::Result<()> {
    let request = read_request(&mut stream)?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let (status, content_type, body) = match request {
        Request::Metrics => ("200 OK", CONTENT_TYPE, render(&shared.stats)),
        Request::Other => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only GET /metrics is served here\n".to_owned(),
        ),
        Request::Unreadable => return Ok(()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::stats::Dir;

    #[test]
    fn requests_are_classified() {
        assert_eq!(
            classify(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            classify(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(classify(b"GET / HTTP/1.1\r\n\r\n"), Request::Other);
        assert_eq!(classify(b"POST /metrics HTTP/1.1\r\n\r\n"), Request::Other);
        assert_eq!(classify(b"GET /metrics\r\n\r\n"), Request::Unreadable);
        assert_eq!(classify(b"\xff\xfe\r\n\r\n"), Request::Unreadable);
    }

    /// `read_request` on the server end of a real loopback connection to
    /// which `client` wrote.
    fn serve_one(client: impl FnOnce(TcpStream) + Send + 'static) -> std::io::Result<Request> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = std::thread::spawn(move || client(TcpStream::connect(addr).unwrap()));
        let (mut stream, _) = listener.accept().unwrap();
        let r = read_request(&mut stream);
        writer.join().unwrap();
        r
    }

    #[test]
    fn requests_are_bounded_in_size_and_time() {
        // A head split over several writes is put together.
        let r = serve_one(|mut c| {
            c.write_all(b"GET /met").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            c.write_all(b"rics HTTP/1.1\r\n\r\n").unwrap();
        });
        assert_eq!(r.unwrap(), Request::Metrics);
        // More than MAX_REQUEST bytes without the end of the head: no answer.
        let r = serve_one(|mut c| {
            let _ = c.write_all(&[b'a'; MAX_REQUEST + 100]);
        });
        assert_eq!(r.unwrap(), Request::Unreadable);
        // Closed before the end of the head.
        let r = serve_one(|mut c| c.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap());
        assert_eq!(r.unwrap(), Request::Unreadable);
        // Silent: the read times out (after IO_TIMEOUT) instead of waiting forever.
        let r = serve_one(|c| {
            std::thread::sleep(IO_TIMEOUT + Duration::from_secs(1));
            drop(c);
        });
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn render_has_every_family_with_escaped_labels() {
        let stats = Stats::new("alpha");
        stats.peer("beta").bytes_sent.add(10);
        let st = stats.stream("beta", Dir::In, "to\"pic\\x", "p-1-0");
        st.messages.add(7);
        st.lost_messages.add(3);
        stats.handshake_failed(HandshakeFailure::UnknownKey);
        let text = render(&stats);
        assert!(
            text.contains("shmbus_bridge_handshake_failures_total{reason=\"unknown_key\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("shmbus_bridge_handshake_failures_total{reason=\"timeout\"} 0\n"));
        assert!(text.contains("shmbus_bridge_peer_sent_bytes_total{peer=\"beta\"} 10\n"));
        assert!(text.contains(
            "shmbus_bridge_stream_messages_total{peer=\"beta\",dir=\"in\",topic=\"to\\\"pic\\\\x\",publisher=\"p-1-0\"} 7\n"
        ), "{text}");
        assert!(text.contains("shmbus_bridge_stream_lost_messages_total{peer=\"beta\",dir=\"in\""));
        // Every sample line belongs to the family declared just before it.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_owned();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, family, "{line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }
}
