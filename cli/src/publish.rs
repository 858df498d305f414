//! `shmbus pub TOPIC`: publish payloads read from stdin through a ring of
//! its own ([`RingWriter`]), one per line or length-prefixed (`--framed`).
//!
//! The bytes are published as they are, like the typed client's
//! `Publisher::send_bytes`: a typed subscriber accepts them if the ring
//! declares its type (the topic's, found on its other rings, or `--type` /
//! `--fingerprint`) and they are a valid archive of it. `--string` turns each
//! line into an archived `String` for subscribers of `String`.

use std::{
    io::{BufRead, Read},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use serde::Serialize;
use shmbus_bus::{
    list_rings, Error as BusError, Policy, ProcessId, RingConfig, RingStatus, RingWriter,
    WaitStrategy,
};

use crate::Where;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The topic.
    topic: String,
    /// Read payloads as a u32 little-endian length then that many bytes
    /// (binary-safe), instead of one payload per line.
    #[arg(long)]
    framed: bool,
    /// Archive each payload as an rkyv `String` (declares the type `String`).
    #[arg(long, conflicts_with_all = ["type_name", "fingerprint"])]
    string: bool,
    /// The message type name the ring declares (default: the topic's,
    /// taken from its other rings; none: raw bytes).
    #[arg(long = "type", value_name = "NAME", requires = "fingerprint")]
    type_name: Option<String>,
    /// The type's fingerprint (hex), as `shmbus ls` shows it.
    #[arg(long, value_name = "HEX", requires = "type_name")]
    fingerprint: Option<String>,
    /// Label that starts the publisher id.
    #[arg(long, default_value = "cli")]
    label: String,
    /// Ring bytes (a power of two).
    #[arg(long, default_value_t = RingConfig::default().capacity)]
    capacity: u64,
    /// Largest payload (default: 1 MiB, or what the capacity allows).
    #[arg(long)]
    max_message: Option<u64>,
    /// Flow control: block (wait for subscribers) or overwrite.
    #[arg(long, value_enum, default_value = "block")]
    policy: PolicyArg,
    /// Give up on a message after waiting this long for ring space.
    #[arg(long, value_name = "SECS")]
    send_timeout: Option<f64>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum PolicyArg {
    Block,
    Overwrite,
}

#[derive(Debug, Serialize)]
struct Summary {
    topic: String,
    publisher_id: String,
    published: u64,
    bytes: u64,
    full_events: u64,
}

pub(crate) fn run(place: &Where, args: &Args) -> anyhow::Result<ExitCode> {
    let root = place.root();
    let dir = place.topic_dir(&args.topic)?;
    shmbus_bus::validate_name("publisher label", &args.label)?;
    shmbus_bus::create_dir_all(&root, &dir, 0o700)?;
    // Like the client: stale rings go first, so the type check below sees
    // only rings that matter.
    let _ = shmbus_bus::sweep_topic(&dir);
    let (type_name, type_fingerprint) = if args.string {
        (
            shmbus::type_name::<String>(),
            shmbus::fingerprint::<String>(),
        )
    } else if let (Some(name), Some(fp)) = (&args.type_name, &args.fingerprint) {
        let digits = fp.trim_start_matches("0x");
        let fp = u64::from_str_radix(digits, 16)
            .map_err(|e| anyhow::anyhow!("--fingerprint {fp:?}: {e}"))?;
        (name.clone(), fp)
    } else {
        topic_type(&dir).unwrap_or_default()
    };
    let config = RingConfig {
        capacity: args.capacity,
        max_message: args.max_message.unwrap_or_else(|| {
            RingConfig::default()
                .max_message
                .min(shmbus_bus::max_message_limit(args.capacity))
        }),
        policy: match args.policy {
            PolicyArg::Block => Policy::Block,
            PolicyArg::Overwrite => Policy::Overwrite,
        },
        type_name,
        type_fingerprint,
        ..RingConfig::default()
    };
    let me = ProcessId::current()?;
    let mut n = 0;
    let (mut writer, id) = loop {
        let id = format!("{}-{}.{}-{n}", args.label, me.pid, me.start_time);
        match RingWriter::create(&shmbus_bus::ring_path(&dir, &id)?, &config) {
            Err(BusError::AlreadyExists(_)) if n < 16 => n += 1,
            other => break (other?, id),
        }
    };
    let timeout = args.send_timeout.map(Duration::from_secs_f64);
    let mut sent = 0u64;
    let mut sent_bytes = 0u64;
    let mut send = |payload: &[u8]| -> anyhow::Result<()> {
        if args.string {
            let text = String::from_utf8_lossy(payload).into_owned();
            let archive = shmbus::rkyv::to_bytes::<shmbus::rkyv::rancor::Error>(&text)?;
            writer.write(&archive, WaitStrategy::default(), timeout)?;
        } else {
            writer.write(payload, WaitStrategy::default(), timeout)?;
        }
        sent += 1;
        sent_bytes += payload.len() as u64;
        Ok(())
    };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    if args.framed {
        let mut buf = Vec::new();
        loop {
            let mut len = [0u8; 4];
            match input.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e.into()),
            }
            let len = u32::from_le_bytes(len) as usize;
            buf.resize(len, 0);
            input
                .read_exact(&mut buf)
                .map_err(|e| anyhow::anyhow!("stdin ended inside a {len}-byte frame: {e}"))?;
            send(&buf)?;
        }
    } else {
        let mut line = Vec::new();
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            send(&line)?;
        }
    }
    let summary = Summary {
        topic: args.topic.clone(),
        publisher_id: id,
        published: sent,
        bytes: sent_bytes,
        full_events: writer.stats().full_events,
    };
    drop(writer);
    if place.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprintln!(
            "published {} message(s), {} bytes, to {} as {} (ring full {} time(s))",
            summary.published,
            summary.bytes,
            summary.topic,
            summary.publisher_id,
            summary.full_events
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The declared type of the topic's live publishers, if any declares one.
fn topic_type(dir: &Path) -> Option<(String, u64)> {
    list_rings(dir)
        .ok()?
        .iter()
        .filter_map(|r| RingStatus::read(&r.data_path).ok())
        .find(|s| s.publisher_alive && !s.closed && s.info.type_fingerprint != 0)
        .map(|s| (s.info.type_name, s.info.type_fingerprint))
}
