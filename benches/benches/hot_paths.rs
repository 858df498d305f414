//! In-process hot paths of shmbus, one thread: what publishing and consuming
//! one message costs in the library itself, without a second core.
//!
//! - `publish/*`: no subscriber attached (the ring never fills): the raw
//!   copy (`RingWriter::write`), the raw loan with the payload pattern written
//!   in place, the typed `Publisher::send` of a prepared `Msg`, and the typed
//!   `send_filled` with the payload written in place (`msg::send_in_place`).
//! - `consume/*`: messages are published untimed in chunks, then only their
//!   consumption is timed: `RingReader::try_read` and `RingReader::drain`
//!   (the receiver touches one payload byte: this is the ring's own cost).
//! - `validation/*`: rkyv's checked `access` against `access_unchecked` on an
//!   archive in memory (the validation alone), and the typed
//!   `Subscriber::try_recv` with validation (checked) and with
//!   `trust_publishers` (unchecked), per message size (the receiver reads
//!   `seq` and the payload length only).
//! - `batch/*`: 64 messages of 64 B per iteration: `write_batch`,
//!   `send_batch`, and `drain` raw and typed.
//!
//! ```text
//! cargo bench -p shmbus-benches --bench hot_paths
//! ```

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shmbus::{Bus, Publisher, StartAt, Subscriber, WaitStrategy};
use shmbus_benches::msg::{self, ArchivedMsg, Msg};
use shmbus_benches::payload;
use shmbus_bus::{ReadEvent, RingConfig, RingReader, RingWriter};

const SIZES: [usize; 3] = [64, 1024, 64 * 1024];
/// Ring of every bench: the default 4 MiB, 1 MiB messages.
const CAPACITY: u64 = 4 << 20;
/// Messages per batch in `batch/*`.
const BATCH: usize = 64;

/// A private directory under /dev/shm, removed on drop.
struct ShmDir(PathBuf);

impl ShmDir {
    fn new(tag: &str) -> ShmDir {
        let dir = PathBuf::from(format!("/dev/shm/shmbus-hot-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a bench directory in /dev/shm");
        ShmDir(dir)
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

fn pattern(seq: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    payload::write(seq, &mut v);
    v
}

fn bus(dir: &Path) -> Bus {
    Bus::builder()
        .root(dir)
        .capacity(CAPACITY)
        .build()
        .expect("bus configuration")
}

/// How many messages of `record` ring bytes fit in half the ring (chunks of
/// untimed publishing before timed consumption).
fn chunk(record: usize) -> u64 {
    ((CAPACITY as usize / 2) / (record + 32)).clamp(1, 4096) as u64
}

fn raw_ring(dir: &Path, name: &str) -> RingWriter {
    RingWriter::create(&dir.join(format!("{name}.ring")), &RingConfig::default())
        .expect("creating a ring")
}

fn publish(c: &mut Criterion) {
    let dir = ShmDir::new("publish");
    let mut g = c.benchmark_group("publish");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let buf = pattern(1, size);
        let mut writer = raw_ring(dir.path(), &format!("write-{size}"));
        g.bench_function(BenchmarkId::new("raw_write", size), |b| {
            b.iter(|| {
                writer
                    .write(black_box(&buf), WaitStrategy::BusySpin, None)
                    .expect("write")
            })
        });
        drop(writer);

        let mut writer = raw_ring(dir.path(), &format!("loan-{size}"));
        let mut seq = 0u64;
        g.bench_function(BenchmarkId::new("raw_loan_in_place", size), |b| {
            b.iter(|| {
                let mut loan = writer
                    .loan(size, WaitStrategy::BusySpin, None)
                    .expect("loan");
                payload::write_uninit(seq, &mut loan.as_uninit()[..size]);
                loan.commit(size);
                seq += 1;
            })
        });
        drop(writer);

        let bus = bus(dir.path());
        let mut publisher: Publisher<Msg> =
            bus.publisher(&format!("send-{size}")).expect("publisher");
        let m = Msg {
            seq: 1,
            payload: buf.clone(),
        };
        g.bench_function(BenchmarkId::new("typed_send", size), |b| {
            b.iter(|| publisher.send(black_box(&m)).expect("send"))
        });
        drop(publisher);

        let mut publisher: Publisher<Msg> = bus
            .publisher(&format!("inplace-{size}"))
            .expect("publisher");
        g.bench_function(BenchmarkId::new("typed_send_filled", size), |b| {
            b.iter(|| {
                msg::send_in_place(&mut publisher, seq, size).expect("send_filled");
                seq += 1;
            })
        });
    }
    g.finish();
}

/// Times `consume(k)` over chunks that `produce(k)` published untimed.
fn timed_chunks(
    iters: u64,
    chunk: u64,
    mut produce: impl FnMut(u64),
    mut consume: impl FnMut(u64),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let k = left.min(chunk);
        produce(k);
        let t0 = Instant::now();
        consume(k);
        total += t0.elapsed();
        left -= k;
    }
    total
}

fn consume(c: &mut Criterion) {
    let dir = ShmDir::new("consume");
    let mut g = c.benchmark_group("consume");
    for size in SIZES {
        let buf = pattern(1, size);
        let k = chunk(size);
        for drain in [false, true] {
            let name = if drain { "raw_drain64" } else { "raw_try_read" };
            let path = dir.path().join(format!("{name}-{size}.ring"));
            let writer = std::cell::RefCell::new(
                RingWriter::create(&path, &RingConfig::default()).expect("ring"),
            );
            let mut reader = RingReader::open(&path, StartAt::Latest).expect("reader");
            g.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter_custom(|iters| {
                    timed_chunks(
                        iters,
                        k,
                        |k| {
                            let mut w = writer.borrow_mut();
                            for _ in 0..k {
                                w.try_write(&buf).expect("write");
                            }
                        },
                        |k| {
                            if drain {
                                let mut got = 0;
                                while got < k {
                                    let d = reader
                                        .drain(BATCH, |p| {
                                            black_box(p[0]);
                                        })
                                        .expect("drain");
                                    got += d.messages as u64;
                                }
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
    }
    g.finish();
}

fn typed_pair(bus: &Bus, topic: &str, checked: bool) -> (Publisher<Msg>, Subscriber<Msg>) {
    let publisher: Publisher<Msg> = bus.publisher(topic).expect("publisher");
    let mut subscriber: Subscriber<Msg> = bus.subscriber(topic).expect("subscriber");
    if !checked {
        // SAFETY: the only publisher of this topic is the one above, which
        // writes valid archives of `Msg` with rkyv.
        unsafe { subscriber.trust_publishers() };
    }
    assert_eq!(subscriber.publishers().len(), 1, "subscriber not attached");
    (publisher, subscriber)
}

fn validation(c: &mut Criterion) {
    let dir = ShmDir::new("validation");
    let bus = bus(dir.path());
    let mut g = c.benchmark_group("validation");
    for size in SIZES {
        // rkyv's access alone, on an archive in memory: what validation adds.
        let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&Msg {
            seq: 1,
            payload: pattern(1, size),
        })
        .expect("serializing");
        g.bench_function(BenchmarkId::new("rkyv_access_checked", size), |b| {
            b.iter(|| {
                rkyv::access::<ArchivedMsg, rkyv::rancor::Error>(black_box(&archive[..]))
                    .expect("valid archive")
                    .seq
                    .to_native()
            })
        });
        g.bench_function(BenchmarkId::new("rkyv_access_unchecked", size), |b| {
            b.iter(|| {
                // SAFETY: `archive` is rkyv's own serialization of a `Msg`,
                // aligned (AlignedVec) and unmodified.
                unsafe { rkyv::access_unchecked::<ArchivedMsg>(black_box(&archive[..])) }
                    .seq
                    .to_native()
            })
        });
        let m = Msg {
            seq: 1,
            payload: pattern(1, size),
        };
        let k = chunk(msg::archived_len(size));
        for checked in [true, false] {
            let name = if checked { "checked" } else { "unchecked" };
            let (publisher, mut subscriber) =
                typed_pair(&bus, &format!("v-{name}-{size}"), checked);
            let publisher = std::cell::RefCell::new(publisher);
            g.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter_custom(|iters| {
                    timed_chunks(
                        iters,
                        k,
                        |k| {
                            let mut p = publisher.borrow_mut();
                            for _ in 0..k {
                                p.try_send(&m).expect("send");
                            }
                        },
                        |k| {
                            for _ in 0..k {
                                let s = subscriber.try_recv().expect("recv").expect("a message");
                                black_box((s.seq.to_native(), s.payload.len()));
                            }
                        },
                    )
                })
            });
        }
    }
    g.finish();
}

fn batch(c: &mut Criterion) {
    const SIZE: usize = 64;
    let dir = ShmDir::new("batch");
    let bus = bus(dir.path());
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(BATCH as u64));
    let buf = pattern(1, SIZE);
    let bufs: Vec<&[u8]> = (0..BATCH).map(|_| &buf[..]).collect();
    let m = Msg {
        seq: 1,
        payload: buf.clone(),
    };
    let msgs: Vec<&Msg> = (0..BATCH).map(|_| &m).collect();

    let mut writer = raw_ring(dir.path(), "write-batch");
    g.bench_function(BenchmarkId::new("raw_write_batch", SIZE), |b| {
        b.iter(|| {
            writer
                .write_batch(bufs.iter().copied(), WaitStrategy::BusySpin, None)
                .expect("write_batch")
        })
    });
    drop(writer);

    let mut publisher: Publisher<Msg> = bus.publisher("send-batch").expect("publisher");
    g.bench_function(BenchmarkId::new("typed_send_batch", SIZE), |b| {
        b.iter(|| {
            publisher
                .send_batch(msgs.iter().copied())
                .expect("send_batch")
        })
    });
    drop(publisher);

    let path = dir.path().join("drain.ring");
    let writer =
        std::cell::RefCell::new(RingWriter::create(&path, &RingConfig::default()).expect("ring"));
    let mut reader = RingReader::open(&path, StartAt::Latest).expect("reader");
    g.bench_function(BenchmarkId::new("raw_drain", SIZE), |b| {
        b.iter_custom(|iters| {
            timed_chunks(
                iters,
                64,
                |k| {
                    let mut w = writer.borrow_mut();
                    for _ in 0..k {
                        w.write_batch(bufs.iter().copied(), WaitStrategy::BusySpin, None)
                            .expect("write_batch");
                    }
                },
                |k| {
                    for _ in 0..k {
                        let d = reader
                            .drain(BATCH, |p| {
                                black_box(p[0]);
                            })
                            .expect("drain");
                        assert_eq!(d.messages, BATCH);
                    }
                },
            )
        })
    });
    drop(reader);

    for checked in [true, false] {
        let name = if checked {
            "typed_drain_checked"
        } else {
            "typed_drain_unchecked"
        };
        let (publisher, mut subscriber) = typed_pair(&bus, name, checked);
        let publisher = std::cell::RefCell::new(publisher);
        g.bench_function(BenchmarkId::new(name, SIZE), |b| {
            b.iter_custom(|iters| {
                timed_chunks(
                    iters,
                    64,
                    |k| {
                        let mut p = publisher.borrow_mut();
                        for _ in 0..k {
                            p.send_batch(msgs.iter().copied()).expect("send_batch");
                        }
                    },
                    |k| {
                        for _ in 0..k {
                            let n = subscriber
                                .drain(BATCH, |a| {
                                    black_box(a.seq.to_native());
                                })
                                .expect("drain");
                            assert_eq!(n, BATCH);
                        }
                    },
                )
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800))
        .sample_size(20)
        .nresamples(10_000)
}

criterion_group! {
    name = hot_paths;
    config = config();
    targets = publish, consume, validation, batch
}
criterion_main!(hot_paths);
