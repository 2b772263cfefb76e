//! TLS toward the upstream (`upstream = "https://…"`): the rustls client config a listener's
//! upstream pool connects with, built once at load from `upstream_ca`, `upstream_server_name`
//! and the optional `upstream_cert`/`upstream_key`.
//!
//! Each worker gets its own copy with its own session store ([`UpstreamTlsPlan::for_worker`]),
//! so resuming a session to the app (the common case once a pool reconnects) takes no lock
//! that another worker could hold.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;

use super::{load_certs, load_key, load_roots, provider, TlsError, ALPN_HTTP11};
use crate::config::Listener;

/// Sessions to the app remembered per worker and listener: one app (one server name) needs
/// only a few, but rustls keeps TLS 1.3 tickets per name, several each.
const SESSIONS_PER_WORKER: usize = 32;

/// What every worker's pool needs to speak TLS to one listener's upstream.
#[derive(Clone)]
pub struct UpstreamTlsPlan {
    config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
    /// SHA-256 over the files and the name: a reload that changes none of them keeps the
    /// workers' pools (and their resumable sessions); any change starts them afresh.
    pub fingerprint: [u8; 32],
}

impl UpstreamTlsPlan {
    /// Reads and checks every file; each failure names its file.
    pub fn load(listener: &Listener) -> Result<Option<Self>, TlsError> {
        let Some(up) = &listener.upstream_tls else {
            return Ok(None);
        };
        let setup = |what: String| TlsError::Setup {
            listener: listener.name.clone(),
            what,
        };
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut hash_file = |path: &std::path::Path| -> Result<(), TlsError> {
            let bytes = super::read_file(path)?;
            digest.update(&(bytes.len() as u64).to_be_bytes());
            digest.update(&bytes);
            Ok(())
        };
        hash_file(&up.ca)?;
        let roots = load_roots(&up.ca)?;
        if roots.is_empty() {
            return Err(TlsError::BadCa {
                path: up.ca.clone(),
                what: "holds no certificate to trust (upstream_ca)".into(),
            });
        }
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| setup(format!("upstream TLS versions: {e}")))?
            .with_root_certificates(roots);
        let mut config = match &up.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                hash_file(cert)?;
                hash_file(key)?;
                builder
                    .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                    .map_err(|e| TlsError::KeyMismatch {
                        listener: listener.name.clone(),
                        cert: cert.clone(),
                        key: key.clone(),
                        what: e.to_string(),
                    })?
            }
        };
        // The upstream speaks HTTP/1.1 to us; a `tcp` listener relays an unknown protocol and
        // offers none.
        if listener.protocol == crate::config::ListenerProtocol::Http {
            config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        }
        let server_name = ServerName::try_from(up.server_name.clone())
            .map_err(|e| setup(format!("upstream_server_name {:?}: {e}", up.server_name)))?;
        digest.update(up.server_name.as_bytes());
        digest.update(&[u8::from(up.client_cert.is_some())]);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(digest.finish().as_ref());
        Ok(Some(UpstreamTlsPlan {
            config: Arc::new(config),
            server_name,
            fingerprint,
        }))
    }

    /// A worker's own copy: the same trust and identity, its own session store.
    pub fn for_worker(&self) -> Arc<ClientConfig> {
        let mut config = (*self.config).clone();
        config.resumption = Resumption::in_memory_sessions(SESSIONS_PER_WORKER);
        Arc::new(config)
    }

    /// One line for `certgate check` and the startup log.
    pub fn summary(&self, listener: &Listener) -> String {
        let Some(up) = &listener.upstream_tls else {
            return String::new();
        };
        format!(
            "; upstream TLS to {:?} trusting {}{}",
            up.server_name,
            up.ca.display(),
            match &up.client_cert {
                Some((cert, _)) => format!(", client certificate {}", cert.display()),
                None => String::new(),
            }
        )
    }
}
