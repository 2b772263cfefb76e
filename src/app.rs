//! Startup and reload: config → TLS setup → workers. Shared by the CLI, the demo and the test
//! suite, so all three run exactly the same checks and the same server.
//!
//! A reload is the same path as startup: the whole config and every file it names are loaded
//! and validated into a new [`Prepared`] before anything changes; only then does the running
//! server get the new generation. A failure leaves the running config in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use crate::config::{Config, ConfigError, Listener};
use crate::identity::Forwarding;
use crate::ops::metrics::Metrics;
use crate::tls::tickets::{TicketKeyError, TicketKeys};
use crate::tls::{self, TlsError};
use crate::worker::handover::Inherited;
use crate::worker::{self, ListenerPlan, Server, Settings, WorkerError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    TicketKeys(#[from] TicketKeyError),
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// A config whose every file has been read and checked, ready to serve.
pub struct Prepared {
    pub config: Config,
    pub plans: Vec<ListenerPlan>,
    /// One line per listener, for `certgate check` and the startup log.
    pub summaries: Vec<String>,
}

/// Loads a config file and everything it names.
pub fn load(path: &Path) -> Result<Prepared, StartupError> {
    prepare(Config::load(path)?)
}

/// Builds the TLS side of every listener.
pub fn prepare(config: Config) -> Result<Prepared, StartupError> {
    prepare_after(config, &[])
}

/// [`prepare`] for a reload, where `previous` is the running generation: a
/// listener whose trust is unchanged keeps its session-ticket key, TLS 1.2 session cache and
/// verified-chain cache, so a certificate rotation does not cost every client a full handshake.
///
/// With `[server] ticket_keys`, each listener's ticket keys are derived afresh from the file,
/// its name and its trust, at every load: the same inputs give the same keys, in this process
/// and in every replica reading the same file.
pub fn prepare_after(config: Config, previous: &[ListenerPlan]) -> Result<Prepared, StartupError> {
    let ticket_keys = match &config.server.ticket_keys {
        Some(path) => Some(TicketKeys::load(path)?),
        None => None,
    };
    let mut plans = Vec::new();
    let mut summaries = Vec::new();
    for listener in &config.listeners {
        plans.push(plan(
            listener,
            &config,
            previous,
            ticket_keys.as_ref(),
            &mut summaries,
        )?);
    }
    Ok(Prepared {
        config,
        plans,
        summaries,
    })
}

/// One listener's (or site's) plan, its sites' plans inside; each adds its summary line.
/// `previous` is the running generation's plans at the same level (listeners, or the sites of
/// the listener of the same name).
fn plan(
    listener: &Listener,
    config: &Config,
    previous: &[ListenerPlan],
    ticket_keys: Option<&TicketKeys>,
    summaries: &mut Vec<String>,
) -> Result<ListenerPlan, StartupError> {
    let trust = trust_fingerprint(listener, config)?;
    let same_trust = previous
        .iter()
        .find(|p| p.name == listener.name && p.trust == trust);
    let cache = match same_trust {
        Some(p) => p.cache.clone(),
        None => tls::cache::CacheConfig::new(
            config.server.cert_cache_size,
            config.server.cert_cache_ttl,
        ),
    }
    .with_forwarding(forwarding(listener)?);
    let ticketer = match (ticket_keys, same_trust) {
        (Some(keys), _) => Some(keys.ticketer(&listener.name, &trust)),
        (None, Some(p)) => Some(p.tls.ticketer.clone()),
        (None, None) => None,
    };
    let mut built = tls::server_config_with(
        listener,
        config.limits.max_client_cert_chain,
        cache,
        ticketer,
    )?;
    if let (Some(p), Some(fresh)) = (same_trust, Arc::get_mut(&mut built.config)) {
        fresh.session_storage = p.tls.session_storage.clone();
    }
    if let (Some(keys), true) = (ticket_keys, listener.session_resumption) {
        built.summary.push_str(&format!(
            "; ticket_keys={} ({} key(s), encrypting with {})",
            keys.path().display(),
            keys.names().len(),
            keys.encrypting(),
        ));
    }
    let upstream_tls = tls::upstream::UpstreamTlsPlan::load(listener)?;
    if let Some(plan) = &upstream_tls {
        built.summary.push_str(&plan.summary(listener));
    }
    for line in &built.warnings {
        warn!(listener = %listener.name, "{line}");
    }
    let proxy_in = &listener.proxy_in;
    if proxy_in.accept != crate::config::ProxyAccept::Off {
        let from: Vec<String> = proxy_in.from.iter().map(ToString::to_string).collect();
        built.summary.push_str(&format!(
            "; proxy_protocol={} from {}",
            proxy_in.accept.as_str(),
            if from.is_empty() {
                "every source".to_owned()
            } else {
                from.join(", ")
            },
        ));
    }
    summaries.push(built.summary);
    let previous_sites = previous
        .iter()
        .find(|p| p.name == listener.name)
        .map_or(&[][..], |p| &p.sites[..]);
    let mut sites = Vec::with_capacity(listener.sites.len());
    for site in &listener.sites {
        sites.push(plan(
            &site.policy,
            config,
            previous_sites,
            ticket_keys,
            summaries,
        )?);
    }
    Ok(ListenerPlan {
        name: listener.name.clone(),
        bind: listener.bind,
        tls: built.config,
        cache: built.cache,
        trust,
        not_after: built.not_after,
        upstream: listener.upstream,
        upstream_host: listener.upstream_authority.clone(),
        upgrade: listener.upgrade.clone(),
        verifies_clients: listener.client_ca.is_some(),
        protocol: listener.protocol,
        upstream_proxy_protocol: listener.upstream_proxy_protocol,
        upstream_protocol: listener.upstream_protocol,
        proxy_in: listener.proxy_in.clone(),
        passthrough: listener.passthrough.clone(),
        upstream_tls,
        sites,
        site_names: listener.site_names.clone(),
        strict_sni: listener.strict_sni,
        routes: listener.routes.clone(),
    })
}

/// The listener's identity headers; XFCC's `By` names the URI SANs of its own certificate, so
/// that file is read here when `by` is asked for.
fn forwarding(listener: &Listener) -> Result<Forwarding, StartupError> {
    let mut forwarding = listener.forwarding.clone();
    if forwarding.xfcc.is_some_and(|f| f.by) {
        let (chain, _) = tls::certs::load(&listener.identities[0])?;
        forwarding.by = chain
            .first()
            .map(|leaf| crate::identity::uri_sans(leaf))
            .unwrap_or_default();
    }
    Ok(forwarding)
}

/// What decides who a listener lets in: its mode, the bytes of its trust store, the chain
/// limit, whether it resumes sessions. Any change starts its tickets, session IDs and cached
/// chains afresh, so nobody skips the new checks by resuming or returning (a ticket carries
/// the client's certificate, and rustls does not verify it again on resumption).
fn trust_fingerprint(listener: &Listener, config: &Config) -> Result<[u8; 32], StartupError> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(listener.client_certificate_mode.to_string().as_bytes());
    ctx.update(&[u8::from(listener.session_resumption)]);
    ctx.update(&(config.limits.max_client_cert_chain as u64).to_be_bytes());
    // Revocation lists and the allowlist decide too: revoking a certificate (a new CRL and a
    // reload) must shut out a client returning with a cached chain or a session ticket.
    let files = listener.client_ca.iter().chain(&listener.client_crl);
    for path in files {
        let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.clone(),
            source,
        })?;
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(&bytes);
    }
    ctx.update(&[u8::from(listener.crl_deny_unknown)]);
    ctx.update(format!("{:?}", listener.allow).as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// Binds and starts the workers (with metrics nobody scrapes: the demo and in-process tests).
pub fn start(prepared: Prepared) -> Result<Server, StartupError> {
    start_counting(prepared, Arc::new(Metrics::new()))
}

/// Binds and starts the workers, counting into `metrics`.
pub fn start_counting(prepared: Prepared, metrics: Arc<Metrics>) -> Result<Server, StartupError> {
    Ok(worker::start(&prepared.config, prepared.plans, metrics)?)
}

/// The running process: the server, and the config generation it serves.
pub struct Running {
    pub server: Server,
    path: PathBuf,
    config: Config,
    plans: Vec<ListenerPlan>,
}

impl Running {
    /// Starts serving `prepared`, loaded from `path`, counting into `metrics`.
    pub fn start(
        path: PathBuf,
        prepared: Prepared,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StartupError> {
        Running::start_inheriting(path, prepared, metrics, &mut Inherited::default())
    }

    /// [`Running::start`] on the sockets in `inherited` for the listeners they match (see
    /// [`worker::start_inheriting`]); what no listener claims is left there.
    pub fn start_inheriting(
        path: PathBuf,
        prepared: Prepared,
        metrics: Arc<Metrics>,
        inherited: &mut Inherited,
    ) -> Result<Self, StartupError> {
        let config = prepared.config.clone();
        let plans = prepared.plans.clone();
        let server =
            worker::start_inheriting(&prepared.config, prepared.plans, metrics, inherited)?;
        Ok(Running {
            server,
            path,
            config,
            plans,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the config file and every file it names and, if all of it is valid, hands the
    /// workers the new generation. On error nothing changed. Returns the summaries of the new
    /// listeners.
    pub fn reload(&mut self) -> Result<Vec<String>, StartupError> {
        let mut config = Config::load(&self.path)?;
        // Fixed at startup: the worker threads and their CPUs, the admin socket, the log format.
        let fixed = self.config.restart_only_changes(&config);
        if !fixed.is_empty() {
            warn!(
                "changed keys that take effect only at the next restart (their running values \
                 stay): {}",
                fixed.join(", ")
            );
            config.server.workers = self.config.server.workers;
            config.server.pin_workers = self.config.server.pin_workers;
            config.admin = self.config.admin;
            config.log.format = self.config.log.format;
            config.server.control_socket = self.config.server.control_socket.clone();
        }
        let prepared = prepare_after(config, &self.plans)?;
        self.server
            .reload(Settings::of(&prepared.config), prepared.plans.clone())?;
        self.config = prepared.config;
        self.plans = prepared.plans;
        Ok(prepared.summaries)
    }

    /// Stops accepting and drains (see [`Server::shutdown`]).
    pub fn shutdown(self) {
        self.server.shutdown();
    }

    /// Stops accepting and drains after a handover (see [`Server::retire`]).
    pub fn retire(self) {
        self.server.retire();
    }
}
