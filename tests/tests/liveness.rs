//! Liveness by locks and waiting on futexes, with real processes (issue 7).
//!
//! - a busy-spinning `RingReader::read(BusySpin, None)` notices a SIGKILLed
//!   publisher and returns `Closed`;
//! - a subscriber SIGKILLed while asleep in a blocking read leaves its count
//!   in the control file's `waiters`; the publisher's liveness probe, which
//!   reclaims the slot, takes it back, and later publishes stop paying a
//!   wake-up (the futex word stops moving);
//! - `FUTEX_WAIT` works on the subscriber's read-only mapping of the data
//!   file: a subscriber that sleeps without spinning is woken by the
//!   publisher's `FUTEX_WAKE`, far sooner than its timed re-checks would find
//!   the message;
//! - a publisher and a subscriber of one ring in the same process (separate
//!   open file descriptions) see each other alive;
//! - a child forked without exec that drops its copy of a `RingReader`
//!   leaves the parent's slot alone.

use std::{
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use shmbus_bus::{
    layout::{SLOT_ACTIVE, SLOT_FREE, SLOT_STATE_MASK},
    ReadEvent, RingConfig, RingReader, RingWriter, StartAt, WaitStrategy,
};
use shmbus_tests::{
    harness::{field_u64, wait_until, TestEnv, LINE_TIMEOUT},
    hostile::{monotonic_ns, slot_state_at, RingWords, FUTEX_AT, WAITERS_AT},
};

const PEER: &str = env!("CARGO_BIN_EXE_peer");

fn small_ring() -> RingConfig {
    RingConfig {
        capacity: 4096,
        max_message: 512,
        slots: 4,
        ..RingConfig::default()
    }
}

fn waiters(words: &RingWords) -> u32 {
    words.control.u32_at(WAITERS_AT).expect("pread waiters")
}

fn futex(words: &RingWords) -> u32 {
    words.data.u32_at(FUTEX_AT).expect("pread futex")
}

/// A reader spinning in `read(BusySpin, None)` (no timeout: only the
/// publisher's death can end it) returns `Closed` within 5 s of the
/// publisher's SIGKILL.
#[test]
fn busy_spinning_reader_notices_a_killed_publisher() {
    let env = TestEnv::new("spin-killed-pub", PEER, Duration::from_secs(60));
    let path = env.root().join("t").join("p.ring");
    let path_s = path.display().to_string();
    let mut publ = env.peer("pub", &["hw-pub", "--path", &path_s]);
    publ.expect_line("ready", LINE_TIMEOUT);
    let mut reader = RingReader::open(&path, StartAt::Oldest).expect("open");
    publ.send_line("send 1 2000");
    publ.expect_line("sent n=1 of=1 end=ok", LINE_TIMEOUT);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut messages = 0;
        let outcome = loop {
            match reader.read(WaitStrategy::BusySpin, None) {
                Ok(ReadEvent::Message(_)) => messages += 1,
                Ok(ReadEvent::Closed) => break Ok(messages),
                Ok(other) => break Err(format!("{other:?}")),
                Err(e) => break Err(e.to_string()),
            }
        };
        let _ = tx.send((Instant::now(), outcome));
    });
    // Let it read the message and spin on the empty ring for a while.
    thread::sleep(Duration::from_millis(300));
    assert!(
        rx.try_recv().is_err(),
        "the reader returned before the publisher died"
    );
    let killed_at = Instant::now();
    let status = publ.kill();
    assert!(status.code().is_none(), "killed: {status}");
    let (when, outcome) = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the busy-spinning reader did not notice the SIGKILLed publisher within 5 s");
    let took = when.saturating_duration_since(killed_at);
    eprintln!("busy-spinning reader saw the publisher's death after {took:?}");
    assert_eq!(outcome, Ok(1), "one message, then Closed");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// A subscriber killed while asleep in a blocking read is counted in
/// `waiters` forever unless someone takes the count back: the publisher,
/// blocked on the dead subscriber's slot, probes it, reclaims it and takes
/// the count back, so later publishes no longer pay a wake-up.
#[test]
fn reader_killed_asleep_gives_back_its_waiter_count() {
    let env = TestEnv::new("killed-asleep", PEER, Duration::from_secs(60));
    let path = env.root().join("t").join("p.ring");
    let path_s = path.display().to_string();
    let mut publ = env.peer("pub", &["hw-pub", "--path", &path_s]);
    publ.expect_line("ready", LINE_TIMEOUT);
    let mut sub = env.peer(
        "sub",
        &[
            "hw-sub", "--path", &path_s, "--start", "oldest", "--wait", "sleep",
        ],
    );
    let joined = sub.expect_line("joined", LINE_TIMEOUT);
    let slot = field_u64(&joined, "slot") as usize;
    let words = RingWords::open(&path).expect("ring files");
    publ.send_line("send 1 2000");
    publ.expect_line("sent n=1 of=1 end=ok", LINE_TIMEOUT);
    sub.send_line("read 1 5000");
    assert_eq!(field_u64(&sub.expect_line("read ", LINE_TIMEOUT), "got"), 1);
    assert_eq!(waiters(&words), 0, "nobody asleep yet");

    // Asleep in a long read: counted in `waiters`, flagged in its slot.
    sub.send_line("read 1 60000");
    wait_until("the subscriber to sleep", Duration::from_secs(10), || {
        waiters(&words) == 1
    });
    thread::sleep(Duration::from_millis(200));
    assert_eq!(waiters(&words), 1, "the subscriber sleeps");
    let status = sub.kill();
    assert!(status.code().is_none(), "killed: {status}");
    thread::sleep(Duration::from_millis(50));
    assert_eq!(waiters(&words), 1, "the dead sleeper's count stays");

    // While the count stays, every publish pays a wake-up: the futex word moves.
    let before = futex(&words);
    publ.send_line("send 1 2000");
    publ.expect_line("sent n=1 of=1 end=ok", LINE_TIMEOUT);
    assert_ne!(futex(&words), before, "a publish with waiters != 0 wakes");

    // The ring (4 KiB) fills: the publisher blocks on the dead slot, probes
    // it, reclaims it, and sends everything.
    publ.send_line("send 100 5000");
    let sent = publ.expect_line("sent ", Duration::from_secs(30));
    assert!(sent.contains("n=100 of=100 end=ok"), "{sent}");
    publ.send_line("stats");
    let stats = publ.expect_line("stats ", LINE_TIMEOUT);
    assert!(field_u64(&stats, "evictions") >= 1, "reaped: {stats}");
    let state = words
        .control
        .u64_at(slot_state_at(slot))
        .expect("slot state");
    assert_eq!(state & SLOT_STATE_MASK, SLOT_FREE, "slot {slot} freed");
    assert_eq!(waiters(&words), 0, "the reclaimer took the count back");

    // Later publishes pay no wake-up any more: the futex word stays.
    let before = futex(&words);
    publ.send_line("send 10 2000");
    publ.expect_line("sent n=10 of=10 end=ok", LINE_TIMEOUT);
    assert_eq!(futex(&words), before, "no wake-up without sleepers");
    publ.close_stdin();
    publ.wait_ok(LINE_TIMEOUT);
}

/// The subscriber process maps the data file read-only and sleeps on the
/// producer page's futex word with no spinning, in 30 s slices; the
/// publisher (this process) sends one timestamped message 200 ms after the
/// subscriber's last wake-up, when `waiters` says it sleeps. Every round
/// must end by a futex wake-up: the subscriber's sleep statistics count no
/// sleep that ran to its timeout (without the wake, each round would wait
/// its 30 s slice out). Latencies are printed, not asserted.
#[test]
fn futex_wait_works_on_the_read_only_mapping() {
    const ROUNDS: usize = 11;
    let env = TestEnv::new("ro-futex", PEER, Duration::from_secs(60));
    let dir = env.root().join("t");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.ring");
    let mut writer = RingWriter::create(&path, &small_ring()).expect("create");
    let words = RingWords::open(&path).expect("ring files");
    let mut sub = env.peer(
        "sub",
        &[
            "wake-sub",
            "--path",
            &path.display().to_string(),
            "--rounds",
            &ROUNDS.to_string(),
        ],
    );
    sub.expect_line("joined", LINE_TIMEOUT);
    // The subscriber's mapping of the data file is read-only.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", sub.pid())).expect("maps");
    let canon = std::fs::canonicalize(&path).unwrap();
    let data_maps: Vec<&str> = maps
        .lines()
        .filter(|l| l.ends_with(&*canon.display().to_string()))
        .collect();
    assert!(!data_maps.is_empty(), "the data file is mapped: {maps}");
    for m in &data_maps {
        let perms = m.split_whitespace().nth(1).unwrap_or("");
        assert!(
            perms.starts_with("r-") && perms.contains('s'),
            "read-only shared: {m}"
        );
    }
    let mut latencies = Vec::new();
    for round in 0..ROUNDS {
        thread::sleep(Duration::from_millis(200));
        wait_until("the subscriber to sleep", Duration::from_secs(2), || {
            waiters(&words) == 1
        });
        writer
            .write(
                &monotonic_ns().to_le_bytes(),
                WaitStrategy::default(),
                Some(Duration::from_secs(2)),
            )
            .expect("write");
        let line = sub.expect_line("woke", Duration::from_secs(60));
        assert!(line.contains(&format!("round={round}")), "{line}");
        assert_eq!(
            field_u64(&line, "timeouts"),
            0,
            "round {round}: a sleep ran to its 30 s timeout instead of being woken: {line}"
        );
        assert!(
            field_u64(&line, "woken") > round as u64,
            "round {round}: each round ends with a wake-up: {line}"
        );
        latencies.push(field_u64(&line, "latency_us"));
    }
    sub.wait_ok(LINE_TIMEOUT);
    eprintln!("wake-up latencies (µs): {latencies:?}");
}

/// A publisher and a subscriber of the same ring in one process, each with
/// its own open file description: the publisher's probe finds the
/// subscriber's lock held (not reaped, it holds the publisher back), and
/// the subscriber finds the publisher alive.
#[test]
fn publisher_and_subscriber_in_one_process_see_each_other_alive() {
    let env = TestEnv::new("same-process", PEER, Duration::from_secs(60));
    let dir = env.root().join("t");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.ring");
    let mut writer = RingWriter::create(&path, &small_ring()).expect("create");
    let mut reader = RingReader::open(&path, StartAt::Oldest).expect("open");
    let slot = reader.slot().expect("slot");
    assert!(
        reader.publisher_alive(),
        "the publisher in this process is alive"
    );
    assert_eq!(writer.reap_dead_subscribers(), 0, "the subscriber is alive");
    assert_eq!(writer.stats().subscribers, 1);

    // Fill the ring; the publisher must wait on our subscriber (it probes
    // it every LIVENESS_INTERVAL meanwhile) and never reap it.
    let payload = [7u8; 100];
    let mut written = 0u64;
    while writer.try_write(&payload).is_ok() {
        written += 1;
    }
    let t0 = Instant::now();
    let blocked = writer.write(
        &payload,
        WaitStrategy::default(),
        Some(Duration::from_millis(500)),
    );
    assert!(
        matches!(blocked, Err(shmbus_bus::Error::Timeout)),
        "held back by the live subscriber: {blocked:?}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(500));
    assert_eq!(writer.stats().evictions, 0, "not reaped");
    assert_eq!(writer.reap_dead_subscribers(), 0);
    reader.check_slot().expect("still our slot");
    assert_eq!(reader.slot(), Some(slot));
    assert!(reader.publisher_alive());

    let drained = reader
        .drain(usize::MAX, |p| assert_eq!(p, payload))
        .expect("drain");
    assert_eq!(drained.messages as u64, written);
    writer
        .write(
            &payload,
            WaitStrategy::default(),
            Some(Duration::from_secs(2)),
        )
        .expect("room again");
    match reader.read(WaitStrategy::default(), Some(Duration::from_secs(2))) {
        Ok(ReadEvent::Message(m)) => assert_eq!(m.payload(), payload),
        other => panic!("{other:?}"),
    }
    drop(writer);
    match reader.read(WaitStrategy::default(), Some(Duration::from_secs(2))) {
        Ok(ReadEvent::Closed) => {}
        other => panic!("want Closed after the writer is dropped: {other:?}"),
    };
}

/// A process holding a `RingReader` forks (no exec); the child drops its
/// copy of the reader and `_exit`s. The parent's slot stays ACTIVE with the
/// same generation, the publisher does not reap it, and the parent still
/// reads.
#[test]
fn forked_child_dropping_a_reader_leaves_the_parent_slot() {
    let env = TestEnv::new("fork-reader", PEER, Duration::from_secs(60));
    let dir = env.root().join("t");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("p.ring");
    let mut writer = RingWriter::create(&path, &small_ring()).expect("create");
    let words = RingWords::open(&path).expect("ring files");
    let mut parent = env.peer(
        "parent",
        &["fork-reader", "--path", &path.display().to_string()],
    );
    let joined = parent.expect_line("joined", LINE_TIMEOUT);
    let (slot, generation) = (
        field_u64(&joined, "slot") as usize,
        field_u64(&joined, "gen"),
    );
    let state = words.control.u64_at(slot_state_at(slot)).unwrap();
    assert_eq!(state, (generation << 8) | SLOT_ACTIVE, "joined");
    parent.expect_line("child-exited code=0", LINE_TIMEOUT);
    let ok = parent.expect_line("slot ", LINE_TIMEOUT);
    assert_eq!(ok, format!("slot ok slot={slot} gen={generation}"));
    let state = words.control.u64_at(slot_state_at(slot)).unwrap();
    assert_eq!(
        state,
        (generation << 8) | SLOT_ACTIVE,
        "the child's drop left the parent's slot ACTIVE, same generation"
    );
    assert_eq!(writer.reap_dead_subscribers(), 0, "the parent is alive");
    assert_eq!(writer.stats().subscribers, 1);
    writer
        .write(
            b"after the fork",
            WaitStrategy::default(),
            Some(Duration::from_secs(2)),
        )
        .expect("write");
    parent.send_line("go");
    parent.expect_line("got 14", LINE_TIMEOUT);
    parent.wait_ok(LINE_TIMEOUT);
}
