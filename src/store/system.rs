//! SQL of the system database (`system.db`): the operator's layers 1–4. Site identity,
//! tenants (their names and status, never their data), operator accounts, settings.

use rusqlite::{Connection, OptionalExtension, params};

use super::shared::SESSIONS_AND_TOKENS;
use super::{Migrations, StoreError, now};

pub const MIGRATIONS: Migrations = Migrations(&[
    V1,
    SESSIONS_AND_TOKENS,
    super::federation::SITE_V1,
    super::federation::SITE_CONTINUITY,
    super::federation::SITE_BATCHES,
    super::federation::SITE_PULL,
    super::federation::SITE_PUBLICATIONS,
    super::federation::SITE_HUB_KEY,
]);

const V1: &str = "
CREATE TABLE site (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    site_id       TEXT NOT NULL,
    public_key    BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    restored_from TEXT
);
CREATE TABLE tenants (
    id         INTEGER PRIMARY KEY,
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('active', 'suspended')),
    created_at INTEGER NOT NULL
);
CREATE TABLE operators (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

#[derive(Debug, Clone)]
pub struct Site {
    pub site_id: String,
    pub public_key: Vec<u8>,
    pub created_at: i64,
    pub restored_from: Option<String>,
}

pub fn site(conn: &Connection) -> Result<Option<Site>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT site_id, public_key, created_at, restored_from FROM site WHERE id = 1",
            [],
            |r| {
                Ok(Site {
                    site_id: r.get(0)?,
                    public_key: r.get(1)?,
                    created_at: r.get(2)?,
                    restored_from: r.get(3)?,
                })
            },
        )
        .optional()?)
}

pub fn set_site(
    conn: &Connection,
    site_id: &str,
    public_key: &[u8],
    restored_from: Option<&str>,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO site (id, site_id, public_key, created_at, restored_from)
         VALUES (1, ?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET site_id = excluded.site_id,
             public_key = excluded.public_key, created_at = excluded.created_at,
             restored_from = excluded.restored_from",
        params![site_id, public_key, now(), restored_from],
    )?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TenantRow {
    pub slug: String,
    pub name: String,
    pub status: String,
    pub created_at: i64,
}

pub fn insert_tenant(conn: &Connection, slug: &str, name: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO tenants (slug, name, status, created_at) VALUES (?1, ?2, 'active', ?3)",
        params![slug, name, now()],
    )
    .map_err(StoreError::from)
    .map_err(|e| {
        if e.is_unique_violation() {
            StoreError::Conflict(format!("a tenant named `{slug}` already exists"))
        } else {
            e
        }
    })?;
    Ok(())
}

fn tenant_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TenantRow> {
    Ok(TenantRow {
        slug: r.get(0)?,
        name: r.get(1)?,
        status: r.get(2)?,
        created_at: r.get(3)?,
    })
}

pub fn tenants(conn: &Connection) -> Result<Vec<TenantRow>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT slug, name, status, created_at FROM tenants ORDER BY slug")?;
    let rows = stmt
        .query_map([], tenant_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn tenant(conn: &Connection, slug: &str) -> Result<Option<TenantRow>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT slug, name, status, created_at FROM tenants WHERE slug = ?1")?;
    Ok(stmt.query_row([slug], tenant_from_row).optional()?)
}

pub fn set_tenant_status(conn: &Connection, slug: &str, status: &str) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE tenants SET status = ?2 WHERE slug = ?1",
        params![slug, status],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

pub fn insert_operator(
    conn: &Connection,
    username: &str,
    password_hash: &str,
) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO operators (username, password_hash, created_at) VALUES (?1, ?2, ?3)",
        params![username, password_hash, now()],
    )
    .map_err(StoreError::from)
    .map_err(|e| {
        if e.is_unique_violation() {
            StoreError::Conflict(format!("an operator named `{username}` already exists"))
        } else {
            e
        }
    })?;
    Ok(conn.last_insert_rowid())
}

#[derive(Debug, Clone)]
pub struct OperatorRow {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
}

fn operator_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OperatorRow> {
    Ok(OperatorRow {
        id: r.get(0)?,
        username: r.get(1)?,
        password_hash: r.get(2)?,
    })
}

pub fn operator_by_name(
    conn: &Connection,
    username: &str,
) -> Result<Option<OperatorRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, username, password_hash FROM operators WHERE username = ?1",
            [username],
            operator_from_row,
        )
        .optional()?)
}

pub fn operator_by_id(conn: &Connection, id: i64) -> Result<Option<OperatorRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT id, username, password_hash FROM operators WHERE id = ?1",
            [id],
            operator_from_row,
        )
        .optional()?)
}

pub fn operator_count(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT count(*) FROM operators", [], |r| r.get(0))?)
}
