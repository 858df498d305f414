//! Helpers for the daemon tests: private bus roots, key files, daemon
//! processes with captured logs, a watchdog, and the test message type.

#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

pub mod fake_peer;

use rkyv::{Archive, Deserialize, Serialize};
use shmbus_bridge::identity::StaticKeypair;

/// The message the tests publish across the bridge.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct Tele {
    pub publisher: u32,
    pub seq: u64,
    pub body: Vec<u8>,
}

impl Tele {
    /// Message `seq` of test publisher `publisher`: a body whose length and
    /// bytes both depend on the pair, so a misplaced or corrupt message shows.
    pub fn new(publisher: u32, seq: u64) -> Self {
        let len = ((seq * 37 + u64::from(publisher) * 11) % 300) as usize;
        let body = (0..len)
            .map(|i| (seq as usize + i * 7 + publisher as usize) as u8)
            .collect();
        Self {
            publisher,
            seq,
            body,
        }
    }
}

/// Checks an archived message against [`Tele::new`].
pub fn check_body(m: &ArchivedTele) -> bool {
    let expected = Tele::new(m.publisher.to_native(), m.seq.to_native());
    m.body.as_slice() == expected.body.as_slice()
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A private directory under /dev/shm, removed on drop.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> Self {
        // Relaxed: only uniqueness matters.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!(
            "/dev/shm/shmbus-test-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }

    /// A key pair per node in `names` and, per node, an allowlist of all
    /// the others (see [`Keys::args`]).
    pub fn keys(&self, names: &[&str]) -> Keys {
        let dir = self.join("keys");
        std::fs::create_dir_all(&dir).unwrap();
        let mut pairs = Vec::new();
        for name in names {
            let kp = StaticKeypair::generate().unwrap();
            let path = dir.join(format!("{name}.key"));
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(dir.join(format!("{name}.key.pub")));
            kp.write_new(&path, name).unwrap();
            pairs.push((name.to_string(), kp, path));
        }
        for (name, _, _) in &pairs {
            let list: String = pairs
                .iter()
                .filter(|(n, _, _)| n != name)
                .map(|(n, kp, _)| format!("{} {n}\n", kp.public()))
                .collect();
            let p = dir.join(format!("{name}.allow"));
            std::fs::write(&p, list).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        Keys { dir, pairs }
    }
}

/// Key files and allowlists of a test's nodes.
pub struct Keys {
    pub dir: PathBuf,
    pub pairs: Vec<(String, StaticKeypair, PathBuf)>,
}

impl Keys {
    /// `--key-file <name's key> --allowlist <name's allowlist>`.
    pub fn args(&self, name: &str) -> Vec<String> {
        vec![
            "--key-file".into(),
            self.dir.join(format!("{name}.key")).display().to_string(),
            "--allowlist".into(),
            self.dir.join(format!("{name}.allow")).display().to_string(),
        ]
    }

    /// The key pair of `name`.
    pub fn keypair(&self, name: &str) -> StaticKeypair {
        self.pairs
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, kp, _)| kp.clone())
            .unwrap()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Pids of live daemons, killed by the watchdog.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Kills every daemon and exits the test process if not dropped in time, so
/// a hang fails the suite instead of stalling it.
pub struct Watchdog {
    done: Arc<Mutex<bool>>,
}

impl Watchdog {
    pub fn new(name: &'static str, limit: Duration) -> Self {
        let done = Arc::new(Mutex::new(false));
        let d = Arc::clone(&done);
        thread::spawn(move || {
            let end = Instant::now() + limit;
            while Instant::now() < end {
                if *d.lock().unwrap() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            eprintln!("watchdog: test {name} did not finish within {limit:?}; killing daemons");
            for pid in CHILDREN.lock().unwrap().iter() {
                // SAFETY: kill(2) with a pid and a valid signal number has no
                // memory-safety preconditions.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
            std::process::exit(101);
        });
        Self { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        *self.done.lock().unwrap() = true;
    }
}

/// A `shmbus-bridge` process with its log captured.
pub struct Daemon {
    pub name: String,
    args: Vec<String>,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
    pub stats_file: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `args` (plus `--stats-file` under `dir`).
    pub fn start(name: &str, dir: &TestDir, args: &[&str]) -> Self {
        let stats_file = dir.join(&format!("{name}.stats"));
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.push("--stats-file".into());
        all.push(stats_file.display().to_string());
        let mut d = Self {
            name: name.to_owned(),
            args: all,
            child: None,
            logs: Arc::new(Mutex::new(Vec::new())),
            stats_file,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shmbus-bridge"))
            .args(&self.args)
            .env_remove("SHMBUS_ROOT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shmbus-bridge");
        CHILDREN.lock().unwrap().push(child.id());
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::clone(&self.logs);
        let name = self.name.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{name}] {line}");
                logs.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
    }

    /// Restarts a killed daemon with the same arguments, replacing
    /// `--listen` by `listen` if given (to keep the same port).
    pub fn restart(&mut self, listen: Option<&str>) {
        if let Some(l) = listen {
            if let Some(i) = self.args.iter().position(|a| a == "--listen") {
                self.args[i + 1] = l.to_owned();
            }
        }
        self.spawn();
    }

    /// Waits for a log line containing `needle` (any time so far); panics
    /// after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < end,
                "{}: no log line containing {needle:?} within {timeout:?}",
                self.name
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many log lines contain `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The address from the newest "listening on" line.
    pub fn listen_addr(&self) -> String {
        let line = self.wait_log("listening on ", Duration::from_secs(10));
        line.rsplit("listening on ")
            .next()
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
    }

    /// SIGKILL and reap; clears the captured log so later waits see only
    /// the next run's lines.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        self.forget(c.id());
        self.logs.lock().unwrap().clear();
    }

    /// SIGTERM and wait (bounded by the watchdog); returns whether the exit
    /// was clean.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let status = c.wait().unwrap();
        self.forget(c.id());
        status.success()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    fn forget(&self, pid: u32) {
        CHILDREN.lock().unwrap().retain(|p| *p != pid);
    }

    /// The stats file's lines of the given kind (first word), as key/value maps.
    pub fn stats(&self, kind: &str) -> Vec<std::collections::HashMap<String, String>> {
        let text = std::fs::read_to_string(&self.stats_file).unwrap_or_default();
        text.lines()
            .filter(|l| l.split(' ').next() == Some(kind))
            .map(|l| {
                l.split(' ')
                    .skip(1)
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.forget(c.id());
        }
    }
}

/// Waits until `f` is true, polling; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Files in `dir` ending with `.ring`.
pub fn ring_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ring"))
        .collect()
}
