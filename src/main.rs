//! The `certgate` command line: run a config, check it, or start the demo.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Load and validate the config and every certificate and key it names, then exit.
    Check,
    /// Run a throwaway CA, an echo app and an `accept`-mode listener, and print curl commands.
    Demo {
        /// Address of the demo's TLS listener.
        #[arg(long, default_value = "127.0.0.1:8443")]
        bind: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CERTGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => check(cli.config),
        Some(Command::Demo { bind }) => demo(bind),
        None => run(cli.config),
    }
}

/// Prints a startup failure as one line and gives the exit status for it.
fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("certgate: {e}");
    ExitCode::from(EXIT_CONFIG)
}

/// Loads `--config` and every file it names, or says why not.
fn load(config: Option<PathBuf>) -> Result<(PathBuf, certgate::app::Prepared), ExitCode> {
    let path = config.ok_or_else(|| fail("--config FILE is required (or try `certgate demo`)"))?;
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

fn run(config: Option<PathBuf>) -> ExitCode {
    let (_, prepared) = match load(config) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    for line in &prepared.summaries {
        tracing::info!("{line}");
    }
    // Installed before the workers start, so a signal during startup is not lost.
    let signals = Signals::install();
    let server = match certgate::app::start(prepared) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    signals.wait();
    tracing::info!("shutting down: draining in-flight requests");
    server.shutdown();
    ExitCode::SUCCESS
}

fn demo(bind: std::net::SocketAddr) -> ExitCode {
    let dir = std::env::temp_dir().join(format!("certgate-demo-{}", std::process::id()));
    let signals = Signals::install();
    match certgate::demo::start(&dir, bind) {
        Ok(demo) => {
            // A closed stdout (piped into `head`, say) must not stop the demo.
            let mut out = std::io::stdout();
            let _ = writeln!(out, "{}", demo.instructions()).and_then(|()| out.flush());
            signals.wait();
            demo.server.shutdown();
            let _ = std::fs::remove_dir_all(&dir);
            ExitCode::SUCCESS
        }
        Err(e) => fail(format_args!("demo: {e}")),
    }
}

/// SIGTERM and SIGINT, caught from the start so that either one begins a graceful shutdown.
struct Signals(Option<signal_hook::iterator::Signals>);

impl Signals {
    fn install() -> Self {
        use signal_hook::consts::{SIGINT, SIGTERM};
        match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
            Ok(s) => Signals(Some(s)),
            Err(e) => {
                eprintln!("certgate: cannot install signal handlers ({e}); running until killed");
                Signals(None)
            }
        }
    }

    /// Blocks until one of the signals arrives.
    fn wait(self) {
        match self.0 {
            Some(mut s) => {
                let _ = s.forever().next();
            }
            None => loop {
                std::thread::park();
            },
        }
    }
}
