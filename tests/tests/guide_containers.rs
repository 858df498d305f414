//! The container setups of `docs/containers.md` (Docker `--ipc=shareable` /
//! `--ipc=container:NAME`, a shared volume, a Kubernetes `emptyDir` with
//! `medium: Memory`) all give two containers one tmpfs, each in its own
//! mount and pid namespace, possibly at different paths. This test builds
//! exactly that with the kernel's own mechanisms: a tmpfs mounted for the
//! test, bind-mounted at `/mnt` inside two `unshare --mount --pid` process
//! trees ("containers"), a publisher in one and a subscriber in the other,
//! each with `SHMBUS_ROOT=/mnt/bus` (the tmpfs is mode 0777, like an
//! `emptyDir`: a world-writable directory above the root is accepted). Every message arrives exactly once, in
//! order; the rings live on the shared tmpfs, nowhere else.
//!
//! The other properties the guide relies on have their own tests:
//! a shared `/dev/shm` across pid namespaces with SIGKILL
//! (`containers.rs`), and two uids sharing a bus in group mode
//! (`two_users.rs`). Skipped, with the reason printed, when not root.

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use shmbus_tests::{
    harness::{field_u64, parse_ready, TestEnv, LINE_TIMEOUT},
    isolation::{pidns_unavailable, skip, TmpfsMount},
};

const PEER: &str = env!("CARGO_BIN_EXE_peer");
const COUNT: u64 = 3000;
/// Where each "container" sees the shared tmpfs.
const INSIDE: &str = "/mnt";

/// The command prefix of a "container": its own mount and pid namespaces,
/// with `shared` bind-mounted at [`INSIDE`] (private to the namespace).
fn container(shared: &Path) -> Vec<String> {
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child",
        "sh",
        "-c",
    ]
    .into_iter()
    .map(String::from)
    .chain([format!(
        "mount --bind '{}' {INSIDE} && exec \"$0\" \"$@\"",
        shared.display()
    )])
    .collect()
}

#[test]
fn two_containers_share_a_bus_through_one_tmpfs_mounted_in_each() {
    let test = "guide-containers";
    if skip(test, pidns_unavailable()) {
        return;
    }
    let env = TestEnv::new(test, PEER, Duration::from_secs(90));
    let ipc = match TmpfsMount::new(&env.root().join("ipc"), "64m") {
        Ok(m) => m,
        Err(e) => {
            skip(test, Some(e));
            return;
        }
    };
    // World-writable like a Kubernetes emptyDir (0777): fine above the
    // bus root, which the bus creates below it.
    std::fs::set_permissions(ipc.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let root = Path::new(INSIDE).join("bus");
    let report = env.report_path("subscriber");
    let report_arg = report.display().to_string();
    let count = COUNT.to_string();
    let mut subscriber = env.peer_with(
        "subscriber",
        &container(ipc.path()),
        &root,
        &[
            "subscribe",
            "--topic",
            "imu",
            "--expect-publishers",
            "1",
            "--count",
            &count,
            "--report",
            &report_arg,
        ],
    );
    subscriber.expect_line("subscribed", LINE_TIMEOUT);
    let mut publisher = env.peer_with(
        "publisher",
        &container(ipc.path()),
        &root,
        &[
            "publish",
            "--topic",
            "imu",
            "--id",
            "1",
            "--count",
            &count,
            "--capacity",
            "65536",
            // 3 s in all: the ring is still there when the test looks.
            "--rate",
            "1000",
            "--wait-subscribers",
            "1",
        ],
    );
    let (_, ring) = parse_ready(&publisher.expect_line("ready", LINE_TIMEOUT));
    // The path the publisher reports is its own view; from the host, the
    // same file is on the shared tmpfs.
    let relative = ring
        .strip_prefix(INSIDE)
        .unwrap_or_else(|_| panic!("ring {} is not under {INSIDE}", ring.display()));
    let on_host = ipc.path().join(relative);
    assert!(
        on_host.exists(),
        "the ring is not on the shared tmpfs: {}",
        on_host.display()
    );

    let done = publisher.expect_line("done", Duration::from_secs(60));
    publisher.wait_ok(LINE_TIMEOUT);
    assert_eq!(field_u64(&done, "published"), COUNT);
    subscriber.wait_ok(LINE_TIMEOUT);
    let r = subscriber.report(&report);
    assert!(r.errors.is_empty(), "{r}");
    let p = r.publisher(1);
    assert_eq!(
        (p.received, p.first, p.last, p.lost),
        (COUNT, Some(0), Some(COUNT - 1), 0),
        "{r}"
    );
    // Both "containers" have exited: nothing is left on the shared tmpfs.
    let left = shmbus_tests::isolation::leftover_files(ipc.path());
    assert!(left.is_empty(), "files left on the shared tmpfs: {left:?}");
}
