//! `shmbus doctor` on this machine and against fixtures where each check
//! fails; `shmbus stat` on a live bus.

mod common;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    process::{Command, Output},
};

use common::{describe, is_root, Root, SHMBUS};
use serde_json::Value;

const CHECKS: [&str; 12] = [
    "shm-space",
    "tree-modes",
    "remove-ipc",
    "namespaces",
    "open-files",
    "memlock",
    "optmem-max",
    "bridge-zerocopy",
    "thp-shmem",
    "futex-waitv",
    "io-uring",
    "membarrier",
];

fn checks(out: &Output) -> Vec<Value> {
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", describe(out)))
        .as_array()
        .unwrap()
        .clone()
}

fn find<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {checks:#?}"))
}

#[test]
fn doctor_prints_every_check_on_this_machine() {
    let root = Root::new("doctor");
    let out = root.shmbus(&["doctor", "--json"], b"");
    let all = checks(&out);
    let names: Vec<&str> = all.iter().map(|c| c["check"].as_str().unwrap()).collect();
    assert_eq!(names, CHECKS);
    for c in &all {
        let status = c["status"].as_str().unwrap();
        assert!(["ok", "info", "warn", "fail"].contains(&status), "{c}");
        assert!(!c["detail"].as_str().unwrap().is_empty());
        if status == "warn" || status == "fail" {
            assert!(c["fix"].is_string(), "{c}: a problem says what to fix");
        }
    }
    // What MACHINE-FACTS says this machine has.
    for name in ["futex-waitv", "membarrier", "shm-space", "tree-modes"] {
        assert_eq!(find(&all, name)["status"], "ok", "{:#}", find(&all, name));
    }
    let human = root.shmbus(&["doctor"], b"");
    let text = String::from_utf8_lossy(&human.stdout);
    for name in CHECKS {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(name)),
            "{name} missing:\n{text}"
        );
    }
    assert!(text.contains("12 checks: 0 failed"), "{text}");
}

#[test]
fn doctor_fails_on_a_tiny_tmpfs() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let root = Root::new("doctor-tmpfs");
    let mnt = root.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    // A private mount namespace: the 1 MiB tmpfs vanishes with the shell.
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs {m} && {SHMBUS} --root {m}/shmbus doctor --json",
        m = mnt.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed check fails: {}",
        describe(&out)
    );
    let all = checks(&out);
    let c = find(&all, "shm-space");
    assert_eq!(c["status"], "fail", "{c:#}");
    let detail = c["detail"].as_str().unwrap();
    assert!(detail.contains("(tmpfs): 1 MiB total"), "{detail}");
    assert!(detail.contains("less than one default ring"), "{detail}");
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("mount -o remount,size="),
        "{c:#}"
    );
}

#[test]
fn doctor_fails_on_a_tree_with_wrong_modes() {
    let root = Root::new("doctor-modes");
    let mut publisher = root.peer("publish", &["--topic", "m"]);
    let id = publisher
        .expect("ready")
        .strip_prefix("ready ")
        .unwrap()
        .to_owned();
    let ok = checks(&root.shmbus(&["doctor", "--json"], b""));
    assert_eq!(find(&ok, "tree-modes")["status"], "ok");
    let topic = root.topic("m");
    let ring = topic.join(format!("{id}.ring"));
    fs::set_permissions(&topic, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&ring, fs::Permissions::from_mode(0o644)).unwrap();
    if is_root() {
        std::os::unix::fs::chown(root.path().join("default"), Some(65534), None).unwrap();
    }
    let out = root.shmbus(&["doctor", "--json"], b"");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let all = checks(&out);
    let c = find(&all, "tree-modes");
    assert_eq!(c["status"], "fail", "{c:#}");
    let detail = c["detail"].as_str().unwrap();
    let fix = c["fix"].as_str().unwrap();
    assert!(
        detail.contains(&format!("{} has mode 0777", topic.display())),
        "{detail}"
    );
    assert!(
        detail.contains(&format!("{} has mode 0644", ring.display())),
        "{detail}"
    );
    assert!(
        fix.contains(&format!("chmod 700 {}", topic.display())),
        "{fix}"
    );
    assert!(
        fix.contains(&format!("chmod 600 {}", ring.display())),
        "{fix}"
    );
    if is_root() {
        assert!(
            detail.contains("default is owned by uid 65534, not 0"),
            "{detail}"
        );
        assert!(fix.contains("chown 0 "), "{fix}");
    }
    let human = String::from_utf8(root.shmbus(&["doctor"], b"").stdout).unwrap();
    assert!(human.contains("FAIL  tree-modes"), "{human}");
    assert!(
        human.contains("fix: ") && human.contains("chmod 700 "),
        "{human}"
    );
}

/// A network namespace, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn doctor_warns_on_a_lowered_optmem_max_in_a_network_namespace() {
    if !is_root() || Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipped: ip netns needs root and iproute2");
        return;
    }
    let ns = Netns(format!("shmbus-cli-doctor-{}", std::process::id()));
    let run = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", describe(&out));
        out
    };
    assert!(Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap()
        .success());
    run(&["sysctl", "-w", "net.core.optmem_max=4096"]);
    let root = Root::new("doctor-optmem");
    let root_arg = root.path().to_str().unwrap().to_owned();
    let all = checks(&run(&[SHMBUS, "--root", &root_arg, "doctor", "--json"]));
    let c = find(&all, "optmem-max");
    assert_eq!(c["status"], "warn", "{c:#}");
    assert!(
        c["detail"].as_str().unwrap().contains("optmem_max = 4096"),
        "{c:#}"
    );
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("sysctl -w net.core.optmem_max=131072"),
        "{c:#}"
    );
    // The host's namespace is untouched.
    let host = checks(&root.shmbus(&["doctor", "--json"], b""));
    assert_eq!(find(&host, "optmem-max")["status"], "ok");
}

#[test]
fn doctor_reads_a_bridge_stats_file() {
    let root = Root::new("doctor-bridge");
    let stats = root.path().join("bridge.stats");
    fs::write(
        &stats,
        "bridge node=a uptime_ms=5 handshake_failures=0 rejected_connections=0\n\
         peer name=b connected=1 connections=1 reconnects=0 protocol_errors=0 bytes_sent=9 bytes_received=0 zc_completed_ids=100 zc_copied_ids=100 zc_switched_to_plain=0\n",
    )
    .unwrap();
    let path = stats.to_str().unwrap();
    let all = checks(&root.shmbus(&["doctor", "--json", "--bridge-stats", path], b""));
    let c = find(&all, "bridge-zerocopy");
    assert_eq!(c["status"], "warn", "{c:#}");
    assert!(c["detail"]
        .as_str()
        .unwrap()
        .contains("100 zero-copy sends completed, 100 of them copied"));
    assert!(c["fix"].as_str().unwrap().contains("zerocopy = false"));
    fs::write(&stats, "peer name=b zc_completed_ids=100 zc_copied_ids=0\n").unwrap();
    let all = checks(&root.shmbus(&["doctor", "--json", "--bridge-stats", path], b""));
    assert_eq!(find(&all, "bridge-zerocopy")["status"], "ok");
}

#[test]
fn stat_shows_rates_and_lag() {
    let root = Root::new("stat");
    let mut sub = root.peer("subscribe", &["--topic", "s", "--read", "5"]);
    sub.expect("subscribed");
    let mut publisher = root.peer(
        "publish",
        &["--topic", "s", "--rate", "2000", "--capacity", "1048576"],
    );
    let id = publisher
        .expect("ready")
        .strip_prefix("ready ")
        .unwrap()
        .to_owned();
    publisher.send_line("send 100000");
    sub.expect("stalled");
    let out = root.shmbus(
        &["stat", "--count", "2", "--interval", "0.5", "--json"],
        b"",
    );
    assert!(out.status.success(), "{}", describe(&out));
    let frames: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 2);
    // Every frame, the first included, has rates over a whole interval.
    for frame in &frames {
        assert!(
            frame["rows"][0]["messages_per_s"].as_f64().unwrap() > 200.0,
            "{frame:#}"
        );
    }
    let row = &frames[1]["rows"][0];
    assert_eq!(row["publisher_id"], id.as_str());
    assert_eq!(row["state"], "live");
    assert_eq!(row["subscribers"], 1);
    let rate = row["messages_per_s"].as_f64().unwrap();
    assert!(rate > 200.0 && rate < 4000.0, "{row:#}");
    assert!(
        row["bytes_per_s"].as_f64().unwrap() > 200.0 * 16.0,
        "{row:#}"
    );
    assert!(row["max_lag_messages"].as_u64().unwrap() > 0, "{row:#}");
    assert!(row["fill"].as_f64().unwrap() > 0.0, "{row:#}");

    // Not a terminal: plain lines, one per ring per refresh.
    let out = root.shmbus(&["stat", "--count", "2", "--interval", "0.3"], b"");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[1].contains(&format!("s/{id} live msgs/s=")), "{text}");
    assert!(lines[1].contains(" subs=1 "), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no escape codes when not a terminal"
    );
}

#[test]
fn bench_measures_every_case() {
    let root = Root::new("bench");
    let out = root.shmbus(&["bench", "--seconds", "1.6", "--json"], b"");
    assert!(out.status.success(), "{}", describe(&out));
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), 8);
    let mut seen = Vec::new();
    for r in &results {
        seen.push(format!("{} {} {}", r["api"], r["size"], r["kind"]));
        assert!(r["messages"].as_u64().unwrap() > 0, "{r}");
        if r["kind"] == "latency" {
            let (p50, p99, max) = (
                r["p50_ns"].as_u64().unwrap(),
                r["p99_ns"].as_u64().unwrap(),
                r["max_ns"].as_u64().unwrap(),
            );
            assert!(0 < p50 && p50 <= p99 && p99 <= max, "{r}");
        } else {
            assert!(r["messages_per_s"].as_f64().unwrap() > 0.0, "{r}");
            let per_msg =
                r["bytes_per_s"].as_f64().unwrap() / r["messages_per_s"].as_f64().unwrap();
            assert!((per_msg - r["size"].as_f64().unwrap()).abs() < 1.0, "{r}");
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        8,
        "raw and typed, 64 B and 4 KiB, latency and throughput: {seen:?}"
    );
    // Its private root is gone.
    let leftovers: Vec<_> = fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".bench-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Runs `sh -c script` and parses the doctor's JSON it prints.
fn doctor_in(script: &str) -> (Output, Vec<Value>) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    let all = checks(&out);
    (out, all)
}

#[test]
fn doctor_fails_on_too_few_open_files() {
    let root = Root::new("doctor-nofile");
    let (out, all) = doctor_in(&format!(
        "ulimit -n 40 && exec {SHMBUS} --root {} doctor --json",
        root.path().display()
    ));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let c = find(&all, "open-files");
    assert_eq!(c["status"], "fail", "{c:#}");
    assert!(c["detail"].as_str().unwrap().contains("soft 40"), "{c:#}");
    assert!(c["fix"].as_str().unwrap().contains("ulimit -n"), "{c:#}");
}

#[test]
fn doctor_warns_on_a_root_that_is_not_a_tmpfs() {
    let fs_type = Command::new("stat")
        .args(["-f", "-c", "%T", "/var/tmp"])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&fs_type.stdout).trim() == "tmpfs" {
        eprintln!("skipped: /var/tmp is a tmpfs here");
        return;
    }
    let dir = format!("/var/tmp/shmbus-cli-doctor-{}", std::process::id());
    let out = Command::new(SHMBUS)
        .args(["--root", &dir, "doctor", "--json"])
        .output()
        .unwrap();
    let all = checks(&out);
    let c = find(&all, "shm-space");
    assert_eq!(c["status"], "warn", "{c:#}");
    assert!(
        c["detail"].as_str().unwrap().contains("not a tmpfs"),
        "{c:#}"
    );
    assert!(c["fix"].as_str().unwrap().contains("SHMBUS_ROOT"), "{c:#}");
}

#[test]
fn doctor_warns_on_a_low_memlock_limit_without_privilege() {
    if !is_root() {
        eprintln!("skipped: dropping to another user needs root");
        return;
    }
    let (_, all) = doctor_in(&format!(
        "ulimit -l 64 && exec setpriv --reuid=65534 --regid=65534 --clear-groups {SHMBUS} --root /nonexistent/shmbus doctor --json"
    ));
    let c = find(&all, "memlock");
    assert_eq!(c["status"], "warn", "{c:#}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("RLIMIT_MEMLOCK 64 KiB"),
        "{c:#}"
    );
    assert!(c["fix"].as_str().unwrap().contains("ulimit -l"), "{c:#}");
}

#[test]
fn doctor_warns_when_logind_would_remove_the_rings() {
    if !is_root() {
        eprintln!("skipped: mount namespaces need root");
        return;
    }
    let root = Root::new("doctor-logind");
    let conf = root.path().join("logind.conf");
    // A private mount namespace where systemd seems to run and logind's
    // configuration is ours; the doctor runs as an ordinary user.
    let run = |setting: &str, uid: u32| {
        fs::write(&conf, format!("[Login]\n{setting}\n")).unwrap();
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o644)).unwrap();
        let (_, all) = doctor_in(&format!(
            "exec unshare --mount sh -c 'mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && \
             mount --bind {conf} /etc/systemd/logind.conf && \
             exec setpriv --reuid={uid} --regid={uid} --clear-groups {SHMBUS} --root /nonexistent/shmbus doctor --json'",
            conf = conf.display()
        ));
        find(&all, "remove-ipc").clone()
    };
    let c = run("#RemoveIPC=yes", 1000);
    assert_eq!(c["status"], "warn", "{c:#}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("RemoveIPC=yes (default)"),
        "{c:#}"
    );
    assert!(c["fix"].as_str().unwrap().contains("RemoveIPC=no"), "{c:#}");
    let c = run("RemoveIPC=no", 1000);
    assert_eq!(c["status"], "ok", "{c:#}");
    // System users are spared.
    let c = run("RemoveIPC=yes", 999);
    assert_eq!(c["status"], "ok", "{c:#}");
    assert!(
        c["detail"].as_str().unwrap().contains("system user"),
        "{c:#}"
    );
}

#[test]
fn stat_on_a_terminal_redraws_and_quits_on_q() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: script(1) is needed for a pseudo-terminal");
        return;
    }
    let root = Root::new("stat-tty");
    let mut publisher = root.peer("publish", &["--topic", "tty", "--count", "3"]);
    publisher.expect("done");
    let cmd = format!(
        "{SHMBUS} --root {} stat --interval 0.2",
        root.path().display()
    );
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"q").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "q did not quit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.matches("\x1b[H\x1b[2J").count() >= 3,
        "redraws in place: {text:?}"
    );
    assert!(text.contains("q or Ctrl-C quits"), "{text:?}");
    assert!(text.contains("tty    peer-"), "{text:?}");
}
