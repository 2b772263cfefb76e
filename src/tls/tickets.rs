//! Shared session-ticket keys: `[server] ticket_keys`, so that every replica (and every worker
//! of each) issues and accepts the same tickets and a client resumes on whichever it reaches.
//!
//! # The key file
//!
//! Text, one key per line, newest first. A key is 80 random bytes written as 160 hexadecimal
//! digits (either case; surrounding whitespace and blank lines are ignored, nothing else is):
//!
//! ```text
//! bytes  0..16   key name: sent in clear at the start of every ticket, picks the key
//! bytes 16..80   secret: input keying material for HKDF (never used directly)
//! ```
//!
//! The first key encrypts new tickets; every key decrypts. `certgate tickets new` writes a
//! file with one key, `certgate tickets rotate` puts a fresh key first and keeps the newest
//! previous ones after it. The file must not be accessible by group or others (`mode & 0o077`
//! is zero), must hold at least one key, and no two keys may share a name; otherwise loading it
//! (`certgate check`, startup, reload) fails with an error that names the file.
//!
//! # Tickets
//!
//! Each listener derives its own AES-256-GCM key from each file key, once, when the config
//! is loaded:
//!
//! ```text
//! prk = HKDF-Extract(salt = "certgate session-ticket keys v1", ikm = secret)
//! key = HKDF-Expand(prk, info = "certgate ticket aes-256-gcm" || u32be(len(listener name))
//!                   || listener name || trust fingerprint, 32 bytes)
//! ticket = key name (16) || nonce (12, random) || AES-256-GCM(key, nonce, aad = key name,
//!          rustls' session state) with its 16-byte tag
//! ```
//!
//! The trust fingerprint (`app::trust_fingerprint`) covers the listener's client-certificate
//! mode, the bytes of its client CA, the chain limit and whether it resumes. So a ticket issued
//! by one listener never decrypts on another, and a change of trust makes every older ticket
//! worthless, exactly as the random per-listener key does without `ticket_keys`. Replicas that
//! share the file and the listener's name and trust settings derive the same keys.
//!
//! Decryption picks the key by name, comparing names without data-dependent branches (names
//! are public, they travel in every ticket, but the comparison leaks nothing either way), and
//! answers `None` for anything short, unknown or tampered with; it never panics.
//!
//! Random 96-bit nonces keep AES-GCM safe for about 2^32 tickets per key and listener (NIST SP
//! 800-38D); rotating every few hours stays far below that at any realistic handshake rate.
//! Tickets carry no expiry of their own (rustls relies on key erasure), so a ticket resumes as
//! long as its key is in the file: between `(keep - 1)` and `keep` rotation intervals.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom as _, SystemRandom};
use rustls::server::ProducesTickets;

/// Length of a key name, in the file and at the start of every ticket.
pub const NAME_LEN: usize = 16;
/// Length of the secret that follows the name in the file.
pub const SECRET_LEN: usize = 64;
/// One key in the file: name and secret.
pub const KEY_LEN: usize = NAME_LEN + SECRET_LEN;
/// What `tickets rotate` keeps when not told otherwise.
pub const DEFAULT_KEEP: usize = 3;
/// The lifetime hint sent with every ticket: 12 hours. Clients drop tickets older than this.
pub const LIFETIME_SECS: u32 = 12 * 60 * 60;
/// A key file larger than this is not a key file.
const MAX_FILE_BYTES: u64 = 64 * 1024;
const TAG_LEN: usize = 16;
const HKDF_SALT: &[u8] = b"certgate session-ticket keys v1";
const HKDF_LABEL: &[u8] = b"certgate ticket aes-256-gcm";

/// A key file that cannot be read, written or used; `what` says why.
#[derive(Debug, thiserror::Error)]
#[error("{}: session-ticket key file: {what}", path.display())]
pub struct TicketKeyError {
    pub path: PathBuf,
    pub what: String,
}

/// A key's public name, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyName([u8; NAME_LEN]);

impl KeyName {
    pub fn as_bytes(&self) -> &[u8; NAME_LEN] {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One key of the file. Its secret never leaves this module.
#[derive(Clone)]
struct FileKey {
    name: KeyName,
    secret: [u8; SECRET_LEN],
}

impl FileKey {
    fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&bytes[..NAME_LEN]);
        let mut secret = [0u8; SECRET_LEN];
        secret.copy_from_slice(&bytes[NAME_LEN..]);
        FileKey {
            name: KeyName(name),
            secret,
        }
    }

    fn generate() -> Result<Self, String> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| "the system's random number generator failed".to_owned())?;
        Ok(FileKey::from_bytes(&bytes))
    }

    fn line(&self) -> String {
        let mut line = hex(&self.name.0);
        line.push_str(&hex(&self.secret));
        line
    }
}

/// The keys of a key file, newest (the one that encrypts) first.
#[derive(Clone)]
pub struct TicketKeys {
    path: PathBuf,
    keys: Vec<FileKey>,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys")
            .field("path", &self.path)
            .field("names", &self.names())
            .finish_non_exhaustive()
    }
}

impl TicketKeys {
    /// Reads and checks the key file: owner-only mode, at least one well-formed key, no name
    /// twice. Every error names the file.
    pub fn load(path: &Path) -> Result<TicketKeys, TicketKeyError> {
        let fail = |what: String| TicketKeyError {
            path: path.to_owned(),
            what,
        };
        let file = File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
        // The mode of what was opened, not of whatever the path names a moment later.
        let meta = file
            .metadata()
            .map_err(|e| fail(format!("cannot stat: {e}")))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".into()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(fail(format!(
                "mode {mode:04o} gives group or others access to the keys; make it readable \
                 by its owner only (chmod 600)"
            )));
        }
        let mut text = String::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| fail(format!("cannot read: {e}")))?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(fail(format!(
                "larger than {MAX_FILE_BYTES} bytes: not a key file"
            )));
        }
        let keys = parse(&text).map_err(fail)?;
        Ok(TicketKeys {
            path: path.to_owned(),
            keys,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name of the key that encrypts (the file's first).
    pub fn encrypting(&self) -> KeyName {
        self.keys[0].name
    }

    /// The key names, newest first.
    pub fn names(&self) -> Vec<KeyName> {
        self.keys.iter().map(|k| k.name).collect()
    }

    /// The ticketer of one listener: its own AES-256-GCM keys, derived from every file key,
    /// the listener's name and its trust fingerprint. Deterministic, so every worker and every
    /// replica given the same file, name and trust derives the same keys.
    pub fn ticketer(&self, listener: &str, trust: &[u8; 32]) -> Arc<dyn ProducesTickets> {
        Arc::new(SharedTicketer::derive(&self.keys, listener, trust))
    }
}

/// Parses the file's text: one key of [`KEY_LEN`] bytes as hex per line, blank lines ignored.
fn parse(text: &str) -> Result<Vec<FileKey>, String> {
    let mut keys: Vec<FileKey> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let number = index + 1;
        if line.len() != 2 * KEY_LEN {
            return Err(format!(
                "line {number}: expected {} hex digits (a {KEY_LEN}-byte key), found {} \
                 characters",
                2 * KEY_LEN,
                line.chars().count()
            ));
        }
        let mut bytes = [0u8; KEY_LEN];
        unhex(line, &mut bytes)
            .ok_or_else(|| format!("line {number}: not hexadecimal (expected 0-9, a-f)"))?;
        let key = FileKey::from_bytes(&bytes);
        if keys.iter().any(|k| k.name == key.name) {
            return Err(format!(
                "line {number}: key name {} is already used by an earlier line",
                key.name
            ));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("contains no key (create one with `certgate tickets new --file FILE`)".into());
    }
    Ok(keys)
}

/// Writes a new key file with one fresh key, readable by its owner only. Refuses to touch an
/// existing file (or a symlink, even a dangling one). Returns the new key's name.
pub fn create(path: &Path) -> Result<KeyName, TicketKeyError> {
    let fail = |what: String| TicketKeyError {
        path: path.to_owned(),
        what,
    };
    let key = FileKey::generate().map_err(fail)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => fail(format!(
                "already exists; not overwritten (`certgate tickets rotate --file {}` adds a \
                 key to it)",
                path.display()
            )),
            _ => fail(format!("cannot create: {e}")),
        })?;
    let written = write_keys(&mut file, std::slice::from_ref(&key));
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(fail(format!("cannot write: {e}")));
    }
    Ok(key.name)
}

/// What [`rotate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The key that now encrypts.
    pub new: KeyName,
    /// Previous keys kept for decryption, newest first.
    pub kept: Vec<KeyName>,
    /// How many of the oldest keys were dropped.
    pub dropped: usize,
}

/// Puts a fresh key first and keeps the newest previous keys after it, `keep` keys in all
/// (at least 2). The file is replaced atomically: a temporary file in the same folder, mode
/// 0600 and the old file's owner, written and synced, then renamed over the old one. A
/// symlink is followed: the file it points to is replaced.
pub fn rotate(path: &Path, keep: usize) -> Result<Rotated, TicketKeyError> {
    let fail = |what: String| TicketKeyError {
        path: path.to_owned(),
        what,
    };
    if keep < 2 {
        return Err(fail(format!(
            "--keep {keep} would drop the key that current tickets use; keep at least 2"
        )));
    }
    let current = TicketKeys::load(path)?;
    let target = std::fs::canonicalize(path).map_err(|e| fail(format!("cannot resolve: {e}")))?;
    let owner = std::fs::metadata(&target).map_err(|e| fail(format!("cannot stat: {e}")))?;
    let new = FileKey::generate().map_err(fail)?;
    let mut keys = vec![new.clone()];
    keys.extend(current.keys.iter().take(keep - 1).cloned());
    let dropped = current.keys.len().saturating_sub(keep - 1);
    replace_atomically(&target, &keys, (owner.uid(), owner.gid())).map_err(fail)?;
    Ok(Rotated {
        new: new.name,
        kept: keys[1..].iter().map(|k| k.name).collect(),
        dropped,
    })
}

fn replace_atomically(target: &Path, keys: &[FileKey], owner: (u32, u32)) -> Result<(), String> {
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = target
        .file_name()
        .ok_or_else(|| "has no file name".to_owned())?
        .to_string_lossy();
    let mut tag = [0u8; 8];
    SystemRandom::new()
        .fill(&mut tag)
        .map_err(|_| "the system's random number generator failed".to_owned())?;
    let temp = dir.join(format!(".{file_name}.{}.tmp", hex(&tag)));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
    let result = (|| {
        // Whoever runs the rotation (root, from a timer), the server must still read the file.
        let meta = file.metadata()?;
        if (meta.uid(), meta.gid()) != owner {
            std::os::unix::fs::fchown(&file, Some(owner.0), Some(owner.1))?;
        }
        write_keys(&mut file, keys)?;
        drop(file);
        std::fs::rename(&temp, target)?;
        // The rename itself is durable only once the folder is synced.
        File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        format!("cannot replace the file: {e}")
    })
}

/// Writes the keys one per line, sets mode 0600 exactly (whatever the umask), and syncs.
fn write_keys(file: &mut File, keys: &[FileKey]) -> std::io::Result<()> {
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    let mut text = String::with_capacity(keys.len() * (2 * KEY_LEN + 1));
    for key in keys {
        text.push_str(&key.line());
        text.push('\n');
    }
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// One listener's ticket keys, derived from the file once at load. The first encrypts.
pub struct SharedTicketer {
    keys: Vec<ListenerKey>,
}

struct ListenerKey {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
}

impl SharedTicketer {
    fn derive(file_keys: &[FileKey], listener: &str, trust: &[u8; 32]) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT);
        let name_len = u32::try_from(listener.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes();
        let info: [&[u8]; 4] = [HKDF_LABEL, &name_len, listener.as_bytes(), trust];
        let keys = file_keys
            .iter()
            .map(|k| {
                let prk = salt.extract(&k.secret);
                let okm = prk
                    .expand(&info, &AES_256_GCM)
                    .expect("32 bytes is within HKDF-SHA256's output limit");
                ListenerKey {
                    name: k.name.0,
                    aead: LessSafeKey::new(UnboundKey::from(okm)),
                }
            })
            .collect();
        SharedTicketer { keys }
    }

    /// The key whose name starts the ticket. Every name is compared in full, without an early
    /// exit, so the time taken does not depend on where or whether the names differ.
    fn key_named(&self, name: &[u8]) -> Option<&ListenerKey> {
        let mut found = None;
        for key in &self.keys {
            let mut diff = 0u8;
            for (a, b) in key.name.iter().zip(name) {
                diff |= a ^ b;
            }
            if std::hint::black_box(diff) == 0 {
                found = found.or(Some(key));
            }
        }
        found
    }
}

impl fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.keys.iter().map(|k| hex(&k.name)).collect();
        f.debug_struct("SharedTicketer")
            .field("names", &names)
            .finish_non_exhaustive()
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(&key.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let mut sealed = ticket.split_off(NAME_LEN + NONCE_LEN);
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut sealed,
            )
            .ok()?;
        ticket.append(&mut sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let key = self.key_named(name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain_len = key
            .aead
            .open_in_place(nonce, Aad::from(name), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Decodes exactly `2 * out.len()` hex digits into `out`; `None` on anything else.
fn unhex(text: &str, out: &mut [u8]) -> Option<()> {
    let digits = text.as_bytes();
    if digits.len() != 2 * out.len() {
        return None;
    }
    let value = |d: u8| char::from(d).to_digit(16).map(|v| v as u8);
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (value(pair[0])? << 4) | value(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
#[path = "tickets_tests.rs"]
mod tests;
