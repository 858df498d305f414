//! A "camera driver" publishing 8 MiB RGBA frames written row by row
//! straight into the ring (`Fill` + `Publisher::send_filled`), and a
//! checked subscriber of the ordinary `Image` type reading them in place.
//!
//! ```text
//! cargo run --release -p shmbus --example camera
//! ```

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
const FRAMES: u32 = 30;

/// What the sensor delivers for row `y` of frame `n` (a moving gradient).
fn sensor_row(n: u32, y: usize, row: &mut [u8]) {
    for (x, px) in row.chunks_exact_mut(4).enumerate() {
        px.copy_from_slice(&[(x + n as usize) as u8, y as u8, n as u8, 255]);
    }
}

fn main() -> Result<(), shmbus::Error> {
    let root = std::env::temp_dir().join(format!("shmbus-camera-{}", std::process::id()));
    let bus = Bus::builder()
        .root(&root)
        .capacity(64 << 20)
        .max_message(16 << 20)
        .build()?;
    let mut subscriber = bus.subscriber::<Image>("camera.front")?;
    let mut publisher = bus.publisher::<Image>("camera.front")?;

    let viewer = std::thread::spawn(move || -> Result<(), shmbus::Error> {
        for n in 0..FRAMES {
            let image = subscriber.recv_timeout(Duration::from_secs(10))?; // validated
            let mut expected = vec![0u8; WIDTH * 4];
            sensor_row(n, HEIGHT - 1, &mut expected);
            assert_eq!(image.data.len(), WIDTH * HEIGHT * 4);
            assert_eq!(&image.data[(HEIGHT - 1) * WIDTH * 4..], &expected[..]);
            println!(
                "frame {n}: {}x{} {} ({} bytes, read in place)",
                image.width,
                image.height,
                image.encoding,
                image.data.len()
            );
        }
        Ok(())
    });

    let start = Instant::now();
    for n in 0..FRAMES {
        let frame = ImageOut {
            width: WIDTH as u32,
            height: HEIGHT as u32,
            encoding: "rgba8".into(),
            data: Fill::rows(HEIGHT, WIDTH * 4),
        };
        publisher.send_filled(&frame, |row, bytes| sensor_row(n, row.index, bytes))?;
    }
    println!(
        "published {FRAMES} frames of {} MiB in {:?}",
        (WIDTH * HEIGHT * 4) >> 20,
        start.elapsed()
    );
    viewer.join().expect("viewer thread")?;
    drop(publisher);
    std::fs::remove_dir_all(&root).ok();
    Ok(())
}
