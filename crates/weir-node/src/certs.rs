//! The cluster's certificates: a CA, a node certificate and a client certificate, all made with
//! rcgen. `weir certs init --dir D` calls [`init`]; the node presents `node.crt`, clients verify
//! it against `ca.crt`. There is no "skip verification" mode anywhere.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Names every node certificate answers to, besides the hosts given to [`init`].
pub const DEFAULT_HOSTS: &[&str] = &["localhost", "127.0.0.1", "::1"];
/// Certificates are valid this many days (10 years: a cluster CA is rotated by re-running init).
const VALIDITY_DAYS: i64 = 3650;

/// Where the files of one certificate directory are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// The file names inside `dir` (whether or not they exist).
pub fn paths(dir: &Path) -> CertPaths {
    CertPaths {
        dir: dir.to_path_buf(),
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        node_cert: dir.join("node.crt"),
        node_key: dir.join("node.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
    }
}

impl CertPaths {
    /// True if the CA and the node's certificate and key are all there.
    pub fn node_files_exist(&self) -> bool {
        self.ca_cert.is_file() && self.node_cert.is_file() && self.node_key.is_file()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir} already holds a CA ({file}); refusing to overwrite it")]
    Exists { dir: PathBuf, file: PathBuf },
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` with a new CA and a node and a client certificate signed by it. The node
/// certificate carries [`DEFAULT_HOSTS`] and `hosts` as subject alternative names. Refuses to
/// overwrite an existing CA: a new CA would cut every client and node off the old one.
pub fn init(dir: &Path, hosts: &[String]) -> Result<CertPaths, CertError> {
    let p = paths(dir);
    if p.ca_cert.exists() {
        return Err(CertError::Exists {
            dir: dir.to_path_buf(),
            file: p.ca_cert,
        });
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;

    let (not_before, not_after) = validity();
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "weir cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let mut names: Vec<String> = DEFAULT_HOSTS.iter().map(|s| s.to_string()).collect();
    for h in hosts {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let mut node_params = CertificateParams::new(Vec::<String>::new())?;
    node_params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    node_params
        .distinguished_name
        .push(DnType::CommonName, "weir node");
    node_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        // Nodes also dial each other (replication), presenting the same certificate.
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    node_params.not_before = not_before;
    node_params.not_after = not_after;
    let node_key = KeyPair::generate()?;
    let node_cert = node_params.signed_by(&node_key, &issuer)?;

    let mut client_params = CertificateParams::new(Vec::<String>::new())?;
    client_params
        .distinguished_name
        .push(DnType::CommonName, "weir client");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client_params.not_before = not_before;
    client_params.not_after = not_after;
    let client_key = KeyPair::generate()?;
    let client_cert = client_params.signed_by(&client_key, &issuer)?;

    write_file(&p.ca_key, ca_key_pem.as_bytes(), true)?;
    write_file(&p.node_cert, node_cert.pem().as_bytes(), false)?;
    write_file(&p.node_key, node_key.serialize_pem().as_bytes(), true)?;
    write_file(&p.client_cert, client_cert.pem().as_bytes(), false)?;
    write_file(&p.client_key, client_key.serialize_pem().as_bytes(), true)?;
    // The CA certificate goes last: its presence is what marks the directory as complete.
    write_file(&p.ca_cert, ca_cert.pem().as_bytes(), false)?;
    tracing::info!(dir = %dir.display(), ?names, "created cluster CA and certificates");
    Ok(p)
}

fn validity() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    // A day of slack before now tolerates clocks that are a little behind.
    (
        now - time::Duration::days(1),
        now + time::Duration::days(VALIDITY_DAYS),
    )
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = options.open(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Reads every certificate of a PEM file.
pub fn load_certs(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, CertError> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| CertError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::Invalid {
            path: path.to_path_buf(),
            reason: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> Result<rustls_pki_types::PrivateKeyDer<'static>, CertError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_file(path).map_err(|e| CertError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
