//! SIGHUP reloads of real `shmbus-bridge` processes configured by files: a
//! peer added to the file is dialed, a broken file is refused (logged,
//! counted) while the running configuration keeps forwarding, a newly
//! exported topic starts to flow, and a removed peer is dropped.

mod common;

use std::{path::Path, time::Duration};

use common::{wait_until, Daemon, Keys, Tele, TestDir, Watchdog};
use shmbus::{Bus, Subscriber};
use shmbus_bus::{StartAt, WaitStrategy};

/// The common part of a node's config file.
fn base(keys: &Keys, name: &str, root: &Path) -> String {
    format!(
        "node_name = {name:?}\nbus = \"b\"\nroot = {:?}\nkey_file = {:?}\nallowlist = {:?}\nheartbeat_interval_ms = 200\npeer_timeout_ms = 2000\n",
        root.display().to_string(),
        keys.dir.join(format!("{name}.key")).display().to_string(),
        keys.dir.join(format!("{name}.allow")).display().to_string(),
    )
}

/// Publishes on `publisher` until `sub` has received `n` more messages.
fn flows(
    publisher: &mut shmbus::Publisher<Tele>,
    sub: &mut Subscriber<Tele>,
    seq: &mut u64,
    what: &str,
) {
    let mut got = 0;
    wait_until(what, Duration::from_secs(60), || {
        publisher.send(&Tele::new(0, *seq)).unwrap();
        *seq += 1;
        while let Ok(m) = sub.recv_timeout(Duration::from_millis(20)) {
            assert!(common::check_body(&m));
            got += 1;
        }
        got >= 20
    });
}

/// Waits until a typed subscriber of `topic` can open on `bus` (its
/// replica exists).
fn subscribe(bus: &Bus, topic: &str) -> Subscriber<Tele> {
    let mut sub = None;
    wait_until(
        &format!("the replica of {topic}"),
        Duration::from_secs(60),
        || {
            sub = bus
                .subscriber_with::<Tele>(topic, StartAt::Oldest, WaitStrategy::default())
                .ok()
                .filter(|_| !common::ring_files(&bus.root().join("b").join(topic)).is_empty());
            sub.is_some()
        },
    );
    sub.unwrap()
}

#[test]
fn sighup_reloads_peers_and_exports_and_refuses_broken_files() {
    let _watchdog = Watchdog::new("reload", Duration::from_secs(300));
    let dir = TestDir::new("ops-reload");
    let keys = dir.keys(&["alpha", "beta"]);
    let (root_a, root_b) = (dir.join("a"), dir.join("b"));
    let (conf_a, conf_b) = (dir.join("alpha.toml"), dir.join("beta.toml"));

    let alpha_base = format!(
        "{}listen = \"127.0.0.1:0\"\n",
        base(&keys, "alpha", &root_a)
    );
    let export_a = "[[export]]\ntopics = \"a\"\n";
    let export_b = "[[export]]\ntopics = \"b\"\n";
    std::fs::write(&conf_a, format!("{alpha_base}{export_a}")).unwrap();
    let alpha = Daemon::start("alpha", &dir, &["--config", conf_a.to_str().unwrap()]);
    let alpha_addr = alpha.listen_addr();

    // beta starts with no peer: nothing is dialed.
    let beta_base = format!(
        "{}listen = \"off\"\n[[import]]\ntopics = \"*\"\n",
        base(&keys, "beta", &root_b)
    );
    std::fs::write(&conf_b, &beta_base).unwrap();
    let beta = Daemon::start("beta", &dir, &["--config", conf_b.to_str().unwrap()]);
    beta.wait_log("logging at", Duration::from_secs(20));

    let bus_a = Bus::builder().root(&root_a).name("b").build().unwrap();
    let bus_b = Bus::builder().root(&root_b).name("b").build().unwrap();
    let mut pub_a = bus_a.publisher_named::<Tele>("a", "pa").unwrap();
    let mut pub_b = bus_a.publisher_named::<Tele>("b", "pb").unwrap();
    let (mut seq_a, mut seq_b) = (0, 0);

    // A peer added to beta's file is dialed after SIGHUP.
    let peer = format!("[[peer]]\nname = \"alpha\"\naddress = \"{alpha_addr}\"\n");
    std::fs::write(&conf_b, format!("{beta_base}{peer}")).unwrap();
    beta.signal(libc::SIGHUP);
    beta.wait_log(
        "reloaded the configuration: 1 peers",
        Duration::from_secs(30),
    );
    beta.wait_log("connected to peer alpha", Duration::from_secs(30));
    pub_a.send(&Tele::new(0, seq_a)).unwrap();
    seq_a += 1;
    let mut sub_a = subscribe(&bus_b, "a");
    flows(&mut pub_a, &mut sub_a, &mut seq_a, "topic a to flow");

    // Broken files are refused: TOML that does not parse, then a file that
    // parses but does not validate. Topic a keeps flowing.
    std::fs::write(&conf_a, format!("{alpha_base}{export_a}[[export]\n")).unwrap();
    alpha.signal(libc::SIGHUP);
    alpha.wait_log(
        "configuration not reloaded, keeping the running one: invalid config file",
        Duration::from_secs(30),
    );
    std::fs::write(
        &conf_a,
        format!("{alpha_base}{export_a}[[export]]\ntopics = \"b/c\"\n"),
    )
    .unwrap();
    alpha.signal(libc::SIGHUP);
    alpha.wait_log(
        "configuration not reloaded, keeping the running one: invalid topic pattern",
        Duration::from_secs(30),
    );
    assert_eq!(alpha.count_log("reloaded the configuration"), 0);
    flows(
        &mut pub_a,
        &mut sub_a,
        &mut seq_a,
        "topic a to flow after the refused reloads",
    );
    // Topic b is still not exported.
    pub_b.send(&Tele::new(0, seq_b)).unwrap();
    seq_b += 1;
    assert!(common::ring_files(&root_b.join("b").join("b")).is_empty());

    // Now b is allowed: it is announced and flows.
    std::fs::write(&conf_a, format!("{alpha_base}{export_a}{export_b}")).unwrap();
    alpha.signal(libc::SIGHUP);
    alpha.wait_log(
        "reloaded the configuration: 0 peers, 2 export rules",
        Duration::from_secs(30),
    );
    let mut sub_b = subscribe(&bus_b, "b");
    flows(
        &mut pub_b,
        &mut sub_b,
        &mut seq_b,
        "topic b to flow after the reload",
    );
    flows(
        &mut pub_a,
        &mut sub_a,
        &mut seq_a,
        "topic a to keep flowing",
    );
    wait_until(
        "alpha's stats to count the reloads",
        Duration::from_secs(30),
        || {
            alpha.stats("bridge").first().is_some_and(|b| {
                b.get("reloads").map(String::as_str) == Some("1")
                    && b.get("reload_failures").map(String::as_str) == Some("2")
            })
        },
    );

    // The peer removed from beta's file: its connection closes and beta
    // stops dialing.
    std::fs::write(&conf_b, &beta_base).unwrap();
    beta.signal(libc::SIGHUP);
    beta.wait_log("stopped dialing peer alpha", Duration::from_secs(30));
    alpha.wait_log("connection to peer beta at", Duration::from_secs(30));
}
