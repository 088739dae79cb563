//! Tenants: a school or institution with its own layers 5–8 — its own database file
//! (`tenants/<slug>/tenant.db`), auth realm, roles, users, classes and enrolments.
//!
//! Owns the tenant registry ([`Tenants`]): creating, listing and suspending tenants (system
//! database) and opening their databases. A tenant database is handed out only against an
//! [`crate::auth::Authorized`] proof, which only the access-control extractors and the local
//! console can produce: a handler cannot reach tenant data without passing a role check.
//!
//! Key types: [`Tenants`], [`Role`], [`TenantHandle`].

pub mod roster;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::auth::Authorized;
use crate::store::system::{self, TenantRow};
use crate::store::{self, Database, DbOptions, StoreError, StoreMetrics};

/// A role inside one tenant. The operator is not a tenant role: it lives in the system
/// database and never holds a tenant handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Teacher,
    Student,
    Researcher,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Teacher, Role::Student, Role::Researcher];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Teacher => "teacher",
            Role::Student => "student",
            Role::Researcher => "researcher",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error(
        "`{0}` is not a valid tenant name: use 2 to 40 lowercase letters, digits and dashes, \
         starting with a letter"
    )]
    BadSlug(String),
    #[error("no tenant named `{0}`")]
    Unknown(String),
    #[error("tenant `{0}` is suspended")]
    Suspended(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Tenant names appear in URLs and paths: keep them boring.
pub fn validate_slug(slug: &str) -> Result<(), TenantError> {
    let ok = (2..=40).contains(&slug.len())
        && slug.starts_with(|c: char| c.is_ascii_lowercase())
        && slug
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !slug.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(TenantError::BadSlug(slug.to_string()))
    }
}

/// The registry of tenants and their open databases. Cheap to clone.
#[derive(Clone)]
pub struct Tenants {
    inner: Arc<TenantsInner>,
}

struct TenantsInner {
    data_dir: PathBuf,
    system: Database,
    open: RwLock<HashMap<String, Database>>,
    /// Each tenant's fixed xAPI account home page, once read.
    home_pages: RwLock<HashMap<String, Arc<str>>>,
    /// The site's URL, proposed as the base of a new tenant's home page.
    site_url: String,
    options: DbOptions,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for Tenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenants")
            .field("data_dir", &self.inner.data_dir)
            .finish()
    }
}

/// A tenant's database, obtained through an access check. Handlers get it inside
/// `auth::Member`; nothing else in `http` can build one.
#[derive(Debug, Clone)]
pub struct TenantHandle {
    pub slug: String,
    pub name: String,
    pub db: Database,
    /// The home page of the tenant's xAPI accounts (see [`crate::lrs::learner`]).
    pub home_page: Arc<str>,
}

pub fn tenant_db_path(data_dir: &Path, slug: &str) -> PathBuf {
    data_dir.join("tenants").join(slug).join("tenant.db")
}

impl Tenants {
    pub fn new(
        data_dir: &Path,
        system: Database,
        options: DbOptions,
        metrics: StoreMetrics,
        site_url: &str,
    ) -> Tenants {
        Tenants {
            inner: Arc::new(TenantsInner {
                data_dir: data_dir.to_path_buf(),
                system,
                open: RwLock::new(HashMap::new()),
                home_pages: RwLock::new(HashMap::new()),
                site_url: site_url.trim_end_matches('/').to_string(),
                options,
                metrics,
            }),
        }
    }

    pub fn system(&self) -> &Database {
        &self.inner.system
    }

    /// Creates the tenant (system row, then its database file with every migration).
    pub async fn create(&self, slug: &str, name: &str) -> Result<TenantRow, TenantError> {
        validate_slug(slug)?;
        let name = if name.trim().is_empty() {
            slug.to_string()
        } else {
            name.trim().to_string()
        };
        {
            let (slug, name) = (slug.to_string(), name.clone());
            self.inner
                .system
                .write(move |c| system::insert_tenant(c, &slug, &name))
                .await?;
        }
        self.database_unchecked(slug)?;
        self.get(slug)
            .await?
            .ok_or_else(|| TenantError::Unknown(slug.into()))
    }

    /// Makes `file`, a checked tenant database (a restored copy), the tenant `slug`: the
    /// file moves into place, then the system row is written.
    pub async fn adopt(
        &self,
        slug: &str,
        name: &str,
        file: &Path,
    ) -> Result<TenantRow, TenantError> {
        validate_slug(slug)?;
        let dest = tenant_db_path(&self.inner.data_dir, slug);
        if dest.exists() {
            return Err(TenantError::Store(StoreError::Conflict(format!(
                "{} already exists",
                dest.display()
            ))));
        }
        let io = |source| TenantError::Io {
            path: dest.clone(),
            source,
        };
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        std::fs::rename(file, &dest).map_err(io)?;
        {
            let (slug, name) = (slug.to_string(), name.to_string());
            self.inner
                .system
                .write(move |c| system::insert_tenant(c, &slug, &name))
                .await?;
        }
        self.database_unchecked(slug)?;
        self.get(slug)
            .await?
            .ok_or_else(|| TenantError::Unknown(slug.into()))
    }

    pub async fn list(&self) -> Result<Vec<TenantRow>, TenantError> {
        Ok(self.inner.system.read(system::tenants).await?)
    }

    pub async fn get(&self, slug: &str) -> Result<Option<TenantRow>, TenantError> {
        let slug = slug.to_string();
        Ok(self
            .inner
            .system
            .read(move |c| system::tenant(c, &slug))
            .await?)
    }

    pub async fn set_status(&self, slug: &str, suspended: bool) -> Result<(), TenantError> {
        let owned = slug.to_string();
        let status = if suspended { "suspended" } else { "active" };
        self.inner
            .system
            .write(move |c| system::set_tenant_status(c, &owned, status))
            .await
            .map_err(|e| match e {
                StoreError::NotFound => TenantError::Unknown(slug.to_string()),
                e => TenantError::Store(e),
            })
    }

    /// An active tenant's handle. Requires proof that access was checked.
    pub async fn handle(
        &self,
        slug: &str,
        _proof: &Authorized,
    ) -> Result<TenantHandle, TenantError> {
        let row = self
            .get(slug)
            .await?
            .ok_or_else(|| TenantError::Unknown(slug.into()))?;
        if row.status != "active" {
            return Err(TenantError::Suspended(slug.into()));
        }
        let db = self.database_unchecked(slug)?;
        let home_page = self.home_page(slug, &db).await?;
        Ok(TenantHandle {
            slug: row.slug,
            name: row.name,
            db,
            home_page,
        })
    }

    /// The tenant's xAPI account home page: fixed in its database the first time it is
    /// needed (the site's URL then), never changed after.
    async fn home_page(&self, slug: &str, db: &Database) -> Result<Arc<str>, TenantError> {
        if let Ok(known) = self.inner.home_pages.read()
            && let Some(home) = known.get(slug)
        {
            return Ok(home.clone());
        }
        let home = match db.read(crate::store::lrs::fixed_home_page).await? {
            Some(home) => home,
            None => {
                let proposed = format!("{}/t/{slug}/", self.inner.site_url);
                db.write(move |c| crate::store::lrs::home_page(c, &proposed))
                    .await?
            }
        };
        let home: Arc<str> = home.into();
        if let Ok(mut known) = self.inner.home_pages.write() {
            known.insert(slug.to_string(), home.clone());
        }
        Ok(home)
    }

    /// Every tenant database, for operator maintenance that never reads rows (integrity
    /// checks and backups).
    pub fn maintenance_databases(&self, slugs: &[String]) -> Result<Vec<Database>, TenantError> {
        slugs.iter().map(|s| self.database_unchecked(s)).collect()
    }

    fn database_unchecked(&self, slug: &str) -> Result<Database, TenantError> {
        validate_slug(slug)?;
        if let Ok(open) = self.inner.open.read()
            && let Some(db) = open.get(slug)
        {
            return Ok(db.clone());
        }
        let path = tenant_db_path(&self.inner.data_dir, slug);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| TenantError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let mut open = self
            .inner
            .open
            .write()
            .map_err(|_| TenantError::Store(StoreError::JobPanicked))?;
        if let Some(db) = open.get(slug) {
            return Ok(db.clone());
        }
        let db = Database::open_seeded(
            &format!("tenant:{slug}"),
            &path,
            store::tenant::MIGRATIONS,
            store::tenant::seed,
            self.inner.options,
            self.inner.metrics.clone(),
        )?;
        open.insert(slug.to_string(), db.clone());
        Ok(db)
    }
}

/// Why a user's fields are refused, naming the field.
pub fn user_problem(u: &crate::store::tenant::UserFields) -> Option<String> {
    let name_ok = |s: &str| !s.trim().is_empty() && s.chars().count() <= 100;
    if u.username.is_empty()
        || u.username.len() > 64
        || !u
            .username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
    {
        return Some(format!(
            "username `{}`: use 1 to 64 letters, digits, dots, dashes, underscores or @",
            u.username
        ));
    }
    if !name_ok(&u.given_name) {
        return Some("given_name: 1 to 100 characters".into());
    }
    if !name_ok(&u.family_name) {
        return Some("family_name: 1 to 100 characters".into());
    }
    if let Some(e) = &u.email
        && (!e.contains('@') || e.len() > 254)
    {
        return Some(format!("email `{e}` is not an e-mail address"));
    }
    None
}

/// Creates a user whose first password is a one-time password (returned once, never
/// stored in clear) that must be replaced at first sign-in.
pub async fn create_user_with_otp(
    tenant: &TenantHandle,
    hasher: &crate::auth::password::Hasher,
    fields: crate::store::tenant::UserFields,
) -> Result<(crate::store::tenant::User, String), crate::error::ApiError> {
    if let Some(p) = user_problem(&fields) {
        return Err(crate::error::ApiError::bad_request("invalid_user", p));
    }
    let otp = crate::auth::password::one_time_password()?;
    let hash = hasher.hash(otp.clone()).await?;
    let user = tenant
        .db
        .write(move |c| {
            let id = crate::store::tenant::insert_user(c, &fields, Some(&hash), true)?;
            crate::store::tenant::user_by_id(c, id)?.ok_or(StoreError::NotFound)
        })
        .await?;
    Ok((user, otp))
}

/// A new machine credential; the secret is shown once (only its SHA-256 digest is kept).
#[derive(Debug, serde::Serialize)]
pub struct CreatedCredential {
    pub key_id: String,
    pub secret: String,
    pub label: String,
    pub scopes: Vec<String>,
}

/// Creates a machine credential with xAPI scopes (see [`crate::auth::SCOPES`]).
pub async fn create_credential(
    tenant: &TenantHandle,
    label: String,
    scopes: Vec<String>,
    created_by: Option<i64>,
) -> Result<CreatedCredential, crate::error::ApiError> {
    use crate::auth::password::{random_token, sha256};
    use crate::error::ApiError;
    let label = label.trim().to_string();
    if label.is_empty() || label.chars().count() > 80 {
        return Err(ApiError::bad_request(
            "invalid_credential",
            "label: 1 to 80 characters",
        ));
    }
    if scopes.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_credential",
            "scopes: choose at least one",
        ));
    }
    let known = crate::auth::SCOPES;
    if let Some(bad) = scopes.iter().find(|s| !known.contains(&s.as_str())) {
        return Err(ApiError::bad_request(
            "invalid_credential",
            format!(
                "scope `{bad}` does not exist; known scopes: {}",
                known.join(", ")
            ),
        ));
    }
    let key_id = format!("ck_{}", random_token(12)?);
    let secret = random_token(32)?;
    let digest = sha256(secret.as_bytes());
    let (k, l, s) = (key_id.clone(), label.clone(), scopes.clone());
    tenant
        .db
        .write(move |c| crate::store::tenant::insert_credential(c, &k, &digest, &l, &s, created_by))
        .await?;
    Ok(CreatedCredential {
        key_id,
        secret,
        label,
        scopes,
    })
}

/// Gives a user a new one-time password (the old password stops working, sessions end).
pub async fn reset_password(
    tenant: &TenantHandle,
    hasher: &crate::auth::password::Hasher,
    user_id: i64,
) -> Result<(crate::store::tenant::User, String), crate::error::ApiError> {
    let otp = crate::auth::password::one_time_password()?;
    let hash = hasher.hash(otp.clone()).await?;
    let user = tenant
        .db
        .write(move |c| {
            crate::store::tenant::set_password(c, user_id, &hash, true)?;
            crate::store::shared::delete_sessions_of(c, user_id)?;
            crate::store::tenant::user_by_id(c, user_id)?.ok_or(StoreError::NotFound)
        })
        .await?;
    Ok((user, otp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_boring() {
        for good in ["demo", "lycee-jean-moulin", "ecole42"] {
            assert!(validate_slug(good).is_ok(), "{good}");
        }
        for bad in [
            "", "a", "Demo", "../x", "x/y", "-x", "x-", "1abc", "é", "a b", "op.x",
        ] {
            assert!(validate_slug(bad).is_err(), "{bad}");
        }
    }
}
