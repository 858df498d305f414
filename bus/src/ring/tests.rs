//! The ring algorithm over heap memory: single-threaded edge cases and
//! multi-threaded runs (the loom models are in `loom_tests.rs`).

use std::{sync::Arc, thread, time::Duration};

use super::{
    gate::{JoinAt, LIVENESS_INTERVAL},
    heap::HeapSegment,
    reader::{Peek, ReadFault, ReaderCore, RecordRef},
    writer::{ReserveFail, WriterCore},
    Geometry, Policy, View,
};
use crate::{layout::record_size, sync::Ordering};

type Seg = Arc<HeapSegment>;

fn segment(capacity: u64, policy: Policy, evict_after: Option<Duration>) -> Seg {
    Arc::new(HeapSegment::new(
        Geometry {
            capacity,
            max_message: capacity / 2 - 16,
            policy,
            evict_after,
        },
        4,
    ))
}

/// A payload that encodes its sequence number and length in every byte.
fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

fn write(w: &mut WriterCore<Seg>, seq: u64, len: usize) -> Result<(), ReserveFail> {
    let r = w.reserve(len as u64)?;
    w.write_payload(&r, &payload(seq, len));
    w.commit(r, len as u64);
    w.publish();
    Ok(())
}

fn read_payload(r: &ReaderCore<Seg>, rec: &RecordRef) -> Vec<u8> {
    let mut buf = vec![0; rec.len as usize];
    // SAFETY: `rec` came from `peek`, so its payload is inside the ring.
    unsafe { r.view.read_payload(rec.payload_offset, &mut buf) };
    buf
}

fn join(seg: &Seg, pid: u64, at: JoinAt) -> ReaderCore<Seg> {
    ReaderCore::join(seg.clone(), at, pid, 1, 0).expect("free slot")
}

#[test]
fn records_round_trip_across_many_wraps() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = WriterCore::new(seg.clone());
    let mut r = join(&seg, 1, JoinAt::Latest);
    for (seq, round) in (0..500usize).enumerate() {
        let seq = seq as u64;
        let len = (round * 37) % 700;
        write(&mut w, seq, len).unwrap();
        match r.peek().unwrap() {
            Peek::Record(rec) => {
                assert_eq!(rec.len as usize, len);
                assert_eq!(u64::from(rec.seq), seq);
                assert_eq!(read_payload(&r, &rec), payload(seq, len));
                r.consume_to(rec.end, rec.seq.wrapping_add(1));
            }
            other => panic!("expected a record, got {other:?}"),
        }
        assert_eq!(r.peek().unwrap(), Peek::Empty);
    }
    assert!(w.tail() > 20 * 4096, "wrapped many times");
}

#[test]
fn block_policy_reports_full_and_recovers() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = WriterCore::new(seg.clone());
    let mut r = join(&seg, 1, JoinAt::Latest);
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
    r.consume_to(rec.end, rec.seq.wrapping_add(1));
    write(&mut w, written, 100).unwrap();
    for seq in 1..=written {
        let Peek::Record(rec) = r.peek().unwrap() else {
            panic!("seq {seq}")
        };
        assert_eq!(u64::from(rec.seq), seq);
        assert_eq!(read_payload(&r, &rec), payload(seq, 100));
        r.consume_to(rec.end, rec.seq.wrapping_add(1));
    }
    assert_eq!(r.peek().unwrap(), Peek::Empty);
}

#[test]
fn no_subscriber_never_blocks_and_oldest_join_gets_history() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = WriterCore::new(seg.clone());
    for seq in 0..1000 {
        write(&mut w, seq, 48).unwrap();
    }
    let mut r = join(&seg, 1, JoinAt::Oldest);
    let mut first = None;
    let mut count = 0;
    while let Peek::Record(rec) = r.peek().unwrap() {
        first.get_or_insert(rec.seq);
        assert_eq!(read_payload(&r, &rec), payload(u64::from(rec.seq), 48));
        r.consume_to(rec.end, rec.seq.wrapping_add(1));
        count += 1;
    }
    let first = u64::from(first.unwrap());
    assert_eq!(first + count, 1000, "history runs up to the newest record");
    assert!(
        count * record_size(48) >= 4096 / 2,
        "at least half a ring of history"
    );
}

#[test]
fn overwrite_reader_reports_exact_loss() {
    let seg = segment(4096, Policy::Overwrite, None);
    let mut w = WriterCore::new(seg.clone());
    let mut r = join(&seg, 1, JoinAt::Latest);
    for seq in 0..200 {
        write(&mut w, seq, 40).unwrap();
    }
    let (mut received, mut lost) = (0u64, 0u64);
    let mut last = None;
    loop {
        match r.peek().unwrap() {
            Peek::Record(rec) => {
                let mut buf = vec![0; rec.len as usize];
                match r.copy_validated(&rec, &mut buf) {
                    Peek::Record(rec) => {
                        assert_eq!(buf, payload(u64::from(rec.seq), 40));
                        if let Some(prev) = last {
                            assert!(rec.seq > prev);
                        }
                        last = Some(rec.seq);
                        r.consume_to(rec.end, rec.seq.wrapping_add(1));
                        received += 1;
                    }
                    Peek::Gap { messages, .. } => lost += messages,
                    Peek::Empty => {}
                }
            }
            Peek::Gap { messages, bytes } => {
                assert!(bytes > 0);
                lost += messages;
            }
            Peek::Empty => break,
        }
    }
    assert_eq!(received + lost, 200);
    assert!(lost > 0 && received > 0);
    assert_eq!(last, Some(199));
}

#[test]
fn dead_subscriber_is_reaped_when_writer_blocks() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = WriterCore::new(seg.clone());
    let _r = join(&seg, 42, JoinAt::Latest);
    let mut n = 0;
    while write(&mut w, n, 200).is_ok() {
        n += 1;
    }
    seg.kill(42);
    thread::sleep(LIVENESS_INTERVAL);
    write(&mut w, n, 200).expect("the dead subscriber no longer gates");
    assert_eq!(seg.control().evictions.load(Ordering::Relaxed), 1);
}

#[test]
fn lagging_subscriber_is_evicted_but_never_while_holding() {
    let seg = segment(4096, Policy::Block, Some(Duration::ZERO));
    let mut w = WriterCore::new(seg.clone());
    let mut r = join(&seg, 7, JoinAt::Latest);
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
    assert_eq!(r.slot_status(), super::gate::SlotStatus::Evicted);
    r.consume_to(rec.end, rec.seq.wrapping_add(1));
    // The hold is over: now the writer may pass it.
    write(&mut w, n, 100).expect("evicted subscriber no longer gates");
    assert_eq!(r.begin_hold(), Err(ReadFault::Evicted));
}

#[test]
fn corrupt_ring_gives_errors_not_panics() {
    let seg = segment(4096, Policy::Block, None);
    let mut w = WriterCore::new(seg.clone());
    let mut r = join(&seg, 1, JoinAt::Latest);
    write(&mut w, 0, 32).unwrap();
    // A stamp that claims the record but with an absurd length.
    seg.word(8).store(u64::from(u32::MAX), Ordering::Relaxed);
    assert!(matches!(r.peek(), Err(ReadFault::Corrupt { .. })));
    // A foreign stamp where the writer has not been.
    let seg = segment(4096, Policy::Block, None);
    let mut r = join(&seg, 1, JoinAt::Latest);
    seg.word(0).store(0xdead_beef_0000_0000, Ordering::Relaxed);
    assert!(matches!(r.peek(), Err(ReadFault::Corrupt { .. })));
    // Published tail with no stamp behind it.
    let seg = segment(4096, Policy::Block, None);
    let mut r = join(&seg, 1, JoinAt::Latest);
    seg.control().tail.store(64, Ordering::Relaxed);
    assert!(matches!(r.verify_empty(), Err(ReadFault::Corrupt { .. })));
}

#[test]
fn threads_block_policy_exactly_once_in_order() {
    const N: u64 = if cfg!(miri) { 200 } else { 200_000 };
    let seg = segment(1 << 16, Policy::Block, None);
    let readers: Vec<_> = (0..2).map(|i| join(&seg, 10 + i, JoinAt::Latest)).collect();
    let mut w = WriterCore::new(seg.clone());
    let handles: Vec<_> = readers
        .into_iter()
        .map(|mut r| {
            thread::spawn(move || {
                let mut next = 0u64;
                while next < N {
                    match r.peek().unwrap() {
                        Peek::Record(rec) => {
                            assert_eq!(u64::from(rec.seq), next & 0xffff_ffff);
                            let len = (next % 300) as usize;
                            assert_eq!(read_payload(&r, &rec), payload(next, len));
                            r.consume_to(rec.end, rec.seq.wrapping_add(1));
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
    let mut r = join(&seg, 1, JoinAt::Latest);
    let mut w = WriterCore::new(seg.clone());
    let reader = thread::spawn(move || {
        let (mut received, mut lost) = (0u64, 0u64);
        loop {
            match r.peek().unwrap() {
                Peek::Record(rec) => {
                    let mut buf = vec![0; rec.len as usize];
                    match r.copy_validated(&rec, &mut buf) {
                        Peek::Record(rec) => {
                            assert_eq!(buf, payload(u64::from(rec.seq), rec.len as usize), "torn");
                            r.consume_to(rec.end, rec.seq.wrapping_add(1));
                            received += 1;
                            if u64::from(rec.seq) == N - 1 {
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
