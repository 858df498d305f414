//! Large typed messages written in place ([`shmbus::Fill`] and
//! [`shmbus::Publisher::send_filled`]), read by ordinary checked
//! subscribers.

mod common;

use std::{cell::Cell, time::Duration};

use common::TempRoot;
use rkyv::{Archive, Serialize};
use shmbus::{Error, Fill, Row};

/// The message as subscribers see it.
#[derive(Archive, Serialize, Debug, Clone, PartialEq)]
struct Image {
    width: u32,
    height: u32,
    encoding: String,
    data: Vec<u8>,
}

/// The publisher's twin: `data` is written in place, row by row.
#[derive(Archive, Serialize)]
#[rkyv(as = ArchivedImage)]
struct ImageOut {
    width: u32,
    height: u32,
    encoding: String,
    data: Fill,
}

const WAIT: Duration = Duration::from_secs(10);

/// The byte a "camera" writes at column `x` of row `y` of frame `frame`.
fn pixel(frame: u32, y: usize, x: usize) -> u8 {
    (frame as usize)
        .wrapping_mul(31)
        .wrapping_add(y.wrapping_mul(7))
        .wrapping_add(x) as u8
}

fn frame_out(width: usize, height: usize) -> ImageOut {
    ImageOut {
        width: width as u32,
        height: height as u32,
        encoding: "rgba8-with-a-long-name".into(),
        data: Fill::rows(height, width * 4),
    }
}

/// A camera writing frame `frame`: checks rows come in order, once each,
/// zeroed; counts them.
fn camera(frame: u32, calls: &Cell<usize>) -> impl FnMut(Row, &mut [u8]) + '_ {
    move |row, bytes| {
        assert_eq!(row.fill, 0);
        assert_eq!(row.index, calls.get(), "rows out of order");
        assert!(
            bytes.iter().all(|&b| b == 0),
            "row {} not zeroed",
            row.index
        );
        calls.set(calls.get() + 1);
        for (x, b) in bytes.iter_mut().enumerate() {
            *b = pixel(frame, row.index, x);
        }
    }
}

fn frame_vec(frame: u32, width: usize, height: usize) -> Image {
    let row_len = width * 4;
    Image {
        width: width as u32,
        height: height as u32,
        encoding: "rgba8-with-a-long-name".into(),
        data: (0..height)
            .flat_map(|y| (0..row_len).map(move |x| pixel(frame, y, x)))
            .collect(),
    }
}

/// The case of issue 9: an 8 MiB image filled row by row in the ring, read
/// back by a checked subscriber as `ArchivedImage`, byte for byte what rkyv
/// makes of the same image built in a `Vec`.
#[test]
fn image_of_8_mib_written_in_place_reads_back_checked() {
    let root = TempRoot::new("in-place-8m");
    let bus = root
        .builder()
        .capacity(64 << 20)
        .max_message(24 << 20)
        .build()
        .unwrap();
    let mut subscriber = bus.subscriber::<Image>("camera").unwrap();
    let mut publisher = bus.publisher::<Image>("camera").unwrap();
    let (width, height) = (2048, 1024); // 4 bytes a pixel: 8 MiB
    for frame in 0..3u32 {
        let calls = Cell::new(0);
        publisher
            .send_filled(&frame_out(width, height), camera(frame, &calls))
            .unwrap();
        // Each row written once, whether the publisher sized the archive
        // with a loan (first frame) or by counting (later frames).
        assert_eq!(calls.get(), height, "frame {frame}");

        let image = subscriber.recv_timeout(WAIT).unwrap();
        assert_eq!(image.width, width as u32);
        assert_eq!(image.height, height as u32);
        assert_eq!(image.encoding, "rgba8-with-a-long-name");
        assert_eq!(image.data.len(), 8 << 20);
        let expected = frame_vec(frame, width, height);
        assert!(image.data.as_slice() == expected.data.as_slice());
        let archived = rkyv::to_bytes::<rkyv::rancor::Error>(&expected).unwrap();
        assert!(
            image.bytes() == &archived[..],
            "the in-place archive differs from rkyv's"
        );
    }
}

/// Bytes a closure leaves alone read as zero, even where the ring held an
/// earlier message's bytes (several laps of a small ring).
#[test]
fn unwritten_bytes_are_zero_not_stale_ring_contents() {
    let root = TempRoot::new("in-place-zero");
    let bus = root
        .builder()
        .capacity(1 << 16)
        .max_message(1 << 14)
        .build()
        .unwrap();
    let mut subscriber = bus.subscriber::<Image>("z").unwrap();
    let mut publisher = bus.publisher::<Image>("z").unwrap();
    let len = 10_000;
    // ~10 KiB a message, 2 per round: 20 rounds are 6 laps of 64 KiB.
    for round in 0..20 {
        let stale = Image {
            width: 0,
            height: 0,
            encoding: String::new(),
            data: vec![0xAB; len],
        };
        publisher.send(&stale).unwrap();
        let out = ImageOut {
            width: 1,
            height: 1,
            encoding: String::new(),
            data: Fill::bytes(len),
        };
        // Writes only the first and last byte of its one row.
        publisher
            .send_filled(&out, |_, buf| {
                buf[0] = 1;
                buf[len - 1] = 2;
            })
            .unwrap();
        let first = subscriber.recv_timeout(WAIT).unwrap();
        assert!(first.data.iter().all(|&b| b == 0xAB));
        drop(first);
        let image = subscriber.recv_timeout(WAIT).unwrap();
        assert_eq!(image.data.len(), len);
        assert_eq!((image.data[0], image.data[len - 1]), (1, 2));
        assert!(
            image.data[1..len - 1].iter().all(|&b| b == 0),
            "round {round}: stale bytes under a Fill"
        );
    }
}

/// A Fill larger than the ring's largest message, or than an archive can
/// address, fails before its closure runs; the publisher stays usable.
#[test]
fn oversized_fills_fail_without_running_the_closure() {
    let root = TempRoot::new("in-place-big");
    let bus = root
        .builder()
        .capacity(1 << 16)
        .max_message(4096)
        .build()
        .unwrap();
    let mut subscriber = bus.subscriber::<Image>("big").unwrap();
    let mut publisher = bus.publisher::<Image>("big").unwrap();
    let ran = Cell::new(false);
    let out = |rows: usize, row_len: usize| ImageOut {
        width: 0,
        height: 0,
        encoding: String::new(),
        data: Fill::rows(rows, row_len),
    };
    let mut write = |_: Row, _: &mut [u8]| ran.set(true);
    match publisher.send_filled(&out(2, 4096), &mut write) {
        Err(Error::TooLarge { len, max }) => {
            assert!(len > 8192 && max == 4096, "{len} {max}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    match publisher.send_filled(&out(usize::MAX, 2), &mut write) {
        Err(Error::Serialize(reason)) => assert!(reason.contains("MAX_FILL"), "{reason}"),
        other => panic!("expected Serialize, got {other:?}"),
    }
    match publisher.send_filled(&out(1, shmbus::MAX_FILL + 1), &mut write) {
        Err(Error::Serialize(reason)) => assert!(reason.contains("MAX_FILL"), "{reason}"),
        other => panic!("expected Serialize, got {other:?}"),
    }
    assert!(!ran.get(), "a closure ran for a message that was not sent");
    assert!(subscriber.try_recv().unwrap().is_none());
    // Still usable, with fills and without.
    let small = ImageOut {
        width: 3,
        height: 0,
        encoding: String::new(),
        data: Fill::bytes(16),
    };
    publisher.send_filled(&small, |_, b| b.fill(9)).unwrap();
    publisher
        .send(&Image {
            width: 4,
            height: 0,
            encoding: String::new(),
            data: vec![5; 8],
        })
        .unwrap();
    let a = subscriber.recv_timeout(WAIT).unwrap();
    assert_eq!(
        (a.width.to_native(), a.data.as_slice()),
        (3, &[9u8; 16][..])
    );
    drop(a);
    let b = subscriber.recv_timeout(WAIT).unwrap();
    assert_eq!((b.width.to_native(), b.data.as_slice()), (4, &[5u8; 8][..]));
}

/// `try_send_filled` on a full ring is `Full`, and the closure does not run; a
/// closure that panics publishes nothing.
#[test]
fn full_ring_and_panicking_fill_publish_nothing() {
    let root = TempRoot::new("in-place-full");
    let bus = root
        .builder()
        .capacity(1 << 16)
        .max_message(1 << 14)
        .build()
        .unwrap();
    let mut subscriber = bus.subscriber::<Image>("f").unwrap();
    let mut publisher = bus.publisher::<Image>("f").unwrap();
    let ran = Cell::new(0usize);
    let out = |seq: u32| ImageOut {
        width: seq,
        height: 0,
        encoding: String::new(),
        data: Fill::bytes(10_000),
    };
    let write = |seq: u32| {
        let ran = &ran;
        move |_: Row, b: &mut [u8]| {
            ran.set(ran.get() + 1);
            b.fill(seq as u8);
        }
    };
    let mut sent = 0u32;
    loop {
        match publisher.try_send_filled(&out(sent), write(sent)) {
            Ok(()) => sent += 1,
            Err(Error::Full) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(sent < 100, "a 64 KiB ring never filled");
    }
    assert!(sent >= 3, "only {sent} messages of 10 KB fit 64 KiB");
    assert_eq!(
        ran.get(),
        sent as usize,
        "a closure ran for a message not sent"
    );

    let mut got = Vec::new();
    while let Some(s) = subscriber.try_recv().unwrap() {
        got.push(s.width);
    }
    assert_eq!(got, (0..sent).collect::<Vec<_>>());
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let doomed = ImageOut {
            width: 999,
            height: 0,
            encoding: String::new(),
            data: Fill::bytes(8),
        };
        let _ = publisher.send_filled(&doomed, |_, _| panic!("the camera is unplugged"));
    }));
    assert!(panicked.is_err());
    publisher.send_filled(&out(1000), write(1000)).unwrap();
    let next = subscriber.recv_timeout(WAIT).unwrap();
    assert_eq!(next.width, 1000, "the panicked message was published");
}
