//! Two `shmbus-bridge` processes on 127.0.0.1 between two private bus roots:
//! three publishers on one side, two typed subscribers on the other. Every
//! message arrives exactly once with its content intact, in order per
//! replica ring, while the receiving bridge and then the sending bridge are
//! SIGKILLed and restarted mid-stream (tethered export).

mod common;

// Relaxed: stop flags and progress counters; the results are joined through the thread handles.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use common::{check_body, wait_until, Daemon, Tele, TestDir, Watchdog};
use shmbus::Bus;
use shmbus_bus::{StartAt, WaitStrategy};

const PUBLISHERS: u32 = 3;
const MESSAGES: u64 = 3000;
const TOTAL: usize = (PUBLISHERS as usize) * (MESSAGES as usize);

/// What one subscriber received: per replica ring, (publisher, seq) in
/// arrival order.
#[derive(Default)]
struct Received {
    by_ring: HashMap<String, Vec<(u32, u64)>>,
    bad_bodies: usize,
    errors: Vec<String>,
}

fn spawn_subscriber(
    root: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> thread::JoinHandle<Received> {
    let bus = Bus::builder().root(&root).name("b").build().unwrap();
    let mut sub = bus
        .subscriber_with::<Tele>("tele", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    thread::spawn(move || {
        let mut got = Received::default();
        while !stop.load(Ordering::Relaxed) {
            match sub.recv_timeout(Duration::from_millis(50)) {
                Ok(m) => {
                    if !check_body(&m) {
                        got.bad_bodies += 1;
                    }
                    got.by_ring
                        .entry(m.publisher().to_owned())
                        .or_default()
                        .push((m.publisher.to_native(), m.seq.to_native()));
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Err(shmbus::Error::Timeout(_)) => {}
                Err(e) => got.errors.push(e.to_string()),
            }
        }
        got
    })
}

fn spawn_publisher(root: std::path::PathBuf, p: u32) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let bus = Bus::builder().root(&root).name("b").build().unwrap();
        let mut publisher = bus
            .publisher_named::<Tele>("tele", &format!("pub{p}"))
            .unwrap();
        for seq in 0..MESSAGES {
            publisher.send(&Tele::new(p, seq)).unwrap();
            if seq % 8 == 7 {
                thread::sleep(Duration::from_millis(8));
            }
        }
        // Stay alive until the test ends so the ring is not removed early.
        thread::sleep(Duration::from_millis(300));
    })
}

fn verify(name: &str, got: &Received) {
    assert!(
        got.errors.is_empty(),
        "{name}: receive errors {:?}",
        got.errors
    );
    assert_eq!(got.bad_bodies, 0, "{name}: corrupt message bodies");
    let mut seen: HashSet<(u32, u64)> = HashSet::new();
    for (ring, msgs) in &got.by_ring {
        let mut last: HashMap<u32, u64> = HashMap::new();
        for &(p, seq) in msgs {
            if let Some(prev) = last.insert(p, seq) {
                assert!(
                    seq > prev,
                    "{name}: ring {ring}: publisher {p} seq {seq} after {prev}"
                );
            }
            assert!(
                seen.insert((p, seq)),
                "{name}: duplicate message {p}/{seq} (ring {ring})"
            );
        }
    }
    for p in 0..PUBLISHERS {
        for seq in 0..MESSAGES {
            assert!(
                seen.contains(&(p, seq)),
                "{name}: message {p}/{seq} missing"
            );
        }
    }
    assert_eq!(seen.len(), TOTAL);
}

#[test]
fn exactly_once_across_bridge_kills() {
    let _watchdog = Watchdog::new("exactly_once_across_bridge_kills", Duration::from_secs(50));
    let dir = TestDir::new("loopback");
    let keys = dir.keys(&["sender", "receiver"]);
    let (keys_s, keys_r) = (keys.args("sender"), keys.args("receiver"));
    let root_s = dir.join("s");
    let root_r = dir.join("r");
    let common_args = [
        "--bus",
        "b",
        "--heartbeat-interval-ms",
        "100",
        "--peer-timeout-ms",
        "1500",
        "--log-level",
        "debug",
    ];
    let mut args_s = vec![
        "--node-name",
        "sender",
        "--root",
        root_s.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--export",
        "tele:tethered",
    ];
    args_s.extend(common_args);
    args_s.extend(keys_s.iter().map(String::as_str));
    let mut sender = Daemon::start("sender", &dir, &args_s);
    let addr = sender.listen_addr();
    let peer = format!("sender={addr}");
    let mut args_r = vec![
        "--node-name",
        "receiver",
        "--root",
        root_r.to_str().unwrap(),
        "--listen",
        "off",
        "--peer",
        &peer,
        "--import",
        "tele",
    ];
    args_r.extend(common_args);
    args_r.extend(keys_r.iter().map(String::as_str));
    let mut receiver = Daemon::start("receiver", &dir, &args_r);
    receiver.wait_log("connected to peer sender", Duration::from_secs(10));

    let stop = Arc::new(AtomicBool::new(false));
    let counts = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let subs: Vec<_> = counts
        .iter()
        .map(|c| spawn_subscriber(root_r.clone(), Arc::clone(&stop), Arc::clone(c)))
        .collect();
    let pubs: Vec<_> = (0..PUBLISHERS)
        .map(|p| spawn_publisher(root_s.clone(), p))
        .collect();
    let progress = || {
        counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap()
    };

    wait_until("20 % delivered", Duration::from_secs(20), || {
        progress() >= TOTAL / 5
    });
    receiver.kill9();
    thread::sleep(Duration::from_millis(200));
    receiver.restart(None);
    receiver.wait_log("connected to peer sender", Duration::from_secs(10));
    receiver.wait_log("resuming tele/", Duration::from_secs(10));

    wait_until("55 % delivered", Duration::from_secs(20), || {
        progress() >= TOTAL * 55 / 100
    });
    sender.kill9();
    thread::sleep(Duration::from_millis(200));
    sender.restart(Some(&addr));
    sender.wait_log("connected to peer receiver", Duration::from_secs(10));
    sender.signal(libc::SIGUSR1);
    sender.wait_log("bridge node=sender", Duration::from_secs(10));

    for p in pubs {
        p.join().unwrap();
    }
    wait_until("all delivered", Duration::from_secs(30), || {
        progress() >= TOTAL
    });
    // Anything duplicated would arrive now.
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for (i, s) in subs.into_iter().enumerate() {
        verify(&format!("subscriber {i}"), &s.join().unwrap());
    }
    assert!(receiver.terminate(), "receiver exits cleanly on SIGTERM");
    assert!(sender.terminate(), "sender exits cleanly on SIGTERM");
    for d in [&sender, &receiver] {
        for s in d.stats("stream") {
            assert_eq!(
                s["gaps"], "0",
                "{}: tethered export has no gaps: {s:?}",
                d.name
            );
        }
    }
    let out = sender.stats("stream");
    assert_eq!(out.len(), PUBLISHERS as usize, "{out:?}");
    assert!(out
        .iter()
        .all(|s| s["dir"] == "out" && s["messages"] != "0"));
}
