//! Per-stream credit on the receiving bridge, with real daemons over
//! loopback: a local subscriber of one replica that stops reading stops
//! only that stream (the receiver never waits for it), and an untethered
//! stream that loses data while its subscriber is stuck tells the
//! subscriber exactly how many messages it lost, in the same replica ring.
//!
//! Rates are printed, never asserted; every wait has a generous deadline.

mod common;

// Relaxed everywhere in this file: progress gauges polled by the test
// thread; the messages themselves are joined through thread handles.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use common::{check_body, wait_until, Daemon, Tele, TestDir, Watchdog};
use shmbus::{Bus, TopicEvent};
use shmbus_bus::{StartAt, WaitStrategy};

/// A sending and a receiving bridge on loopback; the sender exports with
/// `exports` (`--export` values), the receiver imports topics `a` and `b`.
struct Pair {
    sender: Daemon,
    receiver: Daemon,
    bus_s: Bus,
    bus_r: Bus,
    _dir: TestDir,
}

impl Pair {
    fn start(tag: &str, exports: &[&str]) -> Self {
        let dir = TestDir::new(tag);
        let keys = dir.keys(&["sender", "receiver"]);
        let (keys_s, keys_r) = (keys.args("sender"), keys.args("receiver"));
        let root_s = dir.join("s");
        let root_r = dir.join("r");
        let common_args = [
            "--bus",
            "b",
            "--heartbeat-interval-ms",
            "200",
            "--peer-timeout-ms",
            "20000",
            "--no-zerocopy",
        ];
        let mut args = vec![
            "--node-name",
            "sender",
            "--root",
            root_s.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ];
        for e in exports {
            args.extend(["--export", e]);
        }
        args.extend(common_args);
        args.extend(keys_s.iter().map(String::as_str));
        let sender = Daemon::start("sender", &dir, &args);
        let peer = format!("sender={}", sender.listen_addr());
        let mut args = vec![
            "--node-name",
            "receiver",
            "--root",
            root_r.to_str().unwrap(),
            "--listen",
            "off",
            "--peer",
            &peer,
            "--import",
            "a",
            "--import",
            "b",
        ];
        args.extend(common_args);
        args.extend(keys_r.iter().map(String::as_str));
        let receiver = Daemon::start("receiver", &dir, &args);
        receiver.wait_log("connected to peer sender", Duration::from_secs(20));
        // Small source rings (the replicas mirror them): a stuck subscriber
        // fills its replica after a few hundred messages.
        let bus_s = Bus::builder()
            .root(&root_s)
            .name("b")
            .capacity(64 << 10)
            .max_message(4096)
            .build()
            .unwrap();
        let bus_r = Bus::builder().root(&root_r).name("b").build().unwrap();
        Self {
            sender,
            receiver,
            bus_s,
            bus_r,
            _dir: dir,
        }
    }
}

/// What a receiving subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    seqs: Vec<u64>,
    /// Per replica ring (a gap longer than the ring continues in a new
    /// one), the sequence numbers in arrival order.
    by_ring: HashMap<String, Vec<u64>>,
    lost: u64,
    bad_bodies: usize,
}

impl Seen {
    /// In order within each replica ring, nothing twice overall.
    fn assert_ordered_once(&self, what: &str) {
        for (ring, seqs) in &self.by_ring {
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "{what}: out of order in ring {ring}"
            );
        }
        let mut all = self.seqs.clone();
        all.sort_unstable();
        assert!(
            all.windows(2).all(|w| w[0] < w[1]),
            "{what}: a message twice"
        );
    }
}

/// A subscriber thread on the receiving side of `topic`: reads one message,
/// then (if `hold` is set) stops reading until it is cleared, then reads
/// until `want` messages were received or lost, or `deadline` passed.
fn subscriber(
    bus: &Bus,
    topic: &str,
    hold: Option<Arc<AtomicBool>>,
    want: u64,
    deadline: Duration,
    progress: Arc<AtomicU64>,
) -> thread::JoinHandle<Seen> {
    let mut sub = bus
        .subscriber_with::<Tele>(topic, StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    thread::spawn(move || {
        let mut seen = Seen::default();
        let end = Instant::now() + deadline;
        while (seen.seqs.len() as u64) + seen.lost < want && Instant::now() < end {
            if let Some(h) = &hold {
                if !seen.seqs.is_empty() && h.load(Ordering::Relaxed) {
                    // Holding: the replica's space stays taken.
                    thread::sleep(Duration::from_millis(10));
                    continue;
                }
            }
            match sub.recv_timeout(Duration::from_millis(50)) {
                Ok(m) => {
                    seen.bad_bodies += usize::from(!check_body(&m));
                    let seq = m.seq.to_native();
                    seen.seqs.push(seq);
                    seen.by_ring
                        .entry(m.publisher().to_owned())
                        .or_default()
                        .push(seq);
                }
                Err(shmbus::Error::Timeout(_)) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
            for ev in sub.take_events() {
                if let TopicEvent::Lost { messages, .. } = ev {
                    seen.lost += messages;
                }
            }
            progress.store(seen.seqs.len() as u64 + seen.lost, Ordering::Relaxed);
        }
        seen
    })
}

/// Every message exactly once, in order, none lost.
fn assert_complete(what: &str, seen: &Seen, total: u64) {
    assert_eq!(seen.bad_bodies, 0, "{what}: corrupt bodies");
    assert_eq!(seen.lost, 0, "{what}: nothing may be lost");
    assert_eq!(
        seen.seqs,
        (0..total).collect::<Vec<_>>(),
        "{what}: every message once, in order"
    );
}

#[test]
fn a_stuck_subscriber_stops_only_its_own_stream() {
    let _watchdog = Watchdog::new("flow_recv_stuck", Duration::from_secs(150));
    let mut pair = Pair::start("recv-stuck", &["a:tethered", "b:tethered"]);
    const TOTAL_A: u64 = 3000;
    const TOTAL_B: u64 = 20_000;
    let hold = Arc::new(AtomicBool::new(true));
    let (prog_a, prog_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sub_a = subscriber(
        &pair.bus_r,
        "a",
        Some(Arc::clone(&hold)),
        TOTAL_A,
        Duration::from_secs(120),
        Arc::clone(&prog_a),
    );
    let sub_b = subscriber(
        &pair.bus_r,
        "b",
        None,
        TOTAL_B,
        Duration::from_secs(120),
        Arc::clone(&prog_b),
    );
    // Both publishers first; nothing is published before the bridges
    // import both rings (a ring nobody reads is not waited for).
    let mut pub_a = pair.bus_s.publisher::<Tele>("a").unwrap();
    let mut pub_b = pair.bus_s.publisher::<Tele>("b").unwrap();
    for topic in ["a", "b"] {
        pair.receiver
            .wait_log(&format!("importing {topic}/"), Duration::from_secs(30));
    }
    // A's publisher in its own thread: tethered end to end, it waits while
    // A's remote subscriber is stuck.
    let sent_a = Arc::new(AtomicU64::new(0));
    let sent_a2 = Arc::clone(&sent_a);
    let publisher_a = thread::spawn(move || {
        for seq in 0..TOTAL_A {
            pub_a
                .send_timeout(&Tele::new(1, seq), Duration::from_secs(100))
                .expect("A's publisher waits only while A's remote subscriber is stuck");
            sent_a2.store(seq + 1, Ordering::Relaxed);
        }
    });
    wait_until(
        "A's subscriber got its first message",
        Duration::from_secs(30),
        || prog_a.load(Ordering::Relaxed) >= 1,
    );
    // A is stuck now; B flows at full rate over the same connection.
    let started = Instant::now();
    for seq in 0..TOTAL_B {
        pub_b
            .send_timeout(&Tele::new(2, seq), Duration::from_secs(60))
            .expect("B must not wait for A's stuck subscriber");
    }
    wait_until(
        "B delivered while A is stuck",
        Duration::from_secs(90),
        || prog_b.load(Ordering::Relaxed) == TOTAL_B,
    );
    let took = started.elapsed();
    eprintln!(
        "B: {TOTAL_B} messages in {took:?} ({:.0} msg/s) while A was stuck",
        TOTAL_B as f64 / took.as_secs_f64()
    );
    // A really was stuck: its tethered publisher could not finish (a ring
    // of 64 KiB on each side holds far fewer than 3000 messages).
    let a_sent_while_stuck = sent_a.load(Ordering::Relaxed);
    assert!(
        a_sent_while_stuck < TOTAL_A,
        "A's publisher finished although A's subscriber was stuck"
    );
    assert_eq!(prog_a.load(Ordering::Relaxed), 1);
    // A's subscriber continues: A resumes, nothing lost.
    hold.store(false, Ordering::Relaxed);
    publisher_a.join().unwrap();
    let seen_a = sub_a.join().unwrap();
    let seen_b = sub_b.join().unwrap();
    assert_complete("A", &seen_a, TOTAL_A);
    assert_complete("B", &seen_b, TOTAL_B);
    assert_eq!(
        pair.receiver.count_log("bookkeeping error"),
        0,
        "the receiver never lacked the room it granted"
    );
    assert!(pair.receiver.terminate());
    assert!(pair.sender.terminate());
    for s in pair.receiver.stats("stream") {
        assert_eq!(s["lost_messages"], "0", "{s:?}");
    }
}

#[test]
fn untethered_loss_while_a_subscriber_is_stuck_is_told_exactly() {
    let _watchdog = Watchdog::new("flow_recv_loss", Duration::from_secs(150));
    // A small retention: the untethered export gives up bytes soon.
    let mut pair = Pair::start("recv-loss", &["a:untethered=4096"]);
    const TOTAL: u64 = 20_000;
    let hold = Arc::new(AtomicBool::new(true));
    let progress = Arc::new(AtomicU64::new(0));
    let sub = subscriber(
        &pair.bus_r,
        "a",
        Some(Arc::clone(&hold)),
        TOTAL,
        Duration::from_secs(120),
        Arc::clone(&progress),
    );
    let mut publisher = pair.bus_s.publisher::<Tele>("a").unwrap();
    pair.receiver
        .wait_log("importing a/", Duration::from_secs(30));
    publisher.send(&Tele::new(1, 0)).unwrap();
    wait_until(
        "the first message delivered",
        Duration::from_secs(30),
        || progress.load(Ordering::Relaxed) >= 1,
    );
    // The receiving subscriber holds its replica, so the export gets no
    // credit; the publisher laps its small ring many times meanwhile.
    for seq in 1..TOTAL - 100 {
        publisher
            .send_timeout(&Tele::new(1, seq), Duration::from_secs(10))
            .expect("an untethered export never holds the publisher back");
    }
    // Out of credit, the export could not send them: the ring lapped it.
    // The GAP is found once the subscriber moves and credit returns.
    hold.store(false, Ordering::Relaxed);
    // The last messages arrive after the subscriber moved on.
    for seq in TOTAL - 100..TOTAL {
        publisher.send(&Tele::new(1, seq)).unwrap();
        thread::sleep(Duration::from_micros(500));
    }
    let seen = sub.join().unwrap();
    assert_eq!(seen.bad_bodies, 0);
    assert!(seen.lost > 0, "the stuck subscriber lost messages");
    seen.assert_ordered_once("A");
    assert_eq!(seen.seqs.iter().min(), Some(&0));
    assert_eq!(seen.seqs.iter().max(), Some(&(TOTAL - 1)));
    assert_eq!(
        seen.seqs.len() as u64 + seen.lost,
        TOTAL,
        "received plus reported lost is exactly what was published"
    );
    assert!(pair.receiver.terminate());
    assert!(pair.sender.terminate());
    let inn = &pair.receiver.stats("stream")[0];
    assert_eq!(inn["lost_messages"], seen.lost.to_string(), "{inn:?}");
    drop(publisher);
}
