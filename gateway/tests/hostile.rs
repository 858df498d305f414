//! A hostile Zenoh peer (this test process, a plain Zenoh session) sends
//! samples a gateway must refuse: malformed attachments, names that would
//! be paths, its own node name as origin, and publishers without end. Each
//! is refused and counted, nothing is written outside the bus, and the
//! streams an importer keeps are bounded.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, plain_zenoh, wait_matching, Gw, TestDir, Watchdog};
use shmbus_zenoh::{
    import::MAX_STREAMS,
    meta::{Kind, Meta},
};
use zenoh::Wait;

fn meta(origin: &str, publisher: &str, seq: u64) -> Meta {
    Meta {
        kind: Kind::Message,
        seq,
        origin: origin.into(),
        publisher: publisher.into(),
        type_name: "t".into(),
        type_fingerprint: 1,
    }
}

#[test]
fn hostile_samples_are_refused_and_streams_are_bounded() {
    let _w = Watchdog::new("hostile", Duration::from_secs(120));
    let dir = TestDir::new("hostile");
    let root = dir.join("a");
    let listen = format!("tcp/127.0.0.1:{}", free_port());
    let gw = Gw::start(
        "gw-a",
        &[
            "--root",
            root.to_str().unwrap(),
            "--bus",
            "b",
            "--listen",
            &listen,
            "--import",
            "shmbus/b/**",
            "--import-capacity",
            "4096",
        ],
    );
    gw.wait_log("exporting under", Duration::from_secs(20));
    let session = plain_zenoh(&listen);
    let publisher = session.declare_publisher("shmbus/b/tele").wait().unwrap();
    wait_matching(&publisher);

    // Malformed: no attachment (not a raw import), garbage, truncated,
    // a path as publisher (hand-encoded: `Meta` would not make it), and
    // this gateway's own name as origin.
    publisher.put(b"x".to_vec()).wait().unwrap();
    publisher
        .put(b"x".to_vec())
        .attachment(b"garbage".to_vec())
        .wait()
        .unwrap();
    let good = meta("peer", "p", 0).encode();
    publisher
        .put(b"x".to_vec())
        .attachment(good[..good.len() - 1].to_vec())
        .wait()
        .unwrap();
    // Up to the publisher's length byte: magic, kind, reserved, seq,
    // fingerprint (24 bytes), then the origin's length and name.
    let at = 24 + 1 + "peer".len();
    let mut path = good[..at].to_vec();
    path.push(3);
    path.extend_from_slice(b"../");
    path.extend_from_slice(&1u16.to_le_bytes());
    path.push(b't');
    publisher
        .put(b"x".to_vec())
        .attachment(path)
        .wait()
        .unwrap();
    publisher
        .put(b"x".to_vec())
        .attachment(meta("gw-a", "p", 0).encode())
        .wait()
        .unwrap();
    let refused_now = |gw: &Gw| gw.stats()["import_refused"];
    let end = Instant::now() + Duration::from_secs(20);
    while refused_now(&gw) < 4 {
        assert!(
            Instant::now() < end,
            "refusals not counted: {:?}",
            gw.stats()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The own-origin sample is dropped silently (a loop, not an attack).
    assert_eq!(gw.stats()["imported"], 0);

    // Publishers without end: at most MAX_STREAMS replicas.
    let extra = 20;
    for i in 0..MAX_STREAMS + extra {
        publisher
            .put(b"y".to_vec())
            .attachment(meta("peer", &format!("p{i}"), 0).encode())
            .wait()
            .unwrap();
    }
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let s = gw.stats();
        if s["imported"] + s["import_refused"] >= (MAX_STREAMS + extra + 4) as u64 {
            assert_eq!(s["imported"], MAX_STREAMS as u64, "{s:?}");
            break;
        }
        assert!(Instant::now() < end, "{s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let rings = shmbus_bus::list_rings(&root.join("b/tele")).unwrap();
    assert_eq!(rings.len(), MAX_STREAMS);
    assert!(
        rings.iter().all(|r| r.publisher_id.starts_with("z-peer.")),
        "a sample naming this gateway as origin was imported"
    );
    // Nothing outside the bus directory.
    let outside: Vec<_> = std::fs::read_dir(&dir.path)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(outside, [std::ffi::OsString::from("a")], "{outside:?}");
}
