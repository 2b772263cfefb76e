//! `[[listener.site]]`: a set of server names with its own certificate, client policy and
//! upstream on a shared port, like nginx `server_name` blocks or HAProxy crt-list lines.
//!
//! A site takes every per-policy key a listener has; each defaults to the listener's value.
//! Keys that only make sense together are taken as a group: a site that names any of its own
//! certificate keys, upstream keys, trust keys or header-format keys takes that whole group
//! from itself (a site's own `client_ca` does not inherit the listener's CRLs or allowlist,
//! and an `http://` site upstream does not inherit an `https` listener's `upstream_ca`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{
    ClientCertMode, ConfigError, CrlUnknownStatus, FileAllow, FileIdentity, FileListener,
    FileRoute, Listener, ProxyVersion,
};
use crate::sni::SniMap;

/// One site as configured.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct FileSite {
    server_names: Vec<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    cert_password_file: Option<PathBuf>,
    certificates: Option<Vec<FileIdentity>>,
    client_certificate_mode: Option<ClientCertMode>,
    client_ca: Option<PathBuf>,
    client_crl: Option<Vec<PathBuf>>,
    crl_unknown_status: Option<CrlUnknownStatus>,
    client_ca_hints: Option<bool>,
    allow: Option<FileAllow>,
    upstream: Option<String>,
    upstream_ca: Option<PathBuf>,
    upstream_server_name: Option<String>,
    upstream_cert: Option<PathBuf>,
    upstream_key: Option<PathBuf>,
    upstream_proxy_protocol: Option<ProxyVersion>,
    session_resumption: Option<bool>,
    upgrade: Option<Vec<String>>,
    forward: Option<Vec<String>>,
    xfcc_fields: Option<Vec<String>>,
    route: Option<Vec<FileRoute>>,
    alpn: Option<Vec<String>>,
    upstream_protocol: Option<super::UpstreamProtocol>,
}

/// A site of a listener: its names and its full policy (a `Listener` of its own, with the
/// listener's bind, protocol and PROXY settings, and no sites or passthrough entries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub server_names: Vec<String>,
    pub policy: Listener,
}

impl FileListener {
    /// The listener's table with `site`'s keys laid over it, group by group.
    fn for_site(&self, site: &FileSite) -> FileListener {
        let mut merged = self.clone();
        merged.site = Vec::new();
        merged.passthrough = Vec::new();
        merged.strict_sni = None;
        if site.cert.is_some()
            || site.key.is_some()
            || site.cert_password_file.is_some()
            || site.certificates.is_some()
        {
            merged.cert = site.cert.clone();
            merged.key = site.key.clone();
            merged.cert_password_file = site.cert_password_file.clone();
            merged.certificates = site.certificates.clone();
        }
        if site.client_ca.is_some()
            || site.client_crl.is_some()
            || site.crl_unknown_status.is_some()
            || site.client_ca_hints.is_some()
            || site.allow.is_some()
        {
            merged.client_ca = site.client_ca.clone();
            merged.client_crl = site.client_crl.clone();
            merged.crl_unknown_status = site.crl_unknown_status;
            merged.client_ca_hints = site.client_ca_hints;
            merged.allow = site.allow.clone();
        }
        if let Some(upstream) = &site.upstream {
            merged.upstream = upstream.clone();
            merged.upstream_protocol = site.upstream_protocol;
            merged.upstream_ca = site.upstream_ca.clone();
            merged.upstream_server_name = site.upstream_server_name.clone();
            merged.upstream_cert = site.upstream_cert.clone();
            merged.upstream_key = site.upstream_key.clone();
        } else if site.upstream_ca.is_some()
            || site.upstream_server_name.is_some()
            || site.upstream_cert.is_some()
            || site.upstream_key.is_some()
        {
            // TLS settings for the listener's own upstream address.
            merged.upstream_ca = site.upstream_ca.clone();
            merged.upstream_server_name = site.upstream_server_name.clone();
            merged.upstream_cert = site.upstream_cert.clone();
            merged.upstream_key = site.upstream_key.clone();
        }
        if site.forward.is_some() || site.xfcc_fields.is_some() {
            merged.forward = site.forward.clone();
            merged.xfcc_fields = site.xfcc_fields.clone();
        }
        if let Some(mode) = site.client_certificate_mode {
            merged.client_certificate_mode = mode;
        }
        if let Some(v) = site.upstream_proxy_protocol {
            merged.upstream_proxy_protocol = v;
        }
        if site.session_resumption.is_some() {
            merged.session_resumption = site.session_resumption;
        }
        if site.upgrade.is_some() {
            merged.upgrade = site.upgrade.clone();
        }
        if site.alpn.is_some() {
            merged.alpn = site.alpn.clone();
        }
        if site.upstream.is_none() && site.upstream_protocol.is_some() {
            merged.upstream_protocol = site.upstream_protocol;
        }
        if let Some(routes) = &site.route {
            merged.route = routes.clone();
        }
        merged
    }
}

/// Every site of a listener, checked: each has names, no name is claimed twice (by two sites,
/// or by a site and a passthrough entry). Returns the sites and the name → site index map.
pub(super) fn sites(
    base: &FileListener,
    files: &[FileSite],
    listener: &Listener,
    at: &str,
    base_dir: &Path,
) -> Result<(Vec<Site>, SniMap<usize>), ConfigError> {
    let mut sites = Vec::with_capacity(files.len());
    let mut names = SniMap::default();
    for (i, file) in files.iter().enumerate() {
        let here = format!("{at}.site[{i}]");
        let key = |f: &str| format!("{here}.{f}");
        if file.server_names.is_empty() {
            return Err(ConfigError::invalid(
                key("server_names"),
                "must not be empty",
            ));
        }
        for name in &file.server_names {
            let taken = names
                .owner(name)
                .map(|j| format!("{at}.site[{j}]"))
                .or_else(|| {
                    listener
                        .passthrough
                        .owner(name)
                        .map(|_| format!("a {at}.passthrough entry"))
                });
            if let Some(other) = taken {
                return Err(ConfigError::invalid(
                    key("server_names"),
                    format!("{name:?} is already claimed by {other}"),
                ));
            }
            names
                .add(std::slice::from_ref(name), i)
                .map_err(|e| ConfigError::invalid(key("server_names"), e.to_string()))?;
        }
        let mut policy = base.for_site(file).into_listener(&here, base_dir)?;
        // Tickets, logs and key derivation tell sites apart by this name.
        policy.name = format!("{}/{}", listener.name, file.server_names[0]);
        sites.push(Site {
            server_names: file.server_names.clone(),
            policy,
        });
    }
    Ok((sites, names))
}
