//! A minimal logger: one line per event on standard error,
//! `<unix seconds.millis> <LEVEL> <node>: <message>`, filtered by level.
//!
//! The daemon logs little on the data path (per connection, per stream
//! event), so a lock around `stderr` is all it needs.
//!
//! Every line is passed through [`sanitize`] before it is written: strings
//! that came from a peer (names, ERROR texts, topic names) cannot start a
//! new log line or send terminal escapes, whatever the call site forgot.

use std::{
    fmt,
    io::Write,
    sync::{
        atomic::{AtomicU8, Ordering},
        OnceLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use crate::config::LogLevel;

static LEVEL: AtomicU8 = AtomicU8::new(rank(LogLevel::Info));
static NODE: OnceLock<String> = OnceLock::new();

const fn rank(level: LogLevel) -> u8 {
    match level {
        LogLevel::Error => 0,
        LogLevel::Warn => 1,
        LogLevel::Info => 2,
        LogLevel::Debug => 3,
        LogLevel::Trace => 4,
    }
}

/// Sets the level and the node name shown on every line (the name only the
/// first time).
pub fn init(level: LogLevel, node: &str) {
    // Relaxed: an independent setting; a thread seeing the old level for a
    // moment logs one line more or less.
    LEVEL.store(rank(level), Ordering::Relaxed);
    let _ = NODE.set(node.to_owned());
}

/// Whether lines of `level` are written.
pub fn enabled(level: LogLevel) -> bool {
    // Relaxed: see `init`.
    rank(level) <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one line if `level` is enabled.
pub fn write(level: LogLevel, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let name = match level {
        LogLevel::Error => "ERROR",
        LogLevel::Warn => "WARN",
        LogLevel::Info => "INFO",
        LogLevel::Debug => "DEBUG",
        LogLevel::Trace => "TRACE",
    };
    let node = NODE.get().map_or("shmbus-bridge", String::as_str);
    let text = sanitize(&args.to_string());
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{}.{:03} {name} {node}: {text}",
        now.as_secs(),
        now.subsec_millis()
    );
}

/// Longest sanitized string, in bytes; longer text is cut with `...`.
pub const MAX_SANITIZED_LEN: usize = 4096;

/// `s` with every control character (newlines, escapes, DEL, C1 controls)
/// and every Unicode format/bidi character written as `\u{..}` escapes,
/// cut to [`MAX_SANITIZED_LEN`] bytes.
///
/// # Examples
///
/// ```
/// use shmbus_bridge::log::sanitize;
/// assert_eq!(sanitize("a\nb\x1b[31m"), "a\\u{a}b\\u{1b}[31m");
/// ```
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_SANITIZED_LEN));
    for c in s.chars() {
        if out.len() >= MAX_SANITIZED_LEN {
            out.push_str("...");
            break;
        }
        let bidi = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}');
        if c.is_control() || bidi {
            use std::fmt::Write as _;
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

macro_rules! error {
    ($($t:tt)*) => { $crate::log::write($crate::config::LogLevel::Error, format_args!($($t)*)) };
}
macro_rules! warning {
    ($($t:tt)*) => { $crate::log::write($crate::config::LogLevel::Warn, format_args!($($t)*)) };
}
macro_rules! info {
    ($($t:tt)*) => { $crate::log::write($crate::config::LogLevel::Info, format_args!($($t)*)) };
}
macro_rules! debug {
    ($($t:tt)*) => { $crate::log::write($crate::config::LogLevel::Debug, format_args!($($t)*)) };
}
pub(crate) use {debug, error, info, warning};
