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

/// The validated runtime configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub server: Server,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub listeners: Vec<Listener>,
}

/// `[server]`: process-wide settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    /// 0 = one worker per available CPU core (see [`Config::worker_count`]).
    pub workers: usize,
    pub pin_workers: bool,
    /// Per-worker LRU of verified client chains; 0 disables the cache.
    pub cert_cache_size: usize,
    pub cert_cache_ttl: Duration,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            workers: 0,
            pin_workers: true,
            cert_cache_size: 1024,
            cert_cache_ttl: Duration::from_secs(300),
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
    /// Used in logs; defaults to the bind address.
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
        let server = self.server.into_server()?;
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
            listeners.push(listener);
        }
        Ok(Config {
            server,
            timeouts,
            limits,
            listeners,
        })
    }
}

impl FileServer {
    fn into_server(self) -> Result<Server, ConfigError> {
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
        })
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
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[listener]]
bind = "127.0.0.1:8443"
cert = "server.pem"
key = "server.key"
upstream = "127.0.0.1:8080"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("/etc/certgate"))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const FULL: &str = r#"
[server]
workers = 4
pin_workers = false
cert_cache_size = 16
cert_cache_ttl = "90s"

[timeouts]
handshake = "3s"
request_header = "500ms"
keep_alive = "2m"
upstream_connect = "1s"
upstream_response = "45s"
shutdown_grace = "0s"

[limits]
max_request_header_bytes = 8192
max_headers = 64
max_connections_per_worker = 500
max_client_cert_chain = 3

[[listener]]
name = "public"
bind = "0.0.0.0:8443"
cert = "certs/server.pem"
key = "/abs/server.key"
client_certificate_mode = "require"
client_ca = "clients-ca.pem"
upstream = "127.0.0.1:8080"
session_resumption = false

[[listener]]
bind = "[::1]:9443"
cert = "b.pem"
key = "b.key"
client_certificate_mode = "accept"
upstream = "localhost:9090"
"#;

    #[test]
    fn full_file_parses_with_every_value() {
        let c = parse(FULL).unwrap();
        assert_eq!(
            c.server,
            Server {
                workers: 4,
                pin_workers: false,
                cert_cache_size: 16,
                cert_cache_ttl: Duration::from_secs(90),
            }
        );
        assert_eq!(
            c.timeouts,
            Timeouts {
                handshake: Duration::from_secs(3),
                request_header: Duration::from_millis(500),
                keep_alive: Duration::from_secs(120),
                upstream_connect: Duration::from_secs(1),
                upstream_response: Duration::from_secs(45),
                shutdown_grace: Duration::ZERO,
            }
        );
        assert_eq!(
            c.limits,
            Limits {
                max_request_header_bytes: 8192,
                max_headers: 64,
                max_connections_per_worker: 500,
                max_client_cert_chain: 3,
            }
        );
        assert_eq!(c.worker_count(), 4);
        let a = &c.listeners[0];
        assert_eq!(a.name, "public");
        assert_eq!(a.bind, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(a.cert, Path::new("/etc/certgate/certs/server.pem"));
        assert_eq!(a.key, Path::new("/abs/server.key"));
        assert_eq!(a.client_certificate_mode, ClientCertMode::Require);
        assert_eq!(
            a.client_ca.as_deref(),
            Some(Path::new("/etc/certgate/clients-ca.pem"))
        );
        assert_eq!(a.upstream, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(a.upstream_authority, "127.0.0.1:8080");
        assert!(!a.session_resumption);
        let b = &c.listeners[1];
        assert_eq!(b.name, "[::1]:9443");
        assert_eq!(b.client_certificate_mode, ClientCertMode::Accept);
        assert_eq!(b.client_ca, None);
        assert_eq!(b.upstream.port(), 9090);
        assert!(b.upstream.ip().is_loopback());
        assert_eq!(b.upstream_authority, "localhost:9090");
        assert!(b.session_resumption);
    }

    #[test]
    fn omitted_sections_take_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.server, Server::default());
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.limits, Limits::default());
        let l = &c.listeners[0];
        assert_eq!(l.name, "127.0.0.1:8443");
        assert_eq!(l.client_certificate_mode, ClientCertMode::Ignore);
        assert!(l.session_resumption);
        assert!(c.worker_count() >= 1);
    }

    #[test]
    fn shipped_example_parses() {
        let c = parse(include_str!("../examples/certgate.toml")).unwrap();
        assert!(!c.listeners.is_empty());
        assert_eq!(c.timeouts, Timeouts::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.server, Server::default());
    }

    #[test]
    fn unknown_keys_are_named_on_one_line() {
        for (text, key) in [
            (format!("colour = \"blue\"\n{MINIMAL}"), "colour"),
            (format!("[server]\nworkerz = 2\n{MINIMAL}"), "workerz"),
            (format!("[limits]\nmax_body = 2\n{MINIMAL}"), "max_body"),
            (format!("{MINIMAL}upstream_tls = true\n"), "upstream_tls"),
        ] {
            let e = err(&text);
            assert!(e.contains(key), "{e}");
            assert!(e.contains("line "), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn bad_client_certificate_mode_lists_allowed_values() {
        let text = MINIMAL.replace(
            "upstream =",
            "client_certificate_mode = \"optional\"\nupstream =",
        );
        let e = err(&text);
        for word in ["optional", "require", "accept", "ignore"] {
            assert!(e.contains(word), "{e}");
        }
    }

    #[test]
    fn bare_number_duration_names_the_key() {
        let e = err(&format!("[timeouts]\nhandshake = 10\n{MINIMAL}"));
        assert!(e.contains("timeouts.handshake"), "{e}");
        assert!(e.contains("unit"), "{e}");
    }

    #[test]
    fn malformed_duration_names_the_key_and_value() {
        let e = err(&format!(
            "[server]\ncert_cache_ttl = \"5 fortnights\"\n{MINIMAL}"
        ));
        assert!(e.contains("server.cert_cache_ttl"), "{e}");
        assert!(e.contains("5 fortnights"), "{e}");
    }

    #[test]
    fn zero_timeout_is_rejected_but_zero_grace_is_allowed() {
        let e = err(&format!("[timeouts]\nkeep_alive = \"0s\"\n{MINIMAL}"));
        assert!(e.contains("timeouts.keep_alive"), "{e}");
        assert!(parse(&format!("[timeouts]\nshutdown_grace = \"0s\"\n{MINIMAL}")).is_ok());
    }

    #[test]
    fn relative_paths_resolve_against_config_dir() {
        let text = MINIMAL.replace("upstream =", "client_ca = \"ca/c.pem\"\nupstream =");
        let c = Config::from_toml(&text, Path::new("/srv/conf")).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.cert, Path::new("/srv/conf/server.pem"));
        assert_eq!(l.key, Path::new("/srv/conf/server.key"));
        assert_eq!(
            l.client_ca.as_deref(),
            Some(Path::new("/srv/conf/ca/c.pem"))
        );
    }

    #[test]
    fn duplicate_bind_is_rejected() {
        let e = err(&format!("{MINIMAL}{MINIMAL}"));
        assert!(e.contains("listener[1].bind"), "{e}");
        assert!(e.contains("127.0.0.1:8443"), "{e}");
    }

    #[test]
    fn missing_listener_is_rejected() {
        let e = err("[server]\nworkers = 1\n");
        assert!(e.contains("listener"), "{e}");
    }

    #[test]
    fn bind_must_be_ip_and_port() {
        let e = err(&MINIMAL.replace("127.0.0.1:8443", "localhost:8443"));
        assert!(e.contains("listener[0].bind"), "{e}");
        assert!(e.contains("localhost:8443"), "{e}");
        assert!(err(&MINIMAL.replace("127.0.0.1:8443", "127.0.0.1")).contains("bind"));
    }

    #[test]
    fn unresolvable_upstream_names_listener_and_value() {
        let text = MINIMAL
            .replace("bind =", "name = \"api\"\nbind =")
            .replace("127.0.0.1:8080", "no-port-here");
        let e = err(&text);
        assert!(e.contains("listener[0].upstream"), "{e}");
        assert!(e.contains("api"), "{e}");
        assert!(e.contains("no-port-here"), "{e}");
    }

    #[test]
    fn limits_out_of_range_are_rejected() {
        for (line, key) in [
            ("max_headers = 0", "limits.max_headers"),
            ("max_headers = 129", "limits.max_headers"),
            (
                "max_request_header_bytes = 1023",
                "limits.max_request_header_bytes",
            ),
            ("max_client_cert_chain = 0", "limits.max_client_cert_chain"),
            (
                "max_connections_per_worker = 0",
                "limits.max_connections_per_worker",
            ),
        ] {
            let e = err(&format!("[limits]\n{line}\n{MINIMAL}"));
            assert!(e.contains(key), "{line}: {e}");
        }
        assert!(parse(&format!("[limits]\nmax_headers = 128\n{MINIMAL}")).is_ok());
    }

    #[test]
    fn too_many_workers_is_rejected() {
        let e = err(&format!("[server]\nworkers = 1025\n{MINIMAL}"));
        assert!(e.contains("server.workers"), "{e}");
    }

    #[test]
    fn load_names_missing_file() {
        let path = Path::new("/nonexistent/certgate-test/certgate.toml");
        let e = Config::load(path).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(e
            .to_string()
            .contains("/nonexistent/certgate-test/certgate.toml"));
    }

    #[test]
    fn load_resolves_paths_against_file_dir_and_names_file_in_errors() {
        let dir = std::env::temp_dir().join(format!("certgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("certgate.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.listeners[0].cert, dir.join("server.pem"));
        std::fs::write(&path, format!("bogus = 1\n{MINIMAL}")).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("certgate.toml") && e.contains("bogus"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
