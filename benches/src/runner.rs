//! The parent side: plans the cells, runs each in fresh pinned child processes,
//! interleaves systems round by round, and collects the outcomes.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cell::{self, Bench, Cell, Role, RoleArgs, Timing};
use crate::stats::{self, LatencySummary};
use crate::systems;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The binary to re-execute for role processes (normally `current_exe`).
    pub exe: PathBuf,
    /// Where per-cell run directories are created (a tmpfs, `/dev/shm`).
    pub shm_root: PathBuf,
    /// Rows to run, in order.
    pub rows: Vec<Bench>,
    /// Systems to run, in table order.
    pub systems: Vec<String>,
    /// Payload sizes of the spinning latency row.
    pub latency_sizes: Vec<usize>,
    /// Payload sizes of the throughput row.
    pub throughput_sizes: Vec<usize>,
    /// Payload sizes of the blocking latency row.
    pub blocking_sizes: Vec<usize>,
    /// Payload size of the fan-out row.
    pub fanout_size: usize,
    /// Receiver counts of the fan-out row.
    pub fanout_receivers: Vec<usize>,
    /// How many times every cell is run (systems interleaved within a round).
    pub rounds: usize,
    /// Budget of one run of a cell.
    pub timing: Timing,
    /// CPU of the leader and CPU of the follower(s).
    pub cpus: [usize; 2],
}

impl Plan {
    /// Groups of cells that share a table line-up (same row, size, receivers),
    /// one cell per system, in report order.
    pub fn groups(&self) -> Vec<Vec<Cell>> {
        let mut groups = Vec::new();
        for &bench in &self.rows {
            let shapes: Vec<(usize, usize)> = match bench {
                Bench::Latency => self.latency_sizes.iter().map(|&s| (s, 1)).collect(),
                Bench::Throughput => self.throughput_sizes.iter().map(|&s| (s, 1)).collect(),
                Bench::Blocking => self.blocking_sizes.iter().map(|&s| (s, 1)).collect(),
                Bench::Fanout => self
                    .fanout_receivers
                    .iter()
                    .map(|&n| (self.fanout_size, n))
                    .collect(),
            };
            for (size, receivers) in shapes {
                groups.push(
                    self.systems
                        .iter()
                        .map(|s| Cell {
                            bench,
                            size,
                            receivers,
                            system: s.clone(),
                        })
                        .collect(),
                );
            }
        }
        groups
    }
}

/// The result of one run of one cell.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Ping-pong rows.
    Latency {
        /// Round-trip samples in nanoseconds.
        rtts: Vec<u64>,
        /// Involuntary context switches of all the cell's processes while measuring.
        preempted: u64,
    },
    /// Stream rows.
    Rate {
        /// Messages per second per receiver.
        msgs_per_s: f64,
        /// Involuntary context switches of all the cell's processes while measuring.
        preempted: u64,
    },
    /// The system cannot run this row; the reason is a footnote.
    Unsupported(&'static str),
    /// The run failed; the message says why.
    Failed(String),
}

/// Aggregate over all rounds of one cell.
#[derive(Debug, Clone)]
pub enum Summary {
    /// One-way latency over the samples of all rounds.
    Latency {
        /// Percentiles of RTT / 2.
        one_way: LatencySummary,
        /// Involuntary context switches, summed over processes and rounds.
        preempted: u64,
    },
    /// Median over rounds of messages per second per receiver.
    Rate {
        /// Messages per second.
        msgs_per_s: f64,
        /// Slowest round's messages per second.
        min_per_s: f64,
        /// Fastest round's messages per second.
        max_per_s: f64,
        /// Rounds that produced a rate.
        rounds: usize,
        /// Involuntary context switches, summed over processes and rounds.
        preempted: u64,
    },
    /// The system cannot run this row.
    Unsupported(&'static str),
    /// Every round failed; the first error.
    Failed(String),
}

/// All outcomes, by cell.
#[derive(Debug, Default)]
pub struct Results {
    /// Outcomes of every round, by cell.
    pub outcomes: BTreeMap<Cell, Vec<Outcome>>,
}

impl Results {
    /// Summarizes one cell; `None` if it was not run.
    pub fn summary(&self, cell: &Cell) -> Option<Summary> {
        let outs = self.outcomes.get(cell)?;
        let mut samples = Vec::new();
        let mut rates = Vec::new();
        let mut failure = None;
        let mut preempted_total = 0;
        for o in outs {
            match o {
                Outcome::Latency { rtts, preempted } => {
                    samples.extend_from_slice(rtts);
                    preempted_total += preempted;
                }
                Outcome::Rate {
                    msgs_per_s,
                    preempted,
                } => {
                    rates.push(*msgs_per_s);
                    preempted_total += preempted;
                }
                Outcome::Unsupported(why) => return Some(Summary::Unsupported(why)),
                Outcome::Failed(e) => {
                    failure.get_or_insert_with(|| e.clone());
                }
            }
        }
        if let Some(s) = stats::one_way_from_rtts(&mut samples) {
            return Some(Summary::Latency {
                one_way: s,
                preempted: preempted_total,
            });
        }
        if let Some(m) = stats::median(&rates) {
            return Some(Summary::Rate {
                msgs_per_s: m,
                min_per_s: rates.iter().copied().fold(f64::INFINITY, f64::min),
                max_per_s: rates.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                rounds: rates.len(),
                preempted: preempted_total,
            });
        }
        Some(Summary::Failed(
            failure.unwrap_or_else(|| "no samples".to_owned()),
        ))
    }
}

/// Runs the whole plan: `rounds` passes over every group, rotating the system
/// order each round so no system always runs first or last. Progress goes to
/// stderr.
pub fn run(plan: &Plan) -> Result<Results> {
    let groups = plan.groups();
    let total: usize = groups.iter().map(Vec::len).sum::<usize>() * plan.rounds;
    let mut results = Results::default();
    let mut n = 0usize;
    for round in 0..plan.rounds {
        for group in &groups {
            let len = group.len();
            for k in 0..len {
                let cell = &group[(k + round) % len];
                n += 1;
                let outcome = run_cell(plan, cell, n);
                eprintln!(
                    "[{n}/{total}] round {} {} {} B x{} {}: {}",
                    round + 1,
                    cell.bench.as_str(),
                    cell.size,
                    cell.receivers,
                    cell.system,
                    describe(&outcome)
                );
                results
                    .outcomes
                    .entry(cell.clone())
                    .or_default()
                    .push(outcome);
            }
        }
    }
    Ok(results)
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Latency { rtts, preempted } => {
            let mut v = rtts.clone();
            match stats::one_way_from_rtts(&mut v) {
                Some(l) => format!(
                    "one-way median {:.0} ns, p99 {:.0} ns ({} samples, preempted {preempted}x)",
                    l.median_ns, l.p99_ns, l.count
                ),
                None => "no samples".to_owned(),
            }
        }
        Outcome::Rate {
            msgs_per_s,
            preempted,
        } => format!("{:.3} M msg/s (preempted {preempted}x)", msgs_per_s / 1e6),
        Outcome::Unsupported(why) => format!("n/a ({why})"),
        Outcome::Failed(e) => format!("FAILED: {e}"),
    }
}

/// Runs one cell once in fresh processes; never panics, failures become
/// [`Outcome::Failed`].
pub fn run_cell(plan: &Plan, cell: &Cell, n: usize) -> Outcome {
    let Some(system) = systems::by_name(&cell.system) else {
        return Outcome::Failed(format!("unknown system {:?}", cell.system));
    };
    if let Some(why) = system.unsupported(cell.bench) {
        return Outcome::Unsupported(why);
    }
    let pid = std::process::id();
    let dir = plan.shm_root.join(format!("shmbus-bench-{pid}-{n}"));
    let outcome = match run_in_dir(plan, cell, &dir, &format!("{pid}x{n}")) {
        Ok(o) => o,
        Err(e) => Outcome::Failed(format!("{e:#}")),
    };
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        eprintln!("warning: could not remove {}: {e}", dir.display());
    }
    outcome
}

fn run_in_dir(plan: &Plan, cell: &Cell, dir: &Path, run_id: &str) -> Result<Outcome> {
    create_private_dir(dir)?;
    let followers = if cell.bench.is_pingpong() {
        1
    } else {
        cell.receivers
    };
    let mut roles = vec![Role::Leader];
    roles.extend((0..followers).map(Role::Follower));
    let mut children: Vec<(Role, Child)> = Vec::new();
    for role in roles {
        let args = RoleArgs {
            cell: cell.clone(),
            role,
            dir: dir.to_owned(),
            run_id: run_id.to_owned(),
            cpu: if role == Role::Leader {
                plan.cpus[0]
            } else {
                plan.cpus[1]
            },
            timing: plan.timing,
        };
        match spawn(plan, &args) {
            Ok(c) => children.push((role, c)),
            Err(e) => {
                kill_all(&mut children);
                return Err(e);
            }
        }
    }
    let budget = Duration::from_millis(plan.timing.warmup_ms + plan.timing.measure_ms)
        + Duration::from_secs(60);
    let ends = wait_all(&mut children, budget);
    let mut errors = Vec::new();
    let mut killed = Vec::new();
    for (role, end) in &ends {
        let what = match end {
            ChildEnd::Success => continue,
            ChildEnd::Killed => {
                killed.push(role.tag());
                continue;
            }
            ChildEnd::TimedOut => format!("still running after {budget:?}, killed"),
            ChildEnd::Failed(s) => format!("exited with {s}"),
        };
        let log = std::fs::read_to_string(log_path(dir, *role)).unwrap_or_default();
        let last = log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        errors.push(format!("{} {what}: {last}", role.tag()));
        if !log.trim().is_empty() {
            eprintln!(
                "--- {} log ({}):\n{}",
                role.tag(),
                cell.system,
                log.trim_end()
            );
        }
    }
    if !errors.is_empty() && !killed.is_empty() {
        errors.push(format!("then killed {}", killed.join(", ")));
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    let mut preempted = cell::read_result(dir, Role::Leader)?
        .get("preempted")
        .copied()
        .unwrap_or(0);
    for i in 0..followers {
        preempted += cell::read_result(dir, Role::Follower(i))?
            .get("preempted")
            .copied()
            .unwrap_or(0);
    }
    if cell.bench.is_pingpong() {
        let path = cell::samples_path(dir);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if bytes.len() % 8 != 0 {
            bail!("{} is truncated", path.display());
        }
        let samples = bytes
            .chunks_exact(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w.copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        Ok(Outcome::Latency {
            rtts: samples,
            preempted,
        })
    } else {
        let mut t0 = u64::MAX;
        let mut t1 = 0u64;
        let mut count = None;
        for i in 0..followers {
            let r = cell::read_result(dir, Role::Follower(i))?;
            let get = |k: &str| {
                r.get(k)
                    .copied()
                    .with_context(|| format!("follower {i} result lacks {k}"))
            };
            t0 = t0.min(get("t0_ns")?);
            t1 = t1.max(get("t1_ns")?);
            let c = get("count")?;
            if *count.get_or_insert(c) != c {
                bail!("receivers got different message counts ({count:?} vs {c})");
            }
        }
        let count = count.context("no receivers")?;
        if t1 <= t0 {
            bail!("receiver clock did not advance");
        }
        Ok(Outcome::Rate {
            msgs_per_s: count as f64 / ((t1 - t0) as f64 / 1e9),
            preempted,
        })
    }
}

/// Path of a role's log (its stdout and stderr) in the run directory.
pub fn log_path(dir: &Path, role: Role) -> PathBuf {
    dir.join(format!("log-{}", role.tag()))
}

fn spawn(plan: &Plan, args: &RoleArgs) -> Result<Child> {
    spawn_logged(&plan.exe, &args.to_args(), &log_path(&args.dir, args.role))
        .with_context(|| format!("spawning {} as {}", plan.exe.display(), args.role.tag()))
}

/// Creates a run directory only this user can enter (0700); it must not exist.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating run directory {}", dir.display()))
}

/// Starts `exe args` with stdin closed and stdout and stderr going to `log`.
pub fn spawn_logged(exe: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("spawning {}", exe.display()))
}

/// The last non-empty line of a role's log (its error message, usually).
pub fn last_log_line(log: &Path) -> String {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_owned()
}

fn kill_all(children: &mut [(Role, Child)]) {
    for (_, c) in children.iter_mut() {
        // Only our own children, by their handle; errors mean it already exited.
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// How a role process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildEnd {
    /// Exit status 0.
    Success,
    /// Exited (or was signalled) on its own, unsuccessfully.
    Failed(ExitStatus),
    /// Killed by the runner because a peer failed.
    Killed,
    /// Killed by the runner because the cell ran past its budget.
    TimedOut,
}

/// Per child: pid, reaped, killed by us. Under one lock: a pid is only
/// signalled while its process is unreaped, so it cannot have been reused by
/// an unrelated process.
type Pids = Mutex<Vec<(libc::pid_t, bool, bool)>>;

/// Waits for every child, blocked in `waitid` (no polling, so the parent
/// never preempts a measuring process). Once a child fails, or `budget` is
/// spent (a watchdog thread), the remaining children are killed: a peer of a
/// dead process would wait forever.
fn wait_all(children: &mut [(Role, Child)], budget: Duration) -> Vec<(Role, ChildEnd)> {
    let pids: Vec<(libc::pid_t, bool, bool)> = children
        .iter()
        .map(|(_, c)| (c.id() as libc::pid_t, false, false))
        .collect();
    let shared: Arc<Pids> = Arc::new(Mutex::new(pids));
    let timed_out = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let watchdog = {
        let shared = Arc::clone(&shared);
        let timed_out = Arc::clone(&timed_out);
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(budget) {
                // Relaxed: read by the main thread after joining this thread.
                timed_out.store(true, Ordering::Relaxed);
                kill_unreaped(&shared);
            }
        })
    };
    let mut status: Vec<Option<ExitStatus>> = vec![None; children.len()];
    while status.iter().any(Option::is_none) {
        // SAFETY: siginfo_t is plain data; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid siginfo_t to fill. WNOWAIT leaves the child
        // a zombie, so its pid stays ours until `Child::wait` below reaps it.
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc != 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        // SAFETY: waitid succeeded with WEXITED, so `info` describes a child
        // and si_pid is the valid field to read.
        let pid = unsafe { info.si_pid() };
        let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
        let Some(i) = guard.iter().position(|(p, _, _)| *p == pid) else {
            // Not one of this cell's children (cannot happen: the runner has
            // no others); reap it so the loop makes progress.
            // SAFETY: reaping a zombie child by pid; no memory is passed.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            continue;
        };
        let s = children[i].1.wait().ok();
        guard[i].1 = true;
        drop(guard);
        let failed = !s.is_some_and(|s| s.success());
        status[i] = s;
        if failed {
            kill_unreaped(&shared);
        }
    }
    // The receiver may be gone if the watchdog already fired; that is fine.
    let _ = stop_tx.send(());
    let _ = watchdog.join();
    let timed_out = timed_out.load(Ordering::Relaxed);
    let guard = shared.lock().unwrap_or_else(|e| e.into_inner());
    children
        .iter()
        .zip(status)
        .zip(guard.iter())
        .map(|(((role, _), s), (_, _, killed))| {
            let end = match s {
                Some(s) if s.success() => ChildEnd::Success,
                _ if *killed && timed_out => ChildEnd::TimedOut,
                _ if *killed => ChildEnd::Killed,
                Some(s) => ChildEnd::Failed(s),
                // Could not be waited for: treat like a kill.
                None => ChildEnd::Killed,
            };
            (*role, end)
        })
        .collect()
}

fn kill_unreaped(shared: &Pids) {
    let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
    for (pid, reaped, killed) in guard.iter_mut() {
        if !*reaped {
            // SAFETY: `pid` is an unreaped child of this process (checked under
            // the lock that reaping also takes), so it names our own process.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
            *killed = true;
        }
    }
}
