//! Test equipment: a test PKI made with rcgen, certgate started in-process on 127.0.0.1 with the
//! echo app as upstream, and a blocking rustls client that speaks raw HTTP/1.1.

#[allow(unused_imports)]
use std::io::Read as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use certgate::demo::echo::EchoApp;
use certgate::pki::{self, Ca, Issued};
use certgate::worker::Server;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// Every certificate the tests need, made once per test binary.
pub struct TestPki {
    pub root: Ca,
    pub intermediate: Ca,
    pub server: Issued,
    pub client_via_intermediate: Issued,
    pub client_by_root: Issued,
    pub self_signed: Issued,
    pub foreign: Issued,
    pub expired: Issued,
    pub other_client: Issued,
}

pub fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let root = Ca::root("certgate test root").expect("root");
        let intermediate = root
            .intermediate("certgate test intermediate")
            .expect("int");
        let foreign_ca = Ca::root("foreign root").expect("foreign");
        TestPki {
            server: root
                .server_cert(&["localhost", "127.0.0.1"])
                .expect("server"),
            client_via_intermediate: intermediate.client_cert("client-a").expect("client"),
            client_by_root: root.client_cert("client-root").expect("client"),
            self_signed: pki::self_signed_client("self-signed").expect("self"),
            foreign: foreign_ca.client_cert("foreign-client").expect("foreign"),
            expired: root.expired_client_cert("expired-client").expect("expired"),
            other_client: intermediate.client_cert("client-b").expect("client"),
            root,
            intermediate,
        }
    })
}

/// Which client certificate a test client presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientCert {
    None,
    /// Issued by the intermediate; the client sends leaf + intermediate.
    Valid,
    ValidB,
    ByRoot,
    SelfSigned,
    Foreign,
    Expired,
}

impl ClientCert {
    /// The chain the client sends, leaf first.
    pub fn chain(self) -> Vec<&'static Issued> {
        let p = pki();
        match self {
            ClientCert::None => vec![],
            ClientCert::Valid => vec![&p.client_via_intermediate, p.intermediate.issued()],
            ClientCert::ValidB => vec![&p.other_client, p.intermediate.issued()],
            ClientCert::ByRoot => vec![&p.client_by_root],
            ClientCert::SelfSigned => vec![&p.self_signed],
            ClientCert::Foreign => vec![&p.foreign],
            ClientCert::Expired => vec![&p.expired],
        }
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "certgate-it-{}-{}-{}",
        std::process::id(),
        tag,
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Writes the test PKI's files into `dir`.
pub fn write_pki(dir: &Path) {
    let p = pki();
    std::fs::write(dir.join("server.pem"), &p.server.cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &p.server.key_pem).unwrap();
    std::fs::write(dir.join("ca.pem"), &p.root.issued().cert_pem).unwrap();
}

/// Options for one certgate listener in a test.
#[derive(Clone)]
pub struct Setup {
    pub mode: &'static str,
    pub client_ca: bool,
    pub resumption: bool,
    pub upstream: Option<SocketAddr>,
    pub workers: usize,
    /// Extra TOML appended after `[server]` (further sections such as `[timeouts]`).
    pub extra: String,
}

impl Setup {
    pub fn new(mode: &'static str) -> Self {
        Setup {
            mode,
            client_ca: false,
            resumption: true,
            upstream: None,
            workers: 1,
            extra: String::new(),
        }
    }
    pub fn with_ca(mut self) -> Self {
        self.client_ca = true;
        self
    }
}

/// certgate running in this process, with its echo upstream.
pub struct Running {
    pub addr: SocketAddr,
    pub echo: Option<EchoApp>,
    pub server: Option<Server>,
    pub dir: PathBuf,
}

impl Running {
    /// Stops the server and returns each worker's verified-chain cache counts.
    pub fn stop(mut self) -> Vec<certgate::tls::cache::Stats> {
        self.server.take().map(|s| s.shutdown()).unwrap_or_default()
    }

    pub fn echo(&self) -> &EchoApp {
        self.echo.as_ref().expect("this setup has an echo upstream")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn config_text(setup: &Setup, upstream: SocketAddr) -> String {
    let ca = if setup.client_ca {
        "client_ca = \"ca.pem\"\n"
    } else {
        ""
    };
    format!(
        "[server]\nworkers = {workers}\npin_workers = false\n{extra}\n\
         [[listener]]\nname = \"test\"\nbind = \"127.0.0.1:0\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         client_certificate_mode = \"{mode}\"\n{ca}upstream = \"{upstream}\"\nsession_resumption = {res}\n",
        extra = setup.extra,
        workers = setup.workers,
        mode = setup.mode,
        res = setup.resumption,
    )
}

pub fn start(setup: Setup) -> Running {
    let dir = temp_dir(setup.mode);
    write_pki(&dir);
    let (echo, upstream) = match setup.upstream {
        Some(addr) => (None, addr),
        None => {
            let echo = EchoApp::start("127.0.0.1:0".parse().unwrap()).expect("echo app");
            let addr = echo.addr;
            (Some(echo), addr)
        }
    };
    let text = config_text(&setup, upstream);
    let config = certgate::config::Config::from_toml(&text, &dir).expect("test config");
    let prepared = certgate::app::prepare(config).expect("prepare");
    let server = certgate::app::start(prepared).expect("start");
    let addr = server.local_addrs()[0];
    Running {
        addr,
        echo,
        server: Some(server),
        dir,
    }
}

pub fn roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add(pki().root.issued().cert_der.clone()).unwrap();
    roots
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client config presenting `cert`; TLS 1.3 unless `tls12`.
pub fn client_config(cert: ClientCert, tls12: bool) -> Arc<ClientConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots());
    let mut config = match cert {
        ClientCert::None => builder.with_no_client_auth(),
        c => {
            let chain = c.chain();
            let certs: Vec<CertificateDer<'static>> =
                chain.iter().map(|i| i.cert_der.clone()).collect();
            builder
                .with_client_auth_cert(certs, chain[0].key_der.clone_key())
                .unwrap()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

pub type Tls = StreamOwned<ClientConnection, TcpStream>;

pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Tls {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(conn, tcp)
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The request head the echo app received, as it returned it.
    pub fn upstream_head(&self) -> String {
        let t = self.text();
        match t.find("body-bytes:") {
            Some(i) => t[..i].to_owned(),
            None => t,
        }
    }
}

/// Reads one response (Content-Length, chunked or close-delimited) from a blocking reader.
pub fn read_response<R: BufRead>(r: &mut R, head_request: bool) -> std::io::Result<Response> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        if r.read_until(b'\n', &mut head)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if &head[before..] == b"\r\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&head).map_err(std::io::Error::other)?;
    let status = resp.code.unwrap_or(0);
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap(),
            );
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    let mut body = Vec::new();
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
    } else if chunked {
        let mut decoder = certgate::http::chunked::ChunkedDecoder::new(8192);
        loop {
            let input = r.fill_buf()?;
            if input.is_empty() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let step = decoder
                .decode(input)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            if let Some(d) = step.data.clone() {
                body.extend_from_slice(&input[d]);
            }
            let c = step.consumed;
            r.consume(c);
            if step.done {
                break;
            }
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        head: String::from_utf8_lossy(&head).into_owned(),
        body,
    })
}

/// Sends raw request bytes on a fresh TLS connection and reads one response.
pub fn request(addr: SocketAddr, cert: ClientCert, raw: &[u8]) -> Result<Response, String> {
    let mut tls = connect(addr, client_config(cert, false));
    exchange(&mut tls, raw)
}

pub fn exchange(tls: &mut Tls, raw: &[u8]) -> Result<Response, String> {
    tls.write_all(raw).map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(tls);
    read_response(&mut reader, raw.starts_with(b"HEAD ")).map_err(|e| e.to_string())
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// The XFCC header value expected for a chain, computed independently of certgate: SHA-256 by
/// ring, PEM by `openssl x509` (the reference encoder), Envoy's five substitutions by hand.
pub fn expected_xfcc(chain: &[&Issued]) -> String {
    let hash: String = ring::digest::digest(&ring::digest::SHA256, chain[0].cert_der.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let pems: Vec<String> = chain
        .iter()
        .map(|c| openssl_pem(c.cert_der.as_ref()))
        .collect();
    let enc = |s: &str| {
        s.replace('\n', "%0A")
            .replace(' ', "%20")
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    };
    format!(
        "Hash={hash};Cert=\"{}\";Chain=\"{}\"",
        enc(&pems[0]),
        enc(&pems.concat())
    )
}

fn openssl_pem(der: &[u8]) -> String {
    let mut child = std::process::Command::new("openssl")
        .args(["x509", "-inform", "DER", "-outform", "PEM"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl must be installed for the tests (.ci/run installs it)");
    child.stdin.take().unwrap().write_all(der).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Lines of a head with the given name (case-insensitive), values only.
pub fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
        .collect()
}

/// A local address on which nothing listens.
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Kills the child when a test fails, so no certgate outlives its test (or holds its pipes).
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The certgate binary serving `setup` in front of `upstream`, on a free fixed port.
pub struct Binary {
    pub child: Reaped,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Binary {
    /// Writes the PKI and config to a fresh folder, lets `adjust` change the command (env,
    /// limits, where stderr goes), starts it and waits until it listens.
    pub fn spawn(
        setup: &Setup,
        upstream: SocketAddr,
        adjust: impl FnOnce(&mut std::process::Command),
    ) -> Binary {
        let dir = temp_dir("binary");
        write_pki(&dir);
        let port = dead_addr().port();
        let text =
            config_text(setup, upstream).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
        let path = dir.join("certgate.toml");
        std::fs::write(&path, text).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_certgate"));
        cmd.arg("--config")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        adjust(&mut cmd);
        let child = Reaped(cmd.spawn().unwrap());
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < until,
                "certgate did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Binary { child, addr, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling a child process this test spawned.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) }, 0);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < until,
                "certgate did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
