//! The reader calls of `bus_reader` and the properties checked after each.

use shmbus_bus::{Error, RawChunk, RawReader, ReadEvent, RingReader, StartAt};
use shmbus_fuzz::{
    input::Input,
    layout_ref::{self as spec, Rec},
};

use super::{
    step, step_past_gaps, Exec, Op, Rig, Step, CAPACITY, HEAD, OPS, PUBLISHED, RING, TAIL,
};

/// Longest program run per input (keeps one exec short).
const MAX_OPS: usize = 256;

/// Runs one input.
///
/// Readers left healthy by the previous input are kept (an input that
/// fails may then need the inputs before it: `--replay` them in order);
/// the ring then starts where they are, with the sequence number they
/// expect as far as known, instead of at the input's base position.
pub(crate) fn run(rig: &mut Rig, bytes: &[u8]) {
    let mut input = Input::new(bytes);
    let mut p0 = u64::from(input.u32()) << 4;
    let mut seq0 = input.u64();
    let kept = rig.kept.take();
    if let Some((r, _)) = &kept {
        p0 = r.position();
        seq0 = rig.kept_seq;
    }
    let mut e = Exec::new(rig, p0, seq0, kept);
    // What the last `probe` found (a later `try_read` hands it out).
    let mut probed: Option<Step> = None;
    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = OPS[usize::from(input.u8()) % OPS.len()];
        if trace() {
            eprintln!(
                "{op:?} (reader at {:?})",
                e.reader
                    .as_ref()
                    .map(|r| r.as_ref().map(RingReader::position))
            );
        }
        if matches!(op, Op::TryRead | Op::Drain | Op::Probe | Op::NextChunk) {
            e.flush(); // the reader sees every write made so far
        }
        match op {
            Op::Data => e.append_data(&mut input),
            Op::Gap => e.append_gap(&mut input),
            Op::Pad => e.pad(),
            Op::Publish => e.publish(),
            Op::Scribble => e.scribble(&mut input),
            Op::ScribbleControl => e.scribble_control(&mut input),
            Op::TryRead => try_read(&mut e, probed.take()),
            Op::Drain => {
                probed = None;
                let max = usize::from(input.u8() % 8) + 1;
                drain(&mut e, max);
            }
            Op::Probe => probed = probe(&mut e, probed),
            Op::NextChunk => next_chunk(&mut e, &mut input),
        }
    }
    let reader = e.reader.take();
    let raw = e.raw.take();
    let healthy = !e.poisoned.get() && !e.ctl_touched;
    let next_seq = e.next_seq.get();
    drop(e);
    if let (true, Some(Ok(mut r))) = (healthy, reader) {
        // Forget a probe's find or a pending gap: the next ring differs.
        r.take_gap();
        if r.drain(0, |_| {}).is_ok() {
            rig.kept = Some((r, raw.and_then(Result::ok).map(|(raw, _)| raw)));
            rig.kept_seq = next_seq;
        }
    }
}

/// `SHMBUS_FUZZ_TRACE=1`: print each operation (for `--replay`).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("SHMBUS_FUZZ_TRACE").is_some())
}

/// The exec's subscriber, joined on first use; `None` if the join was
/// refused (for a reason the spec agrees with).
fn reader(e: &mut Exec<'_>) -> Option<RingReader> {
    match e.reader.take() {
        Some(Ok(r)) => Some(r),
        Some(Err(())) => {
            e.reader = Some(Err(()));
            None
        }
        None => match RingReader::open(&e.rig.path, StartAt::Oldest) {
            Ok(r) => {
                let (tail, head, limit) = (e.word(TAIL), e.word(HEAD), e.word(super::LIMIT));
                // Oldest: the head, or the writer's limit if that is past it
                // (the writer may be overwriting below its limit).
                assert_eq!(
                    r.position(),
                    head.min(tail).max(limit),
                    "where Oldest starts"
                );
                Some(r)
            }
            Err(err) => {
                join_refused(e, &err);
                e.reader = Some(Err(()));
                None
            }
        },
    }
}

/// A join may be refused for a span the spec refuses, or for want of a
/// slot after foreign writes to the control file.
fn join_refused(e: &Exec<'_>, err: &Error) {
    e.poisoned.set(true);
    let (tail, head) = (e.word(TAIL), e.word(HEAD));
    match err {
        Error::Corrupt { what, .. } => assert!(
            spec::check_span(CAPACITY, false, tail, head, tail).is_err()
                || spec::check_limit(e.word(super::LIMIT), tail).is_err(),
            "join refused a span and limit the spec accepts ({tail}, {head}): {what}"
        ),
        Error::NoFreeSlot(_) => assert!(e.ctl_touched, "no free slot in an untouched table"),
        other => panic!("join refused with {other:?}"),
    }
}

/// A refusal at the walk from `pos` must have a reason the spec gives.
fn refused(e: &Exec<'_>, pos: u64, err: &Error) {
    e.poisoned.set(true);
    assert!(!err.to_string().is_empty(), "a refusal names a reason");
    let (tail, head) = (e.word(TAIL), e.word(HEAD));
    let what = match err {
        Error::Corrupt { what, .. } => what.as_str(),
        Error::SlotLost | Error::Evicted => {
            assert!(
                e.ctl_touched || head > pos,
                "slot lost with no foreign write and no lap (head {head}, position {pos})"
            );
            return;
        }
        other => panic!("read refused with {other:?}"),
    };
    let state = spec::u32_at(&e.file, super::WRITER_STATE);
    let reasons = [
        matches!(step_past_gaps(e.data(), pos), Step::Invalid { .. }),
        matches!(step_past_gaps(e.data(), pos), Step::NotYet { pos: p } if p < tail),
        spec::check_span(CAPACITY, false, tail, head, tail).is_err(),
        // Neither open nor closed; or closed past a grace period while the
        // publisher holds its lock (a kept reader may see it again later).
        state != 1 && what.contains("writer_state"),
        // Sequence numbers need the publisher's counter to extend; the
        // spec (§5) makes them consecutive, and the bus refuses numbers
        // that go backwards or overflow 64 bits.
        what.contains("sequence"),
    ];
    assert!(
        reasons.iter().any(|r| *r),
        "bus refused where the spec finds {:?} (tail {tail}, head {head}, state {state}): {what}",
        step_past_gaps(e.data(), pos)
    );
}

/// A message at the walk from `before` (or the record a probe found).
fn message(e: &Exec<'_>, before: u64, probed: Option<Step>, pos: u64, payload: &[u8], seq: u64) {
    let (want_pos, len, seq_low) = match probed.unwrap_or_else(|| step_past_gaps(e.data(), before))
    {
        Step::Data {
            pos, len, seq_low, ..
        } => (pos, len, seq_low),
        other => panic!("message at {pos} where the spec's walk from {before} finds {other:?}"),
    };
    assert_eq!(pos, want_pos, "message position");
    e.next_seq.set(seq.wrapping_add(1));
    assert_eq!(seq as u32, seq_low, "message sequence half");
    assert_eq!(payload.len(), len as usize, "message length");
    // The bytes are read now: compare with the ring as it is now.
    let off = pos % CAPACITY + 16;
    assert!(
        off + u64::from(len) <= CAPACITY,
        "message crosses the ring's end"
    );
    assert_eq!(
        payload,
        &e.data()[off as usize..(off + u64::from(len)) as usize]
    );
}

fn try_read(e: &mut Exec<'_>, probed: Option<Step>) {
    let Some(mut r) = reader(e) else { return };
    let before = r.position();
    let empty_now = {
        let event = r.try_read();
        if trace() {
            eprintln!("  try_read from {before}: {event:?}");
        }
        match event {
            Ok(ReadEvent::Message(m)) => {
                let probed = probed.filter(|s| matches!(s, Step::Data { .. }));
                message(e, before, probed, m.position(), m.payload(), m.sequence());
                false
            }
            Ok(ReadEvent::Gap { messages, bytes }) => {
                assert_eq!(bytes, 0, "a tethered reader is never lapped");
                assert!(messages > 0, "a gap reports something");
                if probed.is_none() {
                    let s = step(e.data(), before);
                    assert!(
                        matches!(s, Step::Gap { .. } | Step::Data { .. }),
                        "gap where the spec finds {s:?}"
                    );
                }
                false
            }
            Ok(ReadEvent::Empty) => true,
            Ok(ReadEvent::Closed) => panic!("Closed while the publisher is alive"),
            Err(err) => {
                refused(e, before, &err);
                false
            }
        }
    };
    if empty_now {
        empty(e, before, r.position());
    }
    e.reader = Some(Ok(r));
}

/// `Empty`: the walk reaches a "not yet" stamp, where the reader now is.
fn empty(e: &Exec<'_>, before: u64, after: u64) {
    match step_past_gaps(e.data(), before) {
        Step::NotYet { pos } => assert_eq!(after, pos, "an empty reader waits at the walk's end"),
        other => panic!("Empty where the spec's walk from {before} finds {other:?}"),
    }
}

fn drain(e: &mut Exec<'_>, max: usize) {
    let Some(mut r) = reader(e) else { return };
    let before = r.position();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let result = r.drain(max, |p| got.push(p.to_vec()));
    // Each payload is the next data record of the walk.
    let mut pos = before;
    for payload in &got {
        match step_past_gaps(e.data(), pos) {
            Step::Data {
                pos: p, len, size, ..
            } => {
                assert_eq!(
                    payload.as_slice(),
                    RING.payload(e.data(), p, len),
                    "drained bytes"
                );
                pos = p + size;
            }
            other => panic!("drained a message where the spec finds {other:?}"),
        }
    }
    match result {
        Ok(d) => {
            assert_eq!(d.messages, got.len(), "drained count");
            assert_eq!(d.lost_bytes, 0, "a tethered reader is never lapped");
            assert!(!d.closed, "closed while the publisher is alive");
            if d.messages < max {
                empty(e, pos, r.position());
            }
        }
        Err(err) => refused(e, pos, &err),
    }
    e.reader = Some(Ok(r));
}

/// `probe`: true when a message or gap is next, false when the walk
/// reaches "not yet". Returns what it found, for the next `try_read`.
fn probe(e: &mut Exec<'_>, pending: Option<Step>) -> Option<Step> {
    let mut r = reader(e)?;
    let before = r.position();
    if pending.is_some() {
        // An earlier probe's find stays found until a read takes it.
        assert!(matches!(r.probe(), Ok(true)), "a probe's find stays found");
        e.reader = Some(Ok(r));
        return pending;
    }
    let found = match r.probe() {
        Ok(true) => {
            let s = step_past_gaps(e.data(), before);
            let first = step(e.data(), before);
            assert!(
                matches!(s, Step::Data { .. })
                    || matches!(first, Step::Gap { .. } | Step::Data { .. }),
                "probe found news where the spec finds {first:?}"
            );
            // The record it keeps for the next read is the walk's first
            // data record (gap records reporting nothing skipped).
            Some(if matches!(s, Step::Data { .. }) {
                s
            } else {
                first
            })
        }
        Ok(false) => {
            empty(e, before, r.position());
            None
        }
        Err(err) => {
            refused(e, before, &err);
            None
        }
    };
    e.reader = Some(Ok(r));
    found
}

/// The chunk the spec computes for `next_chunk(start, max_len)`.
fn expected_chunk(e: &Exec<'_>, start: u64, max_len: u64) -> Result<RawChunk, &'static str> {
    let (tail, head) = (e.word(TAIL), e.word(HEAD));
    spec::check_span(CAPACITY, false, tail, head, tail).map_err(|_| "corrupt")?;
    if !start.is_multiple_of(16) || start > tail {
        return Err("invalid start");
    }
    if start == tail {
        return Ok(RawChunk::Empty);
    }
    if head > start {
        return Ok(RawChunk::Lapped { head });
    }
    let (mut pos, mut records) = (start, 0u32);
    // The first numbered record's sequence half, else the first padding's.
    let mut first: Option<(u32, bool)> = None;
    while pos < tail {
        let (size, low, numbered, data) = match RING.record(e.data(), pos) {
            Rec::Data { seq_low, size, .. } => (size, seq_low, true, true),
            Rec::Gap { seq_low, size, .. } => (size, seq_low, true, false),
            Rec::Padding { size, seq_low } => (size, seq_low, false, false),
            Rec::NotYet | Rec::Invalid(_) => return Err("corrupt"),
        };
        let over = pos + size - start > max_len;
        if over && pos > start {
            break;
        }
        if first.is_none_or(|(_, n)| !n && numbered) {
            first = Some((low, numbered));
        }
        records += u32::from(data);
        pos += size;
        if over {
            break;
        }
    }
    if pos > tail {
        return Err("corrupt");
    }
    let hint = e.word(PUBLISHED);
    Ok(RawChunk::Records {
        start,
        end: pos,
        records,
        first_seq: first.map_or(hint, |(low, _)| spec::extend_sequence(low, hint)),
    })
}

fn next_chunk(e: &mut Exec<'_>, input: &mut Input<'_>) {
    let (raw, cursor) = match e.raw.take() {
        Some(Ok(raw)) => raw,
        Some(Err(())) => {
            e.raw = Some(Err(()));
            return;
        }
        None => match RawReader::open(&e.rig.path, StartAt::Oldest, true) {
            Ok(raw) => {
                let at = raw.start_position();
                (raw, at)
            }
            Err(err) => {
                join_refused(e, &err);
                e.raw = Some(Err(()));
                return;
            }
        },
    };
    let pick = input.u8();
    let start = match pick {
        0..=127 => cursor,
        128..=191 => cursor.wrapping_add_signed(i64::from(pick as i8) * 16),
        _ => input.u64(),
    };
    let max_len = match input.u8() % 4 {
        0 => 16,
        1 => u64::from(input.u16()),
        2 => CAPACITY,
        _ => u64::MAX,
    };
    let got = raw.next_chunk(start, max_len);
    let mut cursor = cursor;
    match (&got, expected_chunk(e, start, max_len)) {
        (Ok(chunk), Ok(want)) => {
            assert_eq!(*chunk, want, "next_chunk({start}, {max_len})");
            if let RawChunk::Records { end, .. } = chunk {
                cursor = *end;
            }
        }
        (Err(Error::Corrupt { what, .. }), Err("corrupt")) => assert!(!what.is_empty()),
        (Err(Error::InvalidConfig(what)), Err("invalid start")) => assert!(!what.is_empty()),
        (got, want) => panic!("next_chunk({start}, {max_len}): bus {got:?}, spec {want:?}"),
    }
    e.raw = Some(Ok((raw, cursor)));
}
