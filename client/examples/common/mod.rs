//! Shared by the examples: the README's `Pose` message and a tiny flag
//! parser (`--name value`), so each example stays short.
//!
//! Every example works on the bus named by `--bus NAME` (default
//! `default`) under the root the library picks: `$SHMBUS_ROOT` if set,
//! else `/dev/shm/shmbus-<uid>`.

// Each example uses a part of this module.
#![allow(dead_code)]

use std::str::FromStr;

use rkyv::{Archive, Deserialize, Serialize};

/// The README's message. In a real system it lives in a message crate that
/// every service depends on: one definition, so one type name and layout on
/// the bus.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Pose {
    pub(crate) frame: u64,
    pub(crate) xyz: [f32; 3],
    pub(crate) label: String,
}

impl Pose {
    /// The pose of frame `n`: a point going round a circle.
    pub(crate) fn at(frame: u64) -> Self {
        let t = frame as f32 * 0.1;
        Self {
            frame,
            xyz: [t.cos(), t.sin(), 0.5],
            label: "base".into(),
        }
    }
}

/// The value of `--name VALUE`, if given; exits with a message if VALUE is
/// missing or does not parse.
pub(crate) fn arg<T: FromStr>(name: &str) -> Option<T> {
    let flag = format!("--{name}");
    let mut args = std::env::args().skip_while(|a| *a != flag);
    args.next()?;
    match args.next().map(|v| v.parse()) {
        Some(Ok(value)) => Some(value),
        _ => {
            eprintln!("error: {flag} needs a value of the right kind");
            std::process::exit(2);
        }
    }
}

/// Whether the flag `--name` is present.
pub(crate) fn has(name: &str) -> bool {
    let flag = format!("--{name}");
    std::env::args().any(|a| a == flag)
}

/// `--bus NAME`, default `default`.
pub(crate) fn bus_name() -> String {
    arg("bus").unwrap_or_else(|| "default".into())
}
