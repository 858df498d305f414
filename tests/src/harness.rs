//! Test scaffolding: a private bus root per test, helper processes with a
//! channel of their stdout lines, and a watchdog.
//!
//! Every [`TestEnv`] owns a fresh directory under `/dev/shm`, removed when it
//! is dropped, and a watchdog thread: if the test is still running after its
//! time budget, the watchdog SIGKILLs every child the test started (so blocked
//! waits on them fail with the child's output in the message) and, if the
//! test still does not finish within a grace period, aborts the test process.
//! A deadlock therefore fails CI instead of hanging it.
//!
//! Declare the `TestEnv` first in a test so it is dropped last, after the
//! [`Proc`]s (which kill their child on drop). The `peer` helper also asks
//! the kernel to kill it when its parent *thread* exits (`PR_SET_PDEATHSIG`),
//! so start children from the test's own thread, never from a helper thread.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use shmbus::Bus;

use crate::report::Report;

/// Pids of live children, shared with the watchdog. A pid is removed under
/// the lock *before* the child is reaped, so the watchdog never signals a
/// reused pid.
type Registry = Arc<Mutex<Vec<u32>>>;

static NEXT_ENV: AtomicU32 = AtomicU32::new(0);

/// How long a child may take to print an expected line, by default.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// A test's private bus root, its children and its watchdog.
#[derive(Debug)]
pub struct TestEnv {
    name: String,
    root: PathBuf,
    peer: PathBuf,
    registry: Registry,
    disarm: Option<Sender<()>>,
}

impl TestEnv {
    /// A fresh root `/dev/shm/shmbus-test-<pid>-<n>-<name>`, children started
    /// from the `peer` binary at `peer_exe` (`env!("CARGO_BIN_EXE_peer")`),
    /// and a watchdog that fires after `budget`.
    ///
    /// # Panics
    ///
    /// If the directory cannot be created.
    pub fn new(name: &str, peer_exe: &str, budget: Duration) -> Self {
        let n = NEXT_ENV.fetch_add(1, Ordering::Relaxed);
        let root = PathBuf::from(format!(
            "/dev/shm/shmbus-test-{}-{n}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("reports")).expect("create test root");
        let registry: Registry = Arc::default();
        let (tx, rx) = mpsc::channel::<()>();
        let reg = registry.clone();
        let label = name.to_string();
        thread::Builder::new()
            .name(format!("watchdog-{name}"))
            .spawn(move || watchdog(&label, budget, &rx, &reg))
            .expect("spawn watchdog");
        Self {
            name: name.to_string(),
            root,
            peer: PathBuf::from(peer_exe),
            registry,
            disarm: Some(tx),
        }
    }

    /// The private root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The root as a string, for command lines.
    pub fn root_arg(&self) -> String {
        self.root.display().to_string()
    }

    /// The default bus under the private root.
    ///
    /// # Panics
    ///
    /// Never in practice (the root and default name are valid).
    pub fn bus(&self) -> Bus {
        Bus::builder().root(&self.root).build().expect("bus")
    }

    /// `<root>/default/<topic>`.
    pub fn topic_dir(&self, topic: &str) -> PathBuf {
        self.root.join(shmbus_bus::DEFAULT_BUS).join(topic)
    }

    /// Where a child's report goes.
    pub fn report_path(&self, name: &str) -> PathBuf {
        self.root.join("reports").join(format!("{name}.report"))
    }

    /// The `.ring` files in `topic` now.
    pub fn rings(&self, topic: &str) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(self.topic_dir(topic))
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| shmbus_bus::publisher_id_of(p).is_some())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Starts the `peer` helper with `args` (the root is added), named `name`
    /// in failure messages.
    ///
    /// # Panics
    ///
    /// If the process cannot be started.
    pub fn peer(&self, name: &str, args: &[&str]) -> Proc {
        self.peer_with::<&str>(name, &[], &self.root, args)
    }

    /// Like [`Self::peer`], but run through the command `prefix` (e.g.
    /// `unshare --pid --fork ...` or `setpriv --reuid ...`; empty: directly)
    /// with bus root `root`. With a prefix, [`Proc::pid`] is the prefix
    /// program's pid.
    ///
    /// # Panics
    ///
    /// If the process cannot be started.
    pub fn peer_with<S: AsRef<std::ffi::OsStr>>(
        &self,
        name: &str,
        prefix: &[S],
        root: &Path,
        args: &[&str],
    ) -> Proc {
        let mut cmd = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&self.peer);
                c
            }
            None => Command::new(&self.peer),
        };
        let (role, rest) = args.split_first().expect("peer needs a subcommand");
        cmd.arg(role).arg("--root").arg(root).args(rest);
        cmd.env(shmbus_bus::ROOT_ENV, root);
        self.spawn(name, cmd)
    }

    /// Starts `cmd` as a watched child with piped stdin, stdout and stderr.
    ///
    /// # Panics
    ///
    /// If the process cannot be started.
    pub fn spawn(&self, name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if !cmd.get_envs().any(|(k, _)| k == shmbus_bus::ROOT_ENV) {
            cmd.env(shmbus_bus::ROOT_ENV, &self.root);
        }
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("[{}] cannot start {name}: {e}", self.name));
        reg.push(child.id());
        drop(reg);
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let sink = stderr_text.clone();
        let mut stderr = child.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&text);
            }
        });
        let stdin = child.stdin.take();
        Proc {
            name: format!("{}/{name}", self.name),
            child,
            lines,
            seen: Vec::new(),
            stderr: stderr_text,
            stdin,
            status: None,
            registry: self.registry.clone(),
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(tx) = self.disarm.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn watchdog(name: &str, budget: Duration, disarm: &Receiver<()>, registry: &Registry) {
    if disarm.recv_timeout(budget) != Err(RecvTimeoutError::Timeout) {
        return;
    }
    let pids: Vec<u32> = registry.lock().unwrap_or_else(|p| p.into_inner()).clone();
    eprintln!("watchdog: test {name} still running after {budget:?}; SIGKILL to children {pids:?}");
    {
        let reg = registry.lock().unwrap_or_else(|p| p.into_inner());
        for &pid in reg.iter() {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is
            // an unreaped child of ours (see `Registry`).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
    if disarm.recv_timeout(Duration::from_secs(15)) == Err(RecvTimeoutError::Timeout) {
        eprintln!("watchdog: test {name} is still stuck after killing its children; aborting");
        std::process::abort();
    }
}

/// A helper process started by a test. Killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stdin: Option<ChildStdin>,
    status: Option<ExitStatus>,
    registry: Registry,
}

impl Proc {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stdout lines consumed so far.
    pub fn lines_seen(&self) -> &[String] {
        &self.seen
    }

    /// A description for failure messages: name, status, recent output.
    pub fn describe(&self) -> String {
        let tail: Vec<&String> = self.seen.iter().rev().take(15).rev().collect();
        format!(
            "{} (pid {}, status {:?})\n  stdout tail: {tail:#?}\n  stderr: {}",
            self.name,
            self.pid(),
            self.status,
            self.stderr()
        )
    }

    /// Pulls the lines printed so far into [`Self::lines_seen`].
    pub fn poll_lines(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// Reads stdout until it ends (the child exited) or `timeout` passes.
    pub fn collect_output(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        while let Ok(line) = self.lines.recv_timeout(left()) {
            self.seen.push(line);
        }
    }

    /// Waits for a stdout line starting with `prefix` and returns it.
    ///
    /// # Panics
    ///
    /// If the child ends its output or `timeout` passes first.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no line {prefix:?} within {timeout:?}: {}", self.describe())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.try_status();
                    panic!("output ended before a line {prefix:?}: {}", self.describe())
                }
            }
        }
    }

    /// Waits for a stdout line for which `pred` holds and returns it;
    /// `None` if the child ends its output or `timeout` passes first.
    pub fn line_where(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Like [`Self::line_where`], panicking with `what` and the child's
    /// output if no such line comes.
    ///
    /// # Panics
    ///
    /// If the child ends its output or `timeout` passes first.
    pub fn expect_line_where(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl FnMut(&str) -> bool,
    ) -> String {
        match self.line_where(timeout, pred) {
            Some(line) => line,
            None => {
                let _ = self.try_status();
                panic!("no line {what} within {timeout:?}: {}", self.describe())
            }
        }
    }

    /// Writes one line to the child's stdin.
    ///
    /// # Panics
    ///
    /// If stdin was closed or the child is gone.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("write to {}: {e}", self.name));
    }

    /// Closes the child's stdin (it sees EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends `signal` if the child has not been reaped yet.
    pub fn signal(&self, signal: i32) {
        let reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if reg.contains(&self.pid()) {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is
            // our unreaped child (the registry lock keeps it so).
            unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        }
    }

    /// The exit status if the child has exited (reaping it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_some() {
            return self.status;
        }
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(Some(status)) = self.child.try_wait() {
            reg.retain(|&p| p != self.child.id());
            self.status = Some(status);
        }
        self.status
    }

    /// Waits for the child to exit.
    ///
    /// # Panics
    ///
    /// If it does not within `timeout` (it is then killed).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                self.poll_lines();
                return s;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!("did not exit within {timeout:?}: {}", self.describe());
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for a successful exit (status 0).
    ///
    /// # Panics
    ///
    /// On timeout or another status, with the child's output.
    pub fn wait_ok(&mut self, timeout: Duration) {
        let status = self.wait(timeout);
        assert!(
            status.success(),
            "exited with {status}: {}",
            self.describe()
        );
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        loop {
            if let Some(s) = self.try_status() {
                return s;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Reads the report the child wrote to `path`.
    ///
    /// # Panics
    ///
    /// If it is missing or malformed, with the child's output.
    pub fn report(&self, path: &Path) -> Report {
        Report::read_from(path).unwrap_or_else(|e| panic!("{e}: {}", self.describe()))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            self.kill();
        }
    }
}

/// Polls `done` every 2 ms until it holds.
///
/// # Panics
///
/// If `timeout` passes first, naming `what`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// The ring id and file of a publisher's `ready ring=<id> path=<file>` line.
///
/// # Panics
///
/// If the line is not one.
pub fn parse_ready(line: &str) -> (String, PathBuf) {
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .to_string()
    };
    (field("ring="), PathBuf::from(field("path=")))
}

/// The numbers of a `key=value ...` line, e.g. a publisher's `done` line.
///
/// # Panics
///
/// If `key` is missing or not a number.
pub fn field_u64(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key}= in {line:?}"))
}
