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
/// the triggers of [`V2`] that later migrations kept (evidence and level decisions
/// deleted), one per row changed (a batch carries one mark per run of them). The triggers
/// cannot skip a mark when the last row is the same mark: that row may already be at the hub.
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

/// Triggers that send every change of a table's rows through `sync_row_change` (see
/// [`V4`]), in place of the marks of [`V2`]: the entity, the row's key and its row as SQL,
/// once over `NEW` and once over `OLD`. A key that does not resolve (a row whose parent
/// just went: a pupil erased, whose erasure is what travels) logs nothing.
macro_rules! rows_travel {
    ($table:literal, $entity:literal, ($new_key:literal, $old_key:literal),
     ($new_row:literal, $old_row:literal)) => {
        concat!(
            "DROP TRIGGER IF EXISTS ",
            $table,
            "_needs_generation_insert;\n",
            "DROP TRIGGER IF EXISTS ",
            $table,
            "_needs_generation_update;\n",
            "DROP TRIGGER IF EXISTS ",
            $table,
            "_needs_generation_delete;\n",
            "CREATE TRIGGER ",
            $table,
            "_sync_insert AFTER INSERT ON ",
            $table,
            " WHEN ",
            $new_key,
            " IS NOT NULL BEGIN INSERT INTO sync_row_change VALUES ('",
            $entity,
            "', ",
            $new_key,
            " || '', ",
            $new_row,
            "); END;\n",
            "CREATE TRIGGER ",
            $table,
            "_sync_update AFTER UPDATE ON ",
            $table,
            " WHEN ",
            $new_key,
            " IS NOT ",
            $old_key,
            " OR ",
            $new_row,
            " IS NOT ",
            $old_row,
            " BEGIN INSERT INTO sync_row_change SELECT '",
            $entity,
            "', ",
            $old_key,
            " || '', NULL WHERE ",
            $old_key,
            " IS NOT ",
            $new_key,
            " AND ",
            $old_key,
            " IS NOT NULL;",
            " INSERT INTO sync_row_change SELECT '",
            $entity,
            "', ",
            $new_key,
            " || '', ",
            $new_row,
            " WHERE ",
            $new_key,
            " IS NOT NULL; END;\n",
            "CREATE TRIGGER ",
            $table,
            "_sync_delete AFTER DELETE ON ",
            $table,
            " WHEN ",
            $old_key,
            " IS NOT NULL BEGIN INSERT INTO sync_row_change VALUES ('",
            $entity,
            "', ",
            $old_key,
            " || '', NULL); END;\n",
        )
    };
}

/// Appended to the tenant migrations: every other table a generation alone carried travels
/// in batches too, row by row, like the settings (see [`V4`]). A row is named by what names
/// it in every copy, never by a local id: a framework or a competency by its URI, a level
/// by its competency's URI and its code, a research member by the project's name and the
/// pupil's agent name, an app's key by the app and the key. A reference to another row is
/// carried the same way (a competency's framework as the framework's URI, a credential's
/// author as an agent name), and blobs as hex. The install history is append-only: its
/// whole content is its key, with the entry's rank among identical ones (the same action
/// twice in one millisecond stays two entries).
pub const V5: &str = concat!(
    rows_travel!(
        "frameworks",
        "framework",
        ("NEW.uri", "OLD.uri"),
        (
            "json_object('version', NEW.version, 'name', NEW.name,
                         'description', NEW.description, 'source', NEW.source)",
            "json_object('version', OLD.version, 'name', OLD.name,
                         'description', OLD.description, 'source', OLD.source)"
        )
    ),
    rows_travel!(
        "competencies",
        "competency",
        ("NEW.uri", "OLD.uri"),
        (
            "json_object('framework_id', (SELECT uri FROM frameworks WHERE id = NEW.framework_id),
                         'code', NEW.code, 'name', NEW.name, 'description', NEW.description,
                         'level_code', NEW.level_code, 'position', NEW.position)",
            "json_object('framework_id', (SELECT uri FROM frameworks WHERE id = OLD.framework_id),
                         'code', OLD.code, 'name', OLD.name, 'description', OLD.description,
                         'level_code', OLD.level_code, 'position', OLD.position)"
        )
    ),
    rows_travel!(
        "competency_relations",
        "competency_relation",
        (
            "(SELECT json_array(s.uri, t.uri, NEW.kind) FROM competencies s, competencies t
              WHERE s.id = NEW.source_id AND t.id = NEW.target_id)",
            "(SELECT json_array(s.uri, t.uri, OLD.kind) FROM competencies s, competencies t
              WHERE s.id = OLD.source_id AND t.id = OLD.target_id)"
        ),
        ("json_object('uri', NEW.uri)", "json_object('uri', OLD.uri)")
    ),
    rows_travel!(
        "competency_levels",
        "competency_level",
        (
            "(SELECT json_array(c.uri, NEW.code) FROM competencies c WHERE c.id = NEW.competency_id)",
            "(SELECT json_array(c.uri, OLD.code) FROM competencies c WHERE c.id = OLD.competency_id)"
        ),
        (
            "json_object('uri', NEW.uri, 'name', NEW.name, 'description', NEW.description,
                         'rank', NEW.rank)",
            "json_object('uri', OLD.uri, 'name', OLD.name, 'description', OLD.description,
                         'rank', OLD.rank)"
        )
    ),
    rows_travel!(
        "activity_alignments",
        "activity_alignment",
        (
            "(SELECT json_array(NEW.activity_iri, c.uri) FROM competencies c
              WHERE c.id = NEW.competency_id)",
            "(SELECT json_array(OLD.activity_iri, c.uri) FROM competencies c
              WHERE c.id = OLD.competency_id)"
        ),
        ("json_object()", "json_object()")
    ),
    rows_travel!(
        "api_credentials",
        "api_credential",
        ("NEW.key_id", "OLD.key_id"),
        (
            "json_object('secret_sha256', hex(NEW.secret_sha256), 'label', NEW.label,
                         'scopes', NEW.scopes,
                         'created_by', (SELECT agent_name FROM users WHERE id = NEW.created_by),
                         'created_at', NEW.created_at, 'revoked_at', NEW.revoked_at)",
            "json_object('secret_sha256', hex(OLD.secret_sha256), 'label', OLD.label,
                         'scopes', OLD.scopes,
                         'created_by', (SELECT agent_name FROM users WHERE id = OLD.created_by),
                         'created_at', OLD.created_at, 'revoked_at', OLD.revoked_at)"
        )
    ),
    rows_travel!(
        "research_projects",
        "research_project",
        ("NEW.name", "OLD.name"),
        (
            "json_object('title', NEW.title, 'quasi_identifiers', NEW.quasi_identifiers,
                         'k', NEW.k, 'max_suppressed', NEW.max_suppressed,
                         'pseudonym_key', hex(NEW.pseudonym_key),
                         'created_by', (SELECT agent_name FROM users WHERE id = NEW.created_by),
                         'created_at', NEW.created_at)",
            "json_object('title', OLD.title, 'quasi_identifiers', OLD.quasi_identifiers,
                         'k', OLD.k, 'max_suppressed', OLD.max_suppressed,
                         'pseudonym_key', hex(OLD.pseudonym_key),
                         'created_by', (SELECT agent_name FROM users WHERE id = OLD.created_by),
                         'created_at', OLD.created_at)"
        )
    ),
    rows_travel!(
        "research_members",
        "research_member",
        (
            "(SELECT json_array(p.name, u.agent_name) FROM research_projects p, users u
              WHERE p.id = NEW.project_id AND u.id = NEW.user_id)",
            "(SELECT json_array(p.name, u.agent_name) FROM research_projects p, users u
              WHERE p.id = OLD.project_id AND u.id = OLD.user_id)"
        ),
        ("json_object()", "json_object()")
    ),
    rows_travel!(
        "apps",
        "app",
        ("NEW.name", "OLD.name"),
        (
            "json_object('version', NEW.version, 'manifest', NEW.manifest, 'sha256', NEW.sha256,
                         'component', hex(NEW.component), 'grants', NEW.grants,
                         'enabled', NEW.enabled, 'installed_at', NEW.installed_at,
                         'installed_by', NEW.installed_by)",
            "json_object('version', OLD.version, 'manifest', OLD.manifest, 'sha256', OLD.sha256,
                         'component', hex(OLD.component), 'grants', OLD.grants,
                         'enabled', OLD.enabled, 'installed_at', OLD.installed_at,
                         'installed_by', OLD.installed_by)"
        )
    ),
    // An app's keys merge one by one, whether or not the app is here: a key written in
    // one copy while another removed the app stays in both (the removal deleted the keys
    // it saw), rather than in one copy only. So no foreign key to the app.
    "CREATE TABLE app_kv_merged (
         app    TEXT NOT NULL,
         key    TEXT NOT NULL,
         value  BLOB NOT NULL,
         PRIMARY KEY (app, key)
     ) WITHOUT ROWID;
     INSERT INTO app_kv_merged SELECT app, key, value FROM app_kv;
     DROP TABLE app_kv;
     ALTER TABLE app_kv_merged RENAME TO app_kv;
     CREATE TABLE sync_waiting (
         id      INTEGER PRIMARY KEY,
         origin  TEXT NOT NULL,
         op      TEXT NOT NULL,
         lacking TEXT NOT NULL
     );\n",
    rows_travel!(
        "app_kv",
        "app_kv",
        (
            "json_array(NEW.app, NEW.key)",
            "json_array(OLD.app, OLD.key)"
        ),
        (
            "json_object('value', hex(NEW.value))",
            "json_object('value', hex(OLD.value))"
        )
    ),
    rows_travel!(
        "app_history",
        "app_history",
        (
            "json_array(NEW.at, NEW.app, NEW.action, NEW.version, NEW.sha256, NEW.grants,
                        NEW.actor,
                        (SELECT count(*) + 1 FROM app_history h WHERE h.id < NEW.id
                           AND h.at = NEW.at AND h.app = NEW.app AND h.action = NEW.action
                           AND h.version = NEW.version AND h.sha256 = NEW.sha256
                           AND h.grants = NEW.grants AND h.actor = NEW.actor))",
            "json_array(OLD.at, OLD.app, OLD.action, OLD.version, OLD.sha256, OLD.grants,
                        OLD.actor,
                        (SELECT count(*) + 1 FROM app_history h WHERE h.id < OLD.id
                           AND h.at = OLD.at AND h.app = OLD.app AND h.action = OLD.action
                           AND h.version = OLD.version AND h.sha256 = OLD.sha256
                           AND h.grants = OLD.grants AND h.actor = OLD.actor))"
        ),
        ("json_object()", "json_object()")
    ),
);

/// A column of a row that travels whole, as its row carries it.
#[derive(Clone, Copy)]
enum Col {
    /// As it is.
    Plain(&'static str),
    /// A blob, as hex.
    Hex(&'static str),
    /// A reference to a row of `table` (by its `id`), carried as that row's `by` column.
    /// A user is named by agent name: one erased makes a required reference drop the row,
    /// an optional one empty. A row that names one not here waits for it (see
    /// [`retry_waiting`]).
    Ref {
        column: &'static str,
        table: &'static str,
        by: &'static str,
        required: bool,
    },
}

impl Col {
    fn name(self) -> &'static str {
        match self {
            Col::Plain(c) | Col::Hex(c) | Col::Ref { column: c, .. } => c,
        }
    }
}

const fn plain(c: &'static str) -> Col {
    Col::Plain(c)
}

const fn parent(column: &'static str, table: &'static str, by: &'static str) -> Col {
    Col::Ref {
        column,
        table,
        by,
        required: true,
    }
}

const fn author(column: &'static str) -> Col {
    Col::Ref {
        column,
        table: "users",
        by: "agent_name",
        required: false,
    }
}

const COMPETENCY: &str = "competencies";

/// A table whose rows travel whole (see [`V4`], [`V5`]): the entity its operations name,
/// the columns of its key (one: the key is its value; more: a JSON array of their values),
/// the other columns its row carries, those set to the time of the merge when a merge
/// makes the row, and one set to it at every merge. A `ranked` table's rows may be
/// identical: its key ends with the row's rank among them (1 for the first, by `id`).
struct RowTable {
    entity: &'static str,
    table: &'static str,
    key: &'static [Col],
    ranked: bool,
    columns: &'static [Col],
    created: &'static [&'static str],
    touched: Option<&'static str>,
}

const ROW_TABLES: &[RowTable] = &[
    RowTable {
        entity: "setting",
        table: "tenant_settings",
        ranked: false,
        key: &[plain("key")],
        columns: &[plain("value")],
        created: &[],
        touched: None,
    },
    RowTable {
        entity: "org",
        table: "orgs",
        ranked: false,
        key: &[plain("sourced_id")],
        columns: &[
            plain("active"),
            plain("identifier"),
            plain("name"),
            plain("org_type"),
            plain("parent_sourced_id"),
        ],
        created: &[],
        touched: Some("updated_at"),
    },
    RowTable {
        entity: "framework",
        table: "frameworks",
        ranked: false,
        key: &[plain("uri")],
        columns: &[
            plain("version"),
            plain("name"),
            plain("description"),
            plain("source"),
        ],
        created: &["created_at"],
        touched: Some("updated_at"),
    },
    RowTable {
        entity: "competency",
        table: COMPETENCY,
        ranked: false,
        key: &[plain("uri")],
        columns: &[
            parent("framework_id", "frameworks", "uri"),
            plain("code"),
            plain("name"),
            plain("description"),
            plain("level_code"),
            plain("position"),
        ],
        created: &[],
        touched: None,
    },
    RowTable {
        entity: "competency_relation",
        table: "competency_relations",
        ranked: false,
        key: &[
            parent("source_id", COMPETENCY, "uri"),
            parent("target_id", COMPETENCY, "uri"),
            plain("kind"),
        ],
        columns: &[plain("uri")],
        created: &[],
        touched: None,
    },
    RowTable {
        entity: "competency_level",
        table: "competency_levels",
        ranked: false,
        key: &[parent("competency_id", COMPETENCY, "uri"), plain("code")],
        columns: &[
            plain("uri"),
            plain("name"),
            plain("description"),
            plain("rank"),
        ],
        created: &[],
        touched: None,
    },
    RowTable {
        entity: "activity_alignment",
        table: "activity_alignments",
        ranked: false,
        key: &[
            plain("activity_iri"),
            parent("competency_id", COMPETENCY, "uri"),
        ],
        columns: &[],
        created: &[],
        touched: None,
    },
    RowTable {
        entity: "api_credential",
        table: "api_credentials",
        ranked: false,
        key: &[plain("key_id")],
        columns: &[
            Col::Hex("secret_sha256"),
            plain("label"),
            plain("scopes"),
            author("created_by"),
            plain("created_at"),
            plain("revoked_at"),
        ],
        created: &[],
        touched: None,
    },
    RowTable {
        entity: "research_project",
        table: "research_projects",
        ranked: false,
        key: &[plain("name")],
        columns: &[
            plain("title"),
            plain("quasi_identifiers"),
            plain("k"),
            plain("max_suppressed"),
            Col::Hex("pseudonym_key"),
            author("created_by"),
            plain("created_at"),
        ],
        created: &[],
        touched: None,
    },
    RowTable {
        entity: "research_member",
        table: "research_members",
        ranked: false,
        key: &[
            parent("project_id", "research_projects", "name"),
            parent("user_id", "users", "agent_name"),
        ],
        columns: &[],
        created: &[],
        touched: None,
    },
    RowTable {
        entity: "app",
        table: "apps",
        ranked: false,
        key: &[plain("name")],
        columns: &[
            plain("version"),
            plain("manifest"),
            plain("sha256"),
            Col::Hex("component"),
            plain("grants"),
            plain("enabled"),
            plain("installed_at"),
            plain("installed_by"),
        ],
        created: &[],
        touched: Some("updated_at"),
    },
    RowTable {
        entity: "app_kv",
        table: "app_kv",
        ranked: false,
        key: &[plain("app"), plain("key")],
        columns: &[Col::Hex("value")],
        created: &[],
        touched: None,
    },
    RowTable {
        entity: "app_history",
        table: "app_history",
        ranked: true,
        key: &[
            plain("at"),
            plain("app"),
            plain("action"),
            plain("version"),
            plain("sha256"),
            plain("grants"),
            plain("actor"),
        ],
        columns: &[],
        created: &[],
        touched: None,
    },
];

/// How each table of a tenant database reaches another copy of the tenant. Every table is
/// in exactly one of these lists (a test checks it, so a new table cannot be forgotten).
///
/// Carried by batches: statements with their attachments, documents, users, classes and
/// enrolments (field by field), evidence other than what statements give, and level
/// decisions (append-only, by their global ids), and the other tables row by row (see
/// [`V4`], [`V5`]). (Evidence and level decisions deleted otherwise than by an erasure, by
/// a retention run logged before runs named what they deleted, mark the change log: only a
/// generation carries those, see [`V2`].)
pub const CARRIED: &[&str] = &[
    "xapi_statements",
    "xapi_attachments",
    "xapi_statement_attachments",
    "xapi_documents",
    "users",
    "classes",
    "enrolments",
    "evidence",
    "level_decisions",
    "tenant_settings",
    "orgs",
    "frameworks",
    "competencies",
    "competency_relations",
    "competency_levels",
    "activity_alignments",
    "api_credentials",
    "research_projects",
    "research_members",
    "apps",
    "app_kv",
    "app_history",
];

/// The tables whose rows travel whole (see [`V4`], [`V5`]).
pub fn row_tables() -> impl Iterator<Item = &'static str> {
    ROW_TABLES.iter().map(|t| t.table)
}
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
    "sync_waiting",
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

/// What merging `op` from copy `origin` would do, and the version it meets, changing
/// nothing (`me`: this copy's own name, for versions stored with origin `''`).
fn merging(
    conn: &Connection,
    op: &FieldOp,
    origin: &str,
    me: &str,
) -> Result<(Merged, Option<(Version, String)>), StoreError> {
    let named = |o: &str| if o.is_empty() { me } else { o }.to_string();
    let Some(current) = version(conn, &op.e, &op.k, &op.f)? else {
        return Ok((Merged::Followed, None));
    };
    let current_origin = named(&current.origin);
    // The same copy wrote this row again since: it had seen its own earlier write.
    let merged = if current_origin == origin && op.h <= current.hlc {
        Merged::Known
    } else if current.hlc == op.p && current_origin == named(&op.po) {
        Merged::Followed
    } else if (op.h, origin) > (current.hlc, current_origin.as_str()) {
        Merged::Won
    } else {
        Merged::Lost
    };
    Ok((merged, Some((current, current_origin))))
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
    let (merged, current) = merging(conn, op, origin, me)?;
    if let (Merged::Won | Merged::Lost, Some((current, current_origin))) = (merged, current) {
        let here = (&current.value, current.hlc, current_origin.as_str());
        let there = (&op.v, op.h, origin);
        let (kept, lost) = match merged {
            Merged::Won => (there, here),
            _ => (here, there),
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
    }
    if matches!(merged, Merged::Followed | Merged::Won) {
        set_version(conn, op, origin)?;
    }
    Ok(merged)
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

/// Forgets the rows' operations of the change log after `after` through `through`, once
/// the hub holds them: a row's operation carries the whole row (an app's component, a
/// research project's key), which the table and its version already hold. Statements,
/// documents and the other changes stay: they name their records rather than copy them.
pub fn compact(conn: &Connection, after: i64, through: i64) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM change_log WHERE seq > ?1 AND seq <= ?2 AND kind = 'field'
               AND json_extract(subject, '$.f') = 'row'",
        )?
        .execute(params![after, through])?)
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

/// Forgets the field versions and logged operations of an erased user (and of their
/// enrolments, research memberships and apps' keys), and remembers that they were erased: a batch that still names them
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
    // Rows that name them: research memberships by agent name, apps' keys by pseudonym
    // (the second part of the row's key, which these prefixes start, `/` ended).
    let mut traces = vec![("research_member", format!("{agent_name}/"))];
    let secret = super::ai::pseudonym_key(conn)?;
    let apps: Vec<String> = conn
        .prepare_cached(
            "SELECT DISTINCT json_extract(key, '$[0]') FROM sync_versions WHERE entity = 'app_kv'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for app in apps {
        let pseudonym = super::apps::user_pseudonym(&secret, &app, agent_name);
        traces.push(("app_kv", format!("u/{pseudonym}/")));
    }
    for (entity, prefix) in &traces {
        for sql in [
            "DELETE FROM sync_versions WHERE entity = ?1
               AND substr(json_extract(key, '$[1]') || '/', 1, length(?2)) = ?2",
            "DELETE FROM sync_conflicts WHERE entity = ?1
               AND substr(json_extract(key, '$[1]') || '/', 1, length(?2)) = ?2",
            "DELETE FROM change_log WHERE kind = 'field' AND CASE
               WHEN json_extract(subject, '$.e') = ?1 AND json_extract(subject, '$.f') = 'row'
               THEN substr(json_extract(json_extract(subject, '$.k'), '$[1]') || '/',
                           1, length(?2)) = ?2 END",
        ] {
            conn.prepare_cached(sql)?.execute(params![entity, prefix])?;
        }
    }
    // A change held back that names them (a membership waiting for its project).
    conn.prepare_cached("DELETE FROM sync_waiting WHERE instr(op, ?1) > 0")?
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

/// Applies again the rows held back because they name one not here (another copy's
/// batch may bring it later: batches of different copies arrive in any order), until
/// none applies; returns what those still waiting lack.
pub fn retry_waiting(conn: &Connection, me: &str, at: i64) -> Result<Vec<String>, StoreError> {
    loop {
        let waiting: Vec<(i64, String, String)> = conn
            .prepare_cached("SELECT id, origin, op FROM sync_waiting ORDER BY id")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let mut applied = false;
        for (id, origin, op) in waiting {
            let op: FieldOp = serde_json::from_str(&op).map_err(|e| {
                StoreError::Conflict(format!("a waiting change is unreadable: {e}"))
            })?;
            if let Outcome::Merged(_) = apply_row(conn, &op, &origin, me, at)? {
                conn.prepare_cached("DELETE FROM sync_waiting WHERE id = ?1")?
                    .execute([id])?;
                applied = true;
            }
        }
        if !applied {
            return awaited(conn);
        }
    }
}

/// The rows not here that rows held back wait for (see [`retry_waiting`]).
pub fn awaited(conn: &Connection) -> Result<Vec<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT DISTINCT lacking FROM sync_waiting ORDER BY 1")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Merges a field operation from copy `origin` and, when it wins, writes its value into
/// the record (creating the record when this is its first field here). Returns what the
/// merge did, or what the record names that is not here.
pub fn apply_field(
    conn: &Connection,
    op: &FieldOp,
    origin: &str,
    me: &str,
    at: i64,
) -> Result<Outcome, StoreError> {
    if op.f == ROW_FIELD {
        let outcome = apply_row(conn, op, origin, me, at)?;
        if let Outcome::Lacking(what) = &outcome {
            conn.prepare_cached(
                "INSERT INTO sync_waiting (origin, op, lacking) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![
                origin,
                serde_json::to_string(op)
                    .map_err(|e| StoreError::Conflict(format!("a change cannot wait: {e}")))?,
                what
            ])?;
        }
        return Ok(outcome);
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
        return Ok(Outcome::Merged(Merged::Lost));
    }
    let merged = merge_field(conn, op, origin, me, at)?;
    if matches!(merged, Merged::Followed | Merged::Won) {
        write_field(conn, op, at)?;
    }
    Ok(Outcome::Merged(merged))
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

/// What applying a field or row operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Merged(Merged),
    /// The row names another that is not here (`what`): nothing changed, and the version
    /// is not recorded; [`apply_field`] keeps the operation until that row comes.
    Lacking(String),
}

/// Merges a row operation from copy `origin` and, when it wins, writes the row (or deletes
/// it). A copy's own bookkeeping settings are never taken from another. References are
/// resolved first: to an erased pupil, the row is dropped (a required reference) or loses
/// it (an optional one); to another row not here, nothing is applied and that row is
/// lacking (unless this copy's version wins anyway). An app's key under the pseudonym of an
/// erased pupil is dropped.
fn apply_row(
    conn: &Connection,
    op: &FieldOp,
    origin: &str,
    me: &str,
    at: i64,
) -> Result<Outcome, StoreError> {
    use rusqlite::types::Value as Sql;
    let Some(table) = ROW_TABLES.iter().find(|t| t.entity == op.e) else {
        return Err(StoreError::Conflict(format!(
            "unknown record kind `{}`",
            op.e
        )));
    };
    let not_a_key = || StoreError::Conflict(format!("`{}` is not the key of a {}", op.k, op.e));
    let len = table.key.len() + usize::from(table.ranked);
    let mut key: Vec<Value> = if len == 1 {
        vec![Value::from(op.k.clone())]
    } else {
        match serde_json::from_str::<Vec<Value>>(&op.k) {
            Ok(parts) if parts.len() == len => parts,
            _ => return Err(not_a_key()),
        }
    };
    // The row's rank among identical ones: held when this copy has that many.
    let rank = match table.ranked {
        false => 1,
        true => match key.pop().and_then(|r| r.as_i64()) {
            Some(r) if r >= 1 => r,
            _ => return Err(not_a_key()),
        },
    };
    let row = match &op.v {
        Value::Null => None,
        Value::Object(row) => Some(
            table
                .columns
                .iter()
                .map(|c| row.get(c.name()).cloned().unwrap_or(Value::Null))
                .collect::<Vec<_>>(),
        ),
        _ => {
            return Err(StoreError::Conflict(format!(
                "the row of {} `{}` is not an object",
                op.e, op.k
            )));
        }
    };
    if op.e == "setting" && LOCAL_SETTINGS.contains(&op.k.as_str())
        || op.e == "app_kv" && under_erased_pseudonym(conn, &key)?
    {
        return Ok(Outcome::Merged(Merged::Lost));
    }
    let mut key_params = Vec::with_capacity(key.len());
    for (col, value) in table.key.iter().zip(&key) {
        match resolve(conn, *col, value)? {
            Resolved::Value(v) => key_params.push(v),
            Resolved::Erased => return Ok(Outcome::Merged(Merged::Lost)),
            // A row that is not here cannot be deleted here.
            Resolved::Missing(_) if row.is_none() => {
                return merge_field(conn, op, origin, me, at).map(Outcome::Merged);
            }
            Resolved::Missing(what) => return lacking(conn, op, origin, me, at, what),
        }
    }
    let mut row_params = Vec::new();
    for (col, value) in table.columns.iter().zip(row.iter().flatten()) {
        match resolve(conn, *col, value)? {
            Resolved::Value(v) => row_params.push(v),
            Resolved::Erased => return Ok(Outcome::Merged(Merged::Lost)),
            Resolved::Missing(what) => return lacking(conn, op, origin, me, at, what),
        }
    }
    let merged = merge_field(conn, op, origin, me, at)?;
    if !matches!(merged, Merged::Followed | Merged::Won) {
        return Ok(Outcome::Merged(merged));
    }
    let found = table
        .key
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} IS ?{}", c.name(), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ");
    let held =
        conn.prepare_cached(&format!(
            "SELECT count(*) FROM {} WHERE {found}",
            table.table
        ))?
        .query_row(rusqlite::params_from_iter(&key_params), |r| {
            r.get::<_, i64>(0)
        })? >= rank;
    let mut set: Vec<&str> = table.columns.iter().map(|c| c.name()).collect();
    if let Some(touched) = table.touched {
        set.push(touched);
        row_params.push(Sql::Integer(at));
    }
    match (row, held) {
        (None, _) if table.ranked => {
            let sql = format!(
                "DELETE FROM {0} WHERE rowid = (SELECT rowid FROM {0} WHERE {found}
                                                ORDER BY rowid LIMIT 1 OFFSET {1})",
                table.table,
                rank - 1
            );
            conn.prepare_cached(&sql)?
                .execute(rusqlite::params_from_iter(&key_params))?;
        }
        (None, _) => {
            conn.prepare_cached(&format!("DELETE FROM {} WHERE {found}", table.table))?
                .execute(rusqlite::params_from_iter(&key_params))?;
        }
        (Some(_), true) if !set.is_empty() => {
            let n = key_params.len();
            let sql = format!(
                "UPDATE {} SET {} WHERE {found}",
                table.table,
                set.iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c} = ?{}", n + i + 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            key_params.extend(row_params);
            conn.prepare_cached(&sql)?
                .execute(rusqlite::params_from_iter(&key_params))?;
        }
        (Some(_), true) => {}
        (Some(_), false) => {
            let mut columns: Vec<&str> = table.key.iter().map(|c| c.name()).collect();
            columns.extend(set);
            key_params.extend(row_params);
            for created in table.created {
                columns.push(created);
                key_params.push(Sql::Integer(at));
            }
            let sql = format!(
                "INSERT INTO {} ({}) VALUES ({})",
                table.table,
                columns.join(", "),
                (1..=columns.len())
                    .map(|i| format!("?{i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            conn.prepare_cached(&sql)?
                .execute(rusqlite::params_from_iter(&key_params))?;
        }
    }
    // The write's own trigger stamped the row as a change made here: it is the merged one.
    set_version(conn, op, origin)?;
    Ok(Outcome::Merged(merged))
}

/// A row that refers to one not here: lacking, unless what this copy holds of it wins
/// anyway (a later deletion here of the row and its parent), a conflict like any other.
fn lacking(
    conn: &Connection,
    op: &FieldOp,
    origin: &str,
    me: &str,
    at: i64,
    what: String,
) -> Result<Outcome, StoreError> {
    match merging(conn, op, origin, me)?.0 {
        Merged::Known | Merged::Lost => merge_field(conn, op, origin, me, at).map(Outcome::Merged),
        Merged::Followed | Merged::Won => Ok(Outcome::Lacking(what)),
    }
}

/// A value of a row as this copy's database holds it.
enum Resolved {
    Value(rusqlite::types::Value),
    /// A reference to an erased pupil that the row cannot lose.
    Erased,
    /// A reference to a row not here.
    Missing(String),
}

fn resolve(conn: &Connection, col: Col, value: &Value) -> Result<Resolved, StoreError> {
    use rusqlite::types::Value as Sql;
    match (col, value) {
        (_, Value::Null) => Ok(Resolved::Value(Sql::Null)),
        (Col::Plain(_), v) => Ok(Resolved::Value(sql_param(v))),
        (Col::Hex(c), v) => v
            .as_str()
            .and_then(hex_bytes)
            .map(|b| Resolved::Value(Sql::Blob(b)))
            .ok_or_else(|| StoreError::Conflict(format!("`{c}` is not hex"))),
        (
            Col::Ref {
                table,
                by,
                required,
                ..
            },
            v,
        ) => {
            let local: Option<Sql> = conn
                .prepare_cached(&format!("SELECT id FROM {table} WHERE {by} = ?1"))?
                .query_row([sql_param(v)], |r| r.get(0))
                .optional()?;
            let erased = match (&local, table, v.as_str()) {
                (None, "users", Some(agent)) => is_erased(conn, agent)?,
                _ => false,
            };
            Ok(match local {
                Some(local) => Resolved::Value(local),
                None if erased && required => Resolved::Erased,
                None if !required => Resolved::Value(Sql::Null),
                None => Resolved::Missing(format!("{table} {v}")),
            })
        }
    }
}

fn hex_bytes(h: &str) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether an app's key (`[app, key]`) is under the pseudonym of an erased pupil.
fn under_erased_pseudonym(conn: &Connection, key: &[Value]) -> Result<bool, StoreError> {
    let (Some(app), Some(k)) = (key[0].as_str(), key[1].as_str()) else {
        return Ok(false);
    };
    let Some(pseudonym) = k.strip_prefix("u/").and_then(|rest| rest.split('/').next()) else {
        return Ok(false);
    };
    let erased = erased_agents(conn)?;
    if erased.is_empty() {
        return Ok(false);
    }
    let secret = super::ai::pseudonym_key(conn)?;
    Ok(erased
        .iter()
        .any(|a| super::apps::user_pseudonym(&secret, app, a) == pseudonym))
}
