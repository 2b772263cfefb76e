//! Server-name matching (pure): which passthrough upstream or which site, if any, a
//! ClientHello's server name (or a request's Host) selects.
//!
//! A pattern is an exact DNS name or one leading `*.` label (`*.example.com` matches
//! `a.example.com`, not `example.com` nor `a.b.example.com`). Matching is case-insensitive and
//! ignores one trailing dot; an exact name beats a wildcard.

use std::net::SocketAddr;

/// Names mapped to values (an upstream, a site), as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniMap<T> {
    exact: Vec<(String, T)>,
    wildcard: Vec<(String, T)>,
}

impl<T> Default for SniMap<T> {
    fn default() -> Self {
        SniMap {
            exact: Vec::new(),
            wildcard: Vec::new(),
        }
    }
}

/// Passthrough names and their upstreams.
pub type SniRoutes = SniMap<SocketAddr>;

/// Why a server-name pattern is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("{0:?} is not a DNS name or a \"*.\" wildcard of one")]
    Invalid(String),
    #[error("{0:?} is claimed twice")]
    Duplicate(String),
}

impl<T: Clone> SniMap<T> {
    /// Adds `upstream` for every pattern, validating each.
    pub fn add(&mut self, patterns: &[String], upstream: T) -> Result<(), PatternError> {
        for raw in patterns {
            let name = normalize(raw);
            let (list, base) = match name.strip_prefix("*.") {
                Some(base) => (&mut self.wildcard, base.to_owned()),
                None => (&mut self.exact, name.clone()),
            };
            if !is_dns_name(&base) {
                return Err(PatternError::Invalid(raw.clone()));
            }
            if list.iter().any(|(n, _)| *n == base) {
                return Err(PatternError::Duplicate(raw.clone()));
            }
            list.push((base, upstream.clone()));
        }
        Ok(())
    }
}

impl<T> SniMap<T> {
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// The value for a server name, if a pattern claims it (exact before wildcard). Allocates
    /// nothing: it runs for every request on a listener with sites (the Host check).
    pub fn route(&self, server_name: &str) -> Option<&T> {
        let name = server_name.trim();
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some((_, up)) = self
            .exact
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            return Some(up);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard
            .iter()
            .find(|(base, _)| base.eq_ignore_ascii_case(parent))
            .map(|(_, up)| up)
    }

    /// The value a pattern (as configured, `*.` included) was added with.
    pub fn owner(&self, pattern: &str) -> Option<&T> {
        let name = normalize(pattern);
        let (list, base) = match name.strip_prefix("*.") {
            Some(base) => (&self.wildcard, base),
            None => (&self.exact, name.as_str()),
        };
        list.iter().find(|(n, _)| n == base).map(|(_, v)| v)
    }
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// LDH labels of 1..=63 characters, at least two labels, at most 253 characters.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn routes() -> SniRoutes {
        let mut r = SniRoutes::default();
        r.add(&["legacy.example.com".into()], addr(1)).unwrap();
        r.add(
            &[
                "*.internal.example.com".into(),
                "a.internal.example.com".into(),
            ],
            addr(2),
        )
        .unwrap();
        r.add(&["exact.internal.example.com".into()], addr(3))
            .unwrap();
        r
    }

    #[test]
    fn exact_names_match_case_insensitively_and_beat_wildcards() {
        let r = routes();
        assert_eq!(r.route("legacy.example.com"), Some(&addr(1)));
        assert_eq!(r.route("LEGACY.Example.COM."), Some(&addr(1)));
        assert_eq!(r.route("exact.internal.example.com"), Some(&addr(3)));
        assert_eq!(r.route("other.internal.example.com"), Some(&addr(2)));
        assert_eq!(r.owner("*.INTERNAL.example.com"), Some(&addr(2)));
        assert_eq!(r.owner("internal.example.com"), None);
    }

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        let r = routes();
        assert_eq!(r.route("internal.example.com"), None);
        assert_eq!(r.route("a.b.internal.example.com"), None);
        assert_eq!(r.route("example.com"), None);
        assert_eq!(r.route("localhost"), None);
        assert_eq!(r.route(""), None);
    }

    #[test]
    fn bad_and_duplicate_patterns_are_refused() {
        let mut r = SniRoutes::default();
        for bad in ["*", "*.com.", "a..b", "-a.b", "a b.c", "*.*.b.c", "x.*.c"] {
            let bad = bad.to_owned();
            assert!(r.add(std::slice::from_ref(&bad), addr(1)).is_err(), "{bad}");
        }
        r.add(&["a.b".into()], addr(1)).unwrap();
        assert_eq!(
            r.add(&["A.B".into()], addr(2)),
            Err(PatternError::Duplicate("A.B".into()))
        );
    }
}
