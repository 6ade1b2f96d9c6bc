//! Mutual TLS between nodes, with each node's identity bound to its
//! certificate.
//!
//! Both ends present a certificate that chains to the cluster's CA (TLS 1.3
//! only). A node's identity is the DNS subject alternative name
//! `node-<id>.<cluster>` (see [`node_identity`]): the dialer checks it on the
//! node it meant to reach (as a server name), the listener checks it on the
//! node id the peer claims in its hello. A certificate for node 2 therefore
//! cannot speak as node 1, in either direction.
//!
//! The files are re-read (at most once per second, when a connection is
//! made) and a changed set is loaded, so a renewed certificate is used by
//! new connections without a restart. A set that does not load (a rotation
//! half-written) is logged and the previous one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::NodeId;

/// How often, at most, the files are looked at for a rotation.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// Where a node finds its TLS material, as PEM files (the layout of a
/// Kubernetes TLS Secret: `ca.crt`, `tls.crt`, `tls.key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The CA bundle every peer's certificate must chain to.
    pub ca: PathBuf,
    /// This node's certificate chain (leaf first); its DNS SANs must include
    /// [`node_identity`] of this node.
    pub cert: PathBuf,
    /// This node's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsSettings {
    /// The three files of a directory holding `ca.crt`, `tls.crt` and
    /// `tls.key` (a mounted Kubernetes TLS Secret).
    pub fn from_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        Self {
            ca: dir.join("ca.crt"),
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }
}

/// The DNS name a certificate must carry (as a subject alternative name) to
/// speak as `node` in `cluster`: `node-<id>.<cluster>`.
pub fn node_identity(cluster: &str, node: NodeId) -> String {
    format!("node-{}.{cluster}", node.0)
}

/// Why the TLS material could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file held no usable PEM item of the kind expected.
    #[error("{path}: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        detail: String,
    },
    /// The cluster name cannot be part of a DNS name, so no certificate can
    /// carry a node identity in it.
    #[error("cluster name `{name}` cannot be used in a certificate's DNS name `node-<id>.{name}`")]
    ClusterName {
        /// The cluster name.
        name: String,
    },
    /// rustls refused the material (for example a key that does not match
    /// the certificate).
    #[error("TLS configuration from {cert} and {key}: {detail}")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        detail: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The files' bytes: a change in any of them means a reload.
#[derive(PartialEq, Eq)]
struct Material {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Material {
    fn read(settings: &TlsSettings) -> Result<Self, TlsError> {
        Ok(Self {
            ca: read(&settings.ca)?,
            cert: read(&settings.cert)?,
            key: read(&settings.key)?,
        })
    }
}

struct Loaded {
    material: Material,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    checked_at: Instant,
}

/// A node's TLS state: the configurations built from the files, reloaded
/// when the files change.
pub(crate) struct TlsContext {
    settings: TlsSettings,
    cluster: String,
    loaded: Mutex<Loaded>,
}

impl TlsContext {
    /// Loads the files; any problem is an error naming the file.
    pub(crate) fn load(settings: TlsSettings, cluster: &str) -> Result<Self, TlsError> {
        ServerName::try_from(node_identity(cluster, NodeId(0))).map_err(|_| {
            TlsError::ClusterName {
                name: cluster.to_owned(),
            }
        })?;
        let material = Material::read(&settings)?;
        let (acceptor, connector) = build(&settings, &material)?;
        Ok(Self {
            settings,
            cluster: cluster.to_owned(),
            loaded: Mutex::new(Loaded {
                material,
                acceptor,
                connector,
                checked_at: Instant::now(),
            }),
        })
    }

    /// The current acceptor and connector, after a reload if the files
    /// changed since the last look.
    pub(crate) fn current(&self) -> (TlsAcceptor, TlsConnector) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.checked_at.elapsed() >= RELOAD_EVERY {
            loaded.checked_at = Instant::now();
            match Material::read(&self.settings) {
                Ok(material) if material != loaded.material => {
                    match build(&self.settings, &material) {
                        Ok((acceptor, connector)) => {
                            tracing::info!(cert = %self.settings.cert.display(), "TLS certificates reloaded");
                            *loaded = Loaded {
                                material,
                                acceptor,
                                connector,
                                checked_at: Instant::now(),
                            };
                        }
                        Err(error) => {
                            tracing::warn!(%error, "changed TLS files do not load; the previous ones stay in use");
                        }
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "TLS files unreadable; the previous ones stay in use");
                }
            }
        }
        (loaded.acceptor.clone(), loaded.connector.clone())
    }

    /// The name a dialer expects on `node`'s certificate.
    pub(crate) fn server_name(&self, node: NodeId) -> ServerName<'static> {
        ServerName::try_from(node_identity(&self.cluster, node))
            // Checked at load: the cluster name makes valid DNS names.
            .unwrap_or_else(|_| ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()))
    }

    /// Whether `cert` (already verified to chain to the CA) carries the
    /// identity of `claimed`.
    pub(crate) fn check_identity(
        &self,
        cert: &CertificateDer<'_>,
        claimed: NodeId,
    ) -> Result<(), String> {
        let cert = webpki::EndEntityCert::try_from(cert).map_err(|e| e.to_string())?;
        cert.verify_is_valid_for_subject_name(&self.server_name(claimed))
            .map_err(|_| {
                format!(
                    "its certificate does not carry `{}`",
                    node_identity(&self.cluster, claimed)
                )
            })
    }
}

fn build(
    settings: &TlsSettings,
    material: &Material,
) -> Result<(TlsAcceptor, TlsConnector), TlsError> {
    let pem_error = |path: &Path, detail: String| TlsError::Pem {
        path: path.to_owned(),
        detail,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&material.ca) {
        let cert = cert.map_err(|e| pem_error(&settings.ca, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| pem_error(&settings.ca, format!("not a CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(pem_error(&settings.ca, "no certificate in it".into()));
    }
    let chain = CertificateDer::pem_slice_iter(&material.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&settings.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(&settings.cert, "no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&material.key)
        .map_err(|e| pem_error(&settings.key, format!("no private key: {e}")))?;
    let config_error = |e: rustls::Error| TlsError::Config {
        cert: settings.cert.clone(),
        key: settings.key.clone(),
        detail: e.to_string(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = Arc::new(roots);
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Pem {
                path: settings.ca.clone(),
                detail: e.to_string(),
            })?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(config_error)?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(config_error)?;
    Ok((
        TlsAcceptor::from(Arc::new(server)),
        TlsConnector::from(Arc::new(client)),
    ))
}
