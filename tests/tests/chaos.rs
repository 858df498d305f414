//! Kill chaos (issue 13): the mix of `shmbus_tests::chaos::topology`
//! (4 publishers on a tethered, an untethered and an overwrite topic; 8
//! subscribers of every kind on both sides of a bridge pair over loopback)
//! while a driver SIGKILLs a random process every 50-200 ms and restarts
//! it. The checker (`chaos::checker`) judges the run from every process's
//! log: no torn or corrupt message, per-publisher order, no loss to a live
//! subscriber under Block, gaps only where the policy allows and exactly
//! counted, no send longer than the liveness bound, every process stopped
//! cleanly; then nothing may be left once everything exited and `shmbus gc`
//! ran (`chaos::leaks`).
//!
//! `kill_chaos_short` (40 kills, in the default run) and
//! `stress_kill_chaos` (1000 kills, `--ignored`) check the same invariants;
//! `cargo run --release -p shmbus-tests --bin chaos -- --kills N --seed S`
//! runs longer ones.

use std::path::PathBuf;

use shmbus_tests::chaos::{checker, driver, leaks, topology};

const PEER: &str = env!("CARGO_BIN_EXE_peer");
const BRIDGE: &str = env!("CARGO_BIN_EXE_bridge");

fn chaos(tag: &str, kills: u64, seed: u64) {
    let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-{tag}"));
    let layout = topology::Layout::create(tag, &logs, PEER.as_ref(), BRIDGE.as_ref())
        .expect("set up the run");
    let outcome = driver::run(
        &layout,
        topology::mix(4, 8),
        &driver::Disturb::Kill {
            kills,
            interval_ms: (50, 200),
        },
        seed,
        |_| {},
    )
    .expect("start the mix");
    let verdict = checker::check(&outcome);
    let left = leaks::check(&[&layout.root_a, &layout.root_b]);
    let figures = checker::figures(&outcome, &verdict, &left);
    println!("{figures}");
    assert!(
        verdict.violations.is_empty() && left.after_gc.is_empty(),
        "{figures}logs in {}",
        logs.display()
    );
    // The run did what it says: every kill happened, messages flowed and
    // every kind of gap was exercised (so the checks above had something
    // to check).
    assert_eq!(outcome.kills.values().sum::<u64>(), kills);
    assert!(
        verdict.published > 1000 && verdict.received > 1000,
        "{figures}"
    );
    assert!(verdict.subscriber_incarnations.1 >= 8, "{figures}");
    let _ = std::fs::remove_dir_all(layout.base());
    let _ = std::fs::remove_dir_all(&logs);
}

/// 40 kills (about 20 s): the invariants above, in the default run.
#[test]
fn kill_chaos_short() {
    chaos("short", 40, 0x5eed);
}

/// At least 1000 kills (a few minutes on a loaded 2-core machine).
#[test]
#[ignore = "stress: minutes"]
fn stress_kill_chaos() {
    chaos("stress", 1000, 0xc4a05);
}
