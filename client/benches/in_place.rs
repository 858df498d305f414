//! Big typed messages, one thread: an `Image` whose `data` a "camera"
//! copies row by row from its frame buffer, published and received
//! (checked) once per iteration.
//!
//! - `from_vec`: the camera writes its rows into the `Image`'s `Vec`, then
//!   `Publisher::send` serializes the `Image` into the ring (a second copy
//!   of the payload).
//! - `in_place`: `Publisher::send_filled` with a `Fill` field: the camera
//!   writes each (zeroed) row straight into the ring.
//! - `memcpy`: one copy of the payload between two buffers, the floor of
//!   either.
//!
//! Each iteration also receives the message with a checked `try_recv` and
//! reads its length and one byte per 4 KiB page.
//!
//! ```text
//! cargo bench -p shmbus --bench in_place
//! ```

use std::{hint::black_box, path::PathBuf};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rkyv::{Archive, Serialize};
use shmbus::{Bus, Fill};

#[derive(Archive, Serialize)]
struct Image {
    width: u32,
    height: u32,
    encoding: String,
    data: Vec<u8>,
}

#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedImage)]
struct ImageOut {
    width: u32,
    height: u32,
    encoding: String,
    data: Fill,
}

/// A private directory under /dev/shm, removed on drop.
struct ShmDir(PathBuf);

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn touch(data: &[u8]) -> u64 {
    data.iter().step_by(4096).map(|&b| u64::from(b)).sum()
}

fn images(c: &mut Criterion) {
    let dir = ShmDir(PathBuf::from(format!(
        "/dev/shm/shmbus-bench-in-place-{}",
        std::process::id()
    )));
    let bus = Bus::builder()
        .root(&dir.0)
        .capacity(64 << 20)
        .max_message(24 << 20)
        .build()
        .expect("bus");
    // (width, height) in RGBA pixels: 1 MiB and 8 MiB.
    for (name, width, height) in [("1MiB", 512usize, 512usize), ("8MiB", 2048, 1024)] {
        let row_len = width * 4;
        let len = row_len * height;
        let mut g = c.benchmark_group(format!("image_{name}"));
        g.throughput(Throughput::Bytes(len as u64));
        // The camera's frame buffer, rows copied from here.
        let frame: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let topic = format!("img-{name}");
        let mut subscriber = bus.subscriber::<Image>(&topic).expect("subscriber");
        let mut publisher = bus.publisher::<Image>(&topic).expect("publisher");

        let mut image = Image {
            width: width as u32,
            height: height as u32,
            encoding: "rgba8".into(),
            data: vec![0; len],
        };
        g.bench_function(BenchmarkId::new("from_vec", name), |b| {
            b.iter(|| {
                for (dst, src) in image
                    .data
                    .chunks_exact_mut(row_len)
                    .zip(frame.chunks_exact(row_len))
                {
                    dst.copy_from_slice(src);
                }
                publisher.send(&image).expect("send");
                let got = subscriber.try_recv().expect("recv").expect("a message");
                black_box((got.data.len(), touch(&got.data)))
            })
        });

        let out = ImageOut {
            width: width as u32,
            height: height as u32,
            encoding: "rgba8".into(),
            data: Fill::rows(height, row_len),
        };
        g.bench_function(BenchmarkId::new("in_place", name), |b| {
            b.iter(|| {
                publisher
                    .send_filled(&out, |row, bytes| {
                        let start = row.index * row_len;
                        bytes.copy_from_slice(&frame[start..start + row_len]);
                    })
                    .expect("send_filled");
                let got = subscriber.try_recv().expect("recv").expect("a message");
                black_box((got.data.len(), touch(&got.data)))
            })
        });

        let mut dst = vec![0u8; len];
        g.bench_function(BenchmarkId::new("memcpy", name), |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&frame));
                black_box(touch(&dst))
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = images
}
criterion_main!(benches);
