//! Runs every example as real processes (pairs side by side, on a private
//! bus root) and checks what they print, so the examples never rot.
//!
//! The binaries are the ones `cargo test` builds beside this test
//! (`target/<profile>/examples/`); no nested cargo is run. A test run
//! alone (`cargo test --test examples`) does not build the examples: build
//! them first with `cargo build -p shmbus --examples`.

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::TempRoot;

/// Bound on how long an example may take on a loaded CI machine (a
/// liveness bound, never a speed claim).
const PATIENCE: Duration = Duration::from_secs(120);

/// The compiled example `name`, checked to be newer than its sources.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let dir = exe.ancestors().nth(2).expect("target dir").join("examples");
    let path = dir.join(name);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}: build the examples first (`cargo build -p shmbus --examples`)",
                path.display()
            )
        });
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for source in [
        sources.join(format!("{name}.rs")),
        sources.join("common/mod.rs"),
    ] {
        let edited = std::fs::metadata(&source)
            .and_then(|m| m.modified())
            .unwrap();
        assert!(
            edited <= built,
            "{} is older than {}: rebuild (`cargo build -p shmbus --examples`)",
            path.display(),
            source.display()
        );
    }
    path
}

/// A running example: its stdout line by line, its stderr at the end.
struct Run {
    name: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Option<JoinHandle<String>>,
    deadline: Instant,
}

impl Run {
    fn start(name: &str, root: &TempRoot, args: &[&str]) -> Self {
        let mut child = Command::new(example(name))
            .args(args)
            .env("SHMBUS_ROOT", &root.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting example {name}: {e}"));
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Self {
            name: name.to_string(),
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
            deadline: Instant::now() + PATIENCE,
        }
    }

    /// Waits for a line starting with `prefix` and returns it.
    fn wait_for(&mut self, prefix: &str) -> String {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.fail(&format!("no line {prefix:?} in time")),
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("exited before {prefix:?}"))
                }
            }
        }
    }

    /// Waits for the example to exit successfully; returns all it printed.
    fn finish(mut self) -> Vec<String> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break, // stdout closed
                Err(RecvTimeoutError::Timeout) => self.fail("did not finish in time"),
            }
        }
        let status = self.child.wait().expect("wait");
        if !status.success() {
            self.fail(&format!("exited with {status}"));
        }
        std::mem::take(&mut self.seen)
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill(); // our own child, by its handle
        let _ = self.child.wait();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        panic!(
            "example {}: {what}\n--- stdout:\n{}\n--- stderr:\n{stderr}",
            self.name,
            self.seen.join("\n")
        );
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a single example to its end.
fn run(name: &str, root: &TempRoot, args: &[&str]) -> Vec<String> {
    Run::start(name, root, args).finish()
}

/// The lines starting with `prefix`, the prefix removed.
fn after<'a>(lines: &'a [String], prefix: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(prefix))
        .collect()
}

/// The number right after `key` in `line`.
fn number_after(line: &str, key: &str) -> u64 {
    let rest = &line[line
        .find(key)
        .unwrap_or_else(|| panic!("{key:?} in {line:?}"))
        + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("a number after {key:?} in {line:?}"))
}

/// What the examples leave behind: no ring files once every process exited
/// (the README's "Files" row).
fn assert_no_rings(root: &TempRoot) {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "ring" || e == "ctl") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(&root.0, &mut found);
    assert!(found.is_empty(), "left behind: {found:?}");
}

#[test]
fn publisher_and_subscriber() {
    let root = TempRoot::new("ex-pubsub");
    let mut subscriber = Run::start("subscriber", &root, &["--count", "20"]);
    subscriber.wait_for("waiting for poses on topic pose");
    let publisher = run("publisher", &root, &["--count", "20", "--interval-ms", "1"]);
    let received = subscriber.finish();

    let x = |frame: u64| format!("{:.3}", (frame as f32 * 0.1).cos());
    let sent: Vec<String> = (0..20).map(|n| format!("{n} x={}", x(n))).collect();
    assert_eq!(after(&publisher, "sent pose "), sent);
    let poses = after(&received, "received pose ");
    assert_eq!(poses.len(), 20, "{received:?}");
    for (n, line) in (0u64..).zip(&poses) {
        // Every pose, in order, from the first: the subscriber existed first.
        assert!(
            line.starts_with(&format!("{n} x={} label=base from p-", x(n))),
            "{line}"
        );
        assert!(line.ends_with(&format!("(#{n})")), "{line}");
    }
    assert_eq!(
        received
            .iter()
            .filter(|l| l.starts_with("p-") && l.ends_with(" joined"))
            .count(),
        1,
        "one publisher joined: {received:?}"
    );
    // They met on the default bus of the root they were given.
    assert!(root.0.join("default/pose").is_dir());
    assert_no_rings(&root);
}

#[test]
fn publisher_refuses_a_bad_count() {
    let root = TempRoot::new("ex-badflag");
    let output = Command::new(example("publisher"))
        .args(["--count", "many"])
        .env("SHMBUS_ROOT", &root.0)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--count needs a value"));
}

#[test]
fn loan_writes_frames_in_place() {
    let root = TempRoot::new("ex-loan");
    let lines = run("loan", &root, &["--count", "2"]);
    for n in 0..2 {
        let frame =
            format!("frame {n}: 2048x1024 rgba8 (8388608 bytes, read in place, rows as sent)");
        assert!(lines.contains(&frame), "{frame:?} in {lines:?}");
    }
    assert_eq!(
        after(&lines, "published 2 frames of 8 MiB in ").len(),
        1,
        "{lines:?}"
    );
    assert_no_rings(&root);
}

#[test]
fn async_subscriber_selects_over_two_topics() {
    let root = TempRoot::new("ex-async");
    let lines = run(
        "async_subscriber",
        &root,
        &["--count", "5", "--interval-ms", "1"],
    );
    let poses: Vec<String> = (0..5)
        .map(|n| format!("{n} x={:.3}", (n as f32 * 0.1).cos()))
        .collect();
    assert_eq!(after(&lines, "pose "), poses);
    assert_eq!(
        after(&lines, "battery "),
        ["24.00 V", "23.99 V", "23.98 V", "23.97 V", "23.96 V"]
    );
    assert!(lines.contains(&"received 5 poses and 5 battery readings".to_string()));
    assert_no_rings(&root);
}

#[test]
fn overwrite_counts_every_lost_reading() {
    let root = TempRoot::new("ex-overwrite");
    let lines = run("overwrite", &root, &["--count", "5000"]);
    let summary = after(&lines, "display: received ");
    assert_eq!(summary.len(), 1, "{lines:?}");
    let (received, lost) = (
        number_after(summary[0], ""),
        number_after(summary[0], "lost "),
    );
    assert_eq!(received + lost, 5000, "{lines:?}");
    assert!(received > 0 && lost > 0, "{lines:?}");
    assert_eq!(number_after(summary[0], "lost_messages() = "), lost);
    let events: u64 = after(&lines, "display: lost ")
        .iter()
        .map(|l| number_after(l, ""))
        .sum();
    assert_eq!(events, lost, "the Lost events add up: {lines:?}");
    assert!(lines.contains(&"sensor: published 5000 readings, never waited".to_string()));
    assert_no_rings(&root);
}

#[test]
fn untethered_evicts_the_stuck_subscriber_which_rejoins() {
    let root = TempRoot::new("ex-untethered");
    let lines = run("untethered", &root, &["--count", "1500"]);
    assert!(lines.contains(&"subscriber: read tick 0, now stuck for 1 s".to_string()));
    let evicted = after(&lines, "subscriber: evicted from publisher ");
    assert!(
        !evicted.is_empty() && evicted[0].contains("rejoined at its newest message"),
        "{lines:?}"
    );
    let rejoined = after(&lines, "subscriber: rejoined at tick ");
    assert_eq!(rejoined.len(), 1, "{lines:?}");
    // The ring holds 128 ticks and the subscriber stalled after tick 0: a
    // later tick means the publisher went on past a full ring.
    assert!(number_after(rejoined[0], "") > 128, "{lines:?}");
    let publisher = after(&lines, "publisher: sent 1500 ticks, longest send ");
    assert_eq!(publisher.len(), 1, "{lines:?}");
    assert!(number_after(publisher[0], "evictions ") >= 1, "{lines:?}");
    let read = after(&lines, "subscriber: read ");
    assert!(
        read.iter()
            .any(|l| l.contains("ticks after rejoining") && number_after(l, "") > 0),
        "{lines:?}"
    );
    assert_no_rings(&root);
}

#[test]
fn history_late_joiner_reads_from_the_oldest() {
    let root = TempRoot::new("ex-history");
    let lines = run("history", &root, &["--count", "4"]);
    let oldest: Vec<String> = (0..4).map(|n| format!("boot step {n} (#{n})")).collect();
    assert_eq!(after(&lines, "late joiner (oldest): "), oldest);
    assert!(lines.contains(&"late joiner (latest): sees none of them: true".to_string()));
    assert!(lines.contains(&"service: the late joiner exited with exit status: 0".to_string()));
    assert_no_rings(&root);
}

#[test]
fn many_publishers_keep_their_own_order() {
    let root = TempRoot::new("ex-many");
    let lines = run(
        "many_publishers",
        &root,
        &["--count", "300", "--bus", "counting"],
    );
    for k in 0..3 {
        let summary = after(&lines, &format!("counter{k}-"));
        assert_eq!(summary.len(), 1, "{lines:?}");
        assert!(
            summary[0].ends_with(": 300 messages, in order"),
            "{lines:?}"
        );
    }
    assert_eq!(after(&lines, "first arrivals (publisher:n): ").len(), 1);
    // The publisher processes were handed the bus too.
    assert!(root.0.join("counting/counts").is_dir());
    assert!(!root.0.join("default").exists());
    assert_no_rings(&root);
}

#[test]
fn raw_bytes_shows_the_record_framing() {
    let root = TempRoot::new("ex-raw");
    let lines = run("raw_bytes", &root, &[]);
    assert_eq!(
        after(&lines, "reader: "),
        [r#"#0 "hello""#, r#"#1 "from the""#, r#"#2 "byte layer""#]
    );
    // 16-byte header, payload padded to 16: 5 -> 32, 8 -> 32, 10 -> 32.
    assert_eq!(
        after(&lines, "record at "),
        [
            r#"0: stamp 0x1, length 5, sequence 0, payload "hello""#,
            r#"32: stamp 0x21, length 8, sequence 1, payload "from the""#,
            r#"64: stamp 0x41, length 10, sequence 2, payload "byte layer""#,
        ]
    );
    assert!(lines.contains(&"next record would start at 96".to_string()));
    assert_no_rings(&root);
}
