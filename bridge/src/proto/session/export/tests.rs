//! Deterministic tests of the sender half: lifecycle, credit, gaps, END,
//! resume and the pin deadline, with a simulated ring.

use super::*;
use crate::proto::frame::{ErrorCode, RESUME_OLDEST};

const MS: u64 = 1_000_000;
const ID: u32 = 7;
const CAP: u64 = 1 << 16;
const MAX_RECORD: u64 = 256;

fn session() -> ExportSession {
    ExportSession::new(ExportConfig {
        max_frame: 4096,
        pin_deadline: 250 * MS,
    })
}

fn info(mode: ExportMode) -> StreamInfo {
    StreamInfo {
        mode,
        capacity: CAP,
        max_record: MAX_RECORD,
    }
}

const UNTETHERED: ExportMode = ExportMode::Untethered { retention: 1024 };

fn sub(resume: u64, window: u64) -> Subscribe {
    Subscribe {
        stream: ID,
        resume_position: resume,
        window,
    }
}

fn view(start: u64, head: u64, tail: u64) -> impl FnOnce() -> Option<RingView> {
    move || Some(RingView { start, head, tail })
}

/// A ring of 64-byte records numbered from 0 at position 0: records in
/// `from..tail` as a chunk bounded by `max_len`.
fn records(from: u64, max_len: u64, tail: u64) -> RingEvent {
    let end = tail.min(from + max_len / 64 * 64);
    if end <= from {
        return RingEvent::Empty {
            at: from,
            next_seq: from / 64,
            publisher_gone: false,
        };
    }
    RingEvent::Records {
        start: from,
        end,
        records: u32::try_from((end - from) / 64).unwrap(),
        first_seq: from / 64,
    }
}

/// Reads and sends whatever the session allows from a ring with `tail`,
/// until it has nothing more; returns the frames decided. Each DATA takes
/// 100 connection bytes.
fn pump(s: &mut ExportSession, tail: u64, conn: &mut u64, now: u64) -> Vec<Step> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let Some(req) = s.next_read(ID) else { break };
        let step = s.on_ring(ID, records(req.from, req.max_len, tail)).unwrap();
        match step {
            Step::Data { end, .. } => {
                *conn += 100;
                s.on_data_sent(ID, end, *conn, now).unwrap();
            }
            Step::Idle | Step::Withheld => {
                out.push(step);
                break;
            }
            Step::Gap(_) | Step::End(_) => {}
        }
        out.push(step);
    }
    out
}

fn data_ends(steps: &[Step]) -> Vec<(u64, u64)> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Data { start, end, .. } => Some((*start, *end)),
            _ => None,
        })
        .collect()
}

#[test]
fn frames_about_unannounced_or_unsubscribed_streams_are_violations() {
    let mut s = session();
    let v = s.on_subscribe(&sub(0, 4096), view(0, 0, 0)).unwrap_err();
    assert_eq!(v.code(), ErrorCode::UnknownStream);
    assert_eq!(
        s.on_ack(ID, 0).unwrap_err().code(),
        ErrorCode::UnknownStream
    );
    assert_eq!(
        s.on_credit(ID, 0).unwrap_err().code(),
        ErrorCode::UnknownStream
    );
    s.on_announced(ID, info(ExportMode::Tethered));
    assert!(!s.should_announce(ID));
    assert!(matches!(
        s.on_ack(ID, 0),
        Err(Violation::Unexpected {
            why: "ACK before SUBSCRIBE",
            ..
        })
    ));
    assert!(matches!(
        s.on_credit(ID, 10),
        Err(Violation::Unexpected {
            why: "CREDIT before SUBSCRIBE",
            ..
        })
    ));
    // A ring that cannot be opened leaves the stream unsubscribed.
    assert_eq!(s.on_subscribe(&sub(0, 4096), || None), Ok(None));
    assert_eq!(s.next_read(ID), None);
    assert_eq!(s.on_subscribe(&sub(0, 4096), view(0, 0, 0)), Ok(Some(0)));
    assert!(matches!(
        s.on_subscribe(&sub(0, 4096), view(0, 0, 0)),
        Err(Violation::Unexpected {
            why: "second SUBSCRIBE",
            ..
        })
    ));
    // After the connection closes the stream is hidden again.
    s.on_connection_closed();
    assert!(s.should_announce(ID));
    assert_eq!(
        s.on_ack(ID, 0).unwrap_err().code(),
        ErrorCode::UnknownStream
    );
}

#[test]
fn subscribe_at_after_and_before_the_floor_and_from_the_oldest() {
    // Tethered, the floor is what the reader still holds (its released
    // position): the reader joined at 1024.
    let mut s = session();
    s.on_announced(ID, info(ExportMode::Tethered));
    assert_eq!(
        s.on_subscribe(&sub(RESUME_OLDEST, 8192), view(1024, 1024, 4096)),
        Ok(Some(1024))
    );
    assert_eq!(s.next_read(ID).unwrap().from, 1024);
    for (resume, start) in [(1024, 1024), (2048, 2048), (4096, 4096)] {
        s.on_connection_closed();
        s.on_announced(ID, info(ExportMode::Tethered));
        assert_eq!(
            s.on_subscribe(&sub(resume, 8192), view(0, 0, 4096)),
            Ok(Some(start)),
            "{resume}"
        );
        assert_eq!(s.next_read(ID).unwrap().from, start);
    }
    // Before the floor: a GAP [resume, floor) first, with the sequence
    // number of the record at the floor, then DATA from there.
    s.on_connection_closed();
    s.on_announced(ID, info(ExportMode::Tethered));
    assert_eq!(
        s.on_subscribe(&sub(512, 8192), view(0, 0, 4096)),
        Ok(Some(1024))
    );
    let mut conn = 0;
    let steps = pump(&mut s, 4096, &mut conn, 0);
    assert_eq!(
        steps[0],
        Step::Gap(Gap {
            stream: ID,
            from: 512,
            to: 1024,
            next_seq: 16
        })
    );
    assert_eq!(data_ends(&steps).first(), Some(&(1024, 4096)));
    let c = s.take_counters(ID);
    assert_eq!((c.gaps, c.gap_bytes), (1, 512));
    // Beyond the tail, or misaligned: violations.
    for resume in [4112, 100] {
        s.on_connection_closed();
        s.on_announced(ID, info(ExportMode::Tethered));
        assert!(matches!(
            s.on_subscribe(&sub(resume, 8192), view(0, 0, 4096)),
            Err(Violation::Positions {
                frame: FrameType::Subscribe,
                ..
            })
        ));
    }
}

#[test]
fn untethered_floor_is_the_ring_head() {
    let mut s = session();
    s.on_announced(ID, info(UNTETHERED));
    assert_eq!(
        s.on_subscribe(&sub(0, 1 << 20), view(0, 2048, 4096)),
        Ok(Some(2048))
    );
    let req = s.next_read(ID).unwrap();
    assert_eq!(req.from, 2048);
    // Untethered reads pin first, at most at the send position.
    assert_eq!(req.pin, Some(2048));
    assert_eq!(
        s.on_ring(ID, records(2048, req.max_len, 4096)).unwrap(),
        Step::Gap(Gap {
            stream: ID,
            from: 0,
            to: 2048,
            next_seq: 32
        })
    );
}

#[test]
fn data_frames_are_bounded_by_frame_size_half_ring_and_credit() {
    let mut s = session();
    s.on_announced(ID, info(ExportMode::Tethered));
    s.on_subscribe(&sub(0, 10_000), view(0, 0, 1 << 20))
        .unwrap();
    let mut conn = 0;
    let steps = pump(&mut s, 1 << 20, &mut conn, 0);
    // max_frame 4096; the credit ends at 10_000: 9984 aligned, but the last
    // frame must end at or before 10_000, and a 64-byte record boundary.
    assert_eq!(data_ends(&steps), [(0, 4096), (4096, 8192), (8192, 9984)]);
    // 16 bytes of credit left: less than a largest record, so a stall.
    assert_eq!(s.next_read(ID), None);
    assert_eq!(s.take_counters(ID).credit_stalls, 1);
    for (a, b) in data_ends(&steps) {
        assert!(b - a <= 4096 && b <= 10_000);
    }
    // Half the ring bounds a frame even with a larger max_frame.
    let mut big = ExportSession::new(ExportConfig {
        max_frame: 1 << 30,
        pin_deadline: MS,
    });
    big.on_announced(ID, info(ExportMode::Tethered));
    big.on_subscribe(&sub(0, u64::MAX), view(0, 0, 1 << 20))
        .unwrap();
    assert_eq!(big.next_read(ID).unwrap().max_len, CAP / 2);
}

#[test]
fn data_withheld_at_the_credit_limit_resumes_on_credit_and_shrinking_credit_is_ignored() {
    let mut s = session();
    s.on_announced(ID, info(ExportMode::Tethered));
    s.on_subscribe(&sub(0, 2048), view(0, 0, 1 << 20)).unwrap();
    let mut conn = 0;
    let steps = pump(&mut s, 1 << 20, &mut conn, 0);
    assert_eq!(data_ends(&steps), [(0, 2048)]);
    // At the limit: nothing to read, one stall counted however often asked.
    assert_eq!(s.next_read(ID), None);
    assert_eq!(s.next_read(ID), None);
    assert!(!s.waits_for_ring(ID));
    assert_eq!(s.take_counters(ID).credit_stalls, 1);
    // Less than one largest record of credit is still a stall.
    s.on_credit(ID, 2048 + MAX_RECORD - 16).unwrap();
    assert_eq!(s.next_read(ID), None);
    // A smaller limit changes nothing (limits only grow).
    s.on_credit(ID, 1024).unwrap();
    assert_eq!(s.next_read(ID), None);
    s.on_credit(ID, 6144).unwrap();
    assert!(s.waits_for_ring(ID));
    let steps = pump(&mut s, 1 << 20, &mut conn, 0);
    assert_eq!(data_ends(&steps), [(2048, 6144)]);
    assert_eq!(s.take_counters(ID).credit_stalls, 1);
    // Records that do not fit the credit are withheld, not cut.
    s.on_credit(ID, 6144 + MAX_RECORD).unwrap();
    let req = s.next_read(ID).unwrap();
    assert_eq!(req.max_len, MAX_RECORD);
    let step = s
        .on_ring(
            ID,
            RingEvent::Records {
                start: 6144,
                end: 6144 + 2 * MAX_RECORD,
                records: 1,
                first_seq: 96,
            },
        )
        .unwrap();
    assert_eq!(step, Step::Withheld);
    assert_eq!(s.take_counters(ID).credit_stalls, 1);
}

#[test]
fn ack_beyond_sent_is_a_violation_and_stale_acks_are_ignored() {
    let mut s = session();
    s.on_announced(ID, info(ExportMode::Tethered));
    s.on_subscribe(&sub(0, 1 << 20), view(0, 0, 8192)).unwrap();
    let mut conn = 0;
    pump(&mut s, 8192, &mut conn, 0);
    assert_eq!(s.sent(ID), Some(8192));
    s.on_ack(ID, 4096).unwrap();
    s.on_ack(ID, 1024).unwrap();
    let v = s.on_ack(ID, 8208).unwrap_err();
    assert!(matches!(
        v,
        Violation::Positions {
            frame: FrameType::Ack,
            stream: ID,
            ..
        }
    ));
    assert_eq!(v.code(), ErrorCode::UnexpectedFrame);
}

#[test]
fn tethered_release_waits_for_ack_and_kernel_and_resume_resends_from_acked() {
    let mut s = session();
    s.on_announced(ID, info(ExportMode::Tethered));
    s.on_subscribe(&sub(RESUME_OLDEST, 1 << 20), view(0, 0, 8192))
        .unwrap();
    let mut conn = 0;
    pump(&mut s, 8192, &mut conn, 0);
    assert_eq!(s.protection(ID), Some(Protection::Release(0)));
    s.on_ack(ID, 4096).unwrap();
    assert_eq!(s.protection(ID), Some(Protection::Release(0)));
    s.on_connection_released(conn);
    assert_eq!(s.protection(ID), Some(Protection::Release(4096)));
    // The connection drops with 4096..8192 sent but not acknowledged: the
    // reader still holds them; the peer resumes from 4096 and gets them again.
    s.on_connection_closed();
    assert!(s.should_announce(ID));
    s.on_announced(ID, info(ExportMode::Tethered));
    assert_eq!(
        s.on_subscribe(&sub(4096, 1 << 20), view(0, 0, 8192)),
        Ok(Some(4096))
    );
    let steps = pump(&mut s, 8192, &mut conn, 0);
    assert_eq!(data_ends(&steps), [(4096, 8192)]);
    assert!(!steps.iter().any(|s| matches!(s, Step::Gap(_))));
    assert_eq!(s.protection(ID), Some(Protection::Release(4096)));
}

#[test]
fn lapped_untethered_export_gets_a_gap_with_the_exact_next_seq() {
    let mut s = session();
    s.on_announced(ID, info(UNTETHERED));
    s.on_subscribe(&sub(0, 1 << 20), view(0, 0, 1024)).unwrap();
    let mut conn = 0;
    let steps = pump(&mut s, 1024, &mut conn, 0);
    assert_eq!(data_ends(&steps), [(0, 1024)]);
    s.on_connection_released(conn);
    assert_eq!(s.protection(ID), Some(Protection::Unpinned));
    // The publisher laps the export: the pin lands at 5120.
    let req = s.next_read(ID).unwrap();
    // Pinned `retention` (1024) behind the send position: nothing acked.
    assert_eq!((req.from, req.pin), (1024, Some(0)));
    assert_eq!(
        s.on_ring(ID, RingEvent::Lapped { head: 5120 }).unwrap(),
        Step::Idle
    );
    // Lapped again while reading at the new position: one GAP covers both.
    let req = s.next_read(ID).unwrap();
    assert_eq!(req.from, 5120);
    assert_eq!(
        s.on_ring(ID, RingEvent::Lapped { head: 6144 }).unwrap(),
        Step::Idle
    );
    let req = s.next_read(ID).unwrap();
    assert_eq!(req.from, 6144);
    let step = s.on_ring(ID, records(6144, req.max_len, 8192)).unwrap();
    assert_eq!(
        step,
        Step::Gap(Gap {
            stream: ID,
            from: 1024,
            to: 6144,
            next_seq: 96
        })
    );
    let c = s.take_counters(ID);
    // 16 messages sent (0..16), the next one after the gap is 96: 80 lost.
    assert_eq!((c.gaps, c.gap_bytes, c.lost_messages), (1, 5120, 80));
    let steps = pump(&mut s, 8192, &mut conn, 0);
    assert_eq!(data_ends(&steps), [(6144, 8192)]);
    // A lap when nothing is committed after the loss: next_seq is the
    // publisher's next message number.
    s.on_connection_released(conn);
    s.next_read(ID).unwrap();
    s.on_ring(ID, RingEvent::Lapped { head: 9216 }).unwrap();
    s.next_read(ID).unwrap();
    assert_eq!(
        s.on_ring(
            ID,
            RingEvent::Empty {
                at: 9216,
                next_seq: 144,
                publisher_gone: false
            }
        )
        .unwrap(),
        Step::Gap(Gap {
            stream: ID,
            from: 8192,
            to: 9216,
            next_seq: 144
        })
    );
    assert_eq!(s.take_counters(ID).lost_messages, 16);
}

#[test]
fn end_comes_only_after_everything_before_it_was_sent() {
    let mut s = session();
    s.on_announced(ID, info(ExportMode::Tethered));
    s.on_subscribe(&sub(0, 2048), view(0, 0, 4096)).unwrap();
    let mut conn = 0;
    pump(&mut s, 4096, &mut conn, 0);
    // The publisher is gone at 4096, but only 2048 is covered by credit:
    // no END while bytes before it are unsent (the ring reports them).
    assert_eq!(s.next_read(ID), None);
    s.on_credit(ID, 1 << 20).unwrap();
    let req = s.next_read(ID).unwrap();
    let step = s.on_ring(ID, records(req.from, req.max_len, 4096)).unwrap();
    assert!(matches!(
        step,
        Step::Data {
            start: 2048,
            end: 4096,
            ..
        }
    ));
    s.on_data_sent(ID, 4096, 200, 0).unwrap();
    let req = s.next_read(ID).unwrap();
    assert_eq!(req.from, 4096);
    assert_eq!(
        s.on_ring(
            ID,
            RingEvent::Empty {
                at: 4096,
                next_seq: 64,
                publisher_gone: true
            }
        )
        .unwrap(),
        Step::End(End {
            stream: ID,
            position: 4096
        })
    );
    // Nothing after END.
    assert_eq!(s.next_read(ID), None);
    assert!(s.retirable().is_empty());
    s.on_ack(ID, 4096).unwrap();
    assert!(s.retirable().is_empty(), "the kernel still holds sends");
    s.on_connection_released(200);
    assert_eq!(s.retirable(), [ID]);
    s.retire(ID);
    // Late frames for a retired stream are ignored; a new SUBSCRIBE is not.
    s.on_ack(ID, 4096).unwrap();
    s.on_credit(ID, 1 << 30).unwrap();
    assert!(s.on_subscribe(&sub(0, 1), view(0, 0, 0)).is_err());
    s.on_connection_closed();
    assert!(!s.should_announce(ID));
}

#[test]
fn a_pending_gap_goes_before_end_and_needs_no_credit() {
    let mut s = session();
    s.on_announced(ID, info(UNTETHERED));
    // Window 0: no DATA at all, yet the GAP and the END go out.
    s.on_subscribe(&sub(0, 0), view(0, 1024, 1024)).unwrap();
    let req = s.next_read(ID).unwrap();
    let gone = RingEvent::Empty {
        at: req.from,
        next_seq: 16,
        publisher_gone: true,
    };
    assert!(
        matches!(s.on_ring(ID, gone).unwrap(), Step::Gap(g) if g.to == 1024 && g.next_seq == 16)
    );
    // Without credit and without a pending GAP there is nothing to read,
    // so the END waits for credit to show the ring is drained.
    assert_eq!(s.next_read(ID), None);
    s.on_credit(ID, 1024 + MAX_RECORD).unwrap();
    s.next_read(ID).unwrap();
    assert!(matches!(s.on_ring(ID, gone).unwrap(), Step::End(e) if e.position == 1024));
}

#[test]
fn untethered_pin_deadline_resets_the_connection_and_the_loss_becomes_a_gap() {
    let mut s = session();
    s.on_announced(ID, info(UNTETHERED));
    s.on_subscribe(&sub(0, 1 << 20), view(0, 0, 4096)).unwrap();
    let mut conn = 0;
    let steps = pump(&mut s, 4096, &mut conn, 10 * MS);
    assert_eq!(data_ends(&steps), [(0, 4096)]);
    // The kernel holds the sends (no completion): pinned at 0.
    assert_eq!(s.protection(ID), Some(Protection::Pin(0)));
    assert_eq!(s.tick(100 * MS), None);
    assert_eq!(s.next_deadline(100 * MS), Some(160 * MS));
    let r = s.tick(260 * MS).unwrap();
    assert_eq!(
        r,
        Reset {
            stream: ID,
            held_for: 250 * MS
        }
    );
    assert_eq!(s.take_counters(ID).pin_resets, 1);
    // The caller resets the connection; the kernel drops the sends.
    s.on_connection_closed();
    assert_eq!(s.protection(ID), Some(Protection::Unpinned));
    assert_eq!(s.tick(10_000 * MS), None);
    // Meanwhile the publisher moved on; the peer resubscribes from what it
    // received (2048 of the 4096 sent): the rest is a GAP.
    s.on_announced(ID, info(UNTETHERED));
    assert_eq!(
        s.on_subscribe(&sub(2048, 1 << 20), view(0, 16384, 20480)),
        Ok(Some(16384))
    );
    let steps = pump(&mut s, 20480, &mut conn, 20 * MS);
    assert_eq!(
        steps[0],
        Step::Gap(Gap {
            stream: ID,
            from: 2048,
            to: 16384,
            next_seq: 256
        })
    );
    assert_eq!(data_ends(&steps).first(), Some(&(16384, 20480)));
}

#[test]
fn tethered_exports_are_never_reset_by_the_pin_deadline() {
    let mut s = session();
    s.on_announced(ID, info(ExportMode::Tethered));
    s.on_subscribe(&sub(0, 1 << 20), view(0, 0, 4096)).unwrap();
    let mut conn = 0;
    pump(&mut s, 4096, &mut conn, 0);
    assert!(s.kernel_busy(ID));
    assert_eq!(s.tick(u64::MAX), None);
    assert_eq!(s.next_deadline(0), None);
}

#[test]
fn reports_that_do_not_follow_the_request_are_caller_errors() {
    let mut s = session();
    assert_eq!(
        s.on_ring(ID, RingEvent::Lapped { head: 0 }),
        Err(ProgressError::NotSubscribed(ID))
    );
    s.on_announced(ID, info(ExportMode::Tethered));
    s.on_subscribe(&sub(0, 1 << 20), view(0, 0, 4096)).unwrap();
    assert!(matches!(
        s.on_ring(ID, records(64, 4096, 4096)),
        Err(ProgressError::WrongPosition {
            expected: 0,
            found: 64,
            ..
        })
    ));
    assert!(s.on_data_sent(ID, 4096, 10, 0).is_err());
    let step = s.on_ring(ID, records(0, 4096, 4096)).unwrap();
    assert!(matches!(step, Step::Data { end: 4096, .. }));
    assert!(s.on_data_sent(ID, 2048, 10, 0).is_err());
}

#[test]
fn a_ring_error_before_the_first_read_blames_the_resume_position() {
    let mut s = session();
    s.on_announced(ID, info(ExportMode::Tethered));
    s.on_subscribe(&sub(48, 1 << 20), view(0, 0, 4096)).unwrap();
    assert!(matches!(
        s.on_ring_error(ID),
        Err(Violation::Unexpected {
            frame: FrameType::Subscribe,
            ..
        })
    ));
    // After a successful read, an error only stops the stream.
    s.on_connection_closed();
    s.on_announced(ID, info(ExportMode::Tethered));
    s.on_subscribe(&sub(0, 1 << 20), view(0, 0, 4096)).unwrap();
    s.next_read(ID).unwrap();
    s.on_ring(ID, records(0, 4096, 4096)).unwrap();
    assert_eq!(s.on_ring_error(ID), Ok(()));
    assert_eq!(s.next_read(ID), None);
}

#[test]
fn a_replaced_reader_continues_with_a_gap_to_its_start() {
    let mut s = session();
    s.on_announced(ID, info(UNTETHERED));
    s.on_subscribe(&sub(0, 1 << 20), view(0, 0, 2048)).unwrap();
    let mut conn = 0;
    pump(&mut s, 2048, &mut conn, 0);
    s.on_connection_released(conn);
    s.on_reader_replaced(ID, 8192);
    let req = s.next_read(ID).unwrap();
    assert_eq!(req.from, 8192);
    let step = s.on_ring(ID, records(8192, req.max_len, 9216)).unwrap();
    assert_eq!(
        step,
        Step::Gap(Gap {
            stream: ID,
            from: 2048,
            to: 8192,
            next_seq: 128
        })
    );
}

#[test]
fn a_send_stalled_past_the_deadline_counts_as_a_pin_reset() {
    let mut s = session();
    s.on_announced(ID, info(UNTETHERED));
    s.on_subscribe(&sub(0, 1 << 20), view(0, 0, 4096)).unwrap();
    assert_eq!(
        s.on_send_stalled(ID),
        Reset {
            stream: ID,
            held_for: 250 * MS
        }
    );
    assert_eq!(s.take_counters(ID).pin_resets, 1);
}

#[test]
fn a_stream_at_its_limit_does_not_hold_back_another() {
    const OTHER: u32 = 8;
    let mut s = session();
    s.on_announced(ID, info(ExportMode::Tethered));
    s.on_announced(OTHER, info(ExportMode::Tethered));
    s.on_subscribe(&sub(0, 0), view(0, 0, 8192)).unwrap();
    s.on_subscribe(
        &Subscribe {
            stream: OTHER,
            resume_position: 0,
            window: u64::MAX,
        },
        view(0, 0, 8192),
    )
    .unwrap();
    assert_eq!(s.next_read(ID), None);
    assert!(!s.waits_for_ring(ID));
    let mut conn = 0;
    let mut sent = 0;
    while let Some(req) = s.next_read(OTHER) {
        match s
            .on_ring(OTHER, records(req.from, req.max_len, 8192))
            .unwrap()
        {
            Step::Data { end, .. } => {
                conn += 100;
                s.on_data_sent(OTHER, end, conn, 0).unwrap();
                sent = end;
            }
            _ => break,
        }
    }
    assert_eq!(sent, 8192);
    assert!(s.waits_for_ring(OTHER));
    assert_eq!(s.subscribed().collect::<Vec<_>>(), [ID, OTHER]);
    assert_eq!(s.take_counters(ID).credit_stalls, 1);
    assert_eq!(s.take_counters(OTHER).credit_stalls, 0);
}

#[test]
fn the_window_counts_from_the_resume_position_even_after_a_gap() {
    // The receiver promised room for 1024 bytes past its position 512; the
    // sender starts at its floor (the untethered ring's head, 1024) after a
    // GAP: DATA may reach 1536 only.
    let mut s = session();
    s.on_announced(ID, info(UNTETHERED));
    assert_eq!(
        s.on_subscribe(&sub(512, 1024), view(0, 1024, 4096)),
        Ok(Some(1024))
    );
    let mut conn = 0;
    let steps = pump(&mut s, 4096, &mut conn, 0);
    assert!(matches!(
        steps[0],
        Step::Gap(Gap {
            from: 512,
            to: 1024,
            ..
        })
    ));
    assert_eq!(data_ends(&steps), [(1024, 1536)]);
}

#[test]
fn a_forgotten_stream_is_announced_again_and_starts_afresh_without_end() {
    let mut s = session();
    s.on_announced(ID, info(ExportMode::Tethered));
    s.on_subscribe(&sub(RESUME_OLDEST, CAP), view(0, 0, 4096))
        .unwrap();
    let mut conn = 0;
    let steps = pump(&mut s, 4096, &mut conn, 0);
    assert_eq!(data_ends(&steps), [(0, 4096)]);
    s.on_ack(ID, 4096).unwrap();
    s.on_connection_released(conn);
    s.on_connection_closed();
    // A reload stopped the export: nothing of the stream is kept, no END
    // was decided, and nothing is retirable.
    s.forget(ID);
    assert!(s.retirable().is_empty());
    assert_eq!(s.subscribed().count(), 0);
    assert_eq!(s.sent(ID), None);
    assert_eq!(s.protection(ID), None);
    // Allowed again: announced like a new stream; the peer resumes at its
    // replica's position, which a new reader that joined later than that
    // turns into a GAP, never a refusal.
    assert!(s.should_announce(ID));
    s.on_announced(ID, info(ExportMode::Tethered));
    let start = s
        .on_subscribe(&sub(4096, CAP), view(8192, 8192, 12288))
        .unwrap();
    assert_eq!(start, Some(8192));
    let req = s.next_read(ID).unwrap();
    let step = s
        .on_ring(ID, records(req.from, req.max_len, 12288))
        .unwrap();
    assert!(matches!(step, Step::Gap(g) if g.from == 4096 && g.to == 8192 && g.next_seq == 128));
}

/// DATA reads are bounded by `max_frame` even when the ring's largest
/// record is longer (control frames never wait behind more than one
/// frame); a single longer record still goes, alone, within the credit.
#[test]
fn reads_are_bounded_by_the_frame_size_and_a_longer_record_goes_alone() {
    let mut s = session();
    s.on_announced(
        ID,
        StreamInfo {
            mode: ExportMode::Tethered,
            capacity: CAP,
            max_record: 3 * 4096,
        },
    );
    assert_eq!(s.on_subscribe(&sub(0, CAP), view(0, 0, 0)), Ok(Some(0)));
    let req = s.next_read(ID).expect("credit covers a largest record");
    assert_eq!((req.from, req.max_len), (0, 4096), "bounded by max_frame");
    // The ring's first record is 8 KiB: it comes alone and is sent.
    let step = s
        .on_ring(
            ID,
            RingEvent::Records {
                start: 0,
                end: 8192,
                records: 1,
                first_seq: 0,
            },
        )
        .unwrap();
    assert_eq!(
        step,
        Step::Data {
            start: 0,
            end: 8192,
            records: 1
        }
    );
    s.on_data_sent(ID, 8192, 100, 0).unwrap();
    // Less credit left than a largest record: nothing is read (a stall).
    let mut s2 = session();
    s2.on_announced(
        ID,
        StreamInfo {
            mode: ExportMode::Tethered,
            capacity: CAP,
            max_record: 3 * 4096,
        },
    );
    s2.on_subscribe(&sub(0, 8192), view(0, 0, 0)).unwrap();
    assert_eq!(s2.next_read(ID), None, "8 KiB of credit < a 12 KiB record");
}
