//! `shmbus stat [PATTERN]`: a live view of the bus, refreshed every second:
//! per publisher ring, messages/s, bytes/s, the slowest subscriber's lag,
//! how full the ring is and how often the publisher found it full.
//!
//! On a terminal it redraws in place (like `top`) and exits on `q` or
//! Ctrl-C; otherwise it prints plain lines, one per ring per interval.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{IsTerminal, Write},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::{
    model,
    text::{bytes, count, Table},
    Where,
};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Topics to show: a glob (`*`, `?`); all by default.
    pattern: Option<String>,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Stop after this many refreshes.
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Row {
    topic: String,
    publisher_id: String,
    state: &'static str,
    messages_per_s: f64,
    bytes_per_s: f64,
    /// Largest lag of a live subscriber, bytes and messages.
    max_lag_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_lag_messages: Option<u64>,
    subscribers: usize,
    /// Share of the ring published and not yet released (0..1).
    fill: f64,
    /// Sends per second that found the ring full.
    full_per_s: f64,
    /// Share of the interval the publisher spent waiting for space (0..1).
    blocked: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct Frame {
    unix_ms: u128,
    rows: Vec<Row>,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// The terminal in non-canonical, no-echo mode while alive (so `q` is read
/// at once), restored on drop.
struct RawTerminal(libc::termios);

impl RawTerminal {
    fn enter() -> Option<Self> {
        // SAFETY: an all-zero termios is a valid value to be overwritten.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 and a writable termios.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 0;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: as above.
        (unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) } == 0).then_some(Self(saved))
    }

    /// Whether `q` was typed.
    fn quit_pressed(&self) -> bool {
        let mut buf = [0u8; 16];
        // SAFETY: reads into a local buffer; non-blocking by VMIN/VTIME = 0.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        n > 0 && buf[..n as usize].iter().any(|&b| b == b'q' || b == b'Q')
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enter`.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.0) };
    }
}

pub(crate) fn run(place: &Where, args: &Args) -> anyhow::Result<ExitCode> {
    place.bus_dir()?;
    let interval = Duration::from_secs_f64(args.interval.max(0.05));
    let interactive = std::io::stdout().is_terminal() && !place.json;
    let terminal = if interactive && std::io::stdin().is_terminal() {
        RawTerminal::enter()
    } else {
        None
    };
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    if interactive {
        print!(
            "\x1b[H\x1b[2Jshmbus stat: measuring for {:.1} s…",
            interval.as_secs_f64()
        );
        std::io::stdout().flush()?;
    }
    // (published, tail, full events, blocked ns, when) per (topic, publisher).
    type Counters = (u64, u64, u64, u64, Instant);
    let mut prev: HashMap<(String, String), Counters> = HashMap::new();
    let mut frames = 0u64;
    let mut baseline_taken = false;
    let stdout = std::io::stdout();
    loop {
        let view = model::scan(&place.root(), &place.bus, args.pattern.as_deref())?;
        let now = Instant::now();
        let mut rows = Vec::new();
        for topic in &view.topics {
            for ring in &topic.rings {
                let key = (topic.topic.clone(), ring.publisher_id.clone());
                let live_subs: Vec<_> = ring.subscribers.iter().filter(|s| s.alive).collect();
                let mut row = Row {
                    topic: topic.topic.clone(),
                    publisher_id: ring.publisher_id.clone(),
                    state: ring.state.as_str(),
                    messages_per_s: 0.0,
                    bytes_per_s: 0.0,
                    max_lag_bytes: live_subs.iter().map(|s| s.lag_bytes).max().unwrap_or(0),
                    max_lag_messages: live_subs.iter().filter_map(|s| s.lag_messages).max(),
                    subscribers: live_subs.len(),
                    fill: 0.0,
                    full_per_s: 0.0,
                    blocked: 0.0,
                    reason: ring.reason.clone(),
                };
                if let Some(p) = &ring.publisher {
                    row.fill = p.fill_bytes as f64 / p.capacity as f64;
                    if let Some((published, tail, full, blocked, at)) = prev.get(&key) {
                        let dt = now.duration_since(*at).as_secs_f64().max(1e-9);
                        row.messages_per_s = p.published.saturating_sub(*published) as f64 / dt;
                        row.bytes_per_s = p.tail.saturating_sub(*tail) as f64 / dt;
                        row.full_per_s = p.full_events.saturating_sub(*full) as f64 / dt;
                        row.blocked =
                            (p.blocked_ns.saturating_sub(*blocked) as f64 / 1e9 / dt).min(1.0);
                    }
                    prev.insert(key, (p.published, p.tail, p.full_events, p.blocked_ns, now));
                }
                rows.push(row);
            }
        }
        if !baseline_taken {
            // The first listing is the baseline of the rates: nothing to show yet.
            baseline_taken = true;
        } else {
            let mut out = stdout.lock();
            if place.json {
                let frame = Frame {
                    unix_ms: SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis()),
                    rows,
                };
                serde_json::to_writer(&mut out, &frame)?;
                writeln!(out)?;
            } else if interactive {
                let mut screen = String::from("\x1b[H\x1b[2J");
                let _ = writeln!(
                    screen,
                    "shmbus stat — bus {} at {} — every {:.1} s — q or Ctrl-C quits",
                    place.bus,
                    view.path.display(),
                    interval.as_secs_f64()
                );
                screen.push_str(&table(&rows).render(""));
                out.write_all(screen.as_bytes())?;
            } else {
                for r in &rows {
                    writeln!(
                    out,
                    "{} {}/{} {} msgs/s={} bytes/s={} subs={} max_lag={} max_lag_msgs={} fill={:.1}% full/s={:.1} blocked={:.1}%",
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    r.topic,
                    r.publisher_id,
                    r.state,
                    count(r.messages_per_s),
                    bytes(r.bytes_per_s as u64),
                    r.subscribers,
                    bytes(r.max_lag_bytes),
                    r.max_lag_messages.map_or("?".into(), |m| m.to_string()),
                    r.fill * 100.0,
                    r.full_per_s,
                    r.blocked * 100.0
                )?;
                }
            }
            out.flush()?;
            drop(out);
            frames += 1;
            if args.count.is_some_and(|c| frames >= c) {
                break;
            }
        }
        let until = Instant::now() + interval;
        while Instant::now() < until {
            if STOP.load(Ordering::Relaxed) || terminal.as_ref().is_some_and(|t| t.quit_pressed()) {
                drop(terminal);
                if interactive {
                    println!();
                }
                return Ok(ExitCode::SUCCESS);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn table(rows: &[Row]) -> Table {
    let mut t = Table::new(&[
        "TOPIC",
        "PUBLISHER",
        "STATE",
        "MSGS/S",
        "BYTES/S",
        "SUBS",
        "MAX LAG",
        "LAG MSGS",
        "FILL",
        "FULL/S",
        "BLOCKED",
    ]);
    for r in rows {
        t.row(vec![
            r.topic.clone(),
            r.publisher_id.clone(),
            r.state.into(),
            count(r.messages_per_s),
            format!("{}/s", bytes(r.bytes_per_s as u64)),
            r.subscribers.to_string(),
            bytes(r.max_lag_bytes),
            r.max_lag_messages.map_or("?".into(), |m| m.to_string()),
            format!("{:.0}%", r.fill * 100.0),
            format!("{:.1}", r.full_per_s),
            format!("{:.0}%", r.blocked * 100.0),
        ]);
    }
    t
}
