//! The TOML mirror types of the process-wide sections (`[server]`, `[timeouts]`, `[limits]`,
//! `[admin]`, `[log]`) and their checked conversion into the runtime types.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::listener::FileListener;
use super::*;

// ---- file types: exactly the TOML, every field optional where the format says so ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
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
    control_socket: Option<PathBuf>,
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
    h2_max_concurrent_streams: Option<usize>,
    h2_max_header_list_bytes: Option<usize>,
    h2_initial_window: Option<usize>,
    h2_connection_window: Option<usize>,
}

/// A configured count as the `u32` HTTP/2 settings carry (values above are refused by the
/// range checks, which see the original).
fn clamp_u32(value: Option<usize>) -> Option<u32> {
    value.map(|v| u32::try_from(v).unwrap_or(u32::MAX))
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
    pub(super) fn into_config(self, base_dir: &Path) -> Result<Config, ConfigError> {
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
            let listener = file.into_listener(&format!("listener[{index}]"), base_dir)?;
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
            control_socket: match self.control_socket {
                Some(path) => Some(control_socket(base_dir, path)?),
                None => None,
            },
        })
    }
}

/// `server.control_socket`: a path that fits a Unix socket address together with the
/// temporary suffix a process binds it under first (see `worker::handover::control`).
fn control_socket(base_dir: &Path, path: PathBuf) -> Result<PathBuf, ConfigError> {
    let key = "server.control_socket";
    if path.as_os_str().is_empty() || path.file_name().is_none() {
        return Err(ConfigError::invalid(
            key,
            "must name a socket file, e.g. \"/run/certgate/control.sock\"",
        ));
    }
    let path = base_dir.join(path);
    let len = path.as_os_str().len();
    if len > MAX_CONTROL_SOCKET_PATH {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{} is {len} bytes long; a Unix socket path here must be at most \
                 {MAX_CONTROL_SOCKET_PATH}",
                path.display()
            ),
        ));
    }
    Ok(path)
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
            // Range-checked below, before the narrowing casts matter.
            h2_max_concurrent_streams: clamp_u32(self.h2_max_concurrent_streams)
                .unwrap_or(d.h2_max_concurrent_streams),
            h2_max_header_list_bytes: clamp_u32(
                self.h2_max_header_list_bytes
                    .or(self.max_request_header_bytes),
            )
            .unwrap_or(d.h2_max_header_list_bytes),
            h2_initial_window: clamp_u32(self.h2_initial_window).unwrap_or(d.h2_initial_window),
            h2_connection_window: clamp_u32(self.h2_connection_window)
                .unwrap_or(d.h2_connection_window),
        };
        // RFC 9113 §6.9.1: a window above 2^31-1 is a protocol error; 65535 is the smallest
        // initial window the protocol starts from.
        const MAX_WINDOW: usize = (1 << 31) - 1;
        let h2_checks = [
            (
                "h2_max_concurrent_streams",
                self.h2_max_concurrent_streams,
                1,
                1 << 20,
            ),
            (
                "h2_max_header_list_bytes",
                self.h2_max_header_list_bytes,
                MIN_REQUEST_HEADER_BYTES,
                1 << 24,
            ),
            (
                "h2_initial_window",
                self.h2_initial_window,
                65535,
                MAX_WINDOW,
            ),
            (
                "h2_connection_window",
                self.h2_connection_window,
                65535,
                MAX_WINDOW,
            ),
        ];
        for (name, value, min, max) in h2_checks {
            if let Some(value) = value.filter(|v| !(min..=max).contains(v)) {
                return Err(ConfigError::invalid(
                    format!("limits.{name}"),
                    format!("{value} is out of range: must be between {min} and {max}"),
                ));
            }
        }
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
