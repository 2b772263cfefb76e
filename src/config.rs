//! Configuration: the TOML file types and their conversion into the validated runtime `Config`.
//!
//! The file is parsed into private `File*` types that mirror the TOML exactly (with
//! `deny_unknown_fields`, so a typo is an error, not a silently ignored key); `from_toml` then
//! checks every value and produces the public runtime types with `Duration`s, resolved addresses
//! and absolute paths. Every error names the file, the key and the offending value, because it
//! is printed once at startup and the process exits.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::proxy_header::ProxyVersion;
use crate::sni::SniRoutes;

/// The HTTP parser keeps header slots in a fixed array of this size, so `max_headers` can't exceed it.
pub const MAX_HEADERS_CEILING: usize = 128;
/// Smaller header budgets would reject ordinary browser requests.
pub const MIN_REQUEST_HEADER_BYTES: usize = 1024;
/// More worker threads than this is a typo, not a machine.
pub const MAX_WORKERS: usize = 1024;

/// Whether a listener asks the client for a certificate (Azure Container Apps' `clientCertificateMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertMode {
    /// A certificate is mandatory; the handshake fails without one.
    Require,
    /// A certificate is requested but optional; forwarded when presented.
    Accept,
    /// No certificate is requested.
    #[default]
    Ignore,
}

impl fmt::Display for ClientCertMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientCertMode::Require => "require",
            ClientCertMode::Accept => "accept",
            ClientCertMode::Ignore => "ignore",
        })
    }
}

/// `[log] access`: one line per request on stdout, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// No access log (the default: it costs a formatted line per request).
    #[default]
    Off,
    /// `key=value` pairs, one request per line.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log] format`: how certgate's own diagnostic lines on stderr look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; colored only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The validated runtime configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub server: Server,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// `[admin]`; `None` when the section is absent: no admin listener.
    pub admin: Option<Admin>,
    pub log: Log,
    pub listeners: Vec<Listener>,
}

/// `[admin]`: the plain-HTTP operations listener (`/healthz`, `/readyz`, `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admin {
    pub bind: SocketAddr,
}

/// `[log]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Log {
    pub access: AccessLogFormat,
    pub format: LogFormat,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// 0 = one worker per available CPU core (see [`Config::worker_count`]).
    pub workers: usize,
    pub pin_workers: bool,
    /// Per-worker LRU of verified client chains; 0 disables the cache.
    pub cert_cache_size: usize,
    pub cert_cache_ttl: Duration,
    /// How often the config file and every file it names are checked for changed contents;
    /// zero (the default) = never, reload only on SIGHUP.
    pub reload_interval: Duration,
    /// Session-ticket key file shared by replicas (see [`crate::tls::tickets`]); resolved
    /// against the config file's directory. `None`: a random key per listener and process.
    pub ticket_keys: Option<PathBuf>,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            workers: 0,
            pin_workers: true,
            cert_cache_size: 1024,
            cert_cache_ttl: Duration::from_secs(300),
            reload_interval: Duration::ZERO,
            ticket_keys: None,
        }
    }
}

/// `[timeouts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP accept to finished TLS handshake.
    pub handshake: Duration,
    /// Absolute deadline for a complete request head (slowloris).
    pub request_header: Duration,
    /// Idle time between requests on a client connection.
    pub keep_alive: Duration,
    /// Connecting to the upstream; exceeding it answers 502.
    pub upstream_connect: Duration,
    /// Waiting for the upstream's response head; exceeding it answers 504.
    pub upstream_response: Duration,
    /// Drain time on SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// An upgraded connection (WebSocket) with no byte in either direction this long closes.
    pub tunnel_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(10),
            request_header: Duration::from_secs(30),
            keep_alive: Duration::from_secs(60),
            upstream_connect: Duration::from_secs(5),
            upstream_response: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            tunnel_idle: Duration::from_secs(3600),
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Larger request heads are answered 431.
    pub max_request_header_bytes: usize,
    /// More header fields are answered 431; 1..=[`MAX_HEADERS_CEILING`].
    pub max_headers: usize,
    pub max_connections_per_worker: usize,
    /// Longer client chains fail the handshake.
    pub max_client_cert_chain: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_header_bytes: 65536,
            max_headers: 100,
            max_connections_per_worker: 10000,
            max_client_cert_chain: 5,
        }
    }
}

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
}

/// `listener.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.1 exchanges with the identity headers.
    #[default]
    Http,
    /// The decrypted stream relayed to the upstream both ways; identity in the PROXY header.
    Tcp,
}

/// Why the configuration could not be loaded. Each variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type; `message` is one line.
    #[error("{}{message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Parse {
        path: Option<PathBuf>,
        message: String,
    },
    /// A well-formed value that is out of range or inconsistent; `key` is its dotted path.
    #[error("{}invalid `{key}`: {message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Invalid {
        path: Option<PathBuf>,
        key: String,
        message: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: None,
            key: key.into(),
            message: message.into(),
        }
    }

    fn with_path(self, file: &Path) -> Self {
        match self {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: Some(file.to_path_buf()),
                message,
            },
            ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
                path: Some(file.to_path_buf()),
                key,
                message,
            },
            other => other,
        }
    }
}

impl Config {
    /// Reads and validates the file; relative paths in it are resolved against its directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        Config::from_toml(&text, base_dir).map_err(|e| e.with_path(path))
    }

    /// Parses and validates TOML text; `base_dir` anchors relative `cert`/`key`/`client_ca` paths.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| parse_error(text, &e))?;
        file.into_config(base_dir)
    }

    /// Every file the config names (session-ticket keys, certificates, keys, client CAs), each
    /// once, in config order. The config file itself is not included: the caller knows its
    /// path. A reload watcher hashes the config file plus these to notice a rotation.
    pub fn files(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = self.server.ticket_keys.as_deref().into_iter().collect();
        for l in &self.listeners {
            let named = [
                Some(l.cert.as_path()),
                Some(l.key.as_path()),
                l.client_ca.as_deref(),
            ];
            for path in named.into_iter().flatten() {
                if !files.contains(&path) {
                    files.push(path);
                }
            }
        }
        files
    }

    /// The keys that differ between `self` (running) and `next` (just loaded) but only take
    /// effect at a restart, as dotted names; a reload keeps their old values and warns once.
    /// Threads, their pinning and the stderr subscriber are set up once at startup; the admin
    /// socket is bound once so that health checks never see it disappear during a reload.
    pub fn restart_only_changes(&self, next: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.server.workers != next.server.workers {
            keys.push("server.workers");
        }
        if self.server.pin_workers != next.server.pin_workers {
            keys.push("server.pin_workers");
        }
        if self.admin != next.admin {
            keys.push("admin.bind");
        }
        if self.log.format != next.log.format {
            keys.push("log.format");
        }
        keys
    }

    /// The number of worker threads to start: `server.workers`, or one per CPU core when it is 0.
    pub fn worker_count(&self) -> usize {
        match self.server.workers {
            // If the core count is unknowable (restricted /proc), one worker still serves.
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// toml's Display is a multi-line snippet; startup errors are logged as one line, so rebuild
/// it from the position and serde's message (which already names an unknown key or bad value).
fn parse_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim().replace('\n', " ");
    let message = match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    };
    ConfigError::Parse {
        path: None,
        message,
    }
}

// ---- file types: exactly the TOML, every field optional where the format says so ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: FileServer,
    #[serde(default)]
    timeouts: FileTimeouts,
    #[serde(default)]
    limits: FileLimits,
    admin: Option<FileAdmin>,
    #[serde(default)]
    log: FileLog,
    #[serde(default, rename = "listener")]
    listeners: Vec<FileListener>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileServer {
    workers: Option<usize>,
    pin_workers: Option<bool>,
    cert_cache_size: Option<usize>,
    cert_cache_ttl: Option<toml::Value>,
    reload_interval: Option<toml::Value>,
    ticket_keys: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    bind: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLog {
    #[serde(default)]
    access: AccessLogFormat,
    #[serde(default)]
    format: LogFormat,
}

// Durations are taken as raw values so that a bare number (`handshake = 10`) can be reported
// with the full key name and a hint about units, rather than as serde's "expected a string".
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileTimeouts {
    handshake: Option<toml::Value>,
    request_header: Option<toml::Value>,
    keep_alive: Option<toml::Value>,
    upstream_connect: Option<toml::Value>,
    upstream_response: Option<toml::Value>,
    shutdown_grace: Option<toml::Value>,
    tunnel_idle: Option<toml::Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_request_header_bytes: Option<usize>,
    max_headers: Option<usize>,
    max_connections_per_worker: Option<usize>,
    max_client_cert_chain: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
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
}

/// `[[listener.passthrough]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePassthrough {
    server_names: Vec<String>,
    upstream: String,
}

/// A duration value: a string with a unit, parsed by humantime. `key` is the dotted path.
fn duration(
    value: Option<toml::Value>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(toml::Value::String(s)) => humantime::parse_duration(s.trim())
            .map_err(|e| ConfigError::invalid(key, format!("{s:?} is not a duration ({e})"))),
        Some(other) => Err(ConfigError::invalid(
            key,
            format!("{other} is not a duration: write a string with a unit, e.g. \"10s\", \"500ms\", \"5m\""),
        )),
    }
}

/// Timeouts of zero would fail every connection at once, so they must be positive.
fn positive_duration(
    value: Option<toml::Value>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let d = duration(value, key, default)?;
    if d.is_zero() {
        return Err(ConfigError::invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

impl FileConfig {
    fn into_config(self, base_dir: &Path) -> Result<Config, ConfigError> {
        let server = self.server.into_server(base_dir)?;
        let timeouts = self.timeouts.into_timeouts()?;
        let limits = self.limits.into_limits()?;
        if self.listeners.is_empty() {
            return Err(ConfigError::invalid(
                "listener",
                "at least one [[listener]] section is required",
            ));
        }
        let mut listeners: Vec<Listener> = Vec::with_capacity(self.listeners.len());
        for (index, file) in self.listeners.into_iter().enumerate() {
            let listener = file.into_listener(index, base_dir)?;
            if let Some(other) = listeners.iter().find(|l| l.bind == listener.bind) {
                return Err(ConfigError::invalid(
                    format!("listener[{index}].bind"),
                    format!(
                        "listener {:?} binds {} which listener {:?} already binds",
                        listener.name, listener.bind, other.name
                    ),
                ));
            }
            if let Some(other) = listeners.iter().position(|l| l.name == listener.name) {
                // Metrics and logs tell listeners apart by name only.
                return Err(ConfigError::invalid(
                    format!("listener[{index}].name"),
                    format!(
                        "{:?} is already the name of listener[{other}] (names must be unique; \
                         the default name is the bind address)",
                        listener.name
                    ),
                ));
            }
            listeners.push(listener);
        }
        let admin = self.admin.map(|a| a.into_admin(&listeners)).transpose()?;
        Ok(Config {
            server,
            timeouts,
            limits,
            admin,
            log: Log {
                access: self.log.access,
                format: self.log.format,
            },
            listeners,
        })
    }
}

impl FileServer {
    fn into_server(self, base_dir: &Path) -> Result<Server, ConfigError> {
        let d = Server::default();
        let workers = self.workers.unwrap_or(d.workers);
        if workers > MAX_WORKERS {
            return Err(ConfigError::invalid(
                "server.workers",
                format!("{workers} is more than {MAX_WORKERS}; use 0 for one per CPU core"),
            ));
        }
        Ok(Server {
            workers,
            pin_workers: self.pin_workers.unwrap_or(d.pin_workers),
            cert_cache_size: self.cert_cache_size.unwrap_or(d.cert_cache_size),
            cert_cache_ttl: duration(
                self.cert_cache_ttl,
                "server.cert_cache_ttl",
                d.cert_cache_ttl,
            )?,
            // Zero means off, so it is a plain (not a positive) duration.
            reload_interval: duration(
                self.reload_interval,
                "server.reload_interval",
                d.reload_interval,
            )?,
            ticket_keys: match self.ticket_keys {
                Some(path) if path.as_os_str().is_empty() => {
                    return Err(ConfigError::invalid(
                        "server.ticket_keys",
                        "must not be empty: name a key file, or leave the key out",
                    ))
                }
                Some(path) => Some(base_dir.join(path)),
                None => None,
            },
        })
    }
}

impl FileAdmin {
    fn into_admin(self, listeners: &[Listener]) -> Result<Admin, ConfigError> {
        let bind: SocketAddr = self.bind.trim().parse().map_err(|_| {
            ConfigError::invalid(
                "admin.bind",
                format!(
                    "{:?} is not an ip:port address (e.g. \"127.0.0.1:9901\")",
                    self.bind
                ),
            )
        })?;
        // Port 0 picks a free port at bind time, so it can't collide with a listener.
        if bind.port() != 0 {
            if let Some(l) = listeners.iter().find(|l| l.bind == bind) {
                return Err(ConfigError::invalid(
                    "admin.bind",
                    format!(
                        "{bind} is already the bind address of listener {:?}",
                        l.name
                    ),
                ));
            }
        }
        Ok(Admin { bind })
    }
}

impl FileTimeouts {
    fn into_timeouts(self) -> Result<Timeouts, ConfigError> {
        let d = Timeouts::default();
        Ok(Timeouts {
            handshake: positive_duration(self.handshake, "timeouts.handshake", d.handshake)?,
            request_header: positive_duration(
                self.request_header,
                "timeouts.request_header",
                d.request_header,
            )?,
            keep_alive: positive_duration(self.keep_alive, "timeouts.keep_alive", d.keep_alive)?,
            upstream_connect: positive_duration(
                self.upstream_connect,
                "timeouts.upstream_connect",
                d.upstream_connect,
            )?,
            upstream_response: positive_duration(
                self.upstream_response,
                "timeouts.upstream_response",
                d.upstream_response,
            )?,
            // Zero is meaningful here: stop at once without draining.
            shutdown_grace: duration(
                self.shutdown_grace,
                "timeouts.shutdown_grace",
                d.shutdown_grace,
            )?,
            tunnel_idle: positive_duration(
                self.tunnel_idle,
                "timeouts.tunnel_idle",
                d.tunnel_idle,
            )?,
        })
    }
}

impl FileLimits {
    fn into_limits(self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let limits = Limits {
            max_request_header_bytes: self
                .max_request_header_bytes
                .unwrap_or(d.max_request_header_bytes),
            max_headers: self.max_headers.unwrap_or(d.max_headers),
            max_connections_per_worker: self
                .max_connections_per_worker
                .unwrap_or(d.max_connections_per_worker),
            max_client_cert_chain: self
                .max_client_cert_chain
                .unwrap_or(d.max_client_cert_chain),
        };
        let checks = [
            ("max_headers", limits.max_headers, 1, MAX_HEADERS_CEILING),
            (
                "max_request_header_bytes",
                limits.max_request_header_bytes,
                MIN_REQUEST_HEADER_BYTES,
                usize::MAX,
            ),
            (
                "max_connections_per_worker",
                limits.max_connections_per_worker,
                1,
                usize::MAX,
            ),
            (
                "max_client_cert_chain",
                limits.max_client_cert_chain,
                1,
                usize::MAX,
            ),
        ];
        for (name, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                let range = match max {
                    usize::MAX => format!("at least {min}"),
                    _ => format!("between {min} and {max}"),
                };
                return Err(ConfigError::invalid(
                    format!("limits.{name}"),
                    format!("{value} is out of range: must be {range}"),
                ));
            }
        }
        Ok(limits)
    }
}

impl FileListener {
    fn into_listener(self, index: usize, base_dir: &Path) -> Result<Listener, ConfigError> {
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
        })
    }
}

/// host:port → the first address the resolver returns.
fn resolve(authority: &str) -> Result<SocketAddr, String> {
    let mut addrs = authority.to_socket_addrs().map_err(|e| e.to_string())?;
    addrs
        .next()
        .ok_or_else(|| "the name resolved to no addresses".to_owned())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
