//! Logging: the daemon's events go through `tracing`, written to standard
//! error by `tracing-subscriber`'s fmt layer, one line per event:
//! `<RFC 3339 UTC time> <LEVEL> <module>: <message>`.
//!
//! Under systemd (standard error connected to the journal, which systemd
//! announces with `JOURNAL_STREAM`) the timestamp is left out: the journal
//! stamps every line itself. The filter is `RUST_LOG` when that is set
//! (e.g. `RUST_LOG=info,shmbus_bridge::daemon::conn=debug`), otherwise the
//! configured `log_level`.
//!
//! The rest of the crate logs with this module's macros (`log::info!`,
//! `log::warning!`, `log::error!`, `log::debug!`), which take `format!`
//! arguments. Every message is passed through [`sanitize`] first: strings
//! that came from a peer (names, ERROR texts, topic names) cannot start a
//! new log line or send terminal escapes, whatever the call site forgot. The
//! text is only formatted when its level is enabled.

use std::fmt;

use tracing_subscriber::{filter::LevelFilter, EnvFilter};

use crate::config::LogLevel;

/// The `tracing` level of a configured [`LogLevel`].
fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    }
}

/// Installs the process-wide subscriber: `RUST_LOG` if set, else `level`.
/// `node` names this bridge in the first line (journald already says which
/// unit a line is from, so it is not repeated on every line). A second call
/// changes nothing (the first subscriber stays).
pub fn init(level: LogLevel, node: &str) {
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let mut bad_rust_log = None;
    let filter = match &rust_log {
        Some(directives) => EnvFilter::try_new(directives).unwrap_or_else(|e| {
            bad_rust_log = Some(e.to_string());
            EnvFilter::default().add_directive(level_filter(level).into())
        }),
        None => EnvFilter::default().add_directive(level_filter(level).into()),
    };
    let journald = stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(true)
        .with_env_filter(filter);
    let installed = if journald {
        tracing::subscriber::set_global_default(builder.without_time().finish()).is_ok()
    } else {
        tracing::subscriber::set_global_default(builder.finish()).is_ok()
    };
    if installed {
        let filter = rust_log.as_deref().unwrap_or("log_level");
        info!("node {node}: logging at {level:?} (filter: {filter})");
        if let Some(e) = bad_rust_log {
            warning!("RUST_LOG ignored, using log_level {level:?}: {e}");
        }
    }
}

/// Whether standard error is the journal: systemd sets `JOURNAL_STREAM`
/// to the `device:inode` of the stream it connected, and the variable is
/// only believed if standard error is still that stream (a child that
/// inherited the variable but writes elsewhere keeps its timestamps).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Whether lines of `level` are written (by the installed filter).
pub fn enabled(level: LogLevel) -> bool {
    match level {
        LogLevel::Error => tracing::enabled!(tracing::Level::ERROR),
        LogLevel::Warn => tracing::enabled!(tracing::Level::WARN),
        LogLevel::Info => tracing::enabled!(tracing::Level::INFO),
        LogLevel::Debug => tracing::enabled!(tracing::Level::DEBUG),
        LogLevel::Trace => tracing::enabled!(tracing::Level::TRACE),
    }
}

/// Writes one event of `level` (for callers outside this crate, such as
/// the daemon binary, that cannot use the crate's macros).
pub fn write(level: LogLevel, args: fmt::Arguments<'_>) {
    match level {
        LogLevel::Error => error!("{args}"),
        LogLevel::Warn => warning!("{args}"),
        LogLevel::Info => info!("{args}"),
        LogLevel::Debug => debug!("{args}"),
        LogLevel::Trace => {
            tracing::trace!("{}", sanitize(&args.to_string()));
        }
    }
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

// The macros expand to a `tracing` event at the call site, so the line's
// target is the calling module; the message is formatted (and sanitized)
// only if the event is enabled.
macro_rules! error {
    ($($t:tt)*) => { ::tracing::error!("{}", $crate::log::sanitize(&::std::format!($($t)*))) };
}
macro_rules! warning {
    ($($t:tt)*) => { ::tracing::warn!("{}", $crate::log::sanitize(&::std::format!($($t)*))) };
}
macro_rules! info {
    ($($t:tt)*) => { ::tracing::info!("{}", $crate::log::sanitize(&::std::format!($($t)*))) };
}
macro_rules! debug {
    ($($t:tt)*) => { ::tracing::debug!("{}", $crate::log::sanitize(&::std::format!($($t)*))) };
}
pub(crate) use {debug, error, info, warning};
