//! Issue 7, "Join storm": subscriber processes join and leave a small
//! subscriber table in a loop against a fast Block publisher, and some are
//! SIGKILLed at random. Slot ownership must be exclusive: every owner logs
//! the (slot, generation) it got, flushed before it reads anything, and no
//! pair may ever appear twice; every sample's content is checked by its
//! reader; nothing gets stuck (every process ends within its bound).
//!
//! Uses the bus-level `RingReader`/`RingWriter` through the `peer` modes
//! `ring-storm` and `ring-publish`, and `RingReader::slot()`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use shmbus_tests::harness::{field_u64, Proc, TestEnv, LINE_TIMEOUT};

const PEER: &str = env!("CARGO_BIN_EXE_peer");

/// Subscriber processes per ring at any time.
const SUBSCRIBERS: usize = 16;

struct Storm {
    slots: u32,
    run: Duration,
    kill_every: Duration,
    seed: u64,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn start_subscriber(env: &TestEnv, ring: &Path, log: &Path, run: Duration, n: usize) -> Proc {
    let ring = ring.display().to_string();
    let log = log.display().to_string();
    let ms = run.as_millis().to_string();
    let seed = (n as u64 * 7919 + 1).to_string();
    env.peer(
        &format!("storm-{n}"),
        &[
            "ring-storm",
            "--path",
            &ring,
            "--log",
            &log,
            "--for-ms",
            &ms,
            "--read-max",
            "40",
            "--seed",
            &seed,
        ],
    )
}

/// One `<slot> <generation> <pid> <round>` line per join.
fn read_logs(logs: &[PathBuf]) -> Vec<(usize, u64, String)> {
    let mut out = Vec::new();
    for log in logs {
        let Ok(text) = std::fs::read_to_string(log) else {
            continue; // killed before its first join
        };
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 4, "torn log line {line:?} in {}", log.display());
            let slot = f[0].parse().expect("slot");
            let generation = f[1].parse().expect("generation");
            out.push((slot, generation, format!("pid {} round {}", f[2], f[3])));
        }
    }
    out
}

fn storm(env: &TestEnv, s: &Storm) {
    let ring = env.root().join("storm").join(format!("s{}.ring", s.slots));
    let logs_dir = env.root().join("logs");
    std::fs::create_dir_all(&logs_dir).expect("logs dir");
    let ring_arg = ring.display().to_string();
    let slots = s.slots.to_string();
    // The publisher runs a little longer than the subscribers, so late
    // joiners still find it; each of its messages may wait at most
    // `--stuck-ms` for space.
    let pub_ms = (s.run + Duration::from_millis(500)).as_millis().to_string();
    let mut publisher = env.peer(
        &format!("publisher-s{}", s.slots),
        &[
            "ring-publish",
            "--path",
            &ring_arg,
            "--slots",
            &slots,
            "--capacity",
            "4096",
            "--for-ms",
            &pub_ms,
            "--stuck-ms",
            "10000",
        ],
    );
    publisher.expect_line("ready", LINE_TIMEOUT);

    let mut logs = Vec::new();
    let mut live: Vec<Proc> = Vec::new();
    let mut finished: Vec<Proc> = Vec::new();
    let mut n = 0;
    let mut spawn = |live: &mut Vec<Proc>, logs: &mut Vec<PathBuf>, left: Duration| {
        let log = logs_dir.join(format!("s{}-{n}.log", s.slots));
        live.push(start_subscriber(env, &ring, &log, left, n));
        logs.push(log);
        n += 1;
    };
    let start = Instant::now();
    for _ in 0..SUBSCRIBERS {
        spawn(&mut live, &mut logs, s.run);
    }
    let mut rng = s.seed;
    let mut kills = 0;
    while start.elapsed() + s.kill_every < s.run {
        std::thread::sleep(s.kill_every);
        // Retire those that ended on their own, then SIGKILL one at random
        // and start a replacement for the rest of the run.
        let mut i = 0;
        while i < live.len() {
            if live[i].try_status().is_some() {
                finished.push(live.swap_remove(i));
            } else {
                i += 1;
            }
        }
        if !live.is_empty() {
            let i = (splitmix(&mut rng) % live.len() as u64) as usize;
            let mut victim = live.swap_remove(i);
            victim.kill();
            kills += 1;
        }
        let left = s.run.saturating_sub(start.elapsed());
        spawn(&mut live, &mut logs, left);
    }

    let bound = Duration::from_secs(30);
    let done = publisher.expect_line_where("done or stuck", s.run + bound, |l| {
        l.starts_with("done") || l.starts_with("stuck")
    });
    assert!(
        done.starts_with("done"),
        "the publisher got stuck: {}",
        publisher.describe()
    );
    publisher.wait_ok(LINE_TIMEOUT);
    assert!(field_u64(&done, "published") > 0, "{done}");
    // Every subscriber ends on its own (killed ones excepted); judged after
    // the ownership check below, which is the sharper failure.
    let mut failed = Vec::new();
    for mut p in live.into_iter().chain(finished) {
        if !p.wait(bound).success() {
            failed.push(p.describe());
        }
    }

    let joins = read_logs(&logs);
    let mut seen: BTreeMap<(usize, u64), Vec<String>> = BTreeMap::new();
    for (slot, generation, who) in &joins {
        assert!(*slot < s.slots as usize, "slot {slot} of {}", s.slots);
        seen.entry((*slot, *generation))
            .or_default()
            .push(who.clone());
    }
    let shared: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(
        shared.is_empty(),
        "ring with {} slots: (slot, generation) pairs owned more than once: {shared:?}",
        s.slots
    );
    assert!(
        failed.is_empty(),
        "ring with {} slots: {} subscriber(s) failed (wrong content, gap, lost slot or stuck):\n{}",
        s.slots,
        failed.len(),
        failed.join("\n")
    );
    assert!(
        joins.len() >= SUBSCRIBERS,
        "only {} joins in the whole storm ({} slots, {kills} kills)",
        joins.len(),
        s.slots
    );
    eprintln!(
        "storm slots={}: {} joins, {kills} kills, {done}",
        s.slots,
        joins.len()
    );
}

/// `slots = 1..=4`, 16 subscribers each, one SIGKILL every 150 ms, about
/// 3 s per ring.
#[test]
fn join_storm_slots_never_shared() {
    let env = TestEnv::new("join-storm", PEER, Duration::from_secs(150));
    for slots in 1..=4 {
        storm(
            &env,
            &Storm {
                slots,
                run: Duration::from_secs(3),
                kill_every: Duration::from_millis(150),
                seed: u64::from(slots) * 31,
            },
        );
    }
}

/// The long variant: 30 s per ring, a SIGKILL every 50 ms.
#[test]
#[ignore = "stress: minutes"]
fn stress_join_storm_slots_never_shared() {
    let env = TestEnv::new("join-storm-long", PEER, Duration::from_secs(600));
    for slots in 1..=4 {
        storm(
            &env,
            &Storm {
                slots,
                run: Duration::from_secs(30),
                kill_every: Duration::from_millis(50),
                seed: u64::from(slots) * 131,
            },
        );
    }
}
