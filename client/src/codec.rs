//! rkyv in the ring: which types can travel, how they are named, how they are
//! written in place and checked on the way out.
//!
//! Archives are written with rkyv's default format (little-endian, aligned,
//! 32-bit relative pointers): the workspace pins rkyv's features so every
//! process agrees, and the type fingerprint records the format so that a
//! build with other rkyv format features is refused, not misread. Payloads
//! start 16-byte aligned in the ring, so archived types with an alignment up
//! to 16 are read in place.
//!
//! How message types are named and fingerprinted is told to users in the
//! crate documentation ("Message types").

use std::{any::TypeId, mem::MaybeUninit};

use shmbus_bus::layout::TYPE_NAME_MAX;

use crate::fill::{Fill, Row};

use rkyv::{
    api::high::{HighSerializer, HighValidator},
    bytecheck::CheckBytes,
    rancor::{BoxedError, Failure},
    ser::{
        allocator::{Arena, ArenaHandle},
        sharing::Share,
        Positional, Writer,
    },
    Archive, Archived, Portable, Serialize,
};

/// A type that can be published: rkyv can serialize it into a ring buffer.
///
/// Implemented for every `#[derive(Archive, Serialize)]` type. Messages are
/// serialized with rancor's zero-sized [`Failure`] error (the cheapest), and
/// only a message that fails is serialized again with [`BoxedError`] to
/// say why.
pub trait Publishable:
    Archive
    + for<'a, 'b> Serialize<HighSerializer<ArchiveWriter<'b>, ArenaHandle<'a>, Failure>>
    + for<'a, 'b> Serialize<HighSerializer<ArchiveWriter<'b>, ArenaHandle<'a>, BoxedError>>
{
}

impl<T> Publishable for T where
    T: Archive
        + for<'a, 'b> Serialize<HighSerializer<ArchiveWriter<'b>, ArenaHandle<'a>, Failure>>
        + for<'a, 'b> Serialize<HighSerializer<ArchiveWriter<'b>, ArenaHandle<'a>, BoxedError>>
{
}

/// An archived type that can be validated in place (rkyv's `bytecheck`).
///
/// Implemented for `Archived<T>` of every `#[derive(Archive)]` type (rkyv 0.8
/// derives `CheckBytes` by default).
///
/// Messages are checked with rancor's zero-sized [`Failure`] error (the
/// cheapest check), and only an archive that fails is checked again with
/// [`BoxedError`] to say why.
pub trait Checkable:
    Portable
    + for<'a> CheckBytes<HighValidator<'a, Failure>>
    + for<'a> CheckBytes<HighValidator<'a, BoxedError>>
{
}

impl<A> Checkable for A where
    A: Portable
        + for<'a> CheckBytes<HighValidator<'a, Failure>>
        + for<'a> CheckBytes<HighValidator<'a, BoxedError>>
{
}

/// Most alignment an archived type may need: payloads start 16-aligned.
pub const MAX_ALIGN: usize = 16;

/// The default name a topic's rings carry for `T`: [`std::any::type_name`]
/// with every path reduced to its last segment and whitespace dropped.
///
/// It does not depend on where `T` is defined or on how the compiler
/// spells paths, only on the type's own name and its generic arguments.
/// Two different types of one name (`a::Pose`, `b::Pose`) get the same
/// default name: declare distinct names with
/// [`Bus::typed_publisher`](crate::Bus::typed_publisher) if both travel on
/// one bus (their fingerprints also differ whenever their layouts do).
///
/// # Examples
///
/// ```
/// mod robot { pub mod msgs { pub struct Pose; } }
/// assert_eq!(shmbus::type_name::<robot::msgs::Pose>(), "Pose");
/// assert_eq!(shmbus::type_name::<Vec<String>>(), "Vec<String>");
/// assert_eq!(shmbus::type_name::<(u8, [u32; 4])>(), "(u8,[u32;4])");
/// ```
pub fn type_name<T: ?Sized>() -> String {
    short_type_name(std::any::type_name::<T>())
}

/// Reduces every path in a Rust type name to its last segment and drops
/// whitespace, except one space between two words (`dyn Trait`).
fn short_type_name(full: &str) -> String {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(full.len());
    // Start (in `out`) of the word being written, if any.
    let mut word_start: Option<usize> = None;
    let mut pending_space = false;
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            // `a::b`: drop the segment written so far (a module or crate).
            if let Some(start) = word_start.take() {
                out.truncate(start);
            }
            pending_space = false;
            continue;
        }
        if c.is_whitespace() {
            pending_space = true;
            word_start = None;
            continue;
        }
        if is_word(c) {
            if word_start.is_none() {
                if pending_space && out.chars().next_back().is_some_and(is_word) {
                    out.push(' ');
                }
                word_start = Some(out.len());
            }
        } else {
            word_start = None;
        }
        pending_space = false;
        out.push(c);
    }
    out
}

/// The fingerprint of `T` under its default name, [`type_name`]. See
/// [`fingerprint_named`].
///
/// # Examples
///
/// ```
/// #[derive(rkyv::Archive)]
/// struct Tick { n: u64 }
/// mod other { #[derive(rkyv::Archive)] pub struct Tick { pub count: u64 } }
/// // Same name and layout: the same message type on the bus.
/// assert_eq!(shmbus::fingerprint::<Tick>(), shmbus::fingerprint::<other::Tick>());
/// assert_ne!(shmbus::fingerprint::<Tick>(), shmbus::fingerprint::<u64>());
/// ```
pub fn fingerprint<T: Archive>() -> u64 {
    fingerprint_named::<T>(&type_name::<T>())
}

/// The fingerprint rings carry for messages of `T` declared under `name`.
///
/// An FNV-1a hash (stable across processes, builds and compiler versions)
/// of a format tag, `name`, the size and alignment of `T::Archived`, and the
/// rkyv format in effect (endianness, alignment of archived primitives, size
/// of an archived `usize`); never 0, which means "untyped bytes". See the
/// [crate documentation](crate#message-types) for what it can and cannot tell apart.
///
/// # Examples
///
/// ```
/// // Two definitions of one message, declared under one name, agree.
/// #[derive(rkyv::Archive)]
/// struct PoseA { x: f32, y: f32 }
/// #[derive(rkyv::Archive)]
/// struct PoseB { east: f32, north: f32 }
/// assert_eq!(
///     shmbus::fingerprint_named::<PoseA>("robot.Pose"),
///     shmbus::fingerprint_named::<PoseB>("robot.Pose"),
/// );
/// // Another layout under that name does not.
/// assert_ne!(
///     shmbus::fingerprint_named::<PoseA>("robot.Pose"),
///     shmbus::fingerprint_named::<u64>("robot.Pose"),
/// );
/// ```
pub fn fingerprint_named<T: Archive>(name: &str) -> u64 {
    let mut h = Fnv::new();
    // Bumped whenever what is hashed changes.
    h.eat(b"shmbus.type.v1\0");
    h.eat(name.as_bytes());
    h.eat(&[0]);
    h.eat(&(std::mem::size_of::<T::Archived>() as u64).to_le_bytes());
    h.eat(&(std::mem::align_of::<T::Archived>() as u64).to_le_bytes());
    h.eat(&format_word().to_le_bytes());
    // Never 0: that means "untyped bytes".
    h.0 | 1
}

/// A handle's message type: the name its rings carry and its fingerprint.
#[derive(Debug, Clone)]
pub(crate) struct TypeInfo {
    pub(crate) name: String,
    pub(crate) fingerprint: u64,
}

impl TypeInfo {
    /// `T` declared as `name`.
    ///
    /// # Errors
    ///
    /// [`shmbus_bus::Error::InvalidName`] for an empty name, one longer
    /// than a ring header holds, or one with control characters.
    pub(crate) fn new<T: Archive>(name: &str) -> Result<Self, shmbus_bus::Error> {
        let fail = |reason| {
            Err(shmbus_bus::Error::InvalidName {
                kind: "type",
                name: name.chars().take(TYPE_NAME_MAX).collect(),
                reason,
            })
        };
        if name.is_empty() {
            return fail("it is empty");
        }
        if name.len() > TYPE_NAME_MAX {
            return fail(
                "it is longer than a ring header holds (shmbus_bus::layout::TYPE_NAME_MAX bytes)",
            );
        }
        if name.chars().any(char::is_control) {
            return fail("it contains control characters");
        }
        Ok(Self {
            name: name.to_string(),
            fingerprint: fingerprint_named::<T>(name),
        })
    }
}

/// The rkyv format features of this build, as one word: big-endian flag,
/// alignment of an archived `u32` (1 with `unaligned`), size of an archived
/// `usize` (the pointer width feature).
fn format_word() -> u64 {
    let big_endian = TypeId::of::<Archived<u32>>() == TypeId::of::<rkyv::rend::u32_be>();
    u64::from(big_endian)
        | (std::mem::align_of::<Archived<u32>>() as u64) << 8
        | (std::mem::size_of::<Archived<usize>>() as u64) << 16
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn eat(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// FNV-1a of `bytes` (for names derived from labels).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv::new();
    h.eat(bytes);
    h.0
}

/// The rkyv writer shmbus serializes with: writes into a buffer (a ring
/// loan) and, once the archive outgrows it, keeps counting the bytes it
/// would have written. So one pass tells "written" from "needs exactly N
/// bytes", without relying on an error's text, and a message that does not
/// fit a first guess is written again into a loan of exactly its size.
///
/// Appears in [`Publishable`]'s bound; you never build one yourself.
pub struct ArchiveWriter<'a> {
    buf: &'a mut [MaybeUninit<u8>],
    /// Bytes the archive has so far (may exceed `buf.len()`).
    pos: usize,
    /// What to do with [`Fill`] fields.
    fills: Fills<'a>,
    /// [`Fill`] fields met so far (the index the next one gets).
    fills_seen: usize,
    /// A [`Fill`] was counted but not written: the buffer holds no
    /// complete archive, even if it was big enough.
    deferred: bool,
}

/// The user's code that writes [`Fill`] fields: called for each row with
/// where it is and its bytes.
pub(crate) type RowFn<'f> = dyn FnMut(Row, &mut [u8]) + 'f;

/// What an [`ArchiveWriter`] does with [`Fill`] fields.
pub(crate) enum Fills<'f> {
    /// Count their bytes, leave the space unwritten, call nothing: a pass
    /// that only learns the archive's size.
    Defer,
    /// Zero each row and hand it to the closure, if any (the pass whose
    /// bytes are committed); without one, the rows stay zero.
    Run(Option<&'f mut RowFn<'f>>),
}

impl std::fmt::Debug for Fills<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Defer => "Defer",
            Self::Run(None) => "Run(zeros)",
            Self::Run(Some(_)) => "Run(closure)",
        })
    }
}

impl Fills<'_> {
    /// The same instruction, borrowed for a shorter time.
    pub(crate) fn reborrow(&mut self) -> Fills<'_> {
        match self {
            Self::Defer => Fills::Defer,
            Self::Run(None) => Fills::Run(None),
            Self::Run(Some(write)) => Fills::Run(Some(&mut **write)),
        }
    }
}

impl<'a> ArchiveWriter<'a> {
    fn new(buf: &'a mut [MaybeUninit<u8>], fills: Fills<'a>) -> Self {
        Self {
            buf,
            pos: 0,
            fills,
            fills_seen: 0,
            deferred: false,
        }
    }

    /// Reserves `fill.len()` bytes at the current position and returns where
    /// they start. Writes them (zeroed rows handed to the closure) if this
    /// pass writes fills and they lie inside the buffer; otherwise only
    /// counts them.
    pub(crate) fn fill(&mut self, fill: &Fill) -> usize {
        let pos = self.pos;
        let len = fill.len();
        let index = self.fills_seen;
        self.fills_seen += 1;
        let inside = pos <= self.buf.len() && len <= self.buf.len() - pos;
        match &mut self.fills {
            Fills::Run(write) if inside => {
                fill.run(index, &mut self.buf[pos..pos + len], write.as_deref_mut());
            }
            _ => self.deferred = true,
        }
        self.pos = pos.saturating_add(len);
        pos
    }
}

impl std::fmt::Debug for ArchiveWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveWriter")
            .field("capacity", &self.buf.len())
            .field("pos", &self.pos)
            .field("fills", &self.fills)
            .finish()
    }
}

impl Positional for ArchiveWriter<'_> {
    #[inline]
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E> Writer<E> for ArchiveWriter<'_> {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let room = self.buf.len().wrapping_sub(self.pos);
        if self.pos <= self.buf.len() && bytes.len() <= room {
            // SAFETY: `pos + bytes.len() <= buf.len()` (checked just above),
            // so the destination lies in our exclusive buffer; a `&[u8]`
            // cannot overlap it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.buf.as_mut_ptr().add(self.pos).cast::<u8>(),
                    bytes.len(),
                );
            }
        }
        // Past the end: count only. Positions only grow, so every later
        // write is past the end too and the buffer's prefix stays coherent.
        self.pos = self.pos.saturating_add(bytes.len());
        Ok(())
    }
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

/// Why [`serialize_into`] wrote nothing usable.
#[derive(Debug)]
pub(crate) enum SerializeFail {
    /// The archive needs exactly `needed` bytes, more than the buffer has.
    NoRoom { needed: usize },
    /// The archive (exactly `needed` bytes) has [`Fill`] fields that this
    /// pass only counted ([`Fills::Defer`]): write it again with
    /// [`Fills::Run`].
    Deferred { needed: usize },
    /// rkyv (or the type's `Serialize`) failed after `reached` bytes.
    Failed { error: BoxedError, reached: usize },
}

/// Serializes `value` into `buf`; returns the archive's length. With
/// [`Fills::Run`], the closures of its [`Fill`] fields run (once each) if
/// their bytes lie inside `buf`.
pub(crate) fn serialize_into<T: Publishable>(
    value: &T,
    buf: &mut [MaybeUninit<u8>],
    scratch: &mut Scratch,
    mut fills: Fills<'_>,
) -> Result<usize, SerializeFail> {
    let cap = buf.len();
    let (result, needed, deferred) =
        serialize_with::<T, Failure>(value, &mut *buf, scratch, fills.reborrow());
    match result {
        Ok(()) if needed > cap => Err(SerializeFail::NoRoom { needed }),
        Ok(()) if deferred => Err(SerializeFail::Deferred { needed }),
        Ok(()) => Ok(needed),
        Err(Failure) => Err(explain_failure(value, buf, scratch, needed)),
    }
}

/// Rare: serializes again to learn why the first attempt failed (the
/// buffer's bytes are rewritten; nothing uses them after a failure). Runs
/// no [`Fill`] closure: they ran at most once, in the attempt that failed.
#[cold]
#[inline(never)]
fn explain_failure<T: Publishable>(
    value: &T,
    buf: &mut [MaybeUninit<u8>],
    scratch: &mut Scratch,
    needed: usize,
) -> SerializeFail {
    let (result, reached, _) = serialize_with::<T, BoxedError>(value, buf, scratch, Fills::Defer);
    let error = match result {
        Err(error) => error,
        // Failed once, not twice: a `Serialize` impl that is not
        // deterministic. Report that.
        Ok(()) => <BoxedError as rkyv::rancor::Source>::new(NotDeterministic),
    };
    SerializeFail::Failed {
        error,
        reached: reached.max(needed),
    }
}

/// What `rkyv::api::high::to_bytes_in_with_alloc` does, keeping the writer
/// (and the size it counted) when serialization fails: the outcome, the
/// archive's size (as far as it got), and whether a [`Fill`] was deferred.
fn serialize_with<'f, T, E>(
    value: &T,
    buf: &'f mut [MaybeUninit<u8>],
    scratch: &mut Scratch,
    fills: Fills<'f>,
) -> (Result<(), E>, usize, bool)
where
    T: for<'a, 'b> Serialize<HighSerializer<ArchiveWriter<'b>, ArenaHandle<'a>, E>>,
    E: rkyv::rancor::Source,
{
    let mut serializer = rkyv::ser::Serializer::new(
        ArchiveWriter::new(buf, fills),
        scratch.0.acquire(),
        Share::new(),
    );
    let result = rkyv::api::serialize_using::<_, E>(value, &mut serializer).map(drop);
    (result, serializer.writer.pos, serializer.writer.deferred)
}

/// A serialization or validation that failed once and then succeeded (a
/// `Serialize` impl that is not deterministic, or bytes that changed).
#[derive(Debug)]
struct NotDeterministic;

impl std::fmt::Display for NotDeterministic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed once, then succeeded on a second attempt")
    }
}

impl std::error::Error for NotDeterministic {}

/// Validates `bytes` as an archived `A` and returns it. The check that
/// passes costs what rkyv's cheapest check costs; a failing archive is
/// checked a second time to learn why.
#[inline]
pub(crate) fn access_checked<A: Checkable>(bytes: &[u8]) -> Result<&A, BoxedError> {
    match rkyv::access::<A, Failure>(bytes) {
        Ok(archived) => Ok(archived),
        Err(Failure) => Err(explain_invalid::<A>(bytes)),
    }
}

/// Rare: validates again to learn why the archive is invalid.
#[cold]
#[inline(never)]
fn explain_invalid<A: Checkable>(bytes: &[u8]) -> BoxedError {
    match rkyv::access::<A, BoxedError>(bytes) {
        Err(error) => error,
        Ok(_) => <BoxedError as rkyv::rancor::Source>::new(NotDeterministic),
    }
}

/// What to say when `len` bytes failed validation as `type_name`: the
/// validator's own message (kept in release builds too: [`BoxedError`]),
/// or a fixed description if it has none.
pub(crate) fn invalid_reason(e: &BoxedError, len: usize, type_name: &str) -> String {
    let text = e.to_string();
    if text.trim().is_empty() {
        format!("the {len}-byte payload is not a valid archived {type_name}")
    } else {
        format!("{text} (in a {len}-byte payload)")
    }
}

/// What to say when rkyv itself failed to serialize.
pub(crate) fn serialize_reason(e: &BoxedError, type_name: &str) -> String {
    let text = e.to_string();
    if text.trim().is_empty() {
        format!("rkyv could not serialize a {type_name}")
    } else {
        format!("{type_name}: {text}")
    }
}

/// rancor's error, re-exported for the `Fallible` bound of tests.
#[cfg(test)]
pub(crate) type TestError = rkyv::rancor::Error;

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
    mod same {
        #[derive(rkyv::Archive, rkyv::Serialize)]
        pub(super) struct A {
            pub(super) renamed: i64,
        }
    }

    #[test]
    fn fingerprints_differ_by_layout_and_agree_by_name() {
        assert_eq!(fingerprint::<A>(), fingerprint::<A>());
        assert_ne!(fingerprint::<A>(), fingerprint::<B>());
        // Another module, another field name, same name and layout.
        assert_eq!(fingerprint::<A>(), fingerprint::<same::A>());
        assert_ne!(fingerprint_named::<A>("x.A"), fingerprint_named::<A>("x.B"));
        assert_ne!(fingerprint::<A>(), 0);
    }

    /// The fingerprint is a wire contract between separately built
    /// services: a change in how it is computed must be deliberate (bump
    /// the `shmbus.type.v1` tag, say so in the release notes).
    #[test]
    fn fingerprint_values_are_fixed() {
        // FNV-1a 64 of "shmbus.type.v1\0", the name, "\0", then size, align
        // and the format word 0x0004_0400 (little-endian, archived u32
        // aligned to 4, archived usize of 4 bytes) as u64 LE; low bit set.
        // Checked against an independent implementation of FNV-1a.
        assert_eq!(fingerprint::<A>(), 0xf4ea_a4ac_8b2e_8ac1);
        assert_eq!(fingerprint::<u64>(), 0x8fb1_b09f_a42d_232f);
        assert_eq!(fingerprint_named::<A>("robot.Pose"), 0x4ba8_324a_40f4_2c4d);
    }

    #[test]
    fn short_names() {
        for (full, short) in [
            ("robot_msgs::pose::Pose", "Pose"),
            ("alloc::vec::Vec<alloc::string::String>", "Vec<String>"),
            ("std::vec::Vec<std::string::String>", "Vec<String>"),
            ("(u8, [u32; 4])", "(u8,[u32;4])"),
            ("&str", "&str"),
            ("a::B<c::D, e::F<g::H>>", "B<D,F<H>>"),
            ("alloc::boxed::Box<dyn core::any::Any>", "Box<dyn Any>"),
            ("u64", "u64"),
        ] {
            assert_eq!(short_type_name(full), short, "{full}");
        }
    }

    #[repr(align(16))]
    struct Aligned([MaybeUninit<u8>; 64]);

    #[test]
    fn serialize_reports_exact_size_when_short() {
        let mut arena = Scratch::new();
        let mut big = Aligned([MaybeUninit::uninit(); 64]);
        let n = serialize_into(&A { x: 7 }, &mut big.0, &mut arena, Fills::Run(None)).unwrap();
        // Too small by one byte: the exact size comes back, not an error text.
        match serialize_into(
            &A { x: 7 },
            &mut big.0[..n - 1],
            &mut arena,
            Fills::Run(None),
        ) {
            Err(SerializeFail::NoRoom { needed }) => assert_eq!(needed, n),
            other => panic!("{other:?}"),
        }
        let n2 =
            serialize_into(&A { x: 7 }, &mut big.0[..n], &mut arena, Fills::Run(None)).unwrap();
        assert_eq!(n2, n);
        // SAFETY: `n` bytes were initialized by the serializer.
        let bytes = unsafe { std::slice::from_raw_parts(big.0.as_ptr().cast::<u8>(), n) };
        assert_eq!(access_checked::<ArchivedA>(bytes).unwrap().x, 7);
        // A variable-size archive, counted past a small buffer.
        let v: Vec<u8> = (0..=255).collect();
        let exact = rkyv::to_bytes::<TestError>(&v).unwrap().len();
        match serialize_into(&v, &mut big.0, &mut arena, Fills::Run(None)) {
            Err(SerializeFail::NoRoom { needed }) => assert_eq!(needed, exact),
            other => panic!("{other:?}"),
        }
    }

    /// A message whose `Serialize` fails for a reason of its own.
    struct Fails;

    #[derive(Debug)]
    struct Boom;

    impl std::fmt::Display for Boom {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("boom: the sensor is unplugged")
        }
    }

    impl std::error::Error for Boom {}

    impl Archive for Fails {
        type Archived = ();
        type Resolver = ();
        fn resolve(&self, (): (), _: rkyv::Place<()>) {}
    }

    impl<S> Serialize<S> for Fails
    where
        S: rkyv::rancor::Fallible + ?Sized,
        S::Error: rkyv::rancor::Source,
    {
        fn serialize(&self, _: &mut S) -> Result<(), S::Error> {
            Err(<S::Error as rkyv::rancor::Source>::new(Boom))
        }
    }

    #[test]
    fn serialize_failures_keep_their_reason_in_every_build() {
        let mut arena = Scratch::new();
        let mut buf = Aligned([MaybeUninit::uninit(); 64]);
        match serialize_into(&Fails, &mut buf.0, &mut arena, Fills::Run(None)) {
            Err(SerializeFail::Failed { error, reached }) => {
                assert_eq!(reached, 0);
                let reason = serialize_reason(&error, "Fails");
                assert!(reason.contains("sensor is unplugged"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_reason_is_never_empty() {
        let bytes = [0xffu8; 3];
        let Err(e) = access_checked::<ArchivedA>(&bytes) else {
            panic!("3 bytes validated as an 8-byte archive");
        };
        let reason = invalid_reason(&e, bytes.len(), "A");
        assert!(!reason.trim().is_empty());
        assert!(reason.contains("3-byte"), "{reason}");
    }
}
