//! Publisher ids taken by someone else (a process in another pid namespace
//! with the same pid and start tick) are skipped, not fatal. Its own test
//! binary: it predicts this process's next ids.

mod common;

use common::TempRoot;

#[test]
fn a_taken_id_is_skipped() {
    let root = TempRoot::new("id-collision");
    let bus = root.bus();
    let first = bus.publisher::<u64>("t").unwrap();
    // `p-<pid>.<start>-<n>`: take the next three ids.
    let (stem, n) = first.id().rsplit_once('-').unwrap();
    let n: u64 = n.parse().unwrap();
    let dir = bus.topic_dir("t").unwrap();
    let taken: Vec<String> = (1..=3).map(|k| format!("{stem}-{}", n + k)).collect();
    let mut others = Vec::new();
    for id in &taken {
        // Held open by a writer of this test, as a live foreign publisher.
        others.push(
            shmbus_bus::RingWriter::create(
                &dir.join(format!("{id}.ring")),
                &shmbus_bus::RingConfig {
                    type_name: "Other".into(),
                    type_fingerprint: shmbus::fingerprint::<u64>(),
                    ..Default::default()
                },
            )
            .unwrap(),
        );
    }
    let second = bus.publisher::<u64>("t").unwrap();
    assert!(!taken.contains(&second.id().to_string()), "{}", second.id());
    assert_eq!(second.id(), format!("{stem}-{}", n + 4));
}
