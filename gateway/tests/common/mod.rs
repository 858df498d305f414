//! Helpers for the gateway tests: private bus roots, gateway processes
//! with captured logs, free loopback ports, a watchdog, the test message.

#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use rkyv::{Archive, Deserialize, Serialize};

/// The message the tests publish through the gateways.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct Tele {
    pub publisher: u32,
    pub seq: u64,
    pub body: Vec<u8>,
}

impl Tele {
    /// Message `seq` of test publisher `publisher`: a body whose length and
    /// bytes depend on both, so a misplaced or corrupt message shows.
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

/// Another type on the same topic (for `TypeMismatch`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct Other {
    pub x: u32,
}

static NEXT: AtomicU32 = AtomicU32::new(0);
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A private directory under /dev/shm, removed on drop.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!(
            "/dev/shm/shmbus-gw-test-{}-{n}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the gateway).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain Zenoh session (the `zenoh` crate only) in peer mode, connected
/// to `endpoint`, without scouting: a non-shmbus Zenoh application.
pub fn plain_zenoh(endpoint: &str) -> zenoh::Session {
    use zenoh::Wait;
    let mut config = zenoh::Config::default();
    config.insert_json5("mode", "\"peer\"").unwrap();
    config
        .insert_json5("connect/endpoints", &format!("[\"{endpoint}\"]"))
        .unwrap();
    config
        .insert_json5("scouting/multicast/enabled", "false")
        .unwrap();
    zenoh::open(config).wait().unwrap()
}

/// Waits until a subscriber matches `publisher` (its declaration reached
/// the gateway and came back routed); panics after 20 s.
pub fn wait_matching(publisher: &zenoh::pubsub::Publisher<'_>) {
    use zenoh::Wait;
    let end = Instant::now() + Duration::from_secs(20);
    while !publisher.matching_status().wait().unwrap().matching() {
        assert!(Instant::now() < end, "no subscriber ever matched");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Kills every gateway and exits if not dropped in time.
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
            eprintln!("watchdog: test {name} did not finish within {limit:?}; killing gateways");
            for pid in CHILDREN.lock().unwrap().iter() {
                // SAFETY: kill(2) has no memory-safety preconditions.
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

/// A `shmbus-zenoh` process with its log captured.
pub struct Gw {
    pub name: String,
    /// The network namespace it runs in (`None`: this one).
    ns: Option<String>,
    args: Vec<String>,
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Gw {
    /// Starts `shmbus-zenoh` as node `name` with `args` (plus
    /// `--node-name name --no-multicast-scouting --log-level debug`).
    pub fn start(name: &str, args: &[&str]) -> Self {
        let mut all = vec!["--no-multicast-scouting"];
        all.extend(args);
        Self::start_in(None, name, &all)
    }

    /// Starts `shmbus-zenoh` as node `name` with `args` inside network
    /// namespace `ns` (multicast scouting as Zenoh's default: on).
    pub fn start_in(ns: Option<&str>, name: &str, args: &[&str]) -> Self {
        let mut all: Vec<String> = vec![
            "--node-name".into(),
            name.into(),
            "--log-level".into(),
            "debug".into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let mut g = Self {
            name: name.to_owned(),
            ns: ns.map(str::to_owned),
            args: all,
            child: None,
            logs: Arc::new(Mutex::new(Vec::new())),
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let bin = env!("CARGO_BIN_EXE_shmbus-zenoh");
        let mut cmd = match &self.ns {
            Some(ns) => shmbus_tests::netns::command_in(ns, bin),
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(&self.args)
            .env_remove("SHMBUS_ROOT")
            .env("RUST_LOG", "info,shmbus_zenoh=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shmbus-zenoh");
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

    /// Starts the killed process again with the same arguments.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Waits for a log line containing `needle`; panics after `timeout`.
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

    pub fn count_log(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The gateway's counters, asked for with SIGUSR1.
    pub fn stats(&self) -> std::collections::HashMap<String, u64> {
        let before = self.count_log("stats: ");
        self.signal(libc::SIGUSR1);
        let end = Instant::now() + Duration::from_secs(10);
        while self.count_log("stats: ") == before {
            assert!(Instant::now() < end, "{}: no stats line", self.name);
            thread::sleep(Duration::from_millis(10));
        }
        let logs = self.logs.lock().unwrap();
        let line = logs.iter().rev().find(|l| l.contains("stats: ")).unwrap();
        line.rsplit("stats: ")
            .next()
            .unwrap()
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
            .collect()
    }

    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// CPU time the process used so far (user and system, from
    /// `/proc/<pid>/stat`), `None` once it is gone.
    pub fn cpu_time(&self) -> Option<Duration> {
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command's closing parenthesis: state is field
        // 3, utime 14, stime 15 (proc(5)).
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no memory-safety preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Some(Duration::from_millis(ticks * 1000 / hz))
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(10))
    }

    /// The exit status, if it exits within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(status) = self.child.as_mut()?.try_wait().ok().flatten() {
                self.child = None;
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Two gateways on the buses `b` of roots `<dir>/a` and `<dir>/b`: `a`
/// listens, `b` connects; `a_args`/`b_args` add rules.
pub fn pair(dir: &TestDir, a_args: &[&str], b_args: &[&str]) -> (Gw, Gw) {
    let port = free_port();
    let listen = format!("tcp/127.0.0.1:{port}");
    let (root_a, root_b) = (dir.join("a"), dir.join("b"));
    let mut args = vec![
        "--root",
        root_a.to_str().unwrap(),
        "--bus",
        "b",
        "--listen",
        &listen,
    ];
    args.extend(a_args);
    let a = Gw::start("gw-a", &args);
    a.wait_log("exporting under", Duration::from_secs(20));
    let mut args = vec![
        "--root",
        root_b.to_str().unwrap(),
        "--bus",
        "b",
        "--connect",
        &listen,
    ];
    args.extend(b_args);
    let b = Gw::start("gw-b", &args);
    b.wait_log("exporting under", Duration::from_secs(20));
    (a, b)
}
