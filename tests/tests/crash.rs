//! SIGKILL in the middle of the stream: dead subscribers, dead publishers,
//! and a publisher that dies holding an uncommitted loan.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use shmbus_bus::LIVENESS_INTERVAL;
use shmbus_tests::{
    harness::{field_u64, parse_ready, wait_until, TestEnv, LINE_TIMEOUT},
    ringfile::RingFile,
};

const PEER: &str = env!("CARGO_BIN_EXE_peer");

/// Slack on top of [`LIVENESS_INTERVAL`] for a blocked publisher to notice a
/// dead subscriber and finish its remaining messages on a loaded 2-core CI
/// machine. This bounds a liveness property, not a speed.
const SLACK: Duration = Duration::from_secs(5);

fn sent_so_far(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("sent "))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

/// A Block ring so small that one stalled subscriber stops the publisher.
/// SIGKILL that subscriber: the publisher must evict it and finish, and the
/// other subscriber must get every message. Without eviction the publisher
/// could never finish (the dead subscriber gates 20 messages in, the ring
/// holds about 36), so finishing proves it.
#[test]
fn killed_subscriber_is_evicted_and_publisher_goes_on() {
    let env = TestEnv::new("kill-sub", PEER, Duration::from_secs(60));
    let topic = "blocky";
    let report = env.report_path("healthy");
    let report_arg = report.display().to_string();
    let mut stalled = env.peer(
        "stalled",
        &[
            "subscribe",
            "--topic",
            topic,
            "--expect-publishers",
            "1",
            "--stall-after",
            "20",
        ],
    );
    let mut healthy = env.peer(
        "healthy",
        &[
            "subscribe",
            "--topic",
            topic,
            "--expect-publishers",
            "1",
            "--count",
            "3000",
            "--report",
            &report_arg,
        ],
    );
    stalled.expect_line("subscribed", LINE_TIMEOUT);
    healthy.expect_line("subscribed", LINE_TIMEOUT);
    let mut publisher = env.peer(
        "publisher",
        &[
            "publish",
            "--topic",
            topic,
            "--id",
            "1",
            "--count",
            "3000",
            "--size",
            "64",
            "--capacity",
            "4096",
            "--wait-subscribers",
            "2",
        ],
    );
    let (_, path) = parse_ready(&publisher.expect_line("ready", LINE_TIMEOUT));
    stalled.expect_line("stalled", LINE_TIMEOUT);
    let ring = RingFile::open(&path).unwrap();
    wait_until("the publisher to hit the full ring", LINE_TIMEOUT, || {
        ring.control().unwrap().full_events > 0
    });
    assert!(publisher.try_status().is_none(), "{}", publisher.describe());
    let before = ring.control().unwrap();
    assert!(before.published < 3000, "{before:?}");

    stalled.kill();
    let killed_at = Instant::now();
    let done = publisher.expect_line("done", LIVENESS_INTERVAL + SLACK);
    let took = killed_at.elapsed();
    publisher.wait_ok(LINE_TIMEOUT);
    assert_eq!(field_u64(&done, "published"), 3000);
    assert_eq!(field_u64(&done, "evictions"), 1, "the dead subscriber only");
    assert!(
        took < LIVENESS_INTERVAL + SLACK,
        "publisher resumed {took:?} after the kill"
    );

    healthy.wait_ok(LINE_TIMEOUT);
    let r = healthy.report(&report);
    assert!(r.errors.is_empty(), "{r}");
    let p = r.publisher(1);
    assert_eq!((p.received, p.last, p.lost), (3000, Some(2999), 0), "{r}");
    assert_eq!(r.gone.len(), 1, "{r}");
}

/// SIGKILL one of two publishers mid-stream. Subscribers get every message
/// it committed before (at least up to its last "sent N" line), contiguous
/// from 0 and intact, then PublisherGone; the other publisher is unaffected;
/// the dead ring is removed once its readers are done.
#[test]
fn killed_publisher_mid_stream() {
    let env = TestEnv::new("kill-pub", PEER, Duration::from_secs(60));
    let topic = "stream";
    let mut subs = Vec::new();
    for (name, style) in [("recv", None), ("drain", Some("--drain"))] {
        let report = env.report_path(name);
        let report_arg = report.display().to_string();
        let mut args = vec![
            "subscribe",
            "--topic",
            topic,
            "--expect-publishers",
            "2",
            "--report",
            &report_arg,
        ];
        args.extend(style);
        let mut s = env.peer(name, &args);
        s.expect_line("subscribed", LINE_TIMEOUT);
        subs.push((s, report));
    }
    let common = [
        "--topic",
        topic,
        "--size-max",
        "200",
        "--capacity",
        "16384",
        "--wait-subscribers",
        "2",
    ];
    let mut victim = env.peer(
        "victim",
        &[
            &["publish", "--id", "1", "--count", "1000000000"][..],
            &["--rate", "20000", "--progress-every", "250"],
            &common,
        ]
        .concat(),
    );
    let mut survivor = env.peer(
        "survivor",
        &[
            &["publish", "--id", "2", "--count", "2000", "--rate", "8000"][..],
            &common,
        ]
        .concat(),
    );
    let (victim_ring, victim_path) = parse_ready(&victim.expect_line("ready", LINE_TIMEOUT));
    let (survivor_ring, _) = parse_ready(&survivor.expect_line("ready", LINE_TIMEOUT));
    victim.expect_line("sent 2000", LINE_TIMEOUT);
    victim.kill();
    victim.collect_output(LINE_TIMEOUT);
    let committed = sent_so_far(victim.lines_seen());
    assert!(committed >= 2000);
    survivor.wait_ok(LINE_TIMEOUT);

    for (s, report) in &mut subs {
        s.wait_ok(LINE_TIMEOUT);
        let r = s.report(report);
        assert!(r.errors.is_empty(), "{r}");
        let v = r.publisher(1);
        assert!(v.received >= committed, "{committed} were committed:\n{r}");
        assert_eq!(
            (v.first, v.last, v.lost),
            (Some(0), Some(v.received - 1), 0),
            "{r}"
        );
        let p = r.publisher(2);
        assert_eq!((p.received, p.last), (2000, Some(1999)), "{r}");
        assert!(r.gone.contains(&victim_ring) && r.gone.contains(&survivor_ring));
    }
    // The last reader of the dead ring removed it; a sweep finds nothing left.
    assert!(!victim_path.exists(), "dead publisher's ring left behind");
    assert_eq!(shmbus_bus::sweep_topic(&env.topic_dir(topic)).unwrap(), 0);
    assert!(env.rings(topic).is_empty(), "{:?}", env.rings(topic));
}

/// The publisher commits 500 messages, fills a loan with message 500 and is
/// SIGKILLed before committing it. Subscribers get exactly 0..500, never the
/// loaned one, then PublisherGone. The ring file stays while a live (here:
/// stopped) subscriber is attached, and a fresh sweep removes it once that
/// subscriber is dead too.
#[test]
fn killed_publisher_holding_a_loan() {
    let env = TestEnv::new("kill-loan", PEER, Duration::from_secs(60));
    let topic = "loans";
    let report = env.report_path("reader");
    let report_arg = report.display().to_string();
    let sub_args = [
        "subscribe",
        "--topic",
        topic,
        "--expect-publishers",
        "1",
        "--count",
        "500",
    ];
    let mut reader = env.peer(
        "reader",
        &[&sub_args[..], &["--report", &report_arg]].concat(),
    );
    let mut frozen = env.peer("frozen", &sub_args);
    reader.expect_line("subscribed", LINE_TIMEOUT);
    frozen.expect_line("subscribed", LINE_TIMEOUT);
    let mut publisher = env.peer(
        "publisher",
        &[
            "publish",
            "--topic",
            topic,
            "--id",
            "7",
            "--count",
            "1000",
            "--size-max",
            "300",
            "--capacity",
            "16384",
            "--wait-subscribers",
            "2",
            "--hang-in-loan-after",
            "500",
        ],
    );
    let (ring, path) = parse_ready(&publisher.expect_line("ready", LINE_TIMEOUT));
    publisher.expect_line("in-loan seq=500", LINE_TIMEOUT);
    frozen.signal(libc::SIGSTOP);
    publisher.kill();

    // The loaned record was never stamped: the word at the tail is clear.
    let file = RingFile::open(&path).unwrap();
    let ctrl = file.control().unwrap();
    let (data, cap) = file.geometry().unwrap();
    assert_eq!(ctrl.published, 500, "{ctrl:?}");
    assert_eq!(file.u64_at(data + (ctrl.tail & (cap - 1))).unwrap(), 0);

    assert_eq!(
        sweep(&env, topic),
        0,
        "a live (stopped) reader still needs it"
    );
    reader.wait_ok(LINE_TIMEOUT);
    let r = reader.report(&report);
    assert!(r.errors.is_empty(), "{r}");
    let p = r.publisher(7);
    assert_eq!(
        (p.received, p.first, p.last),
        (500, Some(0), Some(499)),
        "{r}"
    );
    assert!(r.gone.contains(&ring), "{r}");
    assert!(
        path.exists(),
        "removed while the stopped reader is attached"
    );

    frozen.kill();
    assert_eq!(sweep(&env, topic), 1, "dead publisher, dead readers: stale");
    assert!(!path.exists());
}

fn sweep(env: &TestEnv, topic: &str) -> usize {
    shmbus_bus::sweep_topic(Path::new(&env.topic_dir(topic))).unwrap()
}

/// Many rounds of: start a publisher on a tiny ring, kill it at a varying
/// point, check the subscriber got a contiguous, intact prefix and the end.
#[test]
#[ignore = "soak: run with --ignored"]
fn stress_kill_publisher_at_random_points() {
    let env = TestEnv::new("kill-pub-stress", PEER, Duration::from_secs(900));
    let mut x = u64::from(std::process::id());
    for round in 0..40 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let kill_after = 1 + (x >> 33) % 40;
        let topic = format!("round{round}");
        let report = env.report_path(&topic);
        let report_arg = report.display().to_string();
        let mut sub = env.peer(
            "sub",
            &[
                "subscribe",
                "--topic",
                &topic,
                "--expect-publishers",
                "1",
                "--report",
                &report_arg,
            ],
        );
        sub.expect_line("subscribed", LINE_TIMEOUT);
        let mut p = env.peer(
            "pub",
            &[
                "publish",
                "--topic",
                &topic,
                "--id",
                "1",
                "--count",
                "1000000000",
                "--capacity",
                "4096",
                "--size-max",
                "500",
                "--progress-every",
                "100",
                "--wait-subscribers",
                "1",
            ],
        );
        p.expect_line(&format!("sent {}", kill_after * 100), LINE_TIMEOUT);
        p.kill();
        p.collect_output(LINE_TIMEOUT);
        let committed = sent_so_far(p.lines_seen());
        sub.wait_ok(LINE_TIMEOUT);
        let r = sub.report(&report);
        assert!(r.errors.is_empty(), "round {round}: {r}");
        let s = r.publisher(1);
        assert!(s.received >= committed, "round {round}: {r}");
        assert_eq!(s.last, Some(s.received - 1), "round {round}: {r}");
        assert!(env.rings(&topic).is_empty(), "round {round}");
    }
}
