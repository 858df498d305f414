//! The systemd unit in `bridge/systemd/`: its required directives, and —
//! when systemd runs this machine (PID 1) and `systemd-run` exists — the
//! real daemon started as a transient unit with the unit file's
//! `[Service]` properties, so `Type=notify` readiness, the watchdog and the
//! hardening are exercised by systemd itself. Otherwise that part prints why
//! it is skipped and passes.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{TestDir, Watchdog};

const UNIT: &str = include_str!("../systemd/shmbus-bridge.service");

/// `(key, value)` of the `[Service]` section.
fn service_properties() -> Vec<(String, String)> {
    let mut in_service = false;
    let mut props = Vec::new();
    for line in UNIT.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.is_empty() && !line.starts_with('#') {
            let (k, v) = line.split_once('=').expect("key=value");
            props.push((k.to_owned(), v.to_owned()));
        }
    }
    props
}

#[test]
fn unit_file_has_the_required_directives() {
    let props = service_properties();
    let get = |k: &str| {
        props
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("Type"), Some("notify"));
    assert!(get("WatchdogSec").is_some());
    assert_eq!(get("ExecReload"), Some("/bin/kill -HUP $MAINPID"));
    assert_eq!(get("Restart"), Some("on-failure"));
    assert_eq!(
        get("RemoveIPC"),
        Some("no"),
        "systemd must not delete the bus in /dev/shm"
    );
    assert_eq!(get("ProtectSystem"), Some("strict"));
    assert_eq!(get("ReadWritePaths"), Some("/dev/shm"));
    assert_eq!(get("NoNewPrivileges"), Some("yes"));
    assert_eq!(get("CapabilityBoundingSet"), Some(""));
    assert_eq!(
        get("RestrictAddressFamilies"),
        Some("AF_INET AF_INET6 AF_UNIX")
    );
    // A private /dev would hide /dev/shm, and so the bus, from the daemon.
    assert_ne!(get("PrivateDevices"), Some("yes"));
    // The explanation of RemoveIPC=no stays next to it.
    assert!(UNIT.contains("/dev/shm when the user's last session"));
}

fn systemd_skip_reason() -> Option<String> {
    let pid1 = Command::new("ps")
        .args(["-p", "1", "-o", "comm="])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if pid1 != "systemd" {
        return Some(format!("PID 1 is {pid1:?}, not systemd"));
    }
    if Command::new("systemd-run")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("systemd-run is not installed".into());
    }
    None
}

fn systemctl(args: &[&str]) -> String {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .expect("systemctl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn wait_state(unit: &str, state: &str, timeout: Duration) {
    let end = Instant::now() + timeout;
    loop {
        let now = systemctl(&["is-active", unit]);
        if now == state {
            return;
        }
        assert!(
            Instant::now() < end,
            "{unit} is {now:?}, not {state:?}, after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn transient_unit_becomes_active_reloads_and_stops() {
    if let Some(why) = systemd_skip_reason() {
        println!("skipped: {why}; the unit is only started where systemd runs the machine");
        return;
    }
    let _watchdog = Watchdog::new("systemd", Duration::from_secs(180));
    let dir = TestDir::new("ops-systemd");
    let keys = dir.keys(&["alpha", "beta"]);
    let unit = format!("shmbus-bridge-test-{}", std::process::id());
    let mut cmd = Command::new("systemd-run");
    cmd.arg(format!("--unit={unit}")).arg("--collect");
    for (k, v) in service_properties() {
        // The test runs the freshly built binary as the current user, with
        // flags instead of /etc/shmbus/bridge.toml.
        if matches!(k.as_str(), "ExecStart" | "User" | "Group") {
            continue;
        }
        // A build under a home directory must stay visible to the unit.
        let exe = env!("CARGO_BIN_EXE_shmbus-bridge");
        let in_home = ["/home/", "/root/", "/run/user/"]
            .iter()
            .any(|h| exe.starts_with(h));
        let v = if k == "ProtectHome" && in_home {
            "read-only".to_owned()
        } else {
            v
        };
        cmd.arg("-p").arg(format!("{k}={v}"));
    }
    cmd.arg(env!("CARGO_BIN_EXE_shmbus-bridge"));
    cmd.args(keys.args("alpha"));
    cmd.args([
        "--node-name",
        "alpha",
        "--root",
        dir.join("root").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--export",
        "*",
    ]);
    let status = cmd.status().expect("systemd-run");
    assert!(status.success(), "systemd-run failed: {status}");
    // Type=notify: active only after READY=1.
    wait_state(&unit, "active", Duration::from_secs(60));
    // The watchdog keeps it alive past WatchdogSec.
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(systemctl(&["is-active", &unit]), "active");
    systemctl(&["reload", &unit]);
    wait_state(&unit, "active", Duration::from_secs(60));
    systemctl(&["stop", &unit]);
    wait_state(&unit, "inactive", Duration::from_secs(60));
}
