//! The compared systems. Each module implements [`crate::transport::System`].

use crate::transport::System;

pub mod bare;
pub mod floor;
#[cfg(feature = "iceoryx2")]
pub mod iceoryx2;
pub mod pipe;
pub mod shmbus;
pub mod uds;

/// Name of the hardware-floor system every row is compared against.
pub const FLOOR: &str = "floor";
/// Name of the bare-ring system, the yardstick of shmbus's overhead.
pub const BARE: &str = bare::NAME;
/// Name of the iceoryx2 system (present with the `iceoryx2` feature).
pub const ICEORYX2: &str = "iceoryx2";

/// Every system compiled into this binary, in table order.
///
/// To add a system: write a module implementing
/// [`System`] and add it here.
pub fn all() -> Vec<Box<dyn System>> {
    let mut v: Vec<Box<dyn System>> = vec![
        Box::new(floor::Floor),
        Box::new(bare::Bare),
        Box::new(shmbus::typed::ShmbusTyped { checked: true }),
        Box::new(shmbus::typed::ShmbusTyped { checked: false }),
        Box::new(shmbus::raw::ShmbusRaw),
    ];
    #[cfg(feature = "iceoryx2")]
    v.push(Box::new(iceoryx2::Iceoryx2));
    v.push(Box::new(uds::Uds));
    v.push(Box::new(pipe::Pipe));
    v
}

/// Looks a system up by name.
pub fn by_name(name: &str) -> Option<Box<dyn System>> {
    all().into_iter().find(|s| s.name() == name)
}
