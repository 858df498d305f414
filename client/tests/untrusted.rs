//! Receiving from publishers you do not trust: copy-then-validate reads a
//! private copy, so a process with write access to the ring that changes
//! the bytes after validation cannot change what the subscriber reads. In
//! place (the default), the same scribble is visible: validation checks
//! structure once, it cannot freeze shared memory.

mod common;

use std::{os::unix::fs::FileExt, time::Duration};

use common::TempRoot;

const MARK: &str = "MARK-0123456789abcdef";
const SCRIBBLE: &str = "EVIL-0123456789abcdef";

/// Sends one string, receives it (copied or in place), scribbles over the
/// ring's bytes of it while the sample is held, and returns what the sample
/// reads afterwards.
fn read_after_scribble(distrust: bool) -> String {
    let root = TempRoot::new(if distrust { "copy" } else { "inplace" });
    let bus = root.bus();
    let mut subscriber = bus.subscriber::<String>("u").unwrap();
    if distrust {
        subscriber.distrust_publishers();
    }
    let mut publisher = bus.publisher::<String>("u").unwrap();
    publisher.send(&MARK.to_string()).unwrap();
    let sample = subscriber.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(sample.as_str(), MARK);
    // The same-user scribbler of the trust model: plain writes to the
    // publisher's data file.
    let ring = bus
        .topic_dir("u")
        .unwrap()
        .join(format!("{}.ring", publisher.id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&ring)
        .unwrap();
    let data = std::fs::read(&ring).unwrap();
    let at = data
        .windows(MARK.len())
        .position(|w| w == MARK.as_bytes())
        .expect("the message is in the ring");
    file.write_all_at(SCRIBBLE.as_bytes(), at as u64).unwrap();
    sample.as_str().to_string()
}

#[test]
fn distrusted_publishers_are_read_from_a_private_copy() {
    assert_eq!(read_after_scribble(true), MARK);
}

#[test]
fn in_place_reads_see_a_scribbler_which_is_why_copy_mode_exists() {
    assert_eq!(read_after_scribble(false), SCRIBBLE);
}
