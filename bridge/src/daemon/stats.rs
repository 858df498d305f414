//! Counters of the daemon, per peer and per stream, and their text form.
//!
//! The text is one record per line, `key=value` pairs separated by spaces,
//! so scripts and tests parse it with a split; the first word says what the
//! line describes:
//!
//! ```text
//! bridge node=alpha uptime_ms=5012 handshake_failures=3 rejected_connections=0 unknown_keys=1 name_mismatches=0 handshake_timeouts=1 auth_failures=0 sessions_revoked=0 peers_expired=0
//! peer name=beta connected=1 connections=2 reconnects=1 protocol_errors=0 auth_failures=0 limit_refusals=0 bytes_sent=... bytes_received=... zc_completed_ids=... zc_copied_ids=... zc_switched_to_plain=...
//! stream peer=beta dir=out topic=imu publisher=p-7-0 bytes=... messages=... frames=... zc_sends=... plain_sends=... enobufs=... gaps=... gap_bytes=... position=... peer_tail=... credit_stalls=... lost_messages=... pin_resets=...
//! ```
//!
//! `dir=out` streams are exported (sent), `dir=in` imported (received);
//! `peer_tail` of an imported stream is the sender's tail from its last
//! HEARTBEAT. Values are cumulative since the daemon started.
//!
//! The maps are bounded: `peer` and `stream` lines exist only for
//! authenticated peers (at most one per allowlist entry), a peer has at most
//! `max_streams_per_peer` imported and `max_exports_per_peer` exported
//! streams, and the lines of a peer whose state expired are removed
//! ([`Stats::remove_peer`]). Unauthenticated connections only move the
//! `bridge` counters.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Instant,
};

/// Direction of a stream relative to this bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// Exported: read from a local ring, sent to the peer.
    Out,
    /// Imported: received from the peer into a replica ring.
    In,
}

impl Dir {
    fn as_str(self) -> &'static str {
        match self {
            Self::Out => "out",
            Self::In => "in",
        }
    }
}

/// A counter: `Relaxed` everywhere, since counters publish no other data and
/// readers only need an eventually consistent value.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        // Relaxed: see the type docs.
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the value (for gauges such as positions).
    pub fn set(&self, n: u64) {
        // Relaxed: see the type docs.
        self.0.store(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        // Relaxed: see the type docs.
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters of one peer.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Whether a connection is established now.
    pub connected: AtomicBool,
    /// Authenticated connections so far.
    pub connections: Counter,
    /// Connections that ended with a protocol error (either side's).
    pub protocol_errors: Counter,
    /// Frames from this peer that failed authentication (injected, replayed,
    /// reordered, corrupted); each one closed its connection.
    pub auth_failures: Counter,
    /// Streams or subscriptions refused because a per-peer limit was reached.
    pub limit_refusals: Counter,
    /// Bytes written to the peer.
    pub bytes_sent: Counter,
    /// Bytes read from the peer.
    pub bytes_received: Counter,
    /// Zero-copy send ids completed by the kernel.
    pub zc_completed_ids: Counter,
    /// Of those, ids the kernel flagged COPIED (deferred copy: no gain).
    pub zc_copied_ids: Counter,
    /// Connections switched to plain sends because completions came back COPIED.
    pub zc_switched_to_plain: Counter,
}

/// Counters of one stream.
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Ring bytes sent or received (DATA payloads).
    pub bytes: Counter,
    /// Data records sent or received.
    pub messages: Counter,
    /// DATA frames.
    pub frames: Counter,
    /// `sendmsg` calls with `MSG_ZEROCOPY` (out).
    pub zc_sends: Counter,
    /// Plain `sendmsg` calls: small sends, switched-off zero-copy, fallbacks (out).
    pub plain_sends: Counter,
    /// Zero-copy calls refused with `ENOBUFS` and sent plainly (out).
    pub enobufs: Counter,
    /// Gaps sent (out) or received (in).
    pub gaps: Counter,
    /// Bytes lost in those gaps.
    pub gap_bytes: Counter,
    /// Next position to send (out) or the replica's position (in).
    pub position: Counter,
    /// The sender's tail from its heartbeat (in) or the ring's tail (out).
    pub peer_tail: Counter,
    /// Times the stream reached the peer's credit limit (out).
    pub credit_stalls: Counter,
    /// Messages lost in gaps: out, where counted (when the sender knew the
    /// sequence number at the gap's start); in, as told to local subscribers.
    pub lost_messages: Counter,
    /// Connections reset because the kernel held this stream's zero-copy
    /// sends past the pin deadline (out, untethered).
    pub pin_resets: Counter,
}

type StreamKey = (String, Dir, String, String);

/// All counters of a daemon.
#[derive(Debug)]
pub struct Stats {
    node: String,
    started: Instant,
    /// Connections whose handshake failed (bad key, version, garbage, timeout).
    pub handshake_failures: Counter,
    /// Connections turned away before the handshake (too many pending).
    pub rejected_connections: Counter,
    /// Handshakes refused because the key is not on the allowlist.
    pub unknown_keys: Counter,
    /// Handshakes refused because the claimed name is not the key's.
    pub name_mismatches: Counter,
    /// Handshakes that did not finish within the handshake deadline.
    pub handshake_timeouts: Counter,
    /// Frames that failed authentication, all peers together.
    pub auth_failures: Counter,
    /// Live connections closed because their key left the allowlist.
    pub sessions_revoked: Counter,
    /// Peers whose state was dropped after `peer_state_expiry`.
    pub peers_expired: Counter,
    peers: Mutex<BTreeMap<String, Arc<PeerStats>>>,
    streams: Mutex<BTreeMap<StreamKey, Arc<StreamStats>>>,
}

impl Stats {
    /// Empty counters for node `node`.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            started: Instant::now(),
            handshake_failures: Counter::default(),
            rejected_connections: Counter::default(),
            unknown_keys: Counter::default(),
            name_mismatches: Counter::default(),
            handshake_timeouts: Counter::default(),
            auth_failures: Counter::default(),
            sessions_revoked: Counter::default(),
            peers_expired: Counter::default(),
            peers: Mutex::new(BTreeMap::new()),
            streams: Mutex::new(BTreeMap::new()),
        }
    }

    /// The counters of `peer` (created on first use).
    pub fn peer(&self, peer: &str) -> Arc<PeerStats> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(peers.entry(peer.to_owned()).or_default())
    }

    /// The counters of a stream (created on first use).
    pub fn stream(&self, peer: &str, dir: Dir, topic: &str, publisher: &str) -> Arc<StreamStats> {
        let key = (peer.to_owned(), dir, topic.to_owned(), publisher.to_owned());
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(streams.entry(key).or_default())
    }

    /// Removes every line of `peer` (its state was dropped).
    pub fn remove_peer(&self, peer: &str) {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| k.0 != peer);
    }

    /// Number of (peer, stream) lines, for tests of the bounds.
    pub fn sizes(&self) -> (usize, usize) {
        (
            self.peers.lock().unwrap_or_else(|e| e.into_inner()).len(),
            self.streams.lock().unwrap_or_else(|e| e.into_inner()).len(),
        )
    }

    /// The text form (see the module docs).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "bridge node={} uptime_ms={} handshake_failures={} rejected_connections={} unknown_keys={} name_mismatches={} handshake_timeouts={} auth_failures={} sessions_revoked={} peers_expired={}",
            self.node,
            self.started.elapsed().as_millis(),
            self.handshake_failures.get(),
            self.rejected_connections.get(),
            self.unknown_keys.get(),
            self.name_mismatches.get(),
            self.handshake_timeouts.get(),
            self.auth_failures.get(),
            self.sessions_revoked.get(),
            self.peers_expired.get(),
        );
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        for (name, p) in peers.iter() {
            let connections = p.connections.get();
            let _ = writeln!(
                s,
                "peer name={name} connected={} connections={connections} reconnects={} protocol_errors={} auth_failures={} limit_refusals={} bytes_sent={} bytes_received={} zc_completed_ids={} zc_copied_ids={} zc_switched_to_plain={}",
                // Relaxed: a display value.
                u8::from(p.connected.load(Ordering::Relaxed)),
                connections.saturating_sub(1),
                p.protocol_errors.get(),
                p.auth_failures.get(),
                p.limit_refusals.get(),
                p.bytes_sent.get(),
                p.bytes_received.get(),
                p.zc_completed_ids.get(),
                p.zc_copied_ids.get(),
                p.zc_switched_to_plain.get(),
            );
        }
        drop(peers);
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        for ((peer, dir, topic, publisher), c) in streams.iter() {
            let _ = writeln!(
                s,
                "stream peer={peer} dir={} topic={topic} publisher={publisher} bytes={} messages={} frames={} zc_sends={} plain_sends={} enobufs={} gaps={} gap_bytes={} position={} peer_tail={} credit_stalls={} lost_messages={} pin_resets={}",
                dir.as_str(),
                c.bytes.get(),
                c.messages.get(),
                c.frames.get(),
                c.zc_sends.get(),
                c.plain_sends.get(),
                c.enobufs.get(),
                c.gaps.get(),
                c.gap_bytes.get(),
                c.position.get(),
                c.peer_tail.get(),
                c.credit_stalls.get(),
                c.lost_messages.get(),
                c.pin_resets.get(),
            );
        }
        s
    }

    /// Writes [`Self::render`] to `path` atomically (a temporary file renamed
    /// over it).
    ///
    /// # Errors
    ///
    /// The file-system error.
    pub fn write_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, self.render())?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_key_value_lines() {
        let s = Stats::new("alpha");
        let p = s.peer("beta");
        p.connections.add(2);
        let st = s.stream("beta", Dir::Out, "imu", "p-1-0");
        st.bytes.add(4096);
        st.gaps.add(1);
        let text = s.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("bridge node=alpha "));
        assert!(lines[1].contains(" connections=2 reconnects=1 "), "{text}");
        assert!(
            lines[2].starts_with("stream peer=beta dir=out topic=imu publisher=p-1-0 bytes=4096 ")
        );
        assert!(lines[2].contains(" gaps=1 "));
        for line in &lines {
            for kv in line.split(' ').skip(1) {
                assert!(kv.split_once('=').is_some(), "{kv}");
            }
        }
        // Same key, same counters.
        assert!(Arc::ptr_eq(
            &st,
            &s.stream("beta", Dir::Out, "imu", "p-1-0")
        ));
        s.stream("gamma", Dir::In, "imu", "p-1-0");
        assert_eq!(s.sizes(), (1, 2));
        s.remove_peer("beta");
        assert_eq!(s.sizes(), (0, 1));
        assert!(!s.render().contains("beta"));
    }
}
