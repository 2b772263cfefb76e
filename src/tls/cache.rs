//! Per-worker cache of client chains already verified, with their prebuilt header bytes.
//!
//! A returning client (new connection, same certificate) then costs neither path building and
//! the chain's signature checks nor any header encoding. The client's CertificateVerify (proof
//! of possession) is checked by rustls on every full handshake regardless: this cache is
//! consulted only for the chain itself.
//!
//! Each worker thread has its own LRU (`thread_local!`): a connection's handshake runs on the
//! worker that owns it, so no lock or atomic is ever touched. Keys cover every presented
//! certificate plus the generation of the trust configuration that verified them, so two
//! listeners with different trust stores never share an entry.

use std::cell::{Cell, RefCell};
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lru::LruCache;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::identity::Forwarding;

/// Settings shared by one listener's verifier and its sessions.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Identifies the trust configuration (listener + its client_ca) that verified an entry.
    pub generation: u64,
    pub capacity: usize,
    pub ttl: Duration,
    /// Which identity headers an entry's bytes hold (part of the key: a reload that changes
    /// the formats but not the trust keeps the generation, never the bytes).
    forwarding: Arc<Forwarding>,
    forwarding_id: u64,
}

impl CacheConfig {
    /// A fresh generation number: entries verified under any other config never match.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            generation: NEXT.fetch_add(1, Ordering::Relaxed),
            capacity,
            ttl,
            forwarding: Arc::new(Forwarding::default()),
            forwarding_id: Forwarding::default().id(),
        }
    }

    /// The same cache and trust generation, building the headers `forwarding` asks for.
    pub fn with_forwarding(mut self, forwarding: Forwarding) -> Self {
        self.forwarding_id = forwarding.id();
        self.forwarding = Arc::new(forwarding);
        self
    }
}

type Key = [u8; 32];

struct Entry {
    /// Seconds since the epoch after which the entry is void: the earliest notAfter of the
    /// chain, or insertion time + TTL, whichever comes first.
    expires: u64,
    /// Whether this chain passed path building (an entry made only for its header bytes,
    /// e.g. on a resumed session, must not stand in for verification).
    verified: bool,
    header: Rc<[u8]>,
}

thread_local! {
    static LRU: RefCell<Option<LruCache<Key, Entry>>> = const { RefCell::new(None) };
    static HITS: Cell<u64> = const { Cell::new(0) };
    static MISSES: Cell<u64> = const { Cell::new(0) };
}

/// Hit and miss counts of this worker's cache since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
}

pub fn stats() -> Stats {
    Stats {
        hits: HITS.with(Cell::get),
        misses: MISSES.with(Cell::get),
    }
}

fn count(counter: &'static std::thread::LocalKey<Cell<u64>>) {
    counter.with(|c| c.set(c.get() + 1));
}

/// SHA-256 over the generation and every certificate, each length-prefixed so that no two
/// different chains can produce the same input.
pub fn key(config: &CacheConfig, chain: &[&[u8]]) -> Key {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&config.generation.to_be_bytes());
    ctx.update(&config.forwarding_id.to_be_bytes());
    for der in chain {
        ctx.update(&(der.len() as u64).to_be_bytes());
        ctx.update(der);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The earliest notAfter of the chain, in seconds since the epoch (None if unparsable).
fn earliest_not_after(chain: &[CertificateDer<'_>]) -> Option<u64> {
    chain
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der)
                .ok()
                .map(|(_, c)| c.validity().not_after.timestamp().max(0) as u64)
        })
        .try_fold(u64::MAX, |acc, t| t.map(|t| acc.min(t)))
}

/// Runs `f` on this worker's LRU; `None` when the cache is disabled (capacity 0).
fn with_lru<R>(config: &CacheConfig, f: impl FnOnce(&mut LruCache<Key, Entry>) -> R) -> Option<R> {
    let capacity = NonZeroUsize::new(config.capacity)?;
    LRU.with(|cell| {
        let mut slot = cell.borrow_mut();
        let lru = slot.get_or_insert_with(|| LruCache::new(capacity));
        if lru.cap() < capacity {
            lru.resize(capacity);
        }
        Some(f(lru))
    })
}

/// True if this chain was verified under `config` and has not expired. Counts a hit or a miss.
pub fn is_verified(config: &CacheConfig, key: &Key, now: UnixTime) -> bool {
    let fresh = with_lru(config, |lru| match lru.get(key) {
        Some(e) if e.verified && e.expires > now.as_secs() => true,
        Some(_) => {
            lru.pop(key);
            false
        }
        None => false,
    })
    .unwrap_or(false);
    count(if fresh { &HITS } else { &MISSES });
    fresh
}

/// Records a chain that just passed verification, with its header bytes built once.
pub fn insert_verified(
    config: &CacheConfig,
    key: Key,
    chain: &[CertificateDer<'_>],
    now: UnixTime,
) {
    remember(config, key, chain, now.as_secs(), true);
}

/// The identity header lines for a connection's chain (see `identity`): from the cache when
/// this worker verified the chain before, else built now (and kept, unverified, for the next
/// connection). `None` when nothing is forwarded.
pub fn header_for(config: &CacheConfig, chain: &[CertificateDer<'_>]) -> Option<Rc<[u8]>> {
    if chain.is_empty() {
        return None;
    }
    let ders: Vec<&[u8]> = chain.iter().map(|c| c.as_ref()).collect();
    let key = key(config, &ders);
    let now = UnixTime::now().as_secs();
    let cached = with_lru(config, |lru| match lru.get(&key) {
        Some(e) if e.expires > now => Some(e.header.clone()),
        _ => None,
    })
    .flatten();
    cached.or_else(|| remember(config, key, chain, now, false))
}

/// Builds the chain's header bytes and keeps them until the earliest notAfter of the chain or
/// the TTL, whichever comes first. Returns the bytes even when the cache is disabled.
fn remember(
    config: &CacheConfig,
    key: Key,
    chain: &[CertificateDer<'_>],
    now: u64,
    verified: bool,
) -> Option<Rc<[u8]>> {
    let header: Rc<[u8]> = config.forwarding.header_block(chain)?.into();
    let ttl_end = now.saturating_add(config.ttl.as_secs());
    let expires = earliest_not_after(chain).map_or(ttl_end, |t| t.min(ttl_end));
    with_lru(config, |lru| {
        lru.put(
            key,
            Entry {
                expires,
                verified,
                header: header.clone(),
            },
        );
    });
    Some(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;

    fn chain() -> Vec<CertificateDer<'static>> {
        let root = Ca::root("cache root").unwrap();
        let int = root.intermediate("cache int").unwrap();
        let leaf = int.client_cert("cache client").unwrap();
        vec![leaf.cert_der.clone(), int.issued().cert_der.clone()]
    }

    fn ders<'a>(chain: &'a [CertificateDer<'_>]) -> Vec<&'a [u8]> {
        chain.iter().map(|c| c.as_ref()).collect()
    }

    #[test]
    fn verified_chain_hits_until_its_ttl() {
        let config = CacheConfig::new(16, Duration::from_secs(60));
        let chain = chain();
        let key = key(&config, &ders(&chain));
        let t0 = UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000));
        let before = stats();
        assert!(!is_verified(&config, &key, t0));
        insert_verified(&config, key, &chain, t0);
        assert!(is_verified(&config, &key, t0));
        let later = UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_061));
        assert!(!is_verified(&config, &key, later), "expired by TTL");
        let after = stats();
        assert_eq!(after.hits - before.hits, 1);
        assert_eq!(after.misses - before.misses, 2);
    }

    #[test]
    fn entry_expires_at_the_earliest_not_after_of_the_chain() {
        // The test PKI is valid until 2099: a TTL of 200 years must be capped by notAfter.
        let config = CacheConfig::new(16, Duration::from_secs(200 * 365 * 86_400));
        let chain = chain();
        let key = key(&config, &ders(&chain));
        let t0 = UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000));
        insert_verified(&config, key, &chain, t0);
        let y2100 = UnixTime::since_unix_epoch(Duration::from_secs(4_102_444_800));
        assert!(!is_verified(&config, &key, y2100));
    }

    #[test]
    fn another_trust_generation_never_matches() {
        let a = CacheConfig::new(16, Duration::from_secs(60));
        let b = CacheConfig::new(16, Duration::from_secs(60));
        let chain = chain();
        assert_ne!(key(&a, &ders(&chain)), key(&b, &ders(&chain)));
        // Different chains with the same concatenation are told apart by the length prefixes.
        assert_ne!(key(&a, &[b"ab", b"c"]), key(&a, &[b"a", b"bc"]));
    }

    #[test]
    fn header_only_entries_do_not_count_as_verified() {
        let config = CacheConfig::new(16, Duration::from_secs(60));
        let chain = chain();
        let header = header_for(&config, &chain).unwrap();
        assert_eq!(&*header, &crate::xfcc::header_line(&chain).unwrap()[..]);
        let key = key(&config, &ders(&chain));
        assert!(!is_verified(&config, &key, UnixTime::now()));
    }

    #[test]
    fn verified_entry_serves_the_prebuilt_header() {
        let config = CacheConfig::new(16, Duration::from_secs(60));
        let chain = chain();
        let key = key(&config, &ders(&chain));
        insert_verified(&config, key, &chain, UnixTime::now());
        let a = header_for(&config, &chain).unwrap();
        let b = header_for(&config, &chain).unwrap();
        assert!(Rc::ptr_eq(&a, &b), "the same bytes are reused, not rebuilt");
    }

    #[test]
    fn zero_capacity_disables_the_cache() {
        let config = CacheConfig::new(0, Duration::from_secs(60));
        let chain = chain();
        let key = key(&config, &ders(&chain));
        insert_verified(&config, key, &chain, UnixTime::now());
        assert!(!is_verified(&config, &key, UnixTime::now()));
        assert!(header_for(&config, &chain).is_some());
    }
}
