//! Issuing the cluster's certificates (`steward tls ca create`, `steward tls cert create`,
//! and `steward dev`'s CA): a CA, and certificates that carry one identity each.
//!
//! Every certificate names its identity in a URI SAN (`core::identity`). Controllers and
//! agents serve as well as call, so theirs also carry their kind's server name
//! ([`server_name`]) as a DNS SAN and both the server and the client key purposes; a
//! client's carries only the client purpose, so it can never pass as a server.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use steward_core::identity::{Identity, Principal};

use super::{server_name, ServerKind, TlsError, CA_FILE, CERT_FILE, KEY_FILE};

/// How long a CA is valid by default.
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// How long a certificate is valid by default.
pub const CERT_VALIDITY_DAYS: u32 = 365;
/// Longest validity accepted for either.
pub const MAX_VALIDITY_DAYS: u32 = 36_500;
/// The CA's key (next to `ca.pem` in the CA's own directory; never copied to nodes).
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// A CA's certificate and key, in PEM.
pub struct CaPem {
    pub cert: String,
    pub key: String,
}

/// A certificate, its key and the CA that signed it, in PEM: the three files of a TLS dir.
pub struct CertPem {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

fn rcgen_error(what: &str) -> impl FnOnce(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Issue(format!("{what}: {e}"))
}

fn validity(params: &mut CertificateParams, days: u32, back_days: i64) -> Result<(), TlsError> {
    if days == 0 || days > MAX_VALIDITY_DAYS {
        return Err(TlsError::Issue(format!(
            "validity of {days} days: 1 to {MAX_VALIDITY_DAYS}"
        )));
    }
    let now = time::OffsetDateTime::now_utc();
    // A little in the past, for clocks slightly behind the issuer's.
    params.not_before = now - time::Duration::hours(1) - time::Duration::days(back_days);
    params.not_after =
        now + time::Duration::days(i64::from(days)) - time::Duration::days(back_days);
    Ok(())
}

/// A new CA for cluster `cluster`.
pub fn create_ca(cluster: &str, days: u32) -> Result<CaPem, TlsError> {
    steward_core::identity::validate_cluster_name(cluster)
        .map_err(|e| TlsError::Issue(e.to_string()))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Steward CA for {cluster}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Steward");
    // The CA names its cluster (the trust domain) as a URI SAN, so certificates issued
    // later take the cluster's name from it.
    let uri = format!("{}{cluster}", steward_core::identity::SCHEME)
        .try_into()
        .map_err(rcgen_error("the cluster URI"))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days, 0)?;
    let key = KeyPair::generate().map_err(rcgen_error("generating the CA key"))?;
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_error("signing the CA"))?;
    Ok(CaPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate for `identity`, signed by `ca`. `back_days` moves its validity window
/// into the past (tests make expired certificates with it).
pub fn create_cert(
    ca: &CaPem,
    identity: &Identity,
    days: u32,
    back_days: i64,
) -> Result<CertPem, TlsError> {
    let ca_key = KeyPair::from_pem(&ca.key).map_err(rcgen_error("reading the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)
        .map_err(rcgen_error("reading the CA certificate"))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, identity.principal.to_string());
    params.distinguished_name.push(
        DnType::OrganizationName,
        format!("Steward {}", identity.cluster),
    );
    let uri = identity
        .uri()
        .try_into()
        .map_err(rcgen_error("the identity URI"))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let kind = match identity.principal {
        Principal::Controller(_) => Some(ServerKind::Controller),
        Principal::Agent(_) => Some(ServerKind::Agent),
        Principal::Client { .. } => None,
    };
    if let Some(kind) = kind {
        let dns = server_name(&identity.cluster, kind)
            .try_into()
            .map_err(rcgen_error("the server name"))?;
        params.subject_alt_names.push(SanType::DnsName(dns));
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days, back_days)?;
    let key = KeyPair::generate().map_err(rcgen_error("generating the key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen_error("signing the certificate"))?;
    Ok(CertPem {
        ca: ca.cert.clone(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The cluster a CA certificate (PEM) was made for.
pub fn cluster_of_ca(ca_pem: &str) -> Result<String, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| TlsError::Issue(format!("the CA certificate: {e}")))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| TlsError::Issue(format!("the CA certificate: {e}")))?;
    let sans = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .ok_or_else(|| {
            TlsError::Issue("the CA names no cluster (not made by steward tls ca create)".into())
        })?;
    sans.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(uri) => uri
                .strip_prefix(steward_core::identity::SCHEME)
                .filter(|c| steward_core::identity::validate_cluster_name(c).is_ok())
                .map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| {
            TlsError::Issue("the CA names no cluster (not made by steward tls ca create)".into())
        })
}

/// Reads a CA (`ca.pem`, `ca-key.pem`) from `dir`.
pub fn read_ca(dir: &Path) -> Result<CaPem, TlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| TlsError::File {
            path: path.clone(),
            error: e.to_string(),
        })
    };
    Ok(CaPem {
        cert: read(CA_FILE)?,
        key: read(CA_KEY_FILE)?,
    })
}

/// Writes a CA into `dir` (created); refuses to overwrite one.
pub fn write_ca(dir: &Path, ca: &CaPem) -> Result<(), TlsError> {
    write_files(
        dir,
        &[(CA_FILE, &ca.cert, 0o644), (CA_KEY_FILE, &ca.key, 0o600)],
    )
}

/// Writes a TLS dir (`ca.pem`, `cert.pem`, `key.pem`) into `dir` (created); existing
/// files are replaced atomically (rotation: running processes pick them up).
pub fn write_cert(dir: &Path, cert: &CertPem, replace: bool) -> Result<(), TlsError> {
    if !replace {
        for name in [CERT_FILE, KEY_FILE] {
            if dir.join(name).exists() {
                return Err(TlsError::Issue(format!(
                    "{} exists; pass --force to replace it",
                    dir.join(name).display()
                )));
            }
        }
    }
    // The key first: a reader never sees a new certificate with the old key for long
    // (and a mismatched pair is refused at load and retried on the next check).
    write_replacing(dir, KEY_FILE, &cert.key, 0o600)?;
    write_replacing(dir, CERT_FILE, &cert.cert, 0o644)?;
    write_replacing(dir, CA_FILE, &cert.ca, 0o644)
}

fn write_files(dir: &Path, files: &[(&str, &str, u32)]) -> Result<(), TlsError> {
    for (name, _, _) in files {
        if dir.join(name).exists() {
            return Err(TlsError::Issue(format!(
                "{} exists: a CA is never overwritten",
                dir.join(name).display()
            )));
        }
    }
    for (name, text, mode) in files {
        write_replacing(dir, name, text, *mode)?;
    }
    Ok(())
}

fn write_replacing(dir: &Path, name: &str, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| TlsError::File {
            path,
            error: e.to_string(),
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    // A leftover (or planted) temp file or link is removed, and the new one is created
    // fresh with its mode (never opened through a link, never with another's mode).
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&tmp)(e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}
