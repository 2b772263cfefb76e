//! The worker's CPU per keep-alive mTLS request, through the real relay: certgate started in
//! this process as the binary starts it (one worker, io_uring where the kernel has it, client
//! certificates accepted, the XFCC header added), the demo echo app as the upstream on threads
//! of its own, and a rustls client presenting a certificate on the bench thread.
//!
//! Counted: the worker thread's own CPU time (user and system, from its per-thread clock), over
//! `iters` requests on one connection that has already served requests, the state users live
//! in. The client and the app run on other threads and are not counted. Requests go one at a
//! time, so each waits in its own `io_uring_enter`: the figures are higher than under load
//! (`loadtest/run.sh`), where one enter carries many connections' I/O, but they move with the
//! relay's own work and not with what else the machine runs.

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use certgate::demo::echo::{self, EchoApp};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

mod support;

type Client = StreamOwned<ClientConnection, TcpStream>;

/// One exchange: request body bytes (0: a GET) and response body bytes.
struct Exchange {
    name: &'static str,
    up: usize,
    down: usize,
}

const EXCHANGES: &[Exchange] = &[
    Exchange {
        name: "small_get",
        up: 0,
        down: 3,
    },
    Exchange {
        name: "response_64k",
        up: 0,
        down: 64 * 1024,
    },
    Exchange {
        name: "upload_64k",
        up: 64 * 1024,
        down: 3,
    },
];

fn keepalive(c: &mut Criterion) {
    let pki = support::pki();
    let echo = EchoApp::start("127.0.0.1:0".parse().unwrap()).unwrap();
    let dir = support::listener_files(&pki);
    let text = format!(
        "[server]\nworkers = 1\npin_workers = false\n\n\
         [[listener]]\nname = \"bench\"\nbind = \"127.0.0.1:0\"\ncert = \"server.pem\"\n\
         key = \"server.key\"\nclient_certificate_mode = \"accept\"\nupstream = \"{}\"\n\
         session_resumption = true\n",
        echo.addr
    );
    let config = certgate::config::Config::from_toml(&text, &dir).unwrap();
    let server = certgate::app::start(certgate::app::prepare(config).unwrap()).unwrap();
    let addr = server.local_addrs()[0];
    let worker = WorkerClock::find("certgate-w0");
    let client_config = support::client(&pki, true);

    let mut group = c.benchmark_group("keepalive");
    for ex in EXCHANGES {
        let mut conn = connect(addr, client_config.clone());
        // Warm: the connection has served requests, the worker's pools and caches are made.
        for _ in 0..20 {
            echo::request(&mut conn, ex.up, ex.down).unwrap();
        }
        group.throughput(Throughput::Elements(1));
        group.bench_function(ex.name, |b| {
            b.iter_custom(|iters| {
                let before = worker.cpu();
                for _ in 0..iters {
                    echo::request(&mut conn, ex.up, ex.down).unwrap();
                }
                worker.cpu() - before
            })
        });
    }
    group.finish();
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CPU clock of one thread of this process, found by its name.
struct WorkerClock(libc::clockid_t);

impl WorkerClock {
    fn find(name: &str) -> WorkerClock {
        // A new thread names itself once it runs: look until it has.
        let tid = (0..500)
            .find_map(|_| {
                let found = std::fs::read_dir("/proc/self/task")
                    .unwrap()
                    .flatten()
                    .find(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.trim() == name)
                    })
                    .and_then(|t| t.file_name().to_str()?.parse::<libc::pid_t>().ok());
                if found.is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                found
            })
            .unwrap_or_else(|| panic!("no thread named {name}"));
        // Linux's per-thread CPU clock id (MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)): any
        // thread of the process may read it, at nanosecond resolution.
        WorkerClock((!tid << 3) | 6)
    }

    fn cpu(&self) -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid place for the result.
        let rc = unsafe { libc::clock_gettime(self.0, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

fn connect(addr: std::net::SocketAddr, config: Arc<ClientConfig>) -> Client {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(config, name).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).unwrap();
    }
    StreamOwned::new(conn, tcp)
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = keepalive
}
criterion_main!(benches);
