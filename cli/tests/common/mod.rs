//! Test scaffolding: a private bus root, helper processes (`shmbus-test-peer`)
//! with a channel of their stdout lines, and running `shmbus` itself.
#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Output, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc::{self, Receiver},
    },
    thread,
    time::{Duration, Instant},
};

pub const SHMBUS: &str = env!("CARGO_BIN_EXE_shmbus");
pub const PEER: &str = env!("CARGO_BIN_EXE_shmbus-test-peer");
pub const LINE_TIMEOUT: Duration = Duration::from_secs(20);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh root under `/dev/shm`, removed on drop.
#[derive(Debug)]
pub struct Root(pub PathBuf);

impl Root {
    pub fn new(name: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!(
            "/dev/shm/shmbus-cli-test-{}-{n}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        // As the bus makes a root: the owner only.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `<root>/default/<topic>`.
    pub fn topic(&self, topic: &str) -> PathBuf {
        self.0.join("default").join(topic)
    }

    /// Runs `shmbus --root <root> <args>` with `stdin` as its input.
    pub fn shmbus(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new(SHMBUS)
            .arg("--root")
            .arg(&self.0)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// Like [`Self::shmbus`], asserting success; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.shmbus(args, b"");
        assert!(out.status.success(), "shmbus {args:?}: {}", describe(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `shmbus <args> --json`, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// Starts `shmbus --root <root> <args>` as a process (tail, stat).
    pub fn spawn_shmbus(&self, args: &[&str]) -> Proc {
        let mut cmd = Command::new(SHMBUS);
        cmd.arg("--root").arg(&self.0).args(args);
        Proc::spawn(cmd)
    }

    /// Starts `shmbus-test-peer <role> --root <root> <args>`.
    pub fn peer(&self, role: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(PEER);
        cmd.arg(role).arg("--root").arg(&self.0).args(args);
        Proc::spawn(cmd)
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A child process with its stdout lines on a channel; killed on drop.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    /// Every line until the process closes its stdout (it exited).
    pub fn rest(&mut self) -> Vec<String> {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return self.seen.clone(),
                Err(e) => panic!("waiting for the end of output: {e}; seen {:?}", self.seen),
            }
        }
    }
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line starting with `prefix`; returns it.
    pub fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => panic!("waiting for {prefix:?}: {e}; seen {:?}", self.seen),
            }
        }
    }

    /// Writes a line to its stdin.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes its stdin (peers then finish) and waits for it.
    pub fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "child did not exit");
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill takes plain integers; the child is not reaped yet.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.signal_quiet(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn signal_quiet(&self, sig: i32) -> i32 {
        // SAFETY: as in `signal`.
        unsafe { libc::kill(self.child.id() as i32, sig) }
    }
}

/// Waits until `f` is true (polling), or panics with `what`.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + LINE_TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether this process is root (namespaces and mounts need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
