//! Shared session-ticket keys (`[server] ticket_keys`) with the real binary: replicas that read
//! the same key file resume each other's tickets (TLS 1.3 and TLS 1.2), a rotation followed by a
//! reload keeps old tickets and encrypts new ones under the new key, other files or other trust
//! refuse them; `certgate tickets new|rotate` and `certgate check` on key files.
//!
//! Every replica is its own process on its own port, with the same listener name ("test") and
//! config; the clients connect to all of them as "localhost", so a rustls client's session
//! cache (keyed by server name) offers a ticket from one replica to another. Each check uses a
//! fresh client (its own cache), so the ticket it offers came from exactly one replica.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use certgate::demo::echo::EchoApp;
use rustls::{ClientConfig, HandshakeKind};

use crate::support::*;

fn certgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `certgate tickets new --file dir/name`, which must succeed.
fn new_key_file(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = certgate(&["tickets", "new", "--file", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    path
}

fn key_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_owner_only(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// One certgate process: listener "test" in `mode` with the test CA, in front of `upstream`,
/// reading `keys` (if any), with an admin listener to see its reloads.
struct Replica {
    bin: Binary,
    admin: SocketAddr,
}

impl Replica {
    fn spawn(mode: &'static str, keys: Option<&Path>, upstream: SocketAddr) -> Replica {
        let admin = dead_addr();
        let mut setup = Setup::new(mode).with_ca();
        let keys = keys
            .map(|p| format!("ticket_keys = \"{}\"\n", p.display()))
            .unwrap_or_default();
        setup.extra = format!("{keys}[admin]\nbind = \"{admin}\"\n");
        let bin = Binary::spawn(&setup, upstream, |_| {});
        Replica { bin, admin }
    }

    fn addr(&self) -> SocketAddr {
        self.bin.addr
    }

    /// `certgate_reloads_total{result}` from the admin listener.
    fn reloads(&self, result: &str) -> u64 {
        let metrics = admin_get(self.admin, "/metrics");
        let name = format!("certgate_reloads_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name.as_str()))
            .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
    }

    /// SIGHUP, then waits until the reload counted as `result`.
    fn reload(&mut self, result: &str) {
        let before = self.reloads(result);
        // SAFETY: signalling a child process this test spawned.
        assert_eq!(
            unsafe { libc::kill(self.bin.pid() as i32, libc::SIGHUP) },
            0
        );
        let until = Instant::now() + Duration::from_secs(10);
        while self.reloads(result) == before {
            assert!(Instant::now() < until, "no reload counted as {result}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The body of a plain-HTTP GET to the admin listener (one request per connection).
fn admin_get(admin: SocketAddr, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn expected() -> &'static Vec<String> {
    static XFCC: OnceLock<Vec<String>> = OnceLock::new();
    XFCC.get_or_init(|| vec![expected_xfcc(&ClientCert::Valid.chain())])
}

/// A client with a valid certificate and an empty session cache of its own.
fn client(tls12: bool) -> Arc<ClientConfig> {
    client_config(ClientCert::Valid, tls12)
}

/// One request through `addr`: served with 200 and the client's certificate, whether the
/// handshake resumed or not. Returns what kind of handshake it was.
fn visit(addr: SocketAddr, client: &Arc<ClientConfig>) -> HandshakeKind {
    let mut tls = connect(addr, client.clone());
    let resp = exchange(&mut tls, &get("/tickets")).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(
        &header_values(&resp.upstream_head(), "x-forwarded-client-cert"),
        expected()
    );
    tls.conn.handshake_kind().expect("handshake finished")
}

/// A client holding a ticket from `addr` (after a full handshake there).
fn ticket_from(addr: SocketAddr, tls12: bool) -> Arc<ClientConfig> {
    let c = client(tls12);
    assert_eq!(visit(addr, &c), HandshakeKind::Full);
    c
}

fn version(tls12: bool) -> &'static str {
    if tls12 {
        "TLS 1.2"
    } else {
        "TLS 1.3"
    }
}

#[test]
fn replicas_sharing_a_key_file_resume_each_others_tickets() {
    let dir = temp_dir("tickets-share");
    let echo = EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let keys = new_key_file(&dir, "tickets.key");
    let replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::spawn("require", Some(&keys), echo.addr))
        .collect();
    for tls12 in [false, true] {
        for from in 0..3 {
            let to = (from + 1) % 3;
            let c = ticket_from(replicas[from].addr(), tls12);
            assert_eq!(
                visit(replicas[to].addr(), &c),
                HandshakeKind::Resumed,
                "{}: a ticket from replica {from} resumes on replica {to}",
                version(tls12)
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Proof that new tickets use the new key: a replica given only the new key resumes them, one
/// given only the old key does not (and that one does resume tickets from before).
#[test]
fn after_rotate_and_reload_old_tickets_resume_and_new_ones_use_the_new_key() {
    let dir = temp_dir("tickets-rotate");
    let echo = EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let keys = new_key_file(&dir, "tickets.key");
    let old_only = dir.join("old-only.key");
    write_owner_only(&old_only, &std::fs::read_to_string(&keys).unwrap());
    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| Replica::spawn("require", Some(&keys), echo.addr))
        .collect();

    // Tickets from before the rotation: per version, one from each replica, and one each for
    // the single-key replicas started later.
    let mut before = Vec::new();
    for tls12 in [false, true] {
        for (i, r) in replicas.iter().enumerate() {
            before.push((tls12, i, ticket_from(r.addr(), tls12)));
        }
    }
    let before_for_new_only: Vec<_> = [false, true]
        .map(|tls12| (tls12, ticket_from(replicas[0].addr(), tls12)))
        .into();
    let before_for_old_only: Vec<_> = [false, true]
        .map(|tls12| (tls12, ticket_from(replicas[1].addr(), tls12)))
        .into();

    let out = certgate(&["tickets", "rotate", "--file", keys.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for r in &mut replicas {
        r.reload("success");
    }
    let lines = key_lines(&keys);
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[1],
        key_lines(&old_only)[0],
        "the old key stays second"
    );
    let new_only = dir.join("new-only.key");
    write_owner_only(&new_only, &format!("{}\n", lines[0]));
    let new_only = Replica::spawn("require", Some(&new_only), echo.addr);
    let old_only = Replica::spawn("require", Some(&old_only), echo.addr);

    for (tls12, i, c) in &before {
        let to = (i + 1) % 3;
        assert_eq!(
            visit(replicas[to].addr(), c),
            HandshakeKind::Resumed,
            "{}: a ticket from replica {i} before the rotation resumes on replica {to} after it",
            version(*tls12)
        );
    }
    for (tls12, c) in &before_for_old_only {
        let v = version(*tls12);
        assert_eq!(
            visit(old_only.addr(), c),
            HandshakeKind::Resumed,
            "{v}: old key only, old ticket"
        );
    }
    for (tls12, c) in &before_for_new_only {
        let v = version(*tls12);
        assert_eq!(
            visit(new_only.addr(), c),
            HandshakeKind::Full,
            "{v}: new key only, old ticket"
        );
    }
    for tls12 in [false, true] {
        let v = version(tls12);
        for (i, r) in replicas.iter().enumerate() {
            let c = ticket_from(r.addr(), tls12);
            assert_eq!(
                visit(new_only.addr(), &c),
                HandshakeKind::Resumed,
                "{v}: a ticket from replica {i} after the rotation is under the new key"
            );
            let c = ticket_from(r.addr(), tls12);
            assert_eq!(
                visit(old_only.addr(), &c),
                HandshakeKind::Full,
                "{v}: a ticket from replica {i} after the rotation is not under the old key"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A replica with another key file, or with the same file but another client-certificate
/// mode (other trust), does a full handshake and still serves the request.
#[test]
fn another_key_file_or_other_trust_refuses_to_resume() {
    let dir = temp_dir("tickets-other");
    let echo = EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let keys = new_key_file(&dir, "tickets.key");
    let other_keys = new_key_file(&dir, "other.key");
    let issuer = Replica::spawn("require", Some(&keys), echo.addr);
    let other_file = Replica::spawn("require", Some(&other_keys), echo.addr);
    let other_trust = Replica::spawn("accept", Some(&keys), echo.addr);
    let no_file = Replica::spawn("require", None, echo.addr);
    for tls12 in [false, true] {
        let v = version(tls12);
        for (what, r) in [
            ("another key file", &other_file),
            ("the same file, other trust", &other_trust),
            ("no key file", &no_file),
        ] {
            let c = ticket_from(issuer.addr(), tls12);
            assert_eq!(visit(r.addr(), &c), HandshakeKind::Full, "{v}: {what}");
            // The refused client got a fresh ticket there, which resumes there.
            assert_eq!(visit(r.addr(), &c), HandshakeKind::Resumed, "{v}: {what}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_key_file_stops_startup_and_fails_a_reload_keeping_the_running_keys() {
    let dir = temp_dir("tickets-bad");
    let echo = EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let keys = new_key_file(&dir, "tickets.key");
    let mut replica = Replica::spawn("require", Some(&keys), echo.addr);
    let peer = Replica::spawn("require", Some(&keys), echo.addr);
    let good = std::fs::read_to_string(&keys).unwrap();

    // Startup: exit 64 naming the file.
    write_owner_only(&keys, "0123\n");
    let config = replica.bin.dir.join("certgate.toml");
    let out = certgate(&["--config", config.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("tickets.key") && stderr.contains("line 1"),
        "{stderr}"
    );

    // Reload: refused, the running keys stay: a ticket from the peer still resumes.
    replica.reload("failure");
    write_owner_only(&keys, &good);
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    replica.reload("failure");
    for tls12 in [false, true] {
        let c = ticket_from(peer.addr(), tls12);
        assert_eq!(visit(replica.addr(), &c), HandshakeKind::Resumed);
    }
    assert_eq!(replica.reloads("success"), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tickets_new_writes_one_owner_only_key_and_never_overwrites() {
    let dir = temp_dir("tickets-new");
    let path = dir.join("tickets.key");
    let arg = path.to_str().unwrap();
    let out = certgate(&["tickets", "new", "--file", arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.contains(arg) && stdout.contains("created"),
        "{stdout}"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let lines = key_lines(&path);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].len(), 160);
    assert!(lines[0].bytes().all(|b| b.is_ascii_hexdigit()));
    // The name printed is the key's first 16 bytes.
    assert!(stdout.contains(&lines[0][..32]), "{stdout}");

    let out = certgate(&["tickets", "new", "--file", arg]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains(arg) && stderr.contains("already exists"),
        "{stderr}"
    );
    assert_eq!(key_lines(&path), lines, "the existing file is untouched");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tickets_rotate_puts_the_new_key_first_and_keeps_at_most_keep() {
    let dir = temp_dir("tickets-keep");
    let path = new_key_file(&dir, "tickets.key");
    let arg = path.to_str().unwrap();
    let first = key_lines(&path);
    let rotate = |keep: &str| {
        let out = certgate(&["tickets", "rotate", "--file", arg, "--keep", keep]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        stdout
    };
    rotate("2");
    let second = key_lines(&path);
    assert_eq!(second.len(), 2);
    assert_eq!(second[1], first[0]);
    let said = rotate("2");
    let third = key_lines(&path);
    assert_eq!(third.len(), 2, "--keep 2 keeps two keys");
    assert_eq!(third[1], second[0]);
    assert!(!third.contains(&first[0]), "the oldest key is gone");
    assert!(
        said.contains(&third[0][..32]) && said.contains("dropped"),
        "{said}"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    // The default keeps three.
    let out = certgate(&["tickets", "rotate", "--file", arg]);
    assert!(out.status.success());
    assert_eq!(key_lines(&path).len(), 3);
    // Keeping one would drop the key of every ticket in use.
    let out = certgate(&["tickets", "rotate", "--file", arg, "--keep", "1"]);
    assert!(!out.status.success());
    assert_eq!(key_lines(&path).len(), 3);
    // Only the key file is left: no temporary file behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_names_a_bad_key_file_and_says_why() {
    let dir = temp_dir("tickets-check");
    write_pki(&dir);
    let config = dir.join("certgate.toml");
    let text_with_keys = config_text(
        &Setup {
            extra: "ticket_keys = \"tickets.key\"\n".into(),
            ..Setup::new("require").with_ca()
        },
        "127.0.0.1:8080".parse().unwrap(),
    );
    std::fs::write(&config, text_with_keys).unwrap();
    let keys = dir.join("tickets.key");
    let check = || certgate(&["check", "--config", config.to_str().unwrap()]);

    let out = check();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("tickets.key") && stderr.contains("cannot open"));

    let good = format!("{}\n", "ab".repeat(80));
    let cases: [(&str, &str, u32, &str); 5] = [
        ("world-readable", &good, 0o644, "0644"),
        ("group-readable", &good, 0o640, "0640"),
        ("empty", "", 0o600, "no key"),
        (
            "too short",
            &good[..100],
            0o600,
            "line 1: expected 160 hex digits",
        ),
        (
            "not hex",
            &good.replace("ab", "zz"),
            0o600,
            "line 1: not hexadecimal",
        ),
    ];
    for (what, contents, mode, why) in cases {
        std::fs::write(&keys, contents).unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = check();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{what}: {stderr}");
        assert!(stderr.contains(keys.to_str().unwrap()), "{what}: {stderr}");
        assert!(stderr.contains(why), "{what}: expected {why:?} in {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{what}: {stderr}");
    }

    write_owner_only(&keys, &good);
    let out = check();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("ticket_keys=") && stdout.contains(&"ab".repeat(16)),
        "{stdout}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
