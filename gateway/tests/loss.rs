//! Forced loss is told exactly: messages dropped on the way (a replica
//! kept full by a stalled subscriber; Zenoh dropping samples under
//! congestion control Drop) reach subscribers as `Lost` with exact
//! counts, the rest in order and intact, never a corrupt message.

mod common;

use std::time::{Duration, Instant};

use common::{check_body, pair, Gw, Tele, TestDir, Watchdog};
use shmbus::{Bus, TopicEvent};
use shmbus_bus::{StartAt, WaitStrategy};

/// Gateways `a` (export `tele` with `export_opts`) and `b` (import with
/// `b_args`); publishes `n` messages on a; b's subscriber (created before)
/// reads nothing for `hold` (`None`: until b has handled every message),
/// then reads everything: received + lost = N.
fn run(n: u64, export_opts: &str, b_args: &[&str], hold: Option<Duration>) -> (u64, u64, Gw) {
    let dir = TestDir::new("loss");
    let export = format!("tele{export_opts}");
    let (a, b, bus_a, bus_b) = pair_of(&dir, &[&export], &["shmbus/b/tele"], b_args);
    // Subscribed before the replica exists: it is pre-joined and holds it.
    let mut sub = bus_b
        .subscriber_with::<Tele>("tele", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut publisher = bus_a.publisher::<Tele>("tele").unwrap();
    // The export starts once b's subscription is routed to a.
    a.wait_log("exporting tele/", Duration::from_secs(20));
    for seq in 0..n {
        publisher.send(&Tele::new(0, seq)).unwrap();
    }
    let mut t = Tally::default();
    let start = Instant::now();
    let end = start + Duration::from_secs(60);
    while t.received + t.lost < n {
        assert!(
            Instant::now() < end,
            "received {} + lost {} of {n}; gateway b: {:?}",
            t.received,
            t.lost,
            b.stats()
        );
        let reading = match hold {
            Some(hold) => start.elapsed() >= hold,
            None => b_done(&b, n),
        };
        if reading {
            t.read(&mut sub);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    t.read(&mut sub);
    let (received, lost) = (t.received, t.lost);
    eprintln!("RESULT export {export_opts:?}: received {received}, lost {lost}");
    assert_eq!(received + lost, n, "received {received} + lost {lost}");
    let stats = b.stats();
    assert_eq!(stats["imported"], received, "{stats:?}");
    assert_eq!(stats["import_lost"], lost, "{stats:?}");
    drop(publisher);
    (received, lost, b)
}

/// [`pair`] with `a` exporting `exports` and `b` importing `imports` (and
/// `b_args`), and their buses.
fn pair_of(
    dir: &TestDir,
    exports: &[&str],
    imports: &[&str],
    b_args: &[&str],
) -> (Gw, Gw, Bus, Bus) {
    let a_args: Vec<&str> = exports.iter().flat_map(|e| ["--export", e]).collect();
    let mut all_b: Vec<&str> = imports.iter().flat_map(|i| ["--import", i]).collect();
    all_b.extend(b_args);
    let (a, b) = pair(dir, &a_args, &all_b);
    let bus_a = Bus::builder()
        .root(dir.join("a"))
        .name("b")
        .build()
        .unwrap();
    let bus_b = Bus::builder()
        .root(dir.join("b"))
        .name("b")
        .build()
        .unwrap();
    (a, b, bus_a, bus_b)
}

/// What a subscriber saw: messages (strictly increasing, intact) and losses.
#[derive(Default)]
struct Tally {
    received: u64,
    lost: u64,
    last: Option<u64>,
}

impl Tally {
    fn read(&mut self, sub: &mut shmbus::Subscriber<Tele>) {
        while let Ok(Some(m)) = sub.try_recv() {
            assert!(check_body(&m), "message {} corrupt", m.seq.to_native());
            let seq = m.seq.to_native();
            assert!(
                self.last.is_none_or(|l| seq > l),
                "{seq} after {:?}",
                self.last
            );
            self.last = Some(seq);
            self.received += 1;
        }
        for e in sub.take_events() {
            if let TopicEvent::Lost { messages, .. } = e {
                self.lost += messages;
            }
        }
    }
}

/// Whether gateway b has handled (written or dropped) all `n` messages
/// (nothing is lost before b here).
fn b_done(b: &Gw, n: u64) -> bool {
    let s = b.stats();
    s["imported"] + s["import_full_drops"] >= n
}

#[test]
fn a_stalled_subscriber_on_a_small_replica_loses_messages_counted_exactly() {
    let _w = Watchdog::new("stalled_subscriber", Duration::from_secs(120));
    // 64 KiB replica, no waiting: the subscriber reads nothing until b has
    // handled everything, so most messages are dropped at b.
    let (received, lost, _b) = run(
        6000,
        "",
        &["--import-capacity", "65536", "--import-full-wait-ms", "0"],
        None,
    );
    assert!(lost > 0 && received > 0, "received {received}, lost {lost}");
}

#[test]
fn congestion_drop_while_the_importer_stalls_loses_messages_counted_exactly() {
    let _w = Watchdog::new("congestion_drop", Duration::from_secs(120));
    // b's replica fills and b waits a second for room (once, then it drops
    // what the full replica cannot take): meanwhile it reads nothing from
    // its socket, Zenoh's queues and the socket buffers fill (40 000
    // messages, about 6 MB), and a (congestion control Drop) drops
    // samples. The subscriber reads after 3 s.
    let (received, lost, b) = run(
        40_000,
        ":drop",
        &[
            "--import-capacity",
            "65536",
            "--import-full-wait-ms",
            "1000",
        ],
        Some(Duration::from_secs(3)),
    );
    let stats = b.stats();
    eprintln!("RESULT stats of b: {stats:?}");
    assert!(received > 0, "received {received}, lost {lost}");
    assert!(
        stats["import_lost"] > stats["import_full_drops"],
        "some samples were dropped by Zenoh, not by b: {stats:?}"
    );
}

#[test]
fn a_replica_held_full_delays_the_import_once_and_other_topics_flow() {
    let _w = Watchdog::new("held_full", Duration::from_secs(120));
    // b imports `held` and `live`, published in turn on a. The subscriber
    // of `held` reads nothing until b has handled every message: its
    // 64 KiB replica fills, b waits 500 ms for room once, then drops the
    // rest of `held` at once. Waiting per message (the old way) would
    // take 500 ms per dropped message, minutes for this run, and hold
    // `live` back with it.
    const N: u64 = 3000;
    let dir = TestDir::new("held");
    let (a, b, bus_a, bus_b) = pair_of(
        &dir,
        &["held", "live"],
        &["shmbus/b/held", "shmbus/b/live"],
        &["--import-capacity", "65536", "--import-full-wait-ms", "500"],
    );
    // Subscribed before the replicas exist: pre-joined, they hold them.
    let mut held = bus_b
        .subscriber_with::<Tele>("held", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut live = bus_b
        .subscriber_with::<Tele>("live", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut pub_held = bus_a.publisher::<Tele>("held").unwrap();
    let mut pub_live = bus_a.publisher::<Tele>("live").unwrap();
    a.wait_log("exporting held/", Duration::from_secs(20));
    a.wait_log("exporting live/", Duration::from_secs(20));
    for seq in 0..N {
        pub_held.send(&Tele::new(0, seq)).unwrap();
        pub_live.send(&Tele::new(1, seq)).unwrap();
    }
    let (mut t_held, mut t_live) = (Tally::default(), Tally::default());
    let end = Instant::now() + Duration::from_secs(60);
    while !b_done(&b, 2 * N) {
        assert!(
            Instant::now() < end,
            "b has not handled all {} messages: {:?}",
            2 * N,
            b.stats()
        );
        t_live.read(&mut live);
        std::thread::sleep(Duration::from_millis(10));
    }
    while t_live.received < N {
        assert!(Instant::now() < end, "live: {} of {N}", t_live.received);
        t_live.read(&mut live);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        (t_live.received, t_live.lost),
        (N, 0),
        "live: every message"
    );
    // Now `held` is read: what fitted, then the rest as one loss.
    while t_held.received + t_held.lost < N {
        assert!(
            Instant::now() < end,
            "held: received {} + lost {} of {N}",
            t_held.received,
            t_held.lost
        );
        t_held.read(&mut held);
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = b.stats();
    eprintln!(
        "RESULT held: received {}, lost {}; {stats:?}",
        t_held.received, t_held.lost
    );
    assert!(t_held.received > 0 && t_held.lost > 0, "the replica filled");
    assert_eq!(stats["import_full_drops"], t_held.lost, "{stats:?}");
    assert_eq!(
        stats["import_full_timeouts"], 1,
        "one wait for the one spell of fullness: {stats:?}"
    );
    drop((pub_held, pub_live));
}
