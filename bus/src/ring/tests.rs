//! The ring algorithm over heap memory: single-threaded edge cases and
//! multi-threaded runs (the loom models are in `loom_tests.rs`).

use std::{sync::Arc, thread, time::Duration};

use super::{
    gate::{self, JoinAt, JoinRequest, SlotStatus, LIVENESS_INTERVAL},
    heap::{self, HeapSegment, HeapView},
    reader::{Peek, ReadFault, ReaderCore, RecordRef},
    writer::{ReserveFail, Skip, WriterCore},
    Geometry, Policy, View,
};
use crate::{
    layout::{record_size, SLOT_ORPHANED, SLOT_STATE_MASK},
    sync::{untracked, Ordering},
};

type Seg = Arc<HeapSegment>;

fn segment(capacity: u64, policy: Policy, evict_after: Option<Duration>) -> Seg {
    HeapSegment::new(
        Geometry {
            capacity,
            max_message: capacity / 2 - 16,
            policy,
            evict_after,
        },
        4,
    )
}

/// A payload that encodes its sequence number and length in every byte.
fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

fn writer(seg: &Seg) -> WriterCore<HeapView> {
    WriterCore::new(heap::view(seg))
}

fn write(w: &mut WriterCore<HeapView>, seq: u64, len: usize) -> Result<(), ReserveFail> {
    let r = w.reserve(len as u64)?;
    w.write_payload(&r, &payload(seq, len));
    w.commit(r, len as u64);
    w.publish();
    Ok(())
}

fn read_payload(r: &ReaderCore<HeapView>, rec: &RecordRef) -> Vec<u8> {
    let mut buf = vec![0; rec.len as usize];
    // SAFETY: `rec` came from `peek`, so its payload is inside the ring.
    unsafe { r.view.read_payload(rec.payload_offset, &mut buf) };
    buf
}

fn request(at: JoinAt) -> JoinRequest {
    JoinRequest {
        at,
        tethered: true,
        durable: None,
        pid: 1,
        start_time: 1,
    }
}

fn join(seg: &Seg, at: JoinAt) -> ReaderCore<HeapView> {
    ReaderCore::join(heap::view(seg), &request(at))
        .expect("no fault")
        .expect("free slot")
}

/// Reads the next record and consumes it; panics on anything else.
fn next(r: &mut ReaderCore<HeapView>) -> (u64, Vec<u8>) {
    match r.peek().unwrap() {
        Peek::Record(rec) => {
            let data = read_payload(r, &rec);
            r.consume_to(rec.end, rec.seq + 1);
            (rec.seq, data)
        }
        other => panic!("expected a record, got {other:?}"),
    }
}

/// The reader's owner dies: its locks go (the kernel's job), its handle
/// is never dropped (a dead process runs no destructor).
fn crash(seg: &Seg, r: ReaderCore<HeapView>) {
    seg.crash(r.view.owner);
    std::mem::forget(r);
}

/// Reads a lappable reader (Overwrite, observer) dry with validated copies,
/// checking every payload. Returns (sequence numbers received, messages
/// reported lost).
fn copy_all(r: &mut ReaderCore<HeapView>) -> (Vec<u64>, u64) {
    let (mut received, mut lost) = (Vec::new(), 0u64);
    loop {
        match r.peek().unwrap() {
            Peek::Record(rec) => {
                let mut buf = vec![0; rec.len as usize];
                match r.copy_validated(&rec, &mut buf).unwrap() {
                    Peek::Record(rec) => {
                        assert_eq!(buf, payload(rec.seq, rec.len as usize), "torn copy");
                        r.consume_to(rec.end, rec.seq + 1);
                        received.push(rec.seq);
                    }
                    Peek::Gap { messages, .. } => lost += messages,
                    Peek::Empty => {}
                }
            }
            Peek::Gap { messages, bytes } => {
                assert!(bytes > 0 || messages > 0);
                lost += messages;
            }
            Peek::Empty => return (received, lost),
        }
    }
}

#[test]
fn records_round_trip_across_many_wraps() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = writer(&seg);
    let mut r = join(&seg, JoinAt::Latest);
    for seq in 0..500u64 {
        let len = (seq as usize * 37) % 700;
        write(&mut w, seq, len).unwrap();
        assert_eq!(next(&mut r), (seq, payload(seq, len)));
        assert_eq!(r.peek().unwrap(), Peek::Empty);
    }
    assert!(w.tail() > 20 * 4096, "wrapped many times");
}

#[test]
fn block_policy_reports_full_and_recovers() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = writer(&seg);
    let mut r = join(&seg, JoinAt::Latest);
    let mut written = 0u64;
    while write(&mut w, written, 100).is_ok() {
        written += 1;
    }
    assert_eq!(written, 4096 / record_size(100), "exactly a ring full");
    assert_eq!(write(&mut w, written, 100), Err(ReserveFail::Full));
    assert_eq!(w.reserve(4096), Err(ReserveFail::TooLarge));
    // Consume one: one more fits, and nothing was overwritten.
    let Peek::Record(rec) = r.peek().unwrap() else {
        panic!()
    };
    assert_eq!(read_payload(&r, &rec), payload(0, 100));
    r.consume_to(rec.end, rec.seq + 1);
    write(&mut w, written, 100).unwrap();
    for seq in 1..=written {
        let Peek::Record(rec) = r.peek().unwrap() else {
            panic!("seq {seq}")
        };
        assert_eq!(rec.seq, seq);
        assert_eq!(read_payload(&r, &rec), payload(seq, 100));
        r.consume_to(rec.end, rec.seq + 1);
    }
    assert_eq!(r.peek().unwrap(), Peek::Empty);
}

#[test]
fn no_subscriber_never_blocks_and_oldest_join_gets_history() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = writer(&seg);
    for seq in 0..1000 {
        write(&mut w, seq, 48).unwrap();
    }
    let mut r = join(&seg, JoinAt::Oldest);
    let mut first = None;
    let mut count = 0;
    while let Peek::Record(rec) = r.peek().unwrap() {
        first.get_or_insert(rec.seq);
        assert_eq!(read_payload(&r, &rec), payload(rec.seq, 48));
        r.consume_to(rec.end, rec.seq + 1);
        count += 1;
    }
    let first = first.unwrap();
    assert_eq!(first + count, 1000, "history runs up to the newest record");
    assert!(
        count * record_size(48) >= 4096 / 2,
        "at least half a ring of history"
    );
}

#[test]
fn overwrite_reader_reports_exact_loss() {
    let seg = segment(4096, Policy::Overwrite, None);
    let mut w = writer(&seg);
    let mut r = join(&seg, JoinAt::Latest);
    for seq in 0..200 {
        write(&mut w, seq, 40).unwrap();
    }
    let (received, lost) = copy_all(&mut r);
    assert!(received.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(received.len() as u64 + lost, 200);
    assert!(lost > 0 && !received.is_empty());
    assert_eq!(received.last(), Some(&199));
}

#[test]
fn dead_subscriber_is_reaped_when_writer_blocks() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = writer(&seg);
    let r = join(&seg, JoinAt::Latest);
    let mut n = 0;
    while write(&mut w, n, 200).is_ok() {
        n += 1;
    }
    // Alive: blocked, however often the writer looks.
    seg.advance_clock(LIVENESS_INTERVAL * 10);
    assert_eq!(write(&mut w, n, 200), Err(ReserveFail::Full));
    crash(&seg, r);
    seg.advance_clock(LIVENESS_INTERVAL);
    write(&mut w, n, 200).expect("the dead subscriber no longer gates");
    assert_eq!(seg.producer_evictions(), 1);
}

#[test]
fn slot_claims_are_exclusive_and_never_repeat() {
    let seg = segment(4096, Policy::Block, None);
    let _w = writer(&seg);
    let mut seen = std::collections::HashSet::new();
    let mut live = Vec::new();
    for round in 0..40 {
        // Fill the table, crash some owners, leave others cleanly.
        while let Some(r) = ReaderCore::join(heap::view(&seg), &request(JoinAt::Latest)).unwrap() {
            let c = *r.claim().unwrap();
            assert!(
                seen.insert((c.index, c.generation())),
                "{c:?} handed out twice"
            );
            live.push(r);
        }
        assert_eq!(live.len(), 4, "every slot taken by a live owner");
        let victim = live.remove(round % live.len());
        if round % 2 == 0 {
            crash(&seg, victim);
        } else {
            drop(victim);
        }
    }
    // A live owner's slot is never taken: the survivors still own theirs.
    for r in &live {
        assert_eq!(r.slot_status(), SlotStatus::Active);
    }
}

#[test]
fn registered_subscriber_is_prejoined_from_the_first_record() {
    let seg = segment(4096, Policy::Block, None);
    seg.set_registered(3, 9, true);
    let prejoined = gate::prejoin(&heap::view(&seg), &[(3, 9)], 0, Some(0));
    assert_eq!(prejoined, 1);
    let mut w = writer(&seg);
    let mut n = 0;
    while write(&mut w, n, 100).is_ok() {
        n += 1;
    }
    assert_eq!(n, 4096 / record_size(100), "the pre-joined slot gates");
    // Another subscriber's registration cannot adopt it.
    let req = request(JoinAt::Latest);
    assert!(matches!(
        ReaderCore::adopt(heap::view(&seg), &req, 3, 8).unwrap(),
        Err((_, false))
    ));
    let Ok(mut r) = ReaderCore::adopt(heap::view(&seg), &req, 3, 9).unwrap() else {
        panic!("adopt")
    };
    for seq in 0..n {
        assert_eq!(next(&mut r), (seq, payload(seq, 100)));
    }
}

#[test]
fn prejoined_slot_of_a_gone_registration_is_reaped() {
    let seg = segment(4096, Policy::Block, None);
    seg.set_registered(0, 1, true);
    gate::prejoin(&heap::view(&seg), &[(0, 1)], 0, Some(0));
    let mut w = writer(&seg);
    while write(&mut w, 0, 100).is_ok() {}
    seg.advance_clock(LIVENESS_INTERVAL);
    assert_eq!(
        write(&mut w, 0, 100),
        Err(ReserveFail::Full),
        "alive: gates"
    );
    seg.set_registered(0, 1, false);
    seg.advance_clock(LIVENESS_INTERVAL);
    write(&mut w, 0, 100).expect("gone registration no longer gates");
}

/// Found by kill chaos (issue 13): a pre-joined slot evicted for lag before
/// its subscriber adopted it has no lock owner, so a sweep (or a joiner)
/// took it for a dead owner's slot and freed it; the subscriber then joined
/// the ring afresh at its oldest record with no `Evicted`, silently missing
/// the messages before. While its registration lives, it stays for the
/// subscriber to learn of the eviction.
#[test]
fn evicted_prejoined_slot_waits_for_its_live_registration() {
    let evict_after = Duration::from_secs(1);
    // A full ring whose only gate, a pre-joined slot, is then evicted.
    let evicted = || {
        let seg = segment(4096, Policy::Block, Some(evict_after));
        seg.set_registered(2, 5, true);
        gate::prejoin(&heap::view(&seg), &[(2, 5)], 0, Some(0));
        let mut w = writer(&seg);
        let mut n = 0;
        while write(&mut w, n, 100).is_ok() {
            n += 1;
        }
        seg.advance_clock(evict_after * 2);
        write(&mut w, n, 100).expect("the lagging pre-joined slot is evicted");
        (seg, w)
    };
    let (seg, _w) = evicted();
    let view = heap::view(&seg);
    // A sweep (of a ring whose publisher is gone) and a joiner that finds
    // no free slot must both leave it alone.
    for index in 0..4 {
        let state = view.slots()[index].state.load(Ordering::Acquire);
        assert!(!gate::reap_if_dead(&view, index, state, view.now_ns()));
    }
    assert!(gate::any_slot_needs_data(&view, |_| false));
    let others: Vec<_> = (0..3).map(|_| join(&seg, JoinAt::Latest)).collect();
    assert!(
        gate::join(&view, &request(JoinAt::Latest))
            .unwrap()
            .is_none(),
        "the last slot is the evicted pre-joined one: not free"
    );
    let req = request(JoinAt::Oldest);
    assert!(
        matches!(
            ReaderCore::adopt(heap::view(&seg), &req, 2, 5).unwrap(),
            Err((_, true))
        ),
        "the subscriber learns of its eviction"
    );
    drop(others);
    // Once its registration is gone, it is an ordinary dead slot.
    let (seg, _w) = evicted();
    seg.set_registered(2, 5, false);
    let view = heap::view(&seg);
    let state = view.slots()[0].state.load(Ordering::Acquire);
    assert!(gate::reap_if_dead(&view, 0, state, view.now_ns()));
}

#[test]
fn durable_slot_survives_its_owner_for_the_lease_then_reports_exact_loss() {
    let seg = segment(4096, Policy::Block, None);
    let lease = Duration::from_secs(5);
    let durable = JoinRequest {
        durable: Some((77, lease.as_nanos() as u64)),
        ..request(JoinAt::Latest)
    };
    let mut r = ReaderCore::join(heap::view(&seg), &durable)
        .unwrap()
        .unwrap();
    let mut w = writer(&seg);
    for seq in 0..5 {
        write(&mut w, seq, 100).unwrap();
    }
    for seq in 0..2 {
        assert_eq!(next(&mut r).0, seq);
    }
    crash(&seg, r);
    // Within the lease the dead owner's slot keeps gating.
    while write(&mut w, 99, 100).is_ok() {}
    seg.advance_clock(LIVENESS_INTERVAL);
    assert_eq!(write(&mut w, 99, 100), Err(ReserveFail::Full));
    let state = seg.slot_state(0);
    assert_eq!(state & SLOT_STATE_MASK, SLOT_ORPHANED);
    // A restarted owner reattaches where it was: nothing lost.
    let mut r = ReaderCore::join(heap::view(&seg), &durable)
        .unwrap()
        .unwrap();
    assert_eq!(r.position(), 2 * record_size(100));
    assert_eq!(next(&mut r).0, 2);
    crash(&seg, r);
    // After the lease the slot is reaped and the writer moves on.
    seg.advance_clock(lease + LIVENESS_INTERVAL);
    write(&mut w, 99, 100).expect("lease over: no longer gates");
}

#[test]
fn gap_records_report_exact_counts_beyond_32_bits() {
    let seg = segment(4096, Policy::Block, None);
    let start = (1u64 << 32) - 2;
    let mut w = WriterCore::new_at(heap::view(&seg), 0, Some(start));
    let mut r = join(&seg, JoinAt::Latest);
    write(&mut w, 1, 24).unwrap();
    let lost = (1u64 << 33) + 7;
    let g = w.reserve(8).unwrap();
    w.commit_gap(g, lost);
    w.publish();
    write(&mut w, 2, 24).unwrap();
    assert_eq!(next(&mut r).0, start);
    assert_eq!(
        r.peek().unwrap(),
        Peek::Gap {
            messages: lost,
            bytes: 0
        }
    );
    assert_eq!(next(&mut r).0, start + 1 + lost);
}

#[test]
fn overwrite_loss_is_exact_across_the_32_bit_wrap() {
    let seg = segment(4096, Policy::Overwrite, None);
    let start = u64::from(u32::MAX) - 50;
    let mut w = WriterCore::new_at(heap::view(&seg), 0, Some(start));
    let mut r = join(&seg, JoinAt::Latest);
    for i in 0..400 {
        write(&mut w, start + i, 40).unwrap();
    }
    let (received, lost) = copy_all(&mut r);
    assert_eq!(received.len() as u64 + lost, 400);
    assert_eq!(
        received.last(),
        Some(&(start + 399)),
        "64-bit sequence numbers past 2^32"
    );
}

#[test]
fn observer_never_gates_and_reads_validated_copies() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = writer(&seg);
    let mut o = ReaderCore::observer(heap::view(&seg), JoinAt::Latest).unwrap();
    for seq in 0..10 {
        write(&mut w, seq, 64).unwrap();
    }
    let Peek::Record(rec) = o.peek().unwrap() else {
        panic!()
    };
    let mut buf = vec![0; 64];
    let Peek::Record(rec) = o.copy_validated(&rec, &mut buf).unwrap() else {
        panic!()
    };
    assert_eq!((rec.seq, &buf), (0, &payload(0, 64)));
    o.consume_to(rec.end, rec.seq + 1);
    // The writer laps the observer freely...
    for seq in 10..500 {
        write(&mut w, seq, 64).expect("an observer never holds the writer back");
    }
    // ...and the observer learns exactly how much it missed: the validated
    // copy of the next record reports the gap first, then the record.
    let Peek::Record(rec) = o.peek().unwrap() else {
        panic!()
    };
    let Peek::Gap { messages, .. } = o.copy_validated(&rec, &mut buf).unwrap() else {
        panic!()
    };
    let Peek::Record(rec) = o.copy_validated(&rec, &mut buf).unwrap() else {
        panic!()
    };
    assert_eq!(rec.seq, 1 + messages);
    assert_eq!(buf, payload(rec.seq, 64));
}

#[test]
fn sleeper_killed_asleep_gives_its_waiter_count_back() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = writer(&seg);
    let r = join(&seg, JoinAt::Latest);
    // The reader counts itself a waiter and "dies" asleep.
    let slot = &r.view.slots()[r.claim().unwrap().index];
    slot.sleeping.store(1, Ordering::Relaxed);
    seg.waiters_count_add(1);
    crash(&seg, r);
    // A ring and a bit: the writer blocks on the dead slot and reaps it.
    for _ in 0..2 * 4096 / record_size(100) {
        write(&mut w, 0, 100).unwrap();
    }
    assert_eq!(seg.producer_evictions(), 1);
    assert_eq!(seg.waiters_count(), 0, "the reaper took the count back");
}

#[test]
fn hostile_publisher_words_are_corrupt_naming_the_field() {
    type Damage = fn(&Seg);
    let cases: [(&str, Damage); 5] = [
        ("tail", |s| s.producer_store_tail(4096 + 8)),
        ("head", |s| s.producer_store_head(8)),
        ("head", |s| {
            s.producer_store_tail(64);
            s.producer_store_head(128);
        }),
        ("head", |s| s.producer_store_tail(3 * 4096)),
        ("limit", |s| s.producer_store_limit(24)),
    ];
    for (field, damage) in cases {
        let seg = segment(4096, Policy::Block, None);
        damage(&seg);
        match ReaderCore::join(heap::view(&seg), &request(JoinAt::Latest)) {
            Err(gate::JoinError::Corrupt(what)) => {
                assert!(what.starts_with(field), "{field}: {what}")
            }
            other => panic!(
                "{field}: expected Corrupt, got {:?}",
                other.map(|r| r.is_some())
            ),
        }
        // The failed join left its slot free and unlocked.
        assert!(join_ok(&seg), "{field}: the slot is free again");
    }
    // A damaged writer state is reported, not taken for a close.
    let seg = segment(4096, Policy::Block, None);
    let r = join(&seg, JoinAt::Latest);
    seg.producer_store_writer_state(7);
    assert!(matches!(
        r.writer_closed(),
        Err(ReadFault::Corrupt { what, .. }) if what.starts_with("writer_state")
    ));
}

fn join_ok(seg: &Seg) -> bool {
    (0..4).all(|i| seg.slot_state(i) & SLOT_STATE_MASK == 0) && seg.no_locks()
}

#[test]
fn lagging_subscriber_is_evicted_but_never_while_holding() {
    let seg = segment(4096, Policy::Block, Some(Duration::ZERO));
    let mut w = writer(&seg);
    let mut r = join(&seg, JoinAt::Latest);
    write(&mut w, 0, 100).unwrap();
    let Peek::Record(rec) = r.peek().unwrap() else {
        panic!()
    };
    r.begin_hold().unwrap();
    // Fill the ring; the writer evicts `r` but must keep gating the held record.
    let mut n = 1;
    while write(&mut w, n, 100).is_ok() {
        n += 1;
    }
    assert_eq!(
        read_payload(&r, &rec),
        payload(0, 100),
        "held record intact"
    );
    assert_eq!(r.slot_status(), SlotStatus::Evicted);
    r.consume_to(rec.end, rec.seq + 1);
    // The hold is over: now the writer may pass it.
    write(&mut w, n, 100).expect("evicted subscriber no longer gates");
    assert_eq!(r.begin_hold(), Err(ReadFault::Evicted));
}

#[test]
fn corrupt_ring_gives_errors_not_panics() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = writer(&seg);
    let mut r = join(&seg, JoinAt::Latest);
    write(&mut w, 0, 32).unwrap();
    // A stamp that claims the record but with an absurd length.
    seg.word_store(8, u64::from(u32::MAX));
    assert!(matches!(r.peek(), Err(ReadFault::Corrupt { .. })));
    // A foreign stamp where the writer has not been.
    let seg = segment(4096, Policy::Block, None);
    let mut r = join(&seg, JoinAt::Latest);
    seg.word_store(0, 0xdead_beef_0000_0000);
    assert!(matches!(r.peek(), Err(ReadFault::Corrupt { .. })));
    // Published tail with no stamp behind it.
    let seg = segment(4096, Policy::Block, None);
    let mut r = join(&seg, JoinAt::Latest);
    seg.producer_store_tail(64);
    assert!(matches!(
        r.verify_empty(),
        Err(ReadFault::Corrupt { what, .. }) if what.starts_with("tail")
    ));
}

#[test]
fn writer_reports_its_own_damaged_records() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = writer(&seg);
    for seq in 0..20 {
        write(&mut w, seq, 100).unwrap();
    }
    // A record length changed under the writer (a same-user scribbler).
    seg.word_store(8, u64::from(u32::MAX - 5));
    let mut result = Ok(());
    for seq in 20..80 {
        result = write(&mut w, seq, 100);
        if result.is_err() {
            break;
        }
    }
    assert!(
        matches!(result, Err(ReserveFail::Corrupt { position: 0, .. })),
        "{result:?}"
    );
    assert!(
        w.tail() >= seg.producer_head(),
        "head never passes the tail"
    );
}

#[test]
fn threads_block_policy_exactly_once_in_order() {
    const N: u64 = if cfg!(miri) { 200 } else { 200_000 };
    let seg = segment(1 << 16, Policy::Block, None);
    let readers: Vec<_> = (0..2).map(|_| join(&seg, JoinAt::Latest)).collect();
    let mut w = writer(&seg);
    let handles: Vec<_> = readers
        .into_iter()
        .map(|mut r| {
            thread::spawn(move || {
                let mut next = 0u64;
                while next < N {
                    match r.peek().unwrap() {
                        Peek::Record(rec) => {
                            assert_eq!(rec.seq, next);
                            let len = (next % 300) as usize;
                            assert_eq!(read_payload(&r, &rec), payload(next, len));
                            r.consume_to(rec.end, rec.seq + 1);
                            next += 1;
                        }
                        Peek::Empty => std::hint::spin_loop(),
                        Peek::Gap { .. } => panic!("gap under Block"),
                    }
                }
            })
        })
        .collect();
    for seq in 0..N {
        while write(&mut w, seq, (seq % 300) as usize).is_err() {
            thread::yield_now();
        }
    }
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn threads_overwrite_policy_never_delivers_torn_data() {
    const N: u64 = if cfg!(miri) { 200 } else { 100_000 };
    let seg = segment(8192, Policy::Overwrite, None);
    let mut r = join(&seg, JoinAt::Latest);
    let mut w = writer(&seg);
    let reader = thread::spawn(move || {
        let (mut received, mut lost) = (0u64, 0u64);
        loop {
            match r.peek().unwrap() {
                Peek::Record(rec) => {
                    let mut buf = vec![0; rec.len as usize];
                    match r.copy_validated(&rec, &mut buf).unwrap() {
                        Peek::Record(rec) => {
                            assert_eq!(buf, payload(rec.seq, rec.len as usize), "torn");
                            r.consume_to(rec.end, rec.seq + 1);
                            received += 1;
                            if rec.seq == N - 1 {
                                return (received, lost);
                            }
                        }
                        Peek::Gap { messages, .. } => lost += messages,
                        Peek::Empty => {}
                    }
                }
                Peek::Gap { messages, .. } => lost += messages,
                Peek::Empty => std::hint::spin_loop(),
            }
        }
    });
    for seq in 0..N {
        write(&mut w, seq, 8 + (seq % 200) as usize).unwrap();
    }
    let (received, lost) = reader.join().unwrap();
    assert_eq!(received + lost, N);
}

#[test]
fn threads_joiners_at_latest_never_see_a_gap() {
    let seg = HeapSegment::new(
        Geometry {
            capacity: 4096,
            max_message: 1024,
            policy: Policy::Block,
            evict_after: None,
        },
        1,
    );
    let stop = Arc::new(untracked::AtomicU64::new(0));
    let writer = {
        let (seg, stop) = (seg.clone(), stop.clone());
        thread::spawn(move || {
            let mut w = WriterCore::new(heap::view(&seg));
            let mut seq = 0u64;
            while stop.load(untracked::Ordering::Relaxed) == 0 {
                match write(&mut w, seq, 8 + (seq % 100) as usize) {
                    Ok(()) => seq += 1,
                    Err(ReserveFail::Full) => {
                        seg.advance_clock(LIVENESS_INTERVAL);
                        thread::yield_now();
                    }
                    Err(e) => panic!("{e:?}"),
                }
            }
        })
    };
    for round in 0..3000u64 {
        let Some(mut r) = ReaderCore::join(heap::view(&seg), &request(JoinAt::Latest)).unwrap()
        else {
            thread::yield_now();
            continue;
        };
        let mut got = 0;
        while got < 1 + round % 5 {
            match r.peek().unwrap() {
                Peek::Record(rec) => {
                    assert_eq!(read_payload(&r, &rec), payload(rec.seq, rec.len as usize));
                    r.consume_to(rec.end, rec.seq + 1);
                    got += 1;
                }
                Peek::Empty => thread::yield_now(),
                Peek::Gap { messages, bytes } => {
                    panic!(
                        "round {round}: gap of {messages} ({bytes} bytes) at {}",
                        r.position()
                    )
                }
            }
        }
        if round % 3 == 0 {
            crash(&seg, r);
        }
    }
    stop.store(1, untracked::Ordering::Relaxed);
    writer.join().unwrap();
}

#[test]
fn prejoined_overwrite_reader_counts_what_it_lost_before_adopting() {
    let seg = segment(4096, Policy::Overwrite, None);
    seg.set_registered(1, 1, true);
    gate::prejoin(&heap::view(&seg), &[(1, 1)], 0, Some(0));
    let mut w = writer(&seg);
    for seq in 0..500 {
        write(&mut w, seq, 40).unwrap();
    }
    let Ok(mut r) = ReaderCore::adopt(heap::view(&seg), &request(JoinAt::Latest), 1, 1).unwrap()
    else {
        panic!("adopt")
    };
    let (received, lost) = copy_all(&mut r);
    let received = received.len() as u64;
    assert!(lost > 0);
    assert_eq!(
        received + lost,
        500,
        "everything from the first record is accounted for"
    );
}

#[test]
fn the_limit_never_moves_back_for_a_slot_caught_mid_join() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = writer(&seg);
    let mut r = join(&seg, JoinAt::Latest);
    for seq in 0..40 {
        write(&mut w, seq, 48).unwrap();
    }
    for _ in 0..40 {
        next(&mut r);
    }
    let room = w.room_until();
    let limit = room - 4096;
    assert!(limit > 0, "the reader released: the limit moved on");
    // A joiner between its slot store and its load of the published
    // limit: ACTIVE at the head (0), below the limit. By join-limit it will
    // load this limit or a later one and start there; the writer keeps the
    // room it promised.
    let view = heap::view(&seg);
    // The joiner holds its slot's lock: alive (a liveness probe keeps it).
    assert!(view.try_lock(crate::layout::slot_lock_byte(3)).unwrap());
    let slot = &view.slots()[3];
    slot.position.store(0, Ordering::Release);
    slot.state
        .store((7 << 8) | crate::layout::SLOT_ACTIVE, Ordering::Release);
    assert!(w.room_until() >= room, "a later call promises no less");
    assert!(view.producer().limit.load(Ordering::Acquire) >= limit);
    // The promise holds: a reservation up to it succeeds at once.
    let len = room - w.write_position() - 16;
    let reserved = w.reserve_raw(len.min(2048) & !15).expect("promised room");
    assert_eq!(reserved, w.write_position());
}

#[test]
fn room_until_asks_for_half_a_ring_before_it_counts_as_held_back() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = writer(&seg);
    let _r = join(&seg, JoinAt::Latest);
    // The subscriber reads nothing: the writer has the ring's room only.
    for seq in 0..20 {
        write(&mut w, seq, 48).unwrap();
    }
    assert_eq!(w.room_until(), 4096);
    let producer = heap::view(&seg);
    let wanted = |p: &HeapView| p.producer().space_wanted.load(Ordering::Relaxed);
    assert_eq!(wanted(&producer), 0, "more than half a ring is free");
    for seq in 20..40 {
        write(&mut w, seq, 48).unwrap();
    }
    assert_eq!(w.room_until(), 4096);
    assert_ne!(wanted(&producer), 0, "less than half a ring: held back");
}

/// Found by kill chaos (issue 13): an untethered slot pinned inside a
/// record held the gate there; the writer filled the ring exactly to the
/// gate and, as it must, did not clear the word where the next stamp goes
/// (it is held), so the caught-up reader found stale payload bytes there
/// and reported `Corrupt` ("an unpublished position holds a foreign
/// stamp"). Now a record never ends exactly at a gate that is not a record
/// boundary.
#[test]
fn a_gate_inside_a_record_never_shows_readers_a_foreign_stamp() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = writer(&seg);
    let mut fast = join(&seg, JoinAt::Latest);
    let untethered = JoinRequest {
        tethered: false,
        ..request(JoinAt::Latest)
    };
    let mut pinner = ReaderCore::join(heap::view(&seg), &untethered)
        .unwrap()
        .unwrap();
    write(&mut w, 0, 100).unwrap(); // [0, 128)
    assert_eq!(next(&mut fast).0, 0);
    assert_eq!(pinner.pin(48), 48, "pinned inside the first record");
    let mut seq = 1;
    while w.write_position() < 4096 {
        write(&mut w, seq, 100).unwrap();
        assert_eq!(next(&mut fast).0, seq);
        seq += 1;
    }
    // A 48-byte record would end exactly at the gate (48 + 4096).
    assert_eq!(write(&mut w, seq, 32), Err(ReserveFail::Full));
    assert!(matches!(fast.peek(), Ok(Peek::Empty)), "{:?}", fast.peek());
    assert!(matches!(fast.verify_empty(), Ok(Peek::Empty)));
    // Once the pin goes, everything flows in order.
    pinner.unpin();
    for _ in 0..100 {
        write(&mut w, seq, 32).unwrap();
        assert_eq!(next(&mut fast), (seq, payload(seq, 32)));
        seq += 1;
    }
}

/// The replica paths obey the same bound (noticed after the fix above): a
/// received chunk or a skip ending exactly at a gate inside a record would
/// leave the stale word where the next stamp goes, and `room_until` must
/// not promise that room.
#[test]
fn replica_chunks_and_skips_never_end_at_a_gate_inside_a_record() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = writer(&seg);
    let mut fast = join(&seg, JoinAt::Latest);
    let untethered = JoinRequest {
        tethered: false,
        ..request(JoinAt::Latest)
    };
    let mut pinner = ReaderCore::join(heap::view(&seg), &untethered)
        .unwrap()
        .unwrap();
    write(&mut w, 0, 100).unwrap(); // [0, 128)
    assert_eq!(next(&mut fast).0, 0);
    assert_eq!(pinner.pin(48), 48, "pinned inside the first record");
    let mut seq = 1;
    while w.write_position() < 4096 {
        write(&mut w, seq, 100).unwrap();
        assert_eq!(next(&mut fast).0, seq);
        seq += 1;
    }
    assert_eq!(w.write_position(), 4096);
    // The gate is at 48 + 4096, inside the record at [4096, ...) a lap on.
    assert_eq!(w.room_until(), 4096 + 48 - 16, "a header short of the gate");
    assert_eq!(
        w.reserve_raw(48),
        Err(ReserveFail::Full),
        "a chunk to the gate"
    );
    assert_eq!(w.reserve_raw(32).unwrap(), 4096, "a header short fits");
    // (That reservation is left uncommitted: the position did not move.)
    assert_eq!(
        w.try_skip_to(4096 + 48, seq),
        Ok(Skip::NoRoom),
        "a skip to the gate"
    );
    assert!(matches!(fast.peek(), Ok(Peek::Empty)), "{:?}", fast.peek());
    pinner.unpin();
    assert_eq!(w.try_skip_to(4096 + 48, seq), Ok(Skip::Done { lost: 0 }));
    write(&mut w, seq, 32).unwrap();
    assert_eq!(next(&mut fast), (seq, payload(seq, 32)));
}
