//! The example unit of `docs/systemd.md` keeps the bus: it says
//! `RemoveIPC=no`, uses no `DynamicUser=` (which implies `RemoveIPC=yes`)
//! nor `PrivateDevices=yes`, and — where `systemd-analyze` is installed —
//! `systemd-analyze verify` reports nothing about it (its `ExecStart=`
//! pointed at `/bin/true`, which exists everywhere).

use std::{path::Path, process::Command};

const GUIDE: &str = "docs/systemd.md";

/// The first ```` ```ini ```` block of the guide.
fn unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(GUIDE);
    let text = std::fs::read_to_string(path).expect("read the guide");
    let start = text.find("```ini\n").expect("an ini block") + "```ini\n".len();
    let len = text[start..].find("```").expect("end of the block");
    text[start..start + len].to_owned()
}

fn setting(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

#[test]
fn the_guide_unit_keeps_the_bus() {
    let unit = unit();
    assert_eq!(setting(&unit, "RemoveIPC").as_deref(), Some("no"));
    assert_eq!(setting(&unit, "DynamicUser"), None);
    assert_ne!(setting(&unit, "PrivateDevices").as_deref(), Some("yes"));
    assert_eq!(
        setting(&unit, "ReadWritePaths").as_deref(),
        Some("/dev/shm")
    );

    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIPPED: systemd-analyze is not installed; the directives were checked");
        return;
    };
    assert!(version.status.success());
    let dir = std::env::temp_dir().join(format!("guide-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exec = setting(&unit, "ExecStart").expect("ExecStart");
    let file = dir.join("imu-driver.service");
    std::fs::write(&file, unit.replace(&exec, "/bin/true")).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&file)
        .output()
        .expect("run systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify found problems in the guide's unit:\n{said}"
    );
}
