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
use rustls::pki_types::ServerName;
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

/// certgate in this process on config `text` (relative paths against `dir`), with `echo` kept
/// alive as its upstream if given.
pub fn start_toml(dir: PathBuf, text: &str, echo: Option<EchoApp>) -> Running {
    let config = certgate::config::Config::from_toml(text, &dir).expect("test config");
    let server =
        certgate::app::start(certgate::app::prepare(config).expect("prepare")).expect("start");
    Running {
        addr: server.local_addrs()[0],
        echo,
        server: Some(server),
        dir,
    }
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
    client_config_for(&cert.chain(), tls12, false)
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

/// One line (up to and including `\n`) of decrypted bytes, read byte by byte so nothing after
/// it is consumed.
pub fn read_line(tls: &mut Tls) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while tls.read(&mut byte).expect("read") == 1 {
        got.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(got).unwrap()
}

/// A local address on which nothing listens.
pub fn dead_addr() -> SocketAddr {
    local(reserve_port())
}

/// A port for a test to listen on (or to find nothing on), that no other test of this run is
/// handed. Not from bind(0): that hands out ephemeral ports, which the kernel may give the
/// next bind(0) of a parallel test or an outgoing connection, and certgate listens with
/// SO_REUSEPORT, so two tests handed one port would share it silently (and one's exit would
/// reset the other's connections). These come from a block below the ephemeral range
/// (32768+), one block per test process, each checked free when handed out.
pub fn reserve_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const BLOCK: usize = 1000;
    let base = 10_000 + (std::process::id() as usize % 20) * BLOCK;
    loop {
        let port = (base + NEXT.fetch_add(1, Ordering::SeqCst) % BLOCK) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
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

// ---------------------------------------------------------------------------------------------
// Operations tests (ops*.rs): certgate as a child process running a config the test wrote,
// with its stdout and stderr captured, its admin endpoint, and its certificates swapped on disk.
// ---------------------------------------------------------------------------------------------

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `cond` every 20 ms for up to `secs` seconds; panics naming `what` when it never holds.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < until,
            "timed out after {secs} s waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything a child wrote to one of its pipes, collected by a thread.
#[derive(Clone, Default)]
pub struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    fn collect(mut from: impl std::io::Read + Send + 'static) -> Captured {
        let captured = Captured::default();
        let into = captured.0.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => into
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend_from_slice(&buf[..n]),
                }
            }
        });
        captured
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// Complete lines (the last one ended with a newline) containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        let text = self.text();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

/// certgate running `dir/certgate.toml`, stdout and stderr piped into the test.
pub struct Proc {
    pub child: Reaped,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub stdout: Captured,
    pub stderr: Captured,
}

impl Proc {
    /// Writes `config` as `dir/certgate.toml` and starts certgate on it (info-level logs);
    /// `adjust` may change the command (environment). Returns at once: wait with
    /// [`Proc::wait_tcp`] or [`Proc::wait_ready`].
    pub fn spawn(
        dir: &Path,
        config: &str,
        adjust: impl FnOnce(&mut std::process::Command),
    ) -> Proc {
        let path = dir.join("certgate.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_certgate"));
        cmd.arg("--config")
            .arg(&path)
            .env("CERTGATE_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("CERTGATE_EPOLL")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        adjust(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let stdout = Captured::collect(child.stdout.take().unwrap());
        let stderr = Captured::collect(child.stderr.take().unwrap());
        Proc {
            child: Reaped(child),
            dir: dir.to_path_buf(),
            config: path,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Panics (with the stderr so far) when certgate has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.0.try_wait().unwrap() {
            panic!("certgate exited ({status}): {}", self.stderr.text());
        }
    }

    /// Waits until something accepts TCP connections on `port` (each try is a connection that
    /// ends before its handshake: it counts in the metrics).
    pub fn wait_tcp(&mut self, port: u16) -> SocketAddr {
        let addr = local(port);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            self.assert_running();
            assert!(
                std::time::Instant::now() < until,
                "certgate did not listen on {addr}: {}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        addr
    }

    /// Waits until the admin listener on `admin` says ready (no TLS listener is touched).
    pub fn wait_ready(&mut self, admin: SocketAddr) {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if matches!(http_get(admin, "/readyz"), Ok(r) if r.status == 200) {
                return;
            }
            self.assert_running();
            assert!(
                std::time::Instant::now() < until,
                "certgate never became ready: {}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling a child process this test spawned (and has not reaped).
        assert_eq!(unsafe { libc::kill(self.pid() as i32, signal) }, 0);
    }

    /// Sends SIGHUP and waits until stderr has `n` lines saying the reload happened, whether it
    /// succeeded or failed; returns the newest such line.
    pub fn reload(&mut self, n: usize) -> String {
        self.signal(libc::SIGHUP);
        self.wait_reloads(n)
    }

    /// Waits (10 s at most) until stderr holds `n` reload outcome lines; returns the newest.
    pub fn wait_reloads(&mut self, n: usize) -> String {
        let outcomes = |s: &Captured| {
            let mut lines = s.lines_with("reloaded ");
            lines.extend(s.lines_with("reload failed"));
            lines
        };
        wait_for("a reload outcome on stderr", 10, || {
            outcomes(&self.stderr).len() >= n
        });
        let text = self.stderr.text();
        let newest = text
            .lines()
            .filter(|l| l.contains("reloaded ") || l.contains("reload failed"))
            .nth(n - 1)
            .unwrap()
            .to_owned();
        assert_eq!(outcomes(&self.stderr).len(), n, "{text}");
        newest
    }

    /// Sends SIGTERM and waits (15 s at most) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let until = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < until,
                "certgate did not exit: {}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// certgate's diagnostic lines go to a pipe here: they must carry no ANSI color codes.
    pub fn assert_plain_stderr(&self) {
        let text = self.stderr.text();
        assert!(
            !text.contains("\x1b["),
            "ANSI escapes on a piped stderr: {text:?}"
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `[[listener]]` section (cert `server.pem`, key `server.key`; `client_ca` when given).
pub fn listener_toml(
    name: &str,
    port: u16,
    mode: &str,
    client_ca: Option<&str>,
    upstream: SocketAddr,
) -> String {
    let ca = client_ca.map_or(String::new(), |ca| format!("client_ca = \"{ca}\"\n"));
    format!(
        "\n[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:{port}\"\ncert = \"server.pem\"\n\
         key = \"server.key\"\nclient_certificate_mode = \"{mode}\"\n{ca}upstream = \"{upstream}\"\n"
    )
}

/// `[server]` with `workers` unpinned workers, then `extra` (more keys or sections).
pub fn server_toml(workers: usize, extra: &str) -> String {
    format!("[server]\nworkers = {workers}\npin_workers = false\n{extra}\n")
}

/// A new server certificate for localhost / 127.0.0.1, issued by the test root (so test
/// clients trust it) and different from `pki().server`.
pub fn new_server_cert() -> Issued {
    pki()
        .root
        .server_cert(&["localhost", "127.0.0.1"])
        .expect("server cert")
}

/// Writes a server certificate and key as `server.pem` / `server.key` in `dir`.
pub fn write_server_cert(dir: &Path, cert: &Issued) {
    std::fs::write(dir.join("server.pem"), &cert.cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &cert.key_pem).unwrap();
}

/// The leaf certificate the server presented on this connection (the handshake runs first).
pub fn served_leaf(tls: &mut Tls) -> Vec<u8> {
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("handshake");
    }
    tls.conn.peer_certificates().expect("a server certificate")[0].to_vec()
}

/// Lowercase hex SHA-256 of `bytes`, by ring.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A client config presenting `chain` (leaf first; empty: none), TLS 1.3 only or TLS 1.2
/// only. Connections made with the same returned config share its session store, so a second
/// connection tries to resume; `tls12_session_ids` makes TLS 1.2 resume by session ID, never
/// by ticket.
pub fn client_config_for(
    chain: &[&Issued],
    tls12: bool,
    tls12_session_ids: bool,
) -> Arc<ClientConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots());
    let mut config = if chain.is_empty() {
        builder.with_no_client_auth()
    } else {
        let certs = chain.iter().map(|i| i.cert_der.clone()).collect();
        builder
            .with_client_auth_cert(certs, chain[0].key_der.clone_key())
            .unwrap()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if tls12_session_ids {
        config.resumption = rustls::client::Resumption::in_memory_sessions(32)
            .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
    }
    Arc::new(config)
}

/// One request on a new connection made with `config`: the response, and whether the
/// handshake resumed a session.
pub fn request_with(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    raw: &[u8],
) -> Result<(Response, bool), String> {
    let mut tls = connect(addr, config);
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let resp = exchange(&mut tls, raw)?;
    let resumed = tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    Ok((resp, resumed))
}

/// A plain HTTP/1.1 exchange with the admin listener: raw request bytes in, response out.
pub fn http_exchange(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Response> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.write_all(raw)?;
    read_response(&mut BufReader::new(tcp), raw.starts_with(b"HEAD "))
}

pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    http_exchange(addr, &get(path))
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` page: every `name{labels} value` line (comments skipped).
#[derive(Debug, Clone)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses the text format. Panics on a line it cannot read: a scraper would choke too.
    pub fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("no value: {line:?}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value: {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, std::collections::BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                    (name, parse_labels(body, line))
                }
            };
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        Scrape { samples }
    }

    /// The value of the series with exactly these labels; `None` when it is absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: std::collections::BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut found = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want);
        let first = found.next()?;
        assert!(found.next().is_none(), "{name}{labels:?} appears twice");
        Some(first.value)
    }

    /// Like [`Scrape::get`], with an absent series read as 0 (series that appear on first use).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

fn parse_labels(body: &str, line: &str) -> std::collections::BTreeMap<String, String> {
    let mut labels = std::collections::BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label: {line:?}"));
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("bad escape: {line:?}"),
                },
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value: {line:?}"),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    labels
}

/// Scrapes `/metrics` on the admin listener, checking status and content type.
pub fn scrape(admin: SocketAddr) -> Scrape {
    let resp = http_get(admin, "/metrics").expect("scrape");
    assert_eq!(resp.status, 200, "{}", resp.head);
    let types = header_values(&resp.head, "content-type");
    assert_eq!(
        types,
        vec!["text/plain; version=0.0.4; charset=utf-8".to_owned()],
        "{}",
        resp.head
    );
    Scrape::parse(&resp.text())
}

/// `N` distinct ports on 127.0.0.1 for this test alone (see [`reserve_port`]).
pub fn free_ports<const N: usize>() -> [u16; N] {
    std::array::from_fn(|_| reserve_port())
}

/// An `[admin]` section on 127.0.0.1:`port`.
pub fn admin_toml(port: u16) -> String {
    format!("\n[admin]\nbind = \"127.0.0.1:{port}\"\n")
}

/// The echo app on a free port.
pub fn echo_app() -> EchoApp {
    EchoApp::start("127.0.0.1:0".parse().unwrap()).expect("echo app")
}

/// A Python test peer from `tests/tools/` that prints its port, then one JSON line per
/// connection it handled (pp_peer.py, up_app.py); killed when dropped.
pub struct PyPeer {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    pub port: u16,
}

impl PyPeer {
    /// Starts `tests/tools/<script>` with `args`.
    pub fn start(script: &str, args: &[&str]) -> PyPeer {
        let path = format!("{}/tests/tools/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = std::process::Command::new("python3")
            .arg(&path)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{script} did not start: {line:?}"));
        PyPeer { child, out, port }
    }

    /// The JSON line about the next connection the peer handled.
    pub fn next(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("a line from the peer");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
