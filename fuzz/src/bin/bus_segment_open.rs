//! Target `bus_segment_open`: a ring's two files with arbitrary header,
//! producer-page, control-header and slot bytes (patched over a real ring
//! made by the bus), opened the normal way (`RingReader::open_waiting`).
//!
//! Properties: the open succeeds exactly when the reference decoder
//! (`docs/layout.md` §2-§4) accepts both headers, with the values it
//! decodes; a refusal is the typed error of the first check the reference
//! says fails (its reason names the field); only then may joining a slot
//! refuse (a span or limit the reference also refuses, or no claimable slot). An
//! opened reader's first read hands out only a record the reference calls
//! valid at that position, with the same bytes.
//!
//! Input: `mode` (1 byte), two u16 sizes, then patches in this order:
//! data header bytes 0..368, producer words 4096..4128, control bytes
//! 0..768 (a short input patches less).

use std::{path::Path, time::Duration};

use shmbus_bus::{Error, Policy, ReadEvent, RingConfig, RingReader, RingWriter, StartAt};
use shmbus_fuzz::{
    input::Input,
    layout_ref::{self as spec, OpenRefusal},
    scratch::{write_file, Scratch},
};

/// What one exec starts from: a real ring's two files.
struct Template {
    data: Vec<u8>,
    ctl: Vec<u8>,
}

fn template(dir: &Scratch) -> Template {
    let path = dir.path("template.ring");
    let config = RingConfig {
        capacity: 4096,
        max_message: 1024,
        slots: 4,
        type_name: "fuzz::Template".into(),
        ..RingConfig::default()
    };
    let mut writer = RingWriter::create(&path, &config).expect("create the template ring");
    writer
        .write_batch(
            [&b"template record"[..]],
            shmbus_bus::WaitStrategy::BusySpin,
            None,
        )
        .expect("write the template record");
    let data = std::fs::read(&path).expect("read the template data file");
    let ctl = std::fs::read(path.with_extension("ctl")).expect("read the template control file");
    Template { data, ctl }
}

fn patch(file: &mut [u8], at: usize, bytes: &[u8]) {
    file[at..at + bytes.len()].copy_from_slice(bytes);
}

/// The bus's error against the reference's refusal: same kind, same values.
fn same_refusal(err: &Error, want: &OpenRefusal) -> bool {
    match (err, want) {
        (Error::NotInitialized(_), OpenRefusal::NotInitialized) => true,
        (Error::SizeMismatch { expected, .. }, OpenRefusal::Short) => *expected == spec::PAGE,
        (Error::NotASegment(_), OpenRefusal::NotASegment) => true,
        (Error::VersionMismatch { found, .. }, OpenRefusal::Version(v)) => found == v,
        (Error::SizeMismatch { expected, .. }, OpenRefusal::Size(x)) => expected == x,
        (Error::Corrupt { what, .. }, OpenRefusal::Corrupt(field)) => what.starts_with(field),
        _ => false,
    }
}

fn one(t: &Template, dir: &Scratch, bytes: &[u8]) {
    let mut input = Input::new(bytes);
    let mode = input.u8();
    let (size_a, size_b) = (input.u16(), input.u16());
    let mut data = t.data.clone();
    let mut ctl = t.ctl.clone();
    let hdr = input.take(368);
    patch(&mut data, 0, hdr);
    let prod = input.take(32);
    patch(&mut data, spec::PRODUCER as usize, prod);
    let ctl_patch = input.take(768);
    patch(&mut ctl, 0, ctl_patch);

    // Sizes: the template's, the header's own (bounded to keep execs fast),
    // or any small size from the input.
    let data_len = match mode & 3 {
        0 => data.len(),
        1 => {
            let cap = spec::u64_at(&data, 24);
            if cap <= 1 << 16 {
                (spec::DATA_OFFSET + cap) as usize
            } else {
                data.len()
            }
        }
        _ => usize::from(size_a),
    };
    let ctl_len = if mode & 4 == 0 {
        let slots = spec::u32_at(&data, 40);
        if slots <= spec::MAX_SLOTS {
            spec::control_file_len(slots) as usize
        } else {
            ctl.len()
        }
    } else {
        usize::from(size_b)
    };
    data.resize(data_len, 0);
    ctl.resize(ctl_len, 0);
    let path = dir.path("r.ring");
    write_file(&path, &data);
    write_file(&path.with_extension("ctl"), &ctl);

    let start = if mode & 8 == 0 {
        StartAt::Oldest
    } else {
        StartAt::Latest
    };
    let want = spec::decode_header(&data, data.len() as u64)
        .and_then(|h| spec::check_control(&h, &ctl, ctl.len() as u64).map(|()| h));
    match RingReader::open_waiting(&path, start, Duration::ZERO) {
        Ok(mut reader) => {
            let h = want.unwrap_or_else(|e| panic!("bus opened a ring the spec refuses: {e:?}"));
            check_info(&reader, &h);
            // A span the spec refuses would have failed the join.
            let span = spec::check_span(
                h.capacity,
                h.policy == 2,
                spec::u64_at(&data, spec::PRODUCER),
                spec::u64_at(&data, spec::PRODUCER + 8),
                spec::u64_at(&data, spec::PRODUCER),
            );
            assert!(
                span.is_ok(),
                "joined over a span the spec refuses: {span:?}"
            );
            let limit = spec::check_limit(
                spec::u64_at(&data, spec::PRODUCER + 16),
                spec::u64_at(&data, spec::PRODUCER),
            );
            assert!(limit.is_ok(), "joined with a limit the spec refuses");
            first_read(&mut reader, &data, &h);
        }
        Err(err) => {
            assert!(!err.to_string().is_empty(), "a refusal names a reason");
            match &want {
                Err(refusal) => assert!(
                    same_refusal(&err, refusal),
                    "bus refused with {err:?}, the spec with {refusal:?}"
                ),
                Ok(h) => check_join_refusal(&err, &path, &data, h),
            }
        }
    }
}

/// Both headers are valid: only joining may refuse, for a reason the spec
/// names (a span) or because no slot could be claimed.
fn check_join_refusal(err: &Error, path: &Path, data: &[u8], h: &spec::HeaderRef) {
    match err {
        Error::NoFreeSlot(_) => {}
        Error::Corrupt { path: p, what } => {
            assert_eq!(
                p,
                &path.with_extension("ctl"),
                "join refusals name the control file"
            );
            let tail = spec::u64_at(data, spec::PRODUCER);
            let head = spec::u64_at(data, spec::PRODUCER + 8);
            assert!(
                spec::check_span(h.capacity, h.policy == 2, tail, head, tail).is_err()
                    || spec::check_limit(spec::u64_at(data, spec::PRODUCER + 16), tail).is_err(),
                "join refused a span and limit the spec accepts: {what}"
            );
        }
        other => panic!("bus refused valid headers with {other:?}"),
    }
}

fn check_info(reader: &RingReader, h: &spec::HeaderRef) {
    let info = reader.info();
    assert_eq!(info.capacity, h.capacity);
    assert_eq!(info.max_message, h.max_message);
    assert_eq!(info.slots, h.slots);
    let policy = if h.policy == 1 {
        Policy::Block
    } else {
        Policy::Overwrite
    };
    assert_eq!(info.policy, policy);
    assert_eq!(
        info.evict_after,
        (h.evict_after_ns != 0).then(|| Duration::from_nanos(h.evict_after_ns))
    );
    assert_eq!(info.replica, h.replica);
    assert_eq!(info.ring_id, h.ring_id);
    assert_eq!(info.type_name, h.type_name);
    assert_eq!(info.type_fingerprint, h.type_fingerprint);
    assert_eq!(info.publisher.pid, h.pid);
}

/// One read of the opened ring: a message must be a record the spec calls
/// valid at its position, inside the ring, with the same bytes.
fn first_read(reader: &mut RingReader, file: &[u8], h: &spec::HeaderRef) {
    let ring = spec::Ring {
        capacity: h.capacity,
        max_message: h.max_message,
    };
    let data = &file[spec::DATA_OFFSET as usize..];
    match reader.try_read() {
        Ok(ReadEvent::Message(m)) => match ring.record(data, m.position()) {
            spec::Rec::Data { len, seq_low, .. } => {
                assert_eq!(m.payload(), ring.payload(data, m.position(), len));
                assert_eq!(m.sequence() as u32, seq_low);
            }
            other => panic!("bus read a message where the spec finds {other:?}"),
        },
        Ok(_) => {}
        Err(err) => assert!(!err.to_string().is_empty(), "a refusal names a reason"),
    }
}

fn main() {
    let dir = Scratch::new("bus_segment_open");
    let t = template(&dir);
    let seeds = || shmbus_fuzz::seeds::segment_open(&t.data, &t.ctl);
    if shmbus_fuzz::other_modes(|b| one(&t, &dir, b), seeds) {
        return;
    }
    afl::fuzz!(|bytes: &[u8]| one(&t, &dir, bytes));
}
