//! Issue 7, "Truncating a ring file kills both sides with SIGBUS": tools
//! and the sweep must never truncate (nor replace, nor remove) a live
//! ring's files. A publisher and a subscriber run while other processes
//! sweep the topic in a tight loop: every file of the live ring (data and
//! control) keeps its size and inode throughout, and no process dies (of
//! SIGBUS or otherwise).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use shmbus_tests::{
    harness::{field_u64, parse_ready, TestEnv, LINE_TIMEOUT},
    isolation::{describe_tree, size_and_inode},
};

const PEER: &str = env!("CARGO_BIN_EXE_peer");

/// The files of the ring `id` in `dir` (`<id>.ring`, `<id>.ctl`, whatever
/// the layout has) with their size and inode.
fn ring_files(dir: &std::path::Path, id: &str) -> BTreeMap<PathBuf, (u64, u64)> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_stem().is_some_and(|s| s == id))
                .filter_map(|p| size_and_inode(&p).ok().map(|m| (p, m)))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sweeps_never_truncate_live_rings() {
    const COUNT: u64 = 12_000;
    let env = TestEnv::new("no-truncate", PEER, Duration::from_secs(90));
    let topic = "swept";
    let report = env.report_path("sub");
    let report_arg = report.display().to_string();
    let count = COUNT.to_string();
    let mut sub = env.peer(
        "sub",
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
        ],
    );
    sub.expect_line("subscribed", LINE_TIMEOUT);
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
            "--size-max",
            "300",
            "--capacity",
            "16384",
            "--rate",
            "4000",
            "--wait-subscribers",
            "1",
            "--progress-every",
            "1000",
        ],
    );
    let (id, _) = parse_ready(&publisher.expect_line("ready", LINE_TIMEOUT));
    let dir = env.topic_dir(topic);
    let before = ring_files(&dir, &id);
    assert!(!before.is_empty(), "no files for ring {id}");

    let mut sweepers: Vec<_> = (0..2)
        .map(|i| {
            env.peer(
                &format!("sweeper-{i}"),
                &[
                    "sweep",
                    "--topic",
                    topic,
                    "--for-ms",
                    "2500",
                    "--every-ms",
                    "1",
                ],
            )
        })
        .collect();
    for s in &mut sweepers {
        s.expect_line("sweeping", LINE_TIMEOUT);
    }
    // While the sweeps run and the publisher is live, look at the files.
    let until = Instant::now() + Duration::from_millis(2500);
    let mut looks = 0;
    while Instant::now() < until && publisher.try_status().is_none() {
        let now = ring_files(&dir, &id);
        assert_eq!(
            now,
            before,
            "a live ring's files changed while sweeps ran (look {looks}){}",
            describe_tree(&dir)
        );
        looks += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        looks > 10,
        "the publisher ended before the sweeps could run"
    );
    for s in &mut sweepers {
        s.wait_ok(LINE_TIMEOUT);
    }
    let done = publisher.expect_line("done", Duration::from_secs(30));
    publisher.wait_ok(LINE_TIMEOUT);
    assert_eq!(field_u64(&done, "published"), COUNT);
    sub.wait_ok(LINE_TIMEOUT);
    let r = sub.report(&report);
    assert!(r.errors.is_empty(), "{r}");
    let p = r.publisher(1);
    assert_eq!((p.received, p.first, p.lost), (COUNT, Some(0), 0), "{r}");
}
