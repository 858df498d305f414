//! Two `shmbus-zenoh` processes in Zenoh peer mode on 127.0.0.1 (explicit
//! endpoints, no scouting) between two private bus roots: typed messages
//! cross complete, in order and intact; a subscriber of another type is
//! refused; nothing loops back; one gateway per bus; a gateway killed and
//! restarted is seen gone and back, with nothing delivered twice; the
//! export holds no subscriber slot.

mod common;

use std::{
    collections::HashSet,
    path::Path,
    time::{Duration, Instant},
};

use common::{check_body, pair, Gw, Other, Tele, TestDir, Watchdog};
use shmbus::{Bus, Subscriber, TopicEvent};
use shmbus_bus::{StartAt, WaitStrategy};

fn bus(root: &Path) -> Bus {
    Bus::builder().root(root).name("b").build().unwrap()
}

/// Publishes on `ready` from `from` until a subscriber on `to` sees one:
/// then Zenoh has routed `to`'s subscription to `from`.
fn wait_routed(from: &Bus, to: &Bus) {
    let mut sub = to
        .subscriber_with::<u64>("ready", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut publisher = from.publisher::<u64>("ready").unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    for n in 0u64.. {
        assert!(Instant::now() < end, "the gateways never routed a message");
        publisher.send(&n).unwrap();
        if sub.recv_timeout(Duration::from_millis(50)).is_ok() {
            return;
        }
    }
}

/// `tele` one way: gateway `a` exports `tele` and `ready` (with
/// `a_extra` flags), `b` imports them; routed, with a subscriber of
/// `tele` on bus b.
struct OneWay {
    a: Gw,
    _b: Gw,
    bus_a: Bus,
    bus_b: Bus,
    sub: Subscriber<Tele>,
}

fn one_way(dir: &TestDir, a_extra: &[&str]) -> OneWay {
    let mut a_args = vec!["--export", "tele", "--export", "ready"];
    a_args.extend(a_extra);
    let (a, b) = pair(
        dir,
        &a_args,
        &["--import", "shmbus/b/tele", "--import", "shmbus/b/ready"],
    );
    let (bus_a, bus_b) = (bus(&dir.join("a")), bus(&dir.join("b")));
    wait_routed(&bus_a, &bus_b);
    let sub = bus_b
        .subscriber_with::<Tele>("tele", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    OneWay {
        a,
        _b: b,
        bus_a,
        bus_b,
        sub,
    }
}

/// Receives until `want` messages arrived or `timeout`: (publisher id, seq).
fn receive(sub: &mut Subscriber<Tele>, want: usize, timeout: Duration) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    let end = Instant::now() + timeout;
    while got.len() < want && Instant::now() < end {
        match sub.recv_timeout(Duration::from_millis(100)) {
            Ok(m) => {
                assert!(check_body(&m), "message {} corrupt", m.seq.to_native());
                got.push((m.publisher().to_owned(), m.seq.to_native()));
            }
            Err(shmbus::Error::Timeout(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    got
}

/// `got` is exactly messages `0..n`, in order; says where it is not.
fn assert_in_order(got: &[(String, u64)], n: u64) {
    for (i, (p, seq)) in got.iter().enumerate() {
        assert_eq!(
            *seq,
            i as u64,
            "message {i} is {seq} (from {p}); {} received",
            got.len()
        );
    }
    assert_eq!(got.len() as u64, n, "received {} of {n}", got.len());
}

#[test]
fn typed_messages_cross_in_order_and_a_wrong_type_is_refused() {
    let _w = Watchdog::new("typed_messages_cross", Duration::from_secs(90));
    let dir = TestDir::new("typed");
    let mut w = one_way(&dir, &[]);
    let mut publisher = w.bus_a.publisher::<Tele>("tele").unwrap();
    const N: u64 = 5000;
    let sender = std::thread::spawn(move || {
        for seq in 0..N {
            publisher.send(&Tele::new(0, seq)).unwrap();
        }
        publisher
    });
    let got = receive(&mut w.sub, N as usize, Duration::from_secs(60));
    let _publisher = sender.join().unwrap();
    // The export reads as an observer: no subscriber slot on the local
    // ring, so the network never holds the local publisher back.
    let ring = &shmbus_bus::list_rings(&dir.join("a/b/tele")).unwrap()[0];
    let status = shmbus_bus::RingStatus::read(&ring.data_path).unwrap();
    assert!(status.subscribers.is_empty(), "{:?}", status.subscribers);
    assert_eq!(
        status.full_events, 0,
        "the publisher never found its ring full"
    );
    assert_in_order(&got, N);
    let replica = &got[0].0;
    assert!(
        replica.starts_with("z-gw-a."),
        "a replica of gw-a: {replica}"
    );
    assert!(got.iter().all(|(p, _)| p == replica), "one replica ring");
    assert_eq!(w.sub.lost_messages(), 0);
    // The replica carries the remote type: another type is refused.
    match w.bus_b.subscriber::<Other>("tele") {
        Err(shmbus::Error::TypeMismatch { .. }) => {}
        other => panic!("a subscriber of another type: {other:?}"),
    }
}

/// Two publishers of one topic, sending in turn: the importer's samples
/// alternate between two streams (its lookup of the last sample's stream
/// misses every time), and each stream still arrives whole, in order, in
/// its own replica.
#[test]
fn interleaved_publishers_of_one_topic_each_arrive_in_order() {
    let _w = Watchdog::new("interleaved_publishers", Duration::from_secs(90));
    let dir = TestDir::new("interleaved");
    let mut w = one_way(&dir, &[]);
    let mut p0 = w.bus_a.publisher::<Tele>("tele").unwrap();
    let mut p1 = w.bus_a.publisher::<Tele>("tele").unwrap();
    const N: u64 = 2000;
    for seq in 0..N {
        p0.send(&Tele::new(0, seq)).unwrap();
        p1.send(&Tele::new(1, seq)).unwrap();
    }
    let got = receive(&mut w.sub, 2 * N as usize, Duration::from_secs(60));
    let replicas: HashSet<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(replicas.len(), 2, "one replica per publisher: {replicas:?}");
    for replica in replicas {
        let mine: Vec<(String, u64)> = got.iter().filter(|(p, _)| p == replica).cloned().collect();
        assert_in_order(&mine, N);
    }
    assert_eq!(w.sub.lost_messages(), 0);
}

/// `--export-spin-us`: bursts with idle gaps longer than the window (the
/// export thread polls, then sleeps, then is woken) all arrive in order;
/// idle, the gateway sleeps (no thread keeps polling past its window).
#[test]
fn an_export_spin_window_delivers_every_burst_then_sleeps() {
    let _w = Watchdog::new("export_spin", Duration::from_secs(90));
    let dir = TestDir::new("spin");
    let mut w = one_way(&dir, &["--export-spin-us", "2000"]);
    let mut publisher = w.bus_a.publisher::<Tele>("tele").unwrap();
    const BURSTS: u64 = 20;
    const PER_BURST: u64 = 50;
    let mut got = Vec::new();
    for burst in 0..BURSTS {
        for i in 0..PER_BURST {
            publisher
                .send(&Tele::new(0, burst * PER_BURST + i))
                .unwrap();
        }
        got.extend(receive(
            &mut w.sub,
            PER_BURST as usize,
            Duration::from_secs(20),
        ));
        // Past the 2 ms window: the next burst finds the thread asleep.
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_in_order(&got, BURSTS * PER_BURST);
    // Idle: two threads of `a` export (`tele`, `ready`) with a 2 ms
    // window each. Polling without end would cost about a core (1 s of
    // CPU per second); asleep, the gateway uses a few ms for its scans.
    std::thread::sleep(Duration::from_millis(200));
    let before = w.a.cpu_time().expect("gw-a runs");
    std::thread::sleep(Duration::from_secs(1));
    let used = w.a.cpu_time().expect("gw-a runs") - before;
    assert!(
        used < Duration::from_millis(300),
        "an idle gateway used {used:?} of CPU in 1 s"
    );
}

#[test]
fn nothing_loops_back_between_two_gateways_that_export_and_import_a_topic() {
    let _w = Watchdog::new("nothing_loops_back", Duration::from_secs(90));
    let dir = TestDir::new("loop");
    let rules = [
        "--export",
        "tele",
        "--export",
        "ready",
        "--import",
        "shmbus/b/tele",
        "--import",
        "shmbus/b/ready",
    ];
    let (_a, _b) = pair(&dir, &rules, &rules);
    let (bus_a, bus_b) = (bus(&dir.join("a")), bus(&dir.join("b")));
    wait_routed(&bus_a, &bus_b);
    wait_routed(&bus_b, &bus_a);
    let mut local = bus_a
        .subscriber_with::<Tele>("tele", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut remote = bus_b
        .subscriber_with::<Tele>("tele", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut publisher = bus_a.publisher::<Tele>("tele").unwrap();
    const N: u64 = 1000;
    for seq in 0..N {
        publisher.send(&Tele::new(0, seq)).unwrap();
    }
    let at_b = receive(&mut remote, N as usize, Duration::from_secs(30));
    assert_eq!(at_b.len(), N as usize);
    // Long enough for an echo to have come back, had there been one.
    let at_a = receive(&mut local, N as usize + 1, Duration::from_secs(3));
    assert_eq!(at_a.len(), N as usize, "each message once on its own bus");
    let echoes: Vec<_> = std::fs::read_dir(dir.join("a/b/tele"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("z-"))
        .collect();
    assert!(
        echoes.is_empty(),
        "a replica came back to the origin: {echoes:?}"
    );
}

#[test]
fn a_second_gateway_on_a_bus_is_refused_with_a_clear_error() {
    let _w = Watchdog::new("second_gateway", Duration::from_secs(60));
    let dir = TestDir::new("second");
    let root = dir.join("a");
    let root = root.to_str().unwrap();
    let first = Gw::start("gw-1", &["--root", root, "--bus", "b"]);
    first.wait_log("exporting under", Duration::from_secs(20));
    let mut second = Gw::start("gw-2", &["--root", root, "--bus", "b"]);
    let status = second.wait_exit(Duration::from_secs(20)).expect("it exits");
    assert!(!status.success());
    let line = second.wait_log("already runs on this bus", Duration::from_secs(1));
    assert!(line.contains(".shmbus-zenoh.lock"), "{line}");
    // Another bus on the same root is another lock.
    let other = Gw::start("gw-3", &["--root", root, "--bus", "c"]);
    other.wait_log("exporting under", Duration::from_secs(20));
}

#[test]
fn a_killed_gateway_is_seen_gone_and_back_and_nothing_arrives_twice() {
    let _w = Watchdog::new("killed_gateway", Duration::from_secs(120));
    let dir = TestDir::new("kill");
    let (mut a, _b) = pair(
        &dir,
        &["--export", "tele", "--export", "ready"],
        &["--import", "shmbus/b/tele", "--import", "shmbus/b/ready"],
    );
    let (bus_a, bus_b) = (bus(&dir.join("a")), bus(&dir.join("b")));
    wait_routed(&bus_a, &bus_b);
    let mut sub = bus_b
        .subscriber_with::<Tele>("tele", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut publisher = bus_a.publisher::<Tele>("tele").unwrap();
    const N: u64 = 3000;
    for seq in 0..1000 {
        publisher.send(&Tele::new(0, seq)).unwrap();
    }
    let mut got = receive(&mut sub, 1000, Duration::from_secs(30));
    assert_eq!(got.len(), 1000);
    let first_replica = got[0].0.clone();

    a.kill9();
    // The remote publisher's replica is closed: subscribers see it gone.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < end,
            "the replica of the killed gateway never went"
        );
        let _ = sub.try_recv();
        if sub.take_events().iter().any(
            |e| matches!(e, TopicEvent::PublisherGone { publisher } if *publisher == first_replica),
        ) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Published while the gateway is down: kept by the local ring.
    for seq in 1000..2000 {
        publisher.send(&Tele::new(0, seq)).unwrap();
    }
    a.restart();
    a.wait_log("exporting under", Duration::from_secs(20));
    for seq in 2000..N {
        publisher.send(&Tele::new(0, seq)).unwrap();
    }
    got.extend(receive(
        &mut sub,
        (N - 1000) as usize,
        Duration::from_secs(60),
    ));
    assert_in_order(&got, N);
    let replicas: HashSet<&String> = got.iter().map(|(p, _)| p).collect();
    assert_eq!(
        replicas.len(),
        2,
        "the stream went on in a new replica: {replicas:?}"
    );
    assert_eq!(sub.lost_messages(), 0);
    assert!(sub.take_events().iter().any(
        |e| matches!(e, TopicEvent::PublisherJoined { publisher } if *publisher != first_replica)
    ));
}

#[test]
fn a_stopped_gateway_closes_its_replicas_and_exits_cleanly() {
    let _w = Watchdog::new("stopped_gateway", Duration::from_secs(60));
    let dir = TestDir::new("stop");
    let (_a, mut b) = pair(
        &dir,
        &["--export", "tele", "--export", "ready"],
        &["--import", "shmbus/b/tele", "--import", "shmbus/b/ready"],
    );
    let (bus_a, bus_b) = (bus(&dir.join("a")), bus(&dir.join("b")));
    wait_routed(&bus_a, &bus_b);
    let mut sub = bus_b
        .subscriber_with::<Tele>("tele", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut publisher = bus_a.publisher::<Tele>("tele").unwrap();
    for seq in 0..10 {
        publisher.send(&Tele::new(0, seq)).unwrap();
    }
    let got = receive(&mut sub, 10, Duration::from_secs(20));
    assert_in_order(&got, 10);
    let status = b.terminate().expect("it exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    b.wait_log("stopped: exported=", Duration::from_secs(1));
    // Its replica is closed: the subscriber sees the publisher gone.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < end, "the replica was not closed");
        let _ = sub.try_recv();
        if sub
            .take_events()
            .iter()
            .any(|e| matches!(e, TopicEvent::PublisherGone { publisher } if *publisher == got[0].0))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
