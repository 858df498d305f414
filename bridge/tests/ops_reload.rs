//! SIGHUP reloads of real `shmbus-bridge` processes configured by files: a
//! peer added to the file is dialed, a broken file is refused (logged,
//! counted) while the running configuration keeps forwarding, a newly
//! exported topic starts to flow, and a removed peer is dropped. A reload
//! that stops exporting (or importing) a flowing topic stops that stream
//! without ending it: the other topic keeps flowing, the exporter's slot
//! leaves the ring (or the importer's replica is retired), and a reload
//! that allows the topic again makes it flow again.

mod common;

use std::{collections::HashSet, path::Path, time::Duration};

use common::{wait_until, Daemon, Keys, Tele, TestDir, Watchdog};
use shmbus::{Bus, Subscriber};
use shmbus_bus::{RingStatus, StartAt, WaitStrategy};

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

/// Publishes on `publisher` until `sub` has received 20 more messages,
/// recording their sequence numbers in `seen` (a duplicate fails).
fn flows_seen(
    publisher: &mut shmbus::Publisher<Tele>,
    sub: &mut Subscriber<Tele>,
    seq: &mut u64,
    seen: &mut HashSet<u64>,
    what: &str,
) {
    let mut got = 0;
    wait_until(what, Duration::from_secs(60), || {
        publisher.send(&Tele::new(0, *seq)).unwrap();
        *seq += 1;
        loop {
            match sub.recv_timeout(Duration::from_millis(20)) {
                Ok(m) => {
                    assert!(common::check_body(&m));
                    let n = m.seq.to_native();
                    assert!(seen.insert(n), "message {n} of {what} delivered twice");
                    got += 1;
                }
                Err(shmbus::Error::Timeout(_)) => break,
                // A gap record (messages published while the topic was not
                // bridged and no longer held): reported, the stream goes on.
                Err(e) => eprintln!("{what}: {e}"),
            }
        }
        got >= 20
    });
}

/// While `other` keeps flowing for a while (and `publisher` keeps
/// publishing from sequence number `cutoff` on), `sub` gets no message
/// numbered `cutoff` or later: the stream stopped.
fn stays_stopped(
    publisher: &mut shmbus::Publisher<Tele>,
    sub: &mut Subscriber<Tele>,
    seq: &mut u64,
    seen: &mut HashSet<u64>,
    other: (
        &mut shmbus::Publisher<Tele>,
        &mut Subscriber<Tele>,
        &mut u64,
    ),
    what: &str,
) {
    let cutoff = *seq;
    let (other_pub, other_sub, other_seq) = other;
    for round in 0..3 {
        for _ in 0..50 {
            publisher.send(&Tele::new(0, *seq)).unwrap();
            *seq += 1;
        }
        // The other topic flowing is the proof that frames still cross.
        flows(
            other_pub,
            other_sub,
            other_seq,
            &format!("the other topic to keep flowing while {what} is stopped (round {round})"),
        );
        loop {
            match sub.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => {
                    let n = m.seq.to_native();
                    assert!(
                        n < cutoff,
                        "{what}: message {n}, published after the reload took effect, was delivered"
                    );
                    assert!(seen.insert(n), "message {n} of {what} delivered twice");
                }
                Err(shmbus::Error::Timeout(_)) => break,
                Err(e) => eprintln!("{what}: {e}"),
            }
        }
    }
}

/// The slots `pid` holds on the rings of `topic_dir`.
fn slots_of(topic_dir: &Path, pid: u32) -> Vec<shmbus_bus::SubscriberStatus> {
    common::ring_files(topic_dir)
        .iter()
        .filter_map(|p| RingStatus::read(p).ok())
        .flat_map(|s| s.subscribers)
        .filter(|s| s.pid == u64::from(pid))
        .collect()
}

#[test]
fn reload_that_stops_exporting_a_flowing_topic_stops_it_without_ending_it() {
    let _watchdog = Watchdog::new("reload-export", Duration::from_secs(300));
    let dir = TestDir::new("ops-reload-export");
    let keys = dir.keys(&["alpha", "beta"]);
    let (root_a, root_b) = (dir.join("a"), dir.join("b"));
    let (conf_a, conf_b) = (dir.join("alpha.toml"), dir.join("beta.toml"));
    let alpha_base = format!(
        "{}listen = \"127.0.0.1:0\"\n",
        base(&keys, "alpha", &root_a)
    );
    // Topic a is tethered: its export holds a durable slot, which must be
    // left (not kept for its lease) when the export stops.
    let export_a = "[[export]]\ntopics = \"a\"\nmode = \"tethered\"\n";
    let export_b = "[[export]]\ntopics = \"b\"\n";
    std::fs::write(&conf_a, format!("{alpha_base}{export_a}{export_b}")).unwrap();
    let alpha = Daemon::start("alpha", &dir, &["--config", conf_a.to_str().unwrap()]);
    let beta_conf = format!(
        "{}listen = \"off\"\n[[import]]\ntopics = \"*\"\n[[peer]]\nname = \"alpha\"\naddress = \"{}\"\n",
        base(&keys, "beta", &root_b),
        alpha.listen_addr()
    );
    std::fs::write(&conf_b, beta_conf).unwrap();
    let beta = Daemon::start("beta", &dir, &["--config", conf_b.to_str().unwrap()]);
    beta.wait_log("connected to peer alpha", Duration::from_secs(30));

    let bus_a = Bus::builder().root(&root_a).name("b").build().unwrap();
    let bus_b = Bus::builder().root(&root_b).name("b").build().unwrap();
    let mut pub_a = bus_a.publisher_named::<Tele>("a", "pa").unwrap();
    let mut pub_b = bus_a.publisher_named::<Tele>("b", "pb").unwrap();
    let topic_a = bus_a.topic_dir("a").unwrap();
    let (mut seq_a, mut seq_b) = (0, 0);
    let mut seen_a = HashSet::new();
    pub_a.send(&Tele::new(0, seq_a)).unwrap();
    seq_a += 1;
    pub_b.send(&Tele::new(0, seq_b)).unwrap();
    seq_b += 1;
    let mut sub_a = subscribe(&bus_b, "a");
    let mut sub_b = subscribe(&bus_b, "b");
    flows_seen(
        &mut pub_a,
        &mut sub_a,
        &mut seq_a,
        &mut seen_a,
        "topic a to flow",
    );
    flows(&mut pub_b, &mut sub_b, &mut seq_b, "topic b to flow");
    let slots = slots_of(&topic_a, alpha.pid());
    assert!(
        slots.len() == 1 && slots[0].durable,
        "alpha exports a tethered through one durable slot: {slots:?}"
    );

    // a is no longer exported: alpha closes the connection, drops the
    // stream and its reader leaves the ring; b goes on after the reconnect.
    std::fs::write(&conf_a, format!("{alpha_base}{export_b}")).unwrap();
    alpha.signal(libc::SIGHUP);
    alpha.wait_log(
        "reloaded the configuration: 0 peers, 1 export rules",
        Duration::from_secs(30),
    );
    alpha.wait_log(
        "the reloaded configuration no longer exports topic a",
        Duration::from_secs(30),
    );
    alpha.wait_log("stopped exporting a/pa", Duration::from_secs(30));
    wait_until(
        "alpha's slot on the ring of a to be left",
        Duration::from_secs(30),
        || slots_of(&topic_a, alpha.pid()).is_empty(),
    );
    stays_stopped(
        &mut pub_a,
        &mut sub_a,
        &mut seq_a,
        &mut seen_a,
        (&mut pub_b, &mut sub_b, &mut seq_b),
        "topic a",
    );
    // Not ended: beta never recorded an end, and with no reader left the
    // publisher is held back by nobody (it published above without waiting).
    assert_eq!(beta.count_log("ended at position"), 0);
    assert!(slots_of(&topic_a, alpha.pid()).is_empty());

    // a is exported again: it is announced anew and flows, from where
    // beta's replica stands (no message twice).
    std::fs::write(&conf_a, format!("{alpha_base}{export_a}{export_b}")).unwrap();
    alpha.signal(libc::SIGHUP);
    alpha.wait_log(
        "reloaded the configuration: 0 peers, 2 export rules",
        Duration::from_secs(30),
    );
    let before = seq_a;
    flows_seen(
        &mut pub_a,
        &mut sub_a,
        &mut seq_a,
        &mut seen_a,
        "topic a to flow again after the reload that exports it",
    );
    assert!(
        seen_a.iter().any(|&n| n >= before),
        "messages published after the second reload arrived"
    );
    flows(
        &mut pub_b,
        &mut sub_b,
        &mut seq_b,
        "topic b to keep flowing",
    );
    assert_eq!(slots_of(&topic_a, alpha.pid()).len(), 1);
}

#[test]
fn reload_that_stops_importing_a_flowing_topic_retires_its_replica() {
    let _watchdog = Watchdog::new("reload-import", Duration::from_secs(300));
    let dir = TestDir::new("ops-reload-import");
    let keys = dir.keys(&["alpha", "beta"]);
    let (root_a, root_b) = (dir.join("a"), dir.join("b"));
    let (conf_a, conf_b) = (dir.join("alpha.toml"), dir.join("beta.toml"));
    std::fs::write(
        &conf_a,
        format!(
            "{}listen = \"127.0.0.1:0\"\n[[export]]\ntopics = \"*\"\n",
            base(&keys, "alpha", &root_a)
        ),
    )
    .unwrap();
    let alpha = Daemon::start("alpha", &dir, &["--config", conf_a.to_str().unwrap()]);
    let beta_base = format!(
        "{}listen = \"off\"\n[[peer]]\nname = \"alpha\"\naddress = \"{}\"\n",
        base(&keys, "beta", &root_b),
        alpha.listen_addr()
    );
    let import_a = "[[import]]\ntopics = \"a\"\n";
    let import_b = "[[import]]\ntopics = \"b\"\n";
    std::fs::write(&conf_b, format!("{beta_base}{import_a}{import_b}")).unwrap();
    let beta = Daemon::start("beta", &dir, &["--config", conf_b.to_str().unwrap()]);
    beta.wait_log("connected to peer alpha", Duration::from_secs(30));

    let bus_a = Bus::builder().root(&root_a).name("b").build().unwrap();
    let bus_b = Bus::builder().root(&root_b).name("b").build().unwrap();
    let mut pub_a = bus_a.publisher_named::<Tele>("a", "pa").unwrap();
    let mut pub_b = bus_a.publisher_named::<Tele>("b", "pb").unwrap();
    let replicas_a = bus_b.topic_dir("a").unwrap();
    let (mut seq_a, mut seq_b) = (0, 0);
    let mut seen_a = HashSet::new();
    pub_a.send(&Tele::new(0, seq_a)).unwrap();
    seq_a += 1;
    pub_b.send(&Tele::new(0, seq_b)).unwrap();
    seq_b += 1;
    let mut sub_a = subscribe(&bus_b, "a");
    let mut sub_b = subscribe(&bus_b, "b");
    flows_seen(
        &mut pub_a,
        &mut sub_a,
        &mut seq_a,
        &mut seen_a,
        "topic a to flow",
    );
    flows(&mut pub_b, &mut sub_b, &mut seq_b, "topic b to flow");

    // a is no longer imported: beta closes the connection and retires the
    // replica (its writer closes it: local subscribers see the publisher
    // gone); b goes on after the reconnect.
    std::fs::write(&conf_b, format!("{beta_base}{import_b}")).unwrap();
    beta.signal(libc::SIGHUP);
    beta.wait_log(
        "reloaded the configuration: 1 peers, 0 export rules, 1 import rules",
        Duration::from_secs(30),
    );
    beta.wait_log(
        "the reloaded configuration no longer imports topic a",
        Duration::from_secs(30),
    );
    beta.wait_log("stopped importing a/pa", Duration::from_secs(30));
    wait_until(
        "the replica of a to be closed",
        Duration::from_secs(30),
        || {
            common::ring_files(&replicas_a)
                .iter()
                .filter_map(|p| RingStatus::read(p).ok())
                .all(|s| s.closed && !s.publisher_alive)
        },
    );
    // Its position is kept, so a later import continues there.
    assert!(
        std::fs::read_dir(&replicas_a)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".resume")),
        "a resume marker records where the replica of a stopped"
    );
    beta.wait_log("connected to peer alpha", Duration::from_secs(30));
    stays_stopped(
        &mut pub_a,
        &mut sub_a,
        &mut seq_a,
        &mut seen_a,
        (&mut pub_b, &mut sub_b, &mut seq_b),
        "topic a",
    );
    assert_eq!(beta.count_log("ended at position"), 0);

    // a is imported again: beta reconnects, subscribes from where the
    // retired replica stopped, and a flows again without a message twice.
    std::fs::write(&conf_b, format!("{beta_base}{import_a}{import_b}")).unwrap();
    beta.signal(libc::SIGHUP);
    beta.wait_log(
        "reloaded the configuration: 1 peers, 0 export rules, 2 import rules",
        Duration::from_secs(30),
    );
    let before = seq_a;
    flows_seen(
        &mut pub_a,
        &mut sub_a,
        &mut seq_a,
        &mut seen_a,
        "topic a to flow again after the reload that imports it",
    );
    assert!(seen_a.iter().any(|&n| n >= before));
    flows(
        &mut pub_b,
        &mut sub_b,
        &mut seq_b,
        "topic b to keep flowing",
    );
}
