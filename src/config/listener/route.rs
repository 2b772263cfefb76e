//! `[[listener.route]]` (and `[[listener.site.route]]`): per-path certificate requirements and
//! upstreams, matched on the normalized path, longest prefix first (see `policy::routes`).

use std::net::SocketAddr;

use serde::Deserialize;

use super::{allow_list, resolve, split_scheme, ClientCertMode, ConfigError, FileAllow};
use crate::policy::routes::{Route, Routes};

/// One route as configured.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct FileRoute {
    path_prefix: String,
    #[serde(default)]
    client_certificate: Requirement,
    upstream: Option<String>,
    allow: Option<FileAllow>,
}

/// `client_certificate`.
#[derive(Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Requirement {
    Required,
    #[default]
    Optional,
}

/// Where a route's requests go: the listener's (or site's) upstream, or one of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteUpstream {
    pub addr: SocketAddr,
    /// As written, for logs and the `Host` of HTTP/1.0 requests without one.
    pub authority: String,
}

/// A listener's routes, checked and ordered; each route's target is its own upstream, if any.
pub type RouteTable = Routes<Option<RouteUpstream>>;

/// The routes of one listener or site. `mode` and `has_ca` are that policy's: a required
/// route needs a mode that asks for certificates, and allowlist names need a trust anchor.
pub(super) fn routes(
    files: &[FileRoute],
    mode: ClientCertMode,
    has_ca: bool,
    at: &str,
) -> Result<RouteTable, ConfigError> {
    let mut routes = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let key = |f: &str| format!("{at}.route[{i}]{f}");
        let required = file.client_certificate == Requirement::Required;
        if required && mode == ClientCertMode::Ignore {
            return Err(ConfigError::invalid(
                key(".client_certificate"),
                "\"required\" needs client_certificate_mode = \"accept\" or \"require\" (with \
                 \"ignore\" no certificate is ever asked for)",
            ));
        }
        let allow = match &file.allow {
            Some(table) => Some(allow_list(table, mode, has_ca, &|f| {
                key(&format!(".allow{f}"))
            })?),
            None => None,
        };
        let target = match &file.upstream {
            None => None,
            Some(written) => {
                let (tls, authority) = split_scheme(written.trim())
                    .map_err(|message| ConfigError::invalid(key(".upstream"), message))?;
                if tls {
                    return Err(ConfigError::invalid(
                        key(".upstream"),
                        "a route's own upstream is plain TCP (an https upstream is a site's or \
                         the listener's, with its upstream_ca)",
                    ));
                }
                let addr = resolve(&authority).map_err(|reason| {
                    ConfigError::invalid(
                        key(".upstream"),
                        format!("cannot resolve {written:?}: {reason}"),
                    )
                })?;
                Some(RouteUpstream { addr, authority })
            }
        };
        routes.push(Route {
            path_prefix: file.path_prefix.clone(),
            required,
            allow,
            target,
        });
    }
    Routes::new(routes).map_err(|e| ConfigError::invalid(format!("{at}.route"), e.to_string()))
}
