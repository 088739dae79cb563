//! SQL of federation: the hub's own database (`hub.db`: enrolled sites and one-time
//! enrolment tokens) and, in a site's system database, the hub it joined.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Migrations, StoreError};

pub const HUB_MIGRATIONS: Migrations = Migrations(&[
    HUB_V1,
    HUB_CONTINUITY,
    HUB_BATCHES,
    HUB_HOLDERS,
    HUB_PUBLICATIONS,
    HUB_AGGREGATES,
]);

/// The aggregates schools publish: the latest per school (an opaque key).
const HUB_AGGREGATES: &str = "
CREATE TABLE aggregates (
    key         TEXT PRIMARY KEY,
    site_id     TEXT NOT NULL,
    school      TEXT NOT NULL,
    body        TEXT NOT NULL,
    received_at INTEGER NOT NULL
);
";

/// A school's latest aggregates at the hub.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AggregateRow {
    pub key: String,
    pub site_id: String,
    pub school: String,
    pub body: String,
    pub received_at: i64,
}

pub fn put_aggregates(
    conn: &Connection,
    key: &str,
    site_id: &str,
    school: &str,
    body: &str,
    at: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO aggregates (key, site_id, school, body, received_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (key) DO UPDATE SET site_id = excluded.site_id, school = excluded.school,
                                         body = excluded.body, received_at = excluded.received_at",
    )?
    .execute(params![key, site_id, school, body, at])?;
    Ok(())
}

pub fn aggregates(conn: &Connection) -> Result<Vec<AggregateRow>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT key, site_id, school, body, received_at FROM aggregates ORDER BY school, key",
        )?
        .query_map([], |r| {
            Ok(AggregateRow {
                key: r.get(0)?,
                site_id: r.get(1)?,
                school: r.get(2)?,
                body: r.get(3)?,
                received_at: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}

/// What the federation publishes to its sites (competency frameworks): each kept whole,
/// with its SHA-256; publishing the same bytes again changes nothing.
const HUB_PUBLICATIONS: &str = "
CREATE TABLE publications (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL,
    name         TEXT NOT NULL,
    uri          TEXT NOT NULL,
    sha256       TEXT NOT NULL UNIQUE,
    data         BLOB NOT NULL,
    published_at INTEGER NOT NULL
);
";

/// Appended to the system database's migrations: the hub's signing key (base64url), to
/// check what the hub hands over by hand.
pub const SITE_HUB_KEY: &str = "ALTER TABLE federation ADD COLUMN hub_key TEXT;";

/// Appended to the system database's migrations: what the federation published, as this
/// site fetched it (every tenant may adopt it).
pub const SITE_PUBLICATIONS: &str = "
CREATE TABLE publications (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    uri        TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    data       BLOB NOT NULL,
    fetched_at INTEGER NOT NULL
);
";

/// A publication, without its bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Publication {
    pub id: i64,
    pub kind: String,
    pub name: String,
    pub uri: String,
    pub sha256: String,
    pub bytes: i64,
    pub published_at: i64,
}

/// Publishes `data`; returns its id and whether it is new (the same bytes published
/// before keep their id).
pub fn publish(
    conn: &Connection,
    kind: &str,
    name: &str,
    uri: &str,
    sha256: &str,
    data: &[u8],
    at: i64,
) -> Result<(i64, bool), StoreError> {
    let held: Option<i64> = conn
        .prepare_cached("SELECT id FROM publications WHERE sha256 = ?1")?
        .query_row([sha256], |r| r.get(0))
        .optional()?;
    if let Some(id) = held {
        return Ok((id, false));
    }
    conn.prepare_cached(
        "INSERT INTO publications (kind, name, uri, sha256, data, published_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![kind, name, uri, sha256, data, at])?;
    Ok((conn.last_insert_rowid(), true))
}

pub fn publications(conn: &Connection) -> Result<Vec<Publication>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, kind, name, uri, sha256, length(data), published_at FROM publications
             ORDER BY id",
        )?
        .query_map([], publication_row)?
        .collect::<Result<_, _>>()?)
}

fn publication_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Publication> {
    Ok(Publication {
        id: r.get(0)?,
        kind: r.get(1)?,
        name: r.get(2)?,
        uri: r.get(3)?,
        sha256: r.get(4)?,
        bytes: r.get(5)?,
        published_at: r.get(6)?,
    })
}

pub fn publication(conn: &Connection, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT data FROM publications WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

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

/// Several sites may hold one tenant (two campuses of a school, a restored appliance beside
/// the one it replaces): each is a holder, may push generations and batches, and pulls the
/// others' batches. A generation records, per origin, through which change it holds that
/// origin's changes (`continuity_covers`); each holder reports how far it applied each
/// origin's batches (`continuity_pulled`). A batch goes once the newest generation holds it
/// and every other unrevoked holder has applied it.
const HUB_HOLDERS: &str = "
CREATE TABLE continuity_holders (
    tenant_uid TEXT NOT NULL,
    site_id    TEXT NOT NULL,
    added_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_uid, site_id)
) WITHOUT ROWID;
INSERT INTO continuity_holders (tenant_uid, site_id, added_at)
    SELECT tenant_uid, site_id, coalesce(claimed_at, created_at) FROM continuity_tenants;
CREATE TABLE continuity_pulled (
    tenant_uid TEXT NOT NULL,
    holder     TEXT NOT NULL,
    origin     TEXT NOT NULL,
    through    INTEGER NOT NULL,
    PRIMARY KEY (tenant_uid, holder, origin)
) WITHOUT ROWID;
CREATE TABLE continuity_covers (
    tenant_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    origin     TEXT NOT NULL,
    through    INTEGER NOT NULL,
    PRIMARY KEY (tenant_uid, generation, origin)
) WITHOUT ROWID;
INSERT INTO continuity_covers (tenant_uid, generation, origin, through)
    SELECT tenant_uid, generation, origin, covers FROM continuity_generations
    WHERE origin IS NOT NULL AND committed_at IS NOT NULL;
";

/// Appended to the system database's migrations: whether a new generation is due (an
/// erasure arrived from another site), when the other sites' batches were last pulled, and
/// what the last pull could not bring (changes only a generation carries).
pub const SITE_PULL: &str = "
ALTER TABLE continuity ADD COLUMN generation_due INTEGER NOT NULL DEFAULT 0;
ALTER TABLE continuity ADD COLUMN pulled_at INTEGER;
ALTER TABLE continuity ADD COLUMN lacking TEXT;
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
    /// The hub's Ed25519 public key (base64url), once the hub told it.
    pub hub_key: Option<String>,
}

pub fn membership(conn: &Connection) -> Result<Option<Membership>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT hub_url, hub_id, hub_ca, joined_at, hub_key FROM federation WHERE id = 1",
        )?
        .query_row([], |r| {
            Ok(Membership {
                hub_url: r.get(0)?,
                hub_id: r.get(1)?,
                hub_ca: r.get(2)?,
                joined_at: r.get(3)?,
                hub_key: r.get(4)?,
            })
        })
        .optional()?)
}

pub fn set_membership(conn: &Connection, m: &Membership) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO federation (id, hub_url, hub_id, hub_ca, joined_at, hub_key)
         VALUES (1, ?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET hub_url = excluded.hub_url, hub_id = excluded.hub_id,
                                        hub_ca = excluded.hub_ca, joined_at = excluded.joined_at,
                                        hub_key = excluded.hub_key",
    )?
    .execute(params![
        m.hub_url,
        m.hub_id,
        m.hub_ca,
        m.joined_at,
        m.hub_key
    ])?;
    Ok(())
}

/// A tenant's continuity copy as the hub knows it: the hash of its restore verifier and the
/// sites that hold it.
#[derive(Debug, Clone)]
pub struct ContinuityCopy {
    pub verifier_hash: String,
    pub holders: Vec<String>,
}

impl ContinuityCopy {
    pub fn held_by(&self, site_id: &str) -> bool {
        self.holders.iter().any(|h| h == site_id)
    }
}

pub fn continuity_copy(conn: &Connection, uid: &str) -> Result<Option<ContinuityCopy>, StoreError> {
    let verifier_hash: Option<String> = conn
        .prepare_cached("SELECT verifier_hash FROM continuity_tenants WHERE tenant_uid = ?1")?
        .query_row([uid], |r| r.get(0))
        .optional()?;
    let Some(verifier_hash) = verifier_hash else {
        return Ok(None);
    };
    let holders = conn
        .prepare_cached(
            "SELECT site_id FROM continuity_holders WHERE tenant_uid = ?1 ORDER BY added_at, site_id",
        )?
        .query_map([uid], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(Some(ContinuityCopy {
        verifier_hash,
        holders,
    }))
}

/// Records `site_id` as the first holder of a new tenant copy (nothing if it exists).
pub fn register_continuity(
    conn: &Connection,
    uid: &str,
    site_id: &str,
    verifier_hash: &str,
    at: i64,
) -> Result<(), StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO continuity_tenants (tenant_uid, site_id, verifier_hash, created_at)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![uid, site_id, verifier_hash, at])?;
    if inserted > 0 {
        add_holder(conn, uid, site_id, at)?;
    }
    Ok(())
}

fn add_holder(conn: &Connection, uid: &str, site_id: &str, at: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO continuity_holders (tenant_uid, site_id, added_at) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![uid, site_id, at])?;
    Ok(())
}

/// The newest committed generation of a copy, and the site that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub generation: i64,
    pub chunks: i64,
    pub origin: String,
}

/// The newest committed generation.
pub fn latest_generation(conn: &Connection, uid: &str) -> Result<Option<Generation>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT generation, chunks, coalesce(origin, '') FROM continuity_generations
             WHERE tenant_uid = ?1 AND committed_at IS NOT NULL
             ORDER BY generation DESC LIMIT 1",
        )?
        .query_row([uid], |r| {
            Ok(Generation {
                generation: r.get(0)?,
                chunks: r.get(1)?,
                origin: r.get(2)?,
            })
        })
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
    /// Another site (named) is sending a generation of this number.
    Taken(String),
}

fn check_open(
    conn: &Connection,
    uid: &str,
    generation: i64,
) -> Result<Result<(), GenerationRefusal>, StoreError> {
    if let Some(Generation {
        generation: latest, ..
    }) = latest_generation(conn, uid)?
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

/// The site sending generation `generation`, if it was begun.
fn generation_origin(
    conn: &Connection,
    uid: &str,
    generation: i64,
) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT origin FROM continuity_generations WHERE tenant_uid = ?1 AND generation = ?2",
        )?
        .query_row(params![uid, generation], |r| r.get::<_, Option<String>>(0))
        .optional()?
        .flatten())
}

/// Stores one chunk of `origin`'s generation; storing the same bytes again changes nothing.
pub fn put_chunk(
    conn: &Connection,
    uid: &str,
    origin: &str,
    generation: i64,
    idx: i64,
    data: &[u8],
) -> Result<Result<(), GenerationRefusal>, StoreError> {
    if let Some(other) = generation_origin(conn, uid, generation)?
        && other != origin
    {
        return Ok(Err(GenerationRefusal::Taken(other)));
    }
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
        "INSERT INTO continuity_generations (tenant_uid, generation, origin) VALUES (?1, ?2, ?3)
         ON CONFLICT DO UPDATE SET origin = excluded.origin",
    )?
    .execute(params![uid, generation, origin])?;
    conn.prepare_cached(
        "INSERT INTO continuity_chunks (tenant_uid, generation, idx, data) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![uid, generation, idx, data])?;
    Ok(Ok(()))
}

/// Commits `origin`'s generation of `chunks` chunks (indexes 0..chunks) and drops every
/// older one: what the tenant erased since is gone from the hub with them. `covers` says,
/// per site (the maker first), through which change the generation holds that site's
/// changes; what it holds of the others, the maker has applied. Committing the committed
/// generation again changes nothing.
pub fn commit_generation(
    conn: &Connection,
    uid: &str,
    origin: &str,
    generation: i64,
    chunks: i64,
    covers: &[(String, i64)],
    at: i64,
) -> Result<Result<(), GenerationRefusal>, StoreError> {
    if let Some(other) = generation_origin(conn, uid, generation)?
        && other != origin
    {
        return Ok(Err(GenerationRefusal::Taken(other)));
    }
    let latest = latest_generation(conn, uid)?;
    if latest
        .as_ref()
        .is_some_and(|g| g.generation == generation && g.chunks == chunks)
    {
        generation_covers(conn, uid, origin, generation, covers, at)?;
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
    conn.prepare_cached("DELETE FROM continuity_covers WHERE tenant_uid = ?1 AND generation < ?2")?
        .execute(params![uid, generation])?;
    conn.prepare_cached(
        "UPDATE continuity_generations SET chunks = ?3, committed_at = ?4
         WHERE tenant_uid = ?1 AND generation = ?2",
    )?
    .execute(params![uid, generation, chunks, at])?;
    generation_covers(conn, uid, origin, generation, covers, at)?;
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

/// Where `origin`'s next batch must start: its last batch's end, or what the newest
/// generation holds of it, or 0.
fn batch_expected(conn: &Connection, uid: &str, origin: &str) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT max(
                 coalesce((SELECT max(last) FROM continuity_batches
                           WHERE tenant_uid = ?1 AND origin = ?2), 0),
                 coalesce((SELECT c.through FROM continuity_covers c
                           WHERE c.tenant_uid = ?1 AND c.origin = ?2 AND c.generation =
                               (SELECT max(generation) FROM continuity_generations
                                WHERE tenant_uid = ?1 AND committed_at IS NOT NULL)), 0))",
        )?
        .query_row(params![uid, origin], |r| r.get(0))?)
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

/// Records what a committed generation covers (and, for its maker, what it has applied of
/// the others), then drops the batches no holder needs any more.
fn generation_covers(
    conn: &Connection,
    uid: &str,
    origin: &str,
    generation: i64,
    covers: &[(String, i64)],
    at: i64,
) -> Result<(), StoreError> {
    if let Some((_, through)) = covers.first() {
        conn.prepare_cached(
            "UPDATE continuity_generations SET covers = ?3, origin = ?4
             WHERE tenant_uid = ?1 AND generation = ?2",
        )?
        .execute(params![uid, generation, through, origin])?;
    }
    for (o, through) in covers {
        conn.prepare_cached(
            "INSERT INTO continuity_covers (tenant_uid, generation, origin, through)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO UPDATE SET through = max(through, excluded.through)",
        )?
        .execute(params![uid, generation, o, through])?;
    }
    let applied: Vec<(String, i64)> = covers
        .iter()
        .filter(|(o, _)| o != origin)
        .cloned()
        .collect();
    record_pulled(conn, uid, origin, &applied, at)
}

/// Records how far `holder` applied each origin's batches, then drops every batch that the
/// newest generation holds and every other unrevoked holder applied.
pub fn record_pulled(
    conn: &Connection,
    uid: &str,
    holder: &str,
    cursors: &[(String, i64)],
    _at: i64,
) -> Result<(), StoreError> {
    for (origin, through) in cursors {
        conn.prepare_cached(
            "INSERT INTO continuity_pulled (tenant_uid, holder, origin, through)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO UPDATE SET through = max(through, excluded.through)",
        )?
        .execute(params![uid, holder, origin, through])?;
    }
    conn.prepare_cached(COMPACT)?.execute([uid])?;
    Ok(())
}

/// The batches of a tenant that no one needs: the newest generation holds them, and every
/// other unrevoked holder has applied them. The same text runs on PostgreSQL.
pub const COMPACT: &str = "
DELETE FROM continuity_batches AS b
WHERE b.tenant_uid = $1
  AND b.last <= coalesce((
        SELECT c.through FROM continuity_covers c
        WHERE c.tenant_uid = b.tenant_uid AND c.origin = b.origin AND c.generation = (
            SELECT max(g.generation) FROM continuity_generations g
            WHERE g.tenant_uid = b.tenant_uid AND g.committed_at IS NOT NULL)), 0)
  AND NOT EXISTS (
        SELECT 1 FROM continuity_holders h
        JOIN sites s ON s.site_id = h.site_id AND s.revoked_at IS NULL
        WHERE h.tenant_uid = b.tenant_uid AND h.site_id <> b.origin
          AND coalesce((SELECT p.through FROM continuity_pulled p
                        WHERE p.tenant_uid = h.tenant_uid AND p.holder = h.site_id
                          AND p.origin = b.origin), 0) < b.last)";

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

/// Gives `uid`'s copy to `site_id` if `verifier_hash` is the copy's: as its only holder
/// (a restore that replaces the appliance that held it), or `alongside` the others. The
/// new holder restores the newest generation, so it has applied what that holds. Returns
/// the newest committed generation.
pub fn claim(
    conn: &Connection,
    uid: &str,
    site_id: &str,
    verifier_hash: &str,
    alongside: bool,
    at: i64,
) -> Result<Result<Option<Generation>, ClaimRefusal>, StoreError> {
    let Some(copy) = continuity_copy(conn, uid)? else {
        return Ok(Err(ClaimRefusal::NoCopy));
    };
    if !same_secret(&copy.verifier_hash, verifier_hash) {
        return Ok(Err(ClaimRefusal::WrongKey));
    }
    if !alongside {
        conn.prepare_cached("DELETE FROM continuity_holders WHERE tenant_uid = ?1")?
            .execute([uid])?;
        conn.prepare_cached("DELETE FROM continuity_pulled WHERE tenant_uid = ?1")?
            .execute([uid])?;
        conn.prepare_cached(
            "UPDATE continuity_tenants SET site_id = ?2, claimed_at = ?3 WHERE tenant_uid = ?1",
        )?
        .execute(params![uid, site_id, at])?;
    }
    add_holder(conn, uid, site_id, at)?;
    let latest = latest_generation(conn, uid)?;
    let held: Vec<(String, i64)> = conn
        .prepare_cached(
            "SELECT origin, through FROM continuity_covers
             WHERE tenant_uid = ?1 AND generation = ?2",
        )?
        .query_map(
            params![uid, latest.as_ref().map_or(0, |g| g.generation)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<Result<_, _>>()?;
    record_pulled(conn, uid, site_id, &held, at)?;
    Ok(Ok(latest))
}

/// Constant-time comparison of two secret digests.
pub fn same_secret(a: &str, b: &str) -> bool {
    subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()).into()
}

/// The continuity copies a site holds, by tenant id.
pub fn copies_held_by(conn: &Connection, site_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT tenant_uid FROM continuity_holders WHERE site_id = ?1 ORDER BY tenant_uid",
        )?
        .query_map([site_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Keeps a publication this site fetched (nothing if it holds it); returns whether it is new.
pub fn keep_publication(
    conn: &Connection,
    p: &Publication,
    data: &[u8],
    at: i64,
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "INSERT OR IGNORE INTO publications (id, kind, name, uri, sha256, data, fetched_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![p.id, p.kind, p.name, p.uri, p.sha256, data, at])?
        > 0)
}

/// The publications this site holds (`published_at`: when it fetched them).
pub fn kept_publications(conn: &Connection) -> Result<Vec<Publication>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, kind, name, uri, sha256, length(data), fetched_at FROM publications
             ORDER BY id",
        )?
        .query_map([], publication_row)?
        .collect::<Result<_, _>>()?)
}

/// A publication this site holds: its kind and bytes.
pub fn kept_publication(
    conn: &Connection,
    id: i64,
) -> Result<Option<(String, Vec<u8>)>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT kind, data FROM publications WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}
