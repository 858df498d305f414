//! Untethered export (the default): while the receiving bridge is stopped
//! (SIGSTOP), the publisher keeps going and laps its small ring. The sending
//! bridge never holds it back; when the receiver resumes, it gets an exact
//! GAP: both bridges count the same lost byte range, local subscribers get
//! every message after it exactly once (in order within each replica ring:
//! the gap starts a new one), and nothing before the
//! stop is lost.

mod common;

// Relaxed: a flag and a progress gauge; the messages themselves are joined through the thread handle.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use common::{check_body, wait_until, Daemon, Tele, TestDir, Watchdog};
use shmbus::Bus;
use shmbus_bus::{StartAt, WaitStrategy};

#[test]
fn untethered_lap_becomes_an_exact_gap() {
    let _watchdog = Watchdog::new("gap", Duration::from_secs(50));
    let dir = TestDir::new("gap");
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
        "10000",
        "--no-zerocopy",
    ];
    let mut args = vec![
        "--node-name",
        "sender",
        "--root",
        root_s.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--export",
        "fast",
    ];
    args.extend(common_args);
    args.extend(keys_s.iter().map(String::as_str));
    let mut sender = Daemon::start("sender", &dir, &args);
    let addr = sender.listen_addr();
    let peer = format!("sender={addr}");
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
        "fast",
    ];
    args.extend(common_args);
    args.extend(keys_r.iter().map(String::as_str));
    let mut receiver = Daemon::start("receiver", &dir, &args);
    receiver.wait_log("connected to peer sender", Duration::from_secs(10));

    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(u64::MAX));
    let bus_r = Bus::builder().root(&root_r).name("b").build().unwrap();
    let mut sub = bus_r
        .subscriber_with::<Tele>("fast", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let (s2, l2) = (Arc::clone(&stop), Arc::clone(&last));
    let subscriber = thread::spawn(move || {
        let mut seqs = Vec::new();
        let mut bad = 0;
        while !s2.load(Ordering::Relaxed) {
            match sub.recv_timeout(Duration::from_millis(50)) {
                Ok(m) => {
                    bad += usize::from(!check_body(&m));
                    let seq = m.seq.to_native();
                    seqs.push((m.publisher().to_owned(), seq));
                    l2.store(seq, Ordering::Relaxed);
                }
                Err(shmbus::Error::Timeout(_)) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
        (seqs, bad)
    });

    // A 64 KiB ring: a few hundred messages fill it.
    let bus_s = Bus::builder()
        .root(&root_s)
        .name("b")
        .capacity(64 << 10)
        .max_message(4096)
        .build()
        .unwrap();
    let mut publisher = bus_s.publisher::<Tele>("fast").unwrap();
    let mut seq = 0u64;
    for _ in 0..200 {
        publisher.send(&Tele::new(1, seq)).unwrap();
        seq += 1;
    }
    wait_until("first messages delivered", Duration::from_secs(20), || {
        last.load(Ordering::Relaxed) == seq - 1
    });
    let before_stop = seq;

    receiver.signal(libc::SIGSTOP);
    // Far more than the socket buffers hold, published without waiting: the
    // untethered bridge never holds the publisher back.
    let started = Instant::now();
    for _ in 0..100_000 {
        publisher
            .send_timeout(&Tele::new(1, seq), Duration::from_secs(5))
            .expect("an untethered export must not block the publisher");
        seq += 1;
    }
    let publish_time = started.elapsed();
    receiver.signal(libc::SIGCONT);
    for _ in 0..200 {
        publisher.send(&Tele::new(1, seq)).unwrap();
        seq += 1;
        thread::sleep(Duration::from_micros(200));
    }
    wait_until("last message delivered", Duration::from_secs(30), || {
        last.load(Ordering::Relaxed) == seq - 1
    });
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let (seqs, bad) = subscriber.join().unwrap();
    eprintln!(
        "published {} messages in {publish_time:?} while the receiver was stopped",
        100_000
    );
    assert_eq!(bad, 0);
    // In order within each replica ring (a gap starts a new one), and no
    // message twice overall.
    let mut rings: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for (ring, s) in &seqs {
        if let Some(prev) = rings.insert(ring, *s) {
            assert!(*s > prev, "ring {ring}: {s} after {prev}");
        }
    }
    let mut all: Vec<u64> = seqs.iter().map(|(_, s)| *s).collect();
    all.sort_unstable();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "no duplicates");
    assert_eq!(
        &all[..before_stop as usize],
        &(0..before_stop).collect::<Vec<_>>()[..]
    );
    assert!(all.len() < seq as usize, "the stop lost messages");
    assert_eq!(*all.last().unwrap(), seq - 1);

    assert!(receiver.terminate());
    assert!(sender.terminate());
    let out = &sender.stats("stream")[0];
    let inn = &receiver.stats("stream")[0];
    assert_ne!(out["gaps"], "0", "{out:?}");
    assert_eq!(out["gaps"], inn["gaps"], "both sides count the same gaps");
    assert_eq!(
        out["gap_bytes"], inn["gap_bytes"],
        "exact positions on both sides"
    );
    assert_eq!(out["position"], inn["position"]);
    drop(publisher);
}
