//! The chaos mix and its processes.
//!
//! Two bus roots joined by a bridge pair over loopback: side A has the
//! publishers and local subscribers, its bridge (`exp`) listens on
//! 127.0.0.1 and exports; side B's bridge (`imp`) dials it and imports, and
//! B's subscribers read the replicas. Three topics, one per policy:
//!
//! | topic | ring | bridge export | subscribers |
//! |---|---|---|---|
//! | `tb` | Block, 64 KiB | tethered | tethered (A and B) |
//! | `tu` | Block + untethered eviction after 100 ms, 16 KiB | untethered | untethered (A; one pauses 400 ms to be evicted), lossy (B, pausing: the export's exact GAPs) |
//! | `to` | Overwrite, 16 KiB | none (the bridge refuses Overwrite rings) | lossy (A, pausing 200 ms to be lapped) |
//!
//! Every process writes its stdout (the [`super::lines`] log) to
//! `<logs>/<role>.<incarnation>.log` and its stderr beside it (`.err`);
//! its stdin is a pipe the driver keeps, closed (or sent `finish`) for an
//! orderly stop.

use std::{
    fs::File,
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
};

use super::{mono_us, publisher_id, seqtrack::Mode};

/// Which bus root a process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Publishers, local subscribers, the exporting bridge.
    A,
    /// The importing bridge and the subscribers of replicas.
    B,
}

/// What a role does.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A chaos publisher on side A.
    Publisher {
        /// Its slot in the mix (the high part of its message ids).
        slot: u32,
        /// The topic.
        topic: &'static str,
    },
    /// A chaos subscriber.
    Subscriber {
        /// Its root.
        side: Side,
        /// The topic.
        topic: &'static str,
        /// Which gaps it may see.
        mode: Mode,
        /// Sleep `pause.1` ms after every `pause.0` messages (0: never).
        pause: (u64, u64),
    },
    /// A bridge daemon: the exporter on A or the importer on B.
    Bridge(Side),
}

/// One role of the mix.
#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    /// Unique name (log file prefix).
    pub name: String,
    /// What it does.
    pub kind: Kind,
}

/// Ring options of a topic: `(policy, capacity, evict_after_ms)`.
pub fn topic_ring(topic: &str) -> (&'static str, u64, Option<u64>) {
    match topic {
        "tb" => ("block", 64 << 10, None),
        "tu" => ("block", 16 << 10, Some(100)),
        _ => ("overwrite", 16 << 10, None),
    }
}

/// True if the topic's publishers must never lose a message to a live
/// subscriber (Block without eviction).
pub fn is_tethered(topic: &str) -> bool {
    topic == "tb"
}

/// The mix: `publishers` (2-4) and `subscribers` (4-8) with both bridges.
pub fn mix(publishers: u32, subscribers: u32) -> Vec<Role> {
    let pub_topics = ["tb", "tu", "to", "tb"];
    let mut roles: Vec<Role> = (0..publishers.clamp(2, 4))
        .map(|slot| Role {
            name: format!("pub{slot}-{}", pub_topics[slot as usize]),
            kind: Kind::Publisher {
                slot: slot + 1,
                topic: pub_topics[slot as usize],
            },
        })
        .collect();
    let subs = [
        (Side::A, "tb", Mode::Tethered, (0, 0)),
        (Side::B, "tb", Mode::Tethered, (0, 0)),
        (Side::A, "to", Mode::Lossy, (500, 200)),
        (Side::A, "tu", Mode::Untethered, (800, 400)),
        (Side::B, "tu", Mode::Lossy, (700, 300)),
        (Side::A, "tb", Mode::Tethered, (0, 0)),
        (Side::A, "tu", Mode::Untethered, (0, 0)),
        (Side::B, "tb", Mode::Tethered, (0, 0)),
    ];
    for (i, &(side, topic, mode, pause)) in subs
        .iter()
        .take(subscribers.clamp(4, 8) as usize)
        .enumerate()
    {
        let side_name = if side == Side::A { "a" } else { "b" };
        roles.push(Role {
            name: format!("sub{i}-{side_name}-{topic}"),
            kind: Kind::Subscriber {
                side,
                topic,
                mode,
                pause,
            },
        });
    }
    roles.push(Role {
        name: "bridge-exp".into(),
        kind: Kind::Bridge(Side::A),
    });
    roles.push(Role {
        name: "bridge-imp".into(),
        kind: Kind::Bridge(Side::B),
    });
    roles
}

/// Where everything of a run lives.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Bus root of side A.
    pub root_a: PathBuf,
    /// Bus root of side B.
    pub root_b: PathBuf,
    /// Logs, keys and stats files.
    pub logs: PathBuf,
    /// The `peer` helper.
    pub peer: PathBuf,
    /// The `bridge` helper.
    pub bridge: PathBuf,
    /// The exporter's loopback port.
    pub port: u16,
    /// Publisher rate, messages per second.
    pub rate: u32,
}

impl Layout {
    /// Fresh roots `/dev/shm/shmbus-chaos-<pid>-<tag>/{a,b}`, a logs
    /// directory (emptied), bridge identities, and a free loopback port.
    ///
    /// # Errors
    ///
    /// If a directory or key file cannot be made, or no port is free.
    pub fn create(tag: &str, logs: &Path, peer: &Path, bridge: &Path) -> std::io::Result<Self> {
        let base = PathBuf::from(format!(
            "/dev/shm/shmbus-chaos-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&base);
        let _ = std::fs::remove_dir_all(logs);
        std::fs::create_dir_all(base.join("a"))?;
        std::fs::create_dir_all(base.join("b"))?;
        std::fs::create_dir_all(logs)?;
        crate::netns::write_bridge_identities(&logs.join("keys"), &["exp", "imp"])?;
        // The port is free now; the exporter binds it a moment later (and
        // again after every restart: the listener reuses the address).
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Ok(Self {
            root_a: base.join("a"),
            root_b: base.join("b"),
            logs: logs.to_path_buf(),
            peer: peer.to_path_buf(),
            bridge: bridge.to_path_buf(),
            port,
            rate: 1000,
        })
    }

    /// The directory holding both roots.
    pub fn base(&self) -> &Path {
        self.root_a.parent().unwrap_or(&self.root_a)
    }

    fn root(&self, side: Side) -> &Path {
        match side {
            Side::A => &self.root_a,
            Side::B => &self.root_b,
        }
    }

    /// The log file of `role`'s `incarnation`.
    pub fn log_path(&self, role: &str, incarnation: u32) -> PathBuf {
        self.logs.join(format!("{role}.{incarnation}.log"))
    }

    /// The command line of `role`'s `incarnation`.
    pub fn command(&self, role: &Role, incarnation: u32) -> Command {
        let mut args: Vec<String> = Vec::new();
        let program = match &role.kind {
            Kind::Publisher { slot, topic } => {
                let (policy, capacity, evict) = topic_ring(topic);
                args.extend(
                    [
                        "chaos-pub",
                        "--topic",
                        topic,
                        "--policy",
                        policy,
                        "--capacity",
                        &capacity.to_string(),
                        "--id",
                        &publisher_id(*slot, incarnation).to_string(),
                        "--rate",
                        &self.rate.to_string(),
                    ]
                    .map(String::from),
                );
                if let Some(ms) = evict {
                    args.extend(["--evict-after-ms".into(), ms.to_string()]);
                }
                args.extend(["--root".into(), self.root_a.display().to_string()]);
                &self.peer
            }
            Kind::Subscriber {
                side,
                topic,
                mode,
                pause,
            } => {
                let mode = match mode {
                    Mode::Tethered => "tethered",
                    Mode::Untethered => "untethered",
                    Mode::Lossy => "lossy",
                };
                args.extend(
                    [
                        "chaos-sub",
                        "--topic",
                        topic,
                        "--mode",
                        mode,
                        "--root",
                        &self.root(*side).display().to_string(),
                    ]
                    .map(String::from),
                );
                if *side == Side::A {
                    args.push("--local".into());
                }
                if pause.0 > 0 {
                    args.extend([
                        "--pause-every".into(),
                        pause.0.to_string(),
                        "--pause-ms".into(),
                        pause.1.to_string(),
                    ]);
                }
                &self.peer
            }
            Kind::Bridge(side) => {
                let keys = self.logs.join("keys");
                let (name, rest): (&str, Vec<String>) = match side {
                    Side::A => (
                        "exp",
                        [
                            "--listen",
                            &format!("127.0.0.1:{}", self.port),
                            "--export",
                            "tb:tethered",
                            "--export",
                            "tu:untethered",
                        ]
                        .map(String::from)
                        .to_vec(),
                    ),
                    Side::B => (
                        "imp",
                        [
                            "--listen",
                            "off",
                            "--peer",
                            &format!("exp=127.0.0.1:{}", self.port),
                            "--import",
                            "t*",
                        ]
                        .map(String::from)
                        .to_vec(),
                    ),
                };
                args.extend(["--node-name".into(), name.into()]);
                args.extend(["--root".into(), self.root(*side).display().to_string()]);
                args.extend(rest);
                args.extend(crate::netns::bridge_identity_args(&keys, name));
                args.extend([
                    "--stats-file".into(),
                    self.logs
                        .join(format!("{name}.stats"))
                        .display()
                        .to_string(),
                ]);
                &self.bridge
            }
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    }
}

/// A running (or reaped) process of the mix.
#[derive(Debug)]
pub struct Running {
    /// Which role.
    pub role: usize,
    /// Its incarnation (0 for the first start).
    pub incarnation: u32,
    /// The child.
    pub child: Child,
    /// The driver's end of its stdin (dropped to stop it).
    pub stdin: Option<ChildStdin>,
    /// `mono_us` just before the spawn.
    pub spawned_us: u64,
}

/// What the checker needs to know about one incarnation.
#[derive(Debug, Clone)]
pub struct Incarnation {
    /// Index into the mix.
    pub role: usize,
    /// Its incarnation number.
    pub incarnation: u32,
    /// `mono_us` just before the spawn.
    pub spawned_us: u64,
    /// `mono_us` when the driver sent SIGKILL, if it did.
    pub killed_us: Option<u64>,
    /// Its log.
    pub log: PathBuf,
}

/// Starts `role`'s `incarnation`.
///
/// # Errors
///
/// If the log files cannot be created or the process not started.
pub fn spawn(
    layout: &Layout,
    roles: &[Role],
    role: usize,
    incarnation: u32,
) -> std::io::Result<Running> {
    let r = &roles[role];
    let out = File::create(layout.log_path(&r.name, incarnation))?;
    let err = File::create(layout.logs.join(format!("{}.{incarnation}.err", r.name)))?;
    let mut cmd = layout.command(r, incarnation);
    cmd.stdin(Stdio::piped()).stdout(out).stderr(err);
    let spawned_us = mono_us();
    let mut child = cmd.spawn()?;
    let stdin = child.stdin.take();
    Ok(Running {
        role,
        incarnation,
        child,
        stdin,
        spawned_us,
    })
}

impl Running {
    /// Asks a subscriber to drain and stop.
    pub fn finish(&mut self) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = s.write_all(b"finish\n");
            let _ = s.flush();
        }
    }
}
