//! Type fingerprints: separately defined types of one name and archived
//! layout are one message type on the bus; another layout is refused with
//! both types named.

mod common;

use std::time::Duration;

use common::TempRoot;
use rkyv::{Archive, Deserialize, Serialize};
use shmbus::{Error, StartAt, WaitStrategy};

/// Two services' copies of one message, in different modules (as if in
/// different crates), with different field names.
mod service_a {
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
    pub struct Pose {
        pub x: f32,
        pub y: f32,
        pub frame: u64,
    }
}
mod service_b {
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
    pub struct Pose {
        pub east: f32,
        pub north: f32,
        pub seq: u64,
    }
}
/// Same name, another layout (24 bytes, not 16).
mod service_c {
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
    pub struct Pose {
        pub x: f64,
        pub y: f64,
        pub z: f64,
    }
}

#[derive(Archive, Serialize, Deserialize, Debug)]
struct Odometry {
    x: f32,
    y: f32,
    frame: u64,
}

#[test]
fn same_default_name_and_layout_match_across_definitions() {
    let root = TempRoot::new("types-default");
    let bus = root.bus();
    let mut subscriber = bus
        .subscriber_with::<service_b::Pose>("pose", StartAt::Oldest, WaitStrategy::default())
        .unwrap();
    let mut publisher = bus.publisher::<service_a::Pose>("pose").unwrap();
    assert_eq!(publisher.type_name(), "Pose");
    publisher
        .send(&service_a::Pose {
            x: 1.0,
            y: 2.0,
            frame: 3,
        })
        .unwrap();
    let pose = subscriber.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (
            pose.east.to_native(),
            pose.north.to_native(),
            pose.seq.to_native()
        ),
        (1.0, 2.0, 3)
    );
}

#[test]
fn declared_names_match_types_of_other_names() {
    let root = TempRoot::new("types-declared");
    let bus = root.bus();
    let mut subscriber = bus
        .typed_subscriber::<Odometry>(
            "odom",
            "robot.Pose",
            StartAt::Oldest,
            WaitStrategy::default(),
        )
        .unwrap();
    let mut publisher = bus
        .typed_publisher::<service_a::Pose>("odom", "robot.Pose", "a")
        .unwrap();
    publisher
        .send(&service_a::Pose {
            x: 4.0,
            y: 5.0,
            frame: 6,
        })
        .unwrap();
    let odom = subscriber.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (
            odom.x.to_native(),
            odom.y.to_native(),
            odom.frame.to_native()
        ),
        (4.0, 5.0, 6)
    );
    // Undeclared, the same types do not match (different default names).
    match bus.subscriber::<Odometry>("odom") {
        Err(Error::TypeMismatch {
            expected, found, ..
        }) => assert_eq!(
            (expected.as_str(), found.as_str()),
            ("Odometry", "robot.Pose")
        ),
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn another_layout_under_the_same_name_is_refused_naming_both() {
    let root = TempRoot::new("types-layout");
    let bus = root.bus();
    let _publisher = bus.publisher::<service_a::Pose>("pose").unwrap();
    for result in [
        bus.publisher::<service_c::Pose>("pose").map(drop),
        bus.subscriber::<service_c::Pose>("pose").map(drop),
    ] {
        match result {
            Err(Error::TypeMismatch {
                topic,
                expected,
                found,
            }) => {
                assert_eq!(topic, "pose");
                // Both named: here one name, so the message says so twice.
                assert_eq!((expected.as_str(), found.as_str()), ("Pose", "Pose"));
            }
            other => panic!("{:?}", other.err()),
        }
    }
    assert_ne!(
        shmbus::fingerprint::<service_a::Pose>(),
        shmbus::fingerprint::<service_c::Pose>()
    );
}

#[test]
fn declared_type_names_are_validated() {
    let root = TempRoot::new("types-names");
    let bus = root.bus();
    for bad in [String::new(), "a\nb".to_string(), "x".repeat(257)] {
        match bus.typed_publisher::<u64>("t", &bad, "p") {
            Err(Error::Bus(shmbus_bus::Error::InvalidName { kind, .. })) => {
                assert_eq!(kind, "type")
            }
            other => panic!("{bad:?}: {:?}", other.map(|p| p.id().to_string())),
        }
    }
    bus.typed_publisher::<u64>("t", &"x".repeat(256), "p")
        .unwrap();
}
