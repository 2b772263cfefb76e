//! `[[listener]]`: the runtime type, its TOML mirror and the checks that turn one into the other.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::certs::{self, FileIdentity, Identity};
use route::FileRoute;
pub use route::{RouteTable, RouteUpstream};
use site::FileSite;
pub use site::Site;

mod route;
mod site;
use super::{
    ClientCertMode, ConfigError, ListenerProtocol, ProxyAccept, ProxyIn, ProxyVersion,
    UpstreamProtocol,
};
use crate::cidr::Cidr;
use crate::identity::{self, Format, Forwarding};
use crate::policy::allow::{self, AllowList};
use crate::sni::{SniMap, SniRoutes};
use crate::xfcc::Fields;

/// One `[[listener]]`: a TLS port in front of one plain HTTP/1.1 upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Used in logs and as the `listener` label of metrics; defaults to the bind address.
    /// Unique within a config, so a listener's metrics survive a reload that keeps its name.
    pub name: String,
    pub bind: SocketAddr,
    /// The certificates served: one, or one per key type (see `certs`). Paths are resolved
    /// against the config file's directory.
    pub identities: Vec<Identity>,
    pub client_certificate_mode: ClientCertMode,
    /// Trust anchors for client certificates; resolved like `cert`.
    pub client_ca: Option<PathBuf>,
    /// Resolved once at load, so a DNS failure is a startup error, not a per-request one.
    pub upstream: SocketAddr,
    /// The upstream exactly as written, for logs and a `Host` fallback.
    pub upstream_authority: String,
    /// false: no session tickets and no session cache.
    pub session_resumption: bool,
    /// Protocols a client may upgrade to (`Upgrade` tokens, lowercase); others are stripped.
    pub upgrade: Vec<String>,
    /// What the decrypted stream is: HTTP/1.1 requests, or bytes relayed as they are.
    pub protocol: ListenerProtocol,
    /// The PROXY header sent first on each upstream connection. On an HTTP listener it makes
    /// each client's upstream connection its own (not pooled across clients).
    pub upstream_proxy_protocol: ProxyVersion,
    /// Server names whose TLS is not terminated here: relayed to their own upstream.
    pub passthrough: SniRoutes,
    /// `upstream = "https://…"`: TLS to the upstream, verified against these anchors.
    pub upstream_tls: Option<UpstreamTls>,
    /// `[listener.allow]`: a presented certificate must match one entry (empty: any).
    pub allow: AllowList,
    /// `client_crl`: revocation lists checked for the whole chain (PEM or DER files).
    pub client_crl: Vec<PathBuf>,
    /// `crl_unknown_status = "deny"`: refuse a certificate whose issuer has no CRL loaded.
    pub crl_deny_unknown: bool,
    /// `client_ca_hints`: whether the CertificateRequest lists the CA names.
    pub client_ca_hints: bool,
    /// `forward` and `xfcc_fields`: the identity headers the app receives. `by` is empty
    /// here; the TLS setup fills it from the listener's certificate.
    pub forwarding: Forwarding,
    /// `proxy_protocol` and `proxy_protocol_from`: the PROXY header a load balancer in front
    /// sends before the TLS bytes.
    pub proxy_in: ProxyIn,
    /// `[[listener.site]]`: server names with their own policy; the listener's own keys are
    /// the default site (no SNI, or a name no site claims).
    pub sites: Vec<Site>,
    /// Server name → index into `sites`.
    pub site_names: SniMap<usize>,
    /// `strict_sni`: no SNI, or a name no site claims, fails the handshake
    /// (`unrecognized_name`) instead of getting the default site.
    pub strict_sni: bool,
    /// `[[listener.route]]`: per-path requirements, longest prefix first. With routes, every
    /// request's path is normalized before matching and forwarded in its normal form.
    pub routes: RouteTable,
    /// `alpn`: the protocols offered, in order (`h2`, `http/1.1`); empty on `tcp` listeners.
    pub alpn: Vec<Vec<u8>>,
    /// `upstream_protocol`: HTTP/1.1 (pooled) or HTTP/2 with prior knowledge (multiplexed).
    pub upstream_protocol: UpstreamProtocol,
}

/// TLS to the upstream (`upstream = "https://host:port"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// `upstream_ca`: the app's trust anchors (PEM); required, so that nobody is trusted by
    /// accident (there is no system store in a minimal image, and an edge proxy talking to
    /// its own apps should name their CA).
    pub ca: PathBuf,
    /// `upstream_server_name`: the name the app's certificate must carry and the SNI sent;
    /// default the host in `upstream`.
    pub server_name: String,
    /// `upstream_cert`/`upstream_key`: certgate's own client certificate for the app's mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct FileListener {
    name: Option<String>,
    bind: String,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    cert_password_file: Option<PathBuf>,
    certificates: Option<Vec<FileIdentity>>,
    #[serde(default)]
    client_certificate_mode: ClientCertMode,
    client_ca: Option<PathBuf>,
    upstream: String,
    session_resumption: Option<bool>,
    upgrade: Option<Vec<String>>,
    #[serde(default)]
    protocol: ListenerProtocol,
    #[serde(default)]
    upstream_proxy_protocol: ProxyVersion,
    #[serde(default)]
    passthrough: Vec<FilePassthrough>,
    upstream_ca: Option<PathBuf>,
    upstream_server_name: Option<String>,
    upstream_cert: Option<PathBuf>,
    upstream_key: Option<PathBuf>,
    forward: Option<Vec<String>>,
    xfcc_fields: Option<Vec<String>>,
    allow: Option<FileAllow>,
    client_crl: Option<Vec<PathBuf>>,
    crl_unknown_status: Option<CrlUnknownStatus>,
    client_ca_hints: Option<bool>,
    #[serde(default)]
    proxy_protocol: ProxyAccept,
    proxy_protocol_from: Option<Vec<String>>,
    #[serde(default)]
    site: Vec<FileSite>,
    strict_sni: Option<bool>,
    #[serde(default)]
    route: Vec<FileRoute>,
    alpn: Option<Vec<String>>,
    upstream_protocol: Option<UpstreamProtocol>,
}

/// `[listener.allow]`.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct FileAllow {
    #[serde(default)]
    sha256: Vec<String>,
    #[serde(default)]
    subject_cn: Vec<String>,
    #[serde(default)]
    dns: Vec<String>,
    #[serde(default)]
    uri: Vec<String>,
    #[serde(default)]
    email: Vec<String>,
}

/// `crl_unknown_status`.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum CrlUnknownStatus {
    Allow,
    Deny,
}

/// `[[listener.passthrough]]`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct FilePassthrough {
    server_names: Vec<String>,
    upstream: String,
}

impl FileListener {
    /// `at` names the table in errors: `listener[0]`, or `listener[0].site[1]`.
    pub(super) fn into_listener(
        mut self,
        at: &str,
        base_dir: &Path,
    ) -> Result<Listener, ConfigError> {
        let key = |field: &str| format!("{at}.{field}");
        // Sites are built from the listener's table as written, before it is taken apart.
        let site_files = std::mem::take(&mut self.site);
        let base = (!site_files.is_empty()).then(|| self.clone());
        let strict_sni = self.strict_sni.unwrap_or(false);
        if strict_sni && site_files.is_empty() && self.passthrough.is_empty() {
            return Err(ConfigError::invalid(
                key("strict_sni"),
                "needs [[listener.site]] or [[listener.passthrough]] entries: every name would be refused",
            ));
        }
        let bind: SocketAddr = self.bind.trim().parse().map_err(|_| {
            ConfigError::invalid(
                key("bind"),
                format!(
                    "{:?} is not an ip:port address (e.g. \"0.0.0.0:8443\" or \"[::]:8443\")",
                    self.bind
                ),
            )
        })?;
        let (tls, upstream_authority) = split_scheme(self.upstream.trim())
            .map_err(|message| ConfigError::invalid(key("upstream"), message))?;
        let upstream_tls = self.upstream_tls(tls, &upstream_authority, base_dir, &key)?;
        let forwarding = forwarding(self.forward.as_deref(), self.xfcc_fields.as_deref(), &key)?;
        let identities = certs::identities(
            self.cert.take(),
            self.key.take(),
            self.cert_password_file.take(),
            self.certificates.take(),
            base_dir,
            at,
        )?;
        let revocation = self.revocation(base_dir, &key)?;
        let allow = self.allow_list(&key)?;
        let routes = route::routes(
            &self.route,
            self.client_certificate_mode,
            self.client_ca.is_some(),
            at,
        )?;
        let name = match self.name {
            Some(name) if !name.trim().is_empty() => name,
            Some(_) => return Err(ConfigError::invalid(key("name"), "must not be empty")),
            None => bind.to_string(),
        };
        let upstream = resolve(&upstream_authority).map_err(|reason| {
            ConfigError::invalid(
                key("upstream"),
                format!(
                    "listener {name:?}: cannot resolve {:?}: {reason}",
                    self.upstream
                ),
            )
        })?;
        let upgrade = match self.upgrade {
            None => vec!["websocket".to_owned()],
            Some(list) => {
                let mut tokens = Vec::with_capacity(list.len());
                for token in list {
                    let lower = token.trim().to_ascii_lowercase();
                    if lower.is_empty() || !lower.bytes().all(crate::http::is_tchar) {
                        return Err(ConfigError::invalid(
                            key("upgrade"),
                            format!("{token:?} is not a protocol name (e.g. \"websocket\")"),
                        ));
                    }
                    tokens.push(lower);
                }
                tokens
            }
        };
        let proxy_in = proxy_in(self.proxy_protocol, self.proxy_protocol_from, &key)?;
        let alpn = alpn(self.alpn.as_deref(), self.protocol, &key)?;
        let upstream_protocol = self.upstream_protocol.unwrap_or_default();
        if upstream_protocol == UpstreamProtocol::H2c {
            let conflict = if self.protocol == ListenerProtocol::Tcp {
                Some("applies to protocol = \"http\" listeners only")
            } else if upstream_tls.is_some() {
                Some("h2c is HTTP/2 over plain TCP: use an http:// (or bare host:port) upstream")
            } else if self.upstream_proxy_protocol != ProxyVersion::Off {
                Some("h2c connections are shared by every client of a worker, so they cannot carry one client's PROXY header: use upstream_protocol = \"http1\" with upstream_proxy_protocol")
            } else {
                None
            };
            if let Some(message) = conflict {
                return Err(ConfigError::invalid(key("upstream_protocol"), message));
            }
        }
        let mut passthrough = SniRoutes::default();
        for (i, entry) in self.passthrough.iter().enumerate() {
            let field = |f: &str| key(&format!("passthrough[{i}].{f}"));
            let upstream = resolve(entry.upstream.trim()).map_err(|reason| {
                ConfigError::invalid(
                    field("upstream"),
                    format!("cannot resolve {:?}: {reason}", entry.upstream),
                )
            })?;
            if entry.server_names.is_empty() {
                return Err(ConfigError::invalid(
                    field("server_names"),
                    "must not be empty",
                ));
            }
            passthrough
                .add(&entry.server_names, upstream)
                .map_err(|e| ConfigError::invalid(field("server_names"), e.to_string()))?;
        }
        Ok(Listener {
            name,
            bind,
            identities,
            client_certificate_mode: self.client_certificate_mode,
            client_ca: self.client_ca.map(|p| base_dir.join(p)),
            upstream,
            upstream_authority,
            session_resumption: self.session_resumption.unwrap_or(true),
            upgrade,
            protocol: self.protocol,
            upstream_proxy_protocol: self.upstream_proxy_protocol,
            passthrough,
            upstream_tls,
            forwarding,
            allow,
            client_crl: revocation.0,
            crl_deny_unknown: revocation.1,
            client_ca_hints: self.client_ca_hints.unwrap_or(true),
            proxy_in,
            sites: Vec::new(),
            site_names: SniMap::default(),
            strict_sni,
            routes,
            alpn,
            upstream_protocol,
        })
        .and_then(|mut listener| {
            if let Some(base) = base {
                let (sites, names) = site::sites(&base, &site_files, &listener, at, base_dir)?;
                listener.sites = sites;
                listener.site_names = names;
            }
            Ok(listener)
        })
    }

    /// `client_crl` and `crl_unknown_status`, which need `client_ca` (and each other).
    fn revocation(
        &self,
        base_dir: &Path,
        key: &dyn Fn(&str) -> String,
    ) -> Result<(Vec<PathBuf>, bool), ConfigError> {
        if self.client_ca.is_none() {
            for (name, set) in [
                ("client_crl", self.client_crl.is_some()),
                ("crl_unknown_status", self.crl_unknown_status.is_some()),
                ("client_ca_hints", self.client_ca_hints.is_some()),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        key(name),
                        "needs client_ca: it is about the certificates client_ca verifies",
                    ));
                }
            }
        }
        let crls = self.client_crl.clone().unwrap_or_default();
        if self.client_crl.is_some() && crls.is_empty() {
            return Err(ConfigError::invalid(
                key("client_crl"),
                "must name at least one file",
            ));
        }
        if self.crl_unknown_status.is_some() && crls.is_empty() {
            return Err(ConfigError::invalid(
                key("crl_unknown_status"),
                "only applies with client_crl",
            ));
        }
        Ok((
            crls.into_iter().map(|p| base_dir.join(p)).collect(),
            self.crl_unknown_status == Some(CrlUnknownStatus::Deny),
        ))
    }

    /// `[listener.allow]`: names need a trust anchor to mean anything; pins do not.
    fn allow_list(&self, key: &dyn Fn(&str) -> String) -> Result<AllowList, ConfigError> {
        match &self.allow {
            None => Ok(AllowList::default()),
            Some(file) => allow_list(
                file,
                self.client_certificate_mode,
                self.client_ca.is_some(),
                &|f| key(&format!("allow{f}")),
            ),
        }
    }

    /// The `upstream_*` TLS keys, which belong to an `https` upstream and only to one.
    fn upstream_tls(
        &self,
        https: bool,
        authority: &str,
        base_dir: &Path,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<UpstreamTls>, ConfigError> {
        if !https {
            let stray = [
                ("upstream_ca", self.upstream_ca.is_some()),
                ("upstream_server_name", self.upstream_server_name.is_some()),
                ("upstream_cert", self.upstream_cert.is_some()),
                ("upstream_key", self.upstream_key.is_some()),
            ];
            if let Some((name, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(ConfigError::invalid(
                    key(name),
                    "only applies to TLS upstreams: write upstream = \"https://host:port\"",
                ));
            }
            return Ok(None);
        }
        let Some(ca) = &self.upstream_ca else {
            return Err(ConfigError::invalid(
                key("upstream_ca"),
                "is required with an https upstream: the PEM file of the CA(s) that issued the app's certificate",
            ));
        };
        let server_name = match &self.upstream_server_name {
            Some(name) => name.trim().to_owned(),
            None => host_of(authority).to_owned(),
        };
        if rustls_pki_types::ServerName::try_from(server_name.as_str()).is_err() {
            return Err(ConfigError::invalid(
                key("upstream_server_name"),
                format!("{server_name:?} is not a DNS name or IP address"),
            ));
        }
        let client_cert = match (&self.upstream_cert, &self.upstream_key) {
            (Some(cert), Some(k)) => Some((base_dir.join(cert), base_dir.join(k))),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    key("upstream_key"),
                    "is required with upstream_cert",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    key("upstream_cert"),
                    "is required with upstream_key",
                ))
            }
        };
        Ok(Some(UpstreamTls {
            ca: base_dir.join(ca),
            server_name,
            client_cert,
        }))
    }
}

/// `forward` and `xfcc_fields` → the forwarding policy. Each name once; `xfcc_fields` only with
/// `xfcc` forwarded.
fn forwarding(
    forward: Option<&[String]>,
    fields: Option<&[String]>,
    key: &dyn Fn(&str) -> String,
) -> Result<Forwarding, ConfigError> {
    let mut policy = Forwarding {
        xfcc: None,
        ..Forwarding::default()
    };
    let formats = forward.unwrap_or(&[]);
    for (i, name) in formats.iter().enumerate() {
        let format = Format::parse(name).ok_or_else(|| {
            ConfigError::invalid(
                key("forward"),
                format!(
                    "{name:?} is not a header format: use \"xfcc\", \"client-cert\" or \"arr\""
                ),
            )
        })?;
        if formats[..i].contains(name) {
            return Err(ConfigError::invalid(
                key("forward"),
                format!("{name:?} is listed twice"),
            ));
        }
        match format {
            Format::Xfcc => policy.xfcc = Some(Fields::default()),
            Format::ClientCert => policy.client_cert = true,
            Format::Arr => policy.arr = true,
        }
    }
    if forward.is_none() {
        policy.xfcc = Some(Fields::default());
    }
    if let Some(names) = fields {
        let Some(xfcc) = &mut policy.xfcc else {
            return Err(ConfigError::invalid(
                key("xfcc_fields"),
                "only applies when `forward` lists \"xfcc\"",
            ));
        };
        if names.is_empty() {
            return Err(ConfigError::invalid(
                key("xfcc_fields"),
                "must name at least one field",
            ));
        }
        let mut chosen = Fields {
            hash: false,
            cert: false,
            chain: false,
            ..Fields::default()
        };
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) || !identity::parse_field(&mut chosen, name) {
                return Err(ConfigError::invalid(
                    key("xfcc_fields"),
                    format!(
                        "{name:?} is listed twice or is not a field: use \"by\", \"hash\", \"cert\", \
                         \"chain\", \"subject\", \"uri\" or \"dns\""
                    ),
                ));
            }
        }
        *xfcc = chosen;
    }
    Ok(policy)
}

/// An `allow` table (the listener's, a site's or a route's) → the list. `key("")` names the
/// table, `key(".sha256")` one of its keys.
fn allow_list(
    file: &FileAllow,
    mode: ClientCertMode,
    has_ca: bool,
    key: &dyn Fn(&str) -> String,
) -> Result<AllowList, ConfigError> {
    let mut list = AllowList {
        subject_cn: file.subject_cn.clone(),
        dns: file.dns.clone(),
        uri: file.uri.clone(),
        email: file.email.clone(),
        ..AllowList::default()
    };
    for pin in &file.sha256 {
        list.sha256
            .push(allow::parse_sha256(pin.trim()).ok_or_else(|| {
                ConfigError::invalid(
                    key(".sha256"),
                    format!("{pin:?} is not a SHA-256 (64 hex digits, colons allowed)"),
                )
            })?);
    }
    for dns in &list.dns {
        let bare = dns.strip_prefix("*.").unwrap_or(dns);
        if bare.is_empty() || bare.contains('*') {
            return Err(ConfigError::invalid(
                key(".dns"),
                format!("{dns:?}: a name, or one leading \"*.\" label"),
            ));
        }
    }
    if list.is_empty() {
        return Err(ConfigError::invalid(
            key(""),
            "lists no entry: it would refuse every certificate (remove the table to allow any)",
        ));
    }
    if mode == ClientCertMode::Ignore {
        return Err(ConfigError::invalid(
            key(""),
            "has no effect with client_certificate_mode = \"ignore\" (no certificate is asked for)",
        ));
    }
    if list.has_names() && !has_ca {
        return Err(ConfigError::invalid(
            key(""),
            "subject_cn, dns, uri and email need client_ca: without a trust anchor anyone can \
             mint a self-signed certificate with any name (sha256 pins work without one)",
        ));
    }
    Ok(list)
}

/// `upstream` as written → (TLS?, host:port). No scheme and `http://` mean plain TCP;
/// `https://` means TLS, port 443 unless given. Nothing may follow the authority: the
/// upstream is a connection, not a URL prefix.
fn split_scheme(upstream: &str) -> Result<(bool, String), String> {
    let lower = upstream.to_ascii_lowercase();
    let (https, rest) = if lower.starts_with("https://") {
        (true, &upstream["https://".len()..])
    } else if lower.starts_with("http://") {
        (false, &upstream["http://".len()..])
    } else if upstream.contains("://") {
        return Err(format!(
            "{upstream:?}: the scheme must be http:// or https://"
        ));
    } else {
        (false, upstream)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{upstream:?} must be host:port, optionally after http:// or https:// (no path)"
        ));
    }
    let has_port = match rest.rfind(']') {
        Some(close) => rest[close..].contains(':'),
        None => rest.contains(':'),
    };
    Ok(match (has_port, https) {
        (true, _) => (https, rest.to_owned()),
        (false, true) => (true, format!("{rest}:443")),
        (false, false) => (false, format!("{rest}:80")),
    })
}

/// The host of `host:port` (IPv6 without its brackets), for a TLS server name.
fn host_of(authority: &str) -> &str {
    let host = crate::http::request::strip_port(authority.as_bytes());
    // `strip_port` returns a prefix of its input: still UTF-8, at a char boundary.
    let host = &authority[..host.len()];
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// `proxy_protocol` + `proxy_protocol_from`. The list, when written, must name sources and
/// needs a header to expect: an empty list would read as "nobody" to some and "everybody" to
/// others, and a list on a listener that takes no header is a mistake about the other key.
fn proxy_in(
    accept: ProxyAccept,
    from: Option<Vec<String>>,
    key: &dyn Fn(&str) -> String,
) -> Result<ProxyIn, ConfigError> {
    let Some(from) = from else {
        return Ok(ProxyIn {
            accept,
            from: Vec::new(),
        });
    };
    if accept == ProxyAccept::Off {
        return Err(ConfigError::invalid(
            key("proxy_protocol_from"),
            "is set but proxy_protocol is \"off\" (set proxy_protocol = \"v1\", \"v2\" or \"any\", or remove the list)",
        ));
    }
    if from.is_empty() {
        return Err(ConfigError::invalid(
            key("proxy_protocol_from"),
            "must not be empty (leave it out to expect a PROXY header from every source)",
        ));
    }
    let from = from
        .iter()
        .map(|net| net.parse::<Cidr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::invalid(key("proxy_protocol_from"), e.to_string()))?;
    Ok(ProxyIn { accept, from })
}

/// host:port → the first address the resolver returns.
fn resolve(authority: &str) -> Result<SocketAddr, String> {
    let mut addrs = authority.to_socket_addrs().map_err(|e| e.to_string())?;
    addrs
        .next()
        .ok_or_else(|| "the name resolved to no addresses".to_owned())
}

/// `alpn`: the protocols an HTTP listener offers; by default HTTP/2 first, then HTTP/1.1 (what
/// nginx, Envoy and HAProxy offer with HTTP/2 on). A `tcp` listener relays whatever the client
/// speaks and offers none.
fn alpn(
    list: Option<&[String]>,
    protocol: ListenerProtocol,
    key: &dyn Fn(&str) -> String,
) -> Result<Vec<Vec<u8>>, ConfigError> {
    let list = match (list, protocol) {
        (None, ListenerProtocol::Http) => return Ok(vec![b"h2".to_vec(), b"http/1.1".to_vec()]),
        (None, ListenerProtocol::Tcp) => return Ok(Vec::new()),
        (Some(_), ListenerProtocol::Tcp) => return Err(ConfigError::invalid(
            key("alpn"),
            "applies to protocol = \"http\" listeners only (a tcp listener relays any protocol)",
        )),
        (Some(list), ListenerProtocol::Http) => list,
    };
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(list.len());
    for name in list {
        let name = name.trim();
        if name != "h2" && name != "http/1.1" {
            return Err(ConfigError::invalid(
                key("alpn"),
                format!(
                    "{name:?} is not a protocol certgate serves: use \"h2\" and/or \"http/1.1\""
                ),
            ));
        }
        if out.iter().any(|n| n == name.as_bytes()) {
            return Err(ConfigError::invalid(
                key("alpn"),
                format!("{name:?} is listed twice"),
            ));
        }
        out.push(name.as_bytes().to_vec());
    }
    if out.is_empty() {
        return Err(ConfigError::invalid(
            key("alpn"),
            "must list at least one protocol",
        ));
    }
    Ok(out)
}
