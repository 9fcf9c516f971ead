//! TLS terminated by the broker itself (`--tls-cert`/`--tls-key`, SPEC §10), with rustls.
//!
//! The certificate and key files are checked before each handshake (two `stat` calls) and
//! reloaded when either changed, so a renewal (certbot, an ACME client, a copy by hand) takes
//! effect on the next connection without a restart. A pair that fails to load — for example the
//! moment between writing the new certificate and the new key — keeps the previous pair serving;
//! the failure is logged once per change and retried when the files change again.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The PEM files `--tls-cert` and `--tls-key` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate and key could not be served; each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate file {}: {source}", .path.display())]
    ReadCert { path: PathBuf, source: io::Error },
    #[error("cannot read the key file {}: {source}", .path.display())]
    ReadKey { path: PathBuf, source: io::Error },
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", .0.display())]
    NoCertificate(PathBuf),
    #[error("{} holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC)", .0.display())]
    NoKey(PathBuf),
    #[error("{} is not valid PEM: {detail}", .path.display())]
    Pem { path: PathBuf, detail: String },
    #[error(
        "the key {} does not belong to the certificate {} (the leaf must come first in the chain)",
        .key.display(), .cert.display()
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate {} and key {} cannot be used: {detail}", .cert.display(), .key.display())]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

/// Reads both files and builds a server configuration: HTTP/1.1 over TLS 1.2 or 1.3.
pub fn load(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_pem = std::fs::read(&files.cert).map_err(|source| TlsError::ReadCert {
        path: files.cert.clone(),
        source,
    })?;
    let key_pem = std::fs::read(&files.key).map_err(|source| TlsError::ReadKey {
        path: files.key.clone(),
        source,
    })?;
    let pem_error = |path: &Path, e: pem::Error| TlsError::Pem {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&files.cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    }
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => return Err(TlsError::NoKey(files.key.clone())),
        Err(e) => return Err(pem_error(&files.key, e)),
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsError::Mismatch {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                }
            }
            other => TlsError::Unusable {
                cert: files.cert.clone(),
                key: files.key.clone(),
                detail: other.to_string(),
            },
        })?;
    // The broker speaks HTTP/1.1 only; saying so lets clients skip an h2 attempt.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What identifies one version of a file: replaced (new inode) or rewritten in place (new
/// mtime, ctime or size). Symlinks are followed, so certbot's `live/` links work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

struct Current {
    /// The stamps of the last load attempted, successful or not.
    tried: [Option<Stamp>; 2],
    config: Arc<rustls::ServerConfig>,
}

/// The server configuration, reloaded when the files change.
pub struct ReloadingConfig {
    files: TlsFiles,
    current: Mutex<Current>,
}

impl ReloadingConfig {
    /// Loads the files once; a failure here stops start-up.
    pub fn open(files: TlsFiles) -> Result<Self, TlsError> {
        let tried = [stamp(&files.cert), stamp(&files.key)];
        let config = load(&files)?;
        Ok(Self {
            files,
            current: Mutex::new(Current { tried, config }),
        })
    }

    /// The configuration for the next handshake: the files' current pair if they changed and
    /// load, else the last good one.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        let now = [stamp(&self.files.cert), stamp(&self.files.key)];
        {
            let current = self.lock();
            if current.tried == now {
                return current.config.clone();
            }
        }
        // Loaded outside the lock: concurrent handshakes keep the old pair meanwhile.
        let loaded = load(&self.files);
        let mut current = self.lock();
        current.tried = now;
        match loaded {
            Ok(config) => {
                tracing::info!(cert = %self.files.cert.display(), "tls.reloaded");
                current.config = config;
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    serving = "the previous certificate",
                    "tls.reload_failed"
                );
            }
        }
        current.config.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        // A panic while holding the lock leaves a consistent pair behind: keep going.
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for ReloadingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingConfig")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}
