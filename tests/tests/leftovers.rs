//! Issue 7, "Ring files stay behind": 20 runs of a plain "receive N then
//! exit" subscriber with a publisher that exits. Once every process of a
//! run has exited, nothing is left in the bus directory: no data file
//! (`.ring`), no control file (`.ctl`), no registry file, no temporary file
//! (DESIGN.md: "When the last process using a ring is gone, the ring is
//! gone: no files are left behind in the bus directory"; the allow-list is
//! `isolation::ALLOWED_LEFTOVERS`, empty). Directories may stay.

use std::time::Duration;

use shmbus_tests::{
    harness::{TestEnv, LINE_TIMEOUT},
    isolation::{describe_tree, leftover_files},
};

const PEER: &str = env!("CARGO_BIN_EXE_peer");

fn runs(test: &str, n: usize) {
    let env = TestEnv::new(test, PEER, Duration::from_secs(60 + 3 * n as u64));
    let bus_dir = env.root().join(shmbus_bus::DEFAULT_BUS);
    let mut dirty = Vec::new();
    for run in 0..n {
        let topic = format!("t{run}");
        // Even runs: the publisher sends exactly N; odd runs: 1.5 N, so the
        // subscriber also leaves while the publisher still sends.
        let count = if run % 2 == 0 { "100" } else { "150" };
        let mut sub = env.peer(
            &format!("sub-{run}"),
            &[
                "subscribe",
                "--topic",
                &topic,
                "--expect-publishers",
                "1",
                "--exit-after",
                "100",
                "--timeout-s",
                "20",
            ],
        );
        sub.expect_line("subscribed", LINE_TIMEOUT);
        let mut publisher = env.peer(
            &format!("pub-{run}"),
            &[
                "publish",
                "--topic",
                &topic,
                "--id",
                "1",
                "--count",
                count,
                "--size-max",
                "200",
                "--wait-subscribers",
                "1",
            ],
        );
        sub.wait_ok(LINE_TIMEOUT);
        publisher.wait_ok(LINE_TIMEOUT);
        let left = leftover_files(&bus_dir);
        if !left.is_empty() {
            dirty.push(format!("run {run}: {left:?}"));
            // Start the next run clean, so each run is judged on its own.
            for f in &left {
                let _ = std::fs::remove_file(f);
            }
        }
    }
    assert!(
        dirty.is_empty(),
        "{} of {n} runs left files in the bus directory after every process exited:\n{}{}",
        dirty.len(),
        dirty.join("\n"),
        describe_tree(&bus_dir)
    );
}

#[test]
fn no_files_left_after_receive_n_then_exit() {
    runs("leftovers", 20);
}

#[test]
#[ignore = "stress: 500 runs"]
fn stress_no_files_left_after_receive_n_then_exit() {
    runs("leftovers-long", 500);
}
