//! `shmbus tail TOPIC`: follow every publisher of a topic with observer
//! reads ([`RingObserver`]): no subscriber slot, never holds a publisher
//! back, validated copies; a gap (the observer was lapped) is printed with
//! its exact size.
//!
//! An observer does not keep a ring: a publisher that comes and goes between
//! two listings of the topic (100 ms), with no subscriber to read it, may be
//! missed, since its ring is removed when it closes.

use std::{
    collections::{BTreeMap, HashSet},
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use serde::Serialize;
use shmbus_bus::{list_rings, Observed, RingObserver, StartAt};

use crate::{text::preview, Where};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The topic.
    topic: String,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<u64>,
    /// Write the payloads to stdout, each followed by a newline (with
    /// --framed: each preceded by its length, u32 little-endian, as `shmbus
    /// pub --framed` reads them).
    #[arg(long)]
    raw: bool,
    /// With --raw: length-prefixed payloads instead of lines.
    #[arg(long, requires = "raw")]
    framed: bool,
    /// Where to start in rings present at start: latest (only new
    /// messages) or oldest (everything still in the ring). Rings that appear
    /// later are read from their first message.
    #[arg(long, value_enum, default_value = "latest")]
    from: From,
    /// Bytes of each payload shown in the preview.
    #[arg(long, default_value_t = 16)]
    preview: usize,
    /// Stop when every ring followed is closed (after at least one was seen).
    #[arg(long)]
    exit_on_close: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum From {
    Latest,
    Oldest,
}

/// How often the topic directory is listed for new publishers.
const RESCAN: Duration = Duration::from_millis(100);
/// Longest sleep when every ring is empty.
const MAX_IDLE_SLEEP: Duration = Duration::from_millis(1);

#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Event<'a> {
    Message {
        publisher: &'a str,
        sequence: u64,
        len: usize,
        payload_hex: String,
    },
    Gap {
        publisher: &'a str,
        messages: u64,
        bytes: u64,
    },
    Joined {
        publisher: &'a str,
    },
    Closed {
        publisher: &'a str,
    },
    Damaged {
        publisher: &'a str,
        reason: String,
    },
}

pub(crate) fn run(place: &Where, args: &Args) -> anyhow::Result<ExitCode> {
    let dir = place.topic_dir(&args.topic)?;
    let deadline = args
        .timeout
        .map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut followed: BTreeMap<String, RingObserver> = BTreeMap::new();
    // Rings seen once (followed, finished or refused): never reopened.
    let mut seen: HashSet<String> = HashSet::new();
    let mut first_scan = true;
    let mut last_scan = Instant::now() - RESCAN;
    let mut messages = 0u64;
    let mut idle_sleep = Duration::from_micros(20);
    let emit = |out: &mut dyn Write, ev: Event<'_>, json: bool| -> std::io::Result<()> {
        if json {
            serde_json::to_writer(&mut *out, &ev)?;
            writeln!(out)
        } else {
            match ev {
                Event::Message { .. } => unreachable!("messages are printed by the caller"),
                Event::Gap {
                    publisher,
                    messages,
                    bytes,
                } => writeln!(
                    out,
                    "{publisher} GAP: missed {messages} message(s), {bytes} bytes (the publisher lapped this observer)"
                ),
                Event::Joined { publisher } => writeln!(out, "{publisher} joined"),
                Event::Closed { publisher } => writeln!(out, "{publisher} closed"),
                Event::Damaged { publisher, reason } => {
                    writeln!(out, "{publisher} DAMAGED, not followed: {reason}")
                }
            }
        }
    };
    let quiet = args.raw;
    loop {
        if last_scan.elapsed() >= RESCAN {
            last_scan = Instant::now();
            for ring in list_rings(&dir)? {
                if !seen.insert(ring.publisher_id.clone()) {
                    continue;
                }
                let start = if first_scan && matches!(args.from, From::Latest) {
                    StartAt::Latest
                } else {
                    StartAt::Oldest
                };
                match RingObserver::open(&ring.data_path, start) {
                    Ok(obs) => {
                        if !quiet {
                            emit(
                                &mut out,
                                Event::Joined {
                                    publisher: &ring.publisher_id,
                                },
                                place.json,
                            )?;
                        }
                        followed.insert(ring.publisher_id, obs);
                    }
                    Err(e) => {
                        let ev = Event::Damaged {
                            publisher: &ring.publisher_id,
                            reason: e.to_string(),
                        };
                        if quiet {
                            eprintln!("shmbus tail: {}: {e}", ring.publisher_id);
                        } else {
                            emit(&mut out, ev, place.json)?;
                        }
                    }
                }
            }
            first_scan = false;
            out.flush()?;
        }
        let mut progressed = false;
        let mut finished = Vec::new();
        for (id, obs) in &mut followed {
            // A bounded turn per ring keeps the others served.
            for _ in 0..256 {
                match obs.try_read() {
                    Ok(Observed::Message { sequence, payload }) => {
                        progressed = true;
                        messages += 1;
                        if args.raw {
                            if args.framed {
                                out.write_all(&(payload.len() as u32).to_le_bytes())?;
                                out.write_all(payload)?;
                            } else {
                                out.write_all(payload)?;
                                out.write_all(b"\n")?;
                            }
                        } else if place.json {
                            let mut hex = String::with_capacity(payload.len() * 2);
                            for b in payload {
                                use std::fmt::Write as _;
                                let _ = write!(hex, "{b:02x}");
                            }
                            emit(
                                &mut out,
                                Event::Message {
                                    publisher: id,
                                    sequence,
                                    len: payload.len(),
                                    payload_hex: hex,
                                },
                                true,
                            )?;
                        } else {
                            writeln!(
                                out,
                                "{id} #{sequence} {} B  {}",
                                payload.len(),
                                preview(payload, args.preview)
                            )?;
                        }
                        if args.count.is_some_and(|c| messages >= c) {
                            out.flush()?;
                            return Ok(ExitCode::SUCCESS);
                        }
                    }
                    Ok(Observed::Gap { messages, bytes }) => {
                        progressed = true;
                        let ev = Event::Gap {
                            publisher: id,
                            messages,
                            bytes,
                        };
                        if quiet {
                            eprintln!(
                                "shmbus tail: {id}: missed {messages} message(s), {bytes} bytes"
                            );
                        } else {
                            emit(&mut out, ev, place.json)?;
                        }
                    }
                    Ok(Observed::Empty) => break,
                    Ok(Observed::Closed) => {
                        finished.push((id.clone(), true));
                        break;
                    }
                    Err(e) => {
                        if quiet {
                            eprintln!("shmbus tail: {id}: {e}");
                        } else {
                            emit(
                                &mut out,
                                Event::Damaged {
                                    publisher: id,
                                    reason: e.to_string(),
                                },
                                place.json,
                            )?;
                        }
                        finished.push((id.clone(), false));
                        break;
                    }
                }
            }
        }
        for (id, closed) in finished {
            followed.remove(&id);
            if closed && !quiet {
                emit(&mut out, Event::Closed { publisher: &id }, place.json)?;
            }
            progressed = true;
        }
        if args.exit_on_close && followed.is_empty() && !seen.is_empty() {
            out.flush()?;
            return Ok(ExitCode::SUCCESS);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            out.flush()?;
            return Ok(ExitCode::SUCCESS);
        }
        if progressed {
            idle_sleep = Duration::from_micros(20);
        } else {
            out.flush()?;
            std::thread::sleep(idle_sleep);
            idle_sleep = (idle_sleep * 2).min(MAX_IDLE_SLEEP);
        }
    }
}
