//! Set-up shared by the client's integration tests: a bus under a private
//! root that is removed afterwards.

#![allow(dead_code, unreachable_pub)]

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use shmbus::{Bus, BusBuilder};

/// A private root directory, removed on drop.
pub struct TempRoot(pub PathBuf);

impl TempRoot {
    /// A fresh root named after the test.
    pub fn new(test: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "shmbus-client-{test}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    /// A bus builder rooted here.
    pub fn builder(&self) -> BusBuilder {
        Bus::builder().root(&self.0)
    }

    /// A bus with default options rooted here.
    pub fn bus(&self) -> Bus {
        self.builder().build().expect("bus")
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
