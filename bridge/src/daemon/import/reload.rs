//! A reload that stops importing a topic: its streams from this peer stop.
//!
//! The receiver cannot just ignore the stream's frames: the peer would keep
//! sending within the credit granted and then wait for credit (and, for a
//! tethered export, hold its publisher back) on a connection that never
//! grants it again. Nor can it end the stream: the protocol has no frame
//! that withdraws a subscription, and an end marker would refuse the stream
//! for good, even if a later reload imports the topic again. So the
//! receiver closes the connection with the reason logged: the peer
//! reconnects and announces its streams again, and this bridge subscribes
//! only to what it still imports. Frames of the stream still in flight die
//! with the connection, so none is written after the check.
//!
//! A reload that imports a topic the peer announced on this connection
//! (and this bridge ignored) closes the connection too: a stream is decided
//! once per announcement, and the next connection announces it again.
//!
//! Once the connection is gone, each such stream leaves the peer's state:
//! its replica is retired (local subscribers drain it and see the
//! publisher gone) and its position is kept in a resume marker, so if a
//! later reload imports the topic again the stream continues where it
//! stopped (the peer's GAP reports exactly what was published meanwhile
//! and is no longer held) and nothing is delivered twice.

use std::sync::Arc;

use crate::{config::Config, log};

use super::{ImportSet, Receiver, Step};

impl Receiver<'_> {
    /// Checks the connection's streams against the running config when a
    /// reload replaced it: a stream subscribed (or waiting to subscribe)
    /// whose topic is no longer imported, or one ignored for its topic that
    /// is imported now, closes the connection.
    pub(super) fn check_reload(&mut self) -> Result<(), Step> {
        let config = self.shared.config();
        if Arc::ptr_eq(&config, &self.config) {
            return Ok(());
        }
        self.config = Arc::clone(&config);
        let gone = self
            .keys
            .values()
            .chain(self.pending.iter().map(|p| &p.key))
            .find(|(topic, _)| !config.imports_topic(topic));
        match gone {
            Some((topic, publisher)) => {
                let why = format!(
                    "the reloaded configuration no longer imports topic {topic} ({topic}/{publisher} was subscribed); reconnecting so that only what is still imported is subscribed"
                );
                log::info!("closing the connection to {}: {why}", self.peer.name);
                Err(Step::Close(why))
            }
            None => match self.unimported.values().find(|t| config.imports_topic(t)) {
                Some(topic) => {
                    let why = format!(
                        "the reloaded configuration imports topic {topic}, announced on this connection before; reconnecting to subscribe to it"
                    );
                    log::info!("closing the connection to {}: {why}", self.peer.name);
                    Err(Step::Close(why))
                }
                None => Ok(()),
            },
        }
    }
}

/// Retires the streams of `set` whose topic `config` no longer imports
/// (see the module docs). Call only while no connection writes them.
pub(super) fn drop_disallowed(set: &mut ImportSet, config: &Config, peer: &str) {
    let keys: Vec<_> = set
        .streams
        .keys()
        .filter(|(topic, _)| !config.imports_topic(topic))
        .cloned()
        .collect();
    for key in keys {
        if let Some(st) = set.streams.remove(&key) {
            log::info!(
                "stopped importing {} from {peer}: no import rule matches the topic after the reload; its replica is retired",
                st.name()
            );
            st.withdraw();
        }
    }
}
