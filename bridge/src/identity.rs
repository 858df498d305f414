//! Node identities: each bridge's static X25519 key pair, the allowlist of
//! peer public keys with the node name each may use, and the key files.
//!
//! # Files
//!
//! - Private key (`key_file`), written by `shmbus-bridge keygen`: one line
//!   of standard base64 (32 bytes), after an optional `#` comment line. Mode
//!   0600, owned by the user running the bridge.
//! - Public key (`<key_file>.pub`), written beside it: `<base64> <node name>`,
//!   the line to add to the peers' allowlists.
//! - Allowlist (`allowlist`), like `authorized_keys`: one `<base64> <node
//!   name>` per line, `#` comments and blank lines ignored. A key appears at
//!   most once and a name at most once. The name of an authenticated peer is
//!   the one on its key's line, never the name it claims.
//!
//! # How files are opened
//!
//! Each file is opened once with `O_NOFOLLOW` (a symbolic link as the last
//! path component is refused, `ELOOP`), then checked with `fstat` on that
//! same descriptor — regular file, owner, mode — and read from it: there is
//! no window between a check and a second `open` for someone to swap the
//! file. The private key must be owned by the effective user and not
//! readable or writable by group or others; the allowlist must be owned by
//! the effective user or root and not writable by group or others (it says
//! who may connect). A new key file is created with `O_CREAT | O_EXCL |
//! O_NOFOLLOW` and mode 0600, so an existing file or a planted link is never
//! overwritten. Secret bytes live in [`Zeroizing`] buffers, wiped on drop.

use std::{
    collections::HashSet,
    fmt,
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    str::FromStr,
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use zeroize::Zeroizing;

use crate::proto::handshake::NOISE_PARAMS;

/// Length of an X25519 key.
pub const KEY_LEN: usize = 32;
/// Largest key or allowlist file read.
pub const MAX_KEY_FILE_LEN: usize = 4096;
/// Largest allowlist file read.
pub const MAX_ALLOWLIST_LEN: usize = 1 << 20;

/// Why a key or allowlist file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be opened or read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file ("private key file", "allowlist").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The path is a symbolic link.
    #[error("{what} {path} is a symbolic link; refusing to follow it (point the setting at the file itself)")]
    Symlink {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// Not a regular file.
    #[error("{what} {path} is not a regular file")]
    NotRegular {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// Owned by another user.
    #[error("{what} {path} is owned by uid {owner}, not by this user (uid {euid}); refusing it (run `chown {euid} {path}` if it really is yours)")]
    Owner {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        euid: u32,
    },
    /// Accessible by group or others.
    #[error("{what} {path} has mode {mode:04o}: it must not be {forbidden} by group or others; run `chmod {fix} {path}`")]
    Mode {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// "readable or writable" / "writable".
        forbidden: &'static str,
        /// The chmod to suggest.
        fix: &'static str,
    },
    /// The contents do not parse.
    #[error("{what} {path}: {reason}")]
    Content {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file to create exists already.
    #[error("{path} exists already; refusing to overwrite a key (remove it first if you mean to replace it)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Key generation failed.
    #[error("cannot generate a key pair: {0}")]
    Generate(String),
}

/// A node's public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// From a slice of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// A short form for logs: the first 12 base64 characters.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(12);
        s
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl FromStr for PublicKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut buf = [0u8; 48];
        let n = STANDARD
            .decode_slice(s.trim(), &mut buf)
            .map_err(|e| format!("{s:?} is not a base64 key: {e}"))?;
        if n != KEY_LEN {
            return Err(format!("key {s:?} is {n} bytes, not {KEY_LEN}"));
        }
        Ok(Self(buf[..KEY_LEN].try_into().unwrap_or([0; KEY_LEN])))
    }
}

/// This node's static key pair. The private half is zeroized on drop and
/// never printed.
#[derive(Clone)]
pub struct StaticKeypair {
    private: Zeroizing<[u8; KEY_LEN]>,
    public: PublicKey,
}

impl fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticKeypair")
            .field("public", &self.public)
            .field("private", &"<redacted>")
            .finish()
    }
}

impl StaticKeypair {
    /// A fresh key pair from the OS random source.
    ///
    /// # Errors
    ///
    /// [`KeyFileError::Generate`] if the Noise library fails (no randomness).
    pub fn generate() -> Result<Self, KeyFileError> {
        let params = NOISE_PARAMS
            .parse()
            .map_err(|e| KeyFileError::Generate(format!("{e:?}")))?;
        let kp = snow::Builder::new(params)
            .generate_keypair()
            .map_err(|e| KeyFileError::Generate(e.to_string()))?;
        let private = Zeroizing::new(kp.private);
        Self::from_private_slice(&private)
            .ok_or_else(|| KeyFileError::Generate("unexpected key length".into()))
    }

    /// From the 32 private bytes; the public key is computed.
    pub fn from_private(private: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let public = x25519_public(&private);
        Self { private, public }
    }

    fn from_private_slice(bytes: &[u8]) -> Option<Self> {
        let mut private = Zeroizing::new([0u8; KEY_LEN]);
        if bytes.len() != KEY_LEN {
            return None;
        }
        private.copy_from_slice(bytes);
        Some(Self::from_private(private))
    }

    /// The public key.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The private key bytes (for the Noise library).
    pub fn private_bytes(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    /// Reads a private key file (see the module docs for the checks).
    ///
    /// # Errors
    ///
    /// [`KeyFileError`] naming the file and the problem.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        const WHAT: &str = "private key file";
        let text = read_checked(path, WHAT, Access::Secret, MAX_KEY_FILE_LEN)?;
        let content = |reason: &str| KeyFileError::Content {
            what: WHAT,
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let text = std::str::from_utf8(&text).map_err(|_| content("not UTF-8 text"))?;
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = lines
            .next()
            .ok_or_else(|| content("no key in it; create one with `shmbus-bridge keygen`"))?;
        if lines.next().is_some() {
            return Err(content("more than one key line"));
        }
        let mut buf = Zeroizing::new([0u8; 48]);
        let n = STANDARD.decode_slice(line, &mut buf[..]).map_err(|_| {
            content("the key is not base64; create one with `shmbus-bridge keygen`")
        })?;
        if n != KEY_LEN {
            return Err(content("the key is not 32 bytes long"));
        }
        Self::from_private_slice(&buf[..KEY_LEN]).ok_or_else(|| content("bad key length"))
    }

    /// Writes this key pair: `path` (private, mode 0600, created with
    /// `O_EXCL | O_NOFOLLOW`) and `path.pub` (`<public key> <name>`).
    /// Returns the public file's path.
    ///
    /// # Errors
    ///
    /// [`KeyFileError::Exists`] if either file exists, or the write error.
    pub fn write_new(&self, path: &Path, name: &str) -> Result<PathBuf, KeyFileError> {
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        let pub_path = PathBuf::from(pub_path);
        let write = |p: &Path, mode: u32, bytes: &[u8]| -> Result<(), KeyFileError> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(p)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => KeyFileError::Exists { path: p.to_owned() },
                    _ => KeyFileError::Read {
                        what: "new key file",
                        path: p.to_owned(),
                        source: e,
                    },
                })?;
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .map_err(|e| KeyFileError::Read {
                    what: "new key file",
                    path: p.to_owned(),
                    source: e,
                })
        };
        if pub_path.symlink_metadata().is_ok() {
            return Err(KeyFileError::Exists { path: pub_path });
        }
        let mut text = Zeroizing::new(String::with_capacity(128));
        text.push_str("# shmbus-bridge private key: keep it secret (mode 0600)\n");
        text.push_str(&Zeroizing::new(STANDARD.encode(&self.private[..])));
        text.push('\n');
        write(path, 0o600, text.as_bytes())?;
        write(
            &pub_path,
            0o644,
            format!("{} {name}\n", self.public).as_bytes(),
        )?;
        Ok(pub_path)
    }
}

/// X25519 public key of `private` (the scalar times the base point),
/// computed by the Noise library's own DH implementation so both agree.
fn x25519_public(private: &[u8; KEY_LEN]) -> PublicKey {
    use snow::resolvers::{CryptoResolver as _, DefaultResolver};
    let Some(mut dh) = DefaultResolver.resolve_dh(&snow::params::DHChoice::Curve25519) else {
        // The default resolver always has Curve25519 (feature use-curve25519).
        return PublicKey([0; KEY_LEN]);
    };
    dh.set(private);
    PublicKey::from_slice(dh.pubkey()).unwrap_or(PublicKey([0; KEY_LEN]))
}

/// One allowlist line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowEntry {
    /// The peer's public key.
    pub key: PublicKey,
    /// The node name that key may use.
    pub name: String,
}

/// The peers this node accepts: public key and the name each may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<AllowEntry>,
}

impl Allowlist {
    /// Parses allowlist text (see the module docs). `check_name` validates
    /// each name against the node-name rules.
    ///
    /// # Errors
    ///
    /// A message naming the line.
    pub fn parse(
        text: &str,
        check_name: impl Fn(&str) -> Result<(), String>,
    ) -> Result<Self, String> {
        let mut entries: Vec<AllowEntry> = Vec::new();
        let mut keys = HashSet::new();
        let mut names = HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let mut parts = line.split_whitespace();
            let (Some(key), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!(
                    "line {n}: expected `<base64 public key> <node name>`"
                ));
            };
            let key: PublicKey = key.parse().map_err(|e| format!("line {n}: {e}"))?;
            check_name(name).map_err(|e| format!("line {n}: {e}"))?;
            if !keys.insert(key) {
                return Err(format!("line {n}: key {} is listed twice", key.short()));
            }
            if !names.insert(name.to_owned()) {
                return Err(format!("line {n}: node name {name:?} is listed twice"));
            }
            entries.push(AllowEntry {
                key,
                name: name.to_owned(),
            });
        }
        Ok(Self { entries })
    }

    /// Reads and parses an allowlist file (see the module docs for the checks).
    ///
    /// # Errors
    ///
    /// [`KeyFileError`] naming the file and the problem.
    pub fn load(
        path: &Path,
        check_name: impl Fn(&str) -> Result<(), String>,
    ) -> Result<Self, KeyFileError> {
        const WHAT: &str = "allowlist";
        let bytes = read_checked(path, WHAT, Access::Integrity, MAX_ALLOWLIST_LEN)?;
        let content = |reason: String| KeyFileError::Content {
            what: WHAT,
            path: path.to_owned(),
            reason,
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| content("not UTF-8 text".into()))?;
        Self::parse(text, check_name).map_err(content)
    }

    /// The name `key` may use, if it is listed.
    pub fn name_of(&self, key: &PublicKey) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.key == *key)
            .map(|e| e.name.as_str())
    }

    /// The key listed for `name`.
    pub fn key_of(&self, name: &str) -> Option<PublicKey> {
        self.entries.iter().find(|e| e.name == name).map(|e| e.key)
    }

    /// Whether (`name`, `key`) is an entry.
    pub fn allows(&self, name: &str, key: &PublicKey) -> bool {
        self.entries.iter().any(|e| e.name == name && e.key == *key)
    }

    /// The entries.
    pub fn entries(&self) -> &[AllowEntry] {
        &self.entries
    }
}

#[derive(Clone, Copy)]
enum Access {
    /// Private key: owner only, no group/other access at all.
    Secret,
    /// Allowlist: owner or root, nobody else may write.
    Integrity,
}

/// Opens `path` once (`O_NOFOLLOW`), checks the open descriptor with
/// `fstat`, and reads at most `max` bytes from it into a zeroized buffer.
fn read_checked(
    path: &Path,
    what: &'static str,
    access: Access,
    max: usize,
) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                KeyFileError::Symlink {
                    what,
                    path: path.to_owned(),
                }
            } else {
                KeyFileError::Read {
                    what,
                    path: path.to_owned(),
                    source: e,
                }
            }
        })?;
    check_fd(&file, path, what, access)?;
    let mut buf = Zeroizing::new(Vec::with_capacity(max + 1));
    (&file)
        .take(max as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| KeyFileError::Read {
            what,
            path: path.to_owned(),
            source: e,
        })?;
    if buf.len() > max {
        return Err(KeyFileError::Content {
            what,
            path: path.to_owned(),
            reason: format!("larger than {max} bytes; is this the right file?"),
        });
    }
    Ok(buf)
}

fn check_fd(
    file: &File,
    path: &Path,
    what: &'static str,
    access: Access,
) -> Result<(), KeyFileError> {
    // `File::metadata` is fstat(2) on this descriptor: what is checked is
    // what is read.
    let meta = file.metadata().map_err(|e| KeyFileError::Read {
        what,
        path: path.to_owned(),
        source: e,
    })?;
    if !meta.file_type().is_file() {
        return Err(KeyFileError::NotRegular {
            what,
            path: path.to_owned(),
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let owner = meta.uid();
    let owner_ok = match access {
        Access::Secret => owner == euid,
        Access::Integrity => owner == euid || owner == 0,
    };
    if !owner_ok {
        return Err(KeyFileError::Owner {
            what,
            path: path.to_owned(),
            owner,
            euid,
        });
    }
    let mode = meta.mode() & 0o7777;
    let (mask, forbidden, fix) = match access {
        Access::Secret => (0o077, "readable or writable", "600"),
        Access::Integrity => (0o022, "writable", "644"),
    };
    if mode & mask != 0 {
        return Err(KeyFileError::Mode {
            what,
            path: path.to_owned(),
            mode,
            forbidden,
            fix,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
