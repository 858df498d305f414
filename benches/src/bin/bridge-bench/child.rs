//! A child process of the benchmark: line-based control over stdin/stdout,
//! stderr collected for diagnostics, and the CPU time it used, read with
//! `wait4(2)` when it exits.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// A running child role.
#[derive(Debug)]
pub(crate) struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    logs: Arc<Mutex<Vec<String>>>,
    reaped: bool,
}

impl Proc {
    /// Starts `cmd` (this binary with a role) with piped stdio.
    pub(crate) fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {name}"))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        let stderr = child.stderr.take().context("child stderr")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            stdin,
            stdout,
            logs,
            reaped: false,
        })
    }

    /// The next stdout line (blocking; EOF is an error).
    pub(crate) fn line(&mut self) -> Result<String> {
        let mut s = String::new();
        if self.stdout.read_line(&mut s)? == 0 {
            bail!(
                "{} exited early; stderr:\n{}",
                self.name,
                self.stderr_text()
            );
        }
        Ok(s.trim().to_owned())
    }

    /// Sends one line to the child's stdin.
    pub(crate) fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for a stderr line containing `needle`; returns it.
    pub(crate) fn wait_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(l) = self.logs.lock() {
                if let Some(hit) = l.iter().find(|l| l.contains(needle)) {
                    return Ok(hit.clone());
                }
            }
            if Instant::now() > end {
                bail!(
                    "{}: no log line with {needle:?} in {timeout:?}; stderr:\n{}",
                    self.name,
                    self.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Everything the child wrote to stderr so far.
    pub(crate) fn stderr_text(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Closes stdin (the child's stop signal), waits for the exit and
    /// returns the child's user + system CPU seconds.
    pub(crate) fn finish(mut self) -> Result<f64> {
        drop(self.stdin.take());
        let pid = libc::pid_t::try_from(self.child.id())?;
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain data, filled in by wait4 below.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = loop {
            // SAFETY: `pid` is our unreaped child; `status` and `ru` are
            // live, writable locals.
            let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            if r >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break r;
            }
        };
        if r < 0 {
            bail!("wait4 {}: {}", self.name, std::io::Error::last_os_error());
        }
        self.reaped = true;
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            bail!(
                "{} failed (status {status:#x}); stderr:\n{}",
                self.name,
                self.stderr_text()
            );
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        Ok(secs(ru.ru_utime) + secs(ru.ru_stime))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
