//! `shmbus gc [--dry-run]`: remove what nobody needs.
//!
//! The removal itself is the bus's [`sweep_topic`] (rings whose publisher
//! is gone, by its lock, with no slot that still needs data; control files
//! without a data file and creators' temporary files older than 10 s), so
//! `gc` decides death exactly as publishers and subscribers do: by locks,
//! which hold across pid namespaces. On top of it, the bridge's own expiry
//! of its markers (`shmbus_bridge::daemon::replica::expire_markers`): hold
//! links whose replica writer is gone and end markers, older than
//! `--hold-age`; and of its export holds
//! (`shmbus_bridge::daemon::export_hold::expire`): rings of gone publishers
//! kept for a peer, older than `--hold-age`. `--dry-run` lists what would go by the same rules, from the
//! snapshot `ls` shows.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use shmbus_bus::{control_path_of, sweep_topic};

use crate::{
    model::{self, RingState},
    Where,
};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only say what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Bridge hold links and end markers older than this (seconds) whose
    /// bridge is gone, and export holds whose publisher is gone, are
    /// removed; default one day, as the bridge itself.
    #[arg(long, value_name = "SECS", default_value_t = 24 * 3600)]
    hold_age: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    dry_run: bool,
    removed: Vec<Removed>,
}

#[derive(Debug, Serialize)]
struct Removed {
    path: PathBuf,
    why: &'static str,
}

pub(crate) fn run(place: &Where, args: &Args) -> anyhow::Result<ExitCode> {
    let bus_dir = place.bus_dir()?;
    let hold_age = Duration::from_secs(args.hold_age);
    let mut removed = Vec::new();
    for topic in model::topic_names(&bus_dir, None)? {
        let dir = bus_dir.join(&topic);
        if args.dry_run {
            would_remove(&topic, &dir, hold_age, &mut removed)?;
        } else {
            let before = files(&dir);
            sweep_topic(&dir)?;
            // The bridge's own rule, for a bridge that is not running.
            shmbus_bridge::daemon::replica::expire_markers(&dir, hold_age);
            shmbus_bridge::daemon::export_hold::expire(&dir, hold_age);
            let after = files(&dir);
            // What went while gc ran (a subscriber's own sweep may have
            // taken some at the same moment: gone either way).
            for path in before.difference(&after) {
                removed.push(Removed {
                    why: why(path),
                    path: path.clone(),
                });
            }
        }
    }
    let report = Report {
        dry_run: args.dry_run,
        removed,
    };
    if place.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for r in &report.removed {
            println!("{verb} {} ({})", r.path.display(), r.why);
        }
        println!(
            "{} {} file(s) from bus {} at {}",
            verb,
            report.removed.len(),
            place.bus,
            bus_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The names in a topic directory gc may touch.
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.path())
                .filter(|p| why(p) != "other")
                .collect()
        })
        .unwrap_or_default()
}

fn why(path: &Path) -> &'static str {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with('.') {
        if name.ends_with(".xhold") {
            "bridge export hold of a gone publisher"
        } else if name.ends_with(".hold") {
            "bridge hold link of a gone bridge"
        } else if name.ends_with(".ended") {
            "bridge end marker"
        } else if name.ends_with(".tmp") {
            "abandoned temporary file"
        } else if name.ends_with(".ctl") {
            "control link of a bridge hold"
        } else {
            "other"
        }
    } else if name.ends_with(".ring") {
        "ring of a gone publisher nobody reads"
    } else if name.ends_with(".ctl") {
        "control file of a removed ring"
    } else {
        "other"
    }
}

/// Time since the file last changed: its ctime (a hold's changes when a
/// name of its ring is added or removed, as the bridge dates them).
fn age(path: &Path) -> Option<Duration> {
    let meta = fs::symlink_metadata(path).ok()?;
    let changed = UNIX_EPOCH + Duration::from_secs(meta.ctime().max(0) as u64);
    SystemTime::now().duration_since(changed).ok()
}

/// Time since the file was last modified (the sweep's rule for leftovers).
fn modified_age(path: &Path) -> Option<Duration> {
    let modified = fs::symlink_metadata(path).ok()?.modified().ok()?;
    SystemTime::now().duration_since(modified).ok()
}

/// What a sweep of `dir` would remove now (see the module docs).
fn would_remove(
    topic: &str,
    dir: &Path,
    max_age: Duration,
    out: &mut Vec<Removed>,
) -> anyhow::Result<()> {
    let view = model::scan_topic(topic, dir)?;
    for ring in view.rings.iter().filter(|r| r.state == RingState::Stale) {
        for path in [ring.path.clone(), control_path_of(&ring.path)] {
            if path.exists() {
                out.push(Removed {
                    why: why(&path),
                    path,
                });
            }
        }
    }
    for path in view.leftovers {
        if modified_age(&path).is_some_and(|a| a >= Duration::from_secs(10)) {
            out.push(Removed {
                why: why(&path),
                path,
            });
        }
    }
    for hold in view.holds {
        if hold.writer_gone && hold.age_s >= max_age.as_secs() {
            let ctl = control_path_of(&hold.path);
            out.push(Removed {
                why: why(&hold.path),
                path: hold.path,
            });
            if ctl.exists() {
                out.push(Removed {
                    why: why(&ctl),
                    path: ctl,
                });
            }
        }
    }
    for hold in shmbus_bridge::daemon::export_hold::expired(dir, max_age) {
        for path in [control_path_of(&hold), hold] {
            if path.exists() {
                out.push(Removed {
                    why: why(&path),
                    path,
                });
            }
        }
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.')
                && name.ends_with(".ended")
                && age(&entry.path()).is_some_and(|a| a >= max_age)
            {
                out.push(Removed {
                    why: why(&entry.path()),
                    path: entry.path(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(())
}
