//! File names of replica rings and the bridge's marker files, sans-IO.
//!
//! A remote publisher `P` of peer `N` is mirrored into the local topic
//! directory as `<stem>.<epoch>.ring`, where the stem is `N.P` (or hashed
//! parts when that would not be a valid name of at most 96 bytes with room
//! for the epoch), and the epoch counts the replicas made for that stream:
//! a new one after a gap or a bridge restart. Local subscribers of the topic
//! read it like any local publisher's ring.
//!
//! Beside it the bridge keeps hidden files that subscribers and sweeps
//! ignore:
//!
//! - `.<stem>.<epoch>.hold`: a hard link to the replica ring. When the
//!   bridge dies, subscribers drain the ring and remove its name; the link
//!   keeps the ring (and its exact tail, the position to resume from)
//!   until the restarted bridge has made the next epoch.
//! - `.<stem>.ended`: the remote publisher finished and everything was
//!   received; a bridge that sees the stream announced again (the sender
//!   restarted before its ring was removed) does not import it twice.
//! - `.<stem>.resume`: what is left of an expired hold: the position and
//!   sequence number the stream continues from, without the ring's memory,
//!   so a stream announced again after a long outage resumes there
//!   (learning its loss exactly from the sender's GAP) instead of restarting
//!   from the sender's oldest data.

use sha2::{Digest, Sha256};
use shmbus_bus::{validate_name, MAX_NAME_LEN};

/// Room kept in a replica name for `.<epoch>` (a `u64` in decimal).
const EPOCH_ROOM: usize = 1 + 20;
/// Longest peer name used verbatim in a hashed stem.
const MAX_PEER_PART: usize = 32;

/// The stem of the replica names of `publisher` from peer `peer`.
///
/// # Examples
///
/// ```
/// use shmbus_bridge::daemon::naming::replica_stem;
/// assert_eq!(replica_stem("base", "p-12-0"), "base.p-12-0");
/// assert!(replica_stem("base", &"x".repeat(90)).starts_with("base.h"));
/// assert!(replica_stem("bad/name", "p").starts_with('h'));
/// ```
pub fn replica_stem(peer: &str, publisher: &str) -> String {
    let plain = format!("{peer}.{publisher}");
    if plain.len() + EPOCH_ROOM <= MAX_NAME_LEN && validate_name("replica", &plain).is_ok() {
        return plain;
    }
    let peer_part = if peer.len() <= MAX_PEER_PART && validate_name("peer", peer).is_ok() {
        peer.to_owned()
    } else {
        hashed(peer)
    };
    format!("{peer_part}.{}", hashed(publisher))
}

fn hashed(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(17);
    out.push('h');
    for b in &digest[..8] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The publisher id (ring file stem) of epoch `epoch`.
pub fn replica_id(stem: &str, epoch: u64) -> String {
    format!("{stem}.{epoch}")
}

/// The hold file name of a replica id.
pub fn hold_name(replica_id: &str) -> String {
    format!(".{replica_id}.hold")
}

/// The end-marker file name of a stem.
pub fn ended_name(stem: &str) -> String {
    format!(".{stem}.ended")
}

/// The resume-marker file name of a stem.
pub fn resume_name(stem: &str) -> String {
    format!(".{stem}.resume")
}

/// The stem and epoch of a hold file name (`.<stem>.<epoch>.hold`).
///
/// # Examples
///
/// ```
/// use shmbus_bridge::daemon::naming::parse_hold;
/// assert_eq!(parse_hold(".n.p.7.hold"), Some(("n.p", 7)));
/// assert_eq!(parse_hold(".n.p.hold"), None);
/// assert_eq!(parse_hold("n.p.7.ring"), None);
/// ```
pub fn parse_hold(file_name: &str) -> Option<(&str, u64)> {
    let id = file_name.strip_prefix('.')?.strip_suffix(".hold")?;
    let (stem, digits) = id.rsplit_once('.')?;
    if stem.is_empty() || digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((stem, digits.parse().ok()?))
}

/// Suffix of the sender's export hold links (see [`export_hold_name`]).
pub const EXPORT_HOLD_EXT: &str = "xhold";

/// The 8-hex tag of a peer in export hold names: the first 4 bytes of the
/// SHA-256 of its node name (stable across restarts, no seed).
pub fn peer_tag(peer: &str) -> String {
    let digest = Sha256::digest(peer.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The sender's export hold of local ring `publisher` for peer `peer`:
/// `.<publisher>.x<peer tag>.xhold`, a hard link to the ring's data file
/// (its control file is linked at `shmbus_bus::control_path_of` of it,
/// `.<publisher>.x<peer tag>.ctl`), so the ring and its final tail outlive
/// the ring's own names until the peer has it all. The `x` keeps the
/// control link's name apart from a replica hold's (`.<stem>.<epoch>.ctl`,
/// an all-digit epoch).
///
/// # Examples
///
/// ```
/// use shmbus_bridge::daemon::naming::{export_hold_name, parse_export_hold, peer_tag};
/// let name = export_hold_name("p-1-0", "node");
/// assert_eq!(name, format!(".p-1-0.x{}.xhold", peer_tag("node")));
/// assert_eq!(parse_export_hold(&name), Some(("p-1-0", &*peer_tag("node"))));
/// ```
pub fn export_hold_name(publisher: &str, peer: &str) -> String {
    format!(".{publisher}.x{}.{EXPORT_HOLD_EXT}", peer_tag(peer))
}

/// The publisher id and peer tag of an export hold name; `None` for any
/// other file (or a publisher id that is not a valid name).
pub fn parse_export_hold(file_name: &str) -> Option<(&str, &str)> {
    let id = file_name
        .strip_prefix('.')?
        .strip_suffix(EXPORT_HOLD_EXT)?
        .strip_suffix('.')?;
    let (publisher, tag) = id.rsplit_once('.')?;
    let tag = tag.strip_prefix('x')?;
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if tag.len() != 8 || !tag.bytes().all(hex) || validate_name("publisher", publisher).is_err() {
        return None;
    }
    Some((publisher, tag))
}

/// What a file in a topic directory is, for a given stem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `<stem>.<epoch>.ring`.
    Ring(u64),
    /// `.<stem>.<epoch>.hold`.
    Hold(u64),
}

/// Classifies `file_name` for `stem`; `None` if it belongs to another
/// stream or is not a bridge file.
///
/// # Examples
///
/// ```
/// use shmbus_bridge::daemon::naming::{classify, Entry};
/// assert_eq!(classify("n.p.7.ring", "n.p"), Some(Entry::Ring(7)));
/// assert_eq!(classify(".n.p.7.hold", "n.p"), Some(Entry::Hold(7)));
/// assert_eq!(classify("n.p.7.8.ring", "n.p"), None); // stem "n.p.7"
/// ```
pub fn classify(file_name: &str, stem: &str) -> Option<Entry> {
    let epoch = |rest: &str| -> Option<u64> {
        let digits = rest.strip_prefix(stem)?.strip_prefix('.')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    };
    if let Some(rest) = file_name.strip_suffix(".ring") {
        return epoch(rest).map(Entry::Ring);
    }
    let rest = file_name.strip_prefix('.')?.strip_suffix(".hold")?;
    epoch(rest).map(Entry::Hold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_valid_names_with_room_for_the_epoch() {
        let long = "p".repeat(MAX_NAME_LEN);
        let cases = [
            ("n", "p-1-0"),
            ("node.with.dots", "label-123-4"),
            (&*"n".repeat(200), "p"),
            ("n", &*long),
            ("ünïcode", "p"),
            ("a/b", "../x"),
        ];
        for (peer, publisher) in cases {
            let stem = replica_stem(peer, publisher);
            let id = replica_id(&stem, u64::MAX);
            assert!(id.len() <= MAX_NAME_LEN, "{id}");
            validate_name("replica", &id).unwrap();
            assert_eq!(
                classify(&format!("{id}.ring"), &stem),
                Some(Entry::Ring(u64::MAX))
            );
            assert_eq!(
                classify(&hold_name(&id), &stem),
                Some(Entry::Hold(u64::MAX))
            );
            assert_eq!(parse_hold(&hold_name(&id)), Some((&*stem, u64::MAX)));
            // Deterministic, so a restarted bridge finds its files again.
            assert_eq!(stem, replica_stem(peer, publisher));
        }
        assert_ne!(replica_stem("n", &long), replica_stem("n", &long[1..]));
    }

    #[test]
    fn export_hold_names_round_trip_and_refuse_others() {
        for (publisher, peer) in [("p", "n"), ("pub.with.dots", "node-2"), ("x", "ünï")] {
            let name = export_hold_name(publisher, peer);
            assert!(name.starts_with('.'), "hidden: {name}");
            let tag = peer_tag(peer);
            assert_eq!(parse_export_hold(&name), Some((publisher, &*tag)));
            // Deterministic, so a restarted bridge finds its holds.
            assert_eq!(name, export_hold_name(publisher, peer));
            // Never taken for a ring or a receiver's hold.
            assert_eq!(
                shmbus_bus::publisher_id_of(std::path::Path::new(&name)),
                None
            );
            assert_eq!(parse_hold(&name), None);
        }
        assert_ne!(peer_tag("a"), peer_tag("b"));
        assert_eq!(
            parse_export_hold(".p.q.x0123abcd.xhold"),
            Some(("p.q", "0123abcd"))
        );
        for name in [
            "p.x0123abcd.xhold",
            ".p.x0123abcd.hold",
            ".p.0123abcd.xhold",
            ".p.x0123ABCD.xhold",
            ".p.x0123abc.xhold",
            "..x0123abcd.xhold",
            ".x0123abcd.xhold",
            ".p.x0123abcd.xhold.tmp",
            ".p.x0123abcd.ctl",
        ] {
            assert_eq!(parse_export_hold(name), None, "{name}");
        }
    }

    #[test]
    fn classify_rejects_other_files() {
        for name in [
            "n.p.ring",
            "n.p..ring",
            "n.p.x.ring",
            "n.p.1.ring.tmp",
            ".n.p.1.ring.tmp",
            "n.p.1.hold",
            ".n.p.ended",
            "m.p.1.ring",
            "n.p.99999999999999999999999.ring",
        ] {
            assert_eq!(classify(name, "n.p"), None, "{name}");
        }
    }
}
