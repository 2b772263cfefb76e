//! Startup: config → TLS setup → workers. Shared by the CLI, the demo and the test suite, so
//! all three run exactly the same checks and the same server.

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::tls::{self, TlsError};
use crate::worker::{self, ListenerPlan, Server, WorkerError};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
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
    let mut plans = Vec::new();
    let mut summaries = Vec::new();
    for listener in &config.listeners {
        let cache = tls::cache::CacheConfig::new(
            config.server.cert_cache_size,
            config.server.cert_cache_ttl,
        );
        let built = tls::server_config(listener, config.limits.max_client_cert_chain, cache)?;
        summaries.push(built.summary);
        plans.push(ListenerPlan {
            name: listener.name.clone(),
            tls: built.config,
            cache: built.cache,
            upstream: listener.upstream,
            upstream_host: listener.upstream_authority.clone(),
        });
    }
    Ok(Prepared {
        config,
        plans,
        summaries,
    })
}

/// Binds and starts the workers.
pub fn start(prepared: Prepared) -> Result<Server, StartupError> {
    Ok(worker::start(&prepared.config, prepared.plans)?)
}
