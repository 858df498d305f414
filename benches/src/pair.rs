//! Persistent pinned process pairs, driven batch by batch: the two-process
//! measurements behind criterion's `iter_custom`.
//!
//! A [`Pair`] is a leader process pinned to the first cpu and a follower
//! pinned to the second, started by re-executing the calling binary (the same
//! machinery as the comparison runner: [`crate::runner::spawn_logged`], a
//! private run directory, the systems' [`Tx`] / [`Rx`] channels). They open
//! their channels once; then the parent asks the leader, over its stdin, to
//! run `n` iterations and reads back the elapsed nanoseconds on its stdout:
//!
//! ```text
//! parent -> leader   run 100000
//! leader -> parent   ns 8123456
//! parent -> leader   quit
//! ```
//!
//! Jobs ([`Job`]):
//!
//! - ping-pong: an iteration is one round trip (a `size` byte message out, a
//!   `reply_size` byte message with the same sequence number back);
//! - stream: an iteration is one `size` byte message; a batch ends with a
//!   [`FLUSH`] message that the follower answers with an acknowledgement
//!   carrying the last sequence number it received, so the batch's time runs
//!   until the last message was received and checked (plus one reply).
//!
//! Every message is written in full by its sender and checked in full by its
//! receiver, as in the comparison.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::cell::{KvArgs, Role, LATENCY_DEPTH, STREAM_DEPTH};
use crate::os::{now_ns, pin_to_cpu};
use crate::payload::END;
use crate::roles::{pingpong_follower, recv, CONNECT_TIMEOUT};
use crate::runner::{create_private_dir, last_log_line, log_path, spawn_logged};
use crate::systems;
use crate::transport::{retry_until, ChannelSpec, Rx, System, Tx, Wait};

/// Sequence number of the message that ends a stream batch.
pub const FLUSH: u64 = u64::MAX - 1;

/// First argument of a pair role process.
pub const ROLE_FLAG: &str = "--pair-role";

/// What a pair does per iteration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// One round trip; both sides busy-poll.
    PingPong,
    /// One message of a stream to a busy-polling receiver.
    Stream,
}

impl Job {
    fn as_str(self) -> &'static str {
        match self {
            Job::PingPong => "pingpong",
            Job::Stream => "stream",
        }
    }

    fn parse(s: &str) -> Result<Job> {
        match s {
            "pingpong" => Ok(Job::PingPong),
            "stream" => Ok(Job::Stream),
            other => bail!("unknown pair job {other:?}"),
        }
    }
}

/// What a pair is made of.
#[derive(Debug, Clone)]
pub struct PairSpec {
    /// System name (see [`crate::systems::all`]).
    pub system: String,
    /// What an iteration is.
    pub job: Job,
    /// Payload bytes of the leader's messages.
    pub size: usize,
    /// Payload bytes of the follower's replies (ping-pong) or acknowledgements.
    pub reply_size: usize,
    /// CPU of the leader and of the follower.
    pub cpus: [usize; 2],
    /// Where the run directory goes (a tmpfs).
    pub shm_root: PathBuf,
}

/// Whether `args` (without the program name) start a pair role process.
pub fn is_role(args: &[String]) -> bool {
    args.first().map(String::as_str) == Some(ROLE_FLAG)
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A running leader / follower pair.
#[derive(Debug)]
pub struct Pair {
    leader: Child,
    follower: Child,
    to_leader: Option<ChildStdin>,
    from_leader: Option<BufReader<ChildStdout>>,
    dir: PathBuf,
}

fn role_args(spec: &PairSpec, role: Role, dir: &Path, run_id: &str) -> Vec<String> {
    let (name, cpu) = match role {
        Role::Leader => ("leader", spec.cpus[0]),
        Role::Follower(_) => ("follower", spec.cpus[1]),
    };
    let kv: [(&str, String); 7] = [
        ("--system", spec.system.clone()),
        ("--job", spec.job.as_str().to_owned()),
        ("--size", spec.size.to_string()),
        ("--reply-size", spec.reply_size.to_string()),
        ("--dir", dir.display().to_string()),
        ("--run-id", run_id.to_owned()),
        ("--cpu", cpu.to_string()),
    ];
    let mut args = vec![ROLE_FLAG.to_owned(), name.to_owned()];
    args.extend(kv.into_iter().flat_map(|(k, v)| [k.to_owned(), v]));
    args
}

impl Pair {
    /// Starts the pair by re-executing `exe` (which must dispatch
    /// [`is_role`] arguments to [`child_main`]) and waits until both have
    /// their channels open.
    ///
    /// # Errors
    ///
    /// If a process cannot be started or fails to connect (its log says why).
    pub fn spawn(exe: &Path, spec: &PairSpec) -> Result<Pair> {
        if systems::by_name(&spec.system).is_none() {
            bail!("system {:?} is not built into this binary", spec.system);
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let dir = spec.shm_root.join(format!("shmbus-pair-{pid}-{n}"));
        create_private_dir(&dir)?;
        let run_id = format!("{pid}p{n}");
        let follower = match spawn_logged(
            exe,
            &role_args(spec, Role::Follower(0), &dir, &run_id),
            &log_path(&dir, Role::Follower(0)),
        ) {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let leader_log = log_path(&dir, Role::Leader);
        let spawned = std::fs::File::create(&leader_log)
            .with_context(|| format!("creating {}", leader_log.display()))
            .and_then(|log| {
                Command::new(exe)
                    .args(role_args(spec, Role::Leader, &dir, &run_id))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(log)
                    .spawn()
                    .with_context(|| format!("spawning {}", exe.display()))
            });
        let mut leader = match spawned {
            Ok(c) => c,
            Err(e) => {
                let mut f = follower;
                let _ = f.kill();
                let _ = f.wait();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let to_leader = leader.stdin.take();
        let from_leader = leader.stdout.take().map(BufReader::new);
        // From here on, dropping `pair` stops both processes.
        let mut pair = Pair {
            leader,
            follower,
            to_leader,
            from_leader,
            dir,
        };
        let line = pair.read_line()?;
        if line != "ready" {
            bail!("pair leader said {line:?} instead of ready");
        }
        Ok(pair)
    }

    fn failure(&self, what: &str) -> anyhow::Error {
        anyhow!(
            "{what}; leader: {}; follower: {}",
            last_log_line(&log_path(&self.dir, Role::Leader)),
            last_log_line(&log_path(&self.dir, Role::Follower(0)))
        )
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let Some(from) = self.from_leader.as_mut() else {
            bail!("the pair leader has no output pipe");
        };
        match from.read_line(&mut line) {
            Ok(0) => Err(self.failure("the pair leader exited")),
            Ok(_) => Ok(line.trim().to_owned()),
            Err(e) => Err(self.failure(&format!("reading from the pair leader: {e}"))),
        }
    }

    /// Runs `iters` iterations and returns their total time, as measured by
    /// the leader.
    ///
    /// # Errors
    ///
    /// If either process failed (their logs say why).
    pub fn run(&mut self, iters: u64) -> Result<Duration> {
        let Some(to) = self.to_leader.as_mut() else {
            bail!("the pair was shut down");
        };
        if let Err(e) = writeln!(to, "run {iters}").and_then(|()| to.flush()) {
            return Err(self.failure(&format!("writing to the pair leader: {e}")));
        }
        let line = self.read_line()?;
        let ns = line
            .strip_prefix("ns ")
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| anyhow!("pair leader answered {line:?}"))?;
        Ok(Duration::from_nanos(ns))
    }
}

/// Waits for `child` for at most `timeout`, then kills it.
fn reap(child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                // Our own child, by its handle.
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if let Some(mut to) = self.to_leader.take() {
            // The leader may be gone already; then it cannot read this.
            let _ = writeln!(to, "quit");
        }
        reap(&mut self.leader, Duration::from_secs(10));
        reap(&mut self.follower, Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The channel specs of a pair: `data` from leader to follower, `reply` back.
fn specs(args: &KvArgs) -> Result<(ChannelSpec, ChannelSpec)> {
    let job = Job::parse(args.get("--job")?)?;
    let dir = PathBuf::from(args.get("--dir")?);
    let run_id = args.get("--run-id")?.to_owned();
    let spec = |name: &str, msg_len: u64, depth: usize, stream: bool| -> Result<ChannelSpec> {
        Ok(ChannelSpec {
            dir: dir.clone(),
            name: name.to_owned(),
            run_id: run_id.clone(),
            msg_len: usize::try_from(msg_len)?,
            depth,
            receivers: 1,
            wait: Wait::Spin,
            stream,
            connect_timeout: CONNECT_TIMEOUT,
        })
    };
    let (depth, stream) = match job {
        Job::PingPong => (LATENCY_DEPTH, false),
        Job::Stream => (STREAM_DEPTH, true),
    };
    Ok((
        spec("data", args.num("--size")?, depth, stream)?,
        spec("reply", args.num("--reply-size")?, LATENCY_DEPTH, false)?,
    ))
}

/// The body of a pair role process; `args` as built by [`Pair::spawn`]
/// (without the program name).
///
/// # Errors
///
/// Any failure; the caller prints it (to the role's log) and exits non-zero.
pub fn child_main(args: &[String]) -> Result<()> {
    let role = match args.get(1).map(String::as_str) {
        Some("leader") => Role::Leader,
        Some("follower") => Role::Follower(0),
        other => bail!("unknown pair role {other:?}"),
    };
    let kv = KvArgs::parse(args.get(2..).unwrap_or_default())?;
    pin_to_cpu(usize::try_from(kv.num("--cpu")?)?)?;
    let name = kv.get("--system")?;
    let system = systems::by_name(name)
        .ok_or_else(|| anyhow!("system {name:?} is not built into this binary"))?;
    let job = Job::parse(kv.get("--job")?)?;
    let (data, reply) = specs(&kv)?;
    let dir = data.dir.clone();
    match role {
        Role::Leader => leader(system.as_ref(), job, &data, &reply, &dir),
        Role::Follower(_) => follower(system.as_ref(), job, &data, &reply, &dir),
    }
}

fn done_marker(dir: &Path) -> PathBuf {
    dir.join("done-follower")
}

fn leader(
    system: &dyn System,
    job: Job,
    data: &ChannelSpec,
    reply: &ChannelSpec,
    dir: &Path,
) -> Result<()> {
    let mut tx = system.open_tx(data).context("opening the data sender")?;
    let mut rx = system
        .open_rx(reply, 0)
        .context("opening the reply receiver")?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut seq = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        if std::io::stdin().read_line(&mut line)? == 0 {
            break;
        }
        let cmd = line.trim();
        if cmd == "quit" {
            break;
        }
        let iters: u64 = cmd
            .strip_prefix("run ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("unknown command {cmd:?}"))?;
        let ns = match job {
            Job::PingPong => pingpong_batch(tx.as_mut(), rx.as_mut(), &mut seq, iters)?,
            Job::Stream => stream_batch(tx.as_mut(), rx.as_mut(), &mut seq, iters)?,
        };
        writeln!(out, "ns {ns}")?;
        out.flush()?;
    }
    tx.send(END)?;
    // Keep the channels open until the follower has read everything.
    let marker = done_marker(dir);
    retry_until(CONNECT_TIMEOUT, "the pair follower to finish", || {
        Ok(marker.exists().then_some(()))
    })
}

fn pingpong_batch(tx: &mut dyn Tx, rx: &mut dyn Rx, seq: &mut u64, iters: u64) -> Result<u64> {
    let t0 = now_ns();
    for _ in 0..iters {
        tx.send(*seq)?;
        let got = recv(rx, Wait::Spin)?;
        if got != *seq {
            bail!("ping-pong reply carried message {got}, expected {seq}");
        }
        *seq += 1;
    }
    Ok(now_ns().saturating_sub(t0))
}

fn stream_batch(tx: &mut dyn Tx, rx: &mut dyn Rx, seq: &mut u64, iters: u64) -> Result<u64> {
    if iters == 0 {
        return Ok(0);
    }
    let t0 = now_ns();
    for _ in 0..iters {
        tx.send(*seq)?;
        *seq += 1;
    }
    tx.send(FLUSH)?;
    let ack = recv(rx, Wait::Spin)?;
    let t1 = now_ns();
    if ack != *seq - 1 {
        bail!("stream acknowledged message {ack}, expected {}", *seq - 1);
    }
    Ok(t1.saturating_sub(t0))
}

fn follower(
    system: &dyn System,
    job: Job,
    data: &ChannelSpec,
    reply: &ChannelSpec,
    dir: &Path,
) -> Result<()> {
    let mut rx = system
        .open_rx(data, 0)
        .context("opening the data receiver")?;
    let mut tx = system.open_tx(reply).context("opening the reply sender")?;
    match job {
        Job::PingPong => {
            pingpong_follower(rx.as_mut(), tx.as_mut(), Wait::Spin)?;
        }
        Job::Stream => {
            let mut expected = 0u64;
            loop {
                match recv(rx.as_mut(), Wait::Spin)? {
                    END => break,
                    FLUSH => tx.send(expected.wrapping_sub(1))?,
                    seq if seq == expected => expected += 1,
                    seq => bail!("stream: received message {seq}, expected {expected}"),
                }
            }
        }
    }
    let marker = done_marker(dir);
    std::fs::write(&marker, b"").with_context(|| format!("creating {}", marker.display()))
}
