//! The `certgate` command line: run a config, check it, make session-ticket keys, or start the
//! demo.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use certgate::app::Running;
use certgate::config::{Config, LogFormat};
use certgate::ops::admin::{self, AdminState, Readiness};
use certgate::ops::metrics::Metrics;
use certgate::ops::notify::Notifier;
use certgate::ops::watch::{self, WatchSet};
use certgate::worker::handover::control::{self, ControlSocket, Handover, Offer};
use certgate::worker::handover::{activation, Role};

use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Exit status for bad configuration or input files (sysexits EX_USAGE, as linkerd does).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "certgate",
    version,
    about = "io_uring TLS terminator that puts mutual TLS in front of any HTTP/1.1 app"
)]
struct Cli {
    /// Configuration file (TOML) to run.
    #[arg(long, short, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Replace the certgate running this config: take over its listening sockets through the
    /// config's `[server] control_socket`, start serving, then let it drain and exit.
    #[arg(long)]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Load and validate the config and every certificate and key it names, then exit.
    Check,
    /// Run a throwaway CA, an echo app and an `accept`-mode listener, and print curl commands.
    // A build without the `demo` feature keeps the subcommand, hidden from `--help`, so that
    // `certgate demo` (the README's first command) says why it cannot run and how to get it,
    // instead of clap's bare "unrecognized subcommand 'demo'".
    #[cfg_attr(not(feature = "demo"), command(hide = true))]
    Demo {
        /// Address of the demo's TLS listener.
        #[arg(long, default_value = "127.0.0.1:8443")]
        bind: std::net::SocketAddr,
    },
    /// Make or rotate the session-ticket key file that `[server] ticket_keys` names.
    Tickets {
        #[command(subcommand)]
        action: TicketsCommand,
    },
}

#[derive(Subcommand)]
enum TicketsCommand {
    /// Write a new key file holding one fresh key, mode 0600. Never overwrites a file.
    New {
        /// The key file to create.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Put a fresh key first (it encrypts after the next reload) and keep the newest previous
    /// keys after it for decryption. Replaces the file atomically, mode 0600.
    Rotate {
        /// The key file to rotate.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Keys in the file afterwards, the new one included (at least 2).
        #[arg(long, value_name = "N", default_value_t = certgate::tls::tickets::DEFAULT_KEEP,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..))]
        keep: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.upgrade && cli.command.is_some() {
        return fail(
            "--upgrade applies to running a config only: certgate --config FILE --upgrade",
        );
    }
    match cli.command {
        Some(Command::Check) => {
            init_logging(LogFormat::Text);
            check(cli.config)
        }
        Some(Command::Demo { bind }) => {
            init_logging(LogFormat::Text);
            demo(bind)
        }
        Some(Command::Tickets { action }) => tickets(action),
        // `run` logs in the format its config asks for, so it starts logging once loaded.
        None => run(cli.config, cli.upgrade),
    }
}

fn init_logging(format: LogFormat) {
    if let Err(e) = certgate::ops::logging::init(format) {
        eprintln!("certgate: cannot set up logging: {e}");
    }
}

/// Prints a startup failure as one line and gives the exit status for it.
fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("certgate: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// Loads `--config` and every file it names, or says why not.
fn load(config: Option<PathBuf>) -> Result<(PathBuf, certgate::app::Prepared), ExitCode> {
    const MISSING: &str = if cfg!(feature = "demo") {
        "--config FILE is required (or try `certgate demo`)"
    } else {
        "--config FILE is required"
    };
    let path = config.ok_or_else(|| fail(MISSING))?;
    let prepared = certgate::app::load(&path).map_err(fail)?;
    Ok((path, prepared))
}

fn check(config: Option<PathBuf>) -> ExitCode {
    let (path, prepared) = match load(config) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    println!(
        "{}: OK, {} worker(s)",
        path.display(),
        prepared.config.worker_count()
    );
    for line in &prepared.summaries {
        println!("  {line}");
    }
    ExitCode::SUCCESS
}

/// `certgate tickets new|rotate`: one line on stdout saying what changed, or one error line.
fn tickets(action: TicketsCommand) -> ExitCode {
    use certgate::tls::tickets;
    match action {
        TicketsCommand::New { file } => match tickets::create(&file) {
            Ok(name) => {
                println!(
                    "{}: created with one key ({name}), mode 0600",
                    file.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        TicketsCommand::Rotate { file, keep } => match tickets::rotate(&file, keep) {
            Ok(r) => {
                let dropped = match r.dropped {
                    0 => String::new(),
                    n => format!(", dropped {n} older"),
                };
                println!(
                    "{}: new key {} encrypts after the next reload; kept {} previous key(s) for \
                     decryption{dropped}; {} key(s) in all",
                    file.display(),
                    r.new,
                    r.kept.len(),
                    r.kept.len() + 1,
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}

fn run(config: Option<PathBuf>, upgrade: bool) -> ExitCode {
    // systemd's sockets first, while the process has one thread: reading them removes the
    // LISTEN_* variables, which is only safe before any other thread starts.
    let activated = activation::from_env();
    // Installed before anything starts, so a signal during startup is not lost.
    let (events, signals) = Signals::install();
    let (path, prepared) = match load(config) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    init_logging(prepared.config.log.format);
    for line in &prepared.summaries {
        tracing::info!("{line}");
    }
    let mut inherited = match activated {
        Ok(inherited) => inherited,
        Err(e) => return fail(e),
    };
    if let Err(e) = inherited.check_activated(&prepared.config) {
        return fail(e);
    }
    // With --upgrade, the running process's sockets next: nothing is bound or started yet, so
    // if this process fails from here on, the old one just keeps serving.
    let takeover = if upgrade {
        let Some(socket) = prepared.config.server.control_socket.as_deref() else {
            return fail(
                "--upgrade: the config has no [server] control_socket, through which the \
                 running certgate would hand over its sockets",
            );
        };
        match control::take_over(socket) {
            Ok((takeover, sockets)) => {
                tracing::info!(
                    "upgrade: received the listening sockets of process {}",
                    takeover.old_pid
                );
                inherited.extend(sockets);
                Some(takeover)
            }
            Err(e) => return fail(format_args!("upgrade: {e}")),
        }
    } else {
        None
    };
    let control = match &prepared.config.server.control_socket {
        Some(socket) => match ControlSocket::bind(socket, takeover.is_none()) {
            Ok(control) => Some(control),
            Err(e) => return fail(e),
        },
        None => None,
    };
    let notify = Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!("NOTIFY_SOCKET is set but unusable ({e}); not notifying systemd");
        Notifier::disabled()
    });
    let metrics = Arc::new(Metrics::new());
    metrics.process().config_loaded(SystemTime::now());
    let state = Arc::new(AdminState {
        metrics: metrics.clone(),
        readiness: Readiness::new(),
    });
    // The admin port is bound before the workers start: a bad address is a startup error too.
    let admin = match &prepared.config.admin {
        Some(admin) => {
            let socket = match inherited.take(Role::Admin, admin.bind) {
                Some(sockets) => sockets
                    .into_iter()
                    .next()
                    .ok_or_else(|| std::io::Error::other("no admin socket came with the handover")),
                None => admin::bind(admin.bind),
            };
            match socket.and_then(|l| admin::spawn(l, state.clone())) {
                Ok(server) => Some(server),
                Err(e) => return fail(format_args!("admin.bind {}: {e}", admin.bind)),
            }
        }
        None => None,
    };
    let watch = Arc::new(Mutex::new(watch_set(
        &path,
        prepared.config.server.reload_interval,
        &prepared.config,
    )));
    let mut running =
        match Running::start_inheriting(path, prepared, metrics.clone(), &mut inherited) {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
    // Sockets of listeners the new config no longer has: they close (as in a reload that
    // removes a listener) once the old process has drained too.
    for line in inherited.describe() {
        tracing::info!("upgrade: no listener of this config uses the {line}; closing it");
    }
    drop(inherited);
    if let Err(e) = watch::spawn(watch.clone(), events.clone(), Event::Reload) {
        tracing::warn!("cannot start the reload_interval watcher: {e}");
    }
    state.readiness.set_serving();
    let upgraded = takeover.is_some();
    if let Some(takeover) = takeover {
        // From here on this process serves, whatever the old one answers.
        match takeover.serving() {
            Ok(old) => tracing::info!(
                "upgrade: process {old} stopped accepting and drains; this process is in charge"
            ),
            Err(e) => tracing::warn!("upgrade: the old process did not confirm ({e}); serving"),
        }
    }
    // The control path is this process's once it serves (after an upgrade: once the old one
    // has stopped accepting; until then `--upgrade` must still reach the old one).
    let published = control.as_ref().and_then(|c| {
        c.publish()
            .inspect_err(|e| tracing::warn!("{e}; `--upgrade` cannot reach this process"))
            .ok()
    });
    let _ = if upgraded {
        notify.ready_as_main(std::process::id())
    } else {
        notify.ready()
    };
    if let Some(control) = control {
        let asks = events.clone();
        let offer = move || {
            let (reply, answer) = mpsc::channel();
            asks.send(Event::Offer(reply)).ok()?;
            answer.recv().ok().flatten()
        };
        let tells = events.clone();
        let handed = move |h: Handover| {
            let _ = tells.send(Event::HandedOver(Arc::new(h)));
        };
        if let Err(e) = control.spawn(offer, handed) {
            tracing::warn!(
                "cannot serve the control socket ({e}); `--upgrade` cannot reach this process"
            );
        }
    }

    let mut handed = None;
    while let Ok(event) = signals.recv() {
        match event {
            Event::Reload => {
                let _ = notify.reloading();
                match running.reload() {
                    Ok(summaries) => {
                        metrics.process().reload_succeeded(SystemTime::now());
                        for line in &summaries {
                            tracing::info!("{line}");
                        }
                        tracing::info!("reloaded {}", running.path().display());
                        let set = watch_set(
                            running.path(),
                            running.config().server.reload_interval,
                            running.config(),
                        );
                        *watch.lock().unwrap_or_else(PoisonError::into_inner) = set;
                    }
                    Err(e) => {
                        metrics.process().reload_failed();
                        tracing::error!("reload failed, the running config stays in force: {e}");
                    }
                }
                let _ = notify.ready();
            }
            Event::Offer(reply) => {
                let _ = reply.send(offer(&running, admin.as_ref()));
            }
            Event::HandedOver(handover) => {
                handed = Some(handover);
                break;
            }
            Event::Stop => break,
        }
    }
    if let Some(handover) = handed {
        // Another process serves the same sockets now and is the one systemd and the probes
        // talk to: stop answering on the admin socket, and send systemd nothing more.
        if let Some(admin) = admin {
            admin.stop();
        }
        handover.confirm();
        state.readiness.set_draining();
        tracing::info!(
            "handed over to process {}: draining in-flight requests",
            handover.pid
        );
        running.retire();
        tracing::info!("drained; exiting");
        return ExitCode::SUCCESS;
    }
    // Not ready first, so load balancers stop sending before the listeners close.
    state.readiness.set_draining();
    let _ = notify.stopping();
    if let Some(published) = published {
        published.remove();
    }
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown();
    if let Some(admin) = admin {
        admin.stop();
    }
    ExitCode::SUCCESS
}

/// What a handover gives the new process: this process's own descriptors for every listening
/// socket (listeners and admin), by configured address. `None` (nothing is handed over) when
/// they cannot be duplicated.
fn offer(running: &Running, admin: Option<&admin::AdminServer>) -> Option<Offer> {
    let shared = || -> std::io::Result<Offer> {
        let mut offer: Offer = running
            .server
            .listening()?
            .into_iter()
            .map(|(addr, sockets)| (Role::Listener, addr, sockets))
            .collect();
        if let (Some(server), Some(config)) = (admin, running.config().admin) {
            if config.bind.port() != 0 {
                offer.push((Role::Admin, config.bind, vec![server.socket()?]));
            }
        }
        Ok(offer)
    };
    shared()
        .inspect_err(|e| tracing::warn!("upgrade: cannot share the listening sockets: {e}"))
        .ok()
}

/// The files `reload_interval` watches: the config and everything it names.
fn watch_set(path: &Path, interval: Duration, config: &Config) -> WatchSet {
    let mut paths = vec![path.to_path_buf()];
    paths.extend(config.files().into_iter().map(Path::to_path_buf));
    WatchSet { interval, paths }
}

#[cfg(feature = "demo")]
fn demo(bind: std::net::SocketAddr) -> ExitCode {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("certgate-demo-{}", std::process::id()));
    let (_, signals) = Signals::install();
    match certgate::demo::start(&dir, bind) {
        Ok(demo) => {
            // A closed stdout (piped into `head`, say) must not stop the demo.
            let mut out = std::io::stdout();
            let _ = writeln!(out, "{}", demo.instructions()).and_then(|()| out.flush());
            // The demo has nothing to reload: it runs until told to stop.
            while let Ok(Event::Reload) = signals.recv() {}
            demo.server.shutdown();
            let _ = std::fs::remove_dir_all(&dir);
            ExitCode::SUCCESS
        }
        Err(e) => fail(format_args!("demo: {e}")),
    }
}

#[cfg(not(feature = "demo"))]
fn demo(_bind: std::net::SocketAddr) -> ExitCode {
    fail(
        "this certgate was built without the demo (cargo feature `demo`); \
         build it with the default features to get it: cargo build --release",
    )
}

/// What the main thread waits for.
#[derive(Clone)]
enum Event {
    /// SIGHUP (`systemctl reload`, `kill -HUP`) or a change seen by the watcher.
    Reload,
    /// SIGTERM or SIGINT: drain and exit.
    Stop,
    /// The control socket's thread asks for the listening sockets, for a new process.
    Offer(Sender<Option<Offer>>),
    /// A new process serves on the handed-over sockets: stop accepting, drain and exit.
    HandedOver(Arc<Handover>),
}

/// SIGTERM, SIGINT and SIGHUP, caught from the start and turned into [`Event`]s.
struct Signals;

impl Signals {
    /// The sender (for other event sources) and the receiver the main thread waits on.
    fn install() -> (Sender<Event>, Receiver<Event>) {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let (tx, rx) = mpsc::channel();
        match signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) {
            Ok(mut signals) => {
                let tx = tx.clone();
                let spawned = std::thread::Builder::new()
                    .name("certgate-signals".into())
                    .spawn(move || {
                        for signal in signals.forever() {
                            let event = if signal == SIGHUP {
                                Event::Reload
                            } else {
                                Event::Stop
                            };
                            if tx.send(event).is_err() {
                                return;
                            }
                        }
                    });
                if let Err(e) = spawned {
                    eprintln!("certgate: cannot watch signals ({e}); running until killed");
                }
            }
            Err(e) => {
                eprintln!("certgate: cannot install signal handlers ({e}); running until killed");
            }
        }
        (tx, rx)
    }
}
