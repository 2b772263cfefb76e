//! A listener's own certificates: `cert`/`key` (PEM), `cert` as a PKCS#12 file with
//! `cert_password_file`, or `certificates = [...]` to serve an ECDSA and an RSA certificate side
//! by side.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// One certificate chain and its key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// PEM chain (leaf first), or a PKCS#12 file holding the chain and the key.
    pub cert: PathBuf,
    /// The PEM private key; `None` for a PKCS#12 `cert`.
    pub key: Option<PathBuf>,
    /// The PKCS#12 password, in a file so that it is not in the config (`None`: empty).
    pub password_file: Option<PathBuf>,
}

impl Identity {
    /// Every file this identity names.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.cert.as_path())
            .chain(self.key.as_deref())
            .chain(self.password_file.as_deref())
    }
}

/// `certificates = [{ cert = …, key = … }, …]`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct FileIdentity {
    cert: PathBuf,
    key: Option<PathBuf>,
    cert_password_file: Option<PathBuf>,
}

/// Whether `cert` names a PKCS#12 file (by its extension, as Azure and Windows name them).
fn is_pkcs12(cert: &Path) -> bool {
    cert.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("p12") || e.eq_ignore_ascii_case("pfx"))
}

/// One identity from its keys; `at` names them in errors (`listener[0]` or
/// `listener[0].certificates[1]`).
fn identity(
    cert: PathBuf,
    key: Option<PathBuf>,
    password_file: Option<PathBuf>,
    base_dir: &Path,
    at: &str,
) -> Result<Identity, ConfigError> {
    let pkcs12 = is_pkcs12(&cert);
    match (pkcs12, &key, &password_file) {
        (true, Some(_), _) => Err(ConfigError::invalid(
            format!("{at}.key"),
            format!(
                "{} is PKCS#12, which holds the key: leave `key` out",
                cert.display()
            ),
        )),
        (false, None, _) => Err(ConfigError::invalid(
            format!("{at}.key"),
            "is required with a PEM `cert` (a .p12/.pfx `cert` holds its own key)",
        )),
        (false, Some(_), Some(_)) => Err(ConfigError::invalid(
            format!("{at}.cert_password_file"),
            "only applies to a PKCS#12 (.p12/.pfx) `cert`",
        )),
        _ => Ok(Identity {
            cert: base_dir.join(cert),
            key: key.map(|k| base_dir.join(k)),
            password_file: password_file.map(|p| base_dir.join(p)),
        }),
    }
}

/// The listener's identities: `cert` (+ `key` / `cert_password_file`), or `certificates`.
pub(super) fn identities(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    password_file: Option<PathBuf>,
    certificates: Option<Vec<FileIdentity>>,
    base_dir: &Path,
    at: &str,
) -> Result<Vec<Identity>, ConfigError> {
    match (cert, certificates) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            format!("{at}.certificates"),
            "replaces `cert`/`key`: use one or the other",
        )),
        (None, None) => Err(ConfigError::invalid(
            format!("{at}.cert"),
            "is required (or `certificates = [...]`)",
        )),
        (Some(cert), None) => Ok(vec![identity(cert, key, password_file, base_dir, at)?]),
        (None, Some(list)) => {
            if key.is_some() || password_file.is_some() {
                return Err(ConfigError::invalid(
                    format!("{at}.certificates"),
                    "each entry names its own key: leave `key` and `cert_password_file` out",
                ));
            }
            if list.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{at}.certificates"),
                    "must name at least one certificate",
                ));
            }
            list.into_iter()
                .enumerate()
                .map(|(i, f)| {
                    let at = format!("{at}.certificates[{i}]");
                    identity(f.cert, f.key, f.cert_password_file, base_dir, &at)
                })
                .collect()
        }
    }
}
