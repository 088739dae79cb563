//! TLS: the site's local certificate authority and the server certificate it issues.
//!
//! `ceredis init` creates the CA (ECDSA P-256, 10 years) under `tls/`; `serve` issues a
//! server certificate (397 days) for `localhost`, the loopback addresses, the host name and
//! `tls.server_names`, and re-issues it when it is within 30 days of expiry or the names
//! changed. School PCs trust the CA once (it is downloadable at `/ca.crt`). With
//! `tls.acme.domain` set, certificates come from ACME instead (`server`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

pub const CA_CERT: &str = "tls/ca.crt";
pub const CA_KEY: &str = "tls/ca.key";
pub const SERVER_CERT: &str = "tls/server.crt";
pub const SERVER_KEY: &str = "tls/server.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid PEM file: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0} is missing: run `ceredis init` first")]
    NotInitialised(PathBuf),
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `contents` to `path` with mode 0600 (0644 for certificates), atomically.
pub fn write_private(path: &Path, contents: &[u8], public: bool) -> Result<(), TlsError> {
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = if public { 0o644 } else { 0o600 };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = public;
    std::fs::rename(&tmp, path).map_err(io)
}

/// DNS suffixes of school networks that the local CA may certify, besides the appliance's
/// own names: it can never vouch for a public site (a leaked backup holds its key).
const LOCAL_SUFFIXES: &[&str] = &[
    "localhost",
    "local",
    "lan",
    "internal",
    "intranet",
    "home.arpa",
];

/// Private and loopback address ranges the local CA may certify.
fn private_ranges() -> Vec<rcgen::GeneralSubtree> {
    use rcgen::{CidrSubnet, GeneralSubtree};
    vec![
        GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([127, 0, 0, 0], 8)),
        GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([10, 0, 0, 0], 8)),
        GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([172, 16, 0, 0], 12)),
        GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([192, 168, 0, 0], 16)),
        GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([169, 254, 0, 0], 16)),
        GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix([100, 64, 0, 0], 10)),
        GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(
            std::net::Ipv6Addr::LOCALHOST.octets(),
            128,
        )),
        GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(
            [0xfc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            7,
        )),
        GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(
            [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            10,
        )),
    ]
}

/// Whether the local CA's name constraints allow `name` (a DNS name or an IP address).
pub fn ca_permits(name: &str, ca_names: &[String]) -> bool {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return match ip {
            std::net::IpAddr::V4(v4) => {
                v4.is_loopback()
                    || v4.is_private()
                    || v4.is_link_local()
                    || (v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1]))
            }
            std::net::IpAddr::V6(v6) => {
                v6.is_loopback()
                    || (v6.octets()[0] & 0xfe) == 0xfc
                    || (v6.octets()[0] == 0xfe && (v6.octets()[1] & 0xc0) == 0x80)
            }
        };
    }
    let name = name.to_ascii_lowercase();
    LOCAL_SUFFIXES
        .iter()
        .map(|s| s.to_string())
        .chain(ca_names.iter().map(|n| n.to_ascii_lowercase()))
        .any(|allowed| name == allowed || name.ends_with(&format!(".{allowed}")))
}

/// The DNS names the data directory's CA is constrained to; `None` for a CA without name
/// constraints (made by an earlier version).
pub fn ca_dns_constraints(data_dir: &Path) -> Option<Vec<String>> {
    let pem = std::fs::read_to_string(data_dir.join(CA_CERT)).ok()?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let constraints = cert.name_constraints().ok()??;
    let permitted = constraints.value.permitted_subtrees.as_ref()?;
    Some(
        permitted
            .iter()
            .filter_map(|t| match &t.base {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
    )
}

/// Creates the local CA if the data directory has none. Returns whether one was created.
/// The CA is name-constrained to `names` (the appliance's DNS names at first boot), the
/// local suffixes and private address ranges.
pub fn ensure_ca(data_dir: &Path, site_label: &str, names: &[String]) -> Result<bool, TlsError> {
    if data_dir.join(CA_CERT).exists() {
        return Ok(false);
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("CEREDIS Edge local CA ({site_label})"),
    );
    dn.push(DnType::OrganizationName, "CEREDIS Edge");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let mut permitted: Vec<rcgen::GeneralSubtree> = LOCAL_SUFFIXES
        .iter()
        .map(|s| s.to_string())
        .chain(
            names
                .iter()
                .filter(|n| n.parse::<std::net::IpAddr>().is_err())
                .cloned(),
        )
        .map(rcgen::GeneralSubtree::DnsName)
        .collect();
    permitted.extend(private_ranges());
    params.name_constraints = Some(rcgen::NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: Vec::new(),
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(3650);
    let cert = params.self_signed(&key)?;
    write_private(
        &data_dir.join(CA_KEY),
        key.serialize_pem().as_bytes(),
        false,
    )?;
    write_private(&data_dir.join(CA_CERT), cert.pem().as_bytes(), true)?;
    Ok(true)
}

/// The names the server certificate must cover.
pub fn server_names(extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() && host.parse::<std::net::IpAddr>().is_err() {
            names.push(host.to_string());
            names.push(format!("{host}.local"));
        }
    }
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// Not-after time and subject alternative names of a PEM certificate.
pub fn inspect(pem: &str) -> Option<(OffsetDateTime, Vec<String>)> {
    validity(pem).map(|(_, not_after, names)| (not_after, names))
}

/// Not-before and not-after times and subject alternative names of the first certificate
/// of a PEM text.
pub fn validity(pem: &str) -> Option<(OffsetDateTime, OffsetDateTime, Vec<String>)> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(ip) => {
                    let ip = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    names.sort();
    Some((not_before, not_after, names))
}

/// Issues (or re-issues) the server certificate when missing, close to expiry, or when the
/// names changed. Returns whether a new one was written.
pub fn ensure_server_cert(data_dir: &Path, names: &[String]) -> Result<bool, TlsError> {
    let cert_path = data_dir.join(SERVER_CERT);
    if cert_path.exists() && data_dir.join(SERVER_KEY).exists() {
        let pem = read(&cert_path)?;
        if let Some((not_after, current)) = inspect(&pem) {
            let mut wanted: Vec<String> = names
                .iter()
                .map(|n| {
                    n.parse::<std::net::IpAddr>()
                        .map(|ip| ip.to_string())
                        .unwrap_or_else(|_| n.clone())
                })
                .collect();
            wanted.sort();
            if not_after - OffsetDateTime::now_utc() > Duration::days(30) && current == wanted {
                return Ok(false);
            }
        }
    }
    let ca_cert = data_dir.join(CA_CERT);
    if !ca_cert.exists() {
        return Err(TlsError::NotInitialised(ca_cert));
    }
    let ca_key = KeyPair::from_pem(&read(&data_dir.join(CA_KEY))?)?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_cert)?, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "CEREDIS Edge");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(397);
    let cert = params.signed_by(&key, &issuer)?;
    write_private(
        &data_dir.join(SERVER_KEY),
        key.serialize_pem().as_bytes(),
        false,
    )?;
    write_private(&cert_path, cert.pem().as_bytes(), true)?;
    Ok(true)
}

/// A rustls server configuration (ring provider, TLS 1.2+1.3, h2 and http/1.1) for the
/// certificate chain `server.crt` + `ca.crt`.
pub fn server_config(data_dir: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let pem_err = |path: &Path| {
        let path = path.to_path_buf();
        move |e: rustls::pki_types::pem::Error| TlsError::Pem {
            path,
            message: e.to_string(),
        }
    };
    let cert_path = data_dir.join(SERVER_CERT);
    let ca_path = data_dir.join(CA_CERT);
    let key_path = data_dir.join(SERVER_KEY);
    let mut chain = vec![
        CertificateDer::from_pem_slice(read(&cert_path)?.as_bytes())
            .map_err(pem_err(&cert_path))?,
    ];
    chain.push(
        CertificateDer::from_pem_slice(read(&ca_path)?.as_bytes()).map_err(pem_err(&ca_path))?,
    );
    let key =
        PrivateKeyDer::from_pem_slice(read(&key_path)?.as_bytes()).map_err(pem_err(&key_path))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_ca_may_certify_only_local_names_and_private_addresses() {
        let own = vec!["ceredis.ecole-jaures.fr".to_string()];
        for ok in [
            "localhost",
            "vm.local",
            "ceredis.lan",
            "ceredis.ecole-jaures.fr",
            "a.ceredis.ecole-jaures.fr",
            "10.1.2.3",
            "192.168.0.10",
            "127.0.0.1",
            "::1",
            "fd00::1",
        ] {
            assert!(ca_permits(ok, &own), "{ok}");
        }
        for bad in [
            "google.com",
            "ecole-jaures.fr",
            "evillocal",
            "8.8.8.8",
            "2001:db8::1",
            "local.evil.com",
        ] {
            assert!(!ca_permits(bad, &own), "{bad}");
        }
    }

    #[test]
    fn the_ca_issues_a_certificate_for_the_names_and_reissues_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_ca(dir.path(), "test", &["ecole.example".to_string()]).unwrap());
        let constrained = ca_dns_constraints(dir.path()).unwrap();
        assert!(
            constrained.contains(&"ecole.example".to_string())
                && constrained.contains(&"local".to_string())
        );
        assert!(
            !ensure_ca(dir.path(), "test", &[]).unwrap(),
            "the CA is made once"
        );
        let names = vec!["localhost".to_string(), "127.0.0.1".into()];
        assert!(ensure_server_cert(dir.path(), &names).unwrap());
        assert!(
            !ensure_server_cert(dir.path(), &names).unwrap(),
            "kept while valid"
        );
        let pem = std::fs::read_to_string(dir.path().join(SERVER_CERT)).unwrap();
        let (not_after, sans) = inspect(&pem).unwrap();
        assert_eq!(sans, vec!["127.0.0.1".to_string(), "localhost".into()]);
        assert!(not_after - OffsetDateTime::now_utc() > Duration::days(390));
        let more = vec![
            "localhost".to_string(),
            "127.0.0.1".into(),
            "ecole.local".into(),
        ];
        assert!(
            ensure_server_cert(dir.path(), &more).unwrap(),
            "new names, new cert"
        );
        assert!(server_config(dir.path()).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CA_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "the CA key is private");
        }
    }
}
