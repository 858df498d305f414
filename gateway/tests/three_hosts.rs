//! Three hosts (network namespaces on one Linux bridge, as on a switch),
//! each running a gateway in Zenoh peer mode that finds the others by
//! multicast scouting. Publishers on two hosts, subscribers on all three:
//! every subscriber receives every message of both publishers, in order
//! per publisher, intact, and nothing twice (each gateway exports and
//! imports the topic: nothing loops).

mod common;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use common::{check_body, Gw, Tele, TestDir, Watchdog};
use shmbus::Bus;
use shmbus_bus::{StartAt, WaitStrategy};
use shmbus_tests::netns::{self, Lan};

const N: u64 = 2000;

#[test]
fn two_publishers_reach_subscribers_on_three_hosts_in_order() {
    if let Err(why) = netns::available() {
        eprintln!("skipped: {why}");
        return;
    }
    let _w = Watchdog::new("three_hosts", Duration::from_secs(120));
    let lan = Lan::create(3).unwrap();
    let dir = TestDir::new("three");
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
    // Each gateway's subscriptions precede its liveliness token: once every
    // gateway saw the other two, every subscription is routed everywhere.
    for g in &gws {
        for other in 0..3 {
            if format!("host{other}") != g.name {
                g.wait_log(
                    &format!("gateway host{other} present"),
                    Duration::from_secs(30),
                );
            }
        }
    }
    let buses: Vec<Bus> = roots
        .iter()
        .map(|r| Bus::builder().root(r).name("b").build().unwrap())
        .collect();
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
    drop(gws);
}
