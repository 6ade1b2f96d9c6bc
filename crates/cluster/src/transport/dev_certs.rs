//! A throwaway CA and node certificates for development and tests
//! (feature `dev-certs`): what `cargo xtask certs` writes, and what the
//! tests make for themselves. Production certificates come from your own
//! CA (for example cert-manager, see the README).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::tls::{TlsSettings, node_identity};
use crate::NodeId;

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevCertError {
    /// rcgen refused the parameters.
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A node's certificate and key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct NodeCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// What a certificate may be made with besides the default (tests use it to
/// make the certificates an attacker could hold).
#[derive(Debug, Clone, Default)]
pub struct CertOptions {
    /// DNS names instead of this node's identity.
    pub dns_names: Option<Vec<String>>,
    /// Make it expired (valid from 2000 to 2001).
    pub expired: bool,
}

/// A self-signed CA that issues node certificates.
pub struct DevCa {
    cluster: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl DevCa {
    /// A fresh CA for `cluster`.
    pub fn new(cluster: &str) -> Result<Self, DevCertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{cluster} nodes CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(Self {
            cluster: cluster.to_owned(),
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `node` carrying its identity, for both ends of a
    /// connection (server and client auth).
    pub fn issue(&self, node: NodeId) -> Result<NodeCert, DevCertError> {
        self.issue_with(node, &CertOptions::default())
    }

    /// A certificate for `node` with `options`.
    pub fn issue_with(
        &self,
        node: NodeId,
        options: &CertOptions,
    ) -> Result<NodeCert, DevCertError> {
        let names = options
            .dns_names
            .clone()
            .unwrap_or_else(|| vec![node_identity(&self.cluster, node)]);
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, node_identity(&self.cluster, node));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if options.expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `ca.crt`, `tls.crt` and `tls.key` for `node` into `dir` (the
    /// layout of a Kubernetes TLS Secret) and returns the settings naming them.
    pub fn write_node(&self, node: NodeId, dir: &Path) -> Result<TlsSettings, DevCertError> {
        let cert = self.issue(node)?;
        write_files(dir, &self.ca_pem(), &cert)
    }
}

/// Writes a CA bundle and a node certificate as `ca.crt`, `tls.crt` and
/// `tls.key` into `dir` (created if missing).
pub fn write_files(dir: &Path, ca_pem: &str, cert: &NodeCert) -> Result<TlsSettings, DevCertError> {
    let write = |path: PathBuf, text: &str| {
        std::fs::write(&path, text).map_err(|source| DevCertError::Write { path, source })
    };
    std::fs::create_dir_all(dir).map_err(|source| DevCertError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let settings = TlsSettings::from_dir(dir);
    write(settings.ca.clone(), ca_pem)?;
    write(settings.cert.clone(), &cert.cert_pem)?;
    write(settings.key.clone(), &cert.key_pem)?;
    Ok(settings)
}
