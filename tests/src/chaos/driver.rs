//! The driver: starts the mix, kills and restarts processes (chaos) or
//! stops and restarts subscribers (soak churn), then ends the run in order:
//! publishers stop cleanly, subscribers drain until every publisher is
//! gone, bridges stop.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::{
    mono_us,
    topology::{spawn, Incarnation, Kind, Layout, Role, Running},
};

/// A small deterministic generator (splitmix64): a run is replayed by its
/// seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// What a run does between start and end.
#[derive(Debug, Clone)]
pub enum Disturb {
    /// SIGKILL a random process every `interval_ms` (a range) and restart
    /// it, `kills` times.
    Kill {
        /// How many kills.
        kills: u64,
        /// Pause between kills, ms, uniform in the range.
        interval_ms: (u64, u64),
    },
    /// No kills for `duration`; every `churn_ms` (a range) one subscriber
    /// leaves cleanly and a new incarnation joins.
    Soak {
        /// Run time.
        duration: Duration,
        /// Pause between churns, ms.
        churn_ms: (u64, u64),
    },
}

/// Everything the checker needs after a run.
#[derive(Debug)]
pub struct Outcome {
    /// The mix.
    pub roles: Vec<Role>,
    /// Every incarnation started.
    pub incarnations: Vec<Incarnation>,
    /// SIGKILLs per role name.
    pub kills: BTreeMap<String, u64>,
    /// Clean leaves and rejoins (soak churn) per role name.
    pub churns: BTreeMap<String, u64>,
    /// Problems the driver saw: a process that exited on its own, failed
    /// to stop in time or stopped with an error.
    pub problems: Vec<String>,
    /// From the first spawn to the last exit.
    pub run_time: Duration,
    /// From the first spawn to the start of the orderly end.
    pub disturb_time: Duration,
}

/// The driver's state.
#[derive(Debug)]
struct Driver<'a> {
    layout: &'a Layout,
    roles: Vec<Role>,
    running: Vec<Running>,
    incarnations: Vec<Incarnation>,
    problems: Vec<String>,
}

impl Driver<'_> {
    fn start(&mut self, role: usize, incarnation: u32) {
        match spawn(self.layout, &self.roles, role, incarnation) {
            Ok(r) => {
                self.incarnations.push(Incarnation {
                    role,
                    incarnation,
                    spawned_us: r.spawned_us,
                    killed_us: None,
                    log: self.layout.log_path(&self.roles[role].name, incarnation),
                });
                self.running[role] = r;
            }
            Err(e) => self
                .problems
                .push(format!("cannot start {}: {e}", self.roles[role].name)),
        }
    }

    fn record_mut(&mut self, role: usize) -> Option<&mut Incarnation> {
        let inc = self.running[role].incarnation;
        self.incarnations
            .iter_mut()
            .rev()
            .find(|i| i.role == role && i.incarnation == inc)
    }

    /// SIGKILLs `role` and reaps it.
    fn kill(&mut self, role: usize) {
        let t = mono_us();
        let _ = self.running[role].child.kill();
        let _ = self.running[role].child.wait();
        if let Some(rec) = self.record_mut(role) {
            rec.killed_us = Some(t);
        }
    }

    /// Restarts every process that exited by itself (a crash: a problem).
    fn reap_unexpected(&mut self) {
        for role in 0..self.running.len() {
            if let Ok(Some(status)) = self.running[role].child.try_wait() {
                let name = &self.roles[role].name;
                let inc = self.running[role].incarnation;
                self.problems.push(format!(
                    "{name}.{inc} exited by itself: {status} (see {})",
                    self.layout.logs.join(format!("{name}.{inc}.err")).display()
                ));
                self.start(role, inc + 1);
            }
        }
    }

    /// Stops `roles` cleanly (subscribers get `finish`, others EOF) and
    /// waits up to `timeout` for each; a process that does not stop is
    /// killed and is a problem, and so is a nonzero exit.
    fn stop(&mut self, which: &[usize], finish: bool, timeout: Duration) {
        for &role in which {
            if finish {
                self.running[role].finish();
            } else {
                self.running[role].stdin = None;
            }
        }
        let deadline = Instant::now() + timeout;
        for &role in which {
            let name = self.roles[role].name.clone();
            let inc = self.running[role].incarnation;
            loop {
                match self.running[role].child.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            self.problems
                                .push(format!("{name}.{inc} stopped with {status}"));
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        self.problems
                            .push(format!("{name}.{inc} did not stop within {timeout:?}"));
                        self.kill(role);
                        break;
                    }
                }
            }
        }
    }

    fn of_kind(&self, f: impl Fn(&Kind) -> bool) -> Vec<usize> {
        (0..self.roles.len())
            .filter(|&i| f(&self.roles[i].kind))
            .collect()
    }
}

/// Runs the mix `roles` on `layout`, disturbed as `disturb`, calling
/// `on_second` about once a second with the running processes' pids and
/// role names (the soak's sampler).
///
/// # Errors
///
/// If the first processes cannot be started.
pub fn run(
    layout: &Layout,
    roles: Vec<Role>,
    disturb: &Disturb,
    seed: u64,
    mut on_second: impl FnMut(&[(u32, &str)]),
) -> std::io::Result<Outcome> {
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    // Bridges, then subscribers, then publishers: early subscribers are
    // joined to every publisher's ring from its first message.
    let mut order: Vec<usize> = (0..roles.len()).collect();
    order.sort_by_key(|&i| match roles[i].kind {
        Kind::Bridge(_) => 0,
        Kind::Subscriber { .. } => 1,
        Kind::Publisher { .. } => 2,
    });
    let mut slots: Vec<Option<Running>> = (0..roles.len()).map(|_| None).collect();
    let mut subscribers_first = true;
    for &i in &order {
        if subscribers_first && matches!(roles[i].kind, Kind::Publisher { .. }) {
            // Give the subscribers a moment to register first.
            subscribers_first = false;
            std::thread::sleep(Duration::from_millis(300));
        }
        slots[i] = Some(spawn(layout, &roles, i, 0)?);
    }
    let running: Vec<Running> = slots.into_iter().flatten().collect();
    let incarnations = running
        .iter()
        .map(|r| Incarnation {
            role: r.role,
            incarnation: 0,
            spawned_us: r.spawned_us,
            killed_us: None,
            log: layout.log_path(&roles[r.role].name, 0),
        })
        .collect();
    let mut d = Driver {
        layout,
        roles,
        running,
        incarnations,
        problems: Vec::new(),
    };
    let mut kills: BTreeMap<String, u64> = BTreeMap::new();
    let mut churns: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_tick = Instant::now();
    let mut tick = |d: &Driver<'_>| {
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            let pids: Vec<(u32, &str)> = d
                .running
                .iter()
                .map(|r| (r.child.id(), d.roles[r.role].name.as_str()))
                .collect();
            on_second(&pids);
        }
    };
    // Let everything connect before the first disturbance.
    std::thread::sleep(Duration::from_secs(1));
    match *disturb {
        Disturb::Kill {
            kills: n,
            interval_ms,
        } => {
            for _ in 0..n {
                let pause = rng.range(interval_ms.0, interval_ms.1);
                std::thread::sleep(Duration::from_millis(pause));
                d.reap_unexpected();
                let role = rng.range(0, d.roles.len() as u64 - 1) as usize;
                d.kill(role);
                *kills.entry(d.roles[role].name.clone()).or_default() += 1;
                let next = d.running[role].incarnation + 1;
                d.start(role, next);
                tick(&d);
            }
        }
        Disturb::Soak { duration, churn_ms } => {
            let subs = d.of_kind(|k| matches!(k, Kind::Subscriber { .. }));
            let mut next_churn =
                Instant::now() + Duration::from_millis(rng.range(churn_ms.0, churn_ms.1));
            while started.elapsed() < duration {
                std::thread::sleep(Duration::from_millis(100));
                d.reap_unexpected();
                if Instant::now() >= next_churn && !subs.is_empty() {
                    let role = subs[rng.range(0, subs.len() as u64 - 1) as usize];
                    // Leave without draining (EOF), then a new one joins.
                    d.stop(&[role], false, Duration::from_secs(10));
                    *churns.entry(d.roles[role].name.clone()).or_default() += 1;
                    let next = d.running[role].incarnation + 1;
                    d.start(role, next);
                    next_churn =
                        Instant::now() + Duration::from_millis(rng.range(churn_ms.0, churn_ms.1));
                }
                tick(&d);
            }
        }
    }
    let disturb_time = started.elapsed();
    // The orderly end: let restarts settle, stop publishers, let the
    // bridges forward the tails, drain the subscribers, stop the bridges.
    std::thread::sleep(Duration::from_secs(2));
    d.reap_unexpected();
    let pubs = d.of_kind(|k| matches!(k, Kind::Publisher { .. }));
    d.stop(&pubs, false, Duration::from_secs(40));
    std::thread::sleep(Duration::from_secs(3));
    let subs = d.of_kind(|k| matches!(k, Kind::Subscriber { .. }));
    d.stop(&subs, true, Duration::from_secs(45));
    let bridges = d.of_kind(|k| matches!(k, Kind::Bridge(_)));
    d.stop(&bridges, false, Duration::from_secs(20));
    Ok(Outcome {
        roles: d.roles,
        incarnations: d.incarnations,
        kills,
        churns,
        problems: d.problems,
        run_time: started.elapsed(),
        disturb_time,
    })
}
