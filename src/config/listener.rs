//! `[[listener]]`: the runtime type, its TOML mirror and the checks that turn one into the other.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ClientCertMode, ConfigError, ListenerProtocol, ProxyAccept, ProxyIn, ProxyVersion};
use crate::cidr::Cidr;
use crate::sni::SniRoutes;

/// One `[[listener]]`: a TLS port in front of one plain HTTP/1.1 upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Used in logs and as the `listener` label of metrics; defaults to the bind address.
    /// Unique within a config, so a listener's metrics survive a reload that keeps its name.
    pub name: String,
    pub bind: SocketAddr,
    /// PEM, leaf first then intermediates; resolved against the config file's directory.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1); resolved like `cert`.
    pub key: PathBuf,
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
    /// The PROXY header sent first on each upstream connection (`tcp` listeners).
    pub upstream_proxy_protocol: ProxyVersion,
    /// Server names whose TLS is not terminated here: relayed to their own upstream.
    pub passthrough: SniRoutes,
    /// `proxy_protocol` and `proxy_protocol_from`: the PROXY header a load balancer in front
    /// sends before the TLS bytes.
    pub proxy_in: ProxyIn,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileListener {
    name: Option<String>,
    bind: String,
    cert: PathBuf,
    key: PathBuf,
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
    #[serde(default)]
    proxy_protocol: ProxyAccept,
    proxy_protocol_from: Option<Vec<String>>,
}

/// `[[listener.passthrough]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePassthrough {
    server_names: Vec<String>,
    upstream: String,
}

impl FileListener {
    pub(super) fn into_listener(
        self,
        index: usize,
        base_dir: &Path,
    ) -> Result<Listener, ConfigError> {
        let key = |field: &str| format!("listener[{index}].{field}");
        let bind: SocketAddr = self.bind.trim().parse().map_err(|_| {
            ConfigError::invalid(
                key("bind"),
                format!(
                    "{:?} is not an ip:port address (e.g. \"0.0.0.0:8443\" or \"[::]:8443\")",
                    self.bind
                ),
            )
        })?;
        let name = match self.name {
            Some(name) if !name.trim().is_empty() => name,
            Some(_) => return Err(ConfigError::invalid(key("name"), "must not be empty")),
            None => bind.to_string(),
        };
        let upstream_authority = self.upstream.trim().to_owned();
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
        if self.protocol == ListenerProtocol::Http
            && self.upstream_proxy_protocol != ProxyVersion::Off
        {
            // A pooled upstream connection carries requests of many clients, so one header
            // per connection cannot name the client; not supported on HTTP listeners yet.
            return Err(ConfigError::invalid(
                key("upstream_proxy_protocol"),
                "is only supported with protocol = \"tcp\" (HTTP listeners forward the client in X-Forwarded-For and Forwarded)",
            ));
        }
        let proxy_in = proxy_in(self.proxy_protocol, self.proxy_protocol_from, &key)?;
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
            cert: base_dir.join(self.cert),
            key: base_dir.join(self.key),
            client_certificate_mode: self.client_certificate_mode,
            client_ca: self.client_ca.map(|p| base_dir.join(p)),
            upstream,
            upstream_authority,
            session_resumption: self.session_resumption.unwrap_or(true),
            upgrade,
            protocol: self.protocol,
            upstream_proxy_protocol: self.upstream_proxy_protocol,
            passthrough,
            proxy_in,
        })
    }
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
