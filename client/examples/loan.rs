//! A "camera driver" publishing 8 MiB RGBA frames that are written row by
//! row straight into the ring, and a viewer reading them in place as the
//! ordinary `Image` type, checked.
//!
//! ```text
//! cargo run --release --example loan            # 30 frames
//! cargo run --release --example loan -- --count 3
//! ```
//!
//! Options: `--count N` frames, `--bus NAME`; `SHMBUS_ROOT=DIR`.
//!
//! Shows: `Publisher::send_filled`. The driver declares a twin of `Image`
//! whose `data` is a `Fill`; shmbus loans exactly the archive's size in the
//! ring (as `Publisher::loan` does), rkyv writes the small fields, and the
//! closure writes each row into the loan: the frame never exists in a `Vec`.
//! Dropping a loan publishes nothing; this one is committed when the last
//! row is written. The two roles are threads here for brevity; they work
//! the same in two processes.

mod common;

use std::time::{Duration, Instant};

use rkyv::{Archive, Serialize};
use shmbus::{Bus, Fill};

/// The message, as every subscriber sees it.
#[derive(Archive, Serialize)]
struct Image {
    width: u32,
    height: u32,
    encoding: String,
    data: Vec<u8>,
}

/// The driver's twin of `Image`: `data` is written in place.
#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedImage)]
struct ImageOut {
    width: u32,
    height: u32,
    encoding: String,
    data: Fill,
}

const WIDTH: usize = 2048;
const HEIGHT: usize = 1024;

/// What the sensor delivers for row `y` of frame `n` (a moving gradient).
fn sensor_row(n: u32, y: usize, row: &mut [u8]) {
    for (x, px) in row.chunks_exact_mut(4).enumerate() {
        px.copy_from_slice(&[(x + n as usize) as u8, y as u8, n as u8, 255]);
    }
}

fn main() -> Result<(), shmbus::Error> {
    let frames: u32 = common::arg("count").unwrap_or(30);
    let bus = Bus::builder()
        .name(common::bus_name())
        .capacity(64 << 20) // room for several 8 MiB frames in flight
        .max_message(16 << 20)
        .build()?;
    let mut subscriber = bus.subscriber::<Image>("camera.front")?;
    let mut publisher = bus.publisher::<Image>("camera.front")?;

    let viewer = std::thread::spawn(move || -> Result<(), shmbus::Error> {
        let mut expected = vec![0u8; WIDTH * 4];
        for n in 0..frames {
            let image = subscriber.recv_timeout(Duration::from_secs(30))?; // validated
            let rows: Vec<&[u8]> = image.data.chunks(WIDTH * 4).collect();
            let ok = rows.len() == HEIGHT
                && [0, HEIGHT / 2, HEIGHT - 1].iter().all(|&y| {
                    sensor_row(n, y, &mut expected);
                    rows[y] == &expected[..]
                });
            println!(
                "frame {n}: {}x{} {} ({} bytes, read in place, rows {})",
                image.width,
                image.height,
                image.encoding,
                image.data.len(),
                if ok { "as sent" } else { "WRONG" }
            );
        }
        Ok(())
    });

    let start = Instant::now();
    for n in 0..frames {
        let frame = ImageOut {
            width: WIDTH as u32,
            height: HEIGHT as u32,
            encoding: "rgba8".into(),
            data: Fill::rows(HEIGHT, WIDTH * 4),
        };
        publisher.send_filled(&frame, |row, bytes| sensor_row(n, row.index, bytes))?;
    }
    println!(
        "published {frames} frames of {} MiB in {:?}",
        (WIDTH * HEIGHT * 4) >> 20,
        start.elapsed()
    );
    viewer.join().expect("viewer thread")?;
    Ok(())
}
