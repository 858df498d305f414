//! The metrics endpoint of two real `shmbus-bridge` processes after a real
//! message flow, scraped over HTTP (with `curl` when installed), and the
//! catalog finding a ring created after start-up through inotify alone (the
//! safety-net rescan is set to 60 s, longer than the test waits).

mod common;

use std::{io::Write as _, net::TcpStream, time::Duration};

use common::{http_get, metric, wait_until, Daemon, Tele, TestDir, Watchdog};
use shmbus::Bus;
use shmbus_bus::{StartAt, WaitStrategy};

const MESSAGES: u64 = 200;

/// The address logged in the daemon's "serving metrics on" line.
fn metrics_addr(d: &Daemon) -> String {
    let line = d.wait_log("serving metrics on ", Duration::from_secs(20));
    line.rsplit("serving metrics on ")
        .next()
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn metrics_count_a_real_flow_and_inotify_finds_new_rings() {
    let _watchdog = Watchdog::new("metrics", Duration::from_secs(240));
    let dir = TestDir::new("ops-metrics");
    let keys = dir.keys(&["alpha", "beta"]);
    let (root_a, root_b) = (dir.join("a"), dir.join("b"));
    let mut args_a: Vec<String> = keys.args("alpha");
    args_a.extend(
        [
            "--node-name",
            "alpha",
            "--bus",
            "b",
            "--root",
            root_a.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--rescan-interval-ms",
            "60000",
            "--export",
            "tele",
        ]
        .map(String::from),
    );
    let a = Daemon::start(
        "alpha",
        &dir,
        &args_a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let a_addr = a.listen_addr();
    let a_metrics = metrics_addr(&a);
    let mut args_b: Vec<String> = keys.args("beta");
    let peer = format!("alpha={a_addr}");
    args_b.extend(
        [
            "--node-name",
            "beta",
            "--bus",
            "b",
            "--root",
            root_b.to_str().unwrap(),
            "--listen",
            "off",
            "--metrics-listen",
            "127.0.0.1:0",
            "--peer",
            &peer,
            "--import",
            "*",
        ]
        .map(String::from),
    );
    let b = Daemon::start(
        "beta",
        &dir,
        &args_b.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let b_metrics = metrics_addr(&b);
    b.wait_log("connected to peer alpha", Duration::from_secs(30));

    // The ring appears only now: with a 60 s rescan, only inotify can
    // make the catalog see it within the wait below.
    let bus_a = Bus::builder().root(&root_a).name("b").build().unwrap();
    let mut publisher = bus_a.publisher_named::<Tele>("tele", "pub0").unwrap();
    let bus_b = Bus::builder().root(&root_b).name("b").build().unwrap();
    let mut got = 0u64;
    let mut sub = None;
    wait_until(
        "the remote replica of tele/pub0",
        Duration::from_secs(40),
        || {
            if sub.is_none() {
                // The subscriber opens once the replica ring exists.
                sub = bus_b
                    .subscriber_with::<Tele>("tele", StartAt::Oldest, WaitStrategy::default())
                    .ok();
            }
            publisher.send(&Tele::new(0, got)).unwrap();
            got += 1;
            std::thread::sleep(Duration::from_millis(50));
            common::ring_files(&root_b.join("b").join("tele")).len() == 1
        },
    );
    for seq in got..MESSAGES {
        publisher.send(&Tele::new(0, seq)).unwrap();
    }
    let sent = MESSAGES.max(got);
    let sub = sub.get_or_insert_with(|| {
        bus_b
            .subscriber_with::<Tele>("tele", StartAt::Oldest, WaitStrategy::default())
            .unwrap()
    });
    let mut received = 0u64;
    wait_until("every message at beta", Duration::from_secs(60), || {
        while let Ok(m) = sub.recv_timeout(Duration::from_millis(20)) {
            assert!(common::check_body(&m));
            received += 1;
        }
        received >= sent
    });
    assert_eq!(received, sent);

    // A connection that is not a bridge: counted as malformed.
    let mut junk = TcpStream::connect(&a_addr).unwrap();
    junk.write_all(&[0xAB; 64]).unwrap();
    drop(junk);

    let id = publisher.id().to_owned();
    let out = format!("peer=\"beta\",dir=\"out\",topic=\"tele\",publisher=\"{id}\"");
    let inn = format!("peer=\"alpha\",dir=\"in\",topic=\"tele\",publisher=\"{id}\"");
    let (out, inn) = (out.as_str(), inn.as_str());
    let mut page_a = String::new();
    wait_until(
        "alpha's metrics to count the flow",
        Duration::from_secs(30),
        || {
            let (code, body) = http_get(&a_metrics, "/metrics");
            assert_eq!(code, 200);
            page_a = body;
            metric(&page_a, "shmbus_bridge_stream_messages_total", out) == Some(sent as f64)
                && metric(
                    &page_a,
                    "shmbus_bridge_handshake_failures_total",
                    "reason=\"malformed\"",
                )
                .is_some_and(|v| v >= 1.0)
        },
    );
    let bytes_out = metric(&page_a, "shmbus_bridge_stream_bytes_total", out).unwrap();
    assert!(bytes_out > 0.0, "{page_a}");
    assert!(metric(&page_a, "shmbus_bridge_stream_frames_total", out).unwrap() >= 1.0);
    assert_eq!(
        metric(&page_a, "shmbus_bridge_peer_connected", "peer=\"beta\""),
        Some(1.0)
    );
    assert_eq!(
        metric(&page_a, "shmbus_bridge_connected_peers", ""),
        Some(1.0)
    );
    assert_eq!(
        metric(&page_a, "shmbus_bridge_stream_gaps_total", out),
        Some(0.0)
    );
    assert_eq!(
        metric(&page_a, "shmbus_bridge_stream_lost_messages_total", out),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &page_a,
            "shmbus_bridge_handshake_failures_total",
            "reason=\"unknown_key\""
        ),
        Some(0.0)
    );
    assert!(metric(&page_a, "shmbus_bridge_uptime_seconds", "node=\"alpha\"").is_some());
    assert!(page_a.contains("# TYPE shmbus_bridge_stream_messages_total counter\n"));

    let mut page_b = String::new();
    wait_until(
        "beta's metrics to count the flow",
        Duration::from_secs(30),
        || {
            page_b = http_get(&b_metrics, "/metrics").1;
            metric(&page_b, "shmbus_bridge_stream_messages_total", inn) == Some(sent as f64)
        },
    );
    assert_eq!(
        metric(&page_b, "shmbus_bridge_stream_bytes_total", inn),
        Some(bytes_out),
        "both sides count the same ring bytes"
    );

    // Anything but GET /metrics is 404.
    assert_eq!(http_get(&a_metrics, "/").0, 404);
    assert_eq!(http_get(&a_metrics, "/metricsx").0, 404);
}
