//! What the federation publishes to its sites: competency frameworks and tenant apps
//! (`ceredis hub publish`). Each site fetches them into its system database, each checked
//! against its SHA-256 ([`fetch`]). A tenant adopts frameworks when its admin chose to (the
//! tenant setting [`ADOPT_SETTING`], through `PUT /t/{tenant}/api/federation/policy`), each
//! one once ([`adopt_all`]); an app is installed in a tenant only when its operator adopts
//! it (`ceredis federation adopt`), with nothing granted: the tenant's admin grants what it
//! asks. The hub never sees what a tenant adopted.
//!
//! Must not: import into a tenant whose admin did not choose it, or keep bytes whose
//! SHA-256 is not the one the hub listed.

use reqwest::Method;
use serde_json::Value;

use super::client::{FederationError, HubClient};
use crate::store::federation::Publication;
use crate::store::{Database, StoreError, now};
use crate::tenant::TenantHandle;

/// Tenant setting: `1` when the tenant adopts every framework the federation publishes.
pub const ADOPT_SETTING: &str = "federation.adopt_frameworks";
/// Tenant setting: the last publication the tenant adopted.
const ADOPTED_SETTING: &str = "federation.adopted_through";

#[derive(Debug, thiserror::Error)]
pub enum PublicationError {
    #[error(transparent)]
    Federation(#[from] FederationError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("publication {0} does not match the SHA-256 the hub lists for it: not kept")]
    Altered(i64),
    #[error("no publication {0} on this site: `ceredis federation publications` fetches them")]
    Unknown(i64),
    #[error("publication {0} is not a framework this appliance reads: {1}")]
    Invalid(i64, String),
}

/// Fetches the publications this site does not hold yet; returns them.
pub async fn fetch(
    client: &HubClient,
    system: &Database,
) -> Result<Vec<Publication>, PublicationError> {
    let (_, body) = client
        .send(Method::GET, "/federation/v1/publications", Vec::new())
        .await?;
    let listed: Vec<Publication> = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| serde_json::from_value(v["publications"].clone()).ok())
        .unwrap_or_default();
    let held: Vec<i64> = system
        .read(|c| {
            Ok(c.prepare_cached("SELECT id FROM publications")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?)
        })
        .await?;
    let mut fresh = Vec::new();
    for p in listed.into_iter().filter(|p| !held.contains(&p.id)) {
        let (_, data) = client
            .send(
                Method::GET,
                &format!("/federation/v1/publications/{}", p.id),
                Vec::new(),
            )
            .await?;
        let sha =
            crate::store::backup::hex(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
        if sha != p.sha256 {
            return Err(PublicationError::Altered(p.id));
        }
        let row = p.clone();
        system
            .write(move |c| crate::store::federation::keep_publication(c, &row, &data, now()))
            .await?;
        fresh.push(p);
    }
    Ok(fresh)
}

/// The publications this site holds.
pub async fn held(system: &Database) -> Result<Vec<Publication>, StoreError> {
    system
        .read(crate::store::federation::kept_publications)
        .await
}

/// Whether `bytes` is a WebAssembly component (not a core module).
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() > 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// A published app: its manifest and component, in one JSON document.
pub fn app_envelope(manifest: &str, component: &[u8]) -> Vec<u8> {
    use base64::Engine;
    serde_json::to_vec(&serde_json::json!({
        "manifest": manifest,
        "component": base64::engine::general_purpose::STANDARD.encode(component),
    }))
    .unwrap_or_default()
}

/// Adopts publication `id` into the tenant: imports a framework, or installs an app (with
/// `host`; nothing granted). Returns what it adopted (the framework's URI, the app's name
/// and version).
pub async fn adopt(
    handle: &TenantHandle,
    system: &Database,
    host: Option<&crate::apps::runtime::AppHost>,
    id: i64,
) -> Result<String, PublicationError> {
    let found = system
        .read(move |c| crate::store::federation::kept_publication(c, id))
        .await?;
    let (kind, data) = found.ok_or(PublicationError::Unknown(id))?;
    let doc: Value =
        serde_json::from_slice(&data).map_err(|e| PublicationError::Invalid(id, e.to_string()))?;
    if kind == "app" {
        use base64::Engine;
        let (Some(manifest), Some(component)) = (
            doc["manifest"].as_str(),
            doc["component"]
                .as_str()
                .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok()),
        ) else {
            return Err(PublicationError::Invalid(id, "not an app".into()));
        };
        let Some(host) = host else {
            return Err(PublicationError::Invalid(
                id,
                "an app is adopted by the operator (`ceredis federation adopt`)".into(),
            ));
        };
        let installed = crate::apps::install(host, handle, manifest, component, &[], "federation")
            .await
            .map_err(|e| PublicationError::Invalid(id, e.to_string()))?;
        return Ok(format!(
            "app {} {} (nothing granted: the school's admin grants what it asks)",
            installed.name, installed.version
        ));
    }
    let (_, framework) = crate::competency::import_framework(handle, &doc)
        .await
        .map_err(|e| PublicationError::Invalid(id, e.message))?;
    Ok(framework.uri)
}

/// Whether the tenant's admin chose to adopt what the federation publishes.
pub async fn adopts(handle: &TenantHandle) -> Result<bool, StoreError> {
    Ok(handle
        .db
        .read(|c| crate::store::lrs::setting(c, ADOPT_SETTING))
        .await?
        .as_deref()
        == Some("1"))
}

/// Sets one of the tenant's federation choices (a tenant setting, `1` or `0`).
pub async fn set_flag(
    handle: &TenantHandle,
    key: &'static str,
    on: bool,
) -> Result<(), StoreError> {
    handle
        .db
        .write(move |c| crate::store::lrs::put_setting(c, key, if on { "1" } else { "0" }))
        .await
}

/// Adopts, into a tenant whose admin chose it, every framework published since the last
/// one it adopted; returns their URIs.
pub async fn adopt_all(
    handle: &TenantHandle,
    system: &Database,
) -> Result<Vec<String>, PublicationError> {
    if !adopts(handle).await? {
        return Ok(Vec::new());
    }
    let through: i64 = handle
        .db
        .read(|c| crate::store::lrs::setting(c, ADOPTED_SETTING))
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut adopted = Vec::new();
    for p in held(system).await? {
        if p.id <= through || p.kind != "framework" {
            continue;
        }
        adopted.push(adopt(handle, system, None, p.id).await?);
        let id = p.id.to_string();
        handle
            .db
            .write(move |c| crate::store::lrs::put_setting(c, ADOPTED_SETTING, &id))
            .await?;
    }
    Ok(adopted)
}
