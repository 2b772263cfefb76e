//! certgate's own diagnostic lines on stderr: text or JSON (`[log] format`), filtered by the
//! `CERTGATE_LOG` environment variable (`info` by default, e.g. `debug` or `certgate=trace`).
//!
//! Text lines carry ANSI color codes only when stderr is a terminal: a log file or journald
//! would otherwise store escape sequences in every line.

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The environment variable that sets the level filter.
pub const FILTER_ENV: &str = "CERTGATE_LOG";

#[derive(Debug, thiserror::Error)]
#[error("cannot install the log subscriber: {0}")]
pub struct LogInitError(#[from] tracing_subscriber::util::TryInitError);

/// Installs the process-wide subscriber writing to stderr. Call once, first thing in `main`.
pub fn init(format: LogFormat) -> Result<(), LogInitError> {
    let ansi = std::io::stderr().is_terminal();
    subscriber(format, ansi, env_filter(), std::io::stderr).try_init()?;
    Ok(())
}

/// `CERTGATE_LOG`, or `info` when it is unset or not a valid filter.
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The subscriber `init` installs, for any writer (tests capture the lines).
pub fn subscriber<W>(
    format: LogFormat,
    ansi: bool,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        // Fields at the top level (`"message"`, `"listener"`, ...), as collectors expect.
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;

        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn capture(format: LogFormat, ansi: bool) -> String {
        let out = Capture::default();
        let sub = subscriber(format, ansi, EnvFilter::new("info"), out.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(
                listener = "public",
                peer = "192.0.2.1:4000",
                "handshake failed"
            );
            tracing::debug!("filtered out at info");
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn text_lines_have_no_color_unless_asked() {
        let plain = capture(LogFormat::Text, false);
        assert_eq!(plain.lines().count(), 1, "{plain}");
        assert!(plain.contains("handshake failed") && plain.contains("listener=\"public\""));
        assert!(!plain.contains('\x1b'), "{plain:?}");
        let colored = capture(LogFormat::Text, true);
        assert!(
            colored.contains("\x1b["),
            "a terminal gets colors: {colored:?}"
        );
    }

    #[test]
    fn json_lines_parse_with_fields_at_the_top() {
        let out = capture(LogFormat::Json, true);
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\x1b'), "{out:?}");
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(v["message"], "handshake failed");
        assert_eq!(v["listener"], "public");
        assert_eq!(v["peer"], "192.0.2.1:4000");
        assert_eq!(v["level"], "INFO");
        assert!(v["timestamp"].is_string());
    }
}
