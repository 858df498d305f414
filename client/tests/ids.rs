//! Publisher labels and ids: every valid label gives a valid, unique id;
//! invalid labels, the empty one included, are refused with a clear error.

mod common;

use common::TempRoot;
use shmbus::Error;
use shmbus_bus::{validate_name, MAX_NAME_LEN};

fn assert_bad_label(result: shmbus::Result<shmbus::Publisher<u64>>) {
    match result {
        Err(Error::Bus(shmbus_bus::Error::InvalidName { kind, .. })) => {
            assert_eq!(kind, "publisher label");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(p) => panic!("accepted, id {:?}", p.id()),
    }
}

#[test]
fn empty_and_invalid_labels_are_refused() {
    let root = TempRoot::new("labels-bad");
    let bus = root.bus();
    assert_bad_label(bus.publisher_named::<u64>("t", ""));
    assert_bad_label(bus.publisher_named::<u64>("t", &"x".repeat(MAX_NAME_LEN + 1)));
    assert_bad_label(bus.publisher_named::<u64>("t", "a/b"));
    assert_bad_label(bus.publisher_named::<u64>("t", ".hidden"));
    assert_bad_label(bus.publisher_named::<u64>("t", "sp ace"));
    // Nothing was created.
    let dir = bus.topic_dir("t").unwrap();
    let rings = std::fs::read_dir(&dir).map_or(0, |d| d.count());
    assert_eq!(rings, 0);
}

#[test]
fn every_valid_label_length_gives_a_valid_unique_id() {
    let root = TempRoot::new("labels-good");
    let bus = root.bus();
    let mut ids = std::collections::HashSet::new();
    let mut publishers = Vec::new();
    for len in [1, 42, 43, 44, 60, MAX_NAME_LEN - 1, MAX_NAME_LEN] {
        // Two labels of each length that differ only in their last byte.
        for last in ['a', 'b'] {
            let label = format!("{}{last}", "L".repeat(len - 1));
            let publisher = bus.publisher_named::<u64>("t", &label).unwrap();
            let id = publisher.id().to_string();
            validate_name("publisher id", &id).unwrap();
            assert!(id.len() <= MAX_NAME_LEN, "{id}");
            if len <= 43 {
                assert!(id.starts_with(&format!("{label}-")), "{id}");
            } else {
                // Shortened: a prefix of the label, then a hash of all of it.
                assert!(id.starts_with(&label[..26]), "{id}");
            }
            // The label parts of the two labels differ, not only the ids.
            let label_part = id.rsplitn(3, '-').nth(2).unwrap().to_string();
            assert!(ids.insert(label_part), "{id}");
            assert!(bus
                .topic_dir("t")
                .unwrap()
                .join(format!("{id}.ring"))
                .exists());
            publishers.push(publisher);
        }
    }
}

#[test]
fn the_default_label_is_p() {
    let root = TempRoot::new("labels-default");
    let bus = root.bus();
    let a = bus.publisher::<u64>("t").unwrap();
    let b = bus.publisher::<u64>("t").unwrap();
    assert!(a.id().starts_with("p-"));
    assert_ne!(a.id(), b.id());
}
