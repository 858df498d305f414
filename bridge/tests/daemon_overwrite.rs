//! The bridge forwards Block topics only (`bridge/README.md`, Limitations):
//! its export readers hand out ring bytes in place, which an Overwrite
//! publisher may overwrite under them, so an Overwrite ring is refused with
//! a warning logged once, and nothing of it reaches the other side, while a
//! Block topic on the same connection flows.

mod common;

use std::time::Duration;

use common::{check_body, Daemon, Tele, TestDir, Watchdog};
use shmbus::{Bus, Policy};
use shmbus_bus::{StartAt, WaitStrategy};

#[test]
fn an_overwrite_topic_is_refused_with_a_reason_and_a_block_topic_still_flows() {
    let _watchdog = Watchdog::new("overwrite_topic_is_refused", Duration::from_secs(40));
    let dir = TestDir::new("overwrite");
    let keys = dir.keys(&["sender", "receiver"]);
    let (keys_s, keys_r) = (keys.args("sender"), keys.args("receiver"));
    let (root_s, root_r) = (dir.join("s"), dir.join("r"));
    let mut args_s = vec![
        "--node-name",
        "sender",
        "--bus",
        "b",
        "--root",
        root_s.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--export",
        "tele:tethered",
        "--export",
        "fast:untethered",
    ];
    args_s.extend(keys_s.iter().map(String::as_str));
    let sender = Daemon::start("sender", &dir, &args_s);
    let peer = format!("sender={}", sender.listen_addr());
    let mut args_r = vec![
        "--node-name",
        "receiver",
        "--bus",
        "b",
        "--root",
        root_r.to_str().unwrap(),
        "--listen",
        "off",
        "--peer",
        &peer,
        "--import",
        "tele",
        "--import",
        "fast",
    ];
    args_r.extend(keys_r.iter().map(String::as_str));
    let receiver = Daemon::start("receiver", &dir, &args_r);
    receiver.wait_log("connected to peer sender", Duration::from_secs(10));

    let remote = Bus::builder().root(&root_r).name("b").build().unwrap();
    let mut tele_in = remote
        .subscriber_with::<Tele>("tele", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut fast_in = remote
        .subscriber_with::<Tele>("fast", StartAt::Oldest, WaitStrategy::default())
        .unwrap();

    let block = Bus::builder().root(&root_s).name("b").build().unwrap();
    let overwrite = Bus::builder()
        .root(&root_s)
        .name("b")
        .policy(Policy::Overwrite)
        .build()
        .unwrap();
    let mut fast_out = overwrite.publisher::<Tele>("fast").unwrap();
    let mut tele_out = block.publisher::<Tele>("tele").unwrap();
    for seq in 0..200 {
        fast_out.send(&Tele::new(1, seq)).unwrap();
        tele_out.send(&Tele::new(0, seq)).unwrap();
    }

    // The catalog refuses it when it first reads the ring's header.
    let why = sender.wait_log("refuse Overwrite rings", Duration::from_secs(10));
    assert!(
        why.contains("not exporting") && why.contains("/fast/"),
        "the warning names the ring: {why}"
    );
    for seq in 0..200 {
        let m = tele_in.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(check_body(&m));
        assert_eq!(m.seq.to_native(), seq, "the Block topic flows in order");
    }
    // Everything of the Block topic arrived over the same connection, and
    // the Overwrite topic sent before it: nothing of it is on this side.
    match fast_in.recv_timeout(Duration::from_millis(500)) {
        Err(shmbus::Error::Timeout(_)) => {}
        Ok(m) => panic!("an Overwrite message crossed: seq {}", m.seq.to_native()),
        Err(e) => panic!("{e}"),
    };
    // Once per ring, not at every rescan (the safety-net rescan runs every
    // 2 s).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(sender.count_log("refuse Overwrite rings"), 1);
}
