//! SQL of federation: the hub's own database (`hub.db`: enrolled sites and one-time
//! enrolment tokens) and, in a site's system database, the hub it joined.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Migrations, StoreError};

pub const HUB_MIGRATIONS: Migrations = Migrations(&[HUB_V1, HUB_CONTINUITY, HUB_BATCHES]);

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

/// Continuity copies: per tenant (its opaque id), the site that owns it and a hash of the
/// restore verifier; generations of encrypted chunks, committed whole.
const HUB_CONTINUITY: &str = "
CREATE TABLE continuity_tenants (
    tenant_uid    TEXT PRIMARY KEY,
    site_id       TEXT NOT NULL,
    verifier_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    claimed_at    INTEGER
);
CREATE TABLE continuity_generations (
    tenant_uid   TEXT NOT NULL,
    generation   INTEGER NOT NULL,
    chunks       INTEGER,
    committed_at INTEGER,
    PRIMARY KEY (tenant_uid, generation)
) WITHOUT ROWID;
CREATE TABLE continuity_chunks (
    tenant_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    idx        INTEGER NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (tenant_uid, generation, idx)
);
";

/// Incremental batches between generations: each names its origin site and the range of
/// that site's change log it carries (after `after` through `last`). A generation records
/// which site made it and the last change it covers, so that the batches it covers go.
const HUB_BATCHES: &str = "
ALTER TABLE continuity_generations ADD COLUMN covers INTEGER NOT NULL DEFAULT 0;
ALTER TABLE continuity_generations ADD COLUMN origin TEXT;
CREATE TABLE continuity_batches (
    tenant_uid TEXT NOT NULL,
    origin     TEXT NOT NULL,
    after      INTEGER NOT NULL,
    last       INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    data       BLOB NOT NULL,
    stored_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_uid, origin, last)
);
";

/// Appended to the system database's migrations: how far the tenant's batches went.
pub const SITE_BATCHES: &str = "
ALTER TABLE continuity ADD COLUMN batched INTEGER NOT NULL DEFAULT 0;
ALTER TABLE continuity ADD COLUMN batched_at INTEGER;
";

/// Appended to the system database's migrations: each tenant's continuity copy, when
/// enabled. The key is derived from the recovery key, which is never stored; it lives here,
/// outside the tenant's own database, so that the copy never carries it.
pub const SITE_CONTINUITY: &str = "
CREATE TABLE continuity (
    slug          TEXT PRIMARY KEY,
    tenant_uid    TEXT NOT NULL,
    key           BLOB NOT NULL,
    verifier      BLOB NOT NULL,
    enabled_at    INTEGER NOT NULL,
    generation    INTEGER NOT NULL DEFAULT 0,
    committed     INTEGER NOT NULL DEFAULT 0,
    committed_at  INTEGER,
    last_error    TEXT,
    last_error_at INTEGER
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

/// Who owns a tenant's continuity copy at the hub.
#[derive(Debug, Clone)]
pub struct ContinuityOwner {
    pub site_id: String,
    pub verifier_hash: String,
}

pub fn continuity_owner(
    conn: &Connection,
    uid: &str,
) -> Result<Option<ContinuityOwner>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT site_id, verifier_hash FROM continuity_tenants WHERE tenant_uid = ?1",
        )?
        .query_row([uid], |r| {
            Ok(ContinuityOwner {
                site_id: r.get(0)?,
                verifier_hash: r.get(1)?,
            })
        })
        .optional()?)
}

/// Records `site_id` as the owner of a new tenant copy (nothing if it exists).
pub fn register_continuity(
    conn: &Connection,
    uid: &str,
    site_id: &str,
    verifier_hash: &str,
    at: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO continuity_tenants (tenant_uid, site_id, verifier_hash, created_at)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![uid, site_id, verifier_hash, at])?;
    Ok(())
}

pub fn claim_continuity(
    conn: &Connection,
    uid: &str,
    site_id: &str,
    at: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE continuity_tenants SET site_id = ?2, claimed_at = ?3 WHERE tenant_uid = ?1",
    )?
    .execute(params![uid, site_id, at])?;
    Ok(())
}

/// The newest committed generation: `(generation, chunks)`.
pub fn latest_generation(conn: &Connection, uid: &str) -> Result<Option<(i64, i64)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT generation, chunks FROM continuity_generations
             WHERE tenant_uid = ?1 AND committed_at IS NOT NULL
             ORDER BY generation DESC LIMIT 1",
        )?
        .query_row([uid], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

/// The chunk indexes the hub holds for a generation.
pub fn chunks_present(
    conn: &Connection,
    uid: &str,
    generation: i64,
) -> Result<Vec<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT idx FROM continuity_chunks WHERE tenant_uid = ?1 AND generation = ?2 ORDER BY idx",
        )?
        .query_map(params![uid, generation], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Why a chunk or a commit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenerationRefusal {
    /// Not newer than the last committed generation.
    Stale(i64),
    /// The generation is committed: its chunks no longer change.
    Committed,
    /// A chunk already stored under this index has other bytes.
    Different,
    /// The commit names chunks the hub does not hold.
    Missing(Vec<i64>),
}

fn check_open(
    conn: &Connection,
    uid: &str,
    generation: i64,
) -> Result<Result<(), GenerationRefusal>, StoreError> {
    if let Some((latest, _)) = latest_generation(conn, uid)?
        && generation <= latest
    {
        return Ok(Err(if generation == latest {
            GenerationRefusal::Committed
        } else {
            GenerationRefusal::Stale(latest)
        }));
    }
    Ok(Ok(()))
}

/// Stores one chunk; storing the same bytes again changes nothing.
pub fn put_chunk(
    conn: &Connection,
    uid: &str,
    generation: i64,
    idx: i64,
    data: &[u8],
) -> Result<Result<(), GenerationRefusal>, StoreError> {
    let existing: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT data FROM continuity_chunks WHERE tenant_uid = ?1 AND generation = ?2 AND idx = ?3",
        )?
        .query_row(params![uid, generation, idx], |r| r.get(0))
        .optional()?;
    if let Some(existing) = existing {
        return Ok(if existing == data {
            Ok(())
        } else {
            Err(GenerationRefusal::Different)
        });
    }
    if let Err(refusal) = check_open(conn, uid, generation)? {
        return Ok(Err(refusal));
    }
    conn.prepare_cached(
        "INSERT OR IGNORE INTO continuity_generations (tenant_uid, generation) VALUES (?1, ?2)",
    )?
    .execute(params![uid, generation])?;
    conn.prepare_cached(
        "INSERT INTO continuity_chunks (tenant_uid, generation, idx, data) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![uid, generation, idx, data])?;
    Ok(Ok(()))
}

/// Commits a generation of `chunks` chunks (indexes 0..chunks) and drops every older one:
/// what the tenant erased since is gone from the hub with them. Committing the committed
/// generation again changes nothing.
/// Commits a generation that holds, per site (its maker first), that site's changes
/// through the number given.
pub fn commit_generation(
    conn: &Connection,
    uid: &str,
    generation: i64,
    chunks: i64,
    covers: &[(String, i64)],
    at: i64,
) -> Result<Result<(), GenerationRefusal>, StoreError> {
    if latest_generation(conn, uid)? == Some((generation, chunks)) {
        generation_covers(conn, uid, generation, covers)?;
        return Ok(Ok(()));
    }
    if let Err(refusal) = check_open(conn, uid, generation)? {
        return Ok(Err(refusal));
    }
    let present = chunks_present(conn, uid, generation)?;
    let missing: Vec<i64> = (0..chunks)
        .filter(|i| present.binary_search(i).is_err())
        .collect();
    if !missing.is_empty() {
        return Ok(Err(GenerationRefusal::Missing(missing)));
    }
    conn.prepare_cached(
        "DELETE FROM continuity_chunks WHERE tenant_uid = ?1 AND (generation < ?2 OR idx >= ?3 AND generation = ?2)",
    )?
    .execute(params![uid, generation, chunks])?;
    conn.prepare_cached(
        "DELETE FROM continuity_generations WHERE tenant_uid = ?1 AND generation < ?2",
    )?
    .execute(params![uid, generation])?;
    conn.prepare_cached(
        "UPDATE continuity_generations SET chunks = ?3, committed_at = ?4
         WHERE tenant_uid = ?1 AND generation = ?2",
    )?
    .execute(params![uid, generation, chunks, at])?;
    generation_covers(conn, uid, generation, covers)?;
    Ok(Ok(()))
}

/// Why the hub refuses a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchRefusal {
    /// It holds other bytes for this origin's batch ending there.
    Differs,
    /// The batch does not follow the origin's last one: the hub expects `after` to be this.
    Gap(i64),
}

/// A batch the hub holds, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BatchInfo {
    pub origin: String,
    pub after: i64,
    pub last: i64,
    pub bytes: i64,
}

/// Where `origin`'s next batch must start: its last batch's end, or the change the newest
/// generation covers when that site made it, or 0.
fn batch_expected(conn: &Connection, uid: &str, origin: &str) -> Result<i64, StoreError> {
    let last: Option<i64> = conn
        .prepare_cached(
            "SELECT max(last) FROM continuity_batches WHERE tenant_uid = ?1 AND origin = ?2",
        )?
        .query_row(params![uid, origin], |r| r.get(0))?;
    if let Some(last) = last {
        return Ok(last);
    }
    Ok(conn
        .prepare_cached(
            "SELECT covers FROM continuity_generations
             WHERE tenant_uid = ?1 AND committed_at IS NOT NULL AND origin = ?2
             ORDER BY generation DESC LIMIT 1",
        )?
        .query_row(params![uid, origin], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Stores a batch, unless it is there already (the same bytes: nothing changes).
#[allow(clippy::too_many_arguments)]
pub fn put_batch(
    conn: &Connection,
    uid: &str,
    origin: &str,
    after: i64,
    last: i64,
    sha256: &str,
    data: &[u8],
    at: i64,
) -> Result<Result<(), BatchRefusal>, StoreError> {
    let held: Option<(i64, String)> = conn
        .prepare_cached(
            "SELECT after, sha256 FROM continuity_batches
             WHERE tenant_uid = ?1 AND origin = ?2 AND last = ?3",
        )?
        .query_row(params![uid, origin, last], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((a, sha)) = held {
        return Ok(if a == after && sha == sha256 {
            Ok(())
        } else {
            Err(BatchRefusal::Differs)
        });
    }
    let expected = batch_expected(conn, uid, origin)?;
    if after != expected {
        return Ok(Err(BatchRefusal::Gap(expected)));
    }
    conn.prepare_cached(
        "INSERT INTO continuity_batches (tenant_uid, origin, after, last, sha256, data, stored_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![uid, origin, after, last, sha256, data, at])?;
    Ok(Ok(()))
}

pub fn batches(conn: &Connection, uid: &str) -> Result<Vec<BatchInfo>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT origin, after, last, length(data) FROM continuity_batches
         WHERE tenant_uid = ?1 ORDER BY origin, last",
    )?;
    let rows = stmt
        .query_map([uid], |r| {
            Ok(BatchInfo {
                origin: r.get(0)?,
                after: r.get(1)?,
                last: r.get(2)?,
                bytes: r.get(3)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

pub fn batch(
    conn: &Connection,
    uid: &str,
    origin: &str,
    last: i64,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT data FROM continuity_batches WHERE tenant_uid = ?1 AND origin = ?2 AND last = ?3",
        )?
        .query_row(params![uid, origin, last], |r| r.get(0))
        .optional()?)
}

/// Records what a committed generation covers and drops the batches it covers.
fn generation_covers(
    conn: &Connection,
    uid: &str,
    generation: i64,
    covers: &[(String, i64)],
) -> Result<(), StoreError> {
    if let Some((origin, through)) = covers.first() {
        conn.prepare_cached(
            "UPDATE continuity_generations SET covers = ?3, origin = ?4
             WHERE tenant_uid = ?1 AND generation = ?2",
        )?
        .execute(params![uid, generation, through, origin])?;
    }
    for (origin, through) in covers {
        conn.prepare_cached(
            "DELETE FROM continuity_batches WHERE tenant_uid = ?1 AND origin = ?2 AND last <= ?3",
        )?
        .execute(params![uid, origin, through])?;
    }
    Ok(())
}

pub fn chunk(
    conn: &Connection,
    uid: &str,
    generation: i64,
    idx: i64,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT data FROM continuity_chunks WHERE tenant_uid = ?1 AND generation = ?2 AND idx = ?3",
        )?
        .query_row(params![uid, generation, idx], |r| r.get(0))
        .optional()?)
}

/// Why a restore's claim of a copy was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimRefusal {
    NoCopy,
    WrongKey,
}

/// Hands `uid`'s copy to `site_id` if `verifier_hash` is the copy's; returns the newest
/// committed generation.
pub fn claim(
    conn: &Connection,
    uid: &str,
    site_id: &str,
    verifier_hash: &str,
    at: i64,
) -> Result<Result<Option<(i64, i64)>, ClaimRefusal>, StoreError> {
    let Some(owner) = continuity_owner(conn, uid)? else {
        return Ok(Err(ClaimRefusal::NoCopy));
    };
    if !same_secret(&owner.verifier_hash, verifier_hash) {
        return Ok(Err(ClaimRefusal::WrongKey));
    }
    claim_continuity(conn, uid, site_id, at)?;
    Ok(Ok(latest_generation(conn, uid)?))
}

/// Constant-time comparison of two secret digests.
pub fn same_secret(a: &str, b: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()).into()
}
