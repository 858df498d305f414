//! The byte layer, for a tool or a peer in another language: publish raw
//! payloads with `shmbus-bus`'s `RingWriter`, read them back with a
//! `RingReader`, then walk the same records straight from the ring's data
//! file, as a C or Python peer would.
//!
//! ```text
//! cargo run --example raw_bytes
//! ```
//!
//! Options: `--bus NAME`; `SHMBUS_ROOT=DIR`.
//!
//! Shows: the record framing a foreign peer relies on (the whole layout is
//! in `docs/layout.md` and `shmbus_bus::layout`): the ring data starts at
//! `DATA_OFFSET` (8192) of `<topic>/<publisher>.ring`; each record is a
//! 16-byte header, then the payload padded to 16 bytes. Header word 0 is the
//! commit stamp (the record's own position | 1, stored last); word 1 holds
//! the length (low 32 bits) and the low half of the sequence number. All
//! little-endian. A real peer maps the file and loads the stamp with acquire
//! ordering; this one reads a copy with `read(2)`, which is enough to show
//! the bytes. Typed code reaches the same bytes with
//! `Publisher::send_bytes` and `Sample::bytes`.

mod common;

use shmbus_bus::{
    create_dir_all, default_root, layout, ring_path, topic_dir, ReadEvent, RingConfig, RingReader,
    RingWriter, StartAt, WaitStrategy,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = default_root(); // $SHMBUS_ROOT, else /dev/shm/shmbus-<uid>
    let dir = topic_dir(&root, &common::bus_name(), "raw")?;
    create_dir_all(&root, &dir, 0o600)?;
    let path = ring_path(&dir, &format!("raw-example-{}", std::process::id()))?;

    let config = RingConfig {
        capacity: 4096,
        max_message: 256,
        ..RingConfig::default()
    };
    let mut writer = RingWriter::create(&path, &config)?;
    for payload in ["hello", "from the", "byte layer"] {
        writer.write(payload.as_bytes(), WaitStrategy::default(), None)?;
    }
    println!("wrote 3 payloads to {}", path.display());

    // A tool: a subscriber slot, from the oldest record still in the ring.
    let mut reader = RingReader::open(&path, StartAt::Oldest)?;
    while let ReadEvent::Message(message) = reader.try_read()? {
        let text = String::from_utf8_lossy(message.payload()).into_owned();
        println!("reader: #{} {text:?}", message.sequence());
    }

    // A foreign peer: the records, decoded from the file's bytes.
    let file = std::fs::read(&path)?;
    let data = file
        .get(layout::DATA_OFFSET..)
        .ok_or("file shorter than its header")?;
    let mut position = 0u64;
    loop {
        let at = usize::try_from(position % config.capacity)?; // positions are absolute
        let Some(header) = data.get(at..at + layout::RECORD_HEADER as usize) else {
            break;
        };
        let stamp = u64::from_le_bytes(header[..8].try_into()?);
        if stamp != layout::data_stamp(position) {
            break; // not (yet) a committed data record at this position
        }
        let (len, seq_low) = layout::split_meta(u64::from_le_bytes(header[8..].try_into()?));
        let start = at + layout::RECORD_HEADER as usize;
        let payload = data
            .get(start..start + len as usize)
            .ok_or("length past the ring")?;
        println!(
            "record at {position}: stamp {stamp:#x}, length {len}, sequence {seq_low}, payload {:?}",
            String::from_utf8_lossy(payload)
        );
        position += layout::record_size(u64::from(len));
    }
    println!("next record would start at {position}");
    Ok(())
}
