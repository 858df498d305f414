//! Per-stream credit at the sender: a peer that grants one stream a small
//! window and another an unlimited one gets all of the second while the
//! first stops exactly at its limit (a credit stall, counted); a CREDIT
//! lets the first go on, never past the newest limit.
//!
//! The peer is scripted (it speaks the protocol with its own allowlisted
//! key over a real socket); the bridge and the publishers are real.

mod common;

use std::{collections::HashMap, time::Duration};

use common::{
    fake_peer::{FakePeer, Got},
    wait_until, Daemon, Tele, TestDir, Watchdog,
};
use shmbus::Bus;
use shmbus_bridge::proto::frame::{Credit, Frame, Subscribe, RESUME_OLDEST};
use shmbus_bus::{RawReader, StartAt};

const MESSAGES: u64 = 2000;
const WINDOW: u64 = 4096;

#[test]
fn a_stream_without_credit_stops_alone_and_resumes_on_credit() {
    let _watchdog = Watchdog::new("credit", Duration::from_secs(100));
    let dir = TestDir::new("credit");
    let keys = dir.keys(&["sender", "peer"]);
    let keys_s = keys.args("sender");
    let root = dir.join("s");
    let mut args = vec![
        "--node-name",
        "sender",
        "--root",
        root.to_str().unwrap(),
        "--bus",
        "b",
        "--listen",
        "127.0.0.1:0",
        "--export",
        "slow:tethered",
        "--export",
        "fast:tethered",
        "--heartbeat-interval-ms",
        "200",
        "--peer-timeout-ms",
        "20000",
    ];
    args.extend(keys_s.iter().map(String::as_str));
    let sender = Daemon::start("sender", &dir, &args);
    let addr = sender.listen_addr();

    // Both rings hold all their messages: nothing waits on the bridge.
    let bus = Bus::builder()
        .root(&root)
        .name("b")
        .capacity(1 << 20)
        .max_message(1024)
        .build()
        .unwrap();
    let mut tails = HashMap::new();
    let mut publishers = Vec::new();
    for (p, topic) in [(0, "slow"), (1, "fast")] {
        let mut publisher = bus.publisher_named::<Tele>(topic, topic).unwrap();
        for seq in 0..MESSAGES {
            publisher.send(&Tele::new(p, seq)).unwrap();
        }
        let ring = common::ring_files(&bus.topic_dir(topic).unwrap());
        assert_eq!(ring.len(), 1);
        let tail = RawReader::open(&ring[0], StartAt::Latest, false)
            .unwrap()
            .tail();
        tails.insert(topic, tail);
        publishers.push(publisher);
    }

    let mut peer = FakePeer::connect(
        &addr,
        "peer",
        &keys.keypair("peer"),
        "sender",
        &keys.keypair("sender").public(),
    );
    let mut ids: HashMap<String, u32> = HashMap::new();
    while ids.len() < 2 {
        if let Got::Announce { stream, topic, .. } = peer.wait_for(
            "two announces",
            Duration::from_secs(20),
            |_| {},
            |g| matches!(g, Got::Announce { .. }),
        ) {
            ids.insert(topic, stream);
        }
    }
    let (slow, fast) = (ids["slow"], ids["fast"]);
    peer.send_frame(&Frame::Subscribe(Subscribe {
        stream: slow,
        resume_position: RESUME_OLDEST,
        window: WINDOW,
    }));
    peer.send_frame(&Frame::Subscribe(Subscribe {
        stream: fast,
        resume_position: RESUME_OLDEST,
        window: u64::MAX,
    }));

    let mut t = Tracker {
        ends: HashMap::new(),
        slow,
        slow_limit: None,
    };
    let fast_tail = tails["fast"];
    let slow_tail = tails["slow"];
    t.read_until(&mut peer, "all of the fast stream", |t| {
        t.end(fast) >= fast_tail
    });
    // The slow stream got what its window allowed, and no more.
    let (slow_start, slow_end) = *t.ends.get(&slow).expect("no DATA for the slow stream");
    assert!(slow_end > slow_start);
    assert!(slow_end <= slow_start + WINDOW);
    assert!(slow_end < slow_tail);
    // Nothing more for it however long we wait (the fast one is done).
    for _ in 0..10 {
        if let Some(g) = peer.next(Duration::from_millis(50)) {
            t.observe(&g);
        }
    }
    assert_eq!(t.end(slow), slow_end);
    let stalls = |d: &Daemon| {
        d.stats("stream")
            .iter()
            .find(|l| l.get("topic").map(String::as_str) == Some("slow"))
            .and_then(|l| l.get("credit_stalls")?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    wait_until("a credit stall counted", Duration::from_secs(20), || {
        stalls(&sender) >= 1
    });

    // More credit: the stream goes on, up to the new limit only.
    let limit = slow_start + 64 * 1024;
    t.slow_limit = Some(limit);
    peer.send_frame(&Frame::Credit(Credit {
        stream: slow,
        limit,
    }));
    t.read_until(&mut peer, "slow DATA past its first window", |t| {
        t.end(slow) > slow_start + WINDOW
    });
    for _ in 0..10 {
        if let Some(g) = peer.next(Duration::from_millis(50)) {
            t.observe(&g);
        }
    }
    assert!(t.end(slow) <= limit && t.end(slow) < slow_tail);
    // A smaller CREDIT changes nothing; an unlimited one lets it finish.
    peer.send_frame(&Frame::Credit(Credit {
        stream: slow,
        limit: slow_start,
    }));
    t.slow_limit = Some(u64::MAX);
    peer.send_frame(&Frame::Credit(Credit {
        stream: slow,
        limit: u64::MAX,
    }));
    t.read_until(&mut peer, "all of the slow stream", |t| {
        t.end(slow) >= slow_tail
    });
    assert_eq!(t.end(fast), fast_tail);
    drop(publishers);
}

/// What the peer received per stream.
struct Tracker {
    /// Per stream: the first DATA start and the end so far.
    ends: HashMap<u32, (u64, u64)>,
    slow: u32,
    /// The slow stream's newest limit (`None`: its first window).
    slow_limit: Option<u64>,
}

impl Tracker {
    /// Checks a DATA frame: contiguous with the stream's last one and, for
    /// the slow stream, never past its limit.
    fn observe(&mut self, g: &Got) {
        let Got::Data { stream, start, len } = *g else {
            return;
        };
        let e = self.ends.entry(stream).or_insert((start, start));
        assert_eq!(e.1, start, "stream {stream}: DATA not contiguous");
        e.1 = start + len;
        if stream == self.slow {
            let limit = self.slow_limit.unwrap_or(e.0 + WINDOW);
            assert!(
                e.1 <= limit,
                "DATA of the slow stream ends at {} past its limit {limit}",
                e.1
            );
        }
    }

    fn end(&self, stream: u32) -> u64 {
        self.ends.get(&stream).map_or(0, |e| e.1)
    }

    fn read_until(&mut self, peer: &mut FakePeer, what: &str, done: impl Fn(&Self) -> bool) {
        let end = std::time::Instant::now() + Duration::from_secs(30);
        while !done(self) {
            assert!(
                std::time::Instant::now() < end,
                "timed out waiting for {what}"
            );
            if let Some(g) = peer.next(Duration::from_millis(200)) {
                self.observe(&g);
            }
        }
    }
}
