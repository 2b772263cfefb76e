//! Per-path routes (`[[listener.route]]`): which route a request falls under, and whether its
//! client certificate lets it through.
//!
//! # Matching
//!
//! The longest `path_prefix` that is a plain byte prefix of the *normalized* path wins
//! ([`crate::http::path::normalize`]; matching a raw target would let `/public/../admin/`
//! past an `/admin/` rule). Matching is case-sensitive and sees the path only, never the
//! query. Plain prefix means:
//!
//! * `/admin/` matches `/admin/` and `/admin/x`, but neither `/admin` nor `/administrator`
//!   (as nginx's `location /admin/`). Protect a directory with the trailing slash.
//! * `/admin` matches `/admin`, `/admin/x` and also `/administrator`, `/admin.php`.
//! * `/` matches every origin-form path; no prefix matches the asterisk-form `*`.
//!
//! Prefixes must themselves be in normal form, start with `/` and carry no query, which
//! [`check_prefix`] verifies for config validation: a prefix like `/%61dmin/` or
//! `/admin/./` could never match a normalized path. With such prefixes, matching the whole
//! normalized target gives the same route as matching its path: a prefix cannot reach past
//! the `?`.
//!
//! Path parameters are not special: `/admin;jsessionid=1/x` does not match `/admin/`. Java
//! servlet containers drop `;...` from each segment before routing, so in front of one a
//! `required` route is only a boundary if such paths are refused elsewhere.
//!
//! # Deciding
//!
//! [`decide`] applies a route's certificate rules. The route's `allow` only judges a
//! certificate that was presented (as the listener's allowlist does); `required` is what
//! turns "no certificate" into a refusal.

use super::allow::AllowList;
use crate::http::path::{normalize, PathError};

/// One `[[listener.route]]`. `target` is whatever the caller attaches (an upstream index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<T> {
    pub path_prefix: String,
    /// `client_certificate = "required"`; `false` is `"optional"`.
    pub required: bool,
    /// Narrower than the listener's allowlist; `None` admits every certificate that passed
    /// the handshake.
    pub allow: Option<AllowList>,
    pub target: T,
}

/// A listener's (or site's) routes, ordered once for longest-prefix matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes<T> {
    /// Longest prefix first, so the first match is the longest.
    routes: Vec<Route<T>>,
}

impl<T> Default for Routes<T> {
    fn default() -> Self {
        Routes { routes: Vec::new() }
    }
}

/// Why a `path_prefix` cannot be used. Config validation reports it with the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("path_prefix {prefix:?} must start with `/`")]
    NotAbsolute { prefix: String },
    #[error("path_prefix {prefix:?} must not contain `?` or `#`")]
    QueryOrFragment { prefix: String },
    #[error("path_prefix {prefix:?} is not a valid path: {reason}")]
    Invalid { prefix: String, reason: PathError },
    #[error("path_prefix {prefix:?} would never match a normalized path; write {normal:?}")]
    NotNormal { prefix: String, normal: String },
    #[error("path_prefix {prefix:?} is given twice")]
    Duplicate { prefix: String },
}

/// Checks that `prefix` can match: starts with `/`, has no query or fragment, and is its
/// own normal form.
pub fn check_prefix(prefix: &str) -> Result<(), RouteError> {
    let owned = || prefix.to_string();
    if !prefix.starts_with('/') {
        return Err(RouteError::NotAbsolute { prefix: owned() });
    }
    if prefix.contains(['?', '#']) {
        return Err(RouteError::QueryOrFragment { prefix: owned() });
    }
    let mut out = Vec::new();
    let n = normalize(prefix.as_bytes(), &mut out).map_err(|reason| RouteError::Invalid {
        prefix: owned(),
        reason,
    })?;
    if n.is_rewritten() {
        return Err(RouteError::NotNormal {
            prefix: owned(),
            normal: String::from_utf8_lossy(&out).into_owned(),
        });
    }
    Ok(())
}

impl<T> Routes<T> {
    /// Checks every prefix ([`check_prefix`], no duplicates) and orders the routes for
    /// matching.
    pub fn new(routes: impl IntoIterator<Item = Route<T>>) -> Result<Self, RouteError> {
        let mut routes: Vec<Route<T>> = routes.into_iter().collect();
        for r in &routes {
            check_prefix(&r.path_prefix)?;
        }
        // Longest first; equal lengths by bytes, so duplicates end up side by side.
        routes.sort_by(|a, b| {
            b.path_prefix
                .len()
                .cmp(&a.path_prefix.len())
                .then_with(|| a.path_prefix.cmp(&b.path_prefix))
        });
        if let Some(w) = routes
            .windows(2)
            .find(|w| w[0].path_prefix == w[1].path_prefix)
        {
            return Err(RouteError::Duplicate {
                prefix: w[0].path_prefix.clone(),
            });
        }
        Ok(Routes { routes })
    }

    /// The route with the longest prefix of `normalized_path` (the output of
    /// [`crate::http::path::Normalized::path`], never the raw target), if any. A linear
    /// scan: routes are few, and a miss costs one length compare per route.
    pub fn matching(&self, normalized_path: &[u8]) -> Option<&Route<T>> {
        self.routes
            .iter()
            .find(|r| normalized_path.starts_with(r.path_prefix.as_bytes()))
    }

    /// The same routes, in the same order, with each target replaced by `f(target)` (e.g. an
    /// upstream address by a worker's pool for it).
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> Routes<U> {
        Routes {
            routes: self
                .routes
                .into_iter()
                .map(|r| Route {
                    path_prefix: r.path_prefix,
                    required: r.required,
                    allow: r.allow,
                    target: f(r.target),
                })
                .collect(),
        }
    }

    /// [`Routes::matching`] with the route's position in [`Routes::iter`] order, for callers
    /// that keep a per-connection verdict per route.
    pub fn matching_at(&self, normalized_path: &[u8]) -> Option<(usize, &Route<T>)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| normalized_path.starts_with(r.path_prefix.as_bytes()))
    }

    /// The routes in matching order (longest prefix first).
    pub fn iter(&self) -> impl Iterator<Item = &Route<T>> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The 403 reason when a `required` route gets no certificate.
pub const CERT_REQUIRED: &str = "client certificate required for this path";
/// The 403 reason when the certificate fails the route's `allow`.
pub const CERT_NOT_ALLOWED: &str = "client certificate not allowed for this path";

/// What to do with a request that matched a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Forward,
    /// Answer `403 Forbidden` with this one-line reason; do not forward.
    Forbidden(&'static str),
}

/// Applies `route`'s certificate rules to the connection's client certificate (leaf DER,
/// `None` when the client sent none).
///
/// The leaf is the same for every request on a connection, and `AllowList::admits` parses
/// it when the list has names, so a caller on the request path may remember the decision
/// per route for the connection.
pub fn decide<T>(route: &Route<T>, client_cert_leaf: Option<&[u8]>) -> Decision {
    decide_known(route, client_cert_leaf.map(|leaf| admits(route, leaf)))
}

/// Whether `leaf` passes `route`'s `allow` (any certificate passes a route without one). The
/// same for every request of a connection: the exchange loop works it out once per route
/// and connection, since a name allowlist parses the certificate.
pub fn admits<T>(route: &Route<T>, leaf: &[u8]) -> bool {
    route.allow.as_ref().is_none_or(|allow| allow.admits(leaf))
}

/// [`decide`] with the certificate's verdict already known: `None` when the client sent no
/// certificate, else whether it passes the route's `allow` (see [`admits`]).
pub fn decide_known<T>(route: &Route<T>, certificate: Option<bool>) -> Decision {
    match certificate {
        None if route.required => Decision::Forbidden(CERT_REQUIRED),
        None | Some(true) => Decision::Forward,
        Some(false) => Decision::Forbidden(CERT_NOT_ALLOWED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn route(prefix: &str, target: u32) -> Route<u32> {
        Route {
            path_prefix: prefix.to_string(),
            required: false,
            allow: None,
            target,
        }
    }

    fn routes(prefixes: &[&str]) -> Routes<u32> {
        Routes::new(prefixes.iter().enumerate().map(|(i, p)| route(p, i as u32))).unwrap()
    }

    fn hit(rs: &Routes<u32>, path: &str) -> Option<String> {
        rs.matching(path.as_bytes()).map(|r| r.path_prefix.clone())
    }

    #[test]
    fn longest_prefix_wins_whatever_the_order() {
        let rs = routes(&["/", "/api/", "/api/v1/admin/", "/api/v1/"]);
        assert_eq!(
            hit(&rs, "/api/v1/admin/x").as_deref(),
            Some("/api/v1/admin/")
        );
        assert_eq!(hit(&rs, "/api/v1/users").as_deref(), Some("/api/v1/"));
        assert_eq!(hit(&rs, "/api/v2").as_deref(), Some("/api/"));
        assert_eq!(hit(&rs, "/other").as_deref(), Some("/"));
        assert_eq!(hit(&rs, "*"), None);
        let order: Vec<_> = rs.iter().map(|r| r.path_prefix.as_str()).collect();
        assert_eq!(order, ["/api/v1/admin/", "/api/v1/", "/api/", "/"]);
    }

    #[test]
    fn trailing_slash_prefixes_match_a_directory_only() {
        let rs = routes(&["/admin/"]);
        assert_eq!(hit(&rs, "/admin/").as_deref(), Some("/admin/"));
        assert_eq!(hit(&rs, "/admin/x").as_deref(), Some("/admin/"));
        assert_eq!(hit(&rs, "/admin"), None);
        assert_eq!(hit(&rs, "/administrator"), None);
        assert_eq!(hit(&rs, "/Admin/x"), None, "case-sensitive");

        let rs = routes(&["/admin"]);
        for p in ["/admin", "/admin/x", "/administrator", "/admin.php"] {
            assert_eq!(hit(&rs, p).as_deref(), Some("/admin"), "{p}");
        }
    }

    #[test]
    fn prefix_never_reaches_into_the_query() {
        let rs = routes(&["/admin/", "/a"]);
        assert_eq!(hit(&rs, "/b?x=/admin/"), None);
        assert_eq!(hit(&rs, "/a?x").as_deref(), Some("/a"));
    }

    #[test]
    fn matching_normalized_paths_closes_the_spelling_tricks() {
        let rs = routes(&["/", "/admin/"]);
        let mut out = Vec::new();
        for t in [
            &b"/admin/../admin/x"[..],
            b"/./admin/x",
            b"//admin/x",
            b"/%61dmin/x",
            b"/public/%2e%2e/admin/x",
        ] {
            let n = normalize(t, &mut out).unwrap();
            let r = rs.matching(n.path(t, &out)).unwrap();
            assert_eq!(r.path_prefix, "/admin/", "{:?}", String::from_utf8_lossy(t));
        }
    }

    #[test]
    fn prefixes_are_checked() {
        assert_eq!(check_prefix("/admin/"), Ok(()));
        assert_eq!(check_prefix("/"), Ok(()));
        assert!(matches!(
            check_prefix("admin/"),
            Err(RouteError::NotAbsolute { .. })
        ));
        assert!(matches!(
            check_prefix("/a?b"),
            Err(RouteError::QueryOrFragment { .. })
        ));
        assert!(matches!(
            check_prefix("/a#b"),
            Err(RouteError::QueryOrFragment { .. })
        ));
        assert!(matches!(
            check_prefix("/a%2fb"),
            Err(RouteError::Invalid {
                reason: PathError::EncodedSlash,
                ..
            })
        ));
        for (prefix, normal) in [
            ("/%61dmin/", "/admin/"),
            ("/admin/./", "/admin/"),
            ("//admin", "/admin"),
            ("/café/", "/caf%C3%A9/"),
        ] {
            assert_eq!(
                check_prefix(prefix),
                Err(RouteError::NotNormal {
                    prefix: prefix.into(),
                    normal: normal.into()
                })
            );
        }
        let e = Routes::new([route("/a/", 0), route("/b/", 1), route("/a/", 2)]).unwrap_err();
        assert_eq!(
            e,
            RouteError::Duplicate {
                prefix: "/a/".into()
            }
        );
        assert!(Routes::new([route("/x/./", 0)]).is_err());
        assert!(Routes::<u32>::default().is_empty());
    }

    fn leaf(uri: &str) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn decisions() {
        let ops = leaf("spiffe://example.com/ns/ops/sa/alice");
        let dev = leaf("spiffe://example.com/ns/dev/sa/bob");
        let allow = AllowList {
            uri: vec!["spiffe://example.com/ns/ops/*".into()],
            ..Default::default()
        };
        let required = Route {
            path_prefix: "/admin/".into(),
            required: true,
            allow: Some(allow.clone()),
            target: 0u32,
        };
        assert_eq!(decide(&required, None), Decision::Forbidden(CERT_REQUIRED));
        assert_eq!(decide(&required, Some(&ops)), Decision::Forward);
        assert_eq!(
            decide(&required, Some(&dev)),
            Decision::Forbidden(CERT_NOT_ALLOWED)
        );

        // Optional: no certificate is fine; a presented one must still pass `allow`.
        let optional = Route {
            required: false,
            ..required.clone()
        };
        assert_eq!(decide(&optional, None), Decision::Forward);
        assert_eq!(decide(&optional, Some(&ops)), Decision::Forward);
        assert_eq!(
            decide(&optional, Some(&dev)),
            Decision::Forbidden(CERT_NOT_ALLOWED)
        );

        // Required without an allowlist: any (handshake-verified) certificate will do.
        let any = Route {
            allow: None,
            ..required
        };
        assert_eq!(decide(&any, Some(&dev)), Decision::Forward);
        assert_eq!(decide(&any, None), Decision::Forbidden(CERT_REQUIRED));
        assert_eq!(
            decide(&any, Some(b"not a certificate")),
            Decision::Forward,
            "no allowlist: the handshake already judged the certificate"
        );
    }
}
