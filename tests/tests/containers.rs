//! Issue 7, "Containers": a publisher and a subscriber in different pid
//! namespaces (`unshare --pid --fork --mount-proc`, the view a container
//! with a shared `/dev/shm` has) share one ring. Liveness must come from
//! the kernel (OFD locks on the control file), never from `/proc/<pid>`,
//! which the other side cannot see.
//!
//! Skipped, with the reason printed, when not root or `unshare` is missing.

use std::time::{Duration, Instant};

use shmbus_tests::{
    harness::{field_u64, parse_ready, Proc, TestEnv, LINE_TIMEOUT},
    isolation::{
        namespace_init, pidns_unavailable, send_signal, size_and_inode, skip, PubStats, PIDNS,
    },
};

const PEER: &str = env!("CARGO_BIN_EXE_peer");

/// How long the subscriber holds its sample.
const HOLD: Duration = Duration::from_secs(3);

/// Margin on top of the documented bound ([`shmbus_bus::LIVENESS_INTERVAL`])
/// for a blocked publisher to find the killed subscriber's slot free (its
/// lock released by the kernel) on a loaded 2-core machine. A liveness
/// bound, not a speed.
const SLACK: Duration = Duration::from_secs(5);

/// Messages the publisher sends in the held-sample tests.
const COUNT: u64 = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InNamespace {
    Subscriber,
    Publisher,
}

fn prefix(side: InNamespace, who: InNamespace) -> &'static [&'static str] {
    if side == who {
        PIDNS
    } else {
        &[]
    }
}

/// The latest `stats` line the publisher prints after now.
fn next_stats(publisher: &mut Proc) -> PubStats {
    let line = publisher.expect_line_where("stats", LINE_TIMEOUT, |l| l.starts_with("stats "));
    PubStats::parse(&line).expect("stats line")
}

/// SIGKILLs the process that `p` runs in its namespace (its pid 1, found
/// through `unshare`), or `p` itself when it runs on the host.
fn kill_inside(p: &mut Proc, in_namespace: bool) {
    if in_namespace {
        let init = namespace_init(p.pid(), Duration::from_secs(5))
            .unwrap_or_else(|| panic!("no namespace child under unshare: {}", p.describe()));
        send_signal(init, libc::SIGKILL).expect("kill the namespace's init");
    } else {
        p.kill();
    }
}

/// The held sample's bytes never change while the publisher pushes hard
/// into a 4 KiB Block ring; the publisher really waits (its full-event count
/// rises during the hold); after the holder is SIGKILLed (inside its
/// namespace) the publisher frees its slot within the documented bound and
/// finishes; a second, host subscriber gets every message. Fails on a core
/// that infers death from `/proc/<pid>`: the other side's pid is invisible
/// (or names another process), so the holder is evicted at once and its
/// sample overwritten.
fn held_sample_case(test: &str, side: InNamespace) {
    if skip(test, pidns_unavailable()) {
        return;
    }
    let env = TestEnv::new(test, PEER, Duration::from_secs(120));
    let topic = "held";
    let root = env.root().to_path_buf();
    let report = env.report_path("healthy");
    let report_arg = report.display().to_string();
    let count = COUNT.to_string();
    let mut healthy = env.peer(
        "healthy",
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
    healthy.expect_line("subscribed", LINE_TIMEOUT);
    let ms = HOLD.as_millis().to_string();
    let mut held = env.peer_with(
        "held",
        prefix(side, InNamespace::Subscriber),
        &root,
        &[
            "hold",
            "--topic",
            topic,
            "--hold-ms",
            &ms,
            "--after",
            "keep",
        ],
    );
    held.expect_line("subscribed", LINE_TIMEOUT);
    let mut publisher = env.peer_with(
        "publisher",
        prefix(side, InNamespace::Publisher),
        &root,
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
            "--wait-subscribers",
            "2",
            "--retry-ms",
            "20",
            "--stats-every-ms",
            "50",
        ],
    );
    let (_, path) = parse_ready(&publisher.expect_line("ready", LINE_TIMEOUT));
    let (size, inode) = size_and_inode(&path).expect("the ring file exists");

    held.expect_line("holding", LINE_TIMEOUT);
    let at_hold = next_stats(&mut publisher);
    let verdict = held.expect_line("held ", HOLD + LINE_TIMEOUT);
    let after_hold = next_stats(&mut publisher);
    assert!(
        verdict.starts_with("held unchanged"),
        "the bytes of a held sample changed: {verdict}\npublisher stats at hold {at_hold:?}, after {after_hold:?}\n{}",
        held.describe()
    );
    assert!(
        after_hold.full > at_hold.full,
        "the publisher's full-event count did not rise during the {HOLD:?} hold \
         (at hold {at_hold:?}, after {after_hold:?}): it did not wait for the holder"
    );
    assert!(
        after_hold.published < COUNT,
        "the publisher finished while a sample was held: {after_hold:?}"
    );
    assert_eq!(
        size_and_inode(&path).ok(),
        Some((size, inode)),
        "the live ring file was removed, replaced or resized"
    );

    kill_inside(&mut held, side == InNamespace::Subscriber);
    let killed_at = Instant::now();
    let bound = shmbus_bus::LIVENESS_INTERVAL + SLACK;
    let resumed = publisher.line_where(bound, |l| {
        l.starts_with("done")
            || PubStats::parse(l).is_some_and(|s| s.published > after_hold.published)
    });
    let took = killed_at.elapsed();
    assert!(
        resumed.is_some() && took < bound,
        "the publisher did not free the killed holder's slot within {bound:?} (took {took:?}): {}",
        publisher.describe()
    );
    let done = publisher.expect_line("done", Duration::from_secs(60));
    publisher.wait_ok(LINE_TIMEOUT);
    assert_eq!(field_u64(&done, "published"), COUNT);
    assert!(field_u64(&done, "evictions") >= 1, "{done}");
    let _ = held.wait(LINE_TIMEOUT);

    healthy.wait_ok(LINE_TIMEOUT);
    let r = healthy.report(&report);
    assert!(r.errors.is_empty(), "{r}");
    let p = r.publisher(1);
    assert_eq!(
        (p.received, p.first, p.last, p.lost),
        (COUNT, Some(0), Some(COUNT - 1), 0),
        "{r}"
    );
}

#[test]
fn held_sample_never_changes_subscriber_in_pid_namespace() {
    held_sample_case("held-sub-in-ns", InNamespace::Subscriber);
}

#[test]
fn held_sample_never_changes_publisher_in_pid_namespace() {
    held_sample_case("held-pub-in-ns", InNamespace::Publisher);
}

/// A subscriber that joins from its own pid namespace, and a sweep run
/// from another one, leave the live host ring alone: the file stays (same
/// inode, same size), the host publisher keeps publishing to a host
/// subscriber that gets every message, and the namespaced subscriber is not
/// deaf (it receives 200 messages in order).
#[test]
fn namespaced_subscriber_never_deletes_a_live_host_ring() {
    let test = "ns-no-delete";
    if skip(test, pidns_unavailable()) {
        return;
    }
    let env = TestEnv::new(test, PEER, Duration::from_secs(90));
    let topic = "live";
    let root = env.root().to_path_buf();
    let report = env.report_path("host-sub");
    let report_arg = report.display().to_string();
    let mut host_sub = env.peer(
        "host-sub",
        &[
            "subscribe",
            "--topic",
            topic,
            "--expect-publishers",
            "1",
            "--count",
            "4000",
            "--report",
            &report_arg,
        ],
    );
    host_sub.expect_line("subscribed", LINE_TIMEOUT);
    let mut publisher = env.peer(
        "publisher",
        &[
            "publish",
            "--topic",
            topic,
            "--id",
            "1",
            "--count",
            "4000",
            "--size-max",
            "200",
            "--capacity",
            "65536",
            "--rate",
            "1000",
            "--wait-subscribers",
            "1",
            "--progress-every",
            "100",
        ],
    );
    let (_, path) = parse_ready(&publisher.expect_line("ready", LINE_TIMEOUT));
    publisher.expect_line("sent 300", LINE_TIMEOUT);
    let before = size_and_inode(&path).expect("the ring exists");

    let mut ns_sub = env.peer_with(
        "ns-sub",
        PIDNS,
        &root,
        &[
            "hold",
            "--topic",
            topic,
            "--hold-ms",
            "0",
            "--after",
            "release",
            "--count",
            "200",
            "--timeout-s",
            "30",
        ],
    );
    ns_sub.expect_line("subscribed", LINE_TIMEOUT);
    assert_eq!(
        size_and_inode(&path).ok(),
        Some(before),
        "subscribing from a pid namespace removed or replaced the live host ring {}",
        path.display()
    );
    let mut ns_sweep = env.peer_with(
        "ns-sweep",
        PIDNS,
        &root,
        &[
            "sweep",
            "--topic",
            topic,
            "--for-ms",
            "500",
            "--every-ms",
            "5",
        ],
    );
    ns_sweep.wait_ok(LINE_TIMEOUT);
    assert_eq!(
        size_and_inode(&path).ok(),
        Some(before),
        "a sweep from a pid namespace removed or replaced the live host ring {}",
        path.display()
    );
    ns_sub.expect_line("finished", Duration::from_secs(40));
    ns_sub.wait_ok(LINE_TIMEOUT);

    let done = publisher.expect_line("done", Duration::from_secs(60));
    publisher.wait_ok(LINE_TIMEOUT);
    assert_eq!(field_u64(&done, "published"), 4000);
    host_sub.wait_ok(LINE_TIMEOUT);
    let r = host_sub.report(&report);
    assert!(r.errors.is_empty(), "{r}");
    let p = r.publisher(1);
    assert_eq!((p.received, p.first, p.lost), (4000, Some(0), 0), "{r}");
}
