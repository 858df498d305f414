//! Loom models of the ring protocol. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p shmbus-bus --release --lib loom`.
//!
//! Rings here are 64 bytes (two to four records), so wrap-around, padding and
//! the full ring happen within the preemption bound. Payload words are loom
//! cells: a read not ordered after its write, or an overwrite not ordered
//! after the last read, fails the model.

use std::{sync::Arc, time::Duration};

use loom::thread;

use super::{
    gate::{JoinAt, JoinRequest},
    heap::{self, HeapSegment, HeapView},
    reader::{Peek, ReaderCore},
    writer::WriterCore,
    Geometry, Policy, View,
};
use crate::shm::futex::{self as notify, Sleeper};

fn segment(policy: Policy, evict_after: Option<Duration>) -> Arc<HeapSegment> {
    HeapSegment::new(
        Geometry {
            capacity: 64,
            max_message: 16,
            policy,
            evict_after,
        },
        2,
    )
}

fn join_as(seg: &Arc<HeapSegment>, at: JoinAt, tethered: bool) -> ReaderCore<HeapView> {
    let req = JoinRequest {
        at,
        tethered,
        durable: None,
        pid: 1,
        start_time: 1,
    };
    ReaderCore::join(heap::view(seg), &req)
        .expect("no fault")
        .expect("free slot")
}

fn join(seg: &Arc<HeapSegment>, at: JoinAt) -> ReaderCore<HeapView> {
    join_as(seg, at, true)
}

fn write_spin(w: &mut WriterCore<HeapView>, value: u8, len: usize) {
    loop {
        match w.reserve(len as u64) {
            Ok(r) => {
                w.write_payload(&r, &vec![value; len]);
                w.commit(r, len as u64);
                w.publish();
                return;
            }
            Err(_) => thread::yield_now(),
        }
    }
}

/// Reads `n` records (spinning with yields), checking each payload is the
/// uniform byte it was written with. Returns the values in order.
fn read_n(r: &mut ReaderCore<HeapView>, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < n {
        match r.peek().expect("no fault") {
            Peek::Record(rec) => {
                let mut buf = vec![0; rec.len as usize];
                // SAFETY: `rec` came from `peek`: in bounds.
                unsafe { r.view.read_payload(rec.payload_offset, &mut buf) };
                let v = buf.first().copied().unwrap_or(0);
                assert!(buf.iter().all(|&b| b == v), "torn payload {buf:?}");
                out.push(v);
                r.consume_to(rec.end, rec.seq + 1);
            }
            Peek::Empty => thread::yield_now(),
            Peek::Gap { .. } => panic!("gap under Block"),
        }
    }
    out
}

#[test]
fn loom_publish_consume_visibility_and_wrap() {
    loom::model(|| {
        let seg = segment(Policy::Block, None);
        let mut r = join(&seg, JoinAt::Latest);
        let writer = {
            let seg = seg.clone();
            thread::spawn(move || {
                let mut w = WriterCore::new(heap::view(&seg));
                // 32 + 32 + (padding) 32: the third record wraps.
                for v in 1..=3 {
                    write_spin(&mut w, v, 16);
                }
            })
        };
        assert_eq!(read_n(&mut r, 3), [1, 2, 3]);
        writer.join().unwrap();
    });
}

#[test]
fn loom_wrap_with_padding_record() {
    loom::model(|| {
        let seg = segment(Policy::Block, None);
        let mut r = join(&seg, JoinAt::Latest);
        let writer = {
            let seg = seg.clone();
            thread::spawn(move || {
                let mut w = WriterCore::new(heap::view(&seg));
                // 16 + 32 = 48 bytes, then a 32-byte record does not fit in
                // the last 16: padding, then offset 0.
                write_spin(&mut w, 1, 0);
                write_spin(&mut w, 2, 16);
                write_spin(&mut w, 3, 16);
            })
        };
        assert_eq!(read_n(&mut r, 3), [0, 2, 3]);
        writer.join().unwrap();
    });
}

#[test]
fn loom_join_races_the_gate() {
    loom::model(|| {
        let seg = segment(Policy::Block, None);
        let writer = {
            let seg = seg.clone();
            thread::spawn(move || {
                let mut w = WriterCore::new(heap::view(&seg));
                for v in 1..=4 {
                    write_spin(&mut w, v, 8);
                }
            })
        };
        // Joins at whatever the writer has reached; whatever it then reads
        // must be intact and in order (loom flags an overwrite of a record
        // this reader was entitled to).
        let mut r = join(&seg, JoinAt::Oldest);
        let mut last = 0;
        loop {
            match r.peek().expect("no fault") {
                Peek::Record(rec) => {
                    let mut buf = vec![0; rec.len as usize];
                    // SAFETY: from `peek`.
                    unsafe { r.view.read_payload(rec.payload_offset, &mut buf) };
                    assert!(buf.iter().all(|&b| b == buf[0]) && buf[0] > last);
                    last = buf[0];
                    r.consume_to(rec.end, rec.seq + 1);
                    if last == 4 {
                        break;
                    }
                }
                Peek::Empty => thread::yield_now(),
                Peek::Gap { messages, bytes } => {
                    panic!(
                        "gap under Block: {messages} {bytes} at {} last {last}",
                        r.position()
                    )
                }
            }
        }
        r.leave();
        writer.join().unwrap();
    });
}

#[test]
fn loom_leave_races_the_gate() {
    loom::model(|| {
        let seg = segment(Policy::Block, None);
        let mut r = join(&seg, JoinAt::Latest);
        let writer = {
            let seg = seg.clone();
            thread::spawn(move || {
                let mut w = WriterCore::new(heap::view(&seg));
                // More than a ring: completes only once the reader reads or leaves.
                for v in 1..=3 {
                    write_spin(&mut w, v, 16);
                }
            })
        };
        let got = read_n(&mut r, 1);
        assert_eq!(got, [1]);
        r.leave();
        writer.join().unwrap();
    });
}

#[test]
fn loom_eviction_never_overwrites_a_held_record() {
    loom::model(|| {
        let seg = segment(Policy::Block, Some(Duration::ZERO));
        let mut r = join(&seg, JoinAt::Latest);
        let writer = {
            let seg = seg.clone();
            thread::spawn(move || {
                let mut w = WriterCore::new(heap::view(&seg));
                // Three 32-byte records into 64 bytes: the writer blocks on
                // the reader and evicts it (evict_after = 0).
                for v in 1..=3 {
                    write_spin(&mut w, v, 16);
                }
            })
        };
        // Read in place under the hold protocol until evicted or done.
        let mut seen = 0;
        while seen < 3 {
            match r.peek() {
                Ok(Peek::Record(rec)) => {
                    if r.begin_hold().is_err() {
                        break;
                    }
                    let mut buf = vec![0; rec.len as usize];
                    // SAFETY: from `peek`; held, so not overwritten meanwhile
                    // (loom checks exactly this).
                    unsafe { r.view.read_payload(rec.payload_offset, &mut buf) };
                    assert!(buf.iter().all(|&b| b == buf[0]));
                    r.consume_to(rec.end, rec.seq + 1);
                    seen += 1;
                }
                Ok(Peek::Empty) => thread::yield_now(),
                Ok(Peek::Gap { .. }) | Err(_) => break,
            }
        }
        writer.join().unwrap();
    });
}

#[test]
fn loom_no_missed_wakeup() {
    loom::model(|| {
        let seg = segment(Policy::Block, None);
        let mut r = join(&seg, JoinAt::Latest);
        let writer = {
            let seg = seg.clone();
            thread::spawn(move || {
                let mut w = WriterCore::new(heap::view(&seg));
                write_spin(&mut w, 7, 8);
            })
        };
        // The blocking wait protocol with no spinning and no timeout: a
        // missed wake-up leaves this thread asleep forever, which loom
        // reports as a deadlock.
        let view = r.view.clone();
        let sleeper = Sleeper {
            futex: &view.producer().futex,
            waiters: &view.waiters().waiters,
            sleeping: None,
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

#[test]
fn loom_untethered_pin_protects_what_it_reads() {
    use crate::{layout::data_stamp, sync::Ordering};
    loom::model(|| {
        let seg = segment(Policy::Block, None);
        let mut r = join_as(&seg, JoinAt::Latest, false);
        let writer = {
            let seg = seg.clone();
            thread::spawn(move || {
                let mut w = WriterCore::new(heap::view(&seg));
                // An untethered reader gates only while it pins: this completes.
                for v in 1..=4 {
                    write_spin(&mut w, v, 16);
                }
            })
        };
        // Pin the oldest record and read it in place if it is committed:
        // loom flags an overwrite that races the read.
        let head = r.view.producer().head.load(Ordering::Acquire);
        let safe = r.pin(head);
        let off = safe & 63;
        if r.view.word(off).load(Ordering::Acquire) == data_stamp(safe) {
            let mut buf = [0u8; 16];
            // SAFETY: inside the ring; committed and pinned.
            unsafe { r.view.read_payload(off + 16, &mut buf) };
            assert!(buf.iter().all(|&b| b == buf[0]));
        }
        r.unpin();
        writer.join().unwrap();
    });
}
