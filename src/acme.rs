//! Certificates from an ACME directory (Let's Encrypt, or a school network's own ACME CA,
//! with external account binding when it requires one) for a public domain.
//!
//! The HTTPS listener answers TLS-ALPN-01 challenges itself (RFC 8737): a handshake that
//! offers the `acme-tls/1` protocol gets the challenge certificate, every other handshake the
//! current certificate. No other port is needed. Until the first certificate arrives the
//! appliance serves one from its local CA, so it starts at once. Certificates and the account
//! are kept under `acme/` in the data directory and renewed 30 days before expiry; failures
//! are retried with a growing delay (1 min, doubling, at most 6 h) and logged in plain words.
//!
//! Key types: [`CertResolver`], [`run`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, ExternalAccountKey,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

use crate::config::AcmeConfig;
use crate::tls::{self, TlsError, write_private};

pub const ACME_DIR: &str = "acme";
const ACCOUNT: &str = "acme/account.json";
/// Certificate chain and its private key, in one file written atomically (a crash can never
/// leave a key that does not match its certificate).
pub const CERT: &str = "acme/certificate.pem";
const ALPN_ACME: &[u8] = b"acme-tls/1";
const RENEW_BEFORE_DAYS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("the ACME directory offered no TLS-ALPN-01 challenge for {0}")]
    NoTlsAlpn(String),
    #[error("authorization for {domain} is {status:?}")]
    Authorization {
        domain: String,
        status: AuthorizationStatus,
    },
    #[error("the order ended as {0:?}")]
    Order(OrderStatus),
    #[error("eab_hmac_key is not base64url: {0}")]
    EabKey(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the issued certificate cannot be used: {0}")]
    Unusable(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Picks the certificate for each handshake: the ACME challenge certificate for `acme-tls/1`
/// handshakes, the current certificate otherwise.
#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertifiedKey>>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertResolver {
    pub fn new(current: Arc<CertifiedKey>) -> CertResolver {
        CertResolver {
            current: RwLock::new(current),
            challenges: RwLock::new(HashMap::new()),
        }
    }

    pub fn set_current(&self, key: Arc<CertifiedKey>) {
        if let Ok(mut c) = self.current.write() {
            *c = key;
        }
    }

    fn set_challenge(&self, domain: &str, key: Arc<CertifiedKey>) {
        if let Ok(mut c) = self.challenges.write() {
            c.insert(domain.to_ascii_lowercase(), key);
        }
    }

    fn clear_challenges(&self) {
        if let Ok(mut c) = self.challenges.write() {
            c.clear();
        }
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .map(|mut protocols| protocols.any(|p| p == ALPN_ACME))
            .unwrap_or(false);
        if acme {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenges.read().ok()?.get(&name).cloned();
        }
        self.current.read().ok().map(|c| c.clone())
    }
}

/// A rustls `CertifiedKey` from PEM texts (chain first, then key).
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, AcmeError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| AcmeError::Unusable(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| AcmeError::Unusable(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| AcmeError::Unusable(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

fn read(path: &Path) -> Result<String, AcmeError> {
    std::fs::read_to_string(path).map_err(|source| AcmeError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A stored ACME certificate: the key to serve and the time to renew it.
#[derive(Debug)]
pub struct Stored {
    pub key: Arc<CertifiedKey>,
    pub renew_at: OffsetDateTime,
}

/// Renew 30 days before expiry, or after two thirds of the lifetime for short-lived
/// certificates, whichever comes first.
fn renewal_time(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    let lifetime = not_after - not_before;
    let third: time::Duration = lifetime / 3;
    let margin = third.min(time::Duration::days(RENEW_BEFORE_DAYS));
    not_after - margin
}

/// The stored ACME certificate, if it exists, parses, matches its key and names `domain`.
pub fn stored(data_dir: &Path, domain: &str) -> Option<Stored> {
    let pem = std::fs::read_to_string(data_dir.join(CERT)).ok()?;
    let (not_before, not_after, names) = tls::validity(&pem)?;
    if !names.iter().any(|n| n.eq_ignore_ascii_case(domain)) {
        tracing::warn!(
            domain,
            "the stored ACME certificate is for other names; a new one will be ordered"
        );
        return None;
    }
    let key = certified_key(&pem, &pem).ok()?;
    key.keys_match().ok()?;
    Some(Stored {
        key,
        renew_at: renewal_time(not_before, not_after),
    })
}

/// The certificate to start with: the stored ACME one, else one from the local CA.
pub fn initial_certificate(data_dir: &Path, domain: &str) -> Result<Arc<CertifiedKey>, AcmeError> {
    if let Some(s) = stored(data_dir, domain) {
        return Ok(s.key);
    }
    let mut names = tls::server_names(&[]);
    names.push(domain.to_string());
    tls::ensure_server_cert(data_dir, &names)?;
    let chain = format!(
        "{}{}",
        read(&data_dir.join(tls::SERVER_CERT))?,
        read(&data_dir.join(tls::CA_CERT))?
    );
    certified_key(&chain, &read(&data_dir.join(tls::SERVER_KEY))?)
}

/// The rustls configuration of the HTTPS listener in ACME mode.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ALPN_ACME.to_vec()];
    Ok(Arc::new(config))
}

async fn account(config: &AcmeConfig, data_dir: &Path) -> Result<Account, AcmeError> {
    let builder = if config.ca_root.is_empty() {
        Account::builder()?
    } else {
        Account::builder_with_root(&config.ca_root)?
    };
    let path = data_dir.join(ACCOUNT);
    if let Ok(text) = std::fs::read_to_string(&path)
        && let Ok(credentials) = serde_json::from_str::<AccountCredentials>(&text)
    {
        return Ok(builder.from_credentials(credentials).await?);
    }
    let eab = if config.eab_key_id.is_empty() {
        None
    } else {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(config.eab_hmac_key.expose().trim_end_matches('='))
            .map_err(|e| AcmeError::EabKey(e.to_string()))?;
        Some(ExternalAccountKey::new(config.eab_key_id.clone(), &raw))
    };
    let contact =
        (!config.contact_email.is_empty()).then(|| format!("mailto:{}", config.contact_email));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory_url.clone(),
            eab.as_ref(),
        )
        .await?;
    let text =
        serde_json::to_string(&credentials).map_err(|e| AcmeError::Unusable(e.to_string()))?;
    write_private(&path, text.as_bytes(), false)?;
    tracing::info!(directory = %config.directory_url, "ACME account created");
    Ok(account)
}

/// A self-signed certificate carrying the TLS-ALPN-01 `acmeIdentifier` extension.
fn challenge_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![domain.to_string()])?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    certified_key(&cert.pem(), &key.serialize_pem())
}

/// Obtains a certificate for `config.domain` and installs it.
pub async fn obtain(
    config: &AcmeConfig,
    data_dir: &Path,
    resolver: &CertResolver,
) -> Result<OffsetDateTime, AcmeError> {
    let account = account(config, data_dir).await?;
    let identifiers = [Identifier::Dns(config.domain.clone())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut authorizations = order.authorizations();
    while let Some(result) = authorizations.next().await {
        let mut authz = result?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(AcmeError::Authorization {
                    domain: config.domain.clone(),
                    status,
                });
            }
        }
        let mut challenge = authz
            .challenge(ChallengeType::TlsAlpn01)
            .ok_or_else(|| AcmeError::NoTlsAlpn(config.domain.clone()))?;
        let domain = challenge.identifier().to_string();
        let key_authorization = challenge.key_authorization();
        resolver.set_challenge(
            &domain,
            challenge_certificate(&domain, key_authorization.digest().as_ref())?,
        );
        challenge.set_ready().await?;
    }
    let patience = RetryPolicy::new().timeout(Duration::from_secs(120));
    let status = order.poll_ready(&patience).await?;
    if status != OrderStatus::Ready {
        resolver.clear_challenges();
        return Err(AcmeError::Order(status));
    }
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&patience).await?;
    resolver.clear_challenges();
    let key = certified_key(&chain_pem, &key_pem)?;
    key.keys_match()
        .map_err(|e| AcmeError::Unusable(e.to_string()))?;
    let (_, not_after, _) = tls::validity(&chain_pem)
        .ok_or_else(|| AcmeError::Unusable("unreadable certificate".into()))?;
    write_private(
        &data_dir.join(CERT),
        format!("{chain_pem}\n{key_pem}").as_bytes(),
        false,
    )?;
    resolver.set_current(key);
    tracing::info!(domain = %config.domain, expires = %not_after, "ACME certificate installed");
    Ok(not_after)
}

/// Keeps a valid ACME certificate installed until `shutdown` resolves.
pub async fn run(
    config: AcmeConfig,
    data_dir: PathBuf,
    resolver: Arc<CertResolver>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut shutdown = shutdown;
    let mut retry = Duration::from_secs(60);
    loop {
        let renew_at = stored(&data_dir, &config.domain).map(|s| s.renew_at);
        let now = OffsetDateTime::now_utc();
        let wait = match renew_at {
            Some(at) if at > now => {
                Duration::from_secs((at - now).whole_seconds().clamp(60, 12 * 3600) as u64)
            }
            _ => match obtain(&config, &data_dir, &resolver).await {
                Ok(_) => {
                    retry = Duration::from_secs(60);
                    // Never order again at once, even for very short-lived certificates.
                    Duration::from_secs(10 * 60)
                }
                Err(e) => {
                    tracing::error!(domain = %config.domain, error = %e, retry_in_secs = retry.as_secs(), "could not obtain an ACME certificate; serving the previous certificate meanwhile");
                    let wait = retry;
                    retry = (retry * 2).min(Duration::from_secs(6 * 3600));
                    wait
                }
            },
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_30_days_early_or_after_two_thirds_of_a_short_life() {
        let start = OffsetDateTime::UNIX_EPOCH;
        let ninety = renewal_time(start, start + time::Duration::days(90));
        assert_eq!(ninety, start + time::Duration::days(60));
        let one_day = renewal_time(start, start + time::Duration::hours(24));
        assert_eq!(one_day, start + time::Duration::hours(16));
    }

    #[test]
    fn a_stored_certificate_for_another_domain_or_with_another_key_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["old.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        write_private(
            &dir.path().join(CERT),
            format!("{}\n{}", cert.pem(), key.serialize_pem()).as_bytes(),
            false,
        )
        .unwrap();
        assert!(stored(dir.path(), "old.example").is_some());
        assert!(
            stored(dir.path(), "new.example").is_none(),
            "domain changed"
        );
        let other = KeyPair::generate().unwrap();
        write_private(
            &dir.path().join(CERT),
            format!("{}\n{}", cert.pem(), other.serialize_pem()).as_bytes(),
            false,
        )
        .unwrap();
        assert!(
            stored(dir.path(), "old.example").is_none(),
            "key does not match"
        );
    }
}
