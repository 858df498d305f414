//! The real daemon's log lines: RFC 3339 UTC timestamps on a plain
//! standard error, none when standard error is the journal stream named by
//! `JOURNAL_STREAM`, and `RUST_LOG` replacing `log_level`.

mod common;

use std::{
    fs::File,
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{wait_until, Tele, TestDir, Watchdog};
use shmbus::Bus;

/// Runs the daemon with stderr to `log` and `envs` until its log shows it
/// started, then stops it; returns the log. The bus has one exportable
/// ring, which the daemon's first scan (always done, even if the stop comes
/// first) reports at debug level.
fn run(dir: &TestDir, log: &Path, envs: &[(&str, String)]) -> String {
    let keys = dir.keys(&["alpha", "beta"]);
    let root = dir.join("root");
    let bus = Bus::builder().root(&root).build().unwrap();
    let _publisher = bus.publisher_named::<Tele>("t", "p").unwrap();
    let stderr = File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shmbus-bridge"));
    cmd.args(keys.args("alpha"))
        .args([
            "--node-name",
            "alpha",
            "--listen",
            "off",
            "--export",
            "*",
            "--root",
        ])
        .arg(&root)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr.try_clone().unwrap()));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // JOURNAL_STREAM names the very file standard error is.
    if envs.iter().any(|(k, _)| *k == "JOURNAL_STREAM") {
        let m = stderr.metadata().unwrap();
        cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
    }
    let mut child = cmd.spawn().unwrap();
    wait_until("the daemon's first lines", Duration::from_secs(30), || {
        std::fs::read_to_string(log).is_ok_and(|t| t.contains("logging at"))
    });
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    std::fs::read_to_string(log).unwrap()
}

/// Whether `line` starts with `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
fn starts_with_rfc3339_utc(line: &str) -> bool {
    let Some(stamp) = line.split(' ').next() else {
        return false;
    };
    let b = stamp.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && stamp.ends_with('Z')
        && stamp[..4].bytes().all(|c| c.is_ascii_digit())
}

#[test]
fn timestamps_journald_and_rust_log() {
    let _watchdog = Watchdog::new("logging", Duration::from_secs(120));
    let dir = TestDir::new("ops-logging");

    let plain = run(&dir, &dir.join("plain.log"), &[]);
    let first = plain.lines().next().unwrap();
    assert!(starts_with_rfc3339_utc(first), "{plain}");
    assert!(
        first.contains(" INFO shmbus_bridge::log: node alpha: logging at Info"),
        "{plain}"
    );
    assert!(
        !plain.contains("DEBUG"),
        "info is the default level: {plain}"
    );
    assert!(
        plain.contains("INFO shmbus_bridge::daemon: stopped"),
        "{plain}"
    );

    let journal = run(
        &dir,
        &dir.join("journal.log"),
        &[("JOURNAL_STREAM", String::new())],
    );
    for line in journal.lines().filter(|l| l.contains("shmbus_bridge::")) {
        assert!(!starts_with_rfc3339_utc(line), "{journal}");
        assert!(
            line.trim_start().starts_with("INFO")
                || line.trim_start().starts_with("WARN")
                || line.trim_start().starts_with("DEBUG"),
            "{line}"
        );
    }

    let debug = run(
        &dir,
        &dir.join("debug.log"),
        &[("RUST_LOG", "shmbus_bridge=debug".into())],
    );
    assert!(debug.contains("filter: shmbus_bridge=debug"), "{debug}");
    assert!(
        debug.contains(" DEBUG shmbus_bridge::daemon::catalog: found exportable ring"),
        "RUST_LOG=debug shows debug lines: {debug}"
    );

    let bad = run(&dir, &dir.join("bad.log"), &[("RUST_LOG", "=[".into())]);
    assert!(bad.contains("RUST_LOG ignored"), "{bad}");
}
