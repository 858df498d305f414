//! rkyv in the ring: which types can travel, how they are named, how they are
//! written in place and checked on the way out.
//!
//! Archives are written with rkyv's default format (little-endian, aligned,
//! 32-bit relative pointers): the workspace pins rkyv's features so every
//! process agrees. Payloads start 16-byte aligned in the ring, so archived
//! types with an alignment up to 16 are read in place.

use std::mem::MaybeUninit;

use rkyv::{
    api::high::{HighSerializer, HighValidator},
    bytecheck::CheckBytes,
    rancor,
    ser::{
        allocator::{Arena, ArenaHandle},
        writer::Buffer,
    },
    Archive, Portable, Serialize,
};

/// A type that can be published: rkyv can serialize it into a ring buffer.
///
/// Implemented for every `#[derive(Archive, Serialize)]` type.
pub trait Publishable:
    Archive + for<'a, 'b> Serialize<HighSerializer<Buffer<'b>, ArenaHandle<'a>, rancor::Error>>
{
}

impl<T> Publishable for T where
    T: Archive + for<'a, 'b> Serialize<HighSerializer<Buffer<'b>, ArenaHandle<'a>, rancor::Error>>
{
}

/// An archived type that can be validated in place (rkyv's `bytecheck`).
///
/// Implemented for `Archived<T>` of every `#[derive(Archive)]` type (rkyv 0.8
/// derives `CheckBytes` by default).
pub trait Checkable: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>> {}

impl<A> Checkable for A where A: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>> {}

/// Most alignment an archived type may need: payloads start 16-aligned.
pub const MAX_ALIGN: usize = 16;

/// The name a topic's rings carry for `T`.
pub fn type_name<T: Archive>() -> &'static str {
    std::any::type_name::<T>()
}

/// A fingerprint of `T`'s archived layout: its name, size and alignment,
/// hashed with FNV-1a (stable across processes and builds). Two types that
/// differ in any of these never match; same-named types of different
/// versions with equal size are not told apart (use distinct names).
pub fn fingerprint<T: Archive>() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(type_name::<T>().as_bytes());
    eat(&(std::mem::size_of::<T::Archived>() as u64).to_le_bytes());
    eat(&(std::mem::align_of::<T::Archived>() as u64).to_le_bytes());
    // Never 0: that means "untyped bytes".
    h | 1
}

/// rkyv's scratch allocator, kept by a publisher across messages (saves a
/// thread-local lookup and the arena's warm-up per message).
pub(crate) struct Scratch(Arena);

impl Scratch {
    pub(crate) fn new() -> Self {
        Self(Arena::new())
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scratch")
    }
}

/// Serializes `value` into `buf`; returns the archive's length, or `None` if
/// it did not fit (or rkyv failed, which the caller tells apart by retrying
/// with the largest buffer).
pub(crate) fn serialize_into<T: Publishable>(
    value: &T,
    buf: &mut [MaybeUninit<u8>],
    scratch: &mut Scratch,
) -> Result<usize, rancor::Error> {
    let written = rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(
        value,
        Buffer::from(buf),
        scratch.0.acquire(),
    )?;
    Ok(written.len())
}

/// Validates `bytes` as an archived `A` and returns it.
pub(crate) fn access_checked<A: Checkable>(bytes: &[u8]) -> Result<&A, rancor::Error> {
    rkyv::access::<A, rancor::Error>(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Archive, Serialize)]
    struct A {
        x: u64,
    }
    #[derive(Archive, Serialize)]
    struct B {
        x: u32,
    }

    #[test]
    fn fingerprints_differ_by_type_and_are_stable() {
        assert_eq!(fingerprint::<A>(), fingerprint::<A>());
        assert_ne!(fingerprint::<A>(), fingerprint::<B>());
        assert_ne!(fingerprint::<A>(), 0);
    }

    #[test]
    fn serialize_reports_overflow() {
        let mut arena = Scratch::new();
        let mut small = [MaybeUninit::uninit(); 4];
        assert!(serialize_into(&A { x: 1 }, &mut small, &mut arena).is_err());
        #[repr(align(16))]
        struct Aligned([MaybeUninit<u8>; 64]);
        let mut big = Aligned([MaybeUninit::uninit(); 64]);
        let n = serialize_into(&A { x: 7 }, &mut big.0, &mut arena).unwrap();
        // SAFETY: `n` bytes were initialized by the serializer.
        let bytes = unsafe { std::slice::from_raw_parts(big.0.as_ptr().cast::<u8>(), n) };
        assert_eq!(access_checked::<ArchivedA>(bytes).unwrap().x, 7);
    }
}
