//! SQL of federation: the hub's own database (`hub.db`: enrolled sites and one-time
//! enrolment tokens) and, in a site's system database, the hub it joined.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Migrations, StoreError};

pub const HUB_MIGRATIONS: Migrations = Migrations(&[HUB_V1]);

const HUB_V1: &str = "
CREATE TABLE hub (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    hub_id      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE enrolment_tokens (
    secret_hash TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER,
    used_by     TEXT
);
CREATE TABLE sites (
    site_id     TEXT PRIMARY KEY,
    public_key  BLOB NOT NULL,
    name        TEXT NOT NULL,
    label       TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL,
    revoked_at  INTEGER,
    last_seen   INTEGER
);
";

/// Appended to the system database's migrations: the hub this site joined.
pub const SITE_V1: &str = "
CREATE TABLE federation (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    hub_url    TEXT NOT NULL,
    hub_id     TEXT NOT NULL,
    hub_ca     TEXT NOT NULL,
    joined_at  INTEGER NOT NULL
);
";

/// Records the hub's identity once.
pub fn set_hub_id(conn: &Connection, hub_id: &str, at: i64) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT OR IGNORE INTO hub (id, hub_id, created_at) VALUES (1, ?1, ?2)")?
        .execute(params![hub_id, at])?;
    Ok(())
}

pub fn hub_id(conn: &Connection) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT hub_id FROM hub WHERE id = 1")?
        .query_row([], |r| r.get(0))
        .optional()?)
}

pub fn add_token(
    conn: &Connection,
    secret_hash: &str,
    label: &str,
    at: i64,
    expires_at: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO enrolment_tokens (secret_hash, label, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![secret_hash, label, at, expires_at])?;
    Ok(())
}

/// An enrolled site, as the hub knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SiteRow {
    pub site_id: String,
    #[serde(skip)]
    pub public_key: Vec<u8>,
    pub name: String,
    /// The label of the token it enrolled with.
    pub label: String,
    pub enrolled_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen: Option<i64>,
}

const SITE_COLUMNS: &str = "site_id, public_key, name, label, enrolled_at, revoked_at, last_seen";

fn site_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SiteRow> {
    Ok(SiteRow {
        site_id: r.get(0)?,
        public_key: r.get(1)?,
        name: r.get(2)?,
        label: r.get(3)?,
        enrolled_at: r.get(4)?,
        revoked_at: r.get(5)?,
        last_seen: r.get(6)?,
    })
}

pub fn site(conn: &Connection, site_id: &str) -> Result<Option<SiteRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {SITE_COLUMNS} FROM sites WHERE site_id = ?1"
        ))?
        .query_row([site_id], site_row)
        .optional()?)
}

pub fn sites(conn: &Connection) -> Result<Vec<SiteRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {SITE_COLUMNS} FROM sites ORDER BY enrolled_at, site_id"
        ))?
        .query_map([], site_row)?
        .collect::<Result<_, _>>()?)
}

/// Why a token did not enrol a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Unknown,
    Used,
    Expired,
    /// The site was revoked: only the hub's operator can let it back (a new site key).
    Revoked,
}

/// Enrols (or re-enrols, with a fresh token) the site with `public_key`, using up the
/// token. Returns the token's label.
pub fn enrol(
    conn: &Connection,
    secret_hash: &str,
    site_id: &str,
    public_key: &[u8],
    name: &str,
    at: i64,
) -> Result<Result<String, TokenRefusal>, StoreError> {
    let token: Option<(String, i64, Option<i64>)> = conn
        .prepare_cached(
            "SELECT label, expires_at, used_at FROM enrolment_tokens WHERE secret_hash = ?1",
        )?
        .query_row([secret_hash], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((label, expires_at, used_at)) = token else {
        return Ok(Err(TokenRefusal::Unknown));
    };
    if used_at.is_some() {
        return Ok(Err(TokenRefusal::Used));
    }
    if expires_at <= at {
        return Ok(Err(TokenRefusal::Expired));
    }
    if site(conn, site_id)?.is_some_and(|s| s.revoked_at.is_some()) {
        return Ok(Err(TokenRefusal::Revoked));
    }
    conn.prepare_cached(
        "UPDATE enrolment_tokens SET used_at = ?2, used_by = ?3 WHERE secret_hash = ?1",
    )?
    .execute(params![secret_hash, at, site_id])?;
    conn.prepare_cached(
        "INSERT INTO sites (site_id, public_key, name, label, enrolled_at, last_seen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (site_id) DO UPDATE SET name = excluded.name, label = excluded.label,
                                             last_seen = excluded.last_seen",
    )?
    .execute(params![site_id, public_key, name, label, at])?;
    Ok(Ok(label))
}

pub fn revoke(conn: &Connection, site_id: &str, at: i64) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "UPDATE sites SET revoked_at = ?2 WHERE site_id = ?1 AND revoked_at IS NULL",
        )?
        .execute(params![site_id, at])?
        > 0)
}

pub fn touch(conn: &Connection, site_id: &str, at: i64) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE sites SET last_seen = ?2 WHERE site_id = ?1")?
        .execute(params![site_id, at])?;
    Ok(())
}

/// The hub a site joined.
#[derive(Debug, Clone)]
pub struct Membership {
    pub hub_url: String,
    pub hub_id: String,
    /// The hub's CA certificate (PEM): the only root this site trusts for its hub.
    pub hub_ca: String,
    pub joined_at: i64,
}

pub fn membership(conn: &Connection) -> Result<Option<Membership>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT hub_url, hub_id, hub_ca, joined_at FROM federation WHERE id = 1")?
        .query_row([], |r| {
            Ok(Membership {
                hub_url: r.get(0)?,
                hub_id: r.get(1)?,
                hub_ca: r.get(2)?,
                joined_at: r.get(3)?,
            })
        })
        .optional()?)
}

pub fn set_membership(conn: &Connection, m: &Membership) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO federation (id, hub_url, hub_id, hub_ca, joined_at) VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET hub_url = excluded.hub_url, hub_id = excluded.hub_id,
                                        hub_ca = excluded.hub_ca, joined_at = excluded.joined_at",
    )?
    .execute(params![m.hub_url, m.hub_id, m.hub_ca, m.joined_at])?;
    Ok(())
}
