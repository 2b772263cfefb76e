//! Operations end to end, reloads: a server certificate rotated under load, a client CA
//! replaced (nobody trusted before gets in after, returning or resuming), every kind of broken
//! reload, listeners added, removed and moved, and a Kubernetes-style symlink rotation seen by
//! `reload_interval`. Each test runs the certgate binary on a config of its own.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certgate::pki::{Ca, Issued};

use crate::support::*;

/// The leaf certificate a new connection with `config` is served, after one request on it.
fn leaf_served(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut tls = connect(addr, config);
    let leaf = served_leaf(&mut tls);
    let resp = exchange(&mut tls, &get("/leaf")).unwrap();
    assert_eq!(resp.status, 200);
    leaf
}

fn is_refused(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect(addr), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

// ---------------------------------------------------------------------------------------------
// Certificate rotation under load
// ---------------------------------------------------------------------------------------------

/// What the load threads saw.
#[derive(Default)]
struct Load {
    /// Requests answered 200, before and after the reload was confirmed.
    ok_before: AtomicUsize,
    ok_after: AtomicUsize,
    /// Anything else: a failed connect, handshake, request or a status other than 200.
    failures: Mutex<Vec<String>>,
    /// Leaves served to connections opened after the reload was confirmed.
    leaves_after: Mutex<Vec<Vec<u8>>>,
}

impl Load {
    fn ok(&self, after: bool) {
        let n = if after {
            &self.ok_after
        } else {
            &self.ok_before
        };
        n.fetch_add(1, Ordering::SeqCst);
    }

    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

#[test]
fn server_certificate_rotates_under_load_without_a_failed_request() {
    let echo = echo_app();
    let dir = temp_dir("ops-rotate");
    write_pki(&dir);
    let [port] = free_ports::<1>();
    let text =
        server_toml(2, "") + &listener_toml("rot", port, "require", Some("ca.pem"), echo.addr);
    let mut proc = Proc::spawn(&dir, &text, |_| {});
    let addr = proc.wait_tcp(port);
    let old = pki().server.cert_der.to_vec();

    // A TLS 1.3 client holding a ticket issued before the rotation.
    let resumable = client_config(ClientCert::Valid, false);
    assert_eq!(leaf_served(addr, resumable.clone()), old);

    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let reloaded = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    // Three keep-alive connections, each a request after another.
    for i in 0..3 {
        let (load, stop, reloaded) = (load.clone(), stop.clone(), reloaded.clone());
        threads.push(std::thread::spawn(move || {
            let mut tls = connect(addr, client_config(ClientCert::Valid, false));
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let after = reloaded.load(Ordering::SeqCst);
                match exchange(&mut tls, &get(&format!("/ka/{i}/{n}"))) {
                    Ok(r) if r.status == 200 => load.ok(after),
                    other => {
                        load.fail(format!("keep-alive {i} request {n}: {other:?}"));
                        return;
                    }
                }
                n += 1;
            }
        }));
    }
    // New connections, one after another, each a full handshake.
    {
        let (load, stop, reloaded) = (load.clone(), stop.clone(), reloaded.clone());
        threads.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let after = reloaded.load(Ordering::SeqCst);
                let mut tls = connect(addr, client_config(ClientCert::Valid, false));
                let leaf = match tls.conn.complete_io(&mut tls.sock) {
                    Ok(_) => served_leaf(&mut tls),
                    Err(e) => {
                        load.fail(format!("new connection {n}: handshake: {e}"));
                        continue;
                    }
                };
                match exchange(&mut tls, &get(&format!("/new/{n}"))) {
                    Ok(r) if r.status == 200 => load.ok(after),
                    other => load.fail(format!("new connection {n}: {other:?}")),
                }
                if after {
                    load.leaves_after.lock().unwrap().push(leaf);
                }
                n += 1;
            }
        }));
    }
    wait_for("load before the rotation", 10, || {
        load.ok_before.load(Ordering::SeqCst) >= 20
    });

    let new = new_server_cert();
    write_server_cert(&dir, &new);
    assert!(
        proc.reload(1).contains("reloaded "),
        "{}",
        proc.stderr.text()
    );
    reloaded.store(true, Ordering::SeqCst);

    // New connections see the new certificate at once.
    for _ in 0..3 {
        assert_eq!(
            leaf_served(addr, client_config(ClientCert::Valid, false)),
            new.cert_der.to_vec()
        );
    }
    // The ticket from before still resumes: only the certificate changed.
    let (resp, resumed) = request_with(addr, resumable, &get("/resumed")).unwrap();
    assert_eq!((resp.status, resumed), (200, true));

    wait_for("load after the rotation", 10, || {
        load.ok_after.load(Ordering::SeqCst) >= 20 && load.leaves_after.lock().unwrap().len() >= 3
    });
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    let failures = load.failures.lock().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
    let leaves = load.leaves_after.lock().unwrap();
    assert!(
        leaves.iter().all(|l| *l == new.cert_der.to_vec()),
        "an old certificate after the reload"
    );
    assert!(proc.terminate().success());
    proc.assert_plain_stderr();
}

// ---------------------------------------------------------------------------------------------
// Client CA replaced
// ---------------------------------------------------------------------------------------------

#[test]
fn replaced_client_ca_refuses_a_client_trusted_before_even_when_it_returns_or_resumes() {
    let echo = echo_app();
    let dir = temp_dir("ops-trust");
    write_pki(&dir);
    let [port, admin] = free_ports::<2>();
    // One worker: a returning client meets the cache its first visit filled.
    let text = server_toml(1, &admin_toml(admin))
        + &listener_toml("mtls", port, "require", Some("ca.pem"), echo.addr);
    let mut proc = Proc::spawn(&dir, &text, |_| {});
    let admin = local(admin);
    proc.wait_ready(admin);
    let addr = local(port);
    let p = pki();
    let valid = [&p.client_via_intermediate, p.intermediate.issued()];

    // Before: a full handshake, a returning client served from the verified-chain cache, and
    // sessions of each kind that resume.
    assert_eq!(
        request(addr, ClientCert::Valid, &get("/first"))
            .unwrap()
            .status,
        200
    );
    let hits = |s: &Scrape| s.value("certgate_cert_cache_hits_total", &[]);
    let before = hits(&scrape(admin));
    assert_eq!(
        request(addr, ClientCert::Valid, &get("/back"))
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        hits(&scrape(admin)),
        before + 1.0,
        "the returning client hit the cache"
    );
    let tls13 = client_config_for(&valid, false, false);
    let tls12_ids = client_config_for(&valid, true, true);
    let tls12_tickets = client_config_for(&valid, true, false);
    for (kind, config) in [
        ("TLS 1.3 ticket", &tls13),
        ("TLS 1.2 session ID", &tls12_ids),
        ("TLS 1.2 ticket", &tls12_tickets),
    ] {
        let (r, resumed) = request_with(addr, config.clone(), &get("/full")).unwrap();
        assert_eq!((r.status, resumed), (200, false), "{kind}");
        let (r, resumed) = request_with(addr, config.clone(), &get("/resume")).unwrap();
        assert_eq!(
            (r.status, resumed),
            (200, true),
            "{kind} resumes before the reload"
        );
    }

    let hits_before_reload = hits(&scrape(admin));

    // The client CA file now holds another root.
    let other_root = Ca::root("replacement root").unwrap();
    std::fs::write(dir.join("ca.pem"), &other_root.issued().cert_pem).unwrap();
    assert!(
        proc.reload(1).contains("reloaded "),
        "{}",
        proc.stderr.text()
    );

    // (a) a certificate the old root issued, never seen before: refused.
    assert!(request(addr, ClientCert::ValidB, &get("/a")).is_err());
    // (b) the returning client, whose chain the old trust verified and cached: refused.
    assert!(request(addr, ClientCert::Valid, &get("/b")).is_err());
    // (c, d) sessions from before the reload: refused, whether the server declined to resume
    // them and asked for the (now untrusted) certificate, or not.
    for (kind, config) in [
        ("TLS 1.3 ticket", &tls13),
        ("TLS 1.2 session ID", &tls12_ids),
        ("TLS 1.2 ticket", &tls12_tickets),
    ] {
        let outcome = request_with(addr, config.clone(), &get("/resume-after"))
            .map(|(r, resumed)| (r.status, resumed));
        assert!(
            outcome.is_err(),
            "{kind}: a session from before the reload got in (status, resumed): {outcome:?}"
        );
    }
    // Each of those was refused as untrusted, naming the certificate it presented (nothing
    // was refused before the reload).
    wait_for("five refusals on stderr", 10, || {
        proc.stderr.lines_with("TLS handshake refused").len() >= 5
    });
    let refusals = proc.stderr.lines_with("TLS handshake refused");
    let valid_sha = sha256_hex(p.client_via_intermediate.cert_der.as_ref());
    assert_eq!(refusals.len(), 5, "{refusals:#?}");
    assert!(
        refusals.iter().all(|l| l.contains("reason=\"untrusted\"")),
        "{refusals:#?}"
    );
    let with_valid = refusals.iter().filter(|l| l.contains(&valid_sha)).count();
    assert_eq!(with_valid, 4, "{refusals:#?}");
    // No chain was taken from the cache.
    assert_eq!(hits(&scrape(admin)), hits_before_reload);

    // The new root's clients are let in.
    let newcomer = other_root.client_cert("newcomer").unwrap();
    let (r, _) = request_with(
        addr,
        client_config_for(&[&newcomer], false, false),
        &get("/new"),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(proc.terminate().success());
    proc.assert_plain_stderr();
}

// ---------------------------------------------------------------------------------------------
// Broken reloads
// ---------------------------------------------------------------------------------------------

/// One way to break a reload: what to do to the folder, and what the error line must name.
struct Breakage {
    what: &'static str,
    apply: fn(&std::path::Path, &str),
    names: Names,
}

enum Names {
    /// This file of the test's folder, by its full path.
    File(&'static str),
    /// This config key.
    Key(&'static str),
}

impl Names {
    fn needle(&self, dir: &std::path::Path) -> String {
        match self {
            Names::File(name) => dir.join(name).display().to_string(),
            Names::Key(key) => (*key).to_owned(),
        }
    }
}

fn breakages() -> Vec<Breakage> {
    vec![
        Breakage {
            what: "bad TOML",
            apply: |dir, good| {
                std::fs::write(dir.join("certgate.toml"), format!("{good}\n[server\n")).unwrap();
            },
            names: Names::File("certgate.toml"),
        },
        Breakage {
            what: "unknown key",
            apply: |dir, good| {
                let text = good.replace("[server]\n", "[server]\nworkerz = 3\n");
                std::fs::write(dir.join("certgate.toml"), text).unwrap();
            },
            names: Names::Key("workerz"),
        },
        Breakage {
            what: "missing file",
            apply: |dir, good| {
                let text = good.replace("\"server.pem\"", "\"missing.pem\"");
                std::fs::write(dir.join("certgate.toml"), text).unwrap();
            },
            names: Names::File("missing.pem"),
        },
        // Tests run as root, whom `chmod 000` does not stop: a folder where the file should be
        // cannot be read by anyone.
        Breakage {
            what: "unreadable file",
            apply: |dir, good| {
                std::fs::create_dir_all(dir.join("unreadable.key")).unwrap();
                let text = good.replace("\"server.key\"", "\"unreadable.key\"");
                std::fs::write(dir.join("certgate.toml"), text).unwrap();
            },
            names: Names::File("unreadable.key"),
        },
        Breakage {
            what: "key that does not fit its certificate",
            apply: |dir, _| {
                std::fs::write(dir.join("server.key"), &pki().self_signed.key_pem).unwrap();
            },
            names: Names::File("server.key"),
        },
        Breakage {
            what: "client CA that is not PEM",
            apply: |dir, _| {
                std::fs::write(dir.join("ca.pem"), "this is not a certificate\n").unwrap();
            },
            names: Names::File("ca.pem"),
        },
    ]
}

#[test]
fn each_kind_of_broken_reload_keeps_the_old_config_serving_and_counts_a_failure() {
    let echo = echo_app();
    let dir = temp_dir("ops-broken");
    write_pki(&dir);
    let [port, admin] = free_ports::<2>();
    let good = server_toml(1, &admin_toml(admin))
        + &listener_toml("mtls", port, "require", Some("ca.pem"), echo.addr);
    let mut proc = Proc::spawn(&dir, &good, |_| {});
    let admin = local(admin);
    proc.wait_ready(admin);
    let addr = local(port);
    let old = pki().server.cert_der.to_vec();
    let failures = |admin| scrape(admin).value("certgate_reloads_total", &[("result", "failure")]);

    let broken = breakages();
    for (n, b) in broken.iter().enumerate() {
        // A valid new certificate lands with every breakage: a reload that went half-way
        // would serve it.
        write_server_cert(&dir, &new_server_cert());
        (b.apply)(&dir, &good);
        let line = proc.reload(n + 1);
        let what = b.what;
        assert!(line.contains(" ERROR "), "{what}: {line}");
        assert!(
            line.contains("reload failed, the running config stays in force: "),
            "{what}: {line}"
        );
        assert!(line.contains(&b.names.needle(&dir)), "{what}: {line}");
        assert_eq!(failures(admin), (n + 1) as f64, "{what}");
        proc.assert_running();
        // The old certificate, trust and upstream still serve.
        assert_eq!(
            leaf_served(addr, client_config(ClientCert::Valid, false)),
            old,
            "{what}"
        );
        assert!(
            request(addr, ClientCert::None, &get("/")).is_err(),
            "{what}"
        );
        // Put everything back as it was, without reloading.
        std::fs::write(&proc.config, &good).unwrap();
        write_pki(&dir);
    }
    let text = proc.stderr.text();
    assert_eq!(
        proc.stderr.lines_with("reload failed").len(),
        broken.len(),
        "{text}"
    );
    assert_eq!(proc.stderr.lines_with("reloaded ").len(), 0, "{text}");

    // A good reload after all that takes effect.
    let new = new_server_cert();
    write_server_cert(&dir, &new);
    assert!(proc.reload(broken.len() + 1).contains("reloaded "));
    assert_eq!(
        leaf_served(addr, client_config(ClientCert::Valid, false)),
        new.cert_der.to_vec()
    );
    let s = scrape(admin);
    assert_eq!(
        s.get("certgate_reloads_total", &[("result", "success")]),
        Some(1.0)
    );
    assert_eq!(
        s.get("certgate_reloads_total", &[("result", "failure")]),
        Some(broken.len() as f64)
    );
    assert!(proc.terminate().success());
    proc.assert_plain_stderr();
}

/// Keys that take a restart are reported in one warning line; the rest of the reload applies.
#[test]
fn restart_only_keys_are_reported_once_and_the_rest_of_the_reload_applies() {
    let echo = echo_app();
    let dir = temp_dir("ops-restart-only");
    write_pki(&dir);
    let [port, admin, other_admin] = free_ports::<3>();
    let text =
        server_toml(1, &admin_toml(admin)) + &listener_toml("tls", port, "ignore", None, echo.addr);
    let mut proc = Proc::spawn(&dir, &text, |_| {});
    let admin = local(admin);
    proc.wait_ready(admin);
    let changed = server_toml(
        2,
        &format!("{}\n[log]\nformat = \"json\"\n", admin_toml(other_admin)),
    )
    .replace("pin_workers = false", "pin_workers = true")
        + &listener_toml("tls", port, "ignore", None, echo.addr);
    std::fs::write(&proc.config, changed).unwrap();
    let new = new_server_cert();
    write_server_cert(&dir, &new);
    assert!(proc.reload(1).contains("reloaded "));
    let warnings = proc
        .stderr
        .lines_with("take effect only at the next restart");
    assert_eq!(warnings.len(), 1, "{}", proc.stderr.text());
    for key in [
        "server.workers",
        "server.pin_workers",
        "admin.bind",
        "log.format",
    ] {
        assert!(warnings[0].contains(key), "{key}: {}", warnings[0]);
    }
    assert!(warnings[0].contains(" WARN "), "{}", warnings[0]);
    // The old admin port and the text log format stay; the certificate changed.
    assert_eq!(http_get(admin, "/healthz").unwrap().status, 200);
    assert!(TcpStream::connect(local(other_admin)).is_err());
    let addr = local(port);
    assert_eq!(
        leaf_served(addr, client_config(ClientCert::None, false)),
        new.cert_der.to_vec()
    );
    assert!(proc.terminate().success());
    assert!(
        !proc.stderr.text().contains("{\""),
        "log format changed: {}",
        proc.stderr.text()
    );
    proc.assert_plain_stderr();
}

// ---------------------------------------------------------------------------------------------
// Listeners added, removed, moved
// ---------------------------------------------------------------------------------------------

#[test]
fn reload_opens_added_listeners_closes_removed_ones_and_moves_a_changed_bind() {
    listeners_follow_a_reload(false);
}

/// The same on the epoll driver (what runs where io_uring is blocked, e.g. a container's
/// default seccomp profile): a worker must go on serving after it took a reload.
#[test]
fn reload_keeps_serving_on_the_epoll_driver() {
    listeners_follow_a_reload(true);
}

fn listeners_follow_a_reload(epoll: bool) {
    let echo = echo_app();
    let dir = temp_dir("ops-listeners");
    write_pki(&dir);
    let [pa, pb, pc, pd] = free_ports::<4>();
    let config = |listeners: &[(&str, u16)]| {
        let mut text = server_toml(2, "");
        for (name, port) in listeners {
            text += &listener_toml(name, *port, "ignore", None, echo.addr);
        }
        text
    };
    let mut proc = Proc::spawn(&dir, &config(&[("a", pa), ("b", pb)]), |cmd| {
        if epoll {
            cmd.env("CERTGATE_EPOLL", "1");
        }
    });
    let a = proc.wait_tcp(pa);
    let b = proc.wait_tcp(pb);
    assert_eq!(
        proc.stderr
            .text()
            .contains("falling back to the epoll driver"),
        epoll,
        "{}",
        proc.stderr.text()
    );
    let none = || client_config(ClientCert::None, false);
    // Established keep-alive connections on the listener to be removed and the one to move.
    let mut on_b = connect(b, none());
    assert_eq!(exchange(&mut on_b, &get("/b/0")).unwrap().status, 200);
    let mut on_a = connect(a, none());
    assert_eq!(exchange(&mut on_a, &get("/a/0")).unwrap().status, 200);

    // b removed, c added.
    std::fs::write(&proc.config, config(&[("a", pa), ("c", pc)])).unwrap();
    assert!(
        proc.reload(1).contains("reloaded "),
        "{}",
        proc.stderr.text()
    );
    let c = local(pc);
    assert_eq!(
        request(c, ClientCert::None, &get("/c")).unwrap().status,
        200
    );
    wait_for("the removed listener to refuse connections", 5, || {
        is_refused(b)
    });
    assert_eq!(
        request(a, ClientCert::None, &get("/a")).unwrap().status,
        200
    );
    // The connection accepted by the removed listener goes on until it is closed.
    for i in 1..4 {
        assert_eq!(
            exchange(&mut on_b, &get(&format!("/b/{i}")))
                .unwrap()
                .status,
            200
        );
    }
    drop(on_b);

    // a moves to another port.
    std::fs::write(&proc.config, config(&[("a", pd), ("c", pc)])).unwrap();
    assert!(
        proc.reload(2).contains("reloaded "),
        "{}",
        proc.stderr.text()
    );
    let d = local(pd);
    assert_eq!(
        request(d, ClientCert::None, &get("/d")).unwrap().status,
        200
    );
    wait_for(
        "the old bind of the moved listener to refuse connections",
        5,
        || is_refused(a),
    );
    assert_eq!(
        request(c, ClientCert::None, &get("/c")).unwrap().status,
        200
    );
    for i in 1..4 {
        assert_eq!(
            exchange(&mut on_a, &get(&format!("/a/{i}")))
                .unwrap()
                .status,
            200
        );
    }
    drop(on_a);
    assert!(is_refused(b));
    assert!(proc.terminate().success());
    proc.assert_plain_stderr();
}

// ---------------------------------------------------------------------------------------------
// reload_interval and a Kubernetes secret volume
// ---------------------------------------------------------------------------------------------

/// Writes a certificate and key into `dir/<version>/` as a Kubernetes secret volume holds them.
fn secret_version(dir: &std::path::Path, version: &str, cert: &Issued) {
    let folder = dir.join(version);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("tls.crt"), &cert.cert_pem).unwrap();
    std::fs::write(folder.join("tls.key"), &cert.key_pem).unwrap();
}

#[test]
fn reload_interval_follows_a_kubernetes_symlink_swap_without_a_signal() {
    use std::os::unix::fs::symlink;
    let echo = echo_app();
    let dir = temp_dir("ops-k8s");
    // The kubelet's layout: tls.crt -> ..data/tls.crt, ..data -> ..2026_v1.
    secret_version(&dir, "..2026_v1", &pki().server);
    symlink("..2026_v1", dir.join("..data")).unwrap();
    symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
    symlink("..data/tls.key", dir.join("tls.key")).unwrap();
    let [port] = free_ports::<1>();
    let text = server_toml(1, "reload_interval = \"1s\"")
        + &listener_toml("k8s", port, "ignore", None, echo.addr)
            .replace("server.pem", "tls.crt")
            .replace("server.key", "tls.key");
    let mut proc = Proc::spawn(&dir, &text, |_| {});
    let addr = proc.wait_tcp(port);
    let none = || client_config(ClientCert::None, false);
    assert_eq!(leaf_served(addr, none()), pki().server.cert_der.to_vec());

    // The kubelet's atomic update: a new version folder, a temporary link renamed over
    // ..data, then the old folder removed.
    let new = new_server_cert();
    secret_version(&dir, "..2026_v2", &new);
    symlink("..2026_v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join("..2026_v1")).unwrap();

    wait_for("new connections to see the new certificate", 10, || {
        leaf_served(addr, none()) == new.cert_der.to_vec()
    });
    assert!(proc.wait_reloads(1).contains("reloaded "));
    // Unchanged contents do not reload again.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        proc.stderr.lines_with("reloaded ").len(),
        1,
        "{}",
        proc.stderr.text()
    );
    assert!(proc.stderr.lines_with("reload failed").is_empty());
    assert!(proc.terminate().success());
    proc.assert_plain_stderr();
}
