//! One measurement ("cell" of a result table) and the child-process protocol
//! that runs it: the arguments a role process gets, and the files it leaves.
//!
//! The runner starts one process per role by re-executing its own binary:
//!
//! ```text
//! compare --role leader   --bench latency --system floor --size 64 --receivers 1 \
//!         --dir /dev/shm/shmbus-bench-123-7 --run-id sb123x7 --cpu 0 \
//!         --warmup-ms 50 --measure-ms 300 --max-iters 200000 --warmup-msgs 20000
//! compare --role follower --index 0 ...same... --cpu 1
//! ```
//!
//! In stream rows each receiver creates `ready-<role>` once its channel is
//! open, and the sender starts only when all are ready. Each role writes
//! `result-<role>` (lines of `key value`) into the run directory and then
//! creates `done-<role>`; the leader (latency rows) also
//! writes `samples.bin` (round-trip times, u64 little-endian nanoseconds).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::transport::Wait;

/// Queue depth used by latency rows: one message is in flight, the second slot
/// lets a sender write the next message without reading the previous one back.
pub const LATENCY_DEPTH: usize = 2;
/// Queue depth used by streaming rows, for systems whose depth is configurable.
pub const STREAM_DEPTH: usize = 256;

/// The kinds of measurement (rows of the comparison).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bench {
    /// Ping-pong, both sides spinning; one-way = RTT / 2.
    Latency,
    /// One sender streaming to one spinning receiver.
    Throughput,
    /// Ping-pong where each receiver sleeps in the kernel until woken.
    Blocking,
    /// One sender streaming to N receivers that share one core (yield-polling).
    Fanout,
}

impl Bench {
    /// All rows, in report order.
    pub const ALL: [Bench; 4] = [
        Bench::Latency,
        Bench::Throughput,
        Bench::Blocking,
        Bench::Fanout,
    ];

    /// Command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            Bench::Latency => "latency",
            Bench::Throughput => "throughput",
            Bench::Blocking => "blocking",
            Bench::Fanout => "fanout",
        }
    }

    /// Parses [`Bench::as_str`] output.
    pub fn parse(s: &str) -> Option<Bench> {
        Bench::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// Whether this row is a ping-pong (latency) or a stream (rate).
    pub fn is_pingpong(self) -> bool {
        matches!(self, Bench::Latency | Bench::Blocking)
    }

    /// The waiting policy of this row.
    pub fn wait(self) -> Wait {
        match self {
            Bench::Latency | Bench::Throughput => Wait::Spin,
            Bench::Blocking => Wait::Block,
            Bench::Fanout => Wait::Yield,
        }
    }

    /// The queue depth of this row.
    pub fn depth(self) -> usize {
        if self.is_pingpong() {
            LATENCY_DEPTH
        } else {
            STREAM_DEPTH
        }
    }
}

/// Time and count budget of one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Ping-pong warm-up before samples are recorded.
    pub warmup_ms: u64,
    /// Measurement duration (ping-pong: upper bound; stream: sending time).
    pub measure_ms: u64,
    /// Ping-pong: at most this many recorded round trips.
    pub max_iters: u64,
    /// Stream: messages sent before the receiver starts its clock.
    pub warmup_msgs: u64,
}

/// What one measurement is: a row, a system, a payload size and a receiver count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cell {
    /// The row.
    pub bench: Bench,
    /// Payload size in bytes.
    pub size: usize,
    /// Number of receivers (1 except in fan-out).
    pub receivers: usize,
    /// System name (see [`crate::systems::all`]).
    pub system: String,
}

/// Which process of a cell this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Ping-pong initiator, or the stream sender. Pinned to the first cpu.
    Leader,
    /// Ping-pong echoer, or stream receiver `index`. Pinned to the second cpu.
    Follower(usize),
}

impl Role {
    /// File-name tag of this role.
    pub fn tag(self) -> String {
        match self {
            Role::Leader => "leader".to_owned(),
            Role::Follower(i) => format!("follower-{i}"),
        }
    }
}

/// Everything a role process is told on its command line.
#[derive(Debug, Clone)]
pub struct RoleArgs {
    /// The measurement.
    pub cell: Cell,
    /// This process's role.
    pub role: Role,
    /// Private run directory.
    pub dir: PathBuf,
    /// Unique id of this run (for global namespaces).
    pub run_id: String,
    /// CPU to pin to.
    pub cpu: usize,
    /// Budget.
    pub timing: Timing,
}

impl RoleArgs {
    /// Command-line arguments that [`RoleArgs::parse`] reads back.
    pub fn to_args(&self) -> Vec<String> {
        let (role, index) = match self.role {
            Role::Leader => ("leader", 0),
            Role::Follower(i) => ("follower", i),
        };
        let kv: [(&str, String); 13] = [
            ("--role", role.to_owned()),
            ("--index", index.to_string()),
            ("--bench", self.cell.bench.as_str().to_owned()),
            ("--system", self.cell.system.clone()),
            ("--size", self.cell.size.to_string()),
            ("--receivers", self.cell.receivers.to_string()),
            ("--dir", self.dir.display().to_string()),
            ("--run-id", self.run_id.clone()),
            ("--cpu", self.cpu.to_string()),
            ("--warmup-ms", self.timing.warmup_ms.to_string()),
            ("--measure-ms", self.timing.measure_ms.to_string()),
            ("--max-iters", self.timing.max_iters.to_string()),
            ("--warmup-msgs", self.timing.warmup_msgs.to_string()),
        ];
        kv.into_iter()
            .flat_map(|(k, v)| [k.to_owned(), v])
            .collect()
    }

    /// Parses the arguments produced by [`RoleArgs::to_args`].
    pub fn parse(args: &[String]) -> Result<RoleArgs> {
        let args = KvArgs::parse(args)?;
        let get = |k: &str| args.get(k);
        let num = |k: &str| args.num(k);
        let index = usize::try_from(num("--index")?)?;
        let role = match get("--role")? {
            "leader" => Role::Leader,
            "follower" => Role::Follower(index),
            other => bail!("unknown role {other:?}"),
        };
        let bench = Bench::parse(get("--bench")?)
            .ok_or_else(|| anyhow!("unknown bench {:?}", get("--bench")))?;
        Ok(RoleArgs {
            cell: Cell {
                bench,
                size: usize::try_from(num("--size")?)?,
                receivers: usize::try_from(num("--receivers")?)?,
                system: get("--system")?.to_owned(),
            },
            role,
            dir: PathBuf::from(get("--dir")?),
            run_id: get("--run-id")?.to_owned(),
            cpu: usize::try_from(num("--cpu")?)?,
            timing: Timing {
                warmup_ms: num("--warmup-ms")?,
                measure_ms: num("--measure-ms")?,
                max_iters: num("--max-iters")?,
                warmup_msgs: num("--warmup-msgs")?,
            },
        })
    }
}

/// `--key value` pairs of a role process's command line.
#[derive(Debug, Clone, Default)]
pub struct KvArgs {
    map: BTreeMap<String, String>,
}

impl KvArgs {
    /// Pairs up `args` (`--key value ...`).
    ///
    /// ```
    /// let a: Vec<String> = ["--size", "64", "--system", "floor"].map(String::from).to_vec();
    /// let kv = shmbus_benches::cell::KvArgs::parse(&a).unwrap();
    /// assert_eq!(kv.num("--size").unwrap(), 64);
    /// assert_eq!(kv.get("--system").unwrap(), "floor");
    /// assert!(kv.get("--cpu").is_err());
    /// ```
    pub fn parse(args: &[String]) -> Result<KvArgs> {
        let mut map = BTreeMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let v = it
                .next()
                .ok_or_else(|| anyhow!("role argument {k} has no value"))?;
            map.insert(k.clone(), v.clone());
        }
        Ok(KvArgs { map })
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Result<&str> {
        self.map
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| anyhow!("role argument {key} is missing"))
    }

    /// The value of `key` as a number.
    pub fn num(&self, key: &str) -> Result<u64> {
        self.get(key)?
            .parse::<u64>()
            .with_context(|| format!("role argument {key} is not a number"))
    }
}

/// Path of a role's result file.
pub fn result_path(dir: &Path, role: Role) -> PathBuf {
    dir.join(format!("result-{}", role.tag()))
}

/// Path of a role's completion marker.
pub fn done_path(dir: &Path, role: Role) -> PathBuf {
    dir.join(format!("done-{}", role.tag()))
}

/// Path of a role's "channels open, ready to receive" marker.
pub fn ready_path(dir: &Path, role: Role) -> PathBuf {
    dir.join(format!("ready-{}", role.tag()))
}

/// Path of the leader's round-trip samples.
pub fn samples_path(dir: &Path) -> PathBuf {
    dir.join("samples.bin")
}

/// Writes `key value` lines atomically (temp file + rename).
pub fn write_result(dir: &Path, role: Role, kv: &[(&str, u64)]) -> Result<()> {
    let text: String = kv.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
    let path = result_path(dir, role);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Reads a result file written by [`write_result`].
pub fn read_result(dir: &Path, role: Role) -> Result<BTreeMap<String, u64>> {
    let path = result_path(dir, role);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once(' ')
                .ok_or_else(|| anyhow!("malformed result line {l:?}"))?;
            let v = v
                .trim()
                .parse::<u64>()
                .with_context(|| format!("malformed value in {l:?}"))?;
            Ok((k.to_owned(), v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_args_roundtrip() {
        let a = RoleArgs {
            cell: Cell {
                bench: Bench::Fanout,
                size: 64,
                receivers: 4,
                system: "uds".into(),
            },
            role: Role::Follower(3),
            dir: PathBuf::from("/dev/shm/x"),
            run_id: "r1".into(),
            cpu: 1,
            timing: Timing {
                warmup_ms: 1,
                measure_ms: 2,
                max_iters: 3,
                warmup_msgs: 4,
            },
        };
        let b = RoleArgs::parse(&a.to_args()).unwrap();
        assert_eq!(b.cell, a.cell);
        assert_eq!(b.role, a.role);
        assert_eq!(b.dir, a.dir);
        assert_eq!(b.timing, a.timing);
        assert_eq!(b.cpu, 1);
    }

    #[test]
    fn result_file_roundtrip() {
        let dir = std::env::temp_dir().join(format!("shmbus-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_result(&dir, Role::Leader, &[("a", 1), ("b", u64::MAX)]).unwrap();
        let r = read_result(&dir, Role::Leader).unwrap();
        assert_eq!(r["a"], 1);
        assert_eq!(r["b"], u64::MAX);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
