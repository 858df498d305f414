//! Type safety across processes: a topic carries one message type.
//!
//! Proves: a subscriber of another type gets `Error::TypeMismatch` naming
//! both types; a publisher of another type is refused while a publisher of
//! the topic is alive, and accepted once that publisher is dead; a subscriber
//! of the right type reads the other process's messages.

use std::time::Duration;

use shmbus::{Error, StartAt, WaitStrategy};
use shmbus_tests::{
    harness::{TestEnv, LINE_TIMEOUT},
    msg::{verify, OtherMsg, TestMsg},
};

const PEER: &str = env!("CARGO_BIN_EXE_peer");

fn assert_mismatch(e: &Error, topic: &str) {
    match e {
        Error::TypeMismatch {
            topic: t,
            expected,
            found,
        } => {
            assert_eq!(t, topic);
            assert!(expected.ends_with("OtherMsg"), "{e}");
            assert!(found.ends_with("TestMsg"), "{e}");
            let text = e.to_string();
            assert!(
                text.contains("OtherMsg") && text.contains("TestMsg"),
                "{text}"
            );
        }
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
}

#[test]
fn other_types_are_refused_while_the_publisher_lives() {
    let env = TestEnv::new("types", PEER, Duration::from_secs(60));
    let topic = "typed";
    let mut publisher = env.peer(
        "publisher",
        &[
            "publish", "--topic", topic, "--id", "4", "--count", "10", "--linger",
        ],
    );
    publisher.expect_line("lingering", LINE_TIMEOUT);
    let bus = env.bus();

    let err = bus.subscriber::<OtherMsg>(topic).expect_err("wrong type");
    assert_mismatch(&err, topic);
    let err = bus.publisher::<OtherMsg>(topic).expect_err("wrong type");
    assert_mismatch(&err, topic);

    // The right type reads the other process's messages.
    let mut sub = bus
        .subscriber_with::<TestMsg>(topic, StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    for seq in 0..10 {
        let m = sub.recv_timeout(LINE_TIMEOUT).unwrap();
        assert_eq!(verify(&m), Ok((4, seq)));
    }

    // A dead publisher does not own the topic's type any more.
    publisher.kill();
    let mut other = bus
        .publisher::<OtherMsg>(topic)
        .expect("no live publisher of the old type");
    other
        .send(&OtherMsg {
            value: 1,
            label: "new type".into(),
        })
        .unwrap();
    // The old subscriber sees the old publisher gone and reports the new,
    // foreign-typed one once, without failing for good.
    let mut saw_mismatch = false;
    let mut gone = false;
    for _ in 0..100 {
        match sub.recv_timeout(Duration::from_millis(50)) {
            Err(Error::TypeMismatch { .. }) => saw_mismatch = true,
            Err(Error::Timeout(_)) => {}
            other => panic!("{other:?}"),
        }
        gone |= sub
            .take_events()
            .iter()
            .any(|e| matches!(e, shmbus::TopicEvent::PublisherGone { .. }));
        if gone && saw_mismatch {
            break;
        }
    }
    assert!(gone && saw_mismatch, "gone {gone}, mismatch {saw_mismatch}");
}
