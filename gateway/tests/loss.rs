//! Forced loss is told exactly: messages dropped on the way (a replica
//! kept full by a stalled subscriber; Zenoh dropping samples under
//! congestion control Drop) reach subscribers as `Lost` with exact
//! counts, the rest in order and intact, never a corrupt message.

mod common;

use std::time::{Duration, Instant};

use common::{check_body, free_port, Gw, Tele, TestDir, Watchdog};
use shmbus::{Bus, TopicEvent};
use shmbus_bus::{StartAt, WaitStrategy};

/// Gateways `a` (export `tele` with `export_opts`) and `b` (import with
/// `b_args`); publishes `n` messages on a; b's subscriber (created before)
/// reads nothing for `hold` (`None`: until b has handled every message),
/// then reads everything: received + lost = N.
fn run(n: u64, export_opts: &str, b_args: &[&str], hold: Option<Duration>) -> (u64, u64, Gw) {
    let dir = TestDir::new("loss");
    let port = free_port();
    let listen = format!("tcp/127.0.0.1:{port}");
    let (root_a, root_b) = (dir.join("a"), dir.join("b"));
    let export = format!("tele{export_opts}");
    let a = Gw::start(
        "gw-a",
        &[
            "--root",
            root_a.to_str().unwrap(),
            "--bus",
            "b",
            "--listen",
            &listen,
            "--export",
            &export,
        ],
    );
    a.wait_log("exporting under", Duration::from_secs(20));
    let mut args = vec![
        "--root",
        root_b.to_str().unwrap(),
        "--bus",
        "b",
        "--connect",
        &listen,
        "--import",
        "shmbus/b/tele",
    ];
    args.extend(b_args);
    let b = Gw::start("gw-b", &args);
    b.wait_log("exporting under", Duration::from_secs(20));
    let bus_a = Bus::builder().root(&root_a).name("b").build().unwrap();
    let bus_b = Bus::builder().root(&root_b).name("b").build().unwrap();
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
    // b's replica is full and b waits up to a second per message for
    // room: it stops reading its socket, Zenoh's queues and the socket
    // buffers fill (40 000 messages, about 6 MB), and a (congestion control
    // Drop) drops samples. The subscriber reads after 3 s.
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
    assert!(received > 0, "received {received}, lost {lost}");
    assert!(
        stats["import_lost"] > stats["import_full_drops"],
        "some samples were dropped by Zenoh, not by b: {stats:?}"
    );
}
