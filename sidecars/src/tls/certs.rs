//! Certificates: loading the PEM files, building the rustls server configuration, and
//! swapping it in when the files change.
//!
//! Each new connection takes the configuration current at accept time (one atomic load),
//! so a reload never touches connections already open: they keep the certificate they
//! were handshaken with until they close.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, ProducesTickets, StoresServerSessions};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig};

/// Why a certificate, key or CA file cannot be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        /// "certificate", "private key" or "client CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not valid PEM.
    #[error("{what} file {path} is not valid PEM: {source}")]
    Pem {
        /// "certificate", "private key" or "client CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The PEM parser's complaint.
        source: pem::Error,
    },
    /// The file holds no PEM block of the expected kind.
    #[error("{path} holds no {expected} PEM block")]
    Empty {
        /// The file.
        path: PathBuf,
        /// What was looked for, e.g. "CERTIFICATE".
        expected: &'static str,
    },
    /// The leaf certificate could not be parsed as X.509.
    #[error("certificate file {path}: the first certificate is not valid X.509: {reason}")]
    BadCert {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// rustls cannot use the private key (unsupported algorithm or corrupt).
    #[error("private key file {path} is unusable: {source}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The key does not belong to the certificate.
    #[error("private key {key} does not match certificate {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The client CA bundle cannot be used to verify client certificates.
    #[error("client CA file {path} is unusable: {reason}")]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration (no usable protocol version for this provider).
    #[error("cannot build the TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The files a configuration is built from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM bundle of CAs that sign acceptable client certificates; `None` means no
    /// client authentication.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Every file a change of which should trigger a reload.
    pub fn watched(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone()];
        paths.extend(self.client_ca.clone());
        paths
    }
}

/// Session resumption state shared across reloads, so rotating a certificate does not
/// invalidate every client's ticket.
#[derive(Clone)]
pub struct Resumption {
    storage: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
    tls13_tickets: usize,
}

impl Resumption {
    /// Tickets (stateless, rotating keys) plus an in-memory session cache of
    /// `cache_size` entries for TLS 1.2 clients that do not take tickets.
    pub fn enabled(cache_size: usize) -> Result<Self, CertError> {
        Ok(Self {
            storage: rustls::server::ServerSessionMemoryCache::new(cache_size),
            ticketer: rustls::crypto::ring::Ticketer::new().map_err(CertError::Config)?,
            tls13_tickets: 2,
        })
    }

    /// Every handshake is a full one (benchmarks of handshake cost).
    pub fn disabled() -> Self {
        Self {
            storage: Arc::new(NoServerSessionStorage {}),
            ticketer: Arc::new(NeverTickets),
            tls13_tickets: 0,
        }
    }
}

/// A ticketer that is off: rustls only issues tickets when `enabled()` says so.
#[derive(Debug)]
struct NeverTickets;

impl ProducesTickets for NeverTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _plain: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _cipher: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// A built configuration and what the metrics want to know about it.
pub struct Loaded {
    /// Ready for `tokio_rustls::TlsAcceptor`.
    pub config: Arc<ServerConfig>,
    /// The leaf certificate's `notAfter`, Unix seconds.
    pub not_after: i64,
}

/// The ring provider with its (AEAD-only) cipher suites in the terminator's order of
/// preference: AES-128-GCM first, then AES-256-GCM, then ChaCha20-Poly1305, for TLS 1.3
/// and 1.2 alike. AES-128 takes 10 rounds per block against AES-256's 14, and its suites
/// hash with SHA-256, which x86-64 and ARMv8 CPUs compute in hardware, where ring has no
/// hardware path for the SHA-384 of the AES-256 suites: that hash alone was 9 % of a full
/// handshake's CPU. ring's own order puts AES-256 first.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as suite;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            suite::TLS13_AES_128_GCM_SHA256,
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::ring::default_provider()
    })
}

/// Reads the files and builds a server configuration: TLS 1.3 and 1.2 only, the
/// provider's cipher suites in the provider's order (not the client's), ALPN `h2` then
/// `http/1.1`.
pub fn load(
    files: &TlsFiles,
    resumption: &Resumption,
    provider: &Arc<CryptoProvider>,
) -> Result<Loaded, CertError> {
    let chain = read_certs(&files.cert, "certificate")?;
    let not_after = not_after(&files.cert, &chain[0])?;
    let key = read_key(&files.key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| CertError::BadKey {
            path: files.key.clone(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(CertError::Mismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            });
        }
        // The provider cannot tell (no public key for this key type): the handshake
        // will show it; nothing more to check here.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(other) => {
            return Err(CertError::BadCert {
                path: files.cert.clone(),
                reason: other.to_string(),
            });
        }
    }

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(CertError::Config)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path, "client CA")? {
                roots.add(cert).map_err(|err| CertError::ClientCa {
                    path: path.clone(),
                    reason: err.to_string(),
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|err| CertError::ClientCa {
                path: path.clone(),
                reason: err.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    // OpenSSL's clients, among others, list AES-256 first: the server's order decides.
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = resumption.storage.clone();
    config.ticketer = resumption.ticketer.clone();
    config.send_tls13_tickets = resumption.tls13_tickets;
    Ok(Loaded {
        config: Arc::new(config),
        not_after,
    })
}

/// The configuration new connections use, replaced whole on reload.
pub type Current = Arc<ArcSwap<ServerConfig>>;

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let pem = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| CertError::Pem {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CertError::Empty {
            path: path.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let pem = read(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        pem::Error::NoItemsFound => CertError::Empty {
            path: path.to_owned(),
            expected: "PRIVATE KEY (PKCS#8, RSA or EC)",
        },
        source => CertError::Pem {
            what: "private key",
            path: path.to_owned(),
            source,
        },
    })
}

fn not_after(path: &Path, leaf: &CertificateDer<'_>) -> Result<i64, CertError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|err| CertError::BadCert {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
    Ok(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn files(cert: PathBuf, key: PathBuf) -> TlsFiles {
        TlsFiles {
            cert,
            key,
            client_ca: None,
        }
    }

    #[test]
    fn a_matching_pair_loads_with_both_alpn_protocols_and_its_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "a");
        let loaded = load(&files(c, k), &Resumption::disabled(), &provider()).unwrap();
        assert_eq!(
            loaded.config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        // rcgen's default validity ends in 4096.
        assert!(loaded.not_after > 4_000_000_000, "{}", loaded.not_after);
    }

    #[test]
    fn a_key_from_another_pair_is_named_as_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = write_pair(dir.path(), "a");
        let (_, k) = write_pair(dir.path(), "b");
        let err = load(&files(c, k), &Resumption::disabled(), &provider())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("b.key") && err.contains("a.crt") && err.contains("does not match"),
            "{err}"
        );
    }

    #[test]
    fn a_key_file_given_as_cert_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (_, k) = write_pair(dir.path(), "a");
        let err = load(&files(k.clone(), k), &Resumption::disabled(), &provider())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("a.key") && err.contains("CERTIFICATE"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_key_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (c, _) = write_pair(dir.path(), "a");
        let err = load(
            &files(c, dir.path().join("nope.key")),
            &Resumption::disabled(),
            &provider(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("nope.key") && err.contains("cannot read private key"),
            "{err}"
        );
    }
}
