//! The server's certificate and key: loading them from PEM files, sharing them across
//! loops, and swapping them while the server runs (SIGHUP or a call).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The server's certificate and key, shared by every loop and swappable while they run:
/// a clone is the same configuration, so [`set`](TlsConfig::set) or
/// [`reload_pem_files`](TlsConfig::reload_pem_files) on any clone changes what the next
/// connection gets. Connections already open keep the configuration they started with.
#[derive(Clone)]
pub struct TlsConfig {
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Serves with a rustls configuration built by the caller (its ALPN list is used as
    /// is: [`server_config`](TlsConfig::server_config) sets `http/1.1`).
    pub fn new(config: Arc<ServerConfig>) -> TlsConfig {
        TlsConfig {
            current: Arc::new(RwLock::new(config)),
        }
    }

    /// Loads a certificate chain and its private key from PEM files; see
    /// [`server_config`](TlsConfig::server_config).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsConfig, TlsError> {
        Ok(TlsConfig::new(TlsConfig::server_config(cert, key)?))
    }

    /// A rustls configuration from PEM files: the certificate chain (leaf first) and its
    /// private key (PKCS#8, PKCS#1 or SEC1), TLS 1.2 and 1.3 with ring's safe defaults,
    /// no client certificates, ALPN `http/1.1`. An error names the file at fault.
    pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
        let at = |path: &Path, message: String| TlsError {
            path: Some(path.to_owned()),
            message,
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|e| at(cert, pem_error(e)))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| at(cert, pem_error(e)))?;
        if certs.is_empty() {
            return Err(at(cert, "no certificate in the file".into()));
        }
        let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| at(key, pem_error(e)))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError {
                path: None,
                message: e.to_string(),
            })?
            .with_no_client_auth()
            .with_single_cert(certs, private_key)
            .map_err(|e| at(key, format!("does not go with {}: {e}", cert.display())))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the configuration for connections accepted from now on.
    pub fn set(&self, config: Arc<ServerConfig>) {
        match self.current.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }

    /// Loads the files again and, if they load, serves the new certificate to connections
    /// accepted from now on. If they do not, the one in use stays and the error says why.
    pub fn reload_pem_files(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let config = TlsConfig::server_config(cert, key)?;
        self.set(config);
        Ok(())
    }
}

/// Reloads the certificate and key from their files on every SIGHUP (feature `signals`),
/// in a thread of its own: connections accepted after a reload get the new certificate,
/// open ones keep theirs; files that do not load leave the old certificate in use, and
/// the log says why.
#[cfg(feature = "signals")]
pub fn reload_on_sighup(
    tls: TlsConfig,
    cert: PathBuf,
    key: PathBuf,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new()
        .name("wsreactor-sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                match tls.reload_pem_files(&cert, &key) {
                    Ok(()) => log::info!("SIGHUP: reloaded {}", cert.display()),
                    Err(e) => log::warn!("SIGHUP: kept the certificate in use: {e}"),
                }
            }
        })
}

fn pem_error(error: rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("{other:?}"),
    }
}

/// A certificate or key that does not load, with the file it came from.
#[derive(Debug, Clone)]
pub struct TlsError {
    path: Option<PathBuf>,
    message: String,
}

impl TlsError {
    /// The file at fault, if the error is about one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}: {}", path.display(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for TlsError {}
