//! The AI principal: the only database handle a model (local inference, a generative
//! sidecar) ever gets on a tenant's data.
//!
//! It is a connection of its own to the tenant database. When it opens, trusted code first
//! rewrites the derived tables `ai_features`, `ai_levels` and `ai_competencies` from the
//! estimates and decisions (pupils under a keyed pseudonym: an HMAC-SHA-256 whose key stays
//! in the tenant's settings), then installs an SQLite **authorizer**, so that its limits
//! hold for any SQL it is given, not only for the queries written here:
//! - it reads only those three tables and the suggestions table: no evidence, no comments,
//!   no statements, no names, no user ids. The authorizer allows a read by the table it
//!   touches, never by the view or CTE it comes through (a CTE can borrow any name);
//! - its one write is an `INSERT` into `level_suggestions`; every `UPDATE`, `DELETE`,
//!   other `INSERT`, schema change, `ATTACH` and `PRAGMA` is refused by SQLite before it
//!   runs, including writes a trigger would make on its behalf;
//! - a suggestion is not a decision: only a teacher turns one into a level
//!   (`store::competency::decide_level`, itself guarded by a trigger).
//!
//! Must not: be opened without its authorizer, or be handed to anything but model code.
//! Key types: [`AiHandle`], [`Feature`], [`Suggestion`].

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use ring::hmac;
use rusqlite::functions::FunctionFlags;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags, params};

use super::StoreError;

/// The derived tables the AI principal reads.
pub const VIEWS: [&str; 3] = ["ai_features", "ai_levels", "ai_competencies"];

/// Its one table: it may insert into it and read it back.
pub const SUGGESTIONS: &str = "level_suggestions";

/// The tenant setting holding the pseudonym key (hex), made when the tenant is first opened.
pub const PSEUDONYM_KEY: &str = "ai.pseudonym_key";

/// Makes the pseudonym key of a tenant database if it has none.
pub fn seed_key(conn: &Connection) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO tenant_settings (key, value) VALUES (?1, lower(hex(randomblob(32))))",
    )?
    .execute([PSEUDONYM_KEY])?;
    Ok(())
}

/// The pseudonym of a pupil under a tenant's key: what the AI calls `pupil_key`. Staff
/// code computes it for its own pupils to show the suggestions made about them.
pub fn pseudonym(key: &[u8], pupil_id: i64) -> String {
    keyed_pseudonym(&hmac::Key::new(hmac::HMAC_SHA256, key), pupil_id)
}

fn keyed_pseudonym(key: &hmac::Key, pupil_id: i64) -> String {
    let tag = hmac::sign(key, format!("pupil:{pupil_id}").as_bytes());
    format!("p_{}", crate::competency::mastery::hex(&tag.as_ref()[..12]))
}

/// The tenant's pseudonym key, read by trusted code (never through the AI handle).
pub fn pseudonym_key(conn: &Connection) -> Result<Vec<u8>, StoreError> {
    let hex = super::lrs::setting(conn, PSEUDONYM_KEY)?
        .ok_or_else(|| StoreError::Conflict("the tenant has no pseudonym key".into()))?;
    Ok(hex
        .as_bytes()
        .chunks(2)
        .filter_map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect())
}

/// The authorizer: what the AI principal's SQL may do, decided per action by SQLite.
fn authorize(ctx: AuthContext<'_>) -> Authorization {
    let allowed = match ctx.action {
        AuthAction::Select | AuthAction::Recursive | AuthAction::Function { .. } => true,
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => true,
        AuthAction::Read { table_name, .. } => {
            VIEWS.contains(&table_name) || table_name == SUGGESTIONS
        }
        AuthAction::Insert { table_name } => table_name == SUGGESTIONS && ctx.accessor.is_none(),
        _ => false,
    };
    if allowed {
        Authorization::Allow
    } else {
        Authorization::Deny
    }
}

/// Rewrites the derived tables from the estimates, decisions and frameworks, in one
/// transaction, before the authorizer is installed. The pseudonym function exists only for
/// the length of this call.
fn refresh(conn: &mut Connection) -> Result<(), StoreError> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &pseudonym_key(conn)?);
    conn.create_scalar_function(
        "ai_pseudonym",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        move |ctx| Ok(keyed_pseudonym(&key, ctx.get(0)?)),
    )?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "DELETE FROM ai_features; DELETE FROM ai_levels; DELETE FROM ai_competencies;
         INSERT INTO ai_competencies (uri, framework_uri, code, name, level_code, narrows)
         SELECT c.uri, f.uri, c.code, c.name, c.level_code,
                (SELECT t.uri FROM competency_relations r JOIN competencies t ON t.id = r.target_id
                  WHERE r.source_id = c.id AND r.kind = 'narrows' ORDER BY r.id LIMIT 1)
         FROM competencies c JOIN frameworks f ON f.id = c.framework_id;
         INSERT INTO ai_features (pupil_key, competency_uri, mastery_bp, evidence_count, day)
         SELECT ai_pseudonym(s.pupil_id), c.uri, s.mastery_bp, s.evidence_count,
                s.updated_at / 86400
         FROM scores s JOIN competencies c ON c.id = s.competency_id;
         INSERT INTO ai_levels (pupil_key, competency_uri, level_code, day)
         SELECT ai_pseudonym(d.pupil_id), c.uri, d.level_code, d.at / 86400
         FROM level_decisions d JOIN competencies c ON c.id = d.competency_id;",
    )?;
    tx.commit()?;
    conn.remove_function("ai_pseudonym", 1)?;
    Ok(())
}

/// A derived feature row: a pupil's estimate on a competency, under a pseudonym.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Feature {
    pub pupil_key: String,
    pub competency_uri: String,
    pub mastery_bp: i64,
    pub evidence_count: i64,
    pub day: i64,
}

/// What a model may propose: a level for a pupil (by pseudonym) on a skill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    pub pupil_key: String,
    pub competency_uri: String,
    pub level_code: String,
    pub rationale: String,
    /// The model that made it, e.g. `onnx:kt-small@1`.
    pub source: String,
}

/// The AI principal's connection. Its methods block: call them from a blocking thread.
pub struct AiHandle {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for AiHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AiHandle")
    }
}

impl AiHandle {
    /// Opens the AI principal's handle on a tenant database (which must exist and be
    /// migrated): refreshes the derived tables, then installs the authorizer. Nothing runs
    /// on the connection without it after this returns.
    pub fn open(path: &Path) -> Result<AiHandle, StoreError> {
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")?;
        refresh(&mut conn)?;
        conn.authorizer(Some(authorize));
        Ok(AiHandle {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::JobPanicked)?;
        f(&conn)
    }

    /// Runs any SQL under the authorizer; rows come back as JSON values. What model code
    /// (and the attack tests) use.
    pub fn query(&self, sql: &str) -> Result<Vec<Vec<serde_json::Value>>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(sql)?;
            let n = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    (0..n)
                        .map(|i| {
                            Ok(match r.get_ref(i)? {
                                rusqlite::types::ValueRef::Null => serde_json::Value::Null,
                                rusqlite::types::ValueRef::Integer(v) => v.into(),
                                rusqlite::types::ValueRef::Real(v) => v.into(),
                                rusqlite::types::ValueRef::Text(t) => {
                                    String::from_utf8_lossy(t).into()
                                }
                                rusqlite::types::ValueRef::Blob(b) => {
                                    crate::competency::mastery::hex(b).into()
                                }
                            })
                        })
                        .collect::<rusqlite::Result<Vec<_>>>()
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Runs SQL that changes something, under the authorizer.
    pub fn execute(&self, sql: &str) -> Result<usize, StoreError> {
        self.with(|c| Ok(c.execute(sql, [])?))
    }

    /// Every derived feature row.
    pub fn features(&self) -> Result<Vec<Feature>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT pupil_key, competency_uri, mastery_bp, evidence_count, day
                 FROM ai_features ORDER BY pupil_key, competency_uri",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Feature {
                        pupil_key: r.get(0)?,
                        competency_uri: r.get(1)?,
                        mastery_bp: r.get(2)?,
                        evidence_count: r.get(3)?,
                        day: r.get(4)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Stores a suggestion (its only write); returns its id.
    pub fn suggest(&self, s: &Suggestion) -> Result<i64, StoreError> {
        self.with(|c| {
            c.prepare_cached(
                "INSERT INTO level_suggestions
                     (pupil_key, competency_uri, level_code, rationale, source, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                s.pupil_key,
                s.competency_uri,
                s.level_code,
                s.rationale,
                s.source,
                super::now()
            ])?;
            Ok(c.last_insert_rowid())
        })
    }
}

/// A suggestion as a teacher of the pupil sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SuggestionRow {
    pub id: i64,
    pub competency_uri: String,
    pub level_code: String,
    pub rationale: String,
    pub source: String,
}

/// The suggestions made about a pupil (trusted code: it holds the pseudonym key).
pub fn suggestions_for(conn: &Connection, pupil: i64) -> Result<Vec<SuggestionRow>, StoreError> {
    let pupil_key = pseudonym(&pseudonym_key(conn)?, pupil);
    let rows = conn
        .prepare_cached(
            "SELECT id, competency_uri, level_code, rationale, source
             FROM level_suggestions WHERE pupil_key = ?1 ORDER BY id",
        )?
        .query_map([pupil_key], |r| {
            Ok(SuggestionRow {
                id: r.get(0)?,
                competency_uri: r.get(1)?,
                level_code: r.get(2)?,
                rationale: r.get(3)?,
                source: r.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Whether an error is SQLite refusing an action through the authorizer.
/// (SQLite reports a denied function as a plain error whose message says so.)
pub fn is_denied(e: &StoreError) -> bool {
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, message)) => {
            f.code == rusqlite::ErrorCode::AuthorizationForStatementDenied
                || message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("not authorized"))
        }
        StoreError::Sqlite(rusqlite::Error::SqlInputError { msg, .. }) => {
            msg.starts_with("not authorized")
        }
        _ => false,
    }
}
