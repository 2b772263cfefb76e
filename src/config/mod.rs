//! Configuration: the TOML file types and their conversion into the validated runtime `Config`.
//!
//! The file is parsed into private `File*` types that mirror the TOML exactly (with
//! `deny_unknown_fields`, so a typo is an error, not a silently ignored key); `from_toml` then
//! checks every value and produces the public runtime types with `Duration`s, resolved addresses
//! and absolute paths. Every error names the file, the key and the offending value, because it
//! is printed once at startup and the process exits.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::proxy_header::inbound::{ProxyAccept, ProxyIn};
pub use crate::proxy_header::ProxyVersion;

/// The HTTP parser keeps header slots in a fixed array of this size, so `max_headers` can't exceed it.
pub const MAX_HEADERS_CEILING: usize = 128;
/// Smaller header budgets would reject ordinary browser requests.
pub const MIN_REQUEST_HEADER_BYTES: usize = 1024;
/// More worker threads than this is a typo, not a machine.
pub const MAX_WORKERS: usize = 1024;
/// Longest `server.control_socket` path: a Unix socket address holds 107 bytes, and the socket
/// is first bound under the path plus `.PID.new` (up to 12 more).
pub const MAX_CONTROL_SOCKET_PATH: usize = 95;

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
    /// The Unix socket on which `certgate --upgrade` takes over this process's listening
    /// sockets (mode 0600); resolved against the config file's directory. `None`: no upgrades.
    pub control_socket: Option<PathBuf>,
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
            control_socket: None,
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
    /// HTTP/2: streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: largest decoded header list (SETTINGS_MAX_HEADER_LIST_SIZE); by default the
    /// same budget as `max_request_header_bytes`.
    pub h2_max_header_list_bytes: u32,
    /// HTTP/2: each stream's receive window, bytes a client may send ahead of our reading.
    pub h2_initial_window: u32,
    /// HTTP/2: the connection's receive window, shared by its streams.
    pub h2_connection_window: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_header_bytes: 65536,
            max_headers: 100,
            max_connections_per_worker: 10000,
            max_client_cert_chain: 5,
            h2_max_concurrent_streams: 100,
            h2_max_header_list_bytes: 65536,
            h2_initial_window: 256 * 1024,
            h2_connection_window: 1024 * 1024,
        }
    }
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

/// `listener.upstream_protocol`: how HTTP requests reach the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over the keep-alive pool; HTTP/2 requests are translated.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP, multiplexed (gRPC needs it: trailers).
    H2c,
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
        let config = Config::from_toml(&text, base_dir).map_err(|e| e.with_path(path))?;
        config.check_paths().map_err(|e| e.with_path(path))?;
        Ok(config)
    }

    /// What the file system must already have for this config: the directory the control
    /// socket is created in. (Certificate and key files are checked when they are read.)
    fn check_paths(&self) -> Result<(), ConfigError> {
        if let Some(socket) = &self.server.control_socket {
            let dir = match socket.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            if !dir.is_dir() {
                return Err(ConfigError::invalid(
                    "server.control_socket",
                    format!(
                        "directory {} does not exist (create it, e.g. RuntimeDirectory=certgate \
                         under systemd)",
                        dir.display()
                    ),
                ));
            }
        }
        Ok(())
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
        let policies = self
            .listeners
            .iter()
            .flat_map(|l| std::iter::once(l).chain(l.sites.iter().map(|s| &s.policy)));
        for l in policies {
            let tls = l.upstream_tls.as_ref();
            let own = l.identities.iter().flat_map(|i| i.files().map(Some));
            let named = [
                l.client_ca.as_deref(),
                tls.map(|t| t.ca.as_path()),
                tls.and_then(|t| t.client_cert.as_ref())
                    .map(|c| c.0.as_path()),
                tls.and_then(|t| t.client_cert.as_ref())
                    .map(|c| c.1.as_path()),
            ];
            let crls = l.client_crl.iter().map(|p| Some(p.as_path()));
            for path in own.chain(named).chain(crls).flatten() {
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
    /// socket is bound once so that health checks never see it disappear during a reload; the
    /// control socket is bound once (`--upgrade` replaces the process: the way to move it).
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
        if self.server.control_socket != next.server.control_socket {
            keys.push("server.control_socket");
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
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before.len() - line_start + 1;
            // A bad value (`proxy_protocol = "v3"`): serde names the value, not the key; the
            // key is what the line starts with.
            let key = text[line_start..]
                .split('\n')
                .next()
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim())
                .filter(|k| {
                    !k.is_empty() && !k.starts_with('[') && span.start > line_start + k.len()
                });
            match key {
                Some(key) => format!("line {line}, column {column}: `{key}`: {message}"),
                None => format!("line {line}, column {column}: {message}"),
            }
        }
        None => message,
    };
    ConfigError::Parse {
        path: None,
        message,
    }
}

mod certs;
mod file;
mod listener;

pub use certs::Identity;
use file::FileConfig;
pub use listener::{Listener, RouteTable, RouteUpstream, Site, UpstreamTls};

#[cfg(test)]
mod tests;
