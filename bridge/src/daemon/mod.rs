//! The bridge daemon: listener, dialers, one sender and one receiver thread
//! per connection, and the state kept per peer across reconnects.
//!
//! # Threads
//!
//! - the catalog thread rescans the bus for exportable rings when inotify
//!   reports a change and every `rescan_interval` (see [`catalog`],
//!   [`watch`]), and rewrites the stats file every second, if configured;
//! - the metrics thread answers `GET /metrics` on `metrics_listen`, if
//!   configured (see [`metrics`]);
//! - under systemd, the watchdog thread sends `WATCHDOG=1` while the other
//!   loops are alive (see the `notify` module);
//! - the listener accepts connections (loopback by default); each gets a
//!   thread that runs the handshake and then the connection;
//! - one dialer thread per configured peer connects, runs the connection,
//!   and reconnects with exponential backoff;
//! - a connection runs two threads: the *sender* writes every frame
//!   (ANNOUNCE, DATA from the local rings, GAP, END, HEARTBEAT, and the ACKs
//!   and SUBSCRIBEs of the import side); the *receiver* reads every frame
//!   (DATA into replica rings, the peer's SUBSCRIBE and ACK for exports).
//!   They talk through a [`link::Link`].
//!
//! # State per peer
//!
//! A peer (keyed by the authenticated node name) owns, for the daemon's
//! lifetime, the export readers (one [`RawReader`](shmbus_bus::RawReader)
//! per exported ring: tethered ones keep unacknowledged data across a
//! reconnect) and the import replicas (one
//! [`ReplicaWriter`](shmbus_bus::ReplicaWriter) per remote publisher). One
//! connection at a time leases them; a newer connection from the same peer
//! takes over from a stale one. If two bridges dial each other, the
//! connection initiated by the node with the smaller name is kept.
//!
//! A peer that fails the handshake gets nothing and is logged with the
//! reason; a peer that breaks the protocol after it gets an ERROR frame and
//! is disconnected; a frame that fails authentication closes its connection
//! at once. None of these affects other peers' connections.
//!
//! # Limits
//!
//! Before authentication (see the `conn` module): at most `max_pending_handshakes`
//! accepted connections handshake at once, at most
//! `max_pending_per_address` from one source address — more are closed at
//! accept, counted in `rejected_connections` — and each has one absolute
//! deadline. After: per peer, at most `max_streams_per_peer` imported
//! streams whose replica rings add up to at most
//! `max_replica_bytes_per_peer`, and at most `max_exports_per_peer` readers
//! (subscriber slots) on local rings; the state of a peer that has been away
//! for `peer_state_expiry` is dropped (readers leave their slots, the
//! counters go). Peers exist only for allowlist entries, so all of this is
//! bounded by the allowlist.
//!
//! The daemon's own tables are bounded too: `pending.by_address` has an
//! entry only per address with a handshake in progress (at most
//! `max_pending_handshakes`); `connections` keeps only running connection
//! threads (pruned at each accept: at most the pending handshakes plus the
//! authenticated connections, one per peer and a few being replaced);
//! `dialers` has one entry per configured peer.
//!
//! # Reload
//!
//! [`Daemon::reload`] (SIGHUP) re-reads the config file with the same flags
//! ([`Config::reload`]). A config that does not parse or validate is refused
//! with a logged reason and the running one stays. Otherwise: the allowlist
//! and the node's key pair are replaced (new handshakes use them; a live
//! connection whose key left the allowlist is closed); peers added to the
//! file start dialing, removed ones stop (the connection this node opened
//! to them is closed and their state dropped), a changed address is dialed
//! anew; the catalog rescans with the new export rules (rings of topics no
//! longer exported leave it, newly exported ones are announced) and import
//! rules apply to the next announcements (a connection that announced a
//! newly imported topic before is reconnected, so it is announced again).
//! A live stream whose topic the new rules no longer export or import is
//! stopped without END: its connection closes and the stream leaves the
//! peer's state (see `export::reload` and `import::reload`); the peer
//! reconnects and resumes what is still allowed.
//! [`Daemon::reload_allowlist`] re-reads the allowlist alone.

pub mod backoff;
pub mod catalog;
mod conn;
mod export;
/// The sender's export holds: rings kept for a peer past their names.
pub use self::export::hold as export_hold;
mod import;
pub mod link;
pub mod metrics;
pub mod naming;
mod notify;
pub mod replica;
pub mod stats;
pub mod watch;

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr, TcpListener, ToSocketAddrs},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex, RwLock,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{
    config::{Config, ConfigError},
    identity::{Allowlist, PublicKey},
    log,
    proto::handshake::Role,
};

use self::{
    backoff::Backoff,
    catalog::Catalog,
    export::ExportSet,
    import::ImportSet,
    link::Link,
    notify::{Loop, LoopTicks},
    stats::{PeerStats, Stats},
    watch::{BusWatch, Change},
};

/// How long the catalog loop waits for inotify events per turn (and so how
/// soon it sees shutdown and a reload).
const CATALOG_TICK: Duration = Duration::from_millis(100);
/// A scan that met a ring still being created is retried this soon.
const UNSETTLED_RETRY: Duration = Duration::from_millis(100);

/// Shortest reconnect delay.
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The listen address could not be bound.
    #[error(
        "cannot listen on {addr}: {source} (is another bridge running, or is the address wrong?)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Spawn(#[source] io::Error),
}

/// Why a reload did not (fully) take effect.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file did not load or validate; the running configuration stays.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new configuration is in force, but the dialer of a new peer
    /// could not be started (it is retried at the next reload).
    #[error("configuration reloaded, but a dialer could not start: {0}")]
    Dialer(#[source] DaemonError),
}

/// State shared by all threads of the daemon.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The running configuration, replaced whole by a reload.
    config: RwLock<Arc<Config>>,
    stop: AtomicBool,
    pub(crate) catalog: Catalog,
    pub(crate) stats: Stats,
    peers: Mutex<HashMap<String, Arc<Peer>>>,
    allowlist: RwLock<Arc<Allowlist>>,
    pending: Arc<Mutex<Pending>>,
    connections: Mutex<Vec<JoinHandle<()>>>,
    /// The dialer thread of each configured peer, by name.
    dialers: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Set by a reload: the catalog rescans with the new export rules.
    rescan: AtomicBool,
    /// Last turn of each loop, for the watchdog.
    pub(crate) ticks: LoopTicks,
    /// One reload at a time.
    reloading: Mutex<()>,
}

/// Accepted connections still in their handshake.
#[derive(Debug, Default)]
struct Pending {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One accepted connection's place among the pending handshakes; given back
/// on drop.
#[derive(Debug)]
pub(crate) struct PendingSlot {
    table: Arc<Mutex<Pending>>,
    ip: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut p = self.table.lock().unwrap_or_else(|e| e.into_inner());
        p.total = p.total.saturating_sub(1);
        if let Some(n) = p.by_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                p.by_address.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    /// The running configuration (a reload replaces it; hold the `Arc`
    /// only as long as one decision needs a consistent view).
    pub(crate) fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether the daemon is shutting down.
    pub(crate) fn stopping(&self) -> bool {
        // Relaxed: a flag polled by every loop; it publishes no data.
        self.stop.load(Ordering::Relaxed)
    }

    fn peer(&self, name: &str) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(peers.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(Peer {
                name: name.to_owned(),
                slot: Mutex::new(PeerSlot::default()),
                cv: Condvar::new(),
                stats: self.stats.peer(name),
                last_seen: Mutex::new(Instant::now()),
            })
        }))
    }

    /// The current allowlist.
    pub(crate) fn allowlist(&self) -> Arc<Allowlist> {
        Arc::clone(&self.allowlist.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Takes a place among the pending handshakes for a connection from
    /// `ip`, or says why not.
    fn admit(&self, ip: IpAddr) -> Result<PendingSlot, String> {
        let config = self.config();
        let limits = &config.limits;
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.total >= limits.max_pending_handshakes {
            return Err(format!(
                "{} handshakes already pending (max_pending_handshakes)",
                p.total
            ));
        }
        let n = p.by_address.entry(ip).or_insert(0);
        if *n >= limits.max_pending_per_address {
            return Err(format!(
                "{n} handshakes from this address already pending (max_pending_per_address)"
            ));
        }
        *n += 1;
        p.total += 1;
        Ok(PendingSlot {
            table: Arc::clone(&self.pending),
            ip,
        })
    }

    /// Drops the state of peers absent for longer than `peer_state_expiry`.
    fn expire_peers(&self) {
        let expiry = self.config().limits.peer_state_expiry;
        let mut gone = Vec::new();
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, p| {
                let idle = p
                    .slot
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .active
                    .is_none();
                let away = p
                    .last_seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .elapsed();
                if idle && away > expiry {
                    gone.push((name.clone(), Arc::clone(p)));
                    false
                } else {
                    true
                }
            });
        for (name, peer) in gone {
            // Nobody resumes its exports now: their holds go.
            peer.slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .exports
                .drop_holds();
            // Readers leave their slots and replicas close when the last
            // reference (ours, unless a connection is starting) goes.
            drop(peer);
            self.stats.remove_peer(&name);
            self.stats.peers_expired.add(1);
            log::info!(
                "dropped the state of peer {name}: away for more than {:?} (peer_state_expiry)",
                expiry
            );
        }
    }

    /// Replaces the allowlist and closes the live connections whose (name,
    /// key) is no longer on it; returns how many were closed.
    fn apply_allowlist(&self, list: &Allowlist) -> usize {
        *self.allowlist.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(list.clone());
        let peers: Vec<Arc<Peer>> = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut revoked = 0;
        for peer in peers {
            let slot = peer.slot.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((link, _, key)) = &slot.active {
                if !list.allows(&peer.name, key) {
                    link.close(
                        format!(
                            "key {} of peer {} was removed from the allowlist",
                            key.short(),
                            peer.name
                        ),
                        false,
                    );
                    self.stats.sessions_revoked.add(1);
                    revoked += 1;
                }
            }
        }
        revoked
    }

    /// Closes the connection this node opened to `name`, if one is live.
    fn close_dialed(&self, name: &str, why: &str) {
        let Some(peer) = self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
        else {
            return;
        };
        let node = self.config().node_name.clone();
        let slot = peer.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((link, initiator, _)) = &slot.active {
            if *initiator == node {
                link.close(why.to_owned(), false);
            }
        }
    }

    /// Drops the state of `name` (a peer removed from the config) unless a
    /// connection holds it now.
    fn forget_peer(&self, name: &str) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let idle = peers.get(name).is_some_and(|p| {
            p.slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .active
                .is_none()
        });
        if idle {
            peers.remove(name);
            drop(peers);
            self.stats.remove_peer(name);
            log::info!("dropped the state of peer {name}: removed from the configuration");
        }
    }

    /// Starts a dialer for every configured peer that has none.
    fn start_dialers(self: &Arc<Self>) -> Result<(), DaemonError> {
        let config = self.config();
        let mut dialers = self.dialers.lock().unwrap_or_else(|e| e.into_inner());
        for peer in &config.peers {
            if dialers.contains_key(&peer.name) {
                // Its dialer reads the new address from the config itself.
                continue;
            }
            let s = Arc::clone(self);
            let name = peer.name.clone();
            let handle = thread::Builder::new()
                .name(format!("dial-{name}"))
                .spawn(move || dial_loop(&s, &name))
                .map_err(DaemonError::Spawn)?;
            dialers.insert(peer.name.clone(), handle);
        }
        Ok(())
    }

    /// Sleeps up to `d`, waking early on shutdown; false if shutting down.
    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while !self.stopping() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            thread::sleep(left.min(Duration::from_millis(50)));
        }
        false
    }
}

/// One authenticated peer, for the daemon's lifetime.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) name: String,
    slot: Mutex<PeerSlot>,
    cv: Condvar,
    pub(crate) stats: Arc<PeerStats>,
    /// When a connection of this peer last ended (or the peer was created).
    last_seen: Mutex<Instant>,
}

#[derive(Debug, Default)]
struct PeerSlot {
    /// The connection leasing the streams, the node that initiated it, and
    /// the key it authenticated with.
    active: Option<(Arc<Link>, String, PublicKey)>,
    exports: ExportSet,
    imports: ImportSet,
}

/// Outcome of [`Peer::acquire`].
enum Lease {
    Granted(ExportSet, ImportSet),
    /// Another healthy connection with this peer wins the tie-break.
    Duplicate,
    /// The old connection did not let go in time, or shutdown.
    Busy,
}

impl Peer {
    /// Leases the peer's streams to a new connection initiated by
    /// `initiator`, taking over from the current one unless that one wins
    /// the tie-break (the smaller initiator name, when the two were opened
    /// from different sides).
    fn acquire(&self, shared: &Shared, link: &Arc<Link>, initiator: &str, key: PublicKey) -> Lease {
        let deadline = Instant::now() + shared.config().peer_timeout + Duration::from_secs(10);
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((old, old_initiator, _)) = &slot.active {
            if old_initiator != initiator && old_initiator.as_str() < initiator && !old.stopping() {
                return Lease::Duplicate;
            }
            old.close("replaced by a newer connection from the same peer", false);
            if Instant::now() > deadline || shared.stopping() {
                return Lease::Busy;
            }
            slot = self
                .cv
                .wait_timeout(slot, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        slot.active = Some((Arc::clone(link), initiator.to_owned(), key));
        Lease::Granted(
            std::mem::take(&mut slot.exports),
            std::mem::take(&mut slot.imports),
        )
    }

    /// Returns the streams after a connection ended.
    fn release(&self, exports: ExportSet, imports: ImportSet) {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.exports = exports;
        slot.imports = imports;
        slot.active = None;
        *self.last_seen.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.cv.notify_all();
    }
}

/// A running bridge daemon (see the module docs).
#[derive(Debug, Clone)]
pub struct Daemon {
    shared: Arc<Shared>,
}

impl Daemon {
    /// A daemon for `config`; nothing runs until [`Daemon::run`].
    pub fn new(config: Config) -> Self {
        let stats = Stats::new(&config.node_name);
        let allowlist = RwLock::new(Arc::new(config.allowlist.clone()));
        Self {
            shared: Arc::new(Shared {
                config: RwLock::new(Arc::new(config)),
                stop: AtomicBool::new(false),
                catalog: Catalog::new(),
                stats,
                peers: Mutex::new(HashMap::new()),
                allowlist,
                pending: Arc::new(Mutex::new(Pending::default())),
                connections: Mutex::new(Vec::new()),
                dialers: Mutex::new(HashMap::new()),
                rescan: AtomicBool::new(false),
                ticks: LoopTicks::new(),
                reloading: Mutex::new(()),
            }),
        }
    }

    /// Asks [`Daemon::run`] to return: connections send ERROR(shutdown) to
    /// their peers and close, rings and subscriber slots are released.
    pub fn shutdown(&self) {
        notify::stopping();
        // Relaxed: see `Shared::stopping`.
        self.shared.stop.store(true, Ordering::Relaxed);
    }

    /// Reloads the configuration (see the module docs), telling systemd
    /// `RELOADING=1` before and `READY=1` after. On an error the running
    /// configuration stays and the error is logged and returned.
    ///
    /// # Errors
    ///
    /// [`ReloadError::Config`] if the file is refused,
    /// [`ReloadError::Dialer`] if a new peer's dialer cannot start.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let shared = &self.shared;
        let _one = shared.reloading.lock().unwrap_or_else(|e| e.into_inner());
        notify::reloading();
        let result = self.reload_config();
        match &result {
            Ok(()) => shared.stats.reloads.add(1),
            Err(ReloadError::Config(e)) => {
                shared.stats.reload_failures.add(1);
                log::error!("configuration not reloaded, keeping the running one: {e}");
            }
            Err(e @ ReloadError::Dialer(_)) => {
                shared.stats.reloads.add(1);
                log::error!("{e}");
            }
        }
        notify::ready(if result.is_ok() {
            "running (reloaded)"
        } else {
            "running (last reload refused)"
        });
        result
    }

    fn reload_config(&self) -> Result<(), ReloadError> {
        let shared = &self.shared;
        let old = shared.config();
        let new = Arc::new(old.reload()?);
        for w in &new.warnings {
            log::warning!("{w}");
        }
        *shared.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&new);
        let revoked = shared.apply_allowlist(&new.allowlist);
        for p in &old.peers {
            match new.peers.iter().find(|q| q.name == p.name) {
                None => shared.close_dialed(&p.name, "peer removed from the configuration"),
                Some(q) if q.address != p.address => {
                    shared.close_dialed(&p.name, &format!("peer address changed to {}", q.address))
                }
                Some(_) => {}
            }
        }
        // SYNC: Release pairs with the Acquire swap in `catalog_loop`: the
        // catalog that sees the flag reads the config stored above.
        shared.rescan.store(true, Ordering::Release);
        shared.start_dialers().map_err(ReloadError::Dialer)?;
        log::info!(
            "reloaded the configuration: {} peers, {} export rules, {} import rules, {} allowlist entries, key {}; closed {revoked} connections of removed keys",
            new.peers.len(),
            new.exports.len(),
            new.imports.len(),
            new.allowlist.entries().len(),
            new.keypair.public().short(),
        );
        Ok(())
    }

    /// Re-reads the allowlist file; closes live connections whose (name,
    /// key) is no longer on it. On a read or parse error the current list
    /// stays and the error is logged and returned.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of the file.
    pub fn reload_allowlist(&self) -> Result<(), crate::config::ConfigError> {
        let shared = &self.shared;
        let path = shared.config().allowlist_file.clone();
        let list = match crate::config::load_allowlist(&path) {
            Ok(l) => l,
            Err(e) => {
                log::error!("allowlist not reloaded, keeping the current one: {e}");
                return Err(e);
            }
        };
        let n = list.entries().len();
        let revoked = shared.apply_allowlist(&list);
        log::info!(
            "reloaded the allowlist {}: {n} peers; closed {revoked} connections of removed keys",
            path.display()
        );
        Ok(())
    }

    /// The counters as text (see [`stats`]).
    pub fn stats_text(&self) -> String {
        self.shared.stats.render()
    }

    /// Writes the counters to the configured stats file, if any.
    pub fn write_stats_file(&self) {
        if let Some(path) = &self.shared.config().stats_file {
            if let Err(e) = self.shared.stats.write_file(path) {
                log::warning!("cannot write stats file {}: {e}", path.display());
            }
        }
    }

    /// Runs until [`Daemon::shutdown`]: listens, dials, forwards.
    ///
    /// # Errors
    ///
    /// [`DaemonError`] if the listen address cannot be bound or a thread
    /// cannot start; errors of single connections are logged, not returned.
    pub fn run(&self) -> Result<(), DaemonError> {
        let shared = &self.shared;
        let config = shared.config();
        let bind = |addr: SocketAddr, what: &str| {
            let l = TcpListener::bind(addr).map_err(|source| DaemonError::Bind { addr, source })?;
            let local = l.local_addr().unwrap_or(addr);
            log::info!("{what} on {local}");
            l.set_nonblocking(true)
                .map_err(|source| DaemonError::Bind { addr, source })?;
            Ok::<_, DaemonError>(l)
        };
        let listener = config.listen.map(|a| bind(a, "listening")).transpose()?;
        let metrics = config
            .metrics_listen
            .map(|a| bind(a, "serving metrics"))
            .transpose()?;
        // Watches first, then the first scan: a ring created in between is
        // reported by the watch.
        let mut watch = match BusWatch::new() {
            Ok(w) => Some(w),
            Err(e) => {
                log::warning!(
                    "cannot use inotify ({e}); the bus is rescanned every {:?} only",
                    config.rescan_interval
                );
                None
            }
        };
        if let Some(w) = &mut watch {
            w.sync(&config);
        }
        // Expired export holds first, so the first scan does not offer them.
        expire_markers(&config);
        let unsettled = shared.catalog.scan(&config);
        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            thread::Builder::new()
                .name(name.to_owned())
                .spawn(f)
                .map_err(DaemonError::Spawn)
        };
        let s = Arc::clone(shared);
        let d = self.clone();
        threads.push(spawn(
            "catalog",
            Box::new(move || catalog_loop(&s, &d, watch, unsettled)),
        )?);
        if let Some(l) = listener {
            let s = Arc::clone(shared);
            threads.push(spawn("listener", Box::new(move || listen_loop(&s, &l)))?);
        }
        if let Some(l) = metrics {
            let s = Arc::clone(shared);
            threads.push(spawn("metrics", Box::new(move || metrics::serve(&s, &l)))?);
        }
        shared.start_dialers()?;
        notify::ready(&format!(
            "running: {} exportable rings, {} peers to dial",
            shared.catalog.rings().len(),
            config.peers.len()
        ));
        // After READY=1: keep-alives are for a service that is up.
        if let Some(period) = notify::watchdog_period() {
            let s = Arc::clone(shared);
            threads.push(spawn(
                "watchdog",
                Box::new(move || notify::watchdog_loop(&s, period)),
            )?);
        }
        drop(config);
        for t in threads {
            let _ = t.join();
        }
        // Dialers exit on shutdown; none is started after it.
        let dialers: Vec<JoinHandle<()>> = shared
            .dialers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, h)| h)
            .collect();
        for t in dialers {
            let _ = t.join();
        }
        // The listener has stopped, so no connection thread is added now.
        let conns =
            std::mem::take(&mut *shared.connections.lock().unwrap_or_else(|e| e.into_inner()));
        for t in conns {
            let _ = t.join();
        }
        // Drop every reader and replica: leaves subscriber slots, closes replicas.
        shared
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        log::info!("stopped");
        Ok(())
    }
}

/// Hold and end-marker files of replicas older than this are removed (see
/// [`replica::expire_markers`]): an expired hold leaves a small resume
/// marker, so a stream that comes back later still resumes where it was.
pub const MARKER_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// Scans the bus on inotify changes, after a reload, soon after a scan
/// that met an unfinished ring, and every `rescan_interval`; does the
/// once-a-second housekeeping. `watch` is `None` if inotify is unavailable.
fn catalog_loop(shared: &Shared, daemon: &Daemon, mut watch: Option<BusWatch>, unsettled: bool) {
    let mut last_scan = Instant::now();
    let mut retry = unsettled;
    let mut last_stats = Instant::now();
    let mut last_expiry: Option<Instant> = None;
    while !shared.stopping() {
        shared.ticks.tick(Loop::Catalog);
        let change = match &mut watch {
            Some(w) => w.wait(CATALOG_TICK),
            None => {
                thread::sleep(CATALOG_TICK);
                Change::None
            }
        };
        // SYNC: Acquire pairs with the Release store in `reload_config`, so
        // the config read next is the reloaded one.
        let reloaded = shared.rescan.swap(false, Ordering::Acquire);
        let config = shared.config();
        let periodic = last_scan.elapsed() >= config.rescan_interval;
        let retry_due = retry && last_scan.elapsed() >= UNSETTLED_RETRY;
        if change != Change::None || reloaded || periodic || retry_due {
            if change == Change::Overflow {
                log::debug!("inotify queue overflowed: rescanning the bus");
            }
            if let Some(w) = &mut watch {
                w.sync(&config);
            }
            retry = shared.catalog.scan(&config);
            last_scan = Instant::now();
        }
        if last_stats.elapsed() >= Duration::from_secs(1) {
            shared.expire_peers();
            daemon.write_stats_file();
            last_stats = Instant::now();
        }
        if last_expiry.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            expire_markers(&config);
            last_expiry = Some(Instant::now());
        }
    }
}

fn expire_markers(config: &Config) {
    let Ok(topics) = std::fs::read_dir(config.root.join(&config.bus)) else {
        return;
    };
    for t in topics.flatten() {
        let Ok(topic) = t.file_name().into_string() else {
            continue;
        };
        if shmbus_bus::validate_name("topic", &topic).is_err() {
            continue;
        }
        if config.export_rule(&topic).is_some() {
            let n = export_hold::expire(&t.path(), config.send.export_hold_max_age);
            if n > 0 {
                log::info!("removed {n} expired export holds in topic {topic}");
            }
        }
        if config.imports_topic(&topic) {
            let n = replica::expire_markers(&t.path(), MARKER_EXPIRY);
            if n > 0 {
                log::info!("removed {n} expired replica markers in topic {topic}");
            }
        }
    }
}

fn listen_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    while !shared.stopping() {
        shared.ticks.tick(Loop::Listener);
        match listener.accept() {
            Ok((stream, addr)) => {
                let slot = match shared.admit(addr.ip()) {
                    Ok(slot) => slot,
                    Err(why) => {
                        let n = shared.stats.rejected_connections.get();
                        shared.stats.rejected_connections.add(1);
                        // One line per 100 refusals: a flood must not flood the log.
                        if n % 100 == 0 {
                            log::warning!(
                                "refused connection from {addr}: {why} ({} refused so far)",
                                n + 1
                            );
                        }
                        drop(stream);
                        continue;
                    }
                };
                let s = Arc::clone(shared);
                let spawned =
                    thread::Builder::new()
                        .name(format!("conn-{addr}"))
                        .spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            conn::serve(&s, stream, addr, Role::Acceptor, None, Some(slot));
                        });
                match spawned {
                    Ok(h) => {
                        let mut conns =
                            shared.connections.lock().unwrap_or_else(|e| e.into_inner());
                        conns.retain(|h| !h.is_finished());
                        conns.push(h);
                    }
                    Err(e) => {
                        log::error!("cannot start a thread for {addr}: {e}");
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = crate::io::socket::poll_once(
                    std::os::fd::AsRawFd::as_raw_fd(listener),
                    libc::POLLIN,
                    Duration::from_millis(100),
                );
            }
            Err(e) => {
                log::warning!("accept failed: {e}");
                shared.sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Connects to peer `name` and reconnects with backoff, reading its
/// address from the running config each time, until shutdown or until a
/// reload removes the peer.
fn dial_loop(shared: &Arc<Shared>, name: &str) {
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    let mut failures = 0u32;
    while !shared.stopping() {
        let config = shared.config();
        let Some(peer) = config.peers.iter().find(|p| p.name == name).cloned() else {
            // Decided under the dialers lock, so a reload that adds the
            // peer back either sees this entry (and this loop sees the
            // peer) or sees it gone (and starts a new dialer).
            let mut dialers = shared.dialers.lock().unwrap_or_else(|e| e.into_inner());
            if shared.config().peers.iter().any(|p| p.name == name) {
                continue;
            }
            dialers.remove(name);
            drop(dialers);
            log::info!("stopped dialing peer {name}: removed from the configuration");
            shared.forget_peer(name);
            return;
        };
        let timeout = config.peer_timeout;
        drop(config);
        let addr = match peer.address.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => Some(a),
            Ok(None) => None,
            Err(e) => {
                log_dial_failure(failures, &peer.name, &peer.address, &e.to_string());
                None
            }
        };
        let mut worked = false;
        if let Some(addr) = addr {
            match std::net::TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    let outcome = conn::serve(
                        shared,
                        stream,
                        addr,
                        Role::Initiator,
                        Some(&peer.name),
                        None,
                    );
                    worked = outcome.authenticated && outcome.lasted > Duration::from_secs(1);
                    failures = if outcome.authenticated {
                        0
                    } else {
                        failures + 1
                    };
                }
                Err(e) => {
                    log_dial_failure(failures, &peer.name, &peer.address, &e.to_string());
                    failures += 1;
                }
            }
        }
        if worked {
            backoff.reset();
        }
        let mut jitter = [0u8; 2];
        let _ = crate::io::random::fill(&mut jitter);
        shared.sleep(backoff.next_delay(u16::from_le_bytes(jitter)));
    }
}

fn log_dial_failure(failures: u32, name: &str, address: &str, why: &str) {
    if failures == 0 {
        log::warning!("cannot connect to peer {name} at {address}: {why}; retrying with backoff");
    } else {
        log::debug!("cannot connect to peer {name} at {address}: {why}");
    }
}
