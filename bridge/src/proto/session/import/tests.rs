use super::*;

const CAP: u64 = 4096;

fn data(stream: u32, start: u64, len: u32) -> DataHeader {
    DataHeader {
        stream,
        start_position: start,
        len,
    }
}

fn gap(stream: u32, from: u64, to: u64, next_seq: u64) -> Gap {
    Gap {
        stream,
        from,
        to,
        next_seq,
    }
}

fn outputs(s: &mut ImportSession) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

fn credits(out: &[Output]) -> Vec<(u32, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Credit(c) => Some((c.stream, c.limit)),
            _ => None,
        })
        .collect()
}

fn acks(out: &[Output]) -> Vec<(u32, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Ack(a) => Some((a.stream, a.position)),
            _ => None,
        })
        .collect()
}

/// A session with `stream` subscribed at `position` with room `room`.
fn at(stream: u32, position: u64, room: u64) -> ImportSession {
    let mut s = ImportSession::new();
    s.on_announce(stream).unwrap();
    s.subscribe(
        stream,
        Resume::At {
            position,
            room_until: room,
        },
        CAP,
        false,
    )
    .unwrap();
    outputs(&mut s);
    s
}

#[test]
fn subscribe_from_oldest_sends_the_ring_as_window_and_the_first_frame_fixes_the_limit() {
    let mut s = ImportSession::new();
    s.on_announce(1).unwrap();
    s.subscribe(1, Resume::Oldest, CAP, false).unwrap();
    assert_eq!(
        outputs(&mut s),
        [Output::Subscribe(Subscribe {
            stream: 1,
            resume_position: RESUME_OLDEST,
            window: CAP
        })]
    );
    // Any aligned start; the replica is created there.
    let plan = s.on_data(&data(1, 8192, 1024)).unwrap();
    assert_eq!(
        plan,
        DataPlan {
            create_replica: true,
            start: 8192,
            len: 1024
        }
    );
    s.data_applied(1, 9216, 8192 + CAP);
    assert_eq!(
        outputs(&mut s),
        [Output::Ack(Ack {
            stream: 1,
            position: 9216
        })]
    );
    // The limit is the first frame's position plus the window.
    assert!(s.on_data(&data(1, 9216, 2048)).is_ok());
    s.data_applied(1, 11264, 8192 + CAP);
    assert_eq!(
        s.on_data(&data(1, 11264, 1040)),
        Err(ImportViolation::BeyondCredit {
            stream: 1,
            end: 12304,
            limit: 12288
        })
    );
}

#[test]
fn resume_after_reconnect_subscribes_from_the_replica_position_with_a_fresh_window() {
    // First connection: some data, then the connection ends.
    let mut s = at(3, 1024, 1024 + CAP);
    s.on_data(&data(3, 1024, 512)).unwrap();
    s.data_applied(3, 1536, 1024 + CAP);
    drop(s);
    // Second connection: the replica is at 1536; a subscriber holds it so
    // that the room ends at 3000.
    let mut s = ImportSession::new();
    s.on_announce(9).unwrap();
    s.subscribe(
        9,
        Resume::At {
            position: 1536,
            room_until: 3008,
        },
        CAP,
        false,
    )
    .unwrap();
    assert_eq!(
        outputs(&mut s),
        [Output::Subscribe(Subscribe {
            stream: 9,
            resume_position: 1536,
            window: 1472
        })]
    );
    // DATA must continue at the replica's position, within the window.
    assert!(matches!(
        s.on_data(&data(9, 1024, 512)),
        Err(ImportViolation::Position {
            source: StreamError::NotContiguous { .. },
            ..
        })
    ));
    let mut s2 = ImportSession::new();
    s2.on_announce(9).unwrap();
    s2.subscribe(
        9,
        Resume::At {
            position: 1536,
            room_until: 3008,
        },
        CAP,
        false,
    )
    .unwrap();
    assert_eq!(
        s2.on_data(&data(9, 1536, 1488)),
        Err(ImportViolation::BeyondCredit {
            stream: 9,
            end: 3024,
            limit: 3008
        })
    );
    assert_eq!(
        s2.on_data(&data(9, 1536, 1472)).unwrap(),
        DataPlan {
            create_replica: false,
            start: 1536,
            len: 1472
        }
    );
}

#[test]
fn a_full_replica_gets_no_credit_while_another_stream_keeps_flowing() {
    let mut s = ImportSession::new();
    for id in [1, 2] {
        s.on_announce(id).unwrap();
        s.subscribe(
            id,
            Resume::At {
                position: 0,
                room_until: CAP,
            },
            CAP,
            false,
        )
        .unwrap();
    }
    outputs(&mut s);
    // Stream 1's subscribers are stuck: its room stays at CAP.
    let mut p1 = 0;
    while p1 < CAP {
        s.on_data(&data(1, p1, 1024)).unwrap();
        p1 += 1024;
        s.data_applied(1, p1, CAP);
    }
    assert!(credits(&outputs(&mut s)).is_empty());
    assert_eq!(
        s.on_data(&data(1, CAP, 16)),
        Err(ImportViolation::BeyondCredit {
            stream: 1,
            end: CAP + 16,
            limit: CAP
        })
    );
    // Stream 2's subscribers keep up: its data flows for ten rings.
    let mut p2 = 0;
    let mut granted = Vec::new();
    for _ in 0..160 {
        s.on_data(&data(2, p2, 256)).unwrap();
        p2 += 256;
        // Subscribers released everything: room is a whole ring ahead.
        s.data_applied(2, p2, p2 + CAP);
        granted.extend(credits(&outputs(&mut s)));
        assert!(s.wants_room(1), "stream 1 is out of credit");
    }
    assert_eq!(p2, 10 * CAP);
    // A CREDIT per quarter ring, not per DATA frame.
    assert_eq!(granted.len(), 40);
    assert!(granted.iter().all(|&(id, _)| id == 2));
    // Stream 1's subscribers move: a room check grants credit at once.
    s.room(1, CAP + 1024);
    assert_eq!(credits(&outputs(&mut s)), [(1, CAP + 1024)]);
}

#[test]
fn credit_waits_for_a_quarter_ring_unless_the_sender_is_out_of_credit() {
    let mut s = at(1, 0, CAP);
    // Small frames with subscribers close behind: room grows by 256 each
    // time, less than a quarter (1024): no credit yet.
    for i in 1..=3u64 {
        s.on_data(&data(1, (i - 1) * 256, 256)).unwrap();
        s.data_applied(1, i * 256, CAP + i * 256);
        assert!(credits(&outputs(&mut s)).is_empty(), "{i}");
    }
    s.on_data(&data(1, 768, 256)).unwrap();
    s.data_applied(1, 1024, CAP + 1024);
    assert_eq!(credits(&outputs(&mut s)), [(1, CAP + 1024)]);
    // The room grew by only 16 but the sender used all of its credit.
    let mut s = at(1, 0, 1024);
    s.on_data(&data(1, 0, 1024)).unwrap();
    s.data_applied(1, 1024, 1024);
    assert!(credits(&outputs(&mut s)).is_empty());
    assert!(s.wants_room(1));
    s.room(1, 1040);
    assert_eq!(credits(&outputs(&mut s)), [(1, 1040)]);
    // A smaller room than reported before never lowers a limit.
    s.room(1, 1024);
    assert!(credits(&outputs(&mut s)).is_empty());
}

#[test]
fn wants_room_only_when_a_credit_could_follow() {
    let mut s = at(1, 0, CAP);
    assert!(!s.wants_room(1), "a full window: no credit could follow");
    s.on_data(&data(1, 0, 512)).unwrap();
    s.data_applied(1, 512, CAP);
    assert!(!s.wants_room(1), "less than a quarter used");
    s.on_data(&data(1, 512, 512)).unwrap();
    s.data_applied(1, 1024, CAP);
    assert!(s.wants_room(1));
    assert!(!s.wants_room(7), "unknown stream");
    assert_eq!(s.subscribed_streams().collect::<Vec<_>>(), [1]);
}

#[test]
fn frame_legality() {
    let mut s = ImportSession::new();
    s.on_announce(1).unwrap();
    assert_eq!(
        s.on_announce(1),
        Err(ImportViolation::AnnouncedTwice { stream: 1 })
    );
    // Undecided, held and ignored streams take no frames.
    let not_subscribed = |frame| ImportViolation::NotSubscribed { frame, stream: 1 };
    assert_eq!(
        s.on_data(&data(1, 0, 16)),
        Err(not_subscribed(FrameType::Data))
    );
    s.hold(1);
    assert!(s.is_held(1));
    assert_eq!(
        s.on_gap(&gap(1, 0, 16, 1)),
        Err(not_subscribed(FrameType::Gap))
    );
    s.ignore(1);
    assert_eq!(
        s.on_end(&End {
            stream: 1,
            position: 0
        }),
        Err(not_subscribed(FrameType::End))
    );
    assert_eq!(
        s.on_data(&data(5, 0, 16)),
        Err(ImportViolation::NotSubscribed {
            frame: FrameType::Data,
            stream: 5
        })
    );
    // An ignored stream cannot be subscribed later.
    assert_eq!(
        s.subscribe(1, Resume::Oldest, CAP, false),
        Err(Refusal::NotUndecided { stream: 1 })
    );
    // Bad lengths and positions.
    let mut s = at(2, 64, 64 + CAP);
    for len in [0, 8, 2064] {
        assert!(
            matches!(
                s.on_data(&data(2, 64, len)),
                Err(ImportViolation::Position {
                    source: StreamError::BadLength { .. },
                    ..
                })
            ),
            "{len}"
        );
    }
    assert!(matches!(
        s.on_gap(&gap(2, 80, 160, 3)),
        Err(ImportViolation::Position {
            frame: FrameType::Gap,
            source: StreamError::NotContiguous { .. },
            ..
        })
    ));
    assert!(matches!(
        s.on_end(&End {
            stream: 2,
            position: 48
        }),
        Err(ImportViolation::Position {
            frame: FrameType::End,
            ..
        })
    ));
    assert!(!s.on_data(&data(2, 64, 16)).unwrap().create_replica);
    s.data_applied(2, 80, 64 + CAP);
    assert_eq!(
        s.on_end(&End {
            stream: 2,
            position: 80
        }),
        Ok(EndPlan::Finish { position: 80 })
    );
    assert_eq!(
        outputs(&mut s).last(),
        Some(&Output::Ack(Ack {
            stream: 2,
            position: 80
        }))
    );
    for r in [
        s.on_data(&data(2, 80, 16)).map(|_| ()),
        s.on_gap(&gap(2, 80, 96, 1)).map(|_| ()),
        s.on_end(&End {
            stream: 2,
            position: 80,
        })
        .map(|_| ()),
    ] {
        assert!(matches!(
            r,
            Err(ImportViolation::AfterEnd { stream: 2, .. })
        ));
    }
    assert!(!s.is_subscribed(2));
    assert_eq!(
        ImportViolation::NotSubscribed {
            frame: FrameType::Data,
            stream: 1
        }
        .code(),
        ErrorCode::UnknownStream
    );
}

#[test]
fn a_stream_marked_ended_is_refused_when_announced_again() {
    let mut s = ImportSession::new();
    s.on_announce(4).unwrap();
    assert_eq!(
        s.subscribe(4, Resume::Oldest, CAP, true),
        Err(Refusal::Ended)
    );
    assert!(outputs(&mut s).is_empty(), "no SUBSCRIBE");
    assert!(matches!(
        s.on_data(&data(4, 0, 16)),
        Err(ImportViolation::NotSubscribed { .. })
    ));
}

#[test]
fn a_gap_within_the_credit_is_applied_at_once_and_credit_follows() {
    let mut s = at(1, 0, CAP);
    s.on_data(&data(1, 0, 1024)).unwrap();
    s.data_applied(1, 1024, CAP);
    outputs(&mut s);
    assert_eq!(
        s.on_gap(&gap(1, 1024, 2048, 40)),
        Ok(GapPlan::Apply {
            gap: gap(1, 1024, 2048, 40),
            within_room: true
        })
    );
    assert_eq!(s.gap_applied(1, CAP + 2048), None);
    let out = outputs(&mut s);
    assert_eq!(acks(&out), [(1, 2048)]);
    assert_eq!(credits(&out), [(1, CAP + 2048)]);
    assert!(s.on_data(&data(1, 2048, 16)).is_ok());
}

#[test]
fn a_gap_beyond_the_credit_waits_merges_and_blocks_data() {
    let mut s = at(1, 0, 1024);
    s.on_data(&data(1, 0, 1024)).unwrap();
    s.data_applied(1, 1024, 1024);
    outputs(&mut s);
    assert_eq!(s.on_gap(&gap(1, 1024, 3072, 10)), Ok(GapPlan::Wait));
    // The next GAP starts where the pending one ends: merged.
    assert_eq!(s.on_gap(&gap(1, 3072, 5120, 20)), Ok(GapPlan::Wait));
    assert_eq!(
        s.pending_gaps().collect::<Vec<_>>(),
        [gap(1, 1024, 5120, 20)]
    );
    // A GAP that does not continue the pending one is refused.
    assert!(matches!(
        s.on_gap(&gap(1, 3072, 6144, 30)),
        Err(ImportViolation::Position { .. })
    ));
    // DATA after the gap needs credit past its end: refused.
    assert!(matches!(
        s.on_data(&data(1, 5120, 16)),
        Err(ImportViolation::BeyondCredit { .. })
    ));
    // No credit while the gap waits, even if room grows.
    s.room(1, 2048);
    assert!(credits(&outputs(&mut s)).is_empty());
    assert!(s.wants_room(1));
    assert_eq!(s.gap_applied(1, 5120 + 1024), None);
    let out = outputs(&mut s);
    assert_eq!(acks(&out), [(1, 5120)]);
    assert_eq!(credits(&out), [(1, 6144)]);
    assert_eq!(s.pending_gaps().count(), 0);
    assert!(s.on_data(&data(1, 5120, 1024)).is_ok());
}

#[test]
fn end_after_a_pending_gap_applies_the_gap_first() {
    let mut s = at(1, 0, 1024);
    s.on_data(&data(1, 0, 1024)).unwrap();
    s.data_applied(1, 1024, 1024);
    outputs(&mut s);
    assert_eq!(s.on_gap(&gap(1, 1024, 4096, 9)), Ok(GapPlan::Wait));
    // END must be at the gap's end.
    assert!(matches!(
        s.on_end(&End {
            stream: 1,
            position: 1024
        }),
        Err(ImportViolation::Position { .. })
    ));
    assert_eq!(
        s.on_end(&End {
            stream: 1,
            position: 4096
        }),
        Ok(EndPlan::AfterGap)
    );
    // Nothing more is legal, and no ACK of the end yet.
    assert!(matches!(
        s.on_gap(&gap(1, 4096, 8192, 9)),
        Err(ImportViolation::AfterEnd { .. })
    ));
    assert!(acks(&outputs(&mut s)).is_empty());
    assert_eq!(
        s.gap_applied(1, 4096),
        Some(End {
            stream: 1,
            position: 4096
        })
    );
    let out = outputs(&mut s);
    assert_eq!(acks(&out), [(1, 4096), (1, 4096)]);
    assert!(credits(&out).is_empty());
    assert!(!s.is_subscribed(1));
}

#[test]
fn a_first_gap_creates_the_replica_at_its_end() {
    let mut s = ImportSession::new();
    s.on_announce(1).unwrap();
    s.subscribe(1, Resume::Oldest, CAP, false).unwrap();
    outputs(&mut s);
    assert_eq!(
        s.on_gap(&gap(1, 160, 100_000, 77)),
        Ok(GapPlan::Apply {
            gap: gap(1, 160, 100_000, 77),
            within_room: true
        })
    );
    assert_eq!(s.gap_applied(1, 100_000 + CAP), None);
    let out = outputs(&mut s);
    assert_eq!(acks(&out), [(1, 100_000)]);
    assert_eq!(credits(&out), [(1, 100_000 + CAP)]);
    let plan = s.on_data(&data(1, 100_000 - 160 + 160, 1024)).unwrap();
    assert!(!plan.create_replica);
}

#[test]
fn a_gap_longer_than_the_ring_is_tried_at_once_but_may_wait() {
    let mut s = at(1, 0, 1024);
    s.on_data(&data(1, 0, 1024)).unwrap();
    s.data_applied(1, 1024, 1024);
    outputs(&mut s);
    // Past the credit, but longer than the ring: a new replica continues
    // at its end, so only a gap record needs room in this one.
    let long = gap(1, 1024, 1024 + CAP + 16, 500);
    assert_eq!(
        s.on_gap(&long),
        Ok(GapPlan::Apply {
            gap: long,
            within_room: false
        })
    );
    // No room for it now: it stays pending and is retried.
    assert_eq!(s.pending_gaps().collect::<Vec<_>>(), [long]);
    assert!(s.wants_room(1));
    // Applied in a new replica with a whole ring of room.
    assert_eq!(s.gap_applied(1, long.to + CAP), None);
    assert_eq!(credits(&outputs(&mut s)), [(1, long.to + CAP)]);
}

/// A peer cannot grow the per-connection stream map without bound, even
/// with ids this bridge ignores.
#[test]
fn announcing_more_streams_than_any_catalog_holds_is_refused() {
    let mut s = ImportSession::new();
    for id in 0..MAX_ANNOUNCED_STREAMS as u32 {
        s.on_announce(id).unwrap();
        s.ignore(id);
    }
    let err = s.on_announce(MAX_ANNOUNCED_STREAMS as u32).unwrap_err();
    assert_eq!(err, ImportViolation::TooManyStreams);
    assert_eq!(err.code(), ErrorCode::NotAllowed);
    // The ids already known still answer as before.
    assert_eq!(
        s.on_announce(7).unwrap_err(),
        ImportViolation::AnnouncedTwice { stream: 7 }
    );
}
