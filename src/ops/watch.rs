//! `[server] reload_interval`: watches the config file and every file it names, and asks for a
//! reload when any content changed.
//!
//! Contents, not modification times: Kubernetes secret volumes and cert-manager rotate files
//! by swapping a symlinked folder atomically, which leaves the paths' own mtimes and inodes
//! meaningless to a watcher that does not follow the links. Reading each file through its path
//! every interval follows every swap. A file that cannot be read counts as a content too (its
//! error), so a file that disappears and comes back triggers a reload each time.

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the watcher looks at; the main thread replaces it after every successful reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchSet {
    /// Zero: not watching.
    pub interval: Duration,
    pub paths: Vec<PathBuf>,
}

/// SHA-256 over every path's content (or read error), in order.
pub fn fingerprint(paths: &[PathBuf]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for path in paths {
        let path_bytes = path.as_os_str().as_encoded_bytes();
        ctx.update(&(path_bytes.len() as u64).to_be_bytes());
        ctx.update(path_bytes);
        match std::fs::read(path) {
            Ok(bytes) => {
                ctx.update(&[1]);
                ctx.update(&(bytes.len() as u64).to_be_bytes());
                ctx.update(&bytes);
            }
            Err(e) => {
                ctx.update(&[0]);
                ctx.update(format!("{:?}", e.kind()).as_bytes());
            }
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Starts the watcher thread: every `interval` (as `set` says at that moment) it fingerprints
/// the paths and sends `event` when the fingerprint differs from the last one it saw. It stops
/// when the receiving side is gone.
pub fn spawn<E: Clone + Send + 'static>(
    set: Arc<Mutex<WatchSet>>,
    events: Sender<E>,
    event: E,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("certgate-watch".into())
        .spawn(move || {
            let current = || set.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let mut seen = fingerprint(&current().paths);
            loop {
                let watch = current();
                // Off: look again now and then, in case a reload turned it on.
                let pause = if watch.interval.is_zero() {
                    Duration::from_secs(1)
                } else {
                    watch.interval
                };
                std::thread::sleep(pause);
                if watch.interval.is_zero() {
                    continue;
                }
                let now = fingerprint(&watch.paths);
                if now != seen {
                    seen = now;
                    if events.send(event.clone()).is_err() {
                        return;
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_follows_contents_through_a_symlink_swap() {
        let dir = std::env::temp_dir().join(format!("certgate-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("v1")).unwrap();
        std::fs::create_dir_all(dir.join("v2")).unwrap();
        std::fs::write(dir.join("v1/cert.pem"), b"one").unwrap();
        std::fs::write(dir.join("v2/cert.pem"), b"two").unwrap();
        std::os::unix::fs::symlink("v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/cert.pem", dir.join("cert.pem")).unwrap();
        let paths = vec![dir.join("cert.pem")];
        let before = fingerprint(&paths);
        assert_eq!(before, fingerprint(&paths), "stable while nothing changes");
        // Kubernetes' atomic swap: a new link renamed over the old one.
        std::os::unix::fs::symlink("v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_ne!(
            before,
            fingerprint(&paths),
            "the swap changes the content seen"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_ne!(
            before,
            fingerprint(&paths),
            "a vanished file is a change too"
        );
    }
}
