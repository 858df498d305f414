//! Counters of what the gateway did, logged at exit and by `SIGUSR1`
//! (`Stats::summary`).

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        // Relaxed: a statistic, read for reports only.
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count now.
    pub fn get(&self) -> u64 {
        // Relaxed: as above.
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything counted.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages put to Zenoh.
    pub exported: Counter,
    /// Messages an export missed because its ring lapped it (sent as GAP).
    pub export_lapped: Counter,
    /// Puts Zenoh refused.
    pub put_errors: Counter,
    /// Messages written into replica rings.
    pub imported: Counter,
    /// Messages reported lost to local subscribers (gaps written).
    pub import_lost: Counter,
    /// Messages dropped because local subscribers kept the replica full.
    pub import_full_drops: Counter,
    /// Waits of `import_full_wait` for room in a full replica that ran
    /// out (one per spell of fullness: then its messages drop at once).
    pub import_full_timeouts: Counter,
    /// Samples seen twice (after a remote gateway restart) and dropped.
    pub import_duplicates: Counter,
    /// Samples refused (bad metadata, bad topic, no metadata without raw).
    pub import_refused: Counter,
}

impl Stats {
    /// One line of `name=value` pairs.
    pub fn summary(&self) -> String {
        format!(
            "exported={} export_lapped={} put_errors={} imported={} import_lost={} import_full_drops={} import_full_timeouts={} import_duplicates={} import_refused={}",
            self.exported.get(),
            self.export_lapped.get(),
            self.put_errors.get(),
            self.imported.get(),
            self.import_lost.get(),
            self.import_full_drops.get(),
            self.import_full_timeouts.get(),
            self.import_duplicates.get(),
            self.import_refused.get(),
        )
    }
}
