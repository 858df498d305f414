//! The checked-in seed corpora of the `bus_*` targets, written by each
//! target's `--write-seeds` mode (`fuzz/README.md`): a handful of small
//! inputs that reach the interesting paths, so fuzzing starts past them.

use std::path::PathBuf;

fn dir(target: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    dir
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(dir(target).join(name), bytes).expect("write a seed");
}

/// `bus_segment_open`: the template ring as it is (mode 0), with its
/// sizes taken from the header, an Overwrite policy, a zero magic, a short
/// file and an old layout version.
pub fn segment_open(data: &[u8], ctl: &[u8]) {
    let base = |mode: u8| {
        let mut s = vec![mode, 0, 0, 0, 0];
        s.extend_from_slice(&data[..368]);
        s.extend_from_slice(&data[4096..4128]);
        s.extend_from_slice(&ctl[..768]);
        s
    };
    write("bus_segment_open", "valid", &base(0));
    write("bus_segment_open", "sized_by_header", &base(1 | 8));
    let mut overwrite = base(0);
    overwrite[5 + 44] = 2;
    write("bus_segment_open", "overwrite", &overwrite);
    let mut uninit = base(0);
    uninit[5..13].fill(0);
    write("bus_segment_open", "uninitialized", &uninit);
    let mut short = base(2);
    short[1..3].copy_from_slice(&100u16.to_le_bytes());
    write("bus_segment_open", "short", &short);
    let mut v1 = base(0);
    v1[5 + 8] = 1;
    write("bus_segment_open", "version1", &v1);
}

/// `bus_reader` opcodes (the order of `Op` in the target).
const DATA: u8 = 0;
const GAP: u8 = 1;
const PAD: u8 = 2;
const PUBLISH: u8 = 3;
const SCRIBBLE: u8 = 4;
const TRY_READ: u8 = 6;
const DRAIN: u8 = 7;
const PROBE: u8 = 8;
const NEXT_CHUNK: u8 = 9;

/// `bus_reader`: records read one by one, drained, wrapped with padding,
/// a gap record, a probe then a read, raw chunks, and a moved head.
pub fn reader() {
    let prelude = |p0: u32, seq: u64| {
        let mut s = p0.to_le_bytes().to_vec();
        s.extend_from_slice(&seq.to_le_bytes());
        s
    };
    let data = |len: u16, fill: u8| {
        let mut s = vec![DATA];
        s.extend_from_slice(&len.to_le_bytes());
        s.extend_from_slice(&[0, fill]);
        s
    };
    let mut simple = prelude(0, 0);
    for i in 0..3 {
        simple.extend(data(10 + i * 7, i as u8));
    }
    simple.extend([PUBLISH, TRY_READ, TRY_READ, DRAIN, 7, TRY_READ]);
    write("bus_reader", "simple", &simple);

    // Near the end of a lap: records wrap behind padding.
    let mut wrap = prelude(250, 1 << 32);
    for i in 0..4 {
        wrap.extend(data(300, i));
    }
    wrap.extend([PUBLISH, DRAIN, 7, NEXT_CHUNK, 0, 3, NEXT_CHUNK, 0, 3]);
    write("bus_reader", "wrap", &wrap);

    let mut gap = prelude(3, 100);
    gap.extend(data(5, 1));
    gap.extend([GAP, 1, 0, 9]);
    gap.extend(data(5, 2));
    gap.extend([
        PAD, PUBLISH, PROBE, TRY_READ, PROBE, TRY_READ, TRY_READ, TRY_READ,
    ]);
    write("bus_reader", "gap", &gap);

    // Published records, then the head moved past some (a lapping writer).
    let mut moved = prelude(0, 0);
    for i in 0..3 {
        moved.extend(data(40, i));
    }
    moved.extend([
        PUBLISH, NEXT_CHUNK, 0, 0, SCRIBBLE, 2, 4, 0, 0, 0, 0, 0, 0, 0,
    ]);
    moved.extend([
        NEXT_CHUNK, 0, 2, TRY_READ, NEXT_CHUNK, 200, 1, 0, 0, 0, 0, 0, 0, 0, 0, 3,
    ]);
    write("bus_reader", "moved_head", &moved);
}

/// `bus_replica_commit`: a fresh replica taking data records, a numbered
/// one with a gap record, a chunk that wraps behind padding, and one with
/// a bad length.
pub fn replica_commit() {
    let prelude = |p0: u32, numbered: bool, seq: u64| {
        let mut s = vec![0]; // a fresh replica
        s.extend_from_slice(&p0.to_le_bytes());
        s.push(if numbered { 0 } else { 1 });
        s.extend_from_slice(&seq.to_le_bytes());
        s
    };
    let data = |len: u16, fill: u8| {
        let mut s = vec![0];
        s.extend_from_slice(&len.to_le_bytes());
        s.extend_from_slice(&[0, fill]);
        s
    };
    let stop = [4u8, 0];
    let mut fresh = prelude(0, false, 0);
    fresh.extend(data(20, 1));
    fresh.extend(data(33, 2));
    fresh.extend(stop);
    fresh.extend(data(7, 3));
    fresh.extend(stop);
    write("bus_replica_commit", "fresh", &fresh);

    let mut numbered = prelude(7, true, 41);
    numbered.extend(data(16, 1));
    numbered.extend([1, 1, 0, 5]);
    numbered.extend(data(64, 2));
    numbered.extend(stop);
    write("bus_replica_commit", "numbered_gap", &numbered);

    let mut wrap = prelude(240, true, 5);
    wrap.extend(data(100, 1));
    wrap.extend([2]);
    wrap.extend(data(100, 2));
    wrap.extend(stop);
    write("bus_replica_commit", "wrap", &wrap);

    let mut bad = prelude(0, false, 0);
    bad.extend(data(20, 1));
    bad.extend([4, 3, 17, 0]);
    write("bus_replica_commit", "bad_length", &bad);
}
