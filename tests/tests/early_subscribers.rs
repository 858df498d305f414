//! Issue 7, "Early subscribers": a subscriber that exists before a
//! publisher's ring is created is joined to that ring from its first record
//! (the topic's registry, read by the new publisher at creation), so under
//! Block it receives everything that publisher sends, even if it was
//! stopped while the publisher started; and once every process has exited,
//! no file is left in the bus directory.

use std::time::Duration;

use shmbus_tests::{
    harness::{field_u64, Proc, TestEnv, LINE_TIMEOUT},
    isolation::{describe_tree, leftover_files},
    report::Report,
};

const PEER: &str = env!("CARGO_BIN_EXE_peer");

fn subscriber(env: &TestEnv, name: &str, topic: &str, count: u64) -> (Proc, std::path::PathBuf) {
    let report = env.report_path(name);
    let report_arg = report.display().to_string();
    let count = count.to_string();
    let mut p = env.peer(
        name,
        &[
            "subscribe",
            "--topic",
            topic,
            "--expect-publishers",
            "1",
            "--count",
            &count,
            "--report",
            &report_arg,
            "--timeout-s",
            "30",
        ],
    );
    p.expect_line("subscribed", LINE_TIMEOUT);
    (p, report)
}

fn assert_everything_from_the_first(r: &Report, count: u64, who: &str) {
    let p = r.publishers.get(&1);
    assert!(
        r.errors.is_empty()
            && p.is_some_and(
                |p| (p.received, p.first, p.last, p.lost) == (count, Some(0), Some(count - 1), 0)
            ),
        "{who} did not receive all {count} messages from seq 0 in order:\n{r}"
    );
}

/// Three subscribers before any publisher; one is SIGSTOPped while the
/// publisher starts and writes about 50 rings' worth (4 KiB Block ring,
/// 1500 messages): after SIGCONT every one of them receives every message,
/// from seq 0, in order, nothing lost. Then no file is left in the bus
/// directory.
#[test]
fn early_subscribers_get_everything_even_when_stopped() {
    const COUNT: u64 = 1500;
    let env = TestEnv::new("early-stopped", PEER, Duration::from_secs(120));
    let topic = "early";
    let mut subs: Vec<(String, Proc, std::path::PathBuf)> = ["a", "stopped", "c"]
        .iter()
        .map(|n| {
            let (p, r) = subscriber(&env, n, topic, COUNT);
            (n.to_string(), p, r)
        })
        .collect();
    subs[1].1.signal(libc::SIGSTOP);
    let count = COUNT.to_string();
    let mut publisher = env.peer(
        "publisher",
        &[
            "publish",
            "--topic",
            topic,
            "--id",
            "1",
            "--count",
            &count,
            "--size",
            "64",
            "--capacity",
            "4096",
            "--retry-ms",
            "20",
            "--stats-every-ms",
            "100",
        ],
    );
    publisher.expect_line("ready", LINE_TIMEOUT);
    // Let the publisher run while the subscriber is stopped: it finishes
    // (a core that did not pre-join the stopped subscriber) or fills the ring
    // and waits for it.
    let early_done = publisher.line_where(Duration::from_millis(1500), |l| l.starts_with("done"));
    subs[1].1.signal(libc::SIGCONT);
    let finished_while_stopped = early_done.is_some();
    let done = match early_done {
        Some(l) => l,
        None => publisher.expect_line("done", Duration::from_secs(60)),
    };
    publisher.wait_ok(LINE_TIMEOUT);
    assert_eq!(field_u64(&done, "published"), COUNT);

    let mut failures = Vec::new();
    for (name, p, report) in &mut subs {
        let status = p.wait(Duration::from_secs(45));
        match Report::read_from(report) {
            Ok(r) => {
                let p = r.publishers.get(&1);
                if !(status.success()
                    && r.errors.is_empty()
                    && p.is_some_and(|p| {
                        (p.received, p.first, p.last, p.lost)
                            == (COUNT, Some(0), Some(COUNT - 1), 0)
                    }))
                {
                    failures.push(format!("{name} ({status}):\n{r}"));
                }
            }
            Err(e) => failures.push(format!("{name} ({status}): {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "early subscribers missed messages (publisher finished while one was stopped: {}):\n{}",
        finished_while_stopped,
        failures.join("\n")
    );

    let bus_dir = env.root().join(shmbus_bus::DEFAULT_BUS);
    let left = leftover_files(&bus_dir);
    assert!(
        left.is_empty(),
        "files left in the bus directory after every process exited: {left:?}{}",
        describe_tree(&bus_dir)
    );
}

/// The regression of issue 7: a subscriber already subscribed when a fast
/// publisher's ring appears sees that publisher's first message (before the
/// fix it started about 74 000 messages in, with no `Lost` event).
#[test]
fn subscribed_before_a_fast_publisher_sees_its_first_message() {
    const COUNT: u64 = 100_000;
    let env = TestEnv::new("early-fast", PEER, Duration::from_secs(120));
    let topic = "fast";
    let (mut sub, report) = subscriber(&env, "sub", topic, COUNT);
    let count = COUNT.to_string();
    let mut publisher = env.peer(
        "publisher",
        &[
            "publish", "--topic", topic, "--id", "1", "--count", &count, "--size", "16",
        ],
    );
    publisher.expect_line("done", Duration::from_secs(60));
    publisher.wait_ok(LINE_TIMEOUT);
    let _ = sub.wait(Duration::from_secs(45));
    let r = sub.report(&report);
    assert_everything_from_the_first(&r, COUNT, "the subscriber");
}
