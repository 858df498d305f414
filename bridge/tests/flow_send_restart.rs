//! SIGKILL of the sending bridge, with real processes on 127.0.0.1.
//!
//! - Tethered: the export's slot is durable, so while the bridge is dead
//!   (killed, or stopped cleanly)
//!   the ring keeps what the peer has not acknowledged, even after its
//!   publisher exits (its files stay until the slot is reaped or finished).
//!   Restarted, the bridge reattaches and the remote subscriber gets every
//!   message, in order, then the stream's END.
//! - Untethered: the publisher laps its small ring while the bridge is
//!   dead. Restarted, the bridge sends one GAP whose `next_seq` is exactly
//!   the first message the remote subscriber gets after the hole: the
//!   missing sequence numbers are exactly the ones the GAP reports.
//! - Untethered, the publisher exits too: its ring's names are removed
//!   while the bridge is dead, and only the export hold keeps the ring.
//!   Restarted, the bridge offers the hold again: the remote subscriber
//!   gets the exact loss (`TopicEvent::Lost`), the rest of the tail, and the
//!   publisher is reported gone (END); then the hold is removed.

mod common;

// Relaxed: stop flags and progress counters; the results are joined through the thread handles.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use common::{check_body, ring_files, wait_until, Daemon, Tele, TestDir, Watchdog};
use shmbus::{Bus, TopicEvent};
use shmbus_bus::{StartAt, WaitStrategy};

/// A sending and a receiving bridge; the sender exports `tele` as `mode`.
fn start_pair(dir: &TestDir, mode: &str) -> (Daemon, Daemon, String, PathBuf, PathBuf) {
    start_pair_with(dir, mode, &[])
}

/// [`start_pair`], with `extra` arguments for the sender.
fn start_pair_with(
    dir: &TestDir,
    mode: &str,
    extra: &[&str],
) -> (Daemon, Daemon, String, PathBuf, PathBuf) {
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
        "2000",
        "--log-level",
        "debug",
    ];
    let export = format!("tele:{mode}");
    let mut args_s = vec![
        "--node-name",
        "sender",
        "--root",
        root_s.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--export",
        &export,
    ];
    args_s.extend(common_args);
    args_s.extend(extra);
    args_s.extend(keys_s.iter().map(String::as_str));
    let sender = Daemon::start("sender", dir, &args_s);
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
    let receiver = Daemon::start("receiver", dir, &args_r);
    receiver.wait_log("connected to peer sender", Duration::from_secs(10));
    (sender, receiver, addr, root_s, root_r)
}

/// A subscriber on the receiving side: the sequence numbers it got, in order.
fn spawn_subscriber(
    root: &Path,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
) -> thread::JoinHandle<Vec<u64>> {
    let bus = Bus::builder().root(root).name("b").build().unwrap();
    let mut sub = bus
        .subscriber_with::<Tele>("tele", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    thread::spawn(move || {
        let mut seqs = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            match sub.recv_timeout(Duration::from_millis(50)) {
                Ok(m) => {
                    assert!(check_body(&m), "corrupt body of message {}", m.seq);
                    seqs.push(m.seq.to_native());
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Err(shmbus::Error::Timeout(_)) => {}
                // A gap record: reported, the stream goes on.
                Err(e) => eprintln!("subscriber: {e}"),
            }
        }
        seqs
    })
}

#[test]
fn tethered_export_loses_nothing_when_the_sender_dies_and_the_publisher_exits() {
    tethered_restart("durable", Daemon::kill9);
}

/// A clean stop (SIGTERM) keeps the durable slot too: the exporting bridge
/// lets go of it as a crashed one would.
#[test]
fn tethered_export_loses_nothing_across_a_clean_restart_while_the_publisher_exits() {
    tethered_restart("durable_term", |d| assert!(d.terminate(), "unclean exit"));
}

fn tethered_restart(tag: &'static str, stop_sender: impl FnOnce(&mut Daemon)) {
    const MESSAGES: u64 = 3000;
    let _watchdog = Watchdog::new(tag, Duration::from_secs(100));
    let dir = TestDir::new(tag);
    let (mut sender, receiver, addr, root_s, root_r) = start_pair(&dir, "tethered");
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let sub = spawn_subscriber(&root_r, Arc::clone(&stop), Arc::clone(&count));

    // Room for every message, so the publisher can finish (and exit) while
    // the bridge is down.
    let bus_s = Bus::builder()
        .root(&root_s)
        .name("b")
        .capacity(4 << 20)
        .max_message(1024)
        .build()
        .unwrap();
    let mut publisher = bus_s.publisher_named::<Tele>("tele", "pub").unwrap();
    let topic_dir = bus_s.topic_dir("tele").unwrap();
    let (go_on, go_on2) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let g2 = Arc::clone(&go_on);
    let done = Arc::clone(&go_on2);
    let pub_thread = thread::spawn(move || {
        for seq in 0..MESSAGES {
            if seq == MESSAGES / 3 {
                // Hold on until the test has killed the bridge.
                while !g2.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(5));
                }
            }
            publisher.send(&Tele::new(0, seq)).unwrap();
            if seq % 16 == 15 {
                thread::sleep(Duration::from_millis(2));
            }
        }
        // The publisher exits: its handle closes the ring.
        drop(publisher);
        done.store(true, Ordering::Relaxed);
    });

    wait_until("some messages delivered", Duration::from_secs(30), || {
        count.load(Ordering::Relaxed) >= (MESSAGES / 4) as usize
    });
    stop_sender(&mut sender);
    go_on.store(true, Ordering::Relaxed);
    wait_until("the publisher exited", Duration::from_secs(30), || {
        go_on2.load(Ordering::Relaxed)
    });
    pub_thread.join().unwrap();
    // The durable slot still owes the tail: the ring's files stay.
    assert_eq!(
        ring_files(&topic_dir).len(),
        1,
        "the ring was removed while the dead bridge's slot still owed data"
    );
    thread::sleep(Duration::from_millis(200));
    sender.restart(Some(&addr));
    wait_until("every message delivered", Duration::from_secs(40), || {
        count.load(Ordering::Relaxed) >= MESSAGES as usize
    });
    receiver.wait_log("ended at position", Duration::from_secs(20));
    stop.store(true, Ordering::Relaxed);
    let seqs = sub.join().unwrap();
    let expected: Vec<u64> = (0..MESSAGES).collect();
    assert_eq!(
        seqs, expected,
        "messages missing, duplicated or out of order"
    );
    // Finished: the bridge let go of the ring, and it is gone.
    wait_until("the finished ring removed", Duration::from_secs(20), || {
        ring_files(&topic_dir).is_empty()
    });
    // And so is the export hold that kept it for the peer.
    wait_until("the export hold removed", Duration::from_secs(20), || {
        export_hold_files(&topic_dir).is_empty()
    });
}

#[test]
fn untethered_export_reports_exactly_the_messages_lapped_while_the_sender_was_dead() {
    const BEFORE: u64 = 500;
    const WHILE_DEAD: u64 = 3000;
    const AFTER: u64 = 500;
    let _watchdog = Watchdog::new("untethered_kill", Duration::from_secs(100));
    let dir = TestDir::new("lapkill");
    let (mut sender, receiver, addr, root_s, root_r) = start_pair(&dir, "untethered");
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let sub = spawn_subscriber(&root_r, Arc::clone(&stop), Arc::clone(&count));

    // A small ring: the messages sent while the bridge is dead lap it.
    let bus_s = Bus::builder()
        .root(&root_s)
        .name("b")
        .capacity(64 << 10)
        .max_message(1024)
        .build()
        .unwrap();
    let mut publisher = bus_s.publisher_named::<Tele>("tele", "pub").unwrap();
    let mut seq = 0;
    let mut send_paced = |n: u64, publisher: &mut shmbus::Publisher<Tele>| {
        for _ in 0..n {
            publisher.send(&Tele::new(0, seq)).unwrap();
            seq += 1;
            if seq % 16 == 0 {
                thread::sleep(Duration::from_millis(2));
            }
        }
    };
    // The export starts from the first message (the ring is small: it would
    // be lapped before the bridge's catalog scan found it).
    send_paced(1, &mut publisher);
    receiver.wait_log("starts at position", Duration::from_secs(20));
    send_paced(BEFORE - 1, &mut publisher);
    wait_until(
        "the first messages delivered",
        Duration::from_secs(30),
        || count.load(Ordering::Relaxed) >= BEFORE as usize,
    );
    sender.kill9();
    // Never held back by the dead bridge: its slot is untethered.
    send_paced(WHILE_DEAD, &mut publisher);
    sender.restart(Some(&addr));
    let gap = sender.wait_log("are lost (next message ", Duration::from_secs(30));
    let next_seq: u64 = gap
        .rsplit("(next message ")
        .next()
        .and_then(|s| s.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no next message in {gap:?}"));
    send_paced(AFTER, &mut publisher);
    let total = BEFORE + WHILE_DEAD + AFTER;
    wait_until(
        "the last message delivered",
        Duration::from_secs(40),
        || count.load(Ordering::Relaxed) >= (total - (next_seq - BEFORE)) as usize,
    );
    stop.store(true, Ordering::Relaxed);
    let seqs = sub.join().unwrap();
    // Exactly [0, BEFORE) and [next_seq, total), in order: the hole is the
    // GAP, no more, no less.
    let expected: Vec<u64> = (0..BEFORE).chain(next_seq..total).collect();
    assert!(next_seq > BEFORE, "no loss: the ring was not lapped");
    assert_eq!(
        seqs.len(),
        expected.len(),
        "got {} messages, expected {} (gap reported up to {next_seq})",
        seqs.len(),
        expected.len()
    );
    assert_eq!(seqs, expected);
    wait_until("the gap counted", Duration::from_secs(20), || {
        sender
            .stats("stream")
            .iter()
            .filter_map(|l| l.get("gaps")?.parse::<u64>().ok())
            .sum::<u64>()
            >= 1
    });
    drop(publisher);
}

/// What a receiving-side subscriber saw: messages (sequence number and
/// replica ring), lost messages reported, publishers reported gone.
#[derive(Debug, Default)]
struct Seen {
    messages: Vec<(u64, String)>,
    lost: u64,
    gone: Vec<String>,
}

/// A subscriber on the receiving side that also records topic events in
/// `seen`, until `stop`.
fn spawn_event_subscriber(
    root: &Path,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> thread::JoinHandle<()> {
    let bus = Bus::builder().root(root).name("b").build().unwrap();
    let mut sub = bus
        .subscriber_with::<Tele>("tele", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let got = match sub.recv_timeout(Duration::from_millis(50)) {
                Ok(m) => {
                    assert!(check_body(&m), "corrupt body of message {}", m.seq);
                    Some((m.seq.to_native(), m.publisher().to_owned()))
                }
                Err(shmbus::Error::Timeout(_)) => None,
                // A gap record: reported as an event, the stream goes on.
                Err(e) => {
                    eprintln!("subscriber: {e}");
                    None
                }
            };
            let mut seen = seen.lock().unwrap();
            seen.messages.extend(got);
            for ev in sub.take_events() {
                match ev {
                    TopicEvent::Lost { messages, .. } => seen.lost += messages,
                    TopicEvent::PublisherGone { publisher } => seen.gone.push(publisher),
                    TopicEvent::PublisherJoined { .. } => {}
                }
            }
        }
    })
}

/// The sender's export hold files for peer "receiver"
/// (`.<publisher>.x<peer tag>.xhold` and its control link) in `dir`.
fn export_hold_files(dir: &Path) -> Vec<PathBuf> {
    let tag = shmbus_bridge::daemon::naming::peer_tag("receiver");
    let (data, ctl) = (format!(".x{tag}.xhold"), format!(".x{tag}.ctl"));
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.starts_with('.') && (name.ends_with(&data) || name.ends_with(&ctl))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The publisher laps its ring and exits while the sending bridge is dead,
/// and the ring's names are removed: the export hold keeps the ring, so the
/// restarted bridge still sends the exact GAP, the rest of the tail and END.
#[test]
fn untethered_export_ends_exactly_when_the_publisher_exits_while_the_sender_is_dead() {
    exit_while_dead("exitkill", "untethered", None);
}

/// Tethered, once the durable lease of the dead bridge's slot has passed
/// the publisher laps its ring and exits: the same exact GAP, tail and END.
#[test]
fn tethered_export_ends_exactly_when_the_publisher_exits_after_the_lease() {
    exit_while_dead("exitlease", "tethered", Some("durable_lease_ms = 1000\n"));
}

fn exit_while_dead(tag: &'static str, mode: &str, config: Option<&str>) {
    const BEFORE: u64 = 500;
    const WHILE_DEAD: u64 = 3000;
    let _watchdog = Watchdog::new(tag, Duration::from_secs(120));
    let dir = TestDir::new(tag);
    let conf = dir.join("sender.toml");
    let mut extra = Vec::new();
    if let Some(text) = config {
        std::fs::write(&conf, text).unwrap();
        extra = vec!["--config", conf.to_str().unwrap()];
    }
    let (mut sender, receiver, addr, root_s, root_r) = start_pair_with(&dir, mode, &extra);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let sub = spawn_event_subscriber(&root_r, Arc::clone(&stop), Arc::clone(&seen));
    let count = || seen.lock().unwrap().messages.len();

    // A small ring: the messages sent while the bridge is dead lap it.
    let bus_s = Bus::builder()
        .root(&root_s)
        .name("b")
        .capacity(64 << 10)
        .max_message(1024)
        .build()
        .unwrap();
    let topic_dir = bus_s.topic_dir("tele").unwrap();
    let mut publisher = bus_s.publisher_named::<Tele>("tele", "pub").unwrap();
    let mut seq = 0;
    let mut send_paced = |n: u64, publisher: &mut shmbus::Publisher<Tele>| {
        for _ in 0..n {
            publisher.send(&Tele::new(0, seq)).unwrap();
            seq += 1;
            if seq % 16 == 0 {
                thread::sleep(Duration::from_millis(2));
            }
        }
    };
    send_paced(1, &mut publisher);
    receiver.wait_log("starts at position", Duration::from_secs(20));
    send_paced(BEFORE - 1, &mut publisher);
    wait_until(
        "the first messages delivered",
        Duration::from_secs(30),
        || count() >= BEFORE as usize,
    );
    // The export stream holds the ring for its peer: data and control link.
    assert_eq!(
        export_hold_files(&topic_dir).len(),
        2,
        "no export hold beside the exported ring"
    );
    let ring = ring_files(&topic_dir).pop().expect("the publisher's ring");
    sender.kill9();
    // Tethered, the dead bridge's durable slot holds the publisher back
    // until its lease passes; then the publisher laps the ring.
    send_paced(WHILE_DEAD, &mut publisher);
    // The publisher exits while the bridge is dead: the last user of the
    // ring removes its names (the dead bridge's untethered slot, or durable
    // slot past its lease, owes nothing).
    drop(publisher);
    wait_until("the ring's names removed", Duration::from_secs(20), || {
        !ring.exists()
    });
    assert!(!shmbus_bus::control_path_of(&ring).exists());
    assert_eq!(
        export_hold_files(&topic_dir).len(),
        2,
        "the export hold went with the ring's names"
    );
    let total = BEFORE + WHILE_DEAD;
    sender.restart(Some(&addr));
    let gap = sender.wait_log("are lost (next message ", Duration::from_secs(30));
    let next_seq: u64 = gap
        .rsplit("(next message ")
        .next()
        .and_then(|s| s.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no next message in {gap:?}"));
    assert!(
        next_seq > BEFORE && next_seq < total,
        "the ring was lapped and still held a tail: next message {next_seq}"
    );
    wait_until(
        "the rest of the tail delivered",
        Duration::from_secs(40),
        || count() >= (total - (next_seq - BEFORE)) as usize,
    );
    receiver.wait_log("ended at position", Duration::from_secs(30));
    // END: the replica holding the tail is reported gone to the subscriber.
    wait_until(
        "the publisher reported gone",
        Duration::from_secs(30),
        || {
            let seen = seen.lock().unwrap();
            let last = &seen.messages.last().unwrap().1;
            seen.gone.contains(last)
        },
    );
    // Finished: the peer acknowledged END and the hold is removed.
    wait_until("the export hold removed", Duration::from_secs(30), || {
        export_hold_files(&topic_dir).is_empty()
    });
    // A little longer, so late events (a duplicate, a second gap) show.
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    sub.join().unwrap();
    let seen = seen.lock().unwrap();
    let seqs: Vec<u64> = seen.messages.iter().map(|(s, _)| *s).collect();
    let expected: Vec<u64> = (0..BEFORE).chain(next_seq..total).collect();
    assert_eq!(
        seqs.len(),
        expected.len(),
        "got {} messages, expected {} (gap reported up to {next_seq})",
        seqs.len(),
        expected.len()
    );
    assert_eq!(
        seqs, expected,
        "messages missing, duplicated or out of order"
    );
    assert_eq!(
        seen.lost,
        next_seq - BEFORE,
        "the subscriber's Lost count is not exactly the missing messages"
    );
    // The receiver counts the GAP's messages (the restarted sender cannot:
    // it never saw the sequence number where the hole starts). The stats
    // file is rewritten every second.
    let lost_stat = || -> u64 {
        receiver
            .stats("stream")
            .iter()
            .filter_map(|l| l.get("lost_messages")?.parse::<u64>().ok())
            .sum()
    };
    wait_until("the lost messages counted", Duration::from_secs(20), || {
        lost_stat() >= next_seq - BEFORE
    });
    assert_eq!(lost_stat(), next_seq - BEFORE, "receiver's lost_messages");
    assert!(ring_files(&topic_dir).is_empty());
}
