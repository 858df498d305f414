//! `shmbus ls`, `tail`, `pub` and `gc` against a real bus with real
//! publisher and subscriber processes, human and `--json` output.

mod common;

use std::{
    fs,
    process::Command,
    time::{Duration, SystemTime},
};

use common::{eventually, is_root, Root, PEER};
use serde_json::Value;

/// The ring of `publisher_id` in `ls --json` output, topic `topic`.
fn ring<'a>(ls: &'a Value, topic: &str, publisher_id: &str) -> &'a Value {
    let t = ls["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == topic)
        .unwrap_or_else(|| panic!("no topic {topic} in {ls:#}"));
    t["rings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["publisher_id"] == publisher_id)
        .unwrap_or_else(|| panic!("no ring {publisher_id} in {t:#}"))
}

fn id_of(ready: &str) -> String {
    ready.strip_prefix("ready ").unwrap().to_owned()
}

#[test]
fn ls_shows_the_lag_of_a_stopped_subscriber() {
    let root = Root::new("ls-lag");
    let mut sub = root.peer("subscribe", &["--topic", "imu"]);
    sub.expect("subscribed");
    let mut publisher = root.peer("publish", &["--topic", "imu", "--count", "3"]);
    let id = id_of(&publisher.expect("ready"));
    publisher.expect("done published=3");
    sub.expect("got msg 2");
    // Subscribers release in batches, and always before they wait on an
    // empty ring: once it waits, its slot shows no lag.
    eventually("the waiting subscriber released what it read", || {
        let ls = root.json(&["ls"]);
        ring(&ls, "imu", &id)["subscribers"][0]["lag_messages"] == 0
    });

    // Stopped, it can neither read nor release anything.
    sub.signal(libc::SIGSTOP);
    publisher.send_line("send 40");
    publisher.expect("done published=43 full=0");

    let ls = root.json(&["ls"]);
    let r = ring(&ls, "imu", &id);
    assert_eq!(r["state"], "live", "{r:#}");
    let p = &r["publisher"];
    assert_eq!(p["published"], 43);
    assert_eq!(p["alive"], true);
    assert_eq!(p["type_name"], "String");
    assert_eq!(p["policy"], "block");
    assert_eq!(p["pid"], publisher.pid());
    let subs = r["subscribers"].as_array().unwrap();
    assert_eq!(subs.len(), 1, "{r:#}");
    assert_eq!(subs[0]["pid"], sub.pid());
    assert_eq!(subs[0]["kind"], "active");
    assert_eq!(subs[0]["alive"], true);
    assert_eq!(subs[0]["lag_messages"], 40);
    assert!(subs[0]["lag_bytes"].as_u64().unwrap() >= 40 * 16);

    let human = root.ok(&["ls"]);
    let row = human
        .lines()
        .find(|l| l.trim_start().starts_with(&id) && l.contains("active"))
        .unwrap_or_else(|| panic!("no subscriber row in\n{human}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    // SUBSCRIBER OF, SLOT, PID, KIND, ALIVE, LAG (n unit), LAG MSGS, HELD, DURABLE
    assert_eq!(cells[2], sub.pid().to_string(), "{row}");
    assert_eq!(cells[4], "yes", "{row}");
    assert_eq!(cells[7], "40", "{row}");
    assert!(
        human.contains("topic imu: 1 ring(s), 1 live publisher(s)"),
        "{human}"
    );

    // Resumed, it catches up and the lag goes.
    sub.signal(libc::SIGCONT);
    sub.expect("got msg 42");
    eventually("lag 0", || {
        let ls = root.json(&["ls", "im*"]);
        ring(&ls, "imu", &id)["subscribers"][0]["lag_messages"] == 0
    });
    // A pattern that matches nothing lists nothing.
    assert_eq!(root.json(&["ls", "other*"])["topics"], Value::Array(vec![]));
}

#[test]
fn tail_keeps_up_and_never_blocks_the_publisher() {
    let root = Root::new("tail");
    let mut publisher = root.peer(
        "publish",
        &["--topic", "t", "--rate", "4000", "--capacity", "65536"],
    );
    let id = id_of(&publisher.expect("ready"));
    let mut tail = root.spawn_shmbus(&["tail", "t", "--count", "2000", "--json"]);
    tail.expect(r#"{"event":"joined""#);
    publisher.send_line("send 2000");
    publisher.expect("done published=2000 full=0");
    let lines = tail.rest();
    let messages: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"] == "message")
        .collect();
    assert_eq!(messages.len(), 2000, "{lines:?}");
    for (n, m) in messages.iter().enumerate() {
        assert_eq!(m["publisher"], id.as_str());
        assert_eq!(m["sequence"], n as u64);
        let text = format!("msg {n}");
        assert!(
            m["payload_hex"]
                .as_str()
                .unwrap()
                .contains(&hex(text.as_bytes())),
            "{m}"
        );
    }
    assert!(!lines.iter().any(|l| l.contains(r#""event":"gap""#)));

    // Flooding a 64 KiB ring: the observer is lapped and says by exactly
    // how much; the publisher never waits for it.
    let mut flood = root.peer("publish", &["--topic", "t", "--capacity", "65536"]);
    let flood_id = id_of(&flood.expect("ready"));
    let mut tail = root.spawn_shmbus(&["tail", "t", "--json", "--exit-on-close"]);
    tail.expect(r#"{"event":"joined""#);
    flood.send_line("send 200000");
    flood.expect("done published=200000 full=0");
    let ls = root.json(&["ls"]);
    assert_eq!(ring(&ls, "t", &flood_id)["publisher"]["full_events"], 0);
    assert_eq!(
        ring(&ls, "t", &flood_id)["subscribers"],
        Value::Array(vec![])
    );
    flood.finish();
    publisher.finish();
    let lines = tail.rest();
    let (mut got, mut lost, mut last) = (0u64, 0u64, None);
    for v in lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
    {
        if v["publisher"] != flood_id.as_str() {
            continue;
        }
        match v["event"].as_str().unwrap() {
            "message" => {
                let seq = v["sequence"].as_u64().unwrap();
                assert!(
                    last.is_none_or(|l| seq > l),
                    "out of order: {seq} after {last:?}"
                );
                assert_eq!(
                    seq,
                    got + lost,
                    "sequence {seq} after {got} read and {lost} lost"
                );
                last = Some(seq);
                got += 1;
            }
            "gap" => lost += v["messages"].as_u64().unwrap(),
            _ => {}
        }
    }
    assert_eq!(got + lost, 200_000, "every message read or counted lost");
    assert!(got > 0);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn archive(text: &str) -> Vec<u8> {
    shmbus::rkyv::to_bytes::<shmbus::rkyv::rancor::Error>(&text.to_owned())
        .unwrap()
        .to_vec()
}

#[test]
fn pub_reaches_a_typed_subscriber() {
    let root = Root::new("pub");
    let mut sub = root.peer("subscribe", &["--topic", "chat", "--count", "5"]);
    sub.expect("subscribed");

    // Framed archives, the type declared as `ls` shows it.
    let mut framed = Vec::new();
    for text in ["one", "two"] {
        let a = archive(text);
        framed.extend_from_slice(&(a.len() as u32).to_le_bytes());
        framed.extend_from_slice(&a);
    }
    let fp = format!("{:#018x}", shmbus::fingerprint::<String>());
    let out = root.shmbus(
        &[
            "pub",
            "chat",
            "--framed",
            "--type",
            "String",
            "--fingerprint",
            &fp,
            "--json",
        ],
        &framed,
    );
    assert!(out.status.success(), "{}", common::describe(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["published"], 2);
    assert_eq!(summary["full_events"], 0);
    sub.expect("got one");
    sub.expect("got two");

    // Lines archived as `String`.
    let out = root.shmbus(&["pub", "chat", "--string"], b"three\nfour\n");
    assert!(out.status.success(), "{}", common::describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("published 2 message(s)"));
    sub.expect("got three");
    sub.expect("got four");

    // No type given: the topic's, from its live publisher.
    let mut typed = root.peer("publish", &["--topic", "chat"]);
    typed.expect("ready");
    let a = archive("five");
    let mut framed = (a.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(&a);
    let out = root.shmbus(&["pub", "chat", "--framed"], &framed);
    assert!(out.status.success(), "{}", common::describe(&out));
    sub.expect("got five");
    sub.expect("finished received=5");
}

#[test]
fn tail_raw_round_trips_pub_framed() {
    let root = Root::new("raw");
    // A ring with no subscriber is removed as soon as its publisher closes
    // it, maybe before the tail lists the topic: a registered (stalled)
    // subscriber keeps it until then.
    let mut keeper = root.peer("subscribe", &["--topic", "bin", "--read", "0"]);
    keeper.expect("stalled");
    let tail = Command::new(common::SHMBUS)
        .arg("--root")
        .arg(root.path())
        .args([
            "tail",
            "bin",
            "--raw",
            "--framed",
            "--count",
            "3",
            "--timeout",
            "20",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A ring that appears after the tail started is read from its first
    // message (the tail lists the topic every 100 ms).
    std::thread::sleep(Duration::from_millis(300));
    let payloads: [&[u8]; 3] = [b"\x00\x01\xff", b"", b"line\nbreak"];
    let mut framed = Vec::new();
    for p in payloads {
        framed.extend_from_slice(&(p.len() as u32).to_le_bytes());
        framed.extend_from_slice(p);
    }
    let out = root.shmbus(&["pub", "bin", "--framed"], &framed);
    assert!(out.status.success(), "{}", common::describe(&out));
    let out = tail.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, framed, "the same frames out as in");
}

/// Sets a file's modification time `secs` into the past.
fn age(path: &std::path::Path, secs: u64) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn gc_removes_only_what_is_dead() {
    let root = Root::new("gc");
    // (Creating a publisher sweeps its topic: the live one comes first.)
    // A live publisher: kept.
    let mut live = root.peer("publish", &["--topic", "a", "--count", "1"]);
    let live_id = id_of(&live.expect("ready"));
    live.expect("done");
    // A publisher killed with nobody reading: stale.
    let mut dead = root.peer("publish", &["--topic", "a", "--count", "5"]);
    let dead_id = id_of(&dead.expect("ready"));
    dead.expect("done");
    dead.signal(libc::SIGKILL);
    let _ = dead.child.wait();
    // A publisher killed while a subscriber still owes reading it: kept.
    let mut reader = root.peer("subscribe", &["--topic", "b", "--read", "0"]);
    reader.expect("stalled");
    let mut owed = root.peer("publish", &["--topic", "b", "--count", "5"]);
    let owed_id = id_of(&owed.expect("ready"));
    owed.expect("done");
    owed.signal(libc::SIGKILL);
    let _ = owed.child.wait();
    // Leftovers: a creator's temporary file and a control file without its
    // ring, both old; and a young temporary file (a creator at work).
    let dir = root.topic("a");
    fs::write(dir.join(".x.ring.tmp"), b"").unwrap();
    age(&dir.join(".x.ring.tmp"), 3600);
    fs::write(dir.join("gone-1.ctl"), b"").unwrap();
    age(&dir.join("gone-1.ctl"), 3600);
    fs::write(dir.join(".young.ring.tmp"), b"").unwrap();

    let ls = root.json(&["ls"]);
    assert_eq!(ring(&ls, "a", &dead_id)["state"], "stale");
    assert_eq!(ring(&ls, "b", &owed_id)["state"], "dead");
    assert_eq!(ring(&ls, "a", &live_id)["state"], "live");

    let expect = {
        let mut v = vec![
            dir.join(".x.ring.tmp"),
            dir.join(format!("{dead_id}.ctl")),
            dir.join(format!("{dead_id}.ring")),
            dir.join("gone-1.ctl"),
        ];
        v.sort();
        v
    };
    let paths = |report: &Value| -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = report["removed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["path"].as_str().unwrap().into())
            .collect();
        v.sort();
        v
    };
    let dry = root.json(&["gc", "--dry-run"]);
    assert_eq!(paths(&dry), expect, "{dry:#}");
    assert!(
        dir.join(format!("{dead_id}.ring")).exists(),
        "dry run removed nothing"
    );

    let human = root.ok(&["gc"]);
    for path in &expect {
        assert!(
            human.contains(&format!("removed {}", path.display())),
            "{human}"
        );
        assert!(!path.exists(), "{}", path.display());
    }
    assert!(human.contains("removed 4 file(s)"), "{human}");
    for kept in [
        dir.join(format!("{live_id}.ring")),
        dir.join(".young.ring.tmp"),
        root.topic("b").join(format!("{owed_id}.ring")),
    ] {
        assert!(kept.exists(), "{} was removed:\n{human}", kept.display());
    }
    assert_eq!(paths(&root.json(&["gc"])), Vec::<std::path::PathBuf>::new());
    drop(reader);
}

#[test]
fn gc_removes_hold_links_of_a_gone_bridge_after_their_age() {
    let root = Root::new("gc-hold");
    // What a bridge leaves: hard links to a replica's two files.
    let mut replica = root.peer("publish", &["--topic", "h", "--count", "2"]);
    let id = id_of(&replica.expect("ready"));
    replica.expect("done");
    let dir = root.topic("h");
    let hold = dir.join(format!(".{id}.hold"));
    fs::hard_link(dir.join(format!("{id}.ring")), &hold).unwrap();
    fs::hard_link(
        dir.join(format!("{id}.ctl")),
        dir.join(format!(".{id}.ctl")),
    )
    .unwrap();
    let human = root.ok(&["ls"]);
    assert!(
        human.contains(&format!(
            "hold {} (bridge replica kept for a restart; writer alive",
            hold.display()
        )),
        "{human}"
    );
    replica.signal(libc::SIGKILL);
    let _ = replica.child.wait();
    // Young: kept, for a bridge that restarts.
    root.ok(&["gc"]);
    assert!(hold.exists());
    let out = root.ok(&["gc", "--hold-age", "0"]);
    assert!(
        out.contains(&format!(
            "removed {} (bridge hold link of a gone bridge)",
            hold.display()
        )),
        "{out}"
    );
    assert!(!hold.exists() && !dir.join(format!(".{id}.ctl")).exists());
}

#[test]
fn gc_removes_export_holds_of_a_gone_publisher_after_their_age() {
    let root = Root::new("gc-xhold");
    // What an exporting bridge leaves: hard links to a local ring's files.
    let mut publisher = root.peer("publish", &["--topic", "x", "--count", "2"]);
    let id = id_of(&publisher.expect("ready"));
    publisher.expect("done");
    let dir = root.topic("x");
    let hold = dir.join(format!(".{id}.x0123abcd.xhold"));
    let hold_ctl = dir.join(format!(".{id}.x0123abcd.ctl"));
    fs::hard_link(dir.join(format!("{id}.ring")), &hold).unwrap();
    fs::hard_link(dir.join(format!("{id}.ctl")), &hold_ctl).unwrap();
    // A live publisher's ring is never taken from its exports, whatever
    // the hold's age.
    root.ok(&["gc", "--hold-age", "0"]);
    assert!(hold.exists() && hold_ctl.exists());
    publisher.signal(libc::SIGKILL);
    let _ = publisher.child.wait();
    // Young: kept, for a bridge that restarts and still owes its peer.
    root.ok(&["gc"]);
    assert!(hold.exists() && hold_ctl.exists());
    let dry = root.ok(&["gc", "--dry-run", "--hold-age", "0"]);
    assert!(
        dry.contains(&format!(
            "would remove {} (bridge export hold of a gone publisher)",
            hold.display()
        )),
        "{dry}"
    );
    assert!(hold.exists());
    let out = root.ok(&["gc", "--hold-age", "0"]);
    assert!(
        out.contains(&format!(
            "removed {} (bridge export hold of a gone publisher)",
            hold.display()
        )),
        "{out}"
    );
    assert!(!hold.exists() && !hold_ctl.exists());
}

#[test]
fn gc_leaves_a_live_publisher_in_another_pid_namespace() {
    if !is_root() {
        eprintln!("skipped: unshare --pid needs root");
        return;
    }
    let root = Root::new("gc-ns");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        PEER,
        "publish",
        "--root",
    ])
    .arg(root.path())
    .args(["--topic", "ns", "--count", "3"]);
    let mut inside = common::Proc::spawn(cmd);
    let id = id_of(&inside.expect("ready"));
    inside.expect("done published=3");
    // Its pid label is its own namespace's: no such process here, or
    // another one. Only the lock says it is alive.
    let ls = root.json(&["ls"]);
    let r = ring(&ls, "ns", &id);
    assert_eq!(r["publisher"]["pid"], 1, "{r:#}");
    assert_eq!(r["state"], "live");
    let report = root.json(&["gc"]);
    assert_eq!(report["removed"], Value::Array(vec![]), "{report:#}");
    assert!(root.topic("ns").join(format!("{id}.ring")).exists());
    // Once it is gone, gc removes it.
    inside.finish();
    eventually("the ring to go", || {
        root.ok(&["gc"]);
        !root.topic("ns").join(format!("{id}.ring")).exists()
    });
}

#[test]
fn a_damaged_ring_is_listed_with_its_reason() {
    let root = Root::new("damaged");
    let mut live = root.peer("publish", &["--topic", "d", "--count", "2"]);
    let live_id = id_of(&live.expect("ready"));
    live.expect("done");
    let dir = root.topic("d");
    // Not a segment at all.
    fs::write(dir.join("junk.ring"), vec![0x5a; 8192]).unwrap();
    // A real ring with a header field broken.
    let path = dir.join("broken.ring");
    let mut w = shmbus_bus::RingWriter::create(&path, &shmbus_bus::RingConfig::default()).unwrap();
    w.keep_file(true);
    drop(w);
    let offset = std::mem::offset_of!(shmbus_bus::layout::SegmentHeader, policy) as u64;
    let f = fs::File::options().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &7u32.to_le_bytes(), offset).unwrap();
    // A truncated copy of a ring.
    fs::write(dir.join("short.ring"), &fs::read(&path).unwrap()[..5000]).unwrap();

    let ls = root.json(&["ls"]);
    let junk = ring(&ls, "d", "junk");
    assert_eq!(junk["state"], "damaged");
    assert!(
        junk["reason"]
            .as_str()
            .unwrap()
            .contains("is not a shmbus segment"),
        "{junk:#}"
    );
    let broken = ring(&ls, "d", "broken");
    assert_eq!(broken["state"], "damaged");
    assert!(
        broken["reason"]
            .as_str()
            .unwrap()
            .contains("policy: unknown value 7"),
        "{broken:#}"
    );
    let short = ring(&ls, "d", "short");
    assert!(
        short["reason"]
            .as_str()
            .unwrap()
            .contains("was truncated or altered"),
        "{short:#}"
    );
    assert_eq!(ring(&ls, "d", &live_id)["state"], "live");

    let human = root.ok(&["ls"]);
    assert!(
        human
            .lines()
            .any(|l| l.trim_start().starts_with("junk ") && l.contains(" DAMAGED ")),
        "{human}"
    );
    assert!(human.contains("! broken: "), "{human}");
    assert!(human.contains("policy: unknown value 7"), "{human}");

    // tail says so and follows the rest; gc leaves what it cannot read.
    let mut tail = root.spawn_shmbus(&["tail", "d", "--from", "oldest", "--count", "2"]);
    let lines = tail.rest();
    assert!(
        lines.iter().any(|l| l.starts_with("junk DAMAGED")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains(" #1 ")), "{lines:?}");
    root.ok(&["gc"]);
    assert!(dir.join("junk.ring").exists() && path.exists());
}
