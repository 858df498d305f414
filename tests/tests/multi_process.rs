//! Three publisher processes × three subscriber processes on one topic.
//!
//! Proves, across real processes: every message reaches every subscriber
//! exactly once, in per-publisher order, with its content intact, over a ring
//! small enough to wrap and block many times; all three publishing paths
//! (`send`, `loan`, `send_batch`) and all three receive styles (`recv` with
//! futex waits, `drain` batches, spin-then-yield) interoperate; subscribers
//! then see every publisher gone, and no ring file is left behind.

use std::{collections::BTreeSet, time::Duration};

use shmbus_tests::harness::{field_u64, parse_ready, TestEnv, LINE_TIMEOUT};

const PEER: &str = env!("CARGO_BIN_EXE_peer");

fn three_by_three(name: &str, count: u64, capacity: u64, budget: Duration) {
    let env = TestEnv::new(name, PEER, budget);
    let topic = "fanout";
    let count_arg = count.to_string();
    let cap_arg = capacity.to_string();

    // Subscribers first; each reads every publisher from its first message.
    let styles: [&[&str]; 3] = [&[], &["--drain"], &["--wait", "yield"]];
    let mut subs = Vec::new();
    let mut reports = Vec::new();
    for (i, style) in styles.iter().enumerate() {
        let report = env.report_path(&format!("sub{i}"));
        let report_arg = report.display().to_string();
        let mut args = vec![
            "subscribe",
            "--topic",
            topic,
            "--expect-publishers",
            "3",
            "--count",
            &count_arg,
            "--start",
            "oldest",
            "--report",
            &report_arg,
        ];
        args.extend_from_slice(style);
        let mut sub = env.peer(&format!("sub{i}"), &args);
        sub.expect_line("subscribed", LINE_TIMEOUT);
        subs.push(sub);
        reports.push(report);
    }

    // Barrier: each publisher sends only once all three subscribers joined
    // its ring (`Publisher::stats().subscribers`), so none can miss a message.
    let modes: [&[&str]; 3] = [&[], &["--loan"], &["--batch", "16"]];
    let mut pubs = Vec::new();
    let mut rings = BTreeSet::new();
    for (i, mode) in modes.iter().enumerate() {
        let id = (i + 1).to_string();
        let mut args = vec![
            "publish",
            "--topic",
            topic,
            "--id",
            &id,
            "--count",
            &count_arg,
            "--size-max",
            "300",
            "--capacity",
            &cap_arg,
            "--wait-subscribers",
            "3",
        ];
        args.extend_from_slice(mode);
        let mut p = env.peer(&format!("pub{id}"), &args);
        rings.insert(parse_ready(&p.expect_line("ready", LINE_TIMEOUT)).0);
        pubs.push(p);
    }
    for p in &mut pubs {
        let done = p.expect_line("done", budget);
        assert_eq!(field_u64(&done, "published"), count, "{}", p.describe());
        p.wait_ok(LINE_TIMEOUT);
    }

    for (sub, path) in subs.iter_mut().zip(&reports) {
        sub.wait_ok(budget);
        let report = sub.report(path);
        assert!(report.errors.is_empty(), "{report}");
        for id in 1..=3 {
            let p = report.publisher(id);
            assert_eq!(
                (p.received, p.first, p.last, p.lost),
                (count, Some(0), Some(count - 1), 0),
                "publisher {id}:\n{report}"
            );
        }
        assert_eq!(report.gone, rings, "every publisher reported gone once");
    }
    // Closed rings are removed by their publisher or their last reader.
    assert!(
        env.rings(topic).is_empty(),
        "left behind: {:?}",
        env.rings(topic)
    );
}

#[test]
fn three_publishers_three_subscribers_exactly_once_in_order() {
    three_by_three("3x3", 10_000, 16 << 10, Duration::from_secs(90));
}

#[test]
#[ignore = "soak: run with --ignored"]
fn stress_three_publishers_three_subscribers() {
    three_by_three("3x3-stress", 300_000, 64 << 10, Duration::from_secs(900));
}
