//! What a request must pass before anything is forwarded, on listeners with sites or routes:
//! its Host must belong to the site the handshake chose, and its path (in normal form) must
//! satisfy the route it falls under. The decisions are the pure ones of `policy::routes`,
//! `http::path` and `proxy::Hosts`; this module only gathers their inputs from the connection.

use std::rc::Rc;

use rustls_pki_types::CertificateDer;

use super::error::ClientError;
use super::{ListenerCtx, RoutePool};
use crate::http::path;
use crate::http::request::RequestHead;
use crate::policy::routes::{self, Decision};

/// What admission decided for a request that may go on.
#[derive(Default)]
pub(super) struct Admitted {
    /// The normal form of the target to send instead of the client's (`None`: as sent).
    pub(super) target: Option<Vec<u8>>,
    /// The matched route's own upstream, if it has one.
    pub(super) route: Option<Rc<RoutePool>>,
}

/// Each route's verdict on a connection's client certificate, worked out once per connection
/// ([`routes::admits`] parses the certificate for a name allowlist). `None`: no certificate.
pub(super) fn route_verdicts(
    ctx: &ListenerCtx,
    leaf: Option<&CertificateDer<'_>>,
) -> Option<Box<[bool]>> {
    let leaf = leaf?;
    Some(ctx.routes.iter().map(|r| routes::admits(r, leaf)).collect())
}

/// Checks `head` (its bytes in `buf`) against the context's sites and routes. `verdicts` is
/// [`route_verdicts`] for the connection.
pub(super) fn admit(
    ctx: &ListenerCtx,
    head: &RequestHead,
    buf: &[u8],
    verdicts: Option<&[bool]>,
) -> Result<Admitted, ClientError> {
    if let Some((hosts, site)) = &ctx.hosts {
        // Every request, not only the first: a keep-alive or resumed connection must not
        // reach another site's app under this site's client policy (nginx CVE-2025-23419).
        // The default site answers only names no site claims.
        let name = std::str::from_utf8(head.host_name(buf)).unwrap_or("");
        if hosts.site_of(name) != *site {
            return Err(ClientError::Misdirected);
        }
    }
    if ctx.routes.is_empty() {
        return Ok(Admitted::default());
    }
    // The target's normal form is what is matched and what is sent.
    let target = head.target(buf);
    let mut normal = Vec::new();
    let n = path::normalize(target, &mut normal).map_err(ClientError::BadPath)?;
    let mut route = None;
    if let Some((i, matched)) = ctx.routes.matching_at(n.path(target, &normal)) {
        let certificate = verdicts.map(|v| v.get(i).copied().unwrap_or(false));
        if let Decision::Forbidden(reason) = routes::decide_known(matched, certificate) {
            return Err(ClientError::Forbidden(reason));
        }
        route = matched.target.clone();
    }
    Ok(Admitted {
        target: n.is_rewritten().then_some(normal),
        route,
    })
}
