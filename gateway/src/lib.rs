//! `shmbus-zenoh`: a gateway between one shmbus bus and Zenoh.
//!
//! Local topics that match an export rule are put to Zenoh under
//! `<key_prefix>/<topic>` (default prefix `shmbus/<bus>`), one sample per
//! message: the payload is the message's archived bytes, the attachment
//! ([`meta`]) names the origin gateway, the publisher, its sequence
//! number and the message type. Zenoh key expressions that match an import
//! rule are written into local replica rings, one per remote publisher
//! ([`import`]). Zenoh does the rest: discovery, routing through routers,
//! TLS/QUIC transports, access control (its own configuration file).
//!
//! Loops are prevented three ways: replica rings (imports, of a gateway or
//! a bridge) are never exported; a gateway's subscriptions accept only
//! samples from other sessions; samples whose origin is this gateway's
//! node name are dropped. One gateway runs per bus ([`lock`]).
//!
//! Gateways announce themselves with a Zenoh liveliness token
//! `shmbus-gateways/<node>`; when one goes away, the replicas of its
//! publishers are closed everywhere, so subscribers see them gone.

#![warn(missing_docs)]

pub mod config;
pub mod export;
pub mod import;
pub mod lock;
mod log;
pub mod meta;
pub mod stats;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use zenoh::{sample::SampleKind, Session, Wait};

pub use crate::{config::Config, lock::GatewayLock, stats::Stats};

/// Liveliness key prefix of gateways: `shmbus-gateways/<node>`.
pub const LIVELINESS_PREFIX: &str = "shmbus-gateways";

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another gateway runs on the bus.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// The configuration (Zenoh's part) is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Zenoh refused to open or declare.
    #[error("zenoh: {0}")]
    Zenoh(String),
}

/// A running gateway; [`Gateway::stop`] ends it.
pub struct Gateway {
    config: Arc<Config>,
    session: Session,
    importer: Arc<import::Importer>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    // Held for their side effects until stop.
    _subscribers: Vec<zenoh::pubsub::Subscriber<()>>,
    _token: zenoh::liveliness::LivelinessToken,
    _lock: GatewayLock,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("node", &self.config.node_name)
            .field("bus", &self.config.bus)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Takes the bus lock, opens the Zenoh session, declares the import
    /// subscriptions and starts the export scan.
    ///
    /// # Errors
    ///
    /// [`StartError`]: another gateway on the bus, a bad Zenoh
    /// configuration, or Zenoh failing to open.
    pub fn start(config: Config) -> Result<Self, StartError> {
        let config = Arc::new(config);
        let lock = GatewayLock::take(&config.root, &config.bus)?;
        let zenoh_config = config.zenoh()?;
        let zerr = |e: zenoh::Error| StartError::Zenoh(e.to_string());
        let session = zenoh::open(zenoh_config).wait().map_err(zerr)?;
        let stats = Arc::new(Stats::default());
        let importer = Arc::new(import::Importer::new(
            Arc::clone(&config),
            Arc::clone(&stats),
        ));
        let mut subscribers = Vec::new();
        for rule in &config.imports {
            let importer = Arc::clone(&importer);
            let r = rule.clone();
            let sub = session
                .declare_subscriber(rule.key.clone())
                .allowed_origin(zenoh::sample::Locality::Remote)
                .callback(move |sample| importer.on_sample(&r, &sample))
                .wait()
                .map_err(zerr)?;
            log::info!("importing Zenoh key {}", rule.key);
            subscribers.push(sub);
        }
        let gone = Arc::clone(&importer);
        let liveliness = session
            .liveliness()
            .declare_subscriber(format!("{LIVELINESS_PREFIX}/*"))
            .history(true)
            .callback(move |sample| {
                let key = sample.key_expr().as_str();
                let node = key.rsplit('/').next().unwrap_or(key);
                if sample.kind() == SampleKind::Delete {
                    log::info!("gateway {node} gone");
                    gone.origin_gone(node);
                } else {
                    log::info!("gateway {node} present");
                }
            })
            .wait()
            .map_err(zerr)?;
        subscribers.push(liveliness);
        let token = session
            .liveliness()
            .declare_token(format!("{LIVELINESS_PREFIX}/{}", config.node_name))
            .wait()
            .map_err(zerr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let exporter = export::Exporter::new(
            Arc::clone(&config),
            session.clone(),
            Arc::clone(&stats),
            Arc::clone(&stop),
        );
        let exporter = std::thread::Builder::new()
            .name("export scan".into())
            .spawn(move || exporter.run())
            .map_err(|e| StartError::Zenoh(format!("no export thread: {e}")))?;
        let (flusher, flush_stop) = (Arc::clone(&importer), Arc::clone(&stop));
        let flush = std::thread::Builder::new()
            .name("import flush".into())
            .spawn(move || {
                while !flush_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    flusher.flush();
                }
            })
            .map_err(|e| StartError::Zenoh(format!("no import thread: {e}")))?;
        log::info!(
            "node {} on bus {} ({}), exporting under {}/",
            config.node_name,
            config.bus,
            config.root.display(),
            config.key_prefix
        );
        Ok(Self {
            config,
            session,
            importer,
            stats,
            stop,
            threads: vec![exporter, flush],
            _subscribers: subscribers,
            _token: token,
            _lock: lock,
        })
    }

    /// What the gateway has counted so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Stops exporting, closes every replica (local subscribers see the
    /// remote publishers gone) and closes the Zenoh session.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
        // The session first: after it no callback can make a replica again.
        let _ = self.session.close().wait();
        self.importer.close_all();
        log::info!("stopped: {}", self.stats.summary());
    }
}
