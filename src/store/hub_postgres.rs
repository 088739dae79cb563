//! The federation hub on PostgreSQL, for a federation that outgrows one machine: the same
//! tables and rules as the SQLite hub ([`super::federation`]). Every write runs in one
//! transaction. Rows that a check reads before it writes are locked (`FOR UPDATE`), so two
//! hub processes on one database decide as one. A write is acknowledged after `COMMIT`,
//! which is durable with PostgreSQL's default `synchronous_commit = on`.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::StoreError;
use super::federation::{
    AggregateRow, BatchInfo, BatchRefusal, COMPACT, ClaimRefusal, ContinuityCopy, Generation,
    GenerationRefusal, Publication, SiteRow, TokenRefusal, same_secret,
};

/// Schema versions, each applied once, in order, under an advisory lock.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE hub (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    hub_id      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE enrolment_tokens (
    secret_hash TEXT PRIMARY KEY,
    label       TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    used_by     TEXT
);
CREATE TABLE sites (
    site_id     TEXT PRIMARY KEY,
    public_key  BYTEA NOT NULL,
    name        TEXT NOT NULL,
    label       TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    revoked_at  BIGINT,
    last_seen   BIGINT
);
CREATE TABLE continuity_tenants (
    tenant_uid    TEXT PRIMARY KEY,
    site_id       TEXT NOT NULL,
    verifier_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    claimed_at    BIGINT
);
CREATE TABLE continuity_generations (
    tenant_uid   TEXT NOT NULL,
    generation   BIGINT NOT NULL,
    chunks       BIGINT,
    committed_at BIGINT,
    PRIMARY KEY (tenant_uid, generation)
);
CREATE TABLE continuity_chunks (
    tenant_uid TEXT NOT NULL,
    generation BIGINT NOT NULL,
    idx        BIGINT NOT NULL,
    data       BYTEA NOT NULL,
    PRIMARY KEY (tenant_uid, generation, idx)
);
",
    "
ALTER TABLE continuity_generations ADD COLUMN covers BIGINT NOT NULL DEFAULT 0;
ALTER TABLE continuity_generations ADD COLUMN origin TEXT;
CREATE TABLE continuity_batches (
    tenant_uid TEXT NOT NULL,
    origin     TEXT NOT NULL,
    after      BIGINT NOT NULL,
    last       BIGINT NOT NULL,
    sha256     TEXT NOT NULL,
    data       BYTEA NOT NULL,
    stored_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_uid, origin, last)
);
",
    "
CREATE TABLE continuity_holders (
    tenant_uid TEXT NOT NULL,
    site_id    TEXT NOT NULL,
    added_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant_uid, site_id)
);
INSERT INTO continuity_holders (tenant_uid, site_id, added_at)
    SELECT tenant_uid, site_id, coalesce(claimed_at, created_at) FROM continuity_tenants;
CREATE TABLE continuity_pulled (
    tenant_uid TEXT NOT NULL,
    holder     TEXT NOT NULL,
    origin     TEXT NOT NULL,
    through    BIGINT NOT NULL,
    PRIMARY KEY (tenant_uid, holder, origin)
);
CREATE TABLE continuity_covers (
    tenant_uid TEXT NOT NULL,
    generation BIGINT NOT NULL,
    origin     TEXT NOT NULL,
    through    BIGINT NOT NULL,
    PRIMARY KEY (tenant_uid, generation, origin)
);
INSERT INTO continuity_covers (tenant_uid, generation, origin, through)
    SELECT tenant_uid, generation, origin, covers FROM continuity_generations
    WHERE origin IS NOT NULL AND committed_at IS NOT NULL;
",
    "
CREATE TABLE publications (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         TEXT NOT NULL,
    name         TEXT NOT NULL,
    uri          TEXT NOT NULL,
    sha256       TEXT NOT NULL UNIQUE,
    data         BYTEA NOT NULL,
    published_at BIGINT NOT NULL
);
",
    "
CREATE TABLE aggregates (
    key         TEXT PRIMARY KEY,
    site_id     TEXT NOT NULL,
    school      TEXT NOT NULL,
    body        TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
",
];

fn pg(e: impl std::fmt::Display) -> StoreError {
    StoreError::Postgres(e.to_string())
}

/// Connects (`conninfo`: `host=… dbname=…` or a `postgresql://` URL) and brings the
/// schema up to date.
pub async fn open(conninfo: &str) -> Result<Pool, StoreError> {
    let config: tokio_postgres::Config = conninfo.parse().map_err(pg)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager).max_size(16).build().map_err(pg)?;
    let mut client = pool.get().await.map_err(pg)?;
    let tx = client.transaction().await.map_err(pg)?;
    // One migrating process at a time.
    tx.execute("SELECT pg_advisory_xact_lock(7208312)", &[])
        .await
        .map_err(pg)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS hub_schema (version INTEGER NOT NULL)")
        .await
        .map_err(pg)?;
    let version: i64 = tx
        .query_one("SELECT count(*) FROM hub_schema", &[])
        .await
        .map_err(pg)?
        .get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql).await.map_err(pg)?;
        tx.execute(
            "INSERT INTO hub_schema (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await
        .map_err(pg)?;
    }
    tx.commit().await.map_err(pg)?;
    Ok(pool)
}

async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get().await.map_err(pg)
}

pub async fn init_hub_id(pool: &Pool, hub_id: &str, at: i64) -> Result<String, StoreError> {
    let c = client(pool).await?;
    c.execute(
        "INSERT INTO hub (id, hub_id, created_at) VALUES (1, $1, $2) ON CONFLICT DO NOTHING",
        &[&hub_id, &at],
    )
    .await
    .map_err(pg)?;
    Ok(c.query_one("SELECT hub_id FROM hub WHERE id = 1", &[])
        .await
        .map_err(pg)?
        .get(0))
}

pub async fn add_token(
    pool: &Pool,
    secret_hash: &str,
    label: &str,
    at: i64,
    expires_at: i64,
) -> Result<(), StoreError> {
    client(pool)
        .await?
        .execute(
            "INSERT INTO enrolment_tokens (secret_hash, label, created_at, expires_at)
             VALUES ($1, $2, $3, $4)",
            &[&secret_hash, &label, &at, &expires_at],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

const SITE_COLUMNS: &str = "site_id, public_key, name, label, enrolled_at, revoked_at, last_seen";

fn site_row(r: &tokio_postgres::Row) -> SiteRow {
    SiteRow {
        site_id: r.get(0),
        public_key: r.get(1),
        name: r.get(2),
        label: r.get(3),
        enrolled_at: r.get(4),
        revoked_at: r.get(5),
        last_seen: r.get(6),
    }
}

pub async fn enrol(
    pool: &Pool,
    secret_hash: &str,
    site_id: &str,
    public_key: &[u8],
    name: &str,
    at: i64,
) -> Result<Result<String, TokenRefusal>, StoreError> {
    let mut c = client(pool).await?;
    let tx = c.transaction().await.map_err(pg)?;
    let Some(token) = tx
        .query_opt(
            "SELECT label, expires_at, used_at FROM enrolment_tokens WHERE secret_hash = $1
             FOR UPDATE",
            &[&secret_hash],
        )
        .await
        .map_err(pg)?
    else {
        return Ok(Err(TokenRefusal::Unknown));
    };
    let (label, expires_at, used_at): (String, i64, Option<i64>) =
        (token.get(0), token.get(1), token.get(2));
    if used_at.is_some() {
        return Ok(Err(TokenRefusal::Used));
    }
    if expires_at <= at {
        return Ok(Err(TokenRefusal::Expired));
    }
    let revoked = tx
        .query_opt(
            "SELECT 1 FROM sites WHERE site_id = $1 AND revoked_at IS NOT NULL",
            &[&site_id],
        )
        .await
        .map_err(pg)?;
    if revoked.is_some() {
        return Ok(Err(TokenRefusal::Revoked));
    }
    tx.execute(
        "UPDATE enrolment_tokens SET used_at = $2, used_by = $3 WHERE secret_hash = $1",
        &[&secret_hash, &at, &site_id],
    )
    .await
    .map_err(pg)?;
    tx.execute(
        "INSERT INTO sites (site_id, public_key, name, label, enrolled_at, last_seen)
         VALUES ($1, $2, $3, $4, $5, $5)
         ON CONFLICT (site_id) DO UPDATE SET name = excluded.name, label = excluded.label,
                                             last_seen = excluded.last_seen",
        &[&site_id, &public_key, &name, &label, &at],
    )
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(Ok(label))
}

pub async fn site(pool: &Pool, site_id: &str) -> Result<Option<SiteRow>, StoreError> {
    Ok(client(pool)
        .await?
        .query_opt(
            &format!("SELECT {SITE_COLUMNS} FROM sites WHERE site_id = $1"),
            &[&site_id],
        )
        .await
        .map_err(pg)?
        .as_ref()
        .map(site_row))
}

pub async fn sites(pool: &Pool) -> Result<Vec<SiteRow>, StoreError> {
    Ok(client(pool)
        .await?
        .query(
            &format!("SELECT {SITE_COLUMNS} FROM sites ORDER BY enrolled_at, site_id"),
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(site_row)
        .collect())
}

pub async fn revoke(pool: &Pool, site_id: &str, at: i64) -> Result<bool, StoreError> {
    Ok(client(pool)
        .await?
        .execute(
            "UPDATE sites SET revoked_at = $2 WHERE site_id = $1 AND revoked_at IS NULL",
            &[&site_id, &at],
        )
        .await
        .map_err(pg)?
        > 0)
}

pub async fn touch(pool: &Pool, site_id: &str, at: i64) -> Result<(), StoreError> {
    client(pool)
        .await?
        .execute(
            "UPDATE sites SET last_seen = $2 WHERE site_id = $1",
            &[&site_id, &at],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

/// Locks the tenant's row (chunks, commits, batches and claims of one tenant are decided
/// one at a time) and reads its copy.
async fn copy_of(
    c: &impl deadpool_postgres::GenericClient,
    uid: &str,
    lock: bool,
) -> Result<Option<ContinuityCopy>, StoreError> {
    let sql = if lock {
        "SELECT verifier_hash FROM continuity_tenants WHERE tenant_uid = $1 FOR UPDATE"
    } else {
        "SELECT verifier_hash FROM continuity_tenants WHERE tenant_uid = $1"
    };
    let Some(row) = c.query_opt(sql, &[&uid]).await.map_err(pg)? else {
        return Ok(None);
    };
    let holders = c
        .query(
            "SELECT site_id FROM continuity_holders WHERE tenant_uid = $1
             ORDER BY added_at, site_id",
            &[&uid],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Some(ContinuityCopy {
        verifier_hash: row.get(0),
        holders,
    }))
}

async fn latest(
    c: &impl deadpool_postgres::GenericClient,
    uid: &str,
) -> Result<Option<Generation>, StoreError> {
    Ok(c.query_opt(
        "SELECT generation, chunks, coalesce(origin, '') FROM continuity_generations
         WHERE tenant_uid = $1 AND committed_at IS NOT NULL
         ORDER BY generation DESC LIMIT 1",
        &[&uid],
    )
    .await
    .map_err(pg)?
    .map(|r| Generation {
        generation: r.get(0),
        chunks: r.get(1),
        origin: r.get(2),
    }))
}

pub async fn continuity_copy(pool: &Pool, uid: &str) -> Result<Option<ContinuityCopy>, StoreError> {
    copy_of(&client(pool).await?, uid, false).await
}

pub async fn register(
    pool: &Pool,
    uid: &str,
    site_id: &str,
    verifier_hash: &str,
    at: i64,
) -> Result<(Option<ContinuityCopy>, Option<Generation>), StoreError> {
    let mut c = client(pool).await?;
    let tx = c.transaction().await.map_err(pg)?;
    let inserted = tx
        .execute(
            "INSERT INTO continuity_tenants (tenant_uid, site_id, verifier_hash, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[&uid, &site_id, &verifier_hash, &at],
        )
        .await
        .map_err(pg)?;
    if inserted > 0 {
        add_holder(&tx, uid, site_id, at).await?;
    }
    let found = (copy_of(&tx, uid, false).await?, latest(&tx, uid).await?);
    tx.commit().await.map_err(pg)?;
    Ok(found)
}

async fn add_holder(
    tx: &tokio_postgres::Transaction<'_>,
    uid: &str,
    site_id: &str,
    at: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO continuity_holders (tenant_uid, site_id, added_at) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        &[&uid, &site_id, &at],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// See [`super::federation::claim`].
pub async fn claim(
    pool: &Pool,
    uid: &str,
    site_id: &str,
    verifier_hash: &str,
    alongside: bool,
    at: i64,
) -> Result<Result<Option<Generation>, ClaimRefusal>, StoreError> {
    let mut c = client(pool).await?;
    let tx = c.transaction().await.map_err(pg)?;
    let Some(copy) = copy_of(&tx, uid, true).await? else {
        return Ok(Err(ClaimRefusal::NoCopy));
    };
    if !same_secret(&copy.verifier_hash, verifier_hash) {
        return Ok(Err(ClaimRefusal::WrongKey));
    }
    if !alongside {
        for sql in [
            "DELETE FROM continuity_holders WHERE tenant_uid = $1",
            "DELETE FROM continuity_pulled WHERE tenant_uid = $1",
        ] {
            tx.execute(sql, &[&uid]).await.map_err(pg)?;
        }
        tx.execute(
            "UPDATE continuity_tenants SET site_id = $2, claimed_at = $3 WHERE tenant_uid = $1",
            &[&uid, &site_id, &at],
        )
        .await
        .map_err(pg)?;
    }
    add_holder(&tx, uid, site_id, at).await?;
    let newest = latest(&tx, uid).await?;
    let held: Vec<(String, i64)> = tx
        .query(
            "SELECT origin, through FROM continuity_covers
             WHERE tenant_uid = $1 AND generation = $2",
            &[&uid, &newest.as_ref().map_or(0, |g| g.generation)],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    pulled(&tx, uid, site_id, &held).await?;
    tx.commit().await.map_err(pg)?;
    Ok(Ok(newest))
}

/// Records `holder`'s cursors and drops the batches nobody needs any more.
async fn pulled(
    tx: &tokio_postgres::Transaction<'_>,
    uid: &str,
    holder: &str,
    cursors: &[(String, i64)],
) -> Result<(), StoreError> {
    for (origin, through) in cursors {
        tx.execute(
            "INSERT INTO continuity_pulled (tenant_uid, holder, origin, through)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_uid, holder, origin)
             DO UPDATE SET through = GREATEST(continuity_pulled.through, excluded.through)",
            &[&uid, &holder, origin, through],
        )
        .await
        .map_err(pg)?;
    }
    tx.execute(COMPACT, &[&uid]).await.map_err(pg)?;
    Ok(())
}

pub async fn record_pulled(
    pool: &Pool,
    uid: &str,
    holder: &str,
    cursors: &[(String, i64)],
) -> Result<(), StoreError> {
    let mut c = client(pool).await?;
    let tx = c.transaction().await.map_err(pg)?;
    copy_of(&tx, uid, true).await?;
    pulled(&tx, uid, holder, cursors).await?;
    tx.commit().await.map_err(pg)?;
    Ok(())
}

pub async fn generation_status(
    pool: &Pool,
    uid: &str,
    generation: i64,
) -> Result<(Vec<i64>, Option<Generation>), StoreError> {
    let c = client(pool).await?;
    let present = c
        .query(
            "SELECT idx FROM continuity_chunks WHERE tenant_uid = $1 AND generation = $2
             ORDER BY idx",
            &[&uid, &generation],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok((present, latest(&c, uid).await?))
}

/// The same rule as the SQLite hub: a generation not newer than the last committed one is
/// closed.
fn closed(generation: i64, newest: &Option<Generation>) -> Option<GenerationRefusal> {
    match newest.as_ref().map(|g| g.generation) {
        Some(latest) if generation == latest => Some(GenerationRefusal::Committed),
        Some(latest) if generation < latest => Some(GenerationRefusal::Stale(latest)),
        _ => None,
    }
}

/// Refuses a generation that another site began.
async fn taken(
    tx: &tokio_postgres::Transaction<'_>,
    uid: &str,
    origin: &str,
    generation: i64,
) -> Result<Option<GenerationRefusal>, StoreError> {
    let other: Option<String> = tx
        .query_opt(
            "SELECT origin FROM continuity_generations WHERE tenant_uid = $1 AND generation = $2",
            &[&uid, &generation],
        )
        .await
        .map_err(pg)?
        .and_then(|r| r.get(0));
    Ok(other.filter(|o| o != origin).map(GenerationRefusal::Taken))
}

pub async fn put_chunk(
    pool: &Pool,
    uid: &str,
    origin: &str,
    generation: i64,
    idx: i64,
    data: &[u8],
) -> Result<Result<(), GenerationRefusal>, StoreError> {
    let mut c = client(pool).await?;
    let tx = c.transaction().await.map_err(pg)?;
    copy_of(&tx, uid, true).await?;
    if let Some(refusal) = taken(&tx, uid, origin, generation).await? {
        return Ok(Err(refusal));
    }
    let existing = tx
        .query_opt(
            "SELECT data FROM continuity_chunks
             WHERE tenant_uid = $1 AND generation = $2 AND idx = $3",
            &[&uid, &generation, &idx],
        )
        .await
        .map_err(pg)?;
    if let Some(row) = existing {
        let stored: Vec<u8> = row.get(0);
        return Ok(if stored == data {
            Ok(())
        } else {
            Err(GenerationRefusal::Different)
        });
    }
    if let Some(refusal) = closed(generation, &latest(&tx, uid).await?) {
        return Ok(Err(refusal));
    }
    tx.execute(
        "INSERT INTO continuity_generations (tenant_uid, generation, origin) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_uid, generation) DO UPDATE SET origin = excluded.origin",
        &[&uid, &generation, &origin],
    )
    .await
    .map_err(pg)?;
    tx.execute(
        "INSERT INTO continuity_chunks (tenant_uid, generation, idx, data)
         VALUES ($1, $2, $3, $4)",
        &[&uid, &generation, &idx, &data],
    )
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(Ok(()))
}

#[allow(clippy::too_many_arguments)]
pub async fn commit_generation(
    pool: &Pool,
    uid: &str,
    origin: &str,
    generation: i64,
    chunks: i64,
    covers: &[(String, i64)],
    at: i64,
) -> Result<Result<(), GenerationRefusal>, StoreError> {
    let mut c = client(pool).await?;
    let tx = c.transaction().await.map_err(pg)?;
    copy_of(&tx, uid, true).await?;
    if let Some(refusal) = taken(&tx, uid, origin, generation).await? {
        return Ok(Err(refusal));
    }
    let newest = latest(&tx, uid).await?;
    if newest
        .as_ref()
        .is_some_and(|g| g.generation == generation && g.chunks == chunks)
    {
        covered(&tx, uid, origin, generation, covers).await?;
        tx.commit().await.map_err(pg)?;
        return Ok(Ok(()));
    }
    if let Some(refusal) = closed(generation, &newest) {
        return Ok(Err(refusal));
    }
    let present: Vec<i64> = tx
        .query(
            "SELECT idx FROM continuity_chunks WHERE tenant_uid = $1 AND generation = $2",
            &[&uid, &generation],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<i64> = (0..chunks).filter(|i| !present.contains(i)).collect();
    if !missing.is_empty() {
        return Ok(Err(GenerationRefusal::Missing(missing)));
    }
    tx.execute(
        "DELETE FROM continuity_chunks WHERE tenant_uid = $1
         AND (generation < $2 OR (generation = $2 AND idx >= $3))",
        &[&uid, &generation, &chunks],
    )
    .await
    .map_err(pg)?;
    for sql in [
        "DELETE FROM continuity_generations WHERE tenant_uid = $1 AND generation < $2",
        "DELETE FROM continuity_covers WHERE tenant_uid = $1 AND generation < $2",
    ] {
        tx.execute(sql, &[&uid, &generation]).await.map_err(pg)?;
    }
    tx.execute(
        "UPDATE continuity_generations SET chunks = $3, committed_at = $4
         WHERE tenant_uid = $1 AND generation = $2",
        &[&uid, &generation, &chunks, &at],
    )
    .await
    .map_err(pg)?;
    covered(&tx, uid, origin, generation, covers).await?;
    tx.commit().await.map_err(pg)?;
    Ok(Ok(()))
}

pub async fn chunk(
    pool: &Pool,
    uid: &str,
    generation: i64,
    idx: i64,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(client(pool)
        .await?
        .query_opt(
            "SELECT data FROM continuity_chunks
             WHERE tenant_uid = $1 AND generation = $2 AND idx = $3",
            &[&uid, &generation, &idx],
        )
        .await
        .map_err(pg)?
        .map(|r| r.get(0)))
}

/// See [`super::federation::put_batch`]; the tenant's row is locked while it checks.
#[allow(clippy::too_many_arguments)]
pub async fn put_batch(
    pool: &Pool,
    uid: &str,
    origin: &str,
    after: i64,
    last: i64,
    sha256: &str,
    data: &[u8],
    at: i64,
) -> Result<Result<(), BatchRefusal>, StoreError> {
    let mut c = client(pool).await?;
    let tx = c.transaction().await.map_err(pg)?;
    copy_of(&tx, uid, true).await?;
    let held = tx
        .query_opt(
            "SELECT after, sha256 FROM continuity_batches
             WHERE tenant_uid = $1 AND origin = $2 AND last = $3",
            &[&uid, &origin, &last],
        )
        .await
        .map_err(pg)?;
    if let Some(row) = held {
        let (a, sha): (i64, String) = (row.get(0), row.get(1));
        return Ok(if a == after && sha == sha256 {
            Ok(())
        } else {
            Err(BatchRefusal::Differs)
        });
    }
    let expected: i64 = tx
        .query_one(
            "SELECT GREATEST(
                 coalesce((SELECT max(last) FROM continuity_batches
                           WHERE tenant_uid = $1 AND origin = $2), 0),
                 coalesce((SELECT c.through FROM continuity_covers c
                           WHERE c.tenant_uid = $1 AND c.origin = $2 AND c.generation =
                               (SELECT max(generation) FROM continuity_generations
                                WHERE tenant_uid = $1 AND committed_at IS NOT NULL)), 0))",
            &[&uid, &origin],
        )
        .await
        .map_err(pg)?
        .get(0);
    if after != expected {
        return Ok(Err(BatchRefusal::Gap(expected)));
    }
    tx.execute(
        "INSERT INTO continuity_batches (tenant_uid, origin, after, last, sha256, data, stored_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&uid, &origin, &after, &last, &sha256, &data, &at],
    )
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok(Ok(()))
}

pub async fn batches(pool: &Pool, uid: &str) -> Result<Vec<BatchInfo>, StoreError> {
    Ok(client(pool)
        .await?
        .query(
            "SELECT origin, after, last, length(data)::BIGINT FROM continuity_batches
             WHERE tenant_uid = $1 ORDER BY origin, last",
            &[&uid],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| BatchInfo {
            origin: r.get(0),
            after: r.get(1),
            last: r.get(2),
            bytes: r.get(3),
        })
        .collect())
}

pub async fn batch(
    pool: &Pool,
    uid: &str,
    origin: &str,
    last: i64,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(client(pool)
        .await?
        .query_opt(
            "SELECT data FROM continuity_batches
             WHERE tenant_uid = $1 AND origin = $2 AND last = $3",
            &[&uid, &origin, &last],
        )
        .await
        .map_err(pg)?
        .map(|r| r.get(0)))
}

/// Records what a committed generation covers (and, for its maker, what it applied of the
/// others), then drops the batches nobody needs any more.
async fn covered(
    tx: &tokio_postgres::Transaction<'_>,
    uid: &str,
    origin: &str,
    generation: i64,
    covers: &[(String, i64)],
) -> Result<(), StoreError> {
    if let Some((_, through)) = covers.first() {
        tx.execute(
            "UPDATE continuity_generations SET covers = $3, origin = $4
             WHERE tenant_uid = $1 AND generation = $2",
            &[&uid, &generation, through, &origin],
        )
        .await
        .map_err(pg)?;
    }
    for (o, through) in covers {
        tx.execute(
            "INSERT INTO continuity_covers (tenant_uid, generation, origin, through)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (tenant_uid, generation, origin)
             DO UPDATE SET through = GREATEST(continuity_covers.through, excluded.through)",
            &[&uid, &generation, o, through],
        )
        .await
        .map_err(pg)?;
    }
    let applied: Vec<(String, i64)> = covers
        .iter()
        .filter(|(o, _)| o != origin)
        .cloned()
        .collect();
    pulled(tx, uid, origin, &applied).await
}

/// See [`super::federation::publish`].
pub async fn publish(
    pool: &Pool,
    kind: &str,
    name: &str,
    uri: &str,
    sha256: &str,
    data: &[u8],
    at: i64,
) -> Result<(i64, bool), StoreError> {
    let c = client(pool).await?;
    let inserted = c
        .query_opt(
            "INSERT INTO publications (kind, name, uri, sha256, data, published_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING RETURNING id",
            &[&kind, &name, &uri, &sha256, &data, &at],
        )
        .await
        .map_err(pg)?;
    if let Some(row) = inserted {
        return Ok((row.get(0), true));
    }
    let row = c
        .query_one("SELECT id FROM publications WHERE sha256 = $1", &[&sha256])
        .await
        .map_err(pg)?;
    Ok((row.get(0), false))
}

pub async fn publications(pool: &Pool) -> Result<Vec<Publication>, StoreError> {
    Ok(client(pool)
        .await?
        .query(
            "SELECT id, kind, name, uri, sha256, length(data)::BIGINT, published_at
             FROM publications ORDER BY id",
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| Publication {
            id: r.get(0),
            kind: r.get(1),
            name: r.get(2),
            uri: r.get(3),
            sha256: r.get(4),
            bytes: r.get(5),
            published_at: r.get(6),
        })
        .collect())
}

pub async fn publication(pool: &Pool, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(client(pool)
        .await?
        .query_opt("SELECT data FROM publications WHERE id = $1", &[&id])
        .await
        .map_err(pg)?
        .map(|r| r.get(0)))
}

pub async fn put_aggregates(
    pool: &Pool,
    key: &str,
    site_id: &str,
    school: &str,
    body: &str,
    at: i64,
) -> Result<(), StoreError> {
    client(pool)
        .await?
        .execute(
            "INSERT INTO aggregates (key, site_id, school, body, received_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (key) DO UPDATE SET site_id = excluded.site_id, school = excluded.school,
                                             body = excluded.body, received_at = excluded.received_at",
            &[&key, &site_id, &school, &body, &at],
        )
        .await
        .map_err(pg)?;
    Ok(())
}

pub async fn aggregates(pool: &Pool) -> Result<Vec<AggregateRow>, StoreError> {
    Ok(client(pool)
        .await?
        .query(
            "SELECT key, site_id, school, body, received_at FROM aggregates ORDER BY school, key",
            &[],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| AggregateRow {
            key: r.get(0),
            site_id: r.get(1),
            school: r.get(2),
            body: r.get(3),
            received_at: r.get(4),
        })
        .collect())
}

pub async fn copies_held_by(pool: &Pool, site_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(client(pool)
        .await?
        .query(
            "SELECT tenant_uid FROM continuity_holders WHERE site_id = $1 ORDER BY tenant_uid",
            &[&site_id],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect())
}
