//! The site's side: joining a hub (`ceredis federation join`) and signed requests to it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use super::{
    BadToken, EnrolmentToken, HUB_TIME_HEADER, SIGNATURE_HEADER, SITE_HEADER, TIME_HEADER,
    ca_fingerprint, sign,
};
use crate::store::federation::{self as sql, Membership};
use crate::store::{Database, StoreError, now};

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error(transparent)]
    BadToken(#[from] BadToken),
    #[error("the hub's address must start with https:// (got `{0}`)")]
    BadUrl(String),
    #[error("the hub at {url} cannot be reached: {cause}")]
    Unreachable { url: String, cause: String },
    #[error(
        "{url} is not the hub that issued this token: its CA certificate's fingerprint is \
         {found}, the token expects {expected}. Check the address, or ask the hub's operator \
         for a token of this hub"
    )]
    WrongHub {
        url: String,
        found: String,
        expected: String,
    },
    #[error("the hub refused ({code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error(
        "this site has not joined a federation hub: `ceredis federation join <hub-url> <token>`"
    )]
    NotJoined,
    #[error("the site key cannot be read: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A client of one hub that trusts only the hub's pinned CA and signs every request with
/// the site's key.
pub struct HubClient {
    base: String,
    http: reqwest::Client,
    key: Ed25519KeyPair,
    site_id: String,
    /// Seconds to add to this machine's clock to get the hub's, learnt from the hub.
    offset: AtomicI64,
    /// Bytes per second transfers may use on average (0: no cap).
    max_bytes_per_sec: u64,
}

impl std::fmt::Debug for HubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("base", &self.base)
            .field("site_id", &self.site_id)
            .finish()
    }
}

fn base_url(url: &str) -> Result<String, FederationError> {
    let url = url.trim().trim_end_matches('/');
    if !url.starts_with("https://") || url.len() <= "https://".len() {
        return Err(FederationError::BadUrl(url.to_string()));
    }
    Ok(url.to_string())
}

fn unreachable(url: &str, e: reqwest::Error) -> FederationError {
    // The chain of causes says why (refused, timed out, certificate not trusted…).
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        cause = format!("{cause}: {s}");
        source = s.source();
    }
    FederationError::Unreachable {
        url: url.to_string(),
        cause,
    }
}

impl HubClient {
    pub fn pinned(
        base: &str,
        ca_pem: &str,
        key: Ed25519KeyPair,
    ) -> Result<HubClient, FederationError> {
        let base = base_url(base)?;
        let ca =
            reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(|e| unreachable(&base, e))?;
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| unreachable(&base, e))?;
        let site_id = crate::identity::site_id(key.public_key().as_ref());
        Ok(HubClient {
            base,
            http,
            key,
            site_id,
            offset: AtomicI64::new(0),
            max_bytes_per_sec: 0,
        })
    }

    /// Caps transfers to `bytes_per_sec` on average (0: no cap).
    pub fn rate_limited(mut self, bytes_per_sec: u64) -> HubClient {
        self.max_bytes_per_sec = bytes_per_sec;
        self
    }

    pub fn max_bytes_per_sec(&self) -> u64 {
        self.max_bytes_per_sec
    }

    pub fn site_id(&self) -> &str {
        &self.site_id
    }

    /// Sends a signed request; returns the status and body of a 2xx answer. When the hub
    /// says the clocks disagree, the request is signed again with the hub's time, once.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), FederationError> {
        let mut retried = false;
        loop {
            let time = now() + self.offset.load(Ordering::Relaxed);
            let signature = sign(&self.key, method.as_str(), path, time, &body);
            let response = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .header(SITE_HEADER, &self.site_id)
                .header(TIME_HEADER, time.to_string())
                .header(SIGNATURE_HEADER, signature)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .map_err(|e| unreachable(&self.base, e))?;
            let status = response.status();
            let hub_time: Option<i64> = response
                .headers()
                .get(HUB_TIME_HEADER)
                .and_then(|v| v.to_str().ok()?.parse().ok());
            let bytes = response
                .bytes()
                .await
                .map_err(|e| unreachable(&self.base, e))?;
            if status.is_success() {
                return Ok((status, bytes));
            }
            let refused = refusal(status, &bytes);
            if let (false, Some(hub), FederationError::Refused { code, .. }) =
                (retried, hub_time, &refused)
                && code == "clock_skew"
            {
                self.offset.store(hub - now(), Ordering::Relaxed);
                retried = true;
                continue;
            }
            return Err(refused);
        }
    }
}

fn refusal(status: StatusCode, body: &[u8]) -> FederationError {
    let v: Value = serde_json::from_slice(body).unwrap_or_default();
    FederationError::Refused {
        status: status.as_u16(),
        code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
        message: v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}")),
    }
}

/// What joining told the site.
#[derive(Debug, Clone)]
pub struct Joined {
    pub hub_id: String,
    pub site_id: String,
    pub label: String,
}

/// Joins the hub at `url` with `token`: checks the hub's CA against the token, registers
/// the site key, and records the hub (its address, id and CA) in the system database.
/// Nothing is recorded unless the hub accepted the site.
pub async fn join(
    system: &Database,
    data_dir: &std::path::Path,
    url: &str,
    token: &str,
    name: &str,
) -> Result<Joined, FederationError> {
    let token = EnrolmentToken::parse(token)?;
    let base = base_url(url)?;
    // Nothing from the hub is trusted yet: its CA is only compared with the token's.
    let probe = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| unreachable(&base, e))?;
    let ca_pem = probe
        .get(format!("{base}/federation/v1/ca.pem"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| unreachable(&base, e))?
        .text()
        .await
        .map_err(|e| unreachable(&base, e))?;
    let found = ca_fingerprint(&ca_pem).unwrap_or_else(|| "(no certificate)".into());
    if found != token.ca_fingerprint {
        return Err(FederationError::WrongHub {
            url: base,
            found,
            expected: token.ca_fingerprint,
        });
    }
    let client = HubClient::pinned(&base, &ca_pem, crate::identity::key_pair(data_dir)?)?;
    let body = json!({
        "token": token.secret,
        "name": name,
        "public_key": B64.encode(crate::identity::key_pair(data_dir)?.public_key().as_ref()),
    });
    let (_, answer) = client
        .send(
            Method::POST,
            "/federation/v1/enrol",
            serde_json::to_vec(&body).unwrap_or_default(),
        )
        .await?;
    let v: Value = serde_json::from_slice(&answer).unwrap_or_default();
    let hub_id = v["hub_id"].as_str().unwrap_or_default().to_string();
    let membership = Membership {
        hub_url: base,
        hub_id: hub_id.clone(),
        hub_ca: ca_pem,
        joined_at: now(),
        hub_key: v["hub_key"].as_str().map(String::from),
    };
    system
        .write(move |c| sql::set_membership(c, &membership))
        .await?;
    Ok(Joined {
        hub_id,
        site_id: client.site_id().to_string(),
        label: v["label"].as_str().unwrap_or_default().to_string(),
    })
}

/// The client of the hub this site joined.
pub async fn client(
    system: &Database,
    data_dir: &std::path::Path,
) -> Result<(HubClient, Membership), FederationError> {
    let m = system
        .read(sql::membership)
        .await?
        .ok_or(FederationError::NotJoined)?;
    let client = HubClient::pinned(&m.hub_url, &m.hub_ca, crate::identity::key_pair(data_dir)?)?;
    Ok((client, m))
}

/// Asks the hub what it knows of this site (a signed request, so it proves both the link
/// and the enrolment).
pub async fn status(
    system: &Database,
    data_dir: &std::path::Path,
) -> Result<(Membership, Value), FederationError> {
    let (client, mut m) = client(system, data_dir).await?;
    let (_, body) = client
        .send(Method::GET, "/federation/v1/site", Vec::new())
        .await?;
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    // A site that joined before the hub told its key learns it now.
    if m.hub_key.is_none()
        && let Some(key) = v["hub_key"].as_str()
    {
        m.hub_key = Some(key.to_string());
        let saved = m.clone();
        system
            .write(move |c| sql::set_membership(c, &saved))
            .await?;
    }
    Ok((m, v))
}
