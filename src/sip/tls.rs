//! TLS for SIP (RFC 3261 §26) and secure WebSocket (RFC 7118): the node's certificate from PEM
//! files, reloaded when the files change (a renewed certificate is served without a restart;
//! connections already up keep the one they shook hands with), and a self-signed certificate
//! for `sipmesh dev`. rustls with the ring provider, never OpenSSL.
//!
//! Outgoing TLS (a `sips:` or `transport=tls` next hop) verifies the server against the
//! system's CA bundle and the node's own certificate (so nodes sharing a certificate, as a dev
//! mesh does, trust each other).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tracing::{info, warn};

/// Where the certificate chain and its private key are (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("{what} {path}: {detail}")]
    File {
        /// Which file (certificate or key).
        what: &'static str,
        /// Its path.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the pair (a key that does not match the certificate, say).
    #[error("the certificate and key cannot be used: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate could not be generated.
    #[error("cannot generate a certificate: {0}")]
    Generate(String),
}

/// What identifies one version of the files: their modification times and sizes.
type Stamp = Option<(SystemTime, u64, SystemTime, u64)>;

fn stamp(files: &TlsFiles) -> Stamp {
    let c = std::fs::metadata(&files.cert).ok()?;
    let k = std::fs::metadata(&files.key).ok()?;
    Some((c.modified().ok()?, c.len(), k.modified().ok()?, k.len()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |detail: String| TlsError::File {
        what: "certificate",
        path: path.display().to_string(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no certificate in the file".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "key",
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

fn server_config(
    files: &TlsFiles,
) -> Result<(Arc<rustls::ServerConfig>, Vec<CertificateDer<'static>>), TlsError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key)?;
    Ok((Arc::new(config), certs))
}

/// The CA bundles Debian and others keep.
const SYSTEM_BUNDLES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

fn client_config(own: &[CertificateDer<'static>]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for bundle in SYSTEM_BUNDLES {
        if let Ok(iter) = CertificateDer::pem_file_iter(bundle) {
            let (_added, _ignored) = roots.add_parsable_certificates(iter.flatten());
            break;
        }
    }
    // The node's own certificate (self-signed, or its chain's root): nodes of one mesh that
    // share a certificate reach each other.
    for c in own {
        let _ = roots.add(c.clone());
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The node's TLS: the server configuration in use (swapped when the files change) and the
/// client configuration for outgoing connections.
pub struct Tls {
    files: TlsFiles,
    current: Mutex<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>, Stamp)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// Load the certificate and key (an error names the file at fault).
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let at = stamp(&files);
        let (server, certs) = server_config(&files)?;
        let client = client_config(&certs)?;
        Ok(Tls {
            files,
            current: Mutex::new((server, client, at)),
        })
    }

    /// The files it serves.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let c = self.current.lock().unwrap_or_else(|p| p.into_inner());
        tokio_rustls::TlsAcceptor::from(c.0.clone())
    }

    /// A connector for outgoing connections.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        let c = self.current.lock().unwrap_or_else(|p| p.into_inner());
        tokio_rustls::TlsConnector::from(c.1.clone())
    }

    /// Load the files again if they changed since the last load. `Ok(true)`: a new certificate
    /// is in use. On an error (a half-written file, a key that does not match) the one in use
    /// stays, and the next call tries again.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        if now.is_none() || now == self.current.lock().unwrap_or_else(|p| p.into_inner()).2 {
            return Ok(false);
        }
        let (server, certs) = server_config(&self.files)?;
        let client = client_config(&certs)?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = (server, client, now);
        Ok(true)
    }

    /// Reload whenever the files change, checking every `every`, until `shutdown`.
    pub async fn watch(
        self: Arc<Self>,
        every: std::time::Duration,
        on_reload: impl Fn(Result<(), String>) + Send + 'static,
        mut shutdown: sipmesh_net::shutdown::Shutdown,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => {
                    info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                    on_reload(Ok(()));
                }
                Err(e) => {
                    warn!(error = %e, "TLS certificate not reloaded; the previous one stays in use");
                    on_reload(Err(e.to_string()));
                }
            }
        }
    }
}

/// The server name to verify for a next hop: its host name, or its IP address.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).ok()
}

/// Write a self-signed certificate for `names` (host names and IP addresses) into `dir`
/// (`cert.pem`, `key.pem`, the key readable by the owner only), unless both files exist.
pub fn self_signed(dir: &Path, names: &[String]) -> Result<TlsFiles, TlsError> {
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    if files.cert.exists() && files.key.exists() {
        return Ok(files);
    }
    let gen = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let write = |path: &Path, what: &'static str, text: String, mode: u32| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |e: std::io::Error| TlsError::File {
            what,
            path: path.display().to_string(),
            detail: e.to_string(),
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(fail)?;
        f.write_all(text.as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)
    };
    std::fs::create_dir_all(dir).map_err(|e| TlsError::File {
        what: "certificate",
        path: dir.display().to_string(),
        detail: e.to_string(),
    })?;
    write(&files.key, "key", gen.key_pair.serialize_pem(), 0o600)?;
    write(&files.cert, "certificate", gen.cert.pem(), 0o644)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_loads_and_a_changed_one_is_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let files = self_signed(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        let tls = Tls::load(files.clone()).unwrap();
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed");
        // A broken file: the error names it, and the certificate in use stays.
        std::fs::write(&files.cert, "not a certificate").unwrap();
        let e = tls.reload_if_changed().unwrap_err().to_string();
        assert!(e.contains("cert.pem"), "{e}");
        std::fs::remove_file(&files.cert).unwrap();
        std::fs::remove_file(&files.key).unwrap();
        self_signed(dir.path(), &["other.example".into()]).unwrap();
        assert!(tls.reload_if_changed().unwrap());
        assert!(Tls::load(TlsFiles {
            cert: dir.path().join("missing.pem"),
            key: files.key.clone(),
        })
        .unwrap_err()
        .to_string()
        .contains("missing.pem"));
    }
}
