//! The reverse of `ceredis federation export`: what the hub holds for a site with no link,
//! carried by hand. `ceredis hub export --site SITE --to DIR` writes, for each continuity
//! copy the site holds, the other holders' batches (sealed: the hub cannot read them), and
//! every publication, with a manifest (`hub-bundle.json`: each file's SHA-256) signed by the
//! hub's Ed25519 key (`hub-bundle.sig`). `ceredis federation import DIR` on the site checks
//! the signature against the key the hub gave when the site joined, that the bundle is for
//! this site, and every file's SHA-256, then applies the batches (each origin's in order,
//! as a pull does: a batch applied before changes nothing) and keeps the publications.
//! Importing twice changes nothing.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};

use super::hub::HubStore;
use crate::store::{Database, StoreError, now};
use crate::tenant::Tenants;

pub const FORMAT: &str = "ceredis-hub-bundle-1";
pub const MANIFEST: &str = "hub-bundle.json";
pub const SIGNATURE: &str = "hub-bundle.sig";

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub hub_id: String,
    pub site_id: String,
    pub created_at: i64,
    pub copies: Vec<Copy>,
    pub publications: Vec<Published>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Copy {
    pub tenant_uid: String,
    pub batches: Vec<BatchFile>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BatchFile {
    pub origin: String,
    pub after: i64,
    pub last: i64,
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Published {
    pub id: i64,
    pub kind: String,
    pub name: String,
    pub uri: String,
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("this is not a hub bundle: {0}")]
    Invalid(String),
    #[error("this bundle is not signed by this site's hub (or was altered after it was written)")]
    BadSignature,
    #[error(
        "this site does not know its hub's key yet: run `ceredis federation status` once \
         while the hub is reachable"
    )]
    NoHubKey,
    #[error("this bundle was written for {0}, not for this site")]
    OtherSite(String),
    #[error("{0} does not match its SHA-256 in the bundle")]
    Altered(String),
    #[error(transparent)]
    Continuity(#[from] super::continuity::ContinuityError),
    #[error(transparent)]
    Tenant(#[from] crate::tenant::TenantError),
}

fn sha(data: &[u8]) -> String {
    crate::store::backup::hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// What the signature covers.
fn signing_input(json: &[u8]) -> Vec<u8> {
    let mut input = b"ceredis-hub-bundle-v1\n".to_vec();
    input.extend_from_slice(json);
    input
}

/// Writes what the hub holds for `site_id` into `to/<site>-<time>/`; returns that folder.
pub async fn export(
    store: &HubStore,
    hub_id: &str,
    key: &ring::signature::Ed25519KeyPair,
    site_id: &str,
    to: &Path,
) -> Result<PathBuf, BundleError> {
    if store.site(site_id.to_string()).await?.is_none() {
        return Err(BundleError::Invalid(format!(
            "{site_id} is not enrolled with this hub"
        )));
    }
    let created_at = now();
    let out = to.join(format!("{site_id}-{created_at}"));
    std::fs::create_dir_all(&out)?;
    let mut copies = Vec::new();
    for uid in store.copies_held_by(site_id.to_string()).await? {
        let mut batches = Vec::new();
        for b in store.batches(uid.clone()).await? {
            if b.origin == site_id {
                continue;
            }
            let Some(data) = store.batch(uid.clone(), b.origin.clone(), b.last).await? else {
                continue;
            };
            let file = format!("batch-{uid}-{}-{}-{}", b.origin, b.after, b.last);
            std::fs::write(out.join(&file), &data)?;
            batches.push(BatchFile {
                origin: b.origin,
                after: b.after,
                last: b.last,
                file,
                sha256: sha(&data),
            });
        }
        copies.push(Copy {
            tenant_uid: uid,
            batches,
        });
    }
    let mut publications = Vec::new();
    for p in store.publications().await? {
        let Some(data) = store.publication(p.id).await? else {
            continue;
        };
        let file = format!("publication-{}", p.id);
        std::fs::write(out.join(&file), &data)?;
        publications.push(Published {
            id: p.id,
            kind: p.kind,
            name: p.name,
            uri: p.uri,
            file,
            sha256: p.sha256,
        });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        hub_id: hub_id.into(),
        site_id: site_id.into(),
        created_at,
        copies,
        publications,
    };
    let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    std::fs::write(out.join(MANIFEST), &json)?;
    // Written last: a folder with its signature is complete.
    std::fs::write(
        out.join(SIGNATURE),
        B64.encode(key.sign(&signing_input(&json)).as_ref()),
    )?;
    Ok(out)
}

/// What importing a bundle did.
#[derive(Debug, Default)]
pub struct Imported {
    pub batches: usize,
    pub statements: usize,
    pub publications: usize,
}

/// Imports a bundle the hub wrote for this site.
pub async fn import(
    system: &Database,
    tenants: &Tenants,
    data_dir: &Path,
    dir: &Path,
) -> Result<Imported, BundleError> {
    let json = std::fs::read(dir.join(MANIFEST))
        .map_err(|e| BundleError::Invalid(format!("{}: {e}", dir.join(MANIFEST).display())))?;
    let signature = std::fs::read_to_string(dir.join(SIGNATURE)).map_err(|e| {
        BundleError::Invalid(format!(
            "{}: {e} (an export that did not finish has no signature)",
            dir.join(SIGNATURE).display()
        ))
    })?;
    let membership = system
        .read(crate::store::federation::membership)
        .await?
        .ok_or_else(|| BundleError::Invalid("this site has not joined a hub".into()))?;
    let hub_key = membership
        .hub_key
        .and_then(|k| B64.decode(k).ok())
        .ok_or(BundleError::NoHubKey)?;
    let sig = B64.decode(signature.trim()).unwrap_or_default();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &hub_key)
        .verify(&signing_input(&json), &sig)
        .map_err(|_| BundleError::BadSignature)?;
    let manifest: Manifest =
        serde_json::from_slice(&json).map_err(|e| BundleError::Invalid(e.to_string()))?;
    if manifest.format != FORMAT {
        return Err(BundleError::Invalid(format!(
            "unknown format `{}`",
            manifest.format
        )));
    }
    let key =
        crate::identity::key_pair(data_dir).map_err(|e| std::io::Error::other(e.to_string()))?;
    let me = crate::identity::site_id(ring::signature::KeyPair::public_key(&key).as_ref());
    if manifest.site_id != me {
        return Err(BundleError::OtherSite(manifest.site_id));
    }
    let read = |file: &str, expected: &str| -> Result<Vec<u8>, BundleError> {
        if file.contains('/') || file.contains("..") {
            return Err(BundleError::Invalid(format!("`{file}` is not a file name")));
        }
        let data = std::fs::read(dir.join(file))?;
        if sha(&data) != expected {
            return Err(BundleError::Altered(file.to_string()));
        }
        Ok(data)
    };
    // Every file is checked before anything is applied.
    let mut publications = Vec::new();
    for p in &manifest.publications {
        publications.push((p, read(&p.file, &p.sha256)?));
    }
    let mut copies = Vec::new();
    for c in &manifest.copies {
        let mut batches = Vec::new();
        for b in &c.batches {
            batches.push((b, read(&b.file, &b.sha256)?));
        }
        copies.push((c, batches));
    }
    let mut done = Imported::default();
    for (p, data) in publications {
        let row = crate::store::federation::Publication {
            id: p.id,
            kind: p.kind.clone(),
            name: p.name.clone(),
            uri: p.uri.clone(),
            sha256: p.sha256.clone(),
            bytes: data.len() as i64,
            published_at: manifest.created_at,
        };
        let added = system
            .write(move |c| crate::store::federation::keep_publication(c, &row, &data, now()))
            .await?;
        done.publications += usize::from(added);
    }
    let states = system.read(super::continuity::states).await?;
    for (copy, mut batches) in copies {
        let Some((slug, st)) = states.iter().find(|(_, s)| s.tenant_uid == copy.tenant_uid) else {
            continue;
        };
        let handle = tenants
            .handle(slug, &crate::auth::Authorized::console())
            .await?;
        batches.sort_by(|(a, _), (b, _)| (&a.origin, a.last).cmp(&(&b.origin, b.last)));
        let mut pulled = super::continuity::Pulled::default();
        for (b, sealed) in batches {
            if let Some(applied) = super::continuity::apply_sealed(
                &handle, st, &me, &b.origin, b.after, b.last, &sealed,
            )
            .await?
            {
                done.batches += 1;
                done.statements += applied.statements;
                pulled.erasures += applied.erasures;
                if !applied.lacking.is_empty() {
                    pulled
                        .lacking
                        .push(format!("{}: {}", b.origin, applied.lacking.join(", ")));
                }
            }
        }
        super::continuity::note_pulled(system, slug, &pulled).await?;
    }
    Ok(done)
}
