//! Logging as the bridge logs (`shmbus_bridge::log`: RFC 3339 UTC lines on
//! standard error, no timestamp under journald, `RUST_LOG` or the configured
//! level); every message is sanitized, since names and keys come from the
//! network.

macro_rules! warning {
    ($($t:tt)*) => { ::tracing::warn!("{}", ::shmbus_bridge::log::sanitize(&::std::format!($($t)*))) };
}
macro_rules! info {
    ($($t:tt)*) => { ::tracing::info!("{}", ::shmbus_bridge::log::sanitize(&::std::format!($($t)*))) };
}
macro_rules! debug {
    ($($t:tt)*) => { ::tracing::debug!("{}", ::shmbus_bridge::log::sanitize(&::std::format!($($t)*))) };
}
pub(crate) use {debug, info, warning};
