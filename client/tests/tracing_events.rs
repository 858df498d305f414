//! Rare events reach the user's `tracing` subscriber: a publisher found and
//! gone. (Silent without a subscriber: `tracing` costs one check then.)

mod common;

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::TempRoot;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn publisher_found_and_gone_are_traced() {
    let captured = Captured::default();
    let writer = captured.clone();
    let collector = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(collector, || {
        let root = TempRoot::new("tracing");
        let bus = root.bus();
        let mut subscriber = bus.subscriber::<u64>("traced").unwrap();
        let mut publisher = bus.publisher::<u64>("traced").unwrap();
        publisher.send(&7).unwrap();
        assert_eq!(*subscriber.recv_timeout(Duration::from_secs(5)).unwrap(), 7);
        drop(publisher);
        let r = subscriber.recv_timeout(Duration::from_millis(300));
        assert!(r.is_err(), "nothing more: the publisher is gone");
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("shmbus: publisher found"), "{text}");
    assert!(text.contains("shmbus: publisher gone"), "{text}");
    assert!(
        text.contains("topic=\"traced\"") || text.contains("topic=traced"),
        "{text}"
    );
}
