//! SQL of a tenant's learning record store: statements and their filter index, the change
//! log, attachments (content-addressed by SHA-2, stored once), documents (state, activity
//! profile, agent profile) and the LRS's canonical Activity definitions.
//!
//! Statements are numbered by `seq` in the order they were stored; `stored` (milliseconds)
//! never decreases with `seq`, so `since`/`until` become a `seq` range and every query walks
//! one index in `seq` order. Filters use the statement index: one row per (interned key,
//! statement) with a bit mask of the roles the key plays (see
//! [`crate::lrs::statement::mask`]). A statement whose object is a StatementRef inherits the
//! index rows of its target, when the target is stored before or after it, so that filters
//! match it as the spec requires.
//!
//! The index lives in two tables of the same shape. New rows go to the small
//! `xapi_index_recent`; from time to time its rows move, in key order, to `xapi_index`. Rows
//! of one statement arrive under random keys (pupil, activity, registration): inserted
//! straight into a large index, each commit would rewrite most of its pages to the WAL.
//! Readers treat the two tables as one: a (key, statement) matches when either table holds
//! it with the role asked for.
//!
//! Must not: validate statements or decide who may read them (see `lrs` and `auth`).

use std::collections::{HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::StoreError;
use crate::lrs::statement::{Prepared, add_key, inheritable_keys, merge_definition, same_content};

/// Appended to the tenant migrations.
pub const V1: &str = "
CREATE TABLE xapi_statements (
    seq       INTEGER PRIMARY KEY,
    id        TEXT NOT NULL UNIQUE,
    stored    INTEGER NOT NULL,
    stamp     INTEGER NOT NULL,
    has_timestamp INTEGER NOT NULL,
    voided    INTEGER NOT NULL DEFAULT 0,
    voiding   INTEGER NOT NULL DEFAULT 0,
    target    TEXT,
    full      TEXT NOT NULL
);
CREATE INDEX xapi_statements_by_stored ON xapi_statements(stored);
CREATE INDEX xapi_statements_by_target ON xapi_statements(target) WHERE target IS NOT NULL;
CREATE TABLE xapi_keys (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    key  TEXT NOT NULL UNIQUE
);
CREATE TABLE xapi_index (
    key  INTEGER NOT NULL,
    seq  INTEGER NOT NULL,
    mask INTEGER NOT NULL,
    PRIMARY KEY (key, seq)
) WITHOUT ROWID;
CREATE TABLE xapi_attachments (
    sha2         TEXT PRIMARY KEY,
    content_type TEXT NOT NULL,
    length       INTEGER NOT NULL,
    content      BLOB NOT NULL
);
CREATE TABLE xapi_statement_attachments (
    seq  INTEGER NOT NULL,
    sha2 TEXT NOT NULL REFERENCES xapi_attachments(sha2),
    PRIMARY KEY (seq, sha2)
) WITHOUT ROWID;
CREATE TABLE xapi_activities (
    id          TEXT PRIMARY KEY,
    definition  TEXT NOT NULL
);
CREATE TABLE xapi_documents (
    id           INTEGER PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('state', 'activity_profile', 'agent_profile')),
    activity_id  TEXT NOT NULL,
    agent        TEXT NOT NULL,
    registration TEXT NOT NULL,
    doc_id       TEXT NOT NULL,
    content_type TEXT NOT NULL,
    content      BLOB NOT NULL,
    etag         TEXT NOT NULL,
    updated      INTEGER NOT NULL,
    UNIQUE (kind, activity_id, agent, registration, doc_id)
);
-- The ordered record of every change to the tenant's learning records, read by forwarding
-- and federation sync: `seq` only grows, rows are never updated.
CREATE TABLE change_log (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    subject TEXT NOT NULL
);
";

/// Appended to the tenant migrations: every user gets an opaque, stable xAPI account name
/// (usernames can change and name a minor; this does neither), and the tenant a settings
/// table (which holds, among others, its xAPI account home page).
pub const V2: &str = "
ALTER TABLE users ADD COLUMN agent_name TEXT;
UPDATE users SET agent_name = lower(hex(randomblob(16)));
CREATE UNIQUE INDEX users_by_agent_name ON users(agent_name);
CREATE TRIGGER users_agent_name AFTER INSERT ON users WHEN NEW.agent_name IS NULL
BEGIN
    UPDATE users SET agent_name = lower(hex(randomblob(16))) WHERE id = NEW.id;
END;
CREATE TABLE tenant_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

/// Appended to the tenant migrations: the recent part of the statement index.
pub const V3: &str = "
CREATE TABLE xapi_index_recent (
    key  INTEGER NOT NULL,
    seq  INTEGER NOT NULL,
    mask INTEGER NOT NULL,
    PRIMARY KEY (key, seq)
) WITHOUT ROWID;
";

/// The two tables of the statement index, the large one first.
const INDEX_TABLES: [&str; 2] = ["xapi_index", "xapi_index_recent"];

/// The setting that holds the last `seq` whose index rows were moved to `xapi_index`.
const MERGED_THROUGH: &str = "xapi.index_merged_through";

/// The setting that fixes the tenant's xAPI account home page.
const HOME_PAGE: &str = "xapi.home_page";

/// The tenant's xAPI account home page: `proposed` the first time it is asked, the same
/// value for ever after (agent identities must not change when the site's URL does).
pub fn home_page(conn: &Connection, proposed: &str) -> Result<String, StoreError> {
    conn.prepare_cached("INSERT OR IGNORE INTO tenant_settings (key, value) VALUES (?1, ?2)")?
        .execute([HOME_PAGE, proposed])?;
    Ok(setting(conn, HOME_PAGE)?.unwrap_or_else(|| proposed.to_string()))
}

/// The fixed home page, if it was ever set.
pub fn fixed_home_page(conn: &Connection) -> Result<Option<String>, StoreError> {
    setting(conn, HOME_PAGE)
}

/// Sets a tenant setting.
pub(crate) fn put_setting(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO tenant_settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

/// A tenant setting, if it is set.
pub(crate) fn setting(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT value FROM tenant_settings WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// Why a batch of statements was refused.
#[derive(Debug, thiserror::Error)]
pub enum StatementConflict {
    #[error("statement {0} already exists with different content")]
    Different(String),
    #[error("statement {0} is a voiding statement and cannot be voided")]
    VoidingVoided(String),
}

/// An attachment's content, addressed by its SHA-2.
#[derive(Debug, Clone)]
pub struct Blob {
    pub sha2: String,
    pub content_type: String,
    pub content: Vec<u8>,
}

fn key_id(conn: &Connection, key: &str) -> Result<i64, StoreError> {
    if let Some(id) = lookup_key(conn, key)? {
        return Ok(id);
    }
    conn.prepare_cached("INSERT INTO xapi_keys (key) VALUES (?1)")?
        .execute([key])?;
    Ok(conn.last_insert_rowid())
}

fn lookup_key(conn: &Connection, key: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM xapi_keys WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// The ids of those of `keys` that already exist, in one query (read before a write, so
/// that the writer only looks up keys it has never seen; a committed key id never changes).
pub fn known_key_ids(conn: &Connection, keys: &[&str]) -> Result<HashMap<String, i64>, StoreError> {
    let list = Value::from(keys).to_string();
    let mut stmt = conn.prepare_cached(
        "SELECT k.key, k.id FROM json_each(?1) j JOIN xapi_keys k ON k.key = j.value",
    )?;
    let found = stmt
        .query_map([list], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<HashMap<String, i64>, _>>()?;
    Ok(found)
}

/// The `seq` of the stored statement with this id.
fn seq_of(conn: &Connection, id: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT seq FROM xapi_statements WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

/// Adds roles to a (key, statement) row of the index.
fn add_index_row(conn: &Connection, key: i64, seq: i64, roles: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO xapi_index_recent (key, seq, mask) VALUES (?1, ?2, ?3)
         ON CONFLICT (key, seq) DO UPDATE SET mask = mask | excluded.mask",
    )?
    .execute(params![key, seq, roles])?;
    Ok(())
}

/// Gives `to` the index rows that `from` passes on: the inheritable keys of `from` and,
/// through its StatementRef, of the statements it refers to. They are computed from the
/// stored statements, never by scanning the index for `from`'s rows.
fn inherit(conn: &Connection, from: i64, to: i64) -> Result<(), StoreError> {
    for (key, roles) in passed_keys(conn, from)? {
        if let Some(k) = lookup_key(conn, &key)? {
            add_index_row(conn, k, to, roles)?;
        }
    }
    Ok(())
}

/// The index keys `from` passes on to a statement referring to it: its inheritable keys
/// and, through its StatementRef, those of the statements it refers to.
fn passed_keys(conn: &Connection, from: i64) -> Result<Vec<(String, i64)>, StoreError> {
    let mut passed: Vec<(String, i64)> = Vec::new();
    let mut seen = HashSet::new();
    let mut next = Some(from);
    while let Some(seq) = next.take() {
        if !seen.insert(seq) {
            break; // a cycle of StatementRefs
        }
        let Some((full, target)) = conn
            .prepare_cached("SELECT full, target FROM xapi_statements WHERE seq = ?1")?
            .query_row([seq], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .optional()?
        else {
            break;
        };
        let value: Value = serde_json::from_str(&full).unwrap_or(Value::Null);
        for (key, roles) in inheritable_keys(&value) {
            add_key(&mut passed, key, roles);
        }
        next = match target {
            Some(t) => seq_of(conn, &t)?,
            None => None,
        };
    }
    Ok(passed)
}

/// Deletes statements by `seq`: their index rows (their own keys and those they inherited,
/// computed before any of them goes), attachment links, the statements, and attachments no
/// statement uses any more.
pub fn delete_statements(conn: &Connection, seqs: &[i64]) -> Result<(), StoreError> {
    let mut rows: Vec<(i64, Vec<(String, i64)>)> = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let (full, target): (String, Option<String>) = conn
            .prepare_cached("SELECT full, target FROM xapi_statements WHERE seq = ?1")?
            .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let value: Value = serde_json::from_str(&full).unwrap_or(Value::Null);
        let mut keys = crate::lrs::statement::all_keys(&value);
        if let Some(target) = target.map(|t| seq_of(conn, &t)).transpose()?.flatten() {
            keys.extend(passed_keys(conn, target)?);
        }
        rows.push((*seq, keys));
    }
    for (seq, keys) in &rows {
        for (k, _) in keys {
            if let Some(id) = lookup_key(conn, k)? {
                for table in INDEX_TABLES {
                    conn.prepare_cached(&format!(
                        "DELETE FROM {table} WHERE key = ?1 AND seq = ?2"
                    ))?
                    .execute(params![id, seq])?;
                }
            }
        }
        conn.prepare_cached("DELETE FROM xapi_statement_attachments WHERE seq = ?1")?
            .execute([seq])?;
        conn.prepare_cached("DELETE FROM xapi_statements WHERE seq = ?1")?
            .execute([seq])?;
    }
    conn.prepare_cached(
        "DELETE FROM xapi_attachments WHERE sha2 NOT IN
             (SELECT sha2 FROM xapi_statement_attachments)",
    )?
    .execute([])?;
    Ok(())
}

/// The statements whose timestamp (when the experience happened) is before `cutoff_ms`.
pub fn statements_before(conn: &Connection, cutoff_ms: i64) -> Result<Vec<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT seq FROM xapi_statements WHERE stamp < ?1 ORDER BY seq")?
        .query_map([cutoff_ms], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// What erasing an agent removed from the LRS.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ErasedRecords {
    pub statements: i64,
    pub documents: i64,
}

/// Removes every statement about an agent (where they are actor or object, and the
/// statements referring to those), its index rows and attachments no statement still
/// uses, and the agent's state and profile documents. `index_key` is the agent's index
/// key ([`crate::lrs::learner_key`]), `ifi` their identifier as documents store it.
pub fn erase_agent(
    conn: &Connection,
    index_key: &str,
    ifi: &str,
) -> Result<ErasedRecords, StoreError> {
    let documents = conn
        .prepare_cached("DELETE FROM xapi_documents WHERE agent = ?1")?
        .execute([ifi])? as i64;
    let Some(key) = lookup_key(conn, index_key)? else {
        return Ok(ErasedRecords {
            statements: 0,
            documents,
        });
    };
    let mut seqs: Vec<i64> = Vec::new();
    for table in INDEX_TABLES {
        let found: Vec<i64> = conn
            .prepare_cached(&format!("SELECT seq FROM {table} WHERE key = ?1"))?
            .query_map([key], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        seqs.extend(found);
    }
    seqs.sort_unstable();
    seqs.dedup();
    delete_statements(conn, &seqs)?;
    for table in INDEX_TABLES {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE key = ?1"))?
            .execute([key])?;
    }
    Ok(ErasedRecords {
        statements: seqs.len() as i64,
        documents,
    })
}

/// How many statements' index rows `xapi_index_recent` gathers before they move to
/// `xapi_index`, given how many the latter holds. Each commit rewrites the recent pages it
/// touches (about all of them: their keys are random), each move rewrites the large index
/// once; the WAL written per statement is least when the recent part holds about
/// sqrt(2 × statements per commit × statements in the index).
fn merge_threshold(merged: i64) -> i64 {
    ((1024.0 * merged as f64).sqrt() as i64).clamp(4096, 65_536)
}

/// Moves the rows of `xapi_index_recent` to `xapi_index` when there are enough of them.
/// `last` is the highest `seq` stored.
fn merge_recent_index(conn: &Connection, last: i64) -> Result<(), StoreError> {
    let merged: i64 = setting(conn, MERGED_THROUGH)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if last - merged < merge_threshold(merged) {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO xapi_index (key, seq, mask)
         SELECT key, seq, mask FROM xapi_index_recent WHERE true ORDER BY key, seq
         ON CONFLICT (key, seq) DO UPDATE SET mask = mask | excluded.mask",
    )?
    .execute([])?;
    conn.prepare_cached("DELETE FROM xapi_index_recent")?
        .execute([])?;
    conn.prepare_cached(
        "INSERT INTO tenant_settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![MERGED_THROUGH, last.to_string()])?;
    Ok(())
}

/// Makes every stored statement that refers to `seq`'s statement (directly or through a
/// chain of StatementRefs) inherit its index rows.
fn propagate_to_referrers(conn: &Connection, seq: i64, id: &str) -> Result<(), StoreError> {
    let mut work = vec![(seq, id.to_string())];
    let mut seen = HashSet::from([seq]);
    while let Some((from, from_id)) = work.pop() {
        let referrers: Vec<(i64, String)> = conn
            .prepare_cached("SELECT seq, id FROM xapi_statements WHERE target = ?1")?
            .query_map([&from_id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (r, rid) in referrers {
            if seen.insert(r) {
                inherit(conn, from, r)?;
                work.push((r, rid));
            }
        }
    }
    Ok(())
}

/// The `stored` value for the next statements: now, but never before the last one.
fn next_stored(conn: &Connection, now_ms: i64) -> Result<i64, StoreError> {
    let last: Option<i64> = conn
        .prepare_cached("SELECT stored FROM xapi_statements ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(last.map_or(now_ms, |l| l.max(now_ms)))
}

/// Stores a batch of statements atomically. Everything that can refuse the batch is
/// checked before the first write, so the writer runs this without a savepoint (see
/// [`super::Database::write_checked`]). A statement whose id exists with the same content is
/// left as it is; with other content the whole batch is refused. Returns how many
/// statements were new.
pub fn insert_statements(
    conn: &Connection,
    batch: &[Prepared],
    blobs: &[Blob],
    now_ms: i64,
) -> Result<Result<usize, StatementConflict>, StoreError> {
    // 1. Checks, reading only.
    let mut fresh = Vec::with_capacity(batch.len());
    for (i, p) in batch.iter().enumerate() {
        let earlier = &batch[..i];
        let existing: Option<String> = if p.new_id {
            None
        } else {
            conn.prepare_cached("SELECT full FROM xapi_statements WHERE id = ?1")?
                .query_row([&p.id], |r| r.get(0))
                .optional()?
        };
        let same = match (existing, earlier.iter().find(|q| q.id == p.id)) {
            (Some(full), _) => {
                let old: Value = serde_json::from_str(&full).unwrap_or(Value::Null);
                Some(same_content(&old, &p.value))
            }
            (None, Some(q)) => Some(same_content(&q.value, &p.value)),
            (None, None) => None,
        };
        match same {
            Some(false) => return Ok(Err(StatementConflict::Different(p.id.clone()))),
            Some(true) => fresh.push(false),
            None => fresh.push(true),
        }
        if p.voiding
            && let Some(t) = &p.target
        {
            let stored_voiding: Option<bool> = conn
                .prepare_cached("SELECT voiding FROM xapi_statements WHERE id = ?1")?
                .query_row([t], |r| r.get(0))
                .optional()?;
            let voiding_earlier = earlier.iter().any(|q| q.id == *t && q.voiding);
            if stored_voiding == Some(true) || voiding_earlier {
                return Ok(Err(StatementConflict::VoidingVoided(t.clone())));
            }
        }
    }
    // 2. Writes.
    let stored = next_stored(conn, now_ms)?;
    for b in blobs {
        conn.prepare_cached(
            "INSERT INTO xapi_attachments (sha2, content_type, length, content)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (sha2) DO NOTHING",
        )?
        .execute(params![
            b.sha2,
            b.content_type,
            b.content.len() as i64,
            b.content
        ])?;
    }
    let mut inserted = 0;
    let mut seqs = (i64::MAX, 0);
    // Activities (and definitions) already recorded by this batch.
    let mut recorded: HashSet<&(String, Option<String>)> = HashSet::new();
    for (p, _) in batch.iter().zip(&fresh).filter(|(_, fresh)| **fresh) {
        let target = match &p.target {
            Some(t) => seq_of(conn, t)?,
            None => None,
        };
        let added = conn
            .prepare_cached(
                "INSERT INTO xapi_statements
                     (id, stored, stamp, has_timestamp, voided, voiding, target, full)
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7) ON CONFLICT (id) DO NOTHING",
            )?
            .execute(params![
                p.id,
                stored,
                p.timestamp.unwrap_or(stored),
                p.timestamp.is_some(),
                p.voiding,
                p.target,
                p.json
            ])?;
        if added == 0 {
            // Checked above: only a repeated id within the batch (same content) lands here.
            continue;
        }
        let seq = conn.last_insert_rowid();
        for (i, (key, m)) in p.keys.iter().enumerate() {
            let k = match p.key_ids.get(i).copied().flatten() {
                Some(id) => id,
                None => key_id(conn, key)?,
            };
            add_index_row(conn, k, seq, *m)?;
        }
        if let Some(target_seq) = target {
            inherit(conn, target_seq, seq)?;
            if p.voiding {
                conn.prepare_cached("UPDATE xapi_statements SET voided = 1 WHERE seq = ?1")?
                    .execute([target_seq])?;
            }
        }
        // Statements stored earlier that refer to this one: they inherit its index rows,
        // and if one of them voids it, it is voided from the start.
        let referrers: Vec<(i64, String, bool)> = conn
            .prepare_cached("SELECT seq, id, voiding FROM xapi_statements WHERE target = ?1")?
            .query_map([&p.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        if !p.voiding && referrers.iter().any(|(_, _, voiding)| *voiding) {
            conn.prepare_cached("UPDATE xapi_statements SET voided = 1 WHERE seq = ?1")?
                .execute([seq])?;
        }
        if !referrers.is_empty() {
            propagate_to_referrers(conn, seq, &p.id)?;
        }
        for sha2 in &p.attachments {
            conn.prepare_cached(
                "INSERT INTO xapi_statement_attachments (seq, sha2)
                 SELECT ?1, sha2 FROM xapi_attachments WHERE sha2 = ?2
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![seq, sha2])?;
        }
        let activities: Vec<&(String, Option<String>)> = p
            .activities
            .iter()
            .filter(|a| recorded.insert(*a))
            .collect();
        record_activities(conn, &activities)?;
        seqs = (seqs.0.min(seq), seqs.1.max(seq));
        inserted += 1;
    }
    if inserted > 0 {
        // The batch's statements have consecutive `seq`s: one change-log row names them.
        log_change(
            conn,
            stored,
            "statements",
            &format!("{}-{}", seqs.0, seqs.1),
        )?;
        merge_recent_index(conn, seqs.1)?;
    }
    Ok(Ok(inserted))
}

/// Appends to the tenant's change log.
pub fn log_change(conn: &Connection, at: i64, kind: &str, subject: &str) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO change_log (at, kind, subject) VALUES (?1, ?2, ?3)")?
        .execute(params![at, kind, subject])?;
    Ok(())
}

/// Keeps the LRS's definition of every Activity that arrives with a definition. A
/// definition already stored as sent costs one lookup and no write.
fn record_activities(
    conn: &Connection,
    activities: &[&(String, Option<String>)],
) -> Result<(), StoreError> {
    for (id, incoming) in activities.iter().copied() {
        let Some(incoming) = incoming else {
            conn.prepare_cached(
                "INSERT INTO xapi_activities (id, definition) VALUES (?1, '{}')
                 ON CONFLICT (id) DO NOTHING",
            )?
            .execute([id])?;
            continue;
        };
        let existing: Option<String> = conn
            .prepare_cached("SELECT definition FROM xapi_activities WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        let merged = match existing {
            Some(old_text) if old_text == *incoming => continue,
            None => incoming.clone(),
            Some(old_text) => {
                let old: Value = serde_json::from_str(&old_text).unwrap_or(Value::Null);
                let new: Value = serde_json::from_str(incoming).unwrap_or(Value::Null);
                let mut merged = old.clone();
                merge_definition(&mut merged, &new);
                if merged == old {
                    continue; // nothing new: no write
                }
                merged.to_string()
            }
        };
        conn.prepare_cached(
            "INSERT INTO xapi_activities (id, definition) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET definition = excluded.definition",
        )?
        .execute(params![id, merged])?;
    }
    Ok(())
}

/// A statement as read back: its stored JSON and what `render` needs.
#[derive(Debug, Clone)]
pub struct StoredStatement {
    pub seq: i64,
    pub json: String,
    pub stored: i64,
    pub has_timestamp: bool,
}

fn stored_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredStatement> {
    Ok(StoredStatement {
        seq: r.get(0)?,
        json: r.get(1)?,
        stored: r.get(2)?,
        has_timestamp: r.get(3)?,
    })
}

/// One statement by id: `voided` picks `voidedStatementId` (only voided statements) or
/// `statementId` (only statements that are not voided).
pub fn statement_by_id(
    conn: &Connection,
    id: &str,
    voided: bool,
) -> Result<Option<StoredStatement>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT seq, full, stored, has_timestamp FROM xapi_statements
             WHERE id = ?1 AND voided = ?2",
        )?
        .query_row(params![id.to_ascii_lowercase(), voided], stored_from_row)
        .optional()?)
}

/// A statement query, already parsed and checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Filter {
    /// `(index key, mask)` conditions that must all hold.
    pub keys: Vec<(String, i64)>,
    /// Milliseconds: `stored > since`.
    pub since: Option<i64>,
    /// Milliseconds: `stored <= until`.
    pub until: Option<i64>,
    pub ascending: bool,
    pub limit: usize,
    /// Continue after this `seq` (exclusive).
    pub after: Option<i64>,
    /// Never return statements stored after this `seq` (keeps pages of one query stable).
    pub upto: Option<i64>,
    /// The reader's scope: when not empty, a statement must also have at least one of these
    /// `(index key, mask)` (e.g. the agents of a teacher's pupils). Never part of a `more`
    /// token: it is applied again on every request.
    #[serde(skip)]
    pub any_of: Vec<(String, i64)>,
}

/// The last statement stored at or before a time: one step down the `stored` index (whose
/// entries are ordered by `stored`, then `seq`).
const LAST_SEQ_STORED_BY: &str = "SELECT seq FROM xapi_statements WHERE stored <= ?1
     ORDER BY stored DESC, seq DESC LIMIT 1";

/// The statements that match `filter`, at most `filter.limit + 1` of them (one more than
/// asked, to know whether a next page exists).
pub fn query(conn: &Connection, filter: &Filter) -> Result<Vec<StoredStatement>, StoreError> {
    if filter.any_of.is_empty() {
        return query_all_keys(conn, filter);
    }
    // One walk per allowed key, each at most one page long, merged in `seq` order.
    let mut merged: Vec<StoredStatement> = Vec::new();
    for key in &filter.any_of {
        let mut one = filter.clone();
        one.any_of = Vec::new();
        one.keys.push(key.clone());
        merged.extend(query_all_keys(conn, &one)?);
    }
    Ok(one_page(merged, filter))
}

/// Statements found by several walks, as one page of `filter`: in its order, each once, at
/// most `filter.limit + 1`.
fn one_page(mut rows: Vec<StoredStatement>, filter: &Filter) -> Vec<StoredStatement> {
    rows.sort_unstable_by_key(|s| s.seq);
    rows.dedup_by_key(|s| s.seq);
    if !filter.ascending {
        rows.reverse();
    }
    rows.truncate(filter.limit + 1);
    rows
}

fn query_all_keys(conn: &Connection, filter: &Filter) -> Result<Vec<StoredStatement>, StoreError> {
    let mut keys = Vec::with_capacity(filter.keys.len());
    for (key, m) in &filter.keys {
        match lookup_key(conn, key)? {
            Some(id) => keys.push((id, *m)),
            None => return Ok(Vec::new()),
        }
    }
    // The rarest key drives the query (counted up to a bound, so this stays cheap).
    if keys.len() > 1 {
        let mut counted = Vec::with_capacity(keys.len());
        for (k, m) in keys {
            let n: i64 = conn
                .prepare_cached(
                    "SELECT (SELECT count(*) FROM (SELECT 1 FROM xapi_index WHERE key = ?1 LIMIT 2000))
                          + (SELECT count(*) FROM (SELECT 1 FROM xapi_index_recent WHERE key = ?1 LIMIT 2000))",
                )?
                .query_row([k], |r| r.get(0))?;
            counted.push((n, k, m));
        }
        counted.sort_unstable();
        keys = counted.into_iter().map(|(_, k, m)| (k, m)).collect();
    }
    // `stored` never decreases with `seq`: turn the time window into a `seq` window.
    let mut low = filter.after.filter(|_| filter.ascending);
    let mut high = filter.after.filter(|_| !filter.ascending).map(|a| a - 1);
    let last_stored_by = |ms: i64| -> Result<i64, StoreError> {
        Ok(conn
            .prepare_cached(LAST_SEQ_STORED_BY)?
            .query_row([ms], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    };
    if let Some(since) = filter.since {
        low = Some(low.unwrap_or(0).max(last_stored_by(since)?));
    }
    if let Some(until) = filter.until {
        let u = last_stored_by(until)?;
        high = Some(high.map_or(u, |h| h.min(u)));
    }
    if let Some(upto) = filter.upto {
        high = Some(high.map_or(upto, |h| h.min(upto)));
    }
    let Some(((first, first_mask), rest)) = keys.split_first() else {
        return walk(conn, filter, None, "", Vec::new(), low, high);
    };
    // The statement must hold every other key, in either table of the index.
    let mut others = String::new();
    let mut other_args = Vec::new();
    for (k, m) in rest {
        others.push_str(
            " AND (EXISTS (SELECT 1 FROM xapi_index j
                   WHERE j.key = ? AND j.seq = s.seq AND (j.mask & ?) != 0)
                OR EXISTS (SELECT 1 FROM xapi_index_recent j
                   WHERE j.key = ? AND j.seq = s.seq AND (j.mask & ?) != 0))",
        );
        other_args.extend([*k, *m, *k, *m]);
    }
    // The first key is walked in each table; the two walks merge in `seq` order (a row
    // can be in both tables when a StatementRef added roles to it after a merge).
    let mut rows = Vec::new();
    for table in INDEX_TABLES {
        rows.extend(walk(
            conn,
            filter,
            Some((table, *first, *first_mask)),
            &others,
            other_args.clone(),
            low,
            high,
        )?);
    }
    Ok(one_page(rows, filter))
}

/// One walk in `seq` order between `low` (exclusive) and `high`: over the statements, or
/// over one index table's rows for `(table, key, mask)`; `others` adds conditions on `s`.
fn walk(
    conn: &Connection,
    filter: &Filter,
    index: Option<(&str, i64, i64)>,
    others: &str,
    other_args: Vec<i64>,
    low: Option<i64>,
    high: Option<i64>,
) -> Result<Vec<StoredStatement>, StoreError> {
    let mut sql = String::with_capacity(400 + others.len());
    let mut args: Vec<i64> = Vec::new();
    let seq_col = match index {
        Some((table, k, m)) => {
            sql.push_str(&format!(
                "SELECT s.seq, s.full, s.stored, s.has_timestamp FROM {table} i
                 JOIN xapi_statements s ON s.seq = i.seq
                 WHERE i.key = ? AND (i.mask & ?) != 0 AND s.voided = 0"
            ));
            args.extend([k, m]);
            "i.seq"
        }
        None => {
            sql.push_str(
                "SELECT s.seq, s.full, s.stored, s.has_timestamp FROM xapi_statements s
                 WHERE s.voided = 0",
            );
            "s.seq"
        }
    };
    sql.push_str(others);
    args.extend(other_args);
    if let Some(l) = low {
        sql.push_str(&format!(" AND {seq_col} > ?"));
        args.push(l);
    }
    if let Some(h) = high {
        sql.push_str(&format!(" AND {seq_col} <= ?"));
        args.push(h);
    }
    let order = if filter.ascending { "ASC" } else { "DESC" };
    sql.push_str(&format!(" ORDER BY {seq_col} {order} LIMIT ?"));
    args.push(filter.limit as i64 + 1);
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), stored_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Whether statement `seq` has one of `keys` (each with its mask of roles).
pub fn has_any_index_key(
    conn: &Connection,
    seq: i64,
    keys: &[(String, i64)],
) -> Result<bool, StoreError> {
    for (key, mask) in keys {
        let Some(k) = lookup_key(conn, key)? else {
            continue;
        };
        let found: bool = conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM xapi_index
                     WHERE key = ?1 AND seq = ?2 AND (mask & ?3) != 0)
                 OR EXISTS (SELECT 1 FROM xapi_index_recent
                     WHERE key = ?1 AND seq = ?2 AND (mask & ?3) != 0)",
            )?
            .query_row(params![k, seq, mask], |r| r.get(0))?;
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The verb IRIs of the tenant's statements, in order.
pub fn known_verbs(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT substr(key, 3) FROM xapi_keys WHERE key >= 'v:' AND key < 'v;' ORDER BY key",
    )?;
    let rows = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(rows)
}

/// Up to `limit` activities the LRS knows, with their canonical definitions, by id.
pub fn activities(conn: &Connection, limit: usize) -> Result<Vec<(String, Value)>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT id, definition FROM xapi_activities ORDER BY id LIMIT ?1")?;
    let rows = stmt
        .query_map([limit as i64], |r| {
            let definition: String = r.get(1)?;
            Ok((
                r.get(0)?,
                serde_json::from_str(&definition).unwrap_or(Value::Null),
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The highest `seq` stored so far.
pub fn last_seq(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM xapi_statements")?
        .query_row([], |r| r.get(0))?)
}

/// The attachments of the given statements: `(sha2, content_type, content)`.
pub fn attachments_of(
    conn: &Connection,
    seqs: &[i64],
) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
    let mut out: Vec<(String, String, Vec<u8>)> = Vec::new();
    let mut seen = HashSet::new();
    let mut stmt = conn.prepare_cached(
        "SELECT a.sha2, a.content_type, a.content FROM xapi_statement_attachments sa
         JOIN xapi_attachments a ON a.sha2 = sa.sha2 WHERE sa.seq = ?1",
    )?;
    for seq in seqs {
        let rows = stmt
            .query_map([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<(String, String, Vec<u8>)>, _>>()?;
        for row in rows {
            if seen.insert(row.0.clone()) {
                out.push(row);
            }
        }
    }
    Ok(out)
}

/// The LRS's definition of an Activity.
pub fn activity_definition(conn: &Connection, id: &str) -> Result<Option<Value>, StoreError> {
    let found: Option<String> = conn
        .prepare_cached("SELECT definition FROM xapi_activities WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    Ok(found.and_then(|d| serde_json::from_str(&d).ok()))
}

/// Which document: its resource, and the keys that locate it (empty strings when unused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentKey {
    pub kind: &'static str,
    pub activity_id: String,
    pub agent: String,
    pub registration: String,
}

#[derive(Debug, Clone)]
pub struct Document {
    pub content_type: String,
    pub content: Vec<u8>,
    pub etag: String,
    pub updated: i64,
}

pub fn document(
    conn: &Connection,
    key: &DocumentKey,
    doc_id: &str,
) -> Result<Option<Document>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT content_type, content, etag, updated FROM xapi_documents
             WHERE kind = ?1 AND activity_id = ?2 AND agent = ?3 AND registration = ?4
               AND doc_id = ?5",
        )?
        .query_row(
            params![
                key.kind,
                key.activity_id,
                key.agent,
                key.registration,
                doc_id
            ],
            |r| {
                Ok(Document {
                    content_type: r.get(0)?,
                    content: r.get(1)?,
                    etag: r.get(2)?,
                    updated: r.get(3)?,
                })
            },
        )
        .optional()?)
}

/// Ids of the documents under `key`, updated after `since` (milliseconds) if given, and the
/// latest update time among them.
pub fn document_ids(
    conn: &Connection,
    key: &DocumentKey,
    since: Option<i64>,
) -> Result<(Vec<String>, Option<i64>), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT doc_id, updated FROM xapi_documents
         WHERE kind = ?1 AND activity_id = ?2 AND agent = ?3
           AND (?4 = '' OR registration = ?4) AND updated > ?5
         ORDER BY doc_id",
    )?;
    let rows = stmt
        .query_map(
            params![
                key.kind,
                key.activity_id,
                key.agent,
                key.registration,
                since.unwrap_or(i64::MIN)
            ],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let latest = rows.iter().map(|(_, u)| *u).max();
    Ok((rows.into_iter().map(|(id, _)| id).collect(), latest))
}

/// Writes (creates or replaces) a document, as a change made here: it is stamped and
/// logged for sync.
pub fn put_document(
    conn: &Connection,
    key: &DocumentKey,
    doc_id: &str,
    doc: &Document,
) -> Result<(), StoreError> {
    store_document(conn, key, doc_id, doc)?;
    log_document(conn, key, doc_id, Some(&doc.etag), doc.updated)
}

/// Writes a document without logging it (a merged change is logged by its batch).
pub fn store_document(
    conn: &Connection,
    key: &DocumentKey,
    doc_id: &str,
    doc: &Document,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO xapi_documents
             (kind, activity_id, agent, registration, doc_id, content_type, content, etag, updated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (kind, activity_id, agent, registration, doc_id) DO UPDATE SET
             content_type = excluded.content_type, content = excluded.content,
             etag = excluded.etag, updated = excluded.updated",
    )?
    .execute(params![
        key.kind,
        key.activity_id,
        key.agent,
        key.registration,
        doc_id,
        doc.content_type,
        doc.content,
        doc.etag,
        doc.updated
    ])?;
    Ok(())
}

/// The global name of a document, for sync.
pub fn document_name(key: &DocumentKey, doc_id: &str) -> String {
    serde_json::json!([
        key.kind,
        key.activity_id,
        key.agent,
        key.registration,
        doc_id
    ])
    .to_string()
}

/// Logs a document's change (its new etag, or `None` when it was deleted) with the field
/// operation that stamps it (see [`super::replica`]).
fn log_document(
    conn: &Connection,
    key: &DocumentKey,
    doc_id: &str,
    etag: Option<&str>,
    at: i64,
) -> Result<(), StoreError> {
    let op = super::replica::note_document(conn, &document_name(key, doc_id), etag)?;
    let subject = serde_json::json!({
        "activity": key.activity_id,
        "agent": key.agent,
        "registration": key.registration,
        "id": doc_id,
        "op": op,
    });
    log_change(conn, at, key.kind, &subject.to_string())
}

/// Deletes one document, or (with `doc_id` `None`) every document under `key` (an empty
/// registration then matches all registrations), as a change made here.
pub fn delete_documents(
    conn: &Connection,
    key: &DocumentKey,
    doc_id: Option<&str>,
    at: i64,
) -> Result<usize, StoreError> {
    let targets: Vec<(String, String)> = conn
        .prepare_cached(
            "SELECT registration, doc_id FROM xapi_documents
             WHERE kind = ?1 AND activity_id = ?2 AND agent = ?3
               AND (registration = ?4 OR (?5 IS NULL AND ?4 = ''))
               AND (?5 IS NULL OR doc_id = ?5)",
        )?
        .query_map(
            params![
                key.kind,
                key.activity_id,
                key.agent,
                key.registration,
                doc_id
            ],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<Result<_, _>>()?;
    for (registration, id) in &targets {
        let one = DocumentKey {
            kind: key.kind,
            activity_id: key.activity_id.clone(),
            agent: key.agent.clone(),
            registration: registration.clone(),
        };
        remove_document(conn, &one, id)?;
        log_document(conn, &one, id, None, at)?;
    }
    Ok(targets.len())
}

/// Deletes one document without logging it.
pub fn remove_document(
    conn: &Connection,
    key: &DocumentKey,
    doc_id: &str,
) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM xapi_documents WHERE kind = ?1 AND activity_id = ?2 AND agent = ?3
               AND registration = ?4 AND doc_id = ?5",
        )?
        .execute(params![
            key.kind,
            key.activity_id,
            key.agent,
            key.registration,
            doc_id
        ])?)
}
