//! Issue 7, "Full /dev/shm": on a small tmpfs (256 KiB, mounted for the
//! test), ring creation fails with ENOSPC surfaced as a clear error when the
//! pages are reserved (`fallocate` at creation), never as a SIGBUS later:
//! the rings made before keep working, no process crashes, and once it
//! has exited no file (half-made or not) is left on the mount. The mount is
//! removed at the end even if the test fails (drop guard).
//!
//! Skipped, with the reason printed, when not root.

use std::time::Duration;

use shmbus_tests::{
    harness::{TestEnv, LINE_TIMEOUT},
    isolation::{describe_tree, is_root, leftover_files, skip, TmpfsMount},
};

const PEER: &str = env!("CARGO_BIN_EXE_peer");

#[test]
fn full_tmpfs_is_enospc_at_creation_and_existing_rings_keep_working() {
    let test = "full-shm";
    if skip(
        test,
        (!is_root()).then(|| "needs root to mount a tmpfs".to_string()),
    ) {
        return;
    }
    let env = TestEnv::new(test, PEER, Duration::from_secs(90));
    let mount = match TmpfsMount::new(&env.root().join("tiny"), "256k") {
        Ok(m) => m,
        Err(e) => {
            skip(test, Some(e));
            return;
        }
    };
    let root = mount.path().to_path_buf();
    // 16 KiB rings: a data file of a few pages plus a control file each, so
    // the 256 KiB mount holds a handful.
    let mut fill = env.peer_with::<&str>(
        "fill",
        &[],
        &root,
        &[
            "fill",
            "--topic",
            "t",
            "--capacity",
            "16384",
            "--max-rings",
            "200",
            "--count",
            "10",
        ],
    );
    fill.collect_output(Duration::from_secs(60));
    let status = fill.wait(LINE_TIMEOUT);
    let lines = fill.lines_seen().to_vec();
    let tree = describe_tree(&root);
    assert!(
        status.success(),
        "the filling process failed ({status}; signal 7 is SIGBUS): {}{tree}",
        fill.describe()
    );
    let created = lines.iter().filter(|l| l.starts_with("created ")).count();
    let failure = lines
        .iter()
        .find(|l| l.starts_with("create-failed "))
        .unwrap_or_else(|| {
            panic!("ring creation never failed on a 256 KiB tmpfs: {lines:?}{tree}")
        });
    assert!(
        failure.contains("No space left on device")
            || failure.contains("ENOSPC")
            || failure.contains("os error 28"),
        "creation failed, but not with ENOSPC: {failure}"
    );
    assert!(
        created >= 1,
        "not even one ring fitted in 256 KiB: {lines:?}{tree}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("exchanged ")),
        "{lines:?}"
    );
    // Every process has exited: nothing half-made (nor anything else) stays.
    let left = leftover_files(&root);
    assert!(
        left.is_empty(),
        "files left on the full tmpfs after every process exited: {left:?}{}",
        describe_tree(&root)
    );
    // `mount` is dropped here (after `fill` ended): unmounted, dir removed.
    drop(mount);
    assert!(
        !root.exists(),
        "the test tmpfs was not removed: {}",
        root.display()
    );
}
