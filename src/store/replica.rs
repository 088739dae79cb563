//! SQL of replication: what a tenant database keeps so that its changes can be sent as
//! batches and the batches of another copy merged into it.
//!
//! Mutable records (users, classes, enrolments) change field by field. Each local change
//! of a field is an operation in the change log (kind `field`) stamped with the tenant's
//! hybrid logical clock (HLC: milliseconds × 2¹⁶ + a counter, never behind a clock it
//! has seen) and with the stamp of the value it replaced. `sync_versions` holds the
//! current stamp of every field. The merge rule is per-field last-writer-wins: of two
//! versions, the one with the larger `(hlc, origin)` stays. An operation whose previous
//! stamp is the current one follows it; any other is concurrent with it, and the pair is
//! recorded in `sync_conflicts` whichever wins. Local versions have origin `''`; the
//! batch that carries them names the site.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::StoreError;

/// Appended to the tenant migrations.
pub const V1: &str = "
ALTER TABLE change_log ADD COLUMN origin TEXT;
ALTER TABLE classes ADD COLUMN uid TEXT;
UPDATE classes SET uid = lower(hex(randomblob(16)));
CREATE UNIQUE INDEX classes_by_uid ON classes(uid);
CREATE TRIGGER classes_uid AFTER INSERT ON classes WHEN NEW.uid IS NULL
BEGIN
    UPDATE classes SET uid = lower(hex(randomblob(16))) WHERE id = NEW.id;
END;
CREATE TABLE sync_versions (
    entity TEXT NOT NULL,
    key    TEXT NOT NULL,
    field  TEXT NOT NULL,
    value  TEXT NOT NULL,
    hlc    INTEGER NOT NULL,
    origin TEXT NOT NULL,
    PRIMARY KEY (entity, key, field)
) WITHOUT ROWID;
CREATE TABLE sync_conflicts (
    id          INTEGER PRIMARY KEY,
    entity      TEXT NOT NULL,
    key         TEXT NOT NULL,
    field       TEXT NOT NULL,
    kept        TEXT NOT NULL,
    kept_hlc    INTEGER NOT NULL,
    kept_origin TEXT NOT NULL,
    lost        TEXT NOT NULL,
    lost_hlc    INTEGER NOT NULL,
    lost_origin TEXT NOT NULL,
    at          INTEGER NOT NULL,
    UNIQUE (entity, key, field, kept_hlc, kept_origin, lost_hlc, lost_origin)
);
CREATE TABLE sync_cursors (
    origin  TEXT PRIMARY KEY,
    applied INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE sync_tombstones (
    agent_name TEXT PRIMARY KEY,
    at         INTEGER NOT NULL
) WITHOUT ROWID;
";

/// A change-log row that says "a change here that only a generation carries": written by
/// triggers on the tables of [`GENERATION_ONLY`], one per row changed (a batch carries one
/// mark per run of them). The triggers cannot skip a mark when the last row is the same
/// mark: that row may already be at the hub.
pub const GENERATION_KIND: &str = "generation";

/// Writes, after each insert, update and delete on a table, a change-log row of kind
/// [`GENERATION_KIND`] naming the table.
macro_rules! needs_generation {
    ($($table:literal),* $(,)?) => {
        concat!($(
            "CREATE TRIGGER ", $table, "_needs_generation_insert AFTER INSERT ON ", $table,
            " BEGIN ", needs_generation!(@mark $table), " END;\n",
            "CREATE TRIGGER ", $table, "_needs_generation_update AFTER UPDATE ON ", $table,
            " BEGIN ", needs_generation!(@mark $table), " END;\n",
            "CREATE TRIGGER ", $table, "_needs_generation_delete AFTER DELETE ON ", $table,
            " BEGIN ", needs_generation!(@mark $table), " END;\n",
        )*)
    };
    (@mark $table:literal) => {
        concat!(
            "INSERT INTO change_log (at, kind, subject) ",
            "VALUES (CAST(unixepoch('subsec') * 1000 AS INTEGER), 'generation', '", $table, "');"
        )
    };
}

/// Appended to the tenant migrations: every change that batches do not carry marks the
/// change log, so that the next push seals a generation and the hub's copy misses nothing.
/// Evidence marks it unless derived from a statement (the statement carries it); the
/// tenant's settings unless it is bookkeeping every copy keeps for itself (the sync clock,
/// how far the statement index was merged) or a write of the same value.
pub const V2: &str = concat!(
    needs_generation!(
        "orgs",
        "api_credentials",
        "frameworks",
        "competencies",
        "competency_relations",
        "competency_levels",
        "activity_alignments",
        "level_decisions",
        "research_projects",
        "research_members",
        "apps",
        "app_kv",
        "app_history",
    ),
    "CREATE TRIGGER evidence_needs_generation_insert AFTER INSERT ON evidence
     WHEN NEW.source <> 'xapi' OR NEW.kind <> 'record'
     BEGIN ",
    needs_generation!(@mark "evidence"),
    " END;
     CREATE TRIGGER evidence_needs_generation_delete AFTER DELETE ON evidence BEGIN ",
    needs_generation!(@mark "evidence"),
    " END;
     CREATE TRIGGER tenant_settings_needs_generation_insert AFTER INSERT ON tenant_settings
     WHEN NEW.key NOT IN ('sync.hlc', 'xapi.index_merged_through') BEGIN ",
    needs_generation!(@mark "tenant_settings"),
    " END;
     CREATE TRIGGER tenant_settings_needs_generation_update AFTER UPDATE ON tenant_settings
     WHEN NEW.key NOT IN ('sync.hlc', 'xapi.index_merged_through')
      AND NEW.value IS NOT OLD.value BEGIN ",
    needs_generation!(@mark "tenant_settings"),
    " END;
     CREATE TRIGGER tenant_settings_needs_generation_delete AFTER DELETE ON tenant_settings
     WHEN OLD.key NOT IN ('sync.hlc', 'xapi.index_merged_through') BEGIN ",
    needs_generation!(@mark "tenant_settings"),
    " END;"
);

/// Appended to the tenant migrations: evidence and level decisions get a global id and
/// travel in batches. Evidence derived from a statement has an id every copy derives
/// alike (`x:<statement>:<competency>`, `v:<voiding statement>:<withdrawn row>`); the others
/// are time-ordered UUIDs. `origin` names the site a merged row came from. Two copies may
/// each correct the same row while apart: both corrections then stand (and the pair is
/// recorded as a conflict), so a row made here is still superseded at most once by rows
/// made here, but merged rows may supersede it too.
pub const V3: &str = "
ALTER TABLE evidence ADD COLUMN uid TEXT;
ALTER TABLE evidence ADD COLUMN origin TEXT;
ALTER TABLE level_decisions ADD COLUMN uid TEXT;
DROP TRIGGER evidence_needs_generation_insert;
DROP TRIGGER level_decisions_needs_generation_insert;
DROP TRIGGER level_decisions_needs_generation_update;
DROP TRIGGER evidence_is_append_only;
DROP TRIGGER level_decisions_are_final;
UPDATE evidence SET uid = CASE
    WHEN source = 'xapi' AND kind = 'record' AND statement_id IS NOT NULL
    THEN 'x:' || statement_id || ':' ||
         (SELECT uri FROM competencies c WHERE c.id = evidence.competency_id)
    ELSE lower(hex(randomblob(16))) END;
UPDATE level_decisions SET uid = lower(hex(randomblob(16)));
CREATE TRIGGER evidence_is_append_only BEFORE UPDATE ON evidence
BEGIN
    SELECT RAISE(ABORT, 'evidence is append-only: record a correction or a withdrawal');
END;
CREATE TRIGGER level_decisions_are_final BEFORE UPDATE ON level_decisions
BEGIN
    SELECT RAISE(ABORT, 'a level decision is final: decide again to change it');
END;
CREATE UNIQUE INDEX evidence_by_uid ON evidence(uid);
CREATE UNIQUE INDEX level_decisions_by_uid ON level_decisions(uid);
DROP INDEX evidence_superseded_once;
CREATE UNIQUE INDEX evidence_superseded_once_here ON evidence(supersedes)
    WHERE supersedes IS NOT NULL AND origin IS NULL;
CREATE INDEX evidence_by_supersedes ON evidence(supersedes) WHERE supersedes IS NOT NULL;
";

/// [`LOCAL_SETTINGS`] as an SQL list, for the triggers of [`V4`].
macro_rules! local_settings_sql {
    () => {
        "'sync.hlc', 'xapi.index_merged_through', 'federation.adopted_through'"
    };
}

/// [`LOCAL_SETTINGS`] as the SQL list the triggers of [`V4`] hold (a test checks they agree).
pub const LOCAL_SETTINGS_SQL: &str = local_settings_sql!();

/// The tenant's settings that are each copy's own bookkeeping, never carried: the sync
/// clock, how far the statement index was merged, which publications this site adopted.
pub const LOCAL_SETTINGS: &[&str] = &[
    HLC_SETTING,
    "xapi.index_merged_through",
    "federation.adopted_through",
];

/// The field name of an operation that carries a whole row (see [`V4`]).
pub const ROW_FIELD: &str = "row";

/// Appended to the tenant migrations: the tenant's settings and organisations travel in
/// batches, row by row. A trigger on each table turns every change of a row into an
/// operation of the change log (kind `field`, field [`ROW_FIELD`], the new row as its
/// value, `null` once deleted), stamped with the tenant's clock like a field of a user: the
/// same per-row last-writer-wins rule and the same record of conflicts apply. The generic
/// part (tick the clock, log the operation, record the version) is the `INSTEAD OF`
/// trigger of the view `sync_row_change`; each table's triggers only say what its row is.
/// Settings are text: a blob written there by hand is not a setting and stays here.
/// (No `INSERT OR REPLACE` in them: the statement that fires a trigger imposes its own
/// conflict rule on the trigger's statements.)
pub const V4: &str = concat!(
    "
DROP TRIGGER orgs_needs_generation_insert;
DROP TRIGGER orgs_needs_generation_update;
DROP TRIGGER orgs_needs_generation_delete;
DROP TRIGGER tenant_settings_needs_generation_insert;
DROP TRIGGER tenant_settings_needs_generation_update;
DROP TRIGGER tenant_settings_needs_generation_delete;
CREATE VIEW sync_row_change (entity, key, row) AS SELECT NULL, NULL, NULL WHERE 0;
CREATE TRIGGER sync_row_change_logged INSTEAD OF INSERT ON sync_row_change
BEGIN
    UPDATE tenant_settings SET value = max(CAST(value AS INTEGER) + 1,
                                           CAST(unixepoch('subsec') * 1000 AS INTEGER) << 16)
    WHERE key = 'sync.hlc';
    INSERT INTO tenant_settings (key, value)
    SELECT 'sync.hlc', CAST(unixepoch('subsec') * 1000 AS INTEGER) << 16
    WHERE NOT EXISTS (SELECT 1 FROM tenant_settings WHERE key = 'sync.hlc');
    INSERT INTO change_log (at, kind, subject)
    SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER), 'field',
           json_object('e', NEW.entity, 'k', NEW.key, 'f', 'row', 'v', json(NEW.row),
               'h', (SELECT CAST(value AS INTEGER) FROM tenant_settings WHERE key = 'sync.hlc'),
               'p', coalesce(v.hlc, 0), 'po', coalesce(v.origin, ''))
    FROM (SELECT 1) LEFT JOIN sync_versions v
      ON v.entity = NEW.entity AND v.key = NEW.key AND v.field = 'row';
    DELETE FROM sync_versions WHERE entity = NEW.entity AND key = NEW.key AND field = 'row';
    INSERT INTO sync_versions (entity, key, field, value, hlc, origin)
    VALUES (NEW.entity, NEW.key, 'row', coalesce(NEW.row, 'null'),
            (SELECT CAST(value AS INTEGER) FROM tenant_settings WHERE key = 'sync.hlc'), '');
END;
CREATE TRIGGER tenant_settings_sync_insert AFTER INSERT ON tenant_settings
WHEN NEW.key NOT IN (",
    local_settings_sql!(),
    ")
 AND typeof(NEW.value) <> 'blob'
 AND NOT EXISTS (SELECT 1 FROM sync_versions WHERE entity = 'setting' AND key = NEW.key
                 AND field = 'row' AND value = json_object('value', NEW.value))
BEGIN
    INSERT INTO sync_row_change VALUES ('setting', NEW.key, json_object('value', NEW.value));
END;
CREATE TRIGGER tenant_settings_sync_update AFTER UPDATE ON tenant_settings
WHEN NEW.key NOT IN (",
    local_settings_sql!(),
    ")
 AND typeof(NEW.value) <> 'blob' AND (NEW.value IS NOT OLD.value OR NEW.key IS NOT OLD.key)
BEGIN
    INSERT INTO sync_row_change SELECT 'setting', OLD.key, NULL WHERE OLD.key IS NOT NEW.key;
    INSERT INTO sync_row_change VALUES ('setting', NEW.key, json_object('value', NEW.value));
END;
CREATE TRIGGER tenant_settings_sync_delete AFTER DELETE ON tenant_settings
WHEN OLD.key NOT IN (",
    local_settings_sql!(),
    ")
BEGIN
    INSERT INTO sync_row_change VALUES ('setting', OLD.key, NULL);
END;
CREATE TRIGGER orgs_sync_insert AFTER INSERT ON orgs
BEGIN
    INSERT INTO sync_row_change VALUES ('org', NEW.sourced_id, json_object(
        'active', NEW.active, 'identifier', NEW.identifier, 'name', NEW.name,
        'org_type', NEW.org_type, 'parent_sourced_id', NEW.parent_sourced_id));
END;
CREATE TRIGGER orgs_sync_update AFTER UPDATE ON orgs
WHEN (NEW.sourced_id, NEW.active, NEW.identifier, NEW.name, NEW.org_type,
      NEW.parent_sourced_id)
  IS NOT (OLD.sourced_id, OLD.active, OLD.identifier, OLD.name, OLD.org_type,
          OLD.parent_sourced_id)
BEGIN
    INSERT INTO sync_row_change SELECT 'org', OLD.sourced_id, NULL
    WHERE OLD.sourced_id IS NOT NEW.sourced_id;
    INSERT INTO sync_row_change VALUES ('org', NEW.sourced_id, json_object(
        'active', NEW.active, 'identifier', NEW.identifier, 'name', NEW.name,
        'org_type', NEW.org_type, 'parent_sourced_id', NEW.parent_sourced_id));
END;
CREATE TRIGGER orgs_sync_delete AFTER DELETE ON orgs
BEGIN
    INSERT INTO sync_row_change VALUES ('org', OLD.sourced_id, NULL);
END;
"
);

/// A table whose rows travel whole (see [`V4`]): the entity its operations name, its key
/// column, the columns its row carries, and a column set to the time of a merge.
struct RowTable {
    entity: &'static str,
    table: &'static str,
    key: &'static str,
    columns: &'static [&'static str],
    touched: Option<&'static str>,
}

const ROW_TABLES: &[RowTable] = &[
    RowTable {
        entity: "setting",
        table: "tenant_settings",
        key: "key",
        columns: &["value"],
        touched: None,
    },
    RowTable {
        entity: "org",
        table: "orgs",
        key: "sourced_id",
        columns: &[
            "active",
            "identifier",
            "name",
            "org_type",
            "parent_sourced_id",
        ],
        touched: Some("updated_at"),
    },
];

/// How each table of a tenant database reaches another copy of the tenant. Every table is
/// in exactly one of these lists (a test checks it, so a new table cannot be forgotten).
///
/// Carried by batches: statements with their attachments, documents, users, classes and
/// enrolments (field by field), evidence other than what statements give, and level
/// decisions (append-only, by their global ids), the tenant's settings and organisations
/// (row by row, see [`V4`]).
pub const CARRIED: &[&str] = &[
    "tenant_settings",
    "orgs",
    "xapi_statements",
    "xapi_attachments",
    "xapi_statement_attachments",
    "xapi_documents",
    "users",
    "classes",
    "enrolments",
    "evidence",
    "level_decisions",
];
/// Derived where a batch is applied, from what it carries: the statement index, activity
/// definitions, evidence from statements, estimates, each copy's own journal of its
/// recalculations, the AI principal's pseudonymised tables and its suggestions (the model
/// makes them again where it runs; the AI principal, whose SQL may touch nothing else, does
/// not mark the change log).
pub const DERIVED: &[&str] = &[
    "xapi_keys",
    "xapi_index",
    "xapi_index_recent",
    "xapi_activities",
    "scores",
    "assessment_journal",
    "ai_features",
    "ai_levels",
    "ai_competencies",
    "level_suggestions",
];
/// This appliance's own: sign-in sessions and one-time links, and the bookkeeping of sync.
pub const LOCAL: &[&str] = &[
    "sessions",
    "setup_tokens",
    "change_log",
    "sync_versions",
    "sync_conflicts",
    "sync_cursors",
    "sync_tombstones",
];
/// Carried only by a generation: each change marks the change log (see [`V2`]). (Evidence and level decisions still mark it when
/// deleted otherwise than by an erasure: a retention run, which only a generation carries.)
pub const GENERATION_ONLY: &[&str] = &[
    "api_credentials",
    "frameworks",
    "competencies",
    "competency_relations",
    "competency_levels",
    "activity_alignments",
    "research_projects",
    "research_members",
    "apps",
    "app_kv",
    "app_history",
];

const HLC_SETTING: &str = "sync.hlc";

fn wall_ms() -> i64 {
    crate::lrs::now_ms()
}

/// The next stamp of the tenant's clock.
pub fn tick(conn: &Connection) -> Result<i64, StoreError> {
    let last: i64 = super::lrs::setting(conn, HLC_SETTING)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let next = (last + 1).max(wall_ms() << 16);
    set_clock(conn, next)?;
    Ok(next)
}

/// Moves the clock past a stamp seen in another copy's batch.
pub fn observe(conn: &Connection, hlc: i64) -> Result<(), StoreError> {
    let last: i64 = super::lrs::setting(conn, HLC_SETTING)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if hlc > last {
        set_clock(conn, hlc)?;
    }
    Ok(())
}

fn set_clock(conn: &Connection, hlc: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO tenant_settings (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![HLC_SETTING, hlc.to_string()])?;
    Ok(())
}

/// One change of one field, as the change log keeps it and a batch carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldOp {
    /// `user`, `class` or `enrolment`.
    pub e: String,
    /// The record's global key: a user's agent name, a class's uid, `class uid/agent name`.
    pub k: String,
    pub f: String,
    /// The new value (`null` for an enrolment that ended).
    pub v: Value,
    pub h: i64,
    /// The stamp and origin of the value it replaced (`0`, `""` for none).
    pub p: i64,
    #[serde(default)]
    pub po: String,
}

/// The fields a mutable record syncs, and how to read them by its local id.
struct Shape {
    entity: &'static str,
    fields: &'static [&'static str],
    /// Selects the key then the fields, by local id `?1` (and `?2`).
    select: &'static str,
}

const USER: Shape = Shape {
    entity: "user",
    fields: &[
        "sourced_id",
        "username",
        "given_name",
        "family_name",
        "email",
        "role",
        "password_hash",
        "must_change_password",
        "active",
    ],
    select: "SELECT agent_name, sourced_id, username, given_name, family_name, email, role,
                    password_hash, must_change_password, active FROM users WHERE id = ?1",
};

const CLASS: Shape = Shape {
    entity: "class",
    fields: &[
        "sourced_id",
        "title",
        "class_code",
        "org_sourced_id",
        "active",
    ],
    select: "SELECT uid, sourced_id, title, class_code, org_sourced_id, active
             FROM classes WHERE id = ?1",
};

const ENROLMENT: Shape = Shape {
    entity: "enrolment",
    fields: &["role", "sourced_id"],
    select: "SELECT c.uid || '/' || u.agent_name, e.role, e.sourced_id
             FROM classes c JOIN users u ON u.id = ?2
             LEFT JOIN enrolments e ON e.class_id = c.id AND e.user_id = u.id
             WHERE c.id = ?1",
};

fn sql_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => Value::from(f),
        ValueRef::Text(t) | ValueRef::Blob(t) => Value::from(String::from_utf8_lossy(t)),
    }
}

/// Records, as field operations, how the record read by `shape` with `ids` differs from
/// the versions last recorded for it.
fn note(conn: &Connection, shape: &Shape, ids: &[i64]) -> Result<(), StoreError> {
    let row: Option<(String, Vec<Value>)> = conn
        .prepare_cached(shape.select)?
        .query_row(rusqlite::params_from_iter(ids), |r| {
            let key: String = r.get(0)?;
            let values = (1..=shape.fields.len())
                .map(|i| r.get_ref(i).map(sql_value))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((key, values))
        })
        .optional()?;
    let Some((key, values)) = row else {
        return Ok(());
    };
    for (field, value) in shape.fields.iter().zip(values) {
        let current = version(conn, shape.entity, &key, field)?;
        if current.as_ref().is_some_and(|c| c.value == value)
            || (current.is_none() && value.is_null())
        {
            continue;
        }
        let (p, po) = current.map_or((0, String::new()), |c| (c.hlc, c.origin));
        let op = FieldOp {
            e: shape.entity.into(),
            k: key.clone(),
            f: (*field).into(),
            v: value,
            h: tick(conn)?,
            p,
            po,
        };
        set_version(conn, &op, "")?;
        super::lrs::log_change(
            conn,
            wall_ms(),
            "field",
            &serde_json::to_string(&op).unwrap_or_default(),
        )?;
    }
    Ok(())
}

/// Records the changes of user `id`'s synced fields.
pub fn note_user(conn: &Connection, id: i64) -> Result<(), StoreError> {
    note(conn, &USER, &[id])
}

pub fn note_class(conn: &Connection, id: i64) -> Result<(), StoreError> {
    note(conn, &CLASS, &[id])
}

/// Records the enrolment of `user_id` in `class_id` (or its end).
pub fn note_enrolment(conn: &Connection, class_id: i64, user_id: i64) -> Result<(), StoreError> {
    note(conn, &ENROLMENT, &[class_id, user_id])
}

/// Stamps a document's change made here (its new etag, `None` when deleted): returns the
/// operation its change-log row carries.
pub fn note_document(
    conn: &Connection,
    name: &str,
    etag: Option<&str>,
) -> Result<FieldOp, StoreError> {
    let (p, po) =
        version(conn, "doc", name, "etag")?.map_or((0, String::new()), |c| (c.hlc, c.origin));
    let op = FieldOp {
        e: "doc".into(),
        k: name.into(),
        f: "etag".into(),
        v: etag.map_or(Value::Null, Value::from),
        h: tick(conn)?,
        p,
        po,
    };
    set_version(conn, &op, "")?;
    Ok(op)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub value: Value,
    pub hlc: i64,
    pub origin: String,
}

pub fn version(
    conn: &Connection,
    entity: &str,
    key: &str,
    field: &str,
) -> Result<Option<Version>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT value, hlc, origin FROM sync_versions
             WHERE entity = ?1 AND key = ?2 AND field = ?3",
        )?
        .query_row(params![entity, key, field], |r| {
            let text: String = r.get(0)?;
            Ok(Version {
                value: serde_json::from_str(&text).unwrap_or(Value::Null),
                hlc: r.get(1)?,
                origin: r.get(2)?,
            })
        })
        .optional()?)
}

fn set_version(conn: &Connection, op: &FieldOp, origin: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO sync_versions (entity, key, field, value, hlc, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (entity, key, field) DO UPDATE SET
             value = excluded.value, hlc = excluded.hlc, origin = excluded.origin",
    )?
    .execute(params![op.e, op.k, op.f, op.v.to_string(), op.h, origin])?;
    Ok(())
}

/// What merging one operation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merged {
    /// It was the current version already.
    Known,
    /// It followed the current version.
    Followed,
    /// It was concurrent with the current version and won.
    Won,
    /// It was concurrent with the current version and lost.
    Lost,
}

/// Merges a field operation from copy `origin` (`me`: this copy's own name, for versions
/// stored with origin `''`). The caller writes the winning value into its table.
pub fn merge_field(
    conn: &Connection,
    op: &FieldOp,
    origin: &str,
    me: &str,
    at: i64,
) -> Result<Merged, StoreError> {
    observe(conn, op.h)?;
    let current = version(conn, &op.e, &op.k, &op.f)?;
    let named = |o: &str| {
        if o.is_empty() {
            me.to_string()
        } else {
            o.to_string()
        }
    };
    let Some(current) = current else {
        set_version(conn, op, origin)?;
        return Ok(Merged::Followed);
    };
    let current_origin = named(&current.origin);
    if current.hlc == op.h && current_origin == origin {
        return Ok(Merged::Known);
    }
    if current.hlc == op.p && current_origin == named(&op.po) {
        set_version(conn, op, origin)?;
        return Ok(Merged::Followed);
    }
    let wins = (op.h, origin) > (current.hlc, current_origin.as_str());
    let (kept, lost) = if wins {
        (
            (&op.v, op.h, origin),
            (&current.value, current.hlc, current_origin.as_str()),
        )
    } else {
        (
            (&current.value, current.hlc, current_origin.as_str()),
            (&op.v, op.h, origin),
        )
    };
    conn.prepare_cached(
        "INSERT OR IGNORE INTO sync_conflicts
             (entity, key, field, kept, kept_hlc, kept_origin, lost, lost_hlc, lost_origin, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        op.e,
        op.k,
        op.f,
        kept.0.to_string(),
        kept.1,
        kept.2,
        lost.0.to_string(),
        lost.1,
        lost.2,
        at
    ])?;
    if wins {
        set_version(conn, op, origin)?;
        Ok(Merged::Won)
    } else {
        Ok(Merged::Lost)
    }
}

/// A recorded conflict: which value stayed and which lost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    pub entity: String,
    pub key: String,
    pub field: String,
    pub kept: Value,
    pub kept_origin: String,
    pub lost: Value,
    pub lost_origin: String,
    pub at: i64,
}

pub fn conflicts(conn: &Connection) -> Result<Vec<Conflict>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT entity, key, field, kept, kept_origin, lost, lost_origin, at
         FROM sync_conflicts ORDER BY id",
    )?;
    let rows = stmt
        .query_map([], |r| {
            let json = |i: usize| -> rusqlite::Result<Value> {
                let t: String = r.get(i)?;
                Ok(serde_json::from_str(&t).unwrap_or(Value::Null))
            };
            Ok(Conflict {
                entity: r.get(0)?,
                key: r.get(1)?,
                field: r.get(2)?,
                kept: json(3)?,
                kept_origin: r.get(4)?,
                lost: json(5)?,
                lost_origin: r.get(6)?,
                at: r.get(7)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A row of the change log.
#[derive(Debug, Clone)]
pub struct Change {
    pub seq: i64,
    pub kind: String,
    pub subject: String,
    /// Merged from another copy's batch: not this copy's to send.
    pub merged: bool,
}

/// The change log's rows after `after` through `through`, at most `limit`.
pub fn changes(
    conn: &Connection,
    after: i64,
    through: i64,
    limit: i64,
) -> Result<Vec<Change>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, kind, subject, origin IS NOT NULL FROM change_log
         WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt
        .query_map(params![after, through, limit], |r| {
            Ok(Change {
                seq: r.get(0)?,
                kind: r.get(1)?,
                subject: r.get(2)?,
                merged: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Forgets the marks "only a generation carries this" written after `after`: an erasure
/// deletes rows of such tables, and the erasure itself is what other copies apply.
pub fn forget_generation_marks(conn: &Connection, after: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "DELETE FROM change_log WHERE seq > ?1 AND kind = 'generation' AND origin IS NULL",
    )?
    .execute([after])?;
    Ok(())
}

/// How many local changes wait after `after`.
pub fn pending_changes(conn: &Connection, after: i64) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM change_log WHERE seq > ?1 AND origin IS NULL")?
        .query_row([after], |r| r.get(0))?)
}

/// The last row of the change log.
pub fn last_change(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM change_log")?
        .query_row([], |r| r.get(0))?)
}

/// Marks the change log rows after `after` as merged from `origin`: what applying its
/// batch wrote is not this copy's to send.
pub fn mark_merged(conn: &Connection, after: i64, origin: &str) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE change_log SET origin = ?2 WHERE seq > ?1")?
        .execute(params![after, origin])?;
    Ok(())
}

/// Makes the local changes and versions of this database those of `origin`: a copy
/// adopted from another site keeps its history under that site's name.
pub fn adopt_from(conn: &Connection, origin: &str) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE change_log SET origin = ?1 WHERE origin IS NULL")?
        .execute([origin])?;
    conn.prepare_cached("UPDATE sync_versions SET origin = ?1 WHERE origin = ''")?
        .execute([origin])?;
    Ok(())
}

/// The last change of `origin` merged here.
pub fn cursor(conn: &Connection, origin: &str) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT applied FROM sync_cursors WHERE origin = ?1")?
        .query_row([origin], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Every other copy's changes merged here: `(origin, last applied)`.
pub fn cursors(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT origin, applied FROM sync_cursors ORDER BY origin")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

pub fn set_cursor(conn: &Connection, origin: &str, applied: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO sync_cursors (origin, applied) VALUES (?1, ?2)
         ON CONFLICT (origin) DO UPDATE SET applied = max(applied, excluded.applied)",
    )?
    .execute(params![origin, applied])?;
    Ok(())
}

/// Forgets the field versions and logged operations of an erased user (and their
/// enrolments), and remembers that they were erased: a batch that still names them
/// brings nothing of theirs back.
pub fn erase(conn: &Connection, agent_name: &str, at: i64) -> Result<(), StoreError> {
    let enrolment_keys = format!("%/{agent_name}");
    conn.prepare_cached(
        "DELETE FROM sync_versions WHERE (entity = 'user' AND key = ?1)
                                      OR (entity = 'enrolment' AND key LIKE ?2)",
    )?
    .execute(params![agent_name, enrolment_keys])?;
    conn.prepare_cached(
        "DELETE FROM change_log WHERE kind = 'field'
           AND (json_extract(subject, '$.e') = 'user' AND json_extract(subject, '$.k') = ?1
             OR json_extract(subject, '$.e') = 'enrolment'
                AND json_extract(subject, '$.k') LIKE ?2)",
    )?
    .execute(params![agent_name, enrolment_keys])?;
    conn.prepare_cached(
        "DELETE FROM sync_conflicts WHERE (entity = 'user' AND key = ?1)
                                       OR (entity = 'enrolment' AND key LIKE ?2)
                                       OR (entity = 'doc' AND instr(key, ?1) > 0)",
    )?
    .execute(params![agent_name, enrolment_keys])?;
    conn.prepare_cached("DELETE FROM sync_versions WHERE entity = 'doc' AND instr(key, ?1) > 0")?
        .execute([agent_name])?;
    conn.prepare_cached("INSERT OR IGNORE INTO sync_tombstones (agent_name, at) VALUES (?1, ?2)")?
        .execute(params![agent_name, at])?;
    Ok(())
}

/// The agent names of every user erased in any copy of the tenant.
pub fn erased_agents(conn: &Connection) -> Result<Vec<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT agent_name FROM sync_tombstones")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

pub fn is_erased(conn: &Connection, agent_name: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM sync_tombstones WHERE agent_name = ?1")?
        .query_row([agent_name], |_| Ok(()))
        .optional()?
        .is_some())
}

fn sql_param(v: &Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        Value::Null => V::Null,
        Value::Bool(b) => V::Integer(i64::from(*b)),
        Value::Number(n) => n
            .as_i64()
            .map_or(V::Real(n.as_f64().unwrap_or(0.0)), V::Integer),
        Value::String(s) => V::Text(s.clone()),
        other => V::Text(other.to_string()),
    }
}

/// Merges a field operation from copy `origin` and, when it wins, writes its value into
/// the record (creating the record when this is its first field here). Returns what the
/// merge did.
pub fn apply_field(
    conn: &Connection,
    op: &FieldOp,
    origin: &str,
    me: &str,
    at: i64,
) -> Result<Merged, StoreError> {
    if op.f == ROW_FIELD {
        return apply_row(conn, op, origin, me, at);
    }
    let shape = match op.e.as_str() {
        "user" => &USER,
        "class" => &CLASS,
        "enrolment" => &ENROLMENT,
        _ => {
            return Err(StoreError::Conflict(format!(
                "unknown record kind `{}`",
                op.e
            )));
        }
    };
    if !shape.fields.contains(&op.f.as_str()) {
        return Err(StoreError::Conflict(format!(
            "`{}` is not a field of a {}",
            op.f, op.e
        )));
    }
    if op.e == "user" && is_erased(conn, &op.k)?
        || op.e == "enrolment"
            && op
                .k
                .rsplit('/')
                .next()
                .map(|a| is_erased(conn, a))
                .transpose()?
                == Some(true)
    {
        return Ok(Merged::Lost);
    }
    let merged = merge_field(conn, op, origin, me, at)?;
    if matches!(merged, Merged::Followed | Merged::Won) {
        write_field(conn, op, at)?;
    }
    Ok(merged)
}

fn write_field(conn: &Connection, op: &FieldOp, at: i64) -> Result<(), StoreError> {
    let value = sql_param(&op.v);
    match op.e.as_str() {
        "user" => {
            conn.prepare_cached(
                "INSERT INTO users (agent_name, username, given_name, family_name, role,
                                    created_at, updated_at)
                 VALUES (?1, ?1, '', '', 'student', ?2, ?2) ON CONFLICT DO NOTHING",
            )?
            .execute(params![op.k, at])?;
            conn.execute(
                &format!(
                    "UPDATE users SET {} = ?2, updated_at = ?3 WHERE agent_name = ?1",
                    op.f
                ),
                params![op.k, value, at],
            )?;
        }
        "class" => {
            conn.prepare_cached(
                "INSERT INTO classes (uid, title, created_at, updated_at)
                 VALUES (?1, '', ?2, ?2) ON CONFLICT DO NOTHING",
            )?
            .execute(params![op.k, at])?;
            conn.execute(
                &format!(
                    "UPDATE classes SET {} = ?2, updated_at = ?3 WHERE uid = ?1",
                    op.f
                ),
                params![op.k, value, at],
            )?;
        }
        _ => {
            let Some((class_uid, agent)) = op.k.split_once('/') else {
                return Err(StoreError::Conflict(format!(
                    "`{}` names no enrolment",
                    op.k
                )));
            };
            let ids: Option<(i64, i64)> = conn
                .prepare_cached(
                    "SELECT c.id, u.id FROM classes c, users u
                     WHERE c.uid = ?1 AND u.agent_name = ?2",
                )?
                .query_row(params![class_uid, agent], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((class_id, user_id)) = ids else {
                return Ok(());
            };
            match (op.f.as_str(), &op.v) {
                ("role", Value::Null) => {
                    conn.prepare_cached(
                        "DELETE FROM enrolments WHERE class_id = ?1 AND user_id = ?2",
                    )?
                    .execute(params![class_id, user_id])?;
                }
                ("role", _) => {
                    conn.prepare_cached(
                        "INSERT INTO enrolments (class_id, user_id, role, created_at)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (class_id, user_id) DO UPDATE SET role = excluded.role",
                    )?
                    .execute(params![class_id, user_id, value, at])?;
                }
                _ => {
                    conn.prepare_cached(
                        "UPDATE enrolments SET sourced_id = ?3 WHERE class_id = ?1 AND user_id = ?2",
                    )?
                    .execute(params![class_id, user_id, value])?;
                }
            }
        }
    }
    Ok(())
}

/// Merges a row operation from copy `origin` and, when it wins, writes the row (or deletes
/// it). A copy's own bookkeeping settings are never taken from another.
fn apply_row(
    conn: &Connection,
    op: &FieldOp,
    origin: &str,
    me: &str,
    at: i64,
) -> Result<Merged, StoreError> {
    let Some(table) = ROW_TABLES.iter().find(|t| t.entity == op.e) else {
        return Err(StoreError::Conflict(format!(
            "unknown record kind `{}`",
            op.e
        )));
    };
    let values = match &op.v {
        Value::Null => None,
        Value::Object(row) => Some(
            table
                .columns
                .iter()
                .map(|c| sql_param(row.get(*c).unwrap_or(&Value::Null)))
                .collect::<Vec<_>>(),
        ),
        _ => {
            return Err(StoreError::Conflict(format!(
                "the row of {} `{}` is not an object",
                op.e, op.k
            )));
        }
    };
    if op.e == "setting" && LOCAL_SETTINGS.contains(&op.k.as_str()) {
        return Ok(Merged::Lost);
    }
    let merged = merge_field(conn, op, origin, me, at)?;
    if !matches!(merged, Merged::Followed | Merged::Won) {
        return Ok(merged);
    }
    match values {
        None => {
            conn.prepare_cached(&format!(
                "DELETE FROM {} WHERE {} = ?1",
                table.table, table.key
            ))?
            .execute([&op.k])?;
        }
        Some(values) => {
            let mut columns: Vec<&str> = table.columns.to_vec();
            let mut params: Vec<rusqlite::types::Value> = values;
            if let Some(touched) = table.touched {
                columns.push(touched);
                params.push(rusqlite::types::Value::Integer(at));
            }
            let sql = format!(
                "INSERT INTO {t} ({k}, {cols}) VALUES ({marks})
                 ON CONFLICT ({k}) DO UPDATE SET {set}",
                t = table.table,
                k = table.key,
                cols = columns.join(", "),
                marks = (1..=columns.len() + 1)
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                set = columns
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            let mut all = vec![rusqlite::types::Value::Text(op.k.clone())];
            all.extend(params);
            conn.prepare_cached(&sql)?
                .execute(rusqlite::params_from_iter(all))?;
        }
    }
    // The write's own trigger stamped the row as a change made here: it is the merged one.
    set_version(conn, op, origin)?;
    Ok(merged)
}
