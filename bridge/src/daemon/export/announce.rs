//! The local rings offered to the peer: catalog changes become
//! STREAM_ANNOUNCE frames.

use std::{collections::BTreeMap, sync::Arc};

use shmbus_bus::layout::record_size;

use crate::{
    config::{Config, ExportMode as ConfigMode},
    log,
    proto::{
        frame::{Frame, StreamAnnounce, StreamFlags, MAX_DATA_LEN},
        session::export::ExportSession,
    },
};

use super::{
    super::catalog::{Catalog, LocalRing},
    streams::{stream_info, ExportStream},
    wire::Wire,
};

/// The rings announced on one connection, by stream id.
#[derive(Debug, Default)]
pub(super) struct Announced {
    rings: BTreeMap<u32, Arc<LocalRing>>,
    /// The catalog generation last looked at.
    generation: Option<u64>,
    /// The peer's tag in export hold names.
    peer_tag: String,
}

impl Announced {
    /// Nothing announced yet to peer `peer`.
    pub(super) fn for_peer(peer: &str) -> Self {
        let peer_tag = super::super::naming::peer_tag(peer);
        Self {
            peer_tag,
            ..Self::default()
        }
    }

    /// The ring announced as `id`.
    pub(super) fn get(&self, id: u32) -> Option<&Arc<LocalRing>> {
        self.rings.get(&id)
    }

    /// The rings announced on this connection.
    pub(super) fn rings(&self) -> impl Iterator<Item = &Arc<LocalRing>> {
        self.rings.values()
    }

    /// Makes the next [`Announced::update`] look at the catalog again (the
    /// export rules changed).
    pub(super) fn refresh(&mut self) {
        self.generation = None;
    }

    /// Queues STREAM_ANNOUNCE for every ring the catalog or `streams` has
    /// that `config` exports and the session wants announced; returns
    /// whether any was queued.
    pub(super) fn update(
        &mut self,
        catalog: &Catalog,
        config: &Config,
        streams: &BTreeMap<u32, ExportStream>,
        session: &mut ExportSession,
        wire: &mut Wire,
    ) -> bool {
        let generation = catalog.generation();
        if self.generation == Some(generation) {
            return false;
        }
        self.generation = Some(generation);
        let mut rings = catalog.rings();
        // Rings still being exported stay offered even when their files
        // left the catalog (a finished publisher's tail still to send).
        for st in streams.values() {
            if !rings.iter().any(|r| r.id == st.ring.id) {
                rings.push(Arc::clone(&st.ring));
            }
        }
        rings.sort_by_key(|r| r.id);
        let mut queued = false;
        for ring in rings {
            if self.rings.contains_key(&ring.id) || !session.should_announce(ring.id) {
                continue;
            }
            // Right after a reload the catalog may still hold rings of
            // topics no longer exported.
            if config.export_rule(&ring.topic).is_none() {
                continue;
            }
            if !super::hold::offer(&ring, &self.peer_tag, &self.rings, streams) {
                continue;
            }
            let max_record = record_size(ring.max_message);
            if max_record > u64::from(MAX_DATA_LEN) {
                log::warning!(
                    "not exporting {}/{}: messages up to {} bytes do not fit a DATA frame",
                    ring.topic,
                    ring.publisher,
                    ring.max_message
                );
                self.rings.insert(ring.id, ring);
                continue;
            }
            let flags = match ring.mode {
                ConfigMode::Tethered => StreamFlags::empty(),
                ConfigMode::Untethered { .. } => StreamFlags::UNTETHERED,
            };
            wire.queue(&Frame::StreamAnnounce(StreamAnnounce {
                stream: ring.id,
                topic: &ring.topic,
                publisher: &ring.publisher,
                type_name: &ring.type_name,
                type_fingerprint: ring.type_fingerprint,
                ring_capacity: ring.capacity,
                max_message: ring.max_message,
                flags,
            }));
            session.on_announced(ring.id, stream_info(&ring));
            self.rings.insert(ring.id, ring);
            queued = true;
        }
        queued
    }
}
