//! Three hosts (network namespaces on one Linux bridge, as on a switch),
//! each running a gateway in Zenoh peer mode that finds the others by
//! multicast scouting. Publishers on two hosts, subscribers on all three:
//! every subscriber receives every message of both publishers, in order
//! per publisher, intact, and nothing twice (each gateway exports and
//! imports the topic: nothing loops). A gateway SIGKILLed and restarted:
//! the other hosts' subscribers see its publisher gone and back, and
//! still receive every message once.

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::{check_body, Gw, Tele, TestDir, Watchdog};
use shmbus::{Bus, TopicEvent};
use shmbus_bus::{StartAt, WaitStrategy};
use shmbus_tests::netns::{self, Lan};

const N: u64 = 2000;

/// Three hosts, each with a bus root and a gateway that exports and
/// imports `tele`, all present to each other. Fields drop in order: the
/// gateways before the namespaces they run in.
struct Hosts {
    gws: Vec<Gw>,
    buses: Vec<Bus>,
    _dir: TestDir,
    _lan: Lan,
}

fn hosts(tag: &str) -> Option<Hosts> {
    if let Err(why) = netns::available() {
        eprintln!("skipped: {why}");
        return None;
    }
    let lan = Lan::create(3).unwrap();
    let dir = TestDir::new(tag);
    let roots: Vec<_> = (0..3).map(|i| dir.join(&format!("host{i}"))).collect();
    let gws: Vec<Gw> = (0..3)
        .map(|i| {
            let listen = format!("tcp/{}:7447", lan.addr(i));
            Gw::start_in(
                Some(lan.ns(i)),
                &format!("host{i}"),
                &[
                    "--root",
                    roots[i].to_str().unwrap(),
                    "--bus",
                    "b",
                    "--listen",
                    &listen,
                    "--export",
                    "tele",
                    "--import",
                    "shmbus/b/tele",
                ],
            )
        })
        .collect();
    wait_all_present(&gws, 0);
    let buses = roots
        .iter()
        .map(|r| Bus::builder().root(r).name("b").build().unwrap())
        .collect();
    Some(Hosts {
        gws,
        buses,
        _dir: dir,
        _lan: lan,
    })
}

/// Each gateway's subscriptions precede its liveliness token: once every
/// gateway saw the other two (more than `before` times), every
/// subscription is routed everywhere.
fn wait_all_present(gws: &[Gw], before: usize) {
    for g in gws {
        for other in 0..3 {
            let line = format!("gateway host{other} present");
            if format!("host{other}") != g.name {
                let end = Instant::now() + Duration::from_secs(30);
                while g.count_log(&line) <= before {
                    assert!(Instant::now() < end, "{}: never saw host{other}", g.name);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

#[test]
fn two_publishers_reach_subscribers_on_three_hosts_in_order() {
    let _w = Watchdog::new("three_hosts", Duration::from_secs(120));
    let Some(h) = hosts("three") else { return };
    let buses = &h.buses;
    let mut subs: Vec<_> = buses
        .iter()
        .map(|b| {
            b.subscriber_with::<Tele>("tele", StartAt::Oldest, WaitStrategy::default())
                .unwrap()
        })
        .collect();
    let senders: Vec<_> = [0usize, 1]
        .into_iter()
        .map(|h| {
            let mut p = buses[h].publisher::<Tele>("tele").unwrap();
            std::thread::spawn(move || {
                for seq in 0..N {
                    p.send(&Tele::new(h as u32, seq)).unwrap();
                }
                p
            })
        })
        .collect();
    let end = Instant::now() + Duration::from_secs(60);
    for (host, sub) in subs.iter_mut().enumerate() {
        // Per publisher (0 and 1): the next number expected.
        let mut next: HashMap<u32, u64> = HashMap::new();
        while next.values().sum::<u64>() < 2 * N {
            assert!(
                Instant::now() < end,
                "host {host} received {next:?} of {N} per publisher"
            );
            match sub.recv_timeout(Duration::from_millis(100)) {
                Ok(m) => {
                    assert!(check_body(&m), "host {host}: corrupt message");
                    let (p, seq) = (m.publisher.to_native(), m.seq.to_native());
                    let want = next.entry(p).or_insert(0);
                    assert_eq!(seq, *want, "host {host}: publisher {p} out of order");
                    *want += 1;
                }
                Err(shmbus::Error::Timeout(_)) => {}
                Err(e) => panic!("host {host}: {e}"),
            }
        }
        assert_eq!(sub.lost_messages(), 0, "host {host}");
        // Two publishers: each host sees exactly two (one may be local).
        assert_eq!(
            sub.publishers().len(),
            2,
            "host {host}: {:?}",
            sub.publishers()
        );
    }
    let _publishers: Vec<_> = senders.into_iter().map(|s| s.join().unwrap()).collect();
}

#[test]
fn a_gateway_killed_and_restarted_is_seen_gone_and_back_on_the_other_hosts() {
    let _w = Watchdog::new("three_hosts_kill", Duration::from_secs(120));
    let Some(mut h) = hosts("three-kill") else {
        return;
    };
    let mut subs: Vec<_> = [1usize, 2]
        .into_iter()
        .map(|i| {
            h.buses[i]
                .subscriber_with::<Tele>("tele", StartAt::Oldest, WaitStrategy::default())
                .unwrap()
        })
        .collect();
    let mut publisher = h.buses[0].publisher::<Tele>("tele").unwrap();
    let mut received: Vec<Vec<(String, u64)>> = vec![Vec::new(); 2];
    for seq in 0..500 {
        publisher.send(&Tele::new(0, seq)).unwrap();
    }
    receive_until(
        &mut subs,
        &mut received,
        500,
        Duration::from_secs(30),
        "before the kill",
    );
    let first = received[0][0].0.clone();
    let present_before: Vec<usize> = [1, 2]
        .iter()
        .map(|&i| h.gws[i].count_log("gateway host0 present"))
        .collect();
    h.gws[0].kill9();
    // Both other hosts close host0's replica: their subscribers see it gone.
    for (i, sub) in subs.iter_mut().enumerate() {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < end,
                "host {}: the replica of host0 never went",
                i + 1
            );
            let _ = sub.try_recv();
            if sub.take_events().iter().any(
                |e| matches!(e, TopicEvent::PublisherGone { publisher } if publisher.starts_with("z-host0.")),
            ) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for seq in 500..1000 {
        publisher.send(&Tele::new(0, seq)).unwrap();
    }
    h.gws[0].restart();
    let end = Instant::now() + Duration::from_secs(30);
    for (&i, &before) in [1, 2].iter().zip(&present_before) {
        while h.gws[i].count_log("gateway host0 present") <= before {
            assert!(Instant::now() < end, "host {i}: host0 never came back");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The restarted gateway sends 500..1000 from its ring. Send more only
    // once both hosts have them: while Zenoh's peers are still settling
    // their links to the new session, a burst can be missed (seen once
    // in CI under load, cause not pinned down); that is not what this
    // test is about.
    receive_until(
        &mut subs,
        &mut received,
        1000,
        Duration::from_secs(30),
        "after the restart, before the last burst",
    );
    for seq in 1000..1500 {
        publisher.send(&Tele::new(0, seq)).unwrap();
    }
    receive_until(
        &mut subs,
        &mut received,
        1500,
        Duration::from_secs(60),
        "after the restart",
    );
    for (i, got) in received.iter().enumerate() {
        let seqs: Vec<u64> = got.iter().map(|(_, s)| *s).collect();
        assert!(
            seqs == (0..1500).collect::<Vec<_>>(),
            "host {}: not 0..1500 once in order",
            i + 1
        );
        assert!(
            got.iter().any(|(p, _)| *p != first),
            "host {}: no new replica",
            i + 1
        );
    }
    for (i, sub) in subs.iter().enumerate() {
        assert_eq!(sub.lost_messages(), 0, "host {}", i + 1);
    }
}

/// Drains `subs` into `received` until each has `n` messages (each body
/// checked); panics after `timeout`, naming `what` and the counts.
fn receive_until(
    subs: &mut [shmbus::Subscriber<Tele>],
    received: &mut [Vec<(String, u64)>],
    n: usize,
    timeout: Duration,
    what: &str,
) {
    let end = Instant::now() + timeout;
    while received.iter().any(|g| g.len() < n) {
        assert!(
            Instant::now() < end,
            "{what}: {:?}",
            received.iter().map(Vec::len).collect::<Vec<_>>()
        );
        for (sub, got) in subs.iter_mut().zip(received.iter_mut()) {
            while let Ok(Some(m)) = sub.try_recv() {
                assert!(check_body(&m));
                got.push((m.publisher().to_owned(), m.seq.to_native()));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
