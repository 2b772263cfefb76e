//! Shared bench setup: a test PKI and certgate's own per-listener TLS configs built from it.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use certgate::pki::{Ca, Issued};
use certgate::tls::cache::CacheConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub struct Pki {
    pub root: Ca,
    pub intermediate: Ca,
    pub server: Issued,
    pub client: Issued,
}

pub fn pki() -> Pki {
    let root = Ca::root("bench root").unwrap();
    let intermediate = root.intermediate("bench intermediate").unwrap();
    Pki {
        server: root.server_cert(&["localhost"]).unwrap(),
        client: intermediate.client_cert("bench client").unwrap(),
        root,
        intermediate,
    }
}

/// A directory holding the files a bench listener's TOML names: `server.pem`, `server.key`
/// and `ca.pem` (the root, for `client_ca`).
pub fn listener_files(pki: &Pki) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("certgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("server.pem"), &pki.server.cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &pki.server.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), &pki.root.issued().cert_pem).unwrap();
    dir
}

/// certgate's ServerConfig for a listener in `mode`, through the real config and TLS setup.
pub fn server(
    pki: &Pki,
    mode: &str,
    client_ca: bool,
    resumption: bool,
    cache_size: usize,
) -> Arc<ServerConfig> {
    let dir = listener_files(pki);
    let ca = if client_ca {
        "client_ca = \"ca.pem\"\n"
    } else {
        ""
    };
    let text = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         client_certificate_mode = \"{mode}\"\n{ca}upstream = \"127.0.0.1:9\"\nsession_resumption = {resumption}\n"
    );
    let config = certgate::config::Config::from_toml(&text, &dir).unwrap();
    let cache = CacheConfig::new(cache_size, Duration::from_secs(300));
    certgate::tls::server_config(&config.listeners[0], 5, cache)
        .unwrap()
        .config
}

/// A TLS 1.3 client (X25519 first, rustls' default) with or without the client certificate.
pub fn client(pki: &Pki, with_cert: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.root.issued().cert_der.clone()).unwrap();
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
    let config = if with_cert {
        let chain: Vec<CertificateDer<'static>> = vec![
            pki.client.cert_der.clone(),
            pki.intermediate.issued().cert_der.clone(),
        ];
        builder
            .with_client_auth_cert(chain, pki.client.key_der.clone_key())
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(config)
}

/// Runs one in-memory handshake and returns the time spent in the server's rustls calls only.
pub fn server_side_handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> Duration {
    let mut c =
        rustls::ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut spent = Duration::ZERO;
    let start = std::time::Instant::now();
    let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
    spent += start.elapsed();
    let mut to_server = Vec::with_capacity(8192);
    let mut to_client = Vec::with_capacity(8192);
    while c.is_handshaking() || s.is_handshaking() || c.wants_write() {
        to_server.clear();
        while c.wants_write() {
            c.write_tls(&mut to_server).unwrap();
        }
        let t = std::time::Instant::now();
        if !to_server.is_empty() {
            let mut input = &to_server[..];
            while !input.is_empty() {
                s.read_tls(&mut input).unwrap();
                s.process_new_packets().unwrap();
            }
        }
        to_client.clear();
        while s.wants_write() {
            s.write_tls(&mut to_client).unwrap();
        }
        spent += t.elapsed();
        if !to_client.is_empty() {
            let mut input = &to_client[..];
            while !input.is_empty() {
                c.read_tls(&mut input).unwrap();
                c.process_new_packets().unwrap();
            }
        }
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() {
            break;
        }
    }
    spent
}
