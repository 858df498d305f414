//! Per-message cost of the ring's hot paths in one thread (issue 9): what
//! receiving costs with [`RingReader::try_read`] against
//! [`RingReader::drain`], and what publishing costs while the writer's gate
//! is refreshed (a subscriber that keeps up, so the writer recomputes its
//! limit every eighth of the ring).
//!
//! - `receive/try_read`, `receive/drain64`: 64 B messages published
//!   untimed in chunks of half the ring, then only their consumption is
//!   timed (the receiver touches one payload byte).
//! - `publish/gated`: a subscriber is attached and drains (untimed) after
//!   every chunk, so every chunk crosses gate refreshes; only the writes
//!   are timed. `publish/free`: no subscriber (no gate), for comparison.
//! - `take/try_take/*`: [`RingObserver::try_take`], the owned copy out of
//!   the ring (the Zenoh gateway's export), per payload size, against
//!   `take/memcpy_to_vec/*`, a plain copy of a buffer into a fresh `Vec`.
//!
//! ```text
//! cargo bench -p shmbus-bus --bench read_path
//! ```

use std::{
    hint::black_box,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shmbus_bus::{
    ReadEvent, RingConfig, RingObserver, RingReader, RingWriter, StartAt, Taken, WaitStrategy,
};

/// Payload bytes of every message here (the issue's 64 B rows).
const SIZE: usize = 64;
/// Ring capacity: 1 MiB.
const CAPACITY: u64 = 1 << 20;
/// Messages per `drain` call.
const BATCH: usize = 64;

/// A private directory under /dev/shm, removed on drop.
struct ShmDir(PathBuf);

impl ShmDir {
    fn new(tag: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/dev/shm/shmbus-readpath-{}-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a bench directory in /dev/shm");
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ring(dir: &Path, name: &str) -> (PathBuf, RingWriter) {
    let path = dir.join(format!("{name}.ring"));
    let config = RingConfig {
        capacity: CAPACITY,
        max_message: 64 << 10,
        ..RingConfig::default()
    };
    let writer = RingWriter::create(&path, &config).expect("creating a ring");
    (path, writer)
}

/// Messages of `SIZE` bytes that fill half the ring (one chunk).
fn chunk() -> u64 {
    (CAPACITY / 2) / (SIZE as u64 + 16)
}

/// Times `timed(k)` over chunks that `untimed(k)` prepared.
fn timed_chunks(iters: u64, mut untimed: impl FnMut(u64), mut timed: impl FnMut(u64)) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let k = left.min(chunk());
        untimed(k);
        let t0 = Instant::now();
        timed(k);
        total += t0.elapsed();
        left -= k;
    }
    total
}

fn drain_all(reader: &mut RingReader, k: u64) {
    let mut got = 0;
    while got < k {
        let d = reader
            .drain(BATCH, |p| {
                black_box(p[0]);
            })
            .expect("drain");
        got += d.messages as u64;
    }
}

fn receive(c: &mut Criterion) {
    let dir = ShmDir::new("receive");
    let mut g = c.benchmark_group("receive");
    g.throughput(Throughput::Elements(1));
    let buf = vec![7u8; SIZE];
    for name in ["try_read", "drain64"] {
        let (path, writer) = ring(dir.path(), name);
        let writer = std::cell::RefCell::new(writer);
        let mut reader = RingReader::open(&path, StartAt::Latest).expect("reader");
        g.bench_function(BenchmarkId::new(name, SIZE), |b| {
            b.iter_custom(|iters| {
                timed_chunks(
                    iters,
                    |k| {
                        let mut w = writer.borrow_mut();
                        for _ in 0..k {
                            w.try_write(&buf).expect("write");
                        }
                    },
                    |k| {
                        if name == "drain64" {
                            drain_all(&mut reader, k);
                        } else {
                            for _ in 0..k {
                                match reader.try_read().expect("read") {
                                    ReadEvent::Message(m) => {
                                        black_box(m.payload()[0]);
                                    }
                                    other => panic!("expected a message, got {other:?}"),
                                }
                            }
                        }
                    },
                )
            })
        });
    }
    g.finish();
}

fn publish(c: &mut Criterion) {
    let dir = ShmDir::new("publish");
    let mut g = c.benchmark_group("publish");
    g.throughput(Throughput::Elements(1));
    let buf = vec![7u8; SIZE];
    for gated in [true, false] {
        let name = if gated { "gated" } else { "free" };
        let (path, mut writer) = ring(dir.path(), name);
        let mut reader = gated.then(|| RingReader::open(&path, StartAt::Latest).expect("reader"));
        let written = std::cell::Cell::new(0u64);
        g.bench_function(BenchmarkId::new(name, SIZE), |b| {
            b.iter_custom(|iters| {
                timed_chunks(
                    iters,
                    |_| {
                        if let Some(reader) = reader.as_mut() {
                            let k = written.replace(0);
                            drain_all(reader, k);
                        }
                    },
                    |k| {
                        for _ in 0..k {
                            writer
                                .write(black_box(&buf), WaitStrategy::BusySpin, None)
                                .expect("write");
                        }
                        written.set(written.get() + k);
                    },
                )
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

/// The observer's copy out of the ring ([`RingObserver::try_take`]: the
/// gateway's export) against a plain `memcpy` of the same bytes into a
/// fresh `Vec`, per payload size.
fn take(c: &mut Criterion) {
    let dir = ShmDir::new("take");
    let mut g = c.benchmark_group("take");
    for size in [64usize, 4096, 60_000] {
        g.throughput(Throughput::Bytes(size as u64));
        let buf = vec![7u8; size];
        let (path, writer) = ring(dir.path(), &format!("take{size}"));
        let writer = std::cell::RefCell::new(writer);
        let mut observer = RingObserver::open(&path, StartAt::Latest).expect("observer");
        let per_chunk = (CAPACITY / 2) / (size as u64 + 16);
        g.bench_function(BenchmarkId::new("try_take", size), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let k = left.min(per_chunk);
                    {
                        let mut w = writer.borrow_mut();
                        for _ in 0..k {
                            w.try_write(&buf).expect("write");
                        }
                    }
                    let t0 = Instant::now();
                    for _ in 0..k {
                        match observer.try_take().expect("take") {
                            Taken::Message { payload, .. } => {
                                black_box(payload);
                            }
                            other => panic!("expected a message, got {other:?}"),
                        }
                    }
                    total += t0.elapsed();
                    left -= k;
                }
                total
            })
        });
        g.bench_function(BenchmarkId::new("memcpy_to_vec", size), |b| {
            b.iter(|| black_box(black_box(&buf[..]).to_vec()))
        });
    }
    g.finish();
}

criterion_group! {
    name = read_path;
    config = config();
    targets = receive, publish, take
}
criterion_main!(read_path);
