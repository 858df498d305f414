//! Loom models of the ring protocols. Run with `ci/loom.sh`, or
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom
//! cargo test -p shmbus-bus --release --lib loom`.
//!
//! Each model calls the production cores ([`WriterCore`], [`ReaderCore`],
//! [`gate`], [`notify`]) over a [`heap`] view. Rings are 64 bytes (two to
//! four records), so wrap-around, padding and the full ring happen within
//! the preemption bound. The ring is one array of atomic words shared by
//! stamps and payload (stale bytes of an earlier lap are really there to be
//! mistaken for a commit); in-place payload reads also go through loom's
//! race detector (see [`heap`]). No model reads a wall clock: liveness and
//! leases run on the heap view's logical clock, which the writer advances by
//! [`LIVENESS_INTERVAL`] each time it finds the ring full. `docs/loom.md`
//! lists what each model proves and which `SYNC:` orderings it carries.

use std::{sync::Arc, time::Duration};

use loom::thread;

use super::{
    gate::{self, JoinAt, JoinRequest, SlotStatus, LIVENESS_INTERVAL},
    heap::{self, catch_crash, HeapSegment, HeapView},
    reader::{Peek, ReadFault, ReaderCore},
    writer::{ReserveFail, Skip, WriterCore},
    Geometry, Policy, View,
};
use crate::{
    layout::{data_stamp, meta_word, GAP_PAYLOAD, SLOT_FREE, SLOT_STATE_MASK},
    shm::{
        futex::{self as notify, SleepEnd, Sleeper, WaitEnd},
        membarrier::{self, WakeHandshake},
    },
    sync::Ordering,
};

/// Runs a model. Spin-and-yield loops (a writer waiting for space, a joiner
/// for a slot) make long executions, so the branch limit is raised above
/// loom's default of 1000 (unless `LOOM_MAX_BRANCHES` says otherwise); the
/// preemption bound (`LOOM_MAX_PREEMPTIONS`) is what bounds the search.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_BRANCHES").is_none() {
        builder.max_branches = 20_000;
    }
    builder.check(f);
}

fn segment_with(policy: Policy, evict_after: Option<Duration>, slots: usize) -> Arc<HeapSegment> {
    HeapSegment::new(
        Geometry {
            capacity: 64,
            max_message: 16,
            policy,
            evict_after,
        },
        slots,
    )
}

fn segment(policy: Policy, evict_after: Option<Duration>) -> Arc<HeapSegment> {
    segment_with(policy, evict_after, 2)
}

fn request(at: JoinAt, tethered: bool, durable: Option<(u64, u64)>) -> JoinRequest {
    JoinRequest {
        at,
        tethered,
        durable,
        pid: 1,
        start_time: 1,
    }
}

fn join_as(seg: &Arc<HeapSegment>, at: JoinAt, tethered: bool) -> ReaderCore<HeapView> {
    ReaderCore::join(heap::view(seg), &request(at, tethered, None))
        .expect("no fault")
        .expect("free slot")
}

fn join(seg: &Arc<HeapSegment>, at: JoinAt) -> ReaderCore<HeapView> {
    join_as(seg, at, true)
}

/// The writer found the ring full: let logical time pass (liveness probes,
/// leases and eviction delays run on it) and let others run.
fn full(w: &WriterCore<HeapView>) {
    w.view.seg.advance_clock(LIVENESS_INTERVAL);
    thread::yield_now();
}

/// Writes one record of `len` bytes of `value`, waiting while the ring is full.
fn write_spin(w: &mut WriterCore<HeapView>, value: u8, len: usize) {
    loop {
        match w.reserve(len as u64) {
            Ok(r) => {
                w.write_payload(&r, &vec![value; len]);
                w.commit(r, len as u64);
                w.publish();
                return;
            }
            Err(ReserveFail::Full) => full(w),
            Err(e) => panic!("reserve failed: {e:?}"),
        }
    }
}

/// Spawns a writer of `values` (one `len`-byte record each).
fn spawn_writer(
    seg: &Arc<HeapSegment>,
    values: &'static [u8],
    len: usize,
) -> thread::JoinHandle<()> {
    let seg = seg.clone();
    thread::spawn(move || {
        let mut w = WriterCore::new(heap::view(&seg));
        for &v in values {
            write_spin(&mut w, v, len);
        }
    })
}

/// Reads the next record in place (as a Block subscriber does), checks it is
/// `len` bytes of one value and returns (value, sequence number).
fn read_one(r: &mut ReaderCore<HeapView>) -> (u8, u64) {
    loop {
        match r.peek().expect("no fault") {
            Peek::Record(rec) => {
                let mut buf = vec![0; rec.len as usize];
                // SAFETY: `rec` came from `peek`: in bounds.
                unsafe { r.view.read_in_place(rec.payload_offset, &mut buf) };
                let v = buf.first().copied().unwrap_or(0);
                assert!(buf.iter().all(|&b| b == v), "torn payload {buf:?}");
                r.consume_to(rec.end, rec.seq + 1);
                return (v, rec.seq);
            }
            Peek::Empty => thread::yield_now(),
            Peek::Gap { messages, bytes } => {
                panic!("gap under Block: {messages} messages, {bytes} bytes")
            }
        }
    }
}

/// Reads `n` records in place; returns their values, checking that their
/// sequence numbers are consecutive.
fn read_n(r: &mut ReaderCore<HeapView>, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut next = None;
    while out.len() < n {
        let (v, seq) = read_one(r);
        if let Some(next) = next {
            assert_eq!(seq, next, "sequence numbers skip");
        }
        next = Some(seq + 1);
        out.push(v);
    }
    out
}

// ---------------------------------------------------------------------------
// commit, tail-publish: visibility and wrap

/// SYNC: commit. A reader that sees a record's stamp sees its meta word and
/// payload (same words as the stamps: a stale lap's bytes are there), and
/// the cleared next stamp; across a wrap, in order, no record twice.
#[test]
fn loom_publish_consume_visibility_and_wrap() {
    model(|| {
        let seg = segment(Policy::Block, None);
        let mut r = join(&seg, JoinAt::Latest);
        // 32 + 32 + 32: the third record wraps onto the first's bytes.
        let writer = spawn_writer(&seg, &[1, 2, 3], 16);
        assert_eq!(read_n(&mut r, 3), [1, 2, 3]);
        writer.join().unwrap();
    });
}

/// SYNC: commit (padding). A record that does not fit before the ring's end
/// is preceded by a padding record; its reader skips the padding and reads
/// the record at offset 0, never the stale bytes there.
#[test]
fn loom_wrap_with_padding_record() {
    model(|| {
        let seg = segment(Policy::Block, None);
        let mut r = join(&seg, JoinAt::Latest);
        // 16 + 32 = 48 bytes, then a 32-byte record does not fit in the
        // last 16: padding, then offset 0.
        let writer = {
            let seg = seg.clone();
            thread::spawn(move || {
                let mut w = WriterCore::new(heap::view(&seg));
                write_spin(&mut w, 1, 0);
                write_spin(&mut w, 2, 16);
                write_spin(&mut w, 3, 16);
            })
        };
        assert_eq!(read_n(&mut r, 3), [0, 2, 3]);
        writer.join().unwrap();
    });
}

/// SYNC: commit (padding), with a padding record longer than its header (a
/// 128-byte ring, 48-byte messages: in 64 bytes a padding record is always a
/// bare header): records of 64 and 32 bytes, then one of 64 that does not
/// fit in the 32 left, so a 32-byte padding record precedes it. A reader
/// that sees the padding's stamp must see its meta word (the stale one
/// beside a cleared stamp there says length 0, not a valid padding).
#[test]
fn loom_wrap_with_long_padding_record() {
    model(|| {
        let seg = HeapSegment::new(
            Geometry {
                capacity: 128,
                max_message: 48,
                policy: Policy::Block,
                evict_after: None,
            },
            1,
        );
        let mut r = join(&seg, JoinAt::Latest);
        let writer = {
            let seg = seg.clone();
            thread::spawn(move || {
                let mut w = WriterCore::new(heap::view(&seg));
                write_spin(&mut w, 1, 48);
                write_spin(&mut w, 2, 16);
                write_spin(&mut w, 3, 48);
            })
        };
        assert_eq!(read_n(&mut r, 3), [1, 2, 3]);
        writer.join().unwrap();
    });
}

// ---------------------------------------------------------------------------
// join-limit, slot-claim, release-position: join and leave against the gate

/// SYNC: join-limit, slot-claim, tail-publish, head-advance. A subscriber
/// joining while the writer runs starts at a position the writer will not
/// overwrite: what it reads is intact, in order, with no gap.
#[test]
fn loom_join_races_the_gate() {
    model(|| {
        let seg = segment(Policy::Block, None);
        let writer = spawn_writer(&seg, &[1, 2, 3, 4], 8);
        let mut r = join(&seg, JoinAt::Oldest);
        let mut last = 0;
        let mut next = None;
        while last != 4 {
            let (v, seq) = read_one(&mut r);
            assert!(v > last, "out of order: {v} after {last}");
            assert_eq!(u64::from(v), seq + 1, "payload of another record");
            if let Some(next) = next {
                assert_eq!(seq, next);
            }
            next = Some(seq + 1);
            last = v;
        }
        r.leave();
        writer.join().unwrap();
    });
}

/// SYNC: release-position, slot-claim (leave's Release). A subscriber that
/// reads and then leaves never has a record overwritten under its read, and
/// the writer, held back by it, completes once it left.
#[test]
fn loom_leave_races_the_gate() {
    model(|| {
        let seg = segment(Policy::Block, None);
        let mut r = join(&seg, JoinAt::Latest);
        // More than a ring: completes only once the reader reads or leaves.
        let writer = spawn_writer(&seg, &[1, 2, 3], 16);
        assert_eq!(read_n(&mut r, 1), [1]);
        r.leave();
        writer.join().unwrap();
    });
}

/// Calls the owner in the crash models makes into its view: `gate::join`
/// makes 6 (`now_ns`, `slots`, `try_lock`, then `slots`, `geometry`,
/// `producer` in `activate`), `gate::release` 2 (`slots`, then `waiters`
/// after its position store). A crash point `n < OWNER_CALLS` dies at call
/// `n`; `OWNER_CALLS` runs to the end and dies after.
const OWNER_CALLS: u64 = 8;

/// Liveness by locks. An owner joins the single slot and releases, dying at
/// crash point `crash_at` (its lock is then released, as the kernel does),
/// while the writer's gate reaps dead slots and another subscriber joins.
/// The joiner gets the slot only once the owner is dead, keeps it (the
/// reaper never frees a live owner's slot), reads intact records in order,
/// and the writer, which needs more than a ring, is never held back for good
/// by the dead owner.
fn crashed_owner_model(crash_at: u64) {
    model(move || {
        let seg = segment_with(Policy::Block, None, 1);
        let owner = {
            let seg = seg.clone();
            thread::spawn(move || {
                let v = heap::view(&seg).with_crash_after(crash_at);
                let req = request(JoinAt::Latest, true, None);
                let finished = catch_crash(|| {
                    if let Some((claim, pos)) = gate::join(&v, &req).expect("no fault") {
                        gate::release(&v, &claim, pos);
                    }
                });
                // The last crash point is past the owner's last call.
                assert!(
                    finished.is_some() || crash_at < OWNER_CALLS,
                    "the owner makes more than {OWNER_CALLS} calls"
                );
                // The process dies here (or died above): its locks go.
                seg.crash(v.owner);
            })
        };
        let writer = spawn_writer(&seg, &[1, 2, 3], 16);
        let join = || {
            ReaderCore::join(heap::view(&seg), &request(JoinAt::Latest, true, None))
                .expect("no fault")
        };
        // Once while the owner may be alive; if its lock is held, again after
        // it died (the writer's reaper may hold the lock a moment). Waiting
        // for the owner by joining its thread, not by spinning: loom may
        // starve a third thread that two spinning ones wait for.
        let mut owner = Some(owner);
        let mut r = loop {
            if let Some(r) = join() {
                break r;
            }
            match owner.take() {
                Some(o) => o.join().unwrap(),
                None => thread::yield_now(),
            }
        };
        // Until the end of the third record (joined at the latest record, it
        // may have nothing to read).
        let mut last = 0;
        while r.position() < 96 {
            let (v, seq) = read_one(&mut r);
            assert!(v > last, "out of order: {v} after {last}");
            assert_eq!(u64::from(v), seq + 1, "payload of another record");
            last = v;
        }
        assert_eq!(
            r.slot_status(),
            SlotStatus::Active,
            "a live slot was reaped"
        );
        writer.join().unwrap();
        if let Some(o) = owner {
            o.join().unwrap();
        }
    });
}

/// [`crashed_owner_model`], dying before it holds the slot's lock (crash
/// point 0; points 1 and 2 leave the same shared state) or holding the lock
/// with nothing written yet (point 3; 4 and 5 likewise).
#[test]
fn loom_crashed_owner_before_its_claim() {
    for crash_at in [0, 3] {
        crashed_owner_model(crash_at);
    }
}

/// [`crashed_owner_model`], dying with its slot active (point 6), right
/// after releasing its position (point 7), or after it finished (point 8).
#[test]
fn loom_crashed_owner_after_its_claim() {
    for crash_at in [6, 7, OWNER_CALLS] {
        crashed_owner_model(crash_at);
    }
}

// ---------------------------------------------------------------------------
// the registry's pre-join

/// Pre-join and adoption. A new publisher joins every registered subscriber
/// before its ring is visible (gate::prejoin). Subscriber 0 adopts its slot
/// and, under Block, receives everything from the first record, numbered
/// from the ring's first sequence number; subscriber 1 leaves the registry
/// without adopting (at any point of the writer's run), and its pre-joined
/// slot is reaped so the writer, which needs more than a ring, completes.
/// (Subscriber 1 leaves from the adopter's thread: a third thread that two
/// spinning ones must wait for lets loom starve it past its branch limit.)
#[test]
fn loom_prejoined_slots_adopted_or_dropped() {
    model(|| {
        let seg = segment(Policy::Block, None);
        seg.set_registered(0, 1, true);
        seg.set_registered(1, 1, true);
        assert_eq!(
            gate::prejoin(&heap::view(&seg), &[(0, 1), (1, 1)], 0, Some(0)),
            2
        );
        let writer = spawn_writer(&seg, &[1, 2, 3], 16);
        let req = request(JoinAt::Latest, true, None);
        let mut r = match ReaderCore::adopt(heap::view(&seg), &req, 0, 1).expect("no fault") {
            Ok(r) => r,
            Err((_, evicted)) => panic!("pre-joined slot not found (evicted: {evicted})"),
        };
        assert_eq!(r.position(), 0, "adopted past the ring's first record");
        seg.set_registered(1, 1, false);
        let mut seqs = Vec::new();
        let mut values = Vec::new();
        for _ in 0..3 {
            let (v, seq) = read_one(&mut r);
            values.push(v);
            seqs.push(seq);
        }
        assert_eq!(values, [1, 2, 3]);
        assert_eq!(seqs, [0, 1, 2]);
        writer.join().unwrap();
        // The writer needed slot 1's space: it was reaped, not adopted.
        let state = r.view.slots()[1].state.load(Ordering::Acquire);
        assert_eq!(state & SLOT_STATE_MASK, SLOT_FREE);
    });
}

// ---------------------------------------------------------------------------
// durable slots

const DURABLE_KEY: u64 = 7;

/// Durable lease and reattach. A durable subscriber joins while the writer
/// runs, reads one record and dies; its slot is kept (orphaned by the
/// writer's probe, still gating) and a restarted owner with the same key
/// reattaches, racing the writer's probes, and resumes exactly after the
/// released record: the rest of the records, no loss, no duplicate.
#[test]
fn loom_durable_slot_reattaches_without_loss() {
    model(|| {
        let seg = segment_with(Policy::Block, None, 1);
        let durable = Some((DURABLE_KEY, u64::MAX / 2));
        // 4 x 32 bytes: the writer needs the dead owner's space, and probes it.
        let writer = spawn_writer(&seg, &[1, 2, 3, 4], 16);
        // Joins while the writer runs (its fields reach the writer's probe
        // only through the slot-claim pair), reads one record, and dies.
        let mut first = ReaderCore::join(heap::view(&seg), &request(JoinAt::Oldest, true, durable))
            .expect("no fault")
            .expect("free slot");
        let (v, _) = read_one(&mut first);
        let owed = first.position();
        // Killed: no leave, the kernel drops its lock.
        first.forget_slot();
        seg.crash(first.view.owner);
        // Restarted: reattaches while the writer probes (and orphans) the slot.
        let mut again = loop {
            match ReaderCore::join(heap::view(&seg), &request(JoinAt::Latest, true, durable))
                .expect("no fault")
            {
                Some(r) => break r,
                None => thread::yield_now(), // the writer's probe holds the lock
            }
        };
        assert_eq!(again.position(), owed, "reattached elsewhere than it owed");
        let rest: Vec<u8> = (v + 1..=4).collect();
        assert_eq!(read_n(&mut again, rest.len()), rest);
        writer.join().unwrap();
    });
}

/// Durable lease expiry. A durable subscriber dies holding the writer back;
/// its slot is orphaned and keeps gating for its lease, then is reaped, so
/// the writer completes; the slot ends free.
#[test]
fn loom_durable_lease_expires() {
    model(|| {
        let seg = segment_with(Policy::Block, None, 1);
        let lease = 3 * LIVENESS_INTERVAL.as_nanos() as u64;
        let mut first = ReaderCore::join(
            heap::view(&seg),
            &request(JoinAt::Oldest, true, Some((DURABLE_KEY, lease))),
        )
        .expect("no fault")
        .expect("free slot");
        // 4 x 32 bytes: the writer needs the dead owner's space.
        let writer = spawn_writer(&seg, &[1, 2, 3, 4], 16);
        assert_eq!(read_n(&mut first, 1), [1]);
        first.forget_slot();
        seg.crash(first.view.owner);
        writer.join().unwrap();
        let state = first.view.slots()[0].state.load(Ordering::Acquire) & SLOT_STATE_MASK;
        assert_eq!(state, SLOT_FREE, "lease never expired (state {state})");
    });
}

// ---------------------------------------------------------------------------
// hold-evict, untethered pins

/// SYNC: hold-evict. With untethered eviction (after 0 s) the writer evicts
/// the subscriber holding it back; a sample the subscriber holds (begin_hold
/// succeeded) is never overwritten while it reads it in place, and the only
/// fault it can see is `Evicted`.
#[test]
fn loom_eviction_never_overwrites_a_held_record() {
    model(|| {
        let seg = segment(Policy::Block, Some(Duration::ZERO));
        let mut r = join(&seg, JoinAt::Latest);
        // Four 32-byte records into 64 bytes: the writer blocks on the
        // reader and evicts it, and the fourth record lands on the second,
        // which an evicted reader may still hold (and then release).
        let writer = spawn_writer(&seg, &[1, 2, 3, 4], 16);
        let mut seen = 0;
        let mut gap = false;
        let evicted = loop {
            if seen == 4 {
                break false;
            }
            match r.peek() {
                Ok(Peek::Record(rec)) => {
                    match r.begin_hold() {
                        Ok(()) => {}
                        Err(ReadFault::Evicted) => break true,
                        Err(e) => panic!("hold: {e:?}"),
                    }
                    let mut buf = vec![0; rec.len as usize];
                    // SAFETY: from `peek`; held, so not overwritten meanwhile
                    // (loom's race detector and the value check say so).
                    unsafe { r.view.read_in_place(rec.payload_offset, &mut buf) };
                    assert!(buf.iter().all(|&b| b == buf[0]), "torn {buf:?}");
                    assert_eq!(u64::from(buf[0]), rec.seq + 1, "overwritten while held");
                    r.consume_to(rec.end, rec.seq + 1);
                    seen += 1;
                }
                Ok(Peek::Empty) => thread::yield_now(),
                // A lapping writer may be read in the meta word beside a
                // stamp that was still ours: an evicted subscriber can be
                // told of the loss before it is told it was evicted.
                Ok(Peek::Gap { .. }) => gap = true,
                Err(ReadFault::Evicted) => break true,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert!(evicted || !gap, "a gap under Block without an eviction");
        writer.join().unwrap();
    });
}

/// SYNC: hold-evict, release-position on an evicted slot. Set up by the
/// production calls, in order: a subscriber reads record 1 and holds record
/// 2; the writer writes record 3 and, blocked on record 4, evicts it
/// (evict_after = 0) while it holds. Then, concurrently, the evicted
/// subscriber reads the held sample and releases it, while the writer
/// retries record 4, which lands on record 2:
/// the writer must not overwrite the sample before the subscriber's read,
/// even when it sees the old `held` beside the new position.
#[test]
fn loom_evicted_holder_releases_its_sample() {
    model(|| {
        let seg = segment(Policy::Block, Some(Duration::ZERO));
        let mut r = join(&seg, JoinAt::Latest);
        let mut w = WriterCore::new(heap::view(&seg));
        write_spin(&mut w, 1, 16);
        write_spin(&mut w, 2, 16);
        assert_eq!(read_n(&mut r, 1), [1]);
        let rec = match r.peek().expect("no fault") {
            Peek::Record(rec) => rec,
            other => panic!("record 2 not there: {other:?}"),
        };
        r.begin_hold().expect("holds");
        write_spin(&mut w, 3, 16);
        assert_eq!(w.reserve(16), Err(ReserveFail::Full));
        assert_eq!(r.slot_status(), SlotStatus::Evicted, "not evicted");
        let writer = thread::spawn(move || write_spin(&mut w, 4, 16));
        let mut buf = [0u8; 16];
        // SAFETY: from `peek`; held (evicted, but the writer honours it).
        unsafe { r.view.read_in_place(rec.payload_offset, &mut buf) };
        assert_eq!(buf, [2; 16], "overwritten while held");
        r.consume_to(rec.end, rec.seq + 1);
        writer.join().unwrap();
    });
}

/// SYNC: join-limit (pin), hold-evict (unhold). An untethered subscriber
/// gates only while it pins: what it pins and finds committed is not
/// overwritten while it reads it, and the writer completes.
#[test]
fn loom_untethered_pin_protects_what_it_reads() {
    model(|| {
        let seg = segment(Policy::Block, None);
        let mut r = join_as(&seg, JoinAt::Latest, false);
        // An untethered reader gates only while it pins: this completes.
        let writer = spawn_writer(&seg, &[1, 2, 3, 4], 16);
        let head = r.view.producer().head.load(Ordering::Acquire);
        let safe = r.pin(head);
        let off = safe & 63;
        if r.view.word(off).load(Ordering::Acquire) == data_stamp(safe) {
            let mut buf = [0u8; 16];
            // SAFETY: inside the ring; committed and pinned.
            unsafe { r.view.read_in_place(off + 16, &mut buf) };
            assert!(buf.iter().all(|&b| b == buf[0]), "torn {buf:?}");
            assert_eq!(u64::from(buf[0]), safe / 32 + 1, "overwritten while pinned");
        }
        r.unpin();
        writer.join().unwrap();
    });
}

// ---------------------------------------------------------------------------
// head-advance: the Overwrite seqlock and observers

/// Reads a lappable ring to its end with `copy_validated`: every copy it
/// accepts is intact and is the record its sequence number names; counts
/// are exact (records seen + messages reported lost = next sequence number
/// reached). Returns (records, lost messages).
fn read_copies(r: &mut ReaderCore<HeapView>, last_seq: u64) -> (u64, u64) {
    let (mut got, mut lost) = (0, 0);
    let mut next: Option<u64> = None;
    loop {
        match r.peek().expect("no fault") {
            Peek::Record(rec) => {
                let mut buf = vec![0; rec.len as usize];
                match r.copy_validated(&rec, &mut buf).expect("no fault") {
                    Peek::Record(rec) => {
                        // Every record of these models has 16 bytes.
                        assert_eq!(buf.len(), 16, "copy of a torn length");
                        assert!(buf.iter().all(|&b| b == buf[0]), "torn copy {buf:?}");
                        assert_eq!(u64::from(buf[0]), rec.seq + 1, "stale copy");
                        if let Some(n) = next {
                            assert_eq!(rec.seq, n, "loss not counted exactly");
                        }
                        next = Some(rec.seq + 1);
                        got += 1;
                        r.advance_to(rec.end, rec.seq + 1);
                        if rec.seq == last_seq {
                            return (got, lost);
                        }
                    }
                    Peek::Gap { messages, .. } => {
                        lost += messages;
                        next = next.map(|n| n + messages);
                    }
                    Peek::Empty => {} // lapped while copying: retry from head
                }
            }
            Peek::Gap { messages, .. } => {
                lost += messages;
                next = next.map(|n| n + messages);
            }
            Peek::Empty => thread::yield_now(),
        }
    }
}

/// Spawns an Overwrite writer of `n` 16-byte records valued seq + 1.
fn spawn_lapping_writer(seg: &Arc<HeapSegment>, n: u8) -> thread::JoinHandle<()> {
    let seg = seg.clone();
    thread::spawn(move || {
        let mut w = WriterCore::new(heap::view(&seg));
        for v in 1..=n {
            write_spin(&mut w, v, 16);
        }
    })
}

/// SYNC: head-advance (seqlock), commit. An Overwrite subscriber lapped
/// while it copies never accepts a torn or stale copy, and it reports every
/// lost message exactly: it accounts for all 3 records (a ring and a half).
#[test]
fn loom_overwrite_seqlock_copies() {
    model(|| {
        let seg = segment(Policy::Overwrite, None);
        let mut r = join(&seg, JoinAt::Latest);
        let writer = spawn_lapping_writer(&seg, 3);
        let (got, lost) = read_copies(&mut r, 2);
        assert_eq!(got + lost, 3, "got {got}, lost {lost}");
        writer.join().unwrap();
    });
}

/// SYNC: head-advance, tail-publish, commit. An observer (no slot) of an
/// Overwrite ring, lapped while it copies: every copy it accepts is intact
/// and correctly numbered, and it reaches the last record. (Starting the
/// observer while the writer runs as well takes loom past two minutes.)
#[test]
fn loom_observer_copies() {
    model(|| {
        let seg = segment(Policy::Overwrite, None);
        let mut r = ReaderCore::observer(heap::view(&seg), JoinAt::Oldest).expect("no fault");
        let writer = spawn_lapping_writer(&seg, 3);
        let (got, _) = read_copies(&mut r, 2);
        assert!(got >= 1);
        writer.join().unwrap();
    });
}

/// SYNC: head-advance (a gap record's count), commit (gap). An observer of
/// an Overwrite ring reads a gap record (5 messages lost upstream) that the
/// writer may lap while it reads the count: a count it accepts is the
/// record's, so records read + messages reported lost = the 7 messages.
#[test]
fn loom_observer_gap_record_lapped() {
    model(|| {
        let seg = segment(Policy::Overwrite, None);
        let mut r = ReaderCore::observer(heap::view(&seg), JoinAt::Oldest).expect("no fault");
        let writer = {
            let seg = seg.clone();
            thread::spawn(move || {
                let mut w = WriterCore::new(heap::view(&seg));
                let g = w.reserve_up_to(GAP_PAYLOAD, 0).expect("room");
                w.commit_gap(g, 5);
                w.publish();
                // Records 5 and 6 (valued seq + 1): the second laps the gap record.
                for v in 6..=7 {
                    write_spin(&mut w, v, 16);
                }
            })
        };
        let (got, lost) = read_copies(&mut r, 6);
        assert_eq!(got + lost, 7, "got {got}, lost {lost}");
        writer.join().unwrap();
    });
}

// ---------------------------------------------------------------------------
// notify

/// SYNC: notify. The blocking wait protocol (futex::prepare, re-check, sleep,
/// futex::finish) with no timeout: a missed wake-up leaves this thread
/// asleep forever, which loom reports as a deadlock.
#[test]
fn loom_no_missed_wakeup() {
    model(|| {
        let seg = segment(Policy::Block, None);
        let mut r = join(&seg, JoinAt::Latest);
        let writer = spawn_writer(&seg, &[7], 8);
        let view = r.view.clone();
        let sleeper = Sleeper {
            futex: &view.producer().futex,
            waiters: &view.waiters().waiters,
            armed: &view.waiters().wake_armed,
            sleeping: None,
            handshake: Some(WakeHandshake::Fence),
        };
        loop {
            if r.poll_ready() {
                break;
            }
            let seen = notify::prepare(&sleeper);
            let ready = r.poll_ready();
            if !ready {
                view.futex_wait(sleeper.futex, seen, None);
            }
            notify::finish(&sleeper);
        }
        assert_eq!(read_n(&mut r, 1), [7]);
        writer.join().unwrap();
    });
}

// ---------------------------------------------------------------------------
// the replica writer

/// Writes a received chunk's bytes (all but the first stamp) into the ring
/// at `start`, as the replica handle does into its reservation.
/// Receives a chunk's bytes after its first record's header (which the
/// replica keeps out of the ring until commit) into the ring.
fn receive(w: &WriterCore<HeapView>, start: u64, words: &[u64]) {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    // SAFETY: reserved by `reserve_raw`, not yet committed; chunks in this
    // model never cross the ring's end.
    unsafe { w.view.write_payload((start & 63) + 16, &bytes) };
}

fn reserve_raw_spin(w: &mut WriterCore<HeapView>, len: u64) -> u64 {
    loop {
        match w.reserve_raw(len) {
            Ok(start) => return start,
            Err(ReserveFail::Full) => full(w),
            Err(e) => panic!("reserve_raw: {e:?}"),
        }
    }
}

/// SYNC: commit (commit_raw, commit_gap), tail-publish. A replica writer
/// commits a received chunk of two records with one stamp, then a gap
/// record of 5 lost messages, then (after a wrap, once the subscriber
/// released) a chunk with a payload: the subscriber sees exactly the records
/// with the source's numbers and one gap of exactly 5.
#[test]
fn loom_replica_commit_raw_and_gap() {
    model(|| {
        let seg = segment(Policy::Block, None);
        let w = WriterCore::new_at(heap::view(&seg), 0, Some(10));
        let mut r = join(&seg, JoinAt::Oldest);
        let writer = thread::spawn(move || {
            let mut w = w;
            // Two empty records, seq 10 and 11: 16 + 16 bytes.
            let start = reserve_raw_spin(&mut w, 32);
            receive(&w, start, &[data_stamp(start + 16), meta_word(0, 11)]);
            assert_eq!(w.commit_raw(data_stamp(start), meta_word(0, 10), 32), Ok(2));
            // Upstream lost 5 messages.
            let g = loop {
                match w.reserve_up_to(GAP_PAYLOAD, 0) {
                    Ok(g) => break g,
                    Err(ReserveFail::Full) => full(&w),
                    Err(e) => panic!("reserve: {e:?}"),
                }
            };
            w.commit_gap(g, 5);
            w.publish();
            // One 8-byte record, seq 17, wrapping to offset 0.
            let start = reserve_raw_spin(&mut w, 32);
            receive(&w, start, &[u64::from_le_bytes([0xab; 8]), 0]);
            assert_eq!(w.commit_raw(data_stamp(start), meta_word(8, 17), 32), Ok(1));
        });
        let mut events = Vec::new();
        while events.len() < 4 {
            match r.peek().expect("no fault") {
                Peek::Record(rec) => {
                    let mut buf = vec![0; rec.len as usize];
                    // SAFETY: from `peek`.
                    unsafe { r.view.read_in_place(rec.payload_offset, &mut buf) };
                    events.push((rec.seq, buf));
                    r.consume_to(rec.end, rec.seq + 1);
                }
                Peek::Gap { messages, bytes } => {
                    assert_eq!(bytes, 0);
                    events.push((u64::MAX, vec![messages as u8]));
                }
                Peek::Empty => thread::yield_now(),
            }
            if let Some((seq, _)) = events.last() {
                if *seq == u64::MAX {
                    // A gap is consumed by peek; release it too.
                    let pos = r.position();
                    r.release_to(pos);
                }
            }
        }
        assert_eq!(
            events,
            [
                (10, vec![]),
                (11, vec![]),
                (u64::MAX, vec![5]),
                (17, vec![0xab; 8])
            ]
        );
        writer.join().unwrap();
    });
}

/// SYNC: commit (skip pieces), tail-publish. A replica writer skips a
/// source gap across the ring's end, at the same positions: from 16 to 80,
/// a 48-byte gap record carrying 4 lost messages up to the lap's end and a
/// 16-byte filler (count 0) at the next lap's start, once the subscriber
/// released the first record (`NoRoom` until then); then a record numbered
/// 15 at 80. The subscriber sees 10, one gap of exactly 4, then 15.
#[test]
fn loom_replica_skip_across_the_lap_end() {
    model(|| {
        let seg = segment(Policy::Block, None);
        let w = WriterCore::new_at(heap::view(&seg), 0, Some(10));
        let mut r = join(&seg, JoinAt::Oldest);
        let writer = thread::spawn(move || {
            let mut w = w;
            let start = reserve_raw_spin(&mut w, 16);
            assert_eq!(w.commit_raw(data_stamp(start), meta_word(0, 10), 16), Ok(1));
            loop {
                match w.try_skip_to(80, 15) {
                    Ok(Skip::Done { lost }) => {
                        assert_eq!(lost, 4);
                        break;
                    }
                    Ok(Skip::NoRoom) => full(&w),
                    other => panic!("skip: {other:?}"),
                }
            }
            let start = reserve_raw_spin(&mut w, 16);
            assert_eq!(start, 80);
            assert_eq!(w.commit_raw(data_stamp(start), meta_word(0, 15), 16), Ok(1));
        });
        let mut events = Vec::new();
        while events.len() < 3 {
            // An empty peek is checked against the tail as waiters do: a
            // published record without its stamp is a fault, not a wait.
            let peek = match r.peek().expect("no fault") {
                Peek::Empty => r.verify_empty().expect("no fault"),
                other => other,
            };
            match peek {
                Peek::Record(rec) => {
                    events.push(rec.seq);
                    r.consume_to(rec.end, rec.seq + 1);
                }
                Peek::Gap { messages, bytes } => {
                    assert_eq!(bytes, 0);
                    events.push(1000 + messages);
                    // A gap is consumed by peek; release it too.
                    let pos = r.position();
                    r.release_to(pos);
                }
                Peek::Empty => thread::yield_now(),
            }
        }
        assert_eq!(events, [10, 1004, 15]);
        writer.join().unwrap();
    });
}

// ---------------------------------------------------------------------------
// wake-handshake, wake-coalesce: the asymmetric handshake and coalesced wakes

/// A sleeper on `view`'s ring whose header says `handshake`.
fn sleeper_of(view: &HeapView, handshake: WakeHandshake) -> Sleeper<'_> {
    Sleeper {
        futex: &view.producer().futex,
        waiters: &view.waiters().waiters,
        armed: &view.waiters().wake_armed,
        sleeping: None,
        handshake: Some(handshake),
    }
}

/// Spawns a writer that publishes one 8-byte record of each of `values`
/// with `handshake` (so `notify` runs the light barrier or the fence).
fn spawn_writer_with(
    seg: &Arc<HeapSegment>,
    handshake: WakeHandshake,
    values: &'static [u8],
) -> thread::JoinHandle<()> {
    let seg = seg.clone();
    thread::spawn(move || {
        let mut w = WriterCore::new(heap::view(&seg));
        w.set_handshake(handshake);
        for &v in values {
            write_spin(&mut w, v, 8);
        }
    })
}

/// Waits for the next record with the production sleeper code
/// (`futex::sleep`: register, arm, barrier, re-check, futex wait, finish)
/// and no timeout, so a missed wake-up is a loom deadlock; then reads it.
/// Counts the sleeps it registered for in `sleeps`.
fn sleep_and_read(r: &mut ReaderCore<HeapView>, handshake: WakeHandshake, sleeps: &mut u64) -> u8 {
    let view = r.view.clone();
    let sleeper = sleeper_of(&view, handshake);
    while !r.poll_ready() {
        *sleeps += 1;
        let end = notify::sleep(
            &[sleeper],
            None,
            || r.poll_ready(),
            |words, timeout| {
                assert!(timeout.is_none(), "a reliable handshake sleeps untimed");
                view.futex_wait(words[0].0, words[0].1, None);
                WaitEnd::Woken
            },
        );
        assert_ne!(end, SleepEnd::TimedOut);
    }
    read_one(r).0
}

/// SYNC: wake-handshake (asymmetric). The sleeper's heavy barrier (the model
/// of membarrier, see `shm::membarrier`) against a writer whose `notify`
/// has only the light barrier: the sleeper is never left asleep with the
/// record published, and the writer wakes at most once per sleep.
#[test]
fn loom_wake_membarrier_handshake() {
    model(|| {
        membarrier::init_for_model();
        let seg = segment(Policy::Block, None);
        let mut r = join(&seg, JoinAt::Latest);
        let writer = spawn_writer_with(&seg, WakeHandshake::Membarrier, &[7]);
        let mut sleeps = 0;
        assert_eq!(
            sleep_and_read(&mut r, WakeHandshake::Membarrier, &mut sleeps),
            7
        );
        writer.join().unwrap();
        assert!(
            seg.wakes() <= sleeps,
            "{} wakes for {sleeps} sleeps",
            seg.wakes()
        );
    });
}

/// SYNC: wake-handshake (symmetric). The same with `WakeHandshake::Fence`:
/// a SeqCst fence on both sides, through the production sleeper code.
#[test]
fn loom_wake_fence_handshake() {
    model(|| {
        membarrier::init_for_model();
        let seg = segment(Policy::Block, None);
        let mut r = join(&seg, JoinAt::Latest);
        let writer = spawn_writer_with(&seg, WakeHandshake::Fence, &[7]);
        let mut sleeps = 0;
        assert_eq!(sleep_and_read(&mut r, WakeHandshake::Fence, &mut sleeps), 7);
        writer.join().unwrap();
        assert!(
            seg.wakes() <= sleeps,
            "{} wakes for {sleeps} sleeps",
            seg.wakes()
        );
    });
}

/// SYNC: wake-coalesce, wake-handshake. Two sleepers, one writer (membarrier
/// handshake) publishing two records one at a time: each sleeper receives
/// both (no wake-up lost when the second sleeper arms while the first's wake
/// is in flight, nor when a wake consumed an arm), and the writer's
/// `FUTEX_WAKE`s never outnumber the sleeps (one wake per sleep at most,
/// however many records arrive during it).
#[test]
fn loom_wake_coalesced_two_sleepers() {
    model(|| {
        membarrier::init_for_model();
        let seg = segment(Policy::Block, None);
        let mut a = join(&seg, JoinAt::Latest);
        let mut b = join(&seg, JoinAt::Latest);
        let writer = spawn_writer_with(&seg, WakeHandshake::Membarrier, &[3, 4]);
        let other = thread::spawn(move || {
            let mut sleeps = 0;
            let got = [
                sleep_and_read(&mut b, WakeHandshake::Membarrier, &mut sleeps),
                sleep_and_read(&mut b, WakeHandshake::Membarrier, &mut sleeps),
            ];
            (got, sleeps)
        });
        let mut sleeps = 0;
        let got = [
            sleep_and_read(&mut a, WakeHandshake::Membarrier, &mut sleeps),
            sleep_and_read(&mut a, WakeHandshake::Membarrier, &mut sleeps),
        ];
        let (got_b, sleeps_b) = other.join().unwrap();
        writer.join().unwrap();
        assert_eq!(got, [3, 4]);
        assert_eq!(got_b, [3, 4]);
        let wakes = seg.wakes();
        assert!(
            wakes <= sleeps + sleeps_b,
            "{wakes} wakes for {} sleeps",
            sleeps + sleeps_b
        );
    });
}

/// The model's honesty check: a sleeper that fences (the symmetric
/// protocol's half) against a writer that only has the light barrier (the
/// membarrier handshake's half) gets no ordering from the model of the
/// heavy barrier, and loom finds the lost wake-up. If this passed, the
/// model of `membarrier` would be proving the symmetric protocol.
#[test]
#[should_panic(expected = "deadlock")]
fn loom_wake_light_barrier_does_not_pair_with_a_fence() {
    model(|| {
        membarrier::init_for_model();
        let seg = segment(Policy::Block, None);
        let mut r = join(&seg, JoinAt::Latest);
        let writer = spawn_writer_with(&seg, WakeHandshake::Membarrier, &[7]);
        let mut sleeps = 0;
        assert_eq!(sleep_and_read(&mut r, WakeHandshake::Fence, &mut sleeps), 7);
        writer.join().unwrap();
    });
}

// ---------------------------------------------------------------------------
// batched release (issue 9): `ReaderCore::finish` against the gate

/// Reads `n` records in place and finishes each with the batched release
/// (`finish`, as `RingReader::try_read`'s samples do): every payload is
/// intact and is its own record's (value = sequence number + 1), in order.
/// Loom's race detector fails the model if the writer writes a payload word
/// while this reads it.
fn read_n_batched(r: &mut ReaderCore<HeapView>, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < n {
        match r.peek().expect("no fault") {
            Peek::Record(rec) => {
                let mut buf = vec![0; rec.len as usize];
                // SAFETY: `rec` came from `peek`: in bounds, committed, and
                // at or above our released position (held).
                unsafe { r.view.read_in_place(rec.payload_offset, &mut buf) };
                let v = buf.first().copied().unwrap_or(0);
                assert!(buf.iter().all(|&b| b == v), "torn payload {buf:?}");
                assert_eq!(u64::from(v), rec.seq + 1, "overwritten while held");
                r.finish(rec.end, rec.seq + 1);
                out.push(v);
            }
            // `peek` released our progress before it said Empty.
            Peek::Empty => thread::yield_now(),
            Peek::Gap { messages, bytes } => {
                panic!("gap under Block: {messages} messages, {bytes} bytes")
            }
        }
    }
    out
}

/// Batched release, `Empty` alone: a reader whose batch is never reached
/// publishes its progress only when a peek finds the ring empty. The writer
/// writes four 32-byte records into 64 bytes, so it waits for the reader
/// twice, each time while the reader has finished records it has not
/// released and holds the next one in place: it never overwrites the held
/// record (race detector, value check) and never waits forever (a deadlock
/// or an endless spin fails the model).
#[test]
fn loom_batched_release_empty_unblocks_the_writer() {
    model(|| {
        let seg = segment(Policy::Block, None);
        let mut r = join(&seg, JoinAt::Latest);
        r.set_release_batch(u64::MAX);
        let writer = spawn_writer(&seg, &[1, 2, 3, 4], 16);
        assert_eq!(read_n_batched(&mut r, 4), [1, 2, 3, 4]);
        writer.join().unwrap();
    });
}

/// Batched release with the writer's `space_wanted` hint: a batch of 256
/// bytes (eight rings here), so the reader releases early only when it sees
/// the writer waiting past its released position (after one 32-byte record),
/// or at `Empty`. Either way: no overwrite of a held record, no deadlock,
/// and after the last read and one empty peek the slot holds the reader's
/// position (nothing finished stays unreleased once it waits).
#[test]
fn loom_batched_release_hint_and_held_record() {
    model(|| {
        let seg = segment(Policy::Block, None);
        let mut r = join(&seg, JoinAt::Latest);
        r.set_release_batch(256);
        let writer = spawn_writer(&seg, &[1, 2, 3, 4], 16);
        assert_eq!(read_n_batched(&mut r, 4), [1, 2, 3, 4]);
        writer.join().unwrap();
        assert_eq!(r.peek().expect("no fault"), Peek::Empty);
        let slot = &r.view.slots()[r.claim().expect("joined").index];
        assert_eq!(slot.position.load(Ordering::Acquire), r.position());
    });
}

/// Batched release beside a joiner: a batched reader is joined before the
/// writer starts; a second subscriber joins at `Oldest` while the writer
/// runs and reads with eager releases (both read in this thread, in turns,
/// so only two threads spin: see docs/loom.md). The writer's gate, computed
/// from slot positions and the record boundaries it noted (no walk), never
/// lets it overwrite what either still reads (race detector, value checks),
/// and the joiner starts at a record boundary: what it reads is intact, in
/// order, without a gap, up to the last record.
#[test]
fn loom_batched_reader_and_joiner_against_the_gate() {
    model(|| {
        let seg = segment(Policy::Block, None);
        let mut batched = join(&seg, JoinAt::Latest);
        batched.set_release_batch(u64::MAX);
        let writer = spawn_writer(&seg, &[1, 2, 3, 4], 8);
        let mut joiner = join(&seg, JoinAt::Oldest);
        let (mut got, mut last, mut next) = (Vec::new(), 0u8, None);
        while got.len() < 4 || last != 4 {
            let mut idle = true;
            if got.len() < 4 {
                if let Peek::Record(rec) = batched.peek().expect("no fault") {
                    let mut buf = vec![0; rec.len as usize];
                    // SAFETY: from `peek`; held (at or above our released position).
                    unsafe { batched.view.read_in_place(rec.payload_offset, &mut buf) };
                    assert!(buf.iter().all(|&b| b == buf[0]), "torn {buf:?}");
                    assert_eq!(u64::from(buf[0]), rec.seq + 1, "overwritten while held");
                    batched.finish(rec.end, rec.seq + 1);
                    got.push(buf[0]);
                    idle = false;
                }
            }
            if last != 4 {
                match joiner.peek().expect("no fault") {
                    Peek::Record(rec) => {
                        let mut buf = vec![0; rec.len as usize];
                        // SAFETY: from `peek`; not released yet.
                        unsafe { joiner.view.read_in_place(rec.payload_offset, &mut buf) };
                        let v = buf[0];
                        assert!(buf.iter().all(|&b| b == v), "torn {buf:?}");
                        assert_eq!(u64::from(v), rec.seq + 1, "payload of another record");
                        assert!(v > last, "out of order: {v} after {last}");
                        if let Some(next) = next {
                            assert_eq!(rec.seq, next, "a gap");
                        }
                        next = Some(rec.seq + 1);
                        last = v;
                        joiner.consume_to(rec.end, rec.seq + 1);
                        idle = false;
                    }
                    Peek::Empty => {}
                    Peek::Gap { .. } => panic!("gap under Block"),
                }
            }
            if idle {
                thread::yield_now();
            }
        }
        assert_eq!(got, [1, 2, 3, 4]);
        writer.join().unwrap();
    });
}
