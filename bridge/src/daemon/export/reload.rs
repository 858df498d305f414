//! A reload that stops exporting a topic: its streams to this peer stop.
//!
//! The protocol has no frame that withdraws a stream without ending it, and
//! an END would make the peer refuse the stream for good (a later reload may
//! export the topic again). So the sender closes the connection with the
//! reason logged; the peer reconnects and subscribes to what is still
//! announced, resuming without loss. Once the kernel is done with the
//! connection's sends, the streams of topics no longer exported are dropped
//! from the peer's state: their readers leave their subscriber slots for
//! good (a durable slot is left, not detached, so it does not gate the
//! publisher for its lease) and their positions are forgotten.

use std::sync::Arc;

use shmbus_bus as bus;

use crate::{config::Config, log};

use super::{ExportSet, Sender};

impl Sender<'_> {
    /// Checks the live streams against the running config when a reload
    /// replaced it; closes the connection if a ring announced on it, or a
    /// stream of the peer, is no longer exported. Returns whether it closed.
    pub(super) fn check_reload(&mut self) -> bool {
        let config = self.shared.config();
        if Arc::ptr_eq(&config, &self.config) {
            return false;
        }
        self.config = Arc::clone(&config);
        // Offers are decided again under the new rules, even if the
        // catalog has not rescanned yet.
        self.announced.refresh();
        let gone = self
            .announced
            .rings()
            .chain(self.set.streams.values().map(|st| &st.ring))
            .find(|r| config.export_rule(&r.topic).is_none());
        let Some(ring) = gone else {
            return false;
        };
        let why = format!(
            "the reloaded configuration no longer exports topic {} ({}/{} was offered); reconnecting so the peer subscribes to what is still exported",
            ring.topic, ring.topic, ring.publisher
        );
        log::info!("closing the connection to {}: {why}", self.peer.name);
        self.link.close(why, false);
        true
    }
}

/// Drops the streams of `set` whose topic `config` no longer exports (see
/// the module docs). Call only between connections: the kernel must be done
/// with their sends.
pub(super) fn drop_disallowed(set: &mut ExportSet, config: &Config, peer: &str) {
    let ids: Vec<u32> = set
        .streams
        .iter()
        .filter(|(_, st)| config.export_rule(&st.ring.topic).is_none())
        .map(|(&id, _)| id)
        .collect();
    for id in ids {
        let Some(mut st) = set.streams.remove(&id) else {
            continue;
        };
        set.session.forget(id);
        log::info!(
            "stopped exporting {}/{} to {peer}: no export rule matches the topic after the reload; its reader left the ring",
            st.ring.topic,
            st.ring.publisher
        );
        // Leave the slot (durable too) rather than keep it for the lease.
        st.finished();
        let dir = st.dir().map(std::path::Path::to_path_buf);
        drop(st);
        // We may have been the last reader of a finished ring.
        if let Some(dir) = dir {
            let _ = bus::sweep_topic(&dir);
        }
    }
}
