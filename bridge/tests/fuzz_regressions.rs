//! Inputs the wire fuzz targets (`fuzz/src/bin/wire_*.rs`) found, replayed
//! through the public API so that each fix stays fixed without AFL++. The
//! raw inputs are kept in `fuzz/regressions/<target>/`; `fuzz/WIRE-CAMPAIGN.md`
//! lists them.

use shmbus_bridge::proto::{
    frame::{DataHeader, End, Gap},
    session::import::{ImportSession, ImportViolation, Resume},
    stream::{StreamError, MAX_POSITION},
};

/// A session with stream 0 subscribed from the oldest data of a 16 KiB ring:
/// the peer chooses the first position.
fn subscribed_from_oldest() -> ImportSession {
    let mut s = ImportSession::new();
    s.on_announce(0).unwrap();
    s.subscribe(0, Resume::Oldest, 1 << 14, false).unwrap();
    s
}

fn too_large(r: Result<impl std::fmt::Debug, ImportViolation>) {
    match r {
        Err(ImportViolation::Position {
            source: StreamError::PositionTooLarge { .. },
            ..
        }) => {}
        other => panic!("expected PositionTooLarge, got {other:?}"),
    }
}

/// `fuzz/regressions/wire_session/data_end_past_u64_max`: a first DATA frame
/// starting 16 bytes below `u64::MAX` was accepted, its end saturated to
/// `u64::MAX`, and the replica would have been created there.
#[test]
fn data_ending_past_u64_max_is_refused() {
    let mut s = subscribed_from_oldest();
    too_large(s.on_data(&DataHeader {
        stream: 0,
        start_position: u64::MAX - 15,
        len: 32,
    }));
}

/// The same rule at its boundary: DATA, GAP and END may reach
/// `MAX_POSITION` and not one record more.
#[test]
fn positions_stop_at_max_position() {
    let mut s = subscribed_from_oldest();
    too_large(s.on_data(&DataHeader {
        stream: 0,
        start_position: MAX_POSITION - 16,
        len: 32,
    }));
    let mut s = subscribed_from_oldest();
    too_large(s.on_gap(&Gap {
        stream: 0,
        from: MAX_POSITION,
        to: MAX_POSITION + 16,
        next_seq: 1,
    }));
    let mut s = subscribed_from_oldest();
    too_large(s.on_end(&End {
        stream: 0,
        position: MAX_POSITION + 16,
    }));
    let mut s = subscribed_from_oldest();
    let plan = s
        .on_data(&DataHeader {
            stream: 0,
            start_position: MAX_POSITION - 32,
            len: 32,
        })
        .expect("DATA ending at MAX_POSITION is accepted");
    assert_eq!(plan.start + plan.len, MAX_POSITION);
}
