//! The test server's credentials: a CA, a serving certificate for
//! 127.0.0.1, a service-account signing key and one admin token.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};

use super::EnvTestError;

/// The bearer token of the admin user (loopback only, fresh per server).
pub(super) const TOKEN: &str = "envtest-admin-token";

pub(super) struct Files {
    pub ca_cert: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    pub tokens: PathBuf,
}

fn cert_error(e: rcgen::Error) -> EnvTestError {
    EnvTestError::Certificates(e.to_string())
}

fn write(path: &Path, text: &str) -> Result<PathBuf, EnvTestError> {
    std::fs::write(path, text).map_err(|source| EnvTestError::Io {
        what: format!("writing {}", path.display()),
        source,
    })?;
    Ok(path.to_owned())
}

pub(super) fn write_all(dir: &Path) -> Result<Files, EnvTestError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "lease-k8s envtest CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(cert_error)?)
        .map_err(cert_error)?;

    let serving_key = KeyPair::generate().map_err(cert_error)?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).map_err(cert_error)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let serving = params.signed_by(&serving_key, &ca).map_err(cert_error)?;

    let sa_key = KeyPair::generate().map_err(cert_error)?;
    Ok(Files {
        ca_cert: write(&dir.join("ca.crt"), &ca.pem())?,
        serving_cert: write(&dir.join("apiserver.crt"), &serving.pem())?,
        serving_key: write(&dir.join("apiserver.key"), &serving_key.serialize_pem())?,
        sa_key: write(&dir.join("sa.key"), &sa_key.serialize_pem())?,
        sa_pub: write(&dir.join("sa.pub"), &sa_key.public_key_pem())?,
        tokens: write(
            &dir.join("tokens.csv"),
            &format!("{TOKEN},admin,admin,\"system:masters\"\n"),
        )?,
    })
}
