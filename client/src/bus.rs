//! [`Bus`]: a named set of topics under a root directory.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use shmbus_bus::{self as bus, Policy, RingConfig, StartAt, WaitStrategy};

use crate::{
    codec::{self, Checkable, Publishable},
    publisher::Publisher,
    subscriber::Subscriber,
    Error, Result,
};

/// Where topics live: `<root>/<bus name>/<topic>/`.
///
/// Cheap to clone; opening a bus touches nothing on disk until a publisher
/// or subscriber is created.
///
/// # Examples
///
/// ```
/// use shmbus::Bus;
/// # let root = std::env::temp_dir().join(format!("shmbus-doc-bus-{}", std::process::id()));
/// let bus = Bus::builder().root(&root).name("robot").build().unwrap();
/// assert_eq!(bus.name(), "robot");
/// # std::fs::remove_dir_all(&root).ok();
/// ```
#[derive(Debug, Clone)]
pub struct Bus {
    root: PathBuf,
    name: String,
    group_access: bool,
    topic: TopicOptions,
}

/// Ring parameters for the publishers this bus creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicOptions {
    /// Ring bytes per publisher (a power of two). Default 4 MiB.
    pub capacity: u64,
    /// Largest archived message. Default 1 MiB.
    pub max_message: u64,
    /// Most subscribers per publisher ring. Default 64.
    pub slots: u32,
    /// Flow control. Default [`Policy::Block`].
    pub policy: Policy,
    /// Untethered eviction (Block only): a subscriber that holds a publisher
    /// back this long is evicted. Default `None` (only dead ones are).
    pub evict_after: Option<Duration>,
}

impl Default for TopicOptions {
    fn default() -> Self {
        let ring = RingConfig::default();
        Self {
            capacity: ring.capacity,
            max_message: ring.max_message,
            slots: ring.slots,
            policy: ring.policy,
            evict_after: ring.evict_after,
        }
    }
}

/// Builds a [`Bus`]: where it lives, and the ring options of the publishers
/// it creates (subscribers take each ring as its publisher made it).
///
/// # Examples
///
/// A lossy sensor topic whose publishers never wait, and a reliable one that
/// evicts a subscriber holding it back for more than 100 ms:
///
/// ```
/// use shmbus::{Bus, Policy};
/// use std::time::Duration;
///
/// # let root = std::env::temp_dir().join(format!("shmbus-doc-builder-{}", std::process::id()));
/// let sensors = Bus::builder()
///     .root(&root) // default: $SHMBUS_ROOT, else /dev/shm/shmbus-<uid>
///     .name("robot")
///     .policy(Policy::Overwrite)
///     .capacity(1 << 16)
///     .max_message(1 << 10)
///     .build()?;
/// let commands = Bus::builder()
///     .root(&root)
///     .name("robot")
///     .evict_after(Some(Duration::from_millis(100)))
///     .build()?;
/// assert_eq!(sensors.topic_options().policy, Policy::Overwrite);
/// assert_eq!(commands.topic_options().policy, Policy::Block);
///
/// // Options are checked when the bus is built.
/// assert!(Bus::builder().root(&root).capacity(1000).build().is_err()); // not a power of two
/// # Ok::<(), shmbus::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct BusBuilder {
    root: Option<PathBuf>,
    name: Option<String>,
    group_access: bool,
    topic: TopicOptions,
}

impl BusBuilder {
    /// Root directory (default: `$SHMBUS_ROOT`, else this user's
    /// `/dev/shm/shmbus-<uid>`). Point it at a hugetlbfs or `huge=always`
    /// tmpfs mount for huge pages.
    pub fn root(mut self, root: impl AsRef<Path>) -> Self {
        self.root = Some(root.as_ref().to_path_buf());
        self
    }

    /// Bus name (default `"default"`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Let the owning group read and write the bus (files 0660, dirs 0770)
    /// instead of the owner only (0600 / 0700).
    pub fn group_access(mut self, yes: bool) -> Self {
        self.group_access = yes;
        self
    }

    /// Ring bytes per publisher (power of two).
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.topic.capacity = bytes;
        self
    }

    /// Largest archived message.
    pub fn max_message(mut self, bytes: u64) -> Self {
        self.topic.max_message = bytes;
        self
    }

    /// Most subscribers per publisher ring.
    pub fn slots(mut self, slots: u32) -> Self {
        self.topic.slots = slots;
        self
    }

    /// Flow-control policy of new rings.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.topic.policy = policy;
        self
    }

    /// Untethered eviction delay (Block policy): a live subscriber that holds
    /// a publisher back this long is evicted, gets [`Error::Evicted`] once
    /// and rejoins at the newest message. `None` (the default): only
    /// subscribers whose process died are evicted; nothing is lost.
    pub fn evict_after(mut self, after: Option<Duration>) -> Self {
        self.topic.evict_after = after;
        self
    }

    /// Validates names and options.
    ///
    /// # Errors
    ///
    /// A bad bus name or ring option.
    pub fn build(self) -> Result<Bus> {
        let name = self.name.unwrap_or_else(|| bus::DEFAULT_BUS.to_string());
        bus::validate_name("bus", &name)?;
        let bus = Bus {
            root: self.root.unwrap_or_else(bus::default_root),
            name,
            group_access: self.group_access,
            topic: self.topic,
        };
        bus.ring_config().validate()?;
        Ok(bus)
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Room for the id's suffix `-<pid>.<start time>-<n>`: a `u32` and two
/// `u64`s in decimal, three separators.
const ID_SUFFIX_ROOM: usize = 1 + 10 + 1 + 20 + 1 + 20;
/// Longest label kept verbatim in an id; longer ones are shortened.
const LABEL_ROOM: usize = bus::MAX_NAME_LEN - ID_SUFFIX_ROOM;
/// Hex digits of the label hash in a shortened label.
const LABEL_HASH_DIGITS: usize = 16;

/// The publisher id (ring file stem) of the `n`-th publisher made by
/// process `pid` started at `start`: `<label part>-<pid>.<start>-<n>`.
///
/// The label part is the label itself when it has at most [`LABEL_ROOM`]
/// (43) bytes; a longer label keeps its first 26 bytes, then `.` and 16 hex
/// digits of a hash of the whole label, so the id stays within
/// [`bus::MAX_NAME_LEN`] and two long labels that share a prefix still read
/// apart. Uniqueness comes from the suffix (the start time tells a reused
/// pid apart), never from the label. `label` must be a valid name.
fn publisher_id(label: &str, pid: u32, start: u64, n: u64) -> String {
    let suffix = format!("-{pid}.{start}-{n}");
    if label.len() <= LABEL_ROOM {
        return format!("{label}{suffix}");
    }
    let keep = LABEL_ROOM - 1 - LABEL_HASH_DIGITS;
    // Valid names are ASCII: any byte index is a char boundary.
    let prefix = label.get(..keep).unwrap_or(label);
    let hash = codec::fnv1a(label.as_bytes());
    format!("{prefix}.{hash:016x}{suffix}")
}

impl Bus {
    /// The default bus under the default root.
    ///
    /// # Errors
    ///
    /// None today (the default options are valid); the root is used, and
    /// checked, when the first publisher or subscriber is made.
    pub fn open_default() -> Result<Self> {
        Self::builder().build()
    }

    /// A named bus under the default root.
    ///
    /// # Errors
    ///
    /// [`Error::Bus`] with an invalid-name error.
    pub fn open(name: &str) -> Result<Self> {
        Self::builder().name(name).build()
    }

    /// Starts building a bus.
    pub fn builder() -> BusBuilder {
        BusBuilder::default()
    }

    /// The bus name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Options for new rings.
    pub fn topic_options(&self) -> &TopicOptions {
        &self.topic
    }

    /// A copy of this bus whose new publishers use `options`.
    pub fn with_topic_options(&self, options: TopicOptions) -> Self {
        Self {
            topic: options,
            ..self.clone()
        }
    }

    /// The directory of `topic` (validated).
    ///
    /// # Errors
    ///
    /// A bad topic name.
    pub fn topic_dir(&self, topic: &str) -> Result<PathBuf> {
        Ok(bus::topic_dir(&self.root, &self.name, topic)?)
    }

    /// Whether the bus is shared with the owner's group.
    pub(crate) fn group_access_enabled(&self) -> bool {
        self.group_access
    }

    pub(crate) fn dir_mode(&self) -> u32 {
        if self.group_access {
            0o770
        } else {
            0o700
        }
    }

    pub(crate) fn ring_config(&self) -> RingConfig {
        RingConfig {
            capacity: self.topic.capacity,
            max_message: self.topic.max_message,
            slots: self.topic.slots,
            policy: self.topic.policy,
            evict_after: self.topic.evict_after,
            mode: if self.group_access { 0o660 } else { 0o600 },
            ..RingConfig::default()
        }
    }

    /// A unique publisher id for `label` (validated): see [`publisher_id`].
    pub(crate) fn new_publisher_id(label: &str) -> Result<String> {
        bus::validate_name("publisher label", label)?;
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let start = shmbus_bus::ProcessId::current().map_or(0, |p| p.start_time);
        Ok(publisher_id(label, std::process::id(), start, n))
    }

    /// Creates a publisher of `T` on `topic`.
    ///
    /// # Errors
    ///
    /// A bad topic name, [`Error::TypeMismatch`] if live publishers of the
    /// topic use another type, file-system errors.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shmbus::Bus;
    /// # let root = std::env::temp_dir().join(format!("shmbus-doc-pub-{}", std::process::id()));
    /// let bus = Bus::builder().root(&root).build().unwrap();
    /// let mut publisher = bus.publisher::<u64>("ticks").unwrap();
    /// publisher.send(&42).unwrap();
    /// # drop(publisher); std::fs::remove_dir_all(&root).ok();
    /// ```
    pub fn publisher<T>(&self, topic: &str) -> Result<Publisher<T>>
    where
        T: Publishable,
        T::Archived: Checkable,
    {
        self.publisher_named(topic, "p")
    }

    /// Like [`Self::publisher`], with a label that starts the publisher's id
    /// (seen in file names, logs and the bridge).
    ///
    /// The label is 1 to 96 bytes of ASCII letters, digits, `_`, `-` and
    /// `.`, not starting with `.`; an empty label is refused (use
    /// [`Self::publisher`] for the default label `p`). Labels longer than 43
    /// bytes are shortened in the id (prefix and hash), see
    /// [`Publisher::id`].
    ///
    /// # Errors
    ///
    /// As [`Self::publisher`]; [`Error::Bus`] with
    /// [`shmbus_bus::Error::InvalidName`] for a label that is not a valid
    /// name.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shmbus::Bus;
    /// # let root = std::env::temp_dir().join(format!("shmbus-doc-label-{}", std::process::id()));
    /// let bus = Bus::builder().root(&root).build().unwrap();
    /// let publisher = bus.publisher_named::<u64>("ticks", "clock").unwrap();
    /// assert!(publisher.id().starts_with("clock-"));
    /// assert!(bus.publisher_named::<u64>("ticks", "").is_err());
    /// # drop(publisher); std::fs::remove_dir_all(&root).ok();
    /// ```
    pub fn publisher_named<T>(&self, topic: &str, label: &str) -> Result<Publisher<T>>
    where
        T: Publishable,
        T::Archived: Checkable,
    {
        self.typed_publisher(topic, &codec::type_name::<T>(), label)
    }

    /// Creates a publisher of `T` on `topic` that declares the topic's
    /// message type as `type_name` instead of `T`'s default name
    /// ([`crate::type_name`]). Subscribers built separately agree with it
    /// when they declare the same name ([`Self::typed_subscriber`]) for a
    /// type of the same archived layout: see [`crate::fingerprint_named`].
    ///
    /// # Errors
    ///
    /// As [`Self::publisher_named`]; [`Error::Bus`] with
    /// [`shmbus_bus::Error::InvalidName`] for an empty type name, one longer
    /// than 256 bytes or one with control characters.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shmbus::Bus;
    /// # use std::time::Duration;
    /// # let root = std::env::temp_dir().join(format!("shmbus-doc-typed-{}", std::process::id()));
    /// let bus = Bus::builder().root(&root).build().unwrap();
    /// let mut subscriber = bus
    ///     .typed_subscriber::<u64>("ticks", "clock.Tick", Default::default(), Default::default())
    ///     .unwrap();
    /// let mut publisher = bus.typed_publisher::<u64>("ticks", "clock.Tick", "clock").unwrap();
    /// publisher.send(&7).unwrap();
    /// assert_eq!(*subscriber.recv_timeout(Duration::from_secs(5)).unwrap(), 7);
    /// // Another declared name is another type.
    /// assert!(bus.typed_publisher::<u64>("ticks", "clock.Tock", "clock").is_err());
    /// # drop((subscriber, publisher)); std::fs::remove_dir_all(&root).ok();
    /// ```
    pub fn typed_publisher<T>(
        &self,
        topic: &str,
        type_name: &str,
        label: &str,
    ) -> Result<Publisher<T>>
    where
        T: Publishable,
        T::Archived: Checkable,
    {
        const {
            assert!(
                std::mem::align_of::<T::Archived>() <= codec::MAX_ALIGN,
                "archived message types must need at most 16-byte alignment"
            );
        }
        Publisher::create(self, topic, label, codec::TypeInfo::new::<T>(type_name)?)
    }

    /// Subscribes to every publisher of `topic`, present and future, starting
    /// at their newest messages.
    ///
    /// # Errors
    ///
    /// A bad topic name; [`Error::TypeMismatch`] if a publisher of the topic
    /// carries another type.
    ///
    /// # Examples
    ///
    /// ```
    /// # use shmbus::Bus;
    /// # use std::time::Duration;
    /// # let root = std::env::temp_dir().join(format!("shmbus-doc-sub-{}", std::process::id()));
    /// let bus = Bus::builder().root(&root).build().unwrap();
    /// let mut subscriber = bus.subscriber::<String>("chat").unwrap();
    /// let mut publisher = bus.publisher::<String>("chat").unwrap();
    /// publisher.send(&"hello".to_string()).unwrap();
    /// let sample = subscriber.recv_timeout(Duration::from_secs(5)).unwrap();
    /// assert_eq!(sample.as_str(), "hello"); // &ArchivedString, read in place
    /// # drop(sample); drop((subscriber, publisher)); std::fs::remove_dir_all(&root).ok();
    /// ```
    pub fn subscriber<T>(&self, topic: &str) -> Result<Subscriber<T>>
    where
        T: rkyv::Archive,
        T::Archived: Checkable,
    {
        self.subscriber_with(topic, StartAt::Latest, WaitStrategy::default())
    }

    /// Subscribes with a start position and a wait strategy.
    ///
    /// # Errors
    ///
    /// As [`Self::subscriber`].
    pub fn subscriber_with<T>(
        &self,
        topic: &str,
        start: StartAt,
        wait: WaitStrategy,
    ) -> Result<Subscriber<T>>
    where
        T: rkyv::Archive,
        T::Archived: Checkable,
    {
        self.typed_subscriber(topic, &codec::type_name::<T>(), start, wait)
    }

    /// Subscribes to `topic` expecting its message type declared as
    /// `type_name` (see [`Self::typed_publisher`]).
    ///
    /// # Errors
    ///
    /// As [`Self::subscriber`]; an invalid type name as in
    /// [`Self::typed_publisher`].
    ///
    /// # Examples
    ///
    /// See [`Self::typed_publisher`].
    pub fn typed_subscriber<T>(
        &self,
        topic: &str,
        type_name: &str,
        start: StartAt,
        wait: WaitStrategy,
    ) -> Result<Subscriber<T>>
    where
        T: rkyv::Archive,
        T::Archived: Checkable,
    {
        const {
            assert!(
                std::mem::align_of::<T::Archived>() <= codec::MAX_ALIGN,
                "archived message types must need at most 16-byte alignment"
            );
        }
        Subscriber::create(
            self,
            topic,
            start,
            wait,
            codec::TypeInfo::new::<T>(type_name)?,
        )
    }

    /// Topics that exist on this bus (directories under it).
    ///
    /// # Errors
    ///
    /// If the bus directory exists but cannot be read.
    pub fn topics(&self) -> Result<Vec<String>> {
        let dir = self.root.join(&self.name);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::Bus(shmbus_bus::Error::Io {
                    path: dir,
                    source: e,
                }))
            }
        };
        let mut topics: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| bus::validate_name("topic", n).is_ok())
            .collect();
        topics.sort();
        Ok(topics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_fit_with_the_largest_suffix() {
        for len in 1..=bus::MAX_NAME_LEN {
            let label = "l".repeat(len);
            let id = publisher_id(&label, u32::MAX, u64::MAX, u64::MAX);
            assert!(id.len() <= bus::MAX_NAME_LEN, "{len}: {id}");
            bus::validate_name("publisher id", &id).unwrap();
        }
        assert_eq!(publisher_id("cam", 12, 345, 6), "cam-12.345-6");
        // Shortened labels keep 26 bytes and hash the whole label.
        let long = format!("{}x", "a".repeat(60));
        let id = publisher_id(&long, 1, 2, 3);
        assert_eq!(id.len(), 26 + 1 + 16 + "-1.2-3".len());
        assert!(id.starts_with(&format!("{}.", "a".repeat(26))), "{id}");
        assert_ne!(id, publisher_id(&format!("{}y", "a".repeat(60)), 1, 2, 3));
    }
}
