//! Raw mode: plain Zenoh applications and shmbus exchange bytes through
//! the gateway. A plain Zenoh session (this test process, on the `zenoh`
//! crate only) reads a raw shmbus ring's messages as they are, and its
//! puts arrive as raw messages in a replica ring that a raw shmbus reader
//! reads (and a typed subscriber refuses).

mod common;

use std::time::{Duration, Instant};

use common::{free_port, plain_zenoh, wait_matching, Gw, TestDir, Watchdog};
use shmbus::Bus;
use shmbus_bus::{ReadEvent, RingConfig, RingReader, RingWriter, StartAt};
use shmbus_zenoh::meta::Meta;
use zenoh::Wait;

#[test]
fn plain_zenoh_and_shmbus_exchange_raw_bytes() {
    let _w = Watchdog::new("raw_bytes", Duration::from_secs(90));
    let dir = TestDir::new("raw");
    let root = dir.join("a");
    let port = free_port();
    let listen = format!("tcp/127.0.0.1:{port}");
    let gw = Gw::start(
        "gw-a",
        &[
            "--root",
            root.to_str().unwrap(),
            "--bus",
            "b",
            "--listen",
            &listen,
            "--export",
            "raw",
            "--import",
            "demo/raw/*:raw",
        ],
    );
    gw.wait_log("exporting under", Duration::from_secs(20));

    // The plain Zenoh side.
    let session = plain_zenoh(&listen);
    let (tx, rx) = std::sync::mpsc::channel();
    let _sub = session
        .declare_subscriber("shmbus/b/raw")
        .callback(move |s| {
            let meta = s.attachment().map(|a| Meta::decode(&a.to_bytes()));
            let _ = tx.send((s.payload().to_bytes().into_owned(), meta));
        })
        .wait()
        .unwrap();
    let publisher = session.declare_publisher("demo/raw/in").wait().unwrap();
    wait_matching(&publisher);

    // shmbus -> Zenoh: a raw ring (no type) read by a plain subscriber.
    let topic_dir = shmbus_bus::topic_dir(&root, "b", "raw").unwrap();
    shmbus_bus::create_dir_all(&root, &topic_dir, 0o700).unwrap();
    let ring = shmbus_bus::ring_path(&topic_dir, "sensor").unwrap();
    let mut writer = RingWriter::create(&ring, &RingConfig::default()).unwrap();
    for i in 0..100u32 {
        writer.try_write(format!("raw {i}").as_bytes()).unwrap();
    }
    for i in 0..100u32 {
        let (payload, meta) = rx.recv_timeout(Duration::from_secs(20)).expect("a sample");
        assert_eq!(
            payload,
            format!("raw {i}").as_bytes(),
            "the bytes as written"
        );
        let meta = meta.expect("an attachment").unwrap();
        assert_eq!((meta.seq, meta.type_fingerprint), (u64::from(i), 0));
        assert_eq!(meta.publisher, "sensor");
    }

    // Zenoh -> shmbus: plain puts become raw messages of topic "in".
    for i in 0..100u32 {
        publisher.put(format!("hello {i}")).wait().unwrap();
    }
    let in_dir = shmbus_bus::topic_dir(&root, "b", "in").unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let entry = loop {
        if let Some(e) = shmbus_bus::list_rings(&in_dir)
            .ok()
            .and_then(|l| l.into_iter().next())
        {
            break e;
        }
        assert!(Instant::now() < end, "no replica ring for the plain puts");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        entry.publisher_id.starts_with("z-zenoh."),
        "{}",
        entry.publisher_id
    );
    let mut reader = RingReader::open(&entry.data_path, StartAt::Oldest).unwrap();
    assert_eq!(reader.info().type_fingerprint, 0, "raw bytes");
    let mut got = Vec::new();
    while got.len() < 100 && Instant::now() < end {
        match reader.try_read().unwrap() {
            ReadEvent::Message(m) => got.push(String::from_utf8(m.payload().to_vec()).unwrap()),
            ReadEvent::Empty => std::thread::sleep(Duration::from_millis(5)),
            other => panic!("{other:?}"),
        }
    }
    let want: Vec<String> = (0..100).map(|i| format!("hello {i}")).collect();
    assert_eq!(got, want);
    // A typed subscriber is refused: the ring holds raw bytes.
    let bus = Bus::builder().root(&root).name("b").build().unwrap();
    assert!(matches!(
        bus.subscriber::<u64>("in"),
        Err(shmbus::Error::TypeMismatch { .. })
    ));
    drop(writer);
}
