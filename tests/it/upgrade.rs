//! Zero-downtime restarts end to end: `certgate --upgrade` replacing a running certgate three
//! times in a row under load (new connections and keep-alive requests throughout, zero
//! failures), upgrades that fail and leave the old process serving, and systemd socket
//! activation with the test playing systemd, followed by upgrades from the activated process.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// The load generator
// ---------------------------------------------------------------------------------------------

/// Phases of a test: the number of completed handovers (or other steps) so far.
const PHASES: usize = 8;

/// What the load threads saw.
#[derive(Default)]
struct Load {
    /// Requests answered 200 with the echo of their own path, per phase.
    ok: [AtomicUsize; PHASES],
    /// TLS connections opened (handshake finished).
    connections: AtomicUsize,
    /// Anything else: a refused or reset connection, a failed handshake, a request without a
    /// complete response, a status other than 200, someone else's echo.
    failures: Mutex<Vec<String>>,
    phase: AtomicUsize,
    stop: AtomicBool,
}

impl Load {
    fn ok_in(&self, phase: usize) -> usize {
        self.ok[phase].load(Ordering::SeqCst)
    }

    fn total(&self) -> usize {
        self.ok.iter().map(|n| n.load(Ordering::SeqCst)).sum()
    }

    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    /// Moves on to the next phase and returns its number.
    fn next_phase(&self) -> usize {
        self.phase.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Waits until `n` requests were answered in the current phase, failing at the first
    /// failure.
    fn wait_progress(&self, n: usize) {
        let phase = self.phase.load(Ordering::SeqCst);
        wait_for(&format!("{n} requests in phase {phase}"), 30, || {
            self.ok_in(phase) >= n || !self.failures.lock().unwrap().is_empty()
        });
        assert_no_failures(self);
    }
}

/// Starts the load against `addr`: `keep_alive` threads each send up to 20 requests on a
/// connection before opening the next (fewer when the server says `Connection: close`), and
/// `fresh` threads each open a new connection for every request (a full handshake each, so
/// connections arrive throughout a handover). Nothing is retried: every error is a failure.
fn start_load(
    addr: SocketAddr,
    keep_alive: usize,
    fresh: usize,
) -> (Arc<Load>, Vec<JoinHandle<()>>) {
    let load = Arc::new(Load::default());
    let config = client_config(ClientCert::Valid, false);
    let kinds =
        std::iter::repeat_n(("ka", 20), keep_alive).chain(std::iter::repeat_n(("new", 1), fresh));
    let handles = kinds
        .enumerate()
        .map(|(t, (kind, per_connection))| {
            let (load, config) = (load.clone(), config.clone());
            std::thread::spawn(move || {
                let mut conn = 0;
                while !load.stop.load(Ordering::SeqCst) {
                    conn += 1;
                    let name = format!("{kind}{t}/{conn}");
                    one_connection(&load, addr, &config, per_connection, &name);
                }
            })
        })
        .collect();
    (load, handles)
}

fn one_connection(
    load: &Load,
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    requests: usize,
    name: &str,
) {
    let tcp = match TcpStream::connect(addr) {
        Ok(tcp) => tcp,
        Err(e) => return load.fail(format!("connection {name}: connect: {e}")),
    };
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let server = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), server).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            return load.fail(format!("connection {name}: handshake: {e}"));
        }
    }
    load.connections.fetch_add(1, Ordering::SeqCst);
    for n in 0..requests {
        if load.stop.load(Ordering::SeqCst) {
            return;
        }
        let phase = load.phase.load(Ordering::SeqCst);
        let path = format!("/load/{name}/{n}");
        match exchange(&mut tls, &get(&path)) {
            Ok(r) if r.status == 200 && r.text().starts_with(&format!("GET {path} ")) => {
                load.ok[phase].fetch_add(1, Ordering::SeqCst);
                if header_values(&r.head, "connection")
                    .iter()
                    .any(|v| v == "close")
                {
                    return; // Draining: the next request goes on a new connection.
                }
            }
            other => {
                return load.fail(format!(
                    "connection {name} request {n} (phase {phase}): {other:?}"
                ))
            }
        }
    }
}

/// Stops the load threads and returns what they saw.
fn stop_load(load: &Arc<Load>, threads: Vec<JoinHandle<()>>) {
    load.stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
}

fn assert_no_failures(load: &Load) {
    let failures = load.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failure(s) among {} requests: {:#?}",
        failures.len(),
        load.total(),
        &failures[..failures.len().min(20)]
    );
}

// ---------------------------------------------------------------------------------------------
// Configs and processes
// ---------------------------------------------------------------------------------------------

/// A config with one `require` listener on `port`, an admin listener, a control socket and a
/// short drain.
fn config(workers: usize, port: u16, admin: u16, upstream: SocketAddr) -> String {
    server_toml(workers, "control_socket = \"control.sock\"")
        + "[timeouts]\nshutdown_grace = \"10s\"\n"
        + &admin_toml(admin)
        + &listener_toml("up", port, "require", Some("ca.pem"), upstream)
}

/// Starts `certgate --config dir/certgate.toml --upgrade` after writing `text` there.
fn upgrade(dir: &Path, text: &str) -> Proc {
    Proc::spawn(dir, text, |cmd| {
        cmd.arg("--upgrade");
    })
}

/// Waits for `old` to exit after handing over to `new`; checks it said so and exited 0.
fn assert_handed_over(old: &mut Proc, new: &Proc) {
    let status = old.wait_exit();
    assert!(status.success(), "{status}: {}", old.stderr.text());
    let said = format!("handed over to process {}", new.pid());
    assert!(old.stderr.text().contains(&said), "{}", old.stderr.text());
}

/// `certgate_requests_total` for listener `up`, code 200, on the admin listener.
fn served(admin: SocketAddr) -> f64 {
    scrape(admin).value(
        "certgate_requests_total",
        &[("listener", "up"), ("code", "200")],
    )
}

// ---------------------------------------------------------------------------------------------
// Upgrades
// ---------------------------------------------------------------------------------------------

#[test]
fn three_upgrades_in_a_row_under_load_lose_no_connection_and_no_request() {
    let echo = echo_app();
    let dir = temp_dir("upgrade");
    write_pki(&dir);
    let [port, admin_port] = free_ports::<2>();
    let admin = local(admin_port);
    let mut procs = vec![Proc::spawn(
        &dir,
        &config(2, port, admin_port, echo.addr),
        |_| {},
    )];
    procs[0].wait_ready(admin);
    let addr = local(port);

    let (load, threads) = start_load(addr, 2, 4);
    load.wait_progress(100);
    // Each upgrade also changes the worker count, a key only a restart changes: the new
    // process spreads the sockets it receives over however many workers it has.
    for (i, workers) in [3, 1, 2].into_iter().enumerate() {
        let by_old = served(admin);
        assert!(by_old > 0.0, "process {i} served nothing");
        let next = upgrade(&dir, &config(workers, port, admin_port, echo.addr));
        let (old, new) = (procs.len() - 1, procs.len());
        procs.push(next);
        let (before, after) = procs.split_at_mut(new);
        assert_handed_over(&mut before[old], &after[0]);
        after[0].wait_ready(admin);
        wait_for(
            &format!("in charge: {}", after[0].stderr.text()),
            10,
            || {
                !after[0]
                    .stderr
                    .lines_with("this process is in charge")
                    .is_empty()
            },
        );
        let phase = load.next_phase();
        load.wait_progress(100);
        assert!(load.ok_in(phase - 1) > 0 && load.ok_in(phase) > 0);
    }
    let by_last = served(admin);
    stop_load(&load, threads);
    assert_no_failures(&load);
    assert!(by_last > 0.0);
    let counts: Vec<usize> = (0..4).map(|p| load.ok_in(p)).collect();
    eprintln!(
        "three upgrades under load: {} requests on {} connections, per phase {counts:?}, 0 failed",
        load.total(),
        load.connections.load(Ordering::SeqCst),
    );

    // The last process owns the control socket and removes it when it stops.
    let control = dir.join("control.sock");
    assert!(control.exists());
    let last = procs.last_mut().unwrap();
    assert!(last.terminate().success());
    assert!(!control.exists(), "the control socket outlived its process");
}

#[test]
fn connections_waiting_in_the_old_process_queue_are_served_by_the_new_one() {
    let echo = echo_app();
    let dir = temp_dir("upgrade-queue");
    write_pki(&dir);
    let [port, admin_port] = free_ports::<2>();
    let admin = local(admin_port);
    let addr = local(port);
    // One worker that takes one connection at a time: while `first` holds the slot, the next
    // connections wait in the listening socket's accept queue.
    let limited = config(1, port, admin_port, echo.addr).replace(
        "[timeouts]",
        "[limits]\nmax_connections_per_worker = 1\n[timeouts]",
    );
    let mut old = Proc::spawn(&dir, &limited, |_| {});
    old.wait_ready(admin);
    let mut first = connect(addr, client_config(ClientCert::Valid, false));
    assert_eq!(exchange(&mut first, &get("/first")).unwrap().status, 200);
    let queued: Vec<_> = (0..5)
        .map(|i| {
            std::thread::spawn(move || request(addr, ClientCert::Valid, &get(&format!("/q/{i}"))))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(queued.iter().all(|q| !q.is_finished()), "not queued");

    // Closing the old process's sockets would reset them; handed over, the new one accepts them.
    let mut new = upgrade(&dir, &config(2, port, admin_port, echo.addr));
    for q in queued {
        assert_eq!(q.join().unwrap().unwrap().status, 200);
    }
    // Once draining, the old process answers the held connection's next request with
    // `Connection: close` (it does not close it under the client's feet), and exits.
    wait_for("the old process to hand over", 10, || {
        !old.stderr.lines_with("handed over to process").is_empty()
    });
    let mut closed = false;
    for i in 0..50 {
        let resp = exchange(&mut first, &get(&format!("/first/{i}"))).unwrap();
        assert_eq!(resp.status, 200);
        if header_values(&resp.head, "connection") == ["close"] {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(closed, "the held connection was never told to close");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut first, &mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "a clean close (close_notify) after the response"
    );
    assert_handed_over(&mut old, &new);
    assert!(new.terminate().success());
}

#[test]
fn a_failed_upgrade_leaves_the_old_process_serving() {
    let echo = echo_app();
    let dir = temp_dir("upgrade-fail");
    write_pki(&dir);
    let [port, admin_port] = free_ports::<2>();
    let admin = local(admin_port);
    let text = config(2, port, admin_port, echo.addr);
    let mut old = Proc::spawn(&dir, &text, |_| {});
    old.wait_ready(admin);
    let (load, threads) = start_load(local(port), 1, 2);
    load.wait_progress(50);

    // 1. A config whose certificate is missing: the new process stops before it asks.
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, text.replace("server.pem", "missing.pem")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .arg("--config")
        .arg(&broken)
        .arg("--upgrade")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.pem"), "{stderr}");

    // 2. A config that adds a listener on an address someone else holds: the new process
    // receives the sockets, cannot bind the new one, and exits; the old one never stopped.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let other = dir.join("taken.toml");
    let with_taken = text.clone() + &listener_toml("taken", taken, "ignore", None, echo.addr);
    std::fs::write(&other, with_taken).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .arg("--config")
        .arg(&other)
        .arg("--upgrade")
        .env("CERTGATE_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("received the listening sockets") && stderr.contains("cannot listen"),
        "{stderr}"
    );
    wait_for("the old process noticed", 10, || {
        !old.stderr.lines_with("keeps serving").is_empty()
    });
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("control.sock."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    old.assert_running();
    assert_eq!(http_get(admin, "/readyz").unwrap().status, 200);

    // 3. A plain start on the same control socket is refused: it would serve beside the
    // running process, with nothing to tell either to stop.
    let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .arg("--config")
        .arg(dir.join("certgate.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a running certgate answers there"),
        "{stderr}"
    );

    // Still serving throughout; and the next good upgrade goes through.
    let phase = load.next_phase();
    load.wait_progress(50);
    let mut new = upgrade(&dir, &text);
    assert_handed_over(&mut old, &new);
    new.wait_ready(admin);
    load.next_phase();
    load.wait_progress(50);
    stop_load(&load, threads);
    assert_no_failures(&load);
    assert!(load.ok_in(phase) > 0);
    assert!(new.terminate().success());
    drop(held);
}

#[test]
fn upgrade_needs_a_control_socket_and_check_validates_its_directory() {
    let dir = temp_dir("upgrade-check");
    write_pki(&dir);
    let [port] = free_ports::<1>();
    let upstream = dead_addr();
    let plain = server_toml(1, "") + &listener_toml("up", port, "ignore", None, upstream);
    let path = dir.join("plain.toml");
    std::fs::write(&path, &plain).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .arg("--config")
        .arg(&path)
        .arg("--upgrade")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("control_socket"));

    let missing = server_toml(1, "control_socket = \"nowhere/control.sock\"")
        + &listener_toml("up", port, "ignore", None, upstream);
    std::fs::write(&path, missing).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.control_socket") && stderr.contains("does not exist"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Socket activation
// ---------------------------------------------------------------------------------------------

/// Plays systemd: starts certgate on `dir/certgate.toml` (written from `text`) with `socket`
/// as descriptor 3, `LISTEN_FDS=1` and `LISTEN_PID` set to certgate's own pid (a shell sets it
/// to its `$$` and then becomes certgate with exec).
fn activated(dir: &Path, text: &str, socket: &TcpListener) -> Proc {
    let fd = socket.as_raw_fd();
    Proc::spawn(dir, text, |cmd| {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" --config \"$1\"")
            .arg(env!("CARGO_BIN_EXE_certgate"))
            .arg(dir.join("certgate.toml"))
            .env("CERTGATE_LOG", "info")
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "https")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: between fork and exec only dup2 and fcntl run, both async-signal-safe.
        unsafe {
            sh.pre_exec(move || {
                if fd == 3 {
                    // dup2 onto itself would keep close-on-exec set.
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        *cmd = sh;
    })
}

#[test]
fn socket_activation_serves_reloads_and_upgrades_under_load_without_a_failure() {
    let echo = echo_app();
    let dir = temp_dir("activation");
    write_pki(&dir);
    // systemd's socket: bound by "systemd" (this test), without SO_REUSEPORT, so certgate
    // could not bind the address itself: serving at all proves it serves on this socket.
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let [admin_port] = free_ports::<1>();
    let admin = local(admin_port);
    let text = config(2, addr.port(), admin_port, echo.addr);
    let mut procs = vec![activated(&dir, &text, &socket)];
    procs[0].wait_ready(admin);
    let (load, threads) = start_load(addr, 2, 4);
    load.wait_progress(100);

    // A reload keeps the passed socket.
    assert!(
        procs[0].reload(1).contains("reloaded "),
        "{}",
        procs[0].stderr.text()
    );
    load.next_phase();
    load.wait_progress(100);

    // Upgrades from the activated process, and from its successor.
    for workers in [3, 2] {
        let next = upgrade(&dir, &config(workers, addr.port(), admin_port, echo.addr));
        let (old, new) = (procs.len() - 1, procs.len());
        procs.push(next);
        let (before, after) = procs.split_at_mut(new);
        assert_handed_over(&mut before[old], &after[0]);
        after[0].wait_ready(admin);
        load.next_phase();
        load.wait_progress(100);
    }
    stop_load(&load, threads);
    assert_no_failures(&load);
    let counts: Vec<usize> = (0..4).map(|p| load.ok_in(p)).collect();
    assert!(counts.iter().all(|n| *n > 0), "{counts:?}");
    eprintln!(
        "socket activation, a reload and two upgrades under load: {} requests on {} \
         connections, per phase {counts:?}, 0 failed",
        load.total(),
        load.connections.load(Ordering::SeqCst),
    );

    // As under systemd, the socket outlives the service: stopped, connections wait in its
    // queue (not refused), and the next activated process serves them.
    assert!(procs.last_mut().unwrap().terminate().success());
    let waiting = std::thread::spawn(move || request(addr, ClientCert::Valid, &get("/queued")));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiting.is_finished(), "answered while no certgate ran");
    let mut again = activated(&dir, &text, &socket);
    assert_eq!(waiting.join().unwrap().unwrap().status, 200);
    assert!(again.terminate().success());
}

#[test]
fn a_passed_socket_that_no_listener_binds_is_a_startup_error() {
    let dir = temp_dir("activation-bad");
    write_pki(&dir);
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let [port] = free_ports::<1>();
    let text = server_toml(1, "") + &listener_toml("up", port, "ignore", None, dead_addr());
    let mut proc = activated(&dir, &text, &socket);
    let status = proc.wait_exit();
    assert_eq!(status.code(), Some(64), "{}", proc.stderr.text());
    let want = format!("systemd passed a listening socket on {addr} (fd 3, name \"https\")");
    assert!(proc.stderr.text().contains(&want), "{}", proc.stderr.text());
}
