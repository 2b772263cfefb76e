//! `certgate demo`: a throwaway PKI, the built-in echo app as upstream, and one `accept`-mode
//! listener, so a newcomer sees the forwarded client certificate with two `curl` commands.

pub mod echo;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::app::{self, StartupError};
use crate::pki;
use crate::worker::Server;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot create the demo folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the demo certificates: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("cannot start the echo app: {0}")]
    Echo(std::io::Error),
    #[error(transparent)]
    Startup(#[from] StartupError),
}

/// A running demo: the server, its echo upstream and the folder holding the files.
pub struct Demo {
    pub server: Server,
    pub echo: echo::EchoApp,
    pub dir: PathBuf,
    pub files: pki::DemoFiles,
    pub addr: SocketAddr,
}

/// Creates the files under `dir` and starts everything; `bind` is the TLS listener address.
pub fn start(dir: &Path, bind: SocketAddr) -> Result<Demo, DemoError> {
    std::fs::create_dir_all(dir).map_err(|source| DemoError::Folder {
        path: dir.to_owned(),
        source,
    })?;
    let files = pki::write_demo_set(dir)?;
    let echo = echo::EchoApp::start(
        "127.0.0.1:0"
            .parse()
            .map_err(|_| DemoError::Echo(std::io::Error::other("bad echo address")))?,
    )
    .map_err(DemoError::Echo)?;
    let config = format!(
        "[server]\nworkers = 1\npin_workers = false\n\n\
         [[listener]]\nname = \"demo\"\nbind = \"{bind}\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         client_certificate_mode = \"accept\"\nupstream = \"{up}\"\n",
        up = echo.addr
    );
    let config_path = dir.join("certgate.toml");
    std::fs::write(&config_path, config).map_err(|source| DemoError::Folder {
        path: config_path.clone(),
        source,
    })?;
    let server = app::start(app::load(&config_path)?)?;
    let addr = server.local_addrs()[0];
    Ok(Demo {
        server,
        echo,
        dir: dir.to_owned(),
        files,
        addr,
    })
}

impl Demo {
    /// The text printed for the user: what runs where, and commands to paste.
    pub fn instructions(&self) -> String {
        let d = self.dir.display();
        let url = format!("https://localhost:{}/hello", self.addr.port());
        format!(
            "certgate demo is running.\n\
             \n  listener   https://{addr} (client_certificate_mode = accept)\n  \
             upstream   echo app on http://{echo} (answers with the request head it received)\n  \
             files      {d}/ (ca.pem, server.pem, client.pem, client.key, client.p12, certgate.toml)\n\
             \nWithout a client certificate (no X-Forwarded-Client-Cert reaches the app):\n  \
             curl --cacert {d}/ca.pem {url}\n\
             \nWith the client certificate as PEM:\n  \
             curl --cacert {d}/ca.pem --cert {d}/client.pem --key {d}/client.key {url}\n\
             \nWith the client certificate as PKCS#12 (password: certgate):\n  \
             curl --cacert {d}/ca.pem --cert-type P12 --cert {d}/client.p12:certgate {url}\n\
             \nA forged header never gets through:\n  \
             curl --cacert {d}/ca.pem -H 'X-Forwarded-Client-Cert: Hash=forged' {url}\n\
             \nPress Ctrl-C to stop.\n",
            addr = self.addr,
            echo = self.echo.addr,
        )
    }
}
