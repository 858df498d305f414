//! The record format's rules, in one place: what a stamp at a position
//! means, what a record header may say, and how 64-bit sequence numbers are
//! recovered from their stored low halves. Every reader, the writer's own
//! walks, the replica writer, raw readers and observers call these.

use super::Geometry;
use crate::layout::{
    data_stamp, gap_stamp, padding_stamp, record_size, split_meta, GAP_PAYLOAD, RECORD_HEADER,
    STAMP_FLAGS,
};

/// What the stamp word at a position says about the record there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StampKind {
    /// A committed data record at this position.
    Data,
    /// A committed padding record at this position (fills to the ring's end).
    Padding,
    /// A committed gap record at this position.
    Gap,
    /// Not written yet: cleared (0) or a genuine stamp of an earlier lap.
    NotYet,
    /// A stamp of a later position (the reader was lapped) or garbage.
    Other,
}

/// Classifies the stamp word `stamp` found at position `pos`.
#[inline]
pub(crate) fn classify(stamp: u64, pos: u64) -> StampKind {
    if stamp == data_stamp(pos) {
        StampKind::Data
    } else if stamp == padding_stamp(pos) {
        StampKind::Padding
    } else if stamp == gap_stamp(pos) {
        StampKind::Gap
    } else if stamp == 0 || (stamp & !STAMP_FLAGS) < pos {
        StampKind::NotYet
    } else {
        StampKind::Other
    }
}

/// A committed record's header, checked against the ring's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Data, padding or gap.
    pub(crate) kind: StampKind,
    /// Payload length (for padding: bytes to the ring's end minus the header).
    pub(crate) len: u32,
    /// Low 32 bits of the sequence number (data: its own; gap: the first lost).
    pub(crate) seq_low: u32,
    /// Bytes the record occupies in the ring.
    pub(crate) size: u64,
}

/// Checks the header of a committed record at `pos` (stamp kind `kind`,
/// meta word `meta`): the length must fit the ring, the maximum message and,
/// for padding, end exactly at the ring's end. The error names what is wrong.
#[inline]
pub(crate) fn check_header(
    geo: &Geometry,
    pos: u64,
    kind: StampKind,
    meta: u64,
) -> Result<Header, &'static str> {
    let off = pos & geo.mask();
    let room = geo.capacity - off;
    let (len, seq_low) = split_meta(meta);
    let len64 = u64::from(len);
    let size = match kind {
        StampKind::Data => {
            if len64 > geo.max_message {
                return Err("record length exceeds the ring's maximum message");
            }
            record_size(len64)
        }
        StampKind::Padding => {
            if len64 + RECORD_HEADER != room {
                return Err("padding record does not end at the ring's end");
            }
            room
        }
        StampKind::Gap => {
            // 0: a filler with count 0; from 8: the count, then filler.
            if len64 != 0 && len64 < GAP_PAYLOAD {
                return Err("gap record length is neither 0 nor at least 8");
            }
            record_size(len64)
        }
        StampKind::NotYet | StampKind::Other => {
            return Err("record stamp does not match its position")
        }
    };
    if size > room {
        return Err("record crosses the ring's end");
    }
    Ok(Header {
        kind,
        len,
        seq_low,
        size,
    })
}

/// Whether a gap record with this header carries a count (payload length
/// at least [`GAP_PAYLOAD`]); one without is a filler with count 0.
#[inline]
pub(crate) fn gap_has_count(header: &Header) -> bool {
    u64::from(header.len) >= GAP_PAYLOAD
}

/// The sequence number after a gap record whose first lost message is
/// `first_lost` and which reports `count` lost: an error if that overflows
/// (a hostile or damaged count).
#[inline]
pub(crate) fn after_gap(first_lost: u64, count: u64) -> Result<u64, &'static str> {
    first_lost
        .checked_add(count)
        .ok_or("gap record count overflows the sequence number")
}

/// The 64-bit sequence number whose low half is `low`, nearest to `hint`
/// (the publisher's `published` counter, read near the record). Exact when
/// the true value is within 2^31 of the hint, which holds because a ring
/// never holds 2^31 records ([`crate::layout::MAX_CAPACITY`]).
#[inline]
pub(crate) fn extend_sequence(low: u32, hint: u64) -> u64 {
    let delta = low.wrapping_sub(hint as u32) as i32;
    hint.wrapping_add_signed(i64::from(delta))
}

/// Whether `pos` can be a record position: 16-aligned.
#[inline]
pub(crate) fn is_record_aligned(pos: u64) -> bool {
    pos % RECORD_HEADER == 0
}

/// Checks the publisher's `head` and `tail` as read from shared memory, in
/// this order: `tail_before`, `head`, `tail_after` (the words move while
/// they are read, so each bound is checked against a read on the right side
/// of it). All 16-aligned; `tail_before <= head + capacity` (the writer
/// never writes a ring past its head); under Block `head <= tail_after`
/// (the writer never moves `head` past its gate, at most a tail it had
/// published). Under Overwrite `head` may run ahead of the published tail by
/// records committed but not yet published (a batch), at most a ring.
#[inline]
pub(crate) fn check_span(
    geo: &Geometry,
    tail_before: u64,
    head: u64,
    tail_after: u64,
) -> Result<(), &'static str> {
    if !is_record_aligned(tail_before) || !is_record_aligned(tail_after) {
        return Err("tail is not 16-aligned");
    }
    if !is_record_aligned(head) {
        return Err("head is not 16-aligned");
    }
    let ahead = match geo.policy {
        crate::ring::Policy::Block => 0,
        crate::ring::Policy::Overwrite => geo.capacity,
    };
    if head > tail_after.saturating_add(ahead) {
        return Err("head is beyond tail");
    }
    if tail_before > head.saturating_add(geo.capacity) {
        return Err("head is more than one ring behind tail");
    }
    Ok(())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::{layout::meta_word, ring::Policy};

    fn geo() -> Geometry {
        Geometry {
            capacity: 4096,
            max_message: 1024,
            policy: Policy::Block,
            evict_after: None,
        }
    }

    #[test]
    fn stamps_are_classified_by_position() {
        assert_eq!(classify(data_stamp(4096), 4096), StampKind::Data);
        assert_eq!(classify(padding_stamp(4096), 4096), StampKind::Padding);
        assert_eq!(classify(gap_stamp(4096), 4096), StampKind::Gap);
        assert_eq!(classify(0, 4096), StampKind::NotYet);
        assert_eq!(classify(data_stamp(0), 4096), StampKind::NotYet);
        assert_eq!(classify(data_stamp(8192), 4096), StampKind::Other);
        assert_eq!(classify(data_stamp(4096) | 0x8, 4096), StampKind::Other);
    }

    #[test]
    fn headers_are_bounded() {
        let g = geo();
        let h = check_header(&g, 0, StampKind::Data, meta_word(100, 7)).unwrap();
        assert_eq!((h.len, h.seq_low, h.size), (100, 7, 128));
        assert!(check_header(&g, 0, StampKind::Data, meta_word(1025, 0)).is_err());
        // A data record that would cross the end.
        assert!(check_header(&g, 4096 - 32, StampKind::Data, meta_word(100, 0)).is_err());
        assert!(check_header(&g, 4096 - 32, StampKind::Padding, meta_word(16, 0)).is_ok());
        assert!(check_header(&g, 4096 - 32, StampKind::Padding, meta_word(32, 0)).is_err());
        assert!(check_header(&g, 0, StampKind::Gap, meta_word(8, 0)).is_ok());
        // Gap records cover byte ranges: 0 (a filler) or 8 and more.
        let filler = check_header(&g, 0, StampKind::Gap, meta_word(0, 0)).unwrap();
        assert_eq!((filler.size, gap_has_count(&filler)), (16, false));
        let long = check_header(&g, 0, StampKind::Gap, meta_word(2000, 0)).unwrap();
        assert_eq!((long.size, gap_has_count(&long)), (2016, true));
        // Longer than the maximum message is fine for a gap, not past the end.
        assert!(check_header(&g, 0, StampKind::Gap, meta_word(4080, 0)).is_ok());
        assert!(check_header(&g, 0, StampKind::Gap, meta_word(4081, 0)).is_err());
        assert!(check_header(&g, 16, StampKind::Gap, meta_word(4080, 0)).is_err());
        assert!(check_header(&g, 0, StampKind::Gap, meta_word(u32::MAX, 0)).is_err());
        for bad in [1, 4, 7] {
            assert!(check_header(&g, 0, StampKind::Gap, meta_word(bad, 0)).is_err());
        }
        assert_eq!(after_gap(5, 7), Ok(12));
        assert!(after_gap(u64::MAX - 1, 2).is_err());
    }

    #[test]
    fn sequences_extend_across_the_32_bit_wrap() {
        assert_eq!(extend_sequence(5, 5), 5);
        assert_eq!(extend_sequence(3, 10), 3);
        let base = 7u64 << 32;
        assert_eq!(extend_sequence(u32::MAX, base + 2), base - 1);
        assert_eq!(extend_sequence(2, base - 1), base + 2);
        assert_eq!(extend_sequence(100, (1 << 40) + 90), (1 << 40) + 100);
        // Exact up to 2^31 away from the hint.
        let far = base + (1 << 31) - 1;
        assert_eq!(extend_sequence(far as u32, base), far);
    }

    #[test]
    fn spans_are_checked() {
        let g = geo();
        // (tail before, head, tail after)
        assert!(check_span(&g, 4096, 0, 4096).is_ok());
        assert!(check_span(&g, 4096, 0, 4097).is_err());
        assert!(check_span(&g, 4096, 8, 4096).is_err());
        assert!(check_span(&g, 0, 4096, 0).is_err(), "head beyond tail");
        assert!(check_span(&g, 8192, 0, 8192).is_err(), "a ring apart");
        // The tail moved on between the reads: fine.
        assert!(check_span(&g, 4096, 0, 1 << 20).is_ok());
        let over = Geometry {
            policy: Policy::Overwrite,
            ..g
        };
        assert!(
            check_span(&over, 0, 4096, 0).is_ok(),
            "a batch not yet published"
        );
        assert!(check_span(&over, 0, 8192, 0).is_err());
    }
}
