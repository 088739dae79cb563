//! SQL of the assessment engine in a tenant database: frameworks, evidence, mastery
//! estimates, the hash-chained journal, level decisions and suggestions.
//!
//! The journal (`assessment_journal`) is append-only (triggers refuse updates of its chained
//! columns and every delete). Entry `n` carries `hash = SHA-256(prev_hash ‖ seq ‖ at ‖ kind
//! ‖ 0 ‖ body_sha256)` with `body_sha256 = SHA-256(salt ‖ body)`: erasing a pupil removes
//! the body and salt of their entries and keeps the chain verifiable, and without the salt
//! the digest of a short body cannot be brute-forced back into the pupil's figures.
//! [`verify_journal`] walks the chain, recomputes every score entry from the evidence it
//! names, and compares the end state with the stored estimates.
//!
//! Must not: decide who may call it (the `http` handlers and [`crate::competency`] do), or
//! store a level decided by anyone but a teacher of the pupil (the database refuses it too).

use std::collections::HashMap;

use ring::digest;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};

use super::StoreError;
use crate::competency::mastery::{self, Row};
use crate::competency::{
    Actor, EvidenceKind, Framework, FrameworkCompetency, FrameworkLevel, NewEvidence, Refusal,
    Relation, RelationKind, Source, Text,
};

/// Appended to the tenant migrations.
pub const V1: &str = "
CREATE TABLE frameworks (
    id          INTEGER PRIMARY KEY,
    uri         TEXT NOT NULL UNIQUE,
    version     TEXT NOT NULL DEFAULT '',
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE competencies (
    id           INTEGER PRIMARY KEY,
    framework_id INTEGER NOT NULL REFERENCES frameworks(id),
    uri          TEXT NOT NULL UNIQUE,
    code         TEXT NOT NULL,
    name         TEXT NOT NULL,
    description  TEXT NOT NULL,
    level_code   TEXT,
    position     INTEGER NOT NULL
);
CREATE INDEX competencies_by_framework ON competencies(framework_id, position);
CREATE TABLE competency_relations (
    id        INTEGER PRIMARY KEY,
    uri       TEXT UNIQUE,
    source_id INTEGER NOT NULL REFERENCES competencies(id),
    target_id INTEGER NOT NULL REFERENCES competencies(id),
    kind      TEXT NOT NULL CHECK (kind IN ('narrows', 'requires', 'isEquivalentTo')),
    UNIQUE (source_id, target_id, kind)
);
CREATE INDEX competency_relations_by_target ON competency_relations(target_id, kind);
CREATE TABLE competency_levels (
    id            INTEGER PRIMARY KEY,
    competency_id INTEGER NOT NULL REFERENCES competencies(id),
    uri           TEXT UNIQUE,
    code          TEXT NOT NULL,
    name          TEXT NOT NULL,
    description   TEXT NOT NULL,
    rank          INTEGER NOT NULL,
    UNIQUE (competency_id, code)
);
CREATE TABLE activity_alignments (
    activity_iri  TEXT NOT NULL,
    competency_id INTEGER NOT NULL REFERENCES competencies(id),
    PRIMARY KEY (activity_iri, competency_id)
) WITHOUT ROWID;
-- Append-only: a correction or a withdrawal is a new row naming the row it replaces.
CREATE TABLE evidence (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    pupil_id      INTEGER NOT NULL REFERENCES users(id),
    competency_id INTEGER NOT NULL REFERENCES competencies(id),
    source        TEXT NOT NULL CHECK (source IN ('xapi', 'observation', 'self')),
    kind          TEXT NOT NULL CHECK (kind IN ('record', 'correction', 'withdrawal')),
    supersedes    INTEGER REFERENCES evidence(id),
    value_bp      INTEGER CHECK (value_bp BETWEEN 0 AND 10000),
    scale_level   INTEGER,
    comment       TEXT NOT NULL,
    statement_id  TEXT,
    actor         TEXT NOT NULL,
    at            INTEGER NOT NULL,
    CHECK ((kind = 'withdrawal') = (value_bp IS NULL)),
    CHECK ((kind = 'record') = (supersedes IS NULL))
);
CREATE INDEX evidence_by_pair ON evidence(pupil_id, competency_id, id);
CREATE UNIQUE INDEX evidence_by_statement ON evidence(statement_id, competency_id)
    WHERE statement_id IS NOT NULL AND kind = 'record';
CREATE UNIQUE INDEX evidence_superseded_once ON evidence(supersedes)
    WHERE supersedes IS NOT NULL;
CREATE TRIGGER evidence_is_append_only BEFORE UPDATE ON evidence
BEGIN
    SELECT RAISE(ABORT, 'evidence is append-only: record a correction or a withdrawal');
END;
CREATE TABLE scores (
    pupil_id       INTEGER NOT NULL REFERENCES users(id),
    competency_id  INTEGER NOT NULL REFERENCES competencies(id),
    mastery_bp     INTEGER NOT NULL,
    evidence_count INTEGER NOT NULL,
    algorithm      TEXT NOT NULL,
    journal_seq    INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (pupil_id, competency_id)
) WITHOUT ROWID;
CREATE TABLE assessment_journal (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    at            INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    subject_id    INTEGER,
    competency_id INTEGER,
    body          TEXT,
    salt          BLOB,
    body_sha256   BLOB NOT NULL,
    prev_hash     BLOB NOT NULL,
    hash          BLOB NOT NULL
);
CREATE INDEX assessment_journal_by_subject ON assessment_journal(subject_id)
    WHERE subject_id IS NOT NULL;
CREATE TRIGGER assessment_journal_no_delete BEFORE DELETE ON assessment_journal
BEGIN
    SELECT RAISE(ABORT, 'the assessment journal is append-only');
END;
CREATE TRIGGER assessment_journal_chain_is_final
BEFORE UPDATE OF seq, at, kind, body_sha256, prev_hash, hash ON assessment_journal
BEGIN
    SELECT RAISE(ABORT, 'the assessment journal is append-only');
END;
-- Erasure and retention may only blank an entry's content, never rewrite it.
CREATE TRIGGER assessment_journal_only_redacted
BEFORE UPDATE OF body, salt, subject_id, competency_id ON assessment_journal
WHEN NEW.body IS NOT NULL OR NEW.salt IS NOT NULL
  OR (NEW.subject_id IS NOT NULL AND NEW.subject_id IS NOT OLD.subject_id)
  OR (NEW.competency_id IS NOT NULL AND NEW.competency_id IS NOT OLD.competency_id)
BEGIN
    SELECT RAISE(ABORT, 'a journal entry can only be redacted');
END;
CREATE TABLE level_suggestions (
    id             INTEGER PRIMARY KEY,
    pupil_key      TEXT NOT NULL,
    competency_uri TEXT NOT NULL,
    level_code     TEXT NOT NULL,
    rationale      TEXT NOT NULL DEFAULT '',
    source         TEXT NOT NULL,
    at             INTEGER NOT NULL
);
CREATE INDEX level_suggestions_by_pupil ON level_suggestions(pupil_key);
CREATE TABLE level_decisions (
    id            INTEGER PRIMARY KEY,
    pupil_id      INTEGER NOT NULL REFERENCES users(id),
    competency_id INTEGER NOT NULL REFERENCES competencies(id),
    level_code    TEXT NOT NULL,
    decided_by    INTEGER NOT NULL REFERENCES users(id),
    justification TEXT NOT NULL CHECK (length(trim(justification)) > 0),
    evidence_ids  TEXT NOT NULL CHECK (json_array_length(evidence_ids) > 0),
    suggestion_id INTEGER REFERENCES level_suggestions(id),
    journal_seq   INTEGER NOT NULL,
    at            INTEGER NOT NULL
);
CREATE INDEX level_decisions_by_pupil ON level_decisions(pupil_id, competency_id, id);
-- Only a teacher of the pupil (an active teacher account, enrolled as teacher in a class
-- where the pupil is enrolled as student) decides a level; no other principal can.
CREATE TRIGGER level_decisions_by_a_teacher_of_the_pupil BEFORE INSERT ON level_decisions
WHEN NOT EXISTS (
    SELECT 1 FROM enrolments t
    JOIN enrolments p ON p.class_id = t.class_id AND p.role = 'student'
    JOIN users u ON u.id = t.user_id AND u.role = 'teacher' AND u.active = 1
    WHERE t.user_id = NEW.decided_by AND t.role = 'teacher' AND p.user_id = NEW.pupil_id
)
BEGIN
    SELECT RAISE(ABORT, 'only a teacher of this pupil decides a level');
END;
CREATE TRIGGER level_decisions_are_final BEFORE UPDATE ON level_decisions
BEGIN
    SELECT RAISE(ABORT, 'a level decision is final: decide again to change it');
END;
-- What the AI principal may read (see store::ai): derived figures under a keyed pseudonym,
-- never evidence, comments, names or user ids. Refreshed from the tables above by trusted
-- code each time an AI handle opens.
CREATE TABLE ai_features (
    pupil_key      TEXT NOT NULL,
    competency_uri TEXT NOT NULL,
    mastery_bp     INTEGER NOT NULL,
    evidence_count INTEGER NOT NULL,
    day            INTEGER NOT NULL,
    PRIMARY KEY (pupil_key, competency_uri)
) WITHOUT ROWID;
CREATE TABLE ai_levels (
    pupil_key      TEXT NOT NULL,
    competency_uri TEXT NOT NULL,
    level_code     TEXT NOT NULL,
    day            INTEGER NOT NULL
);
CREATE TABLE ai_competencies (
    uri           TEXT PRIMARY KEY,
    framework_uri TEXT NOT NULL,
    code          TEXT NOT NULL,
    name          TEXT NOT NULL,
    level_code    TEXT,
    narrows       TEXT
) WITHOUT ROWID;
";

/// The trigger of a recalculation after retention deleted some of a pair's evidence.
pub const RETENTION: &str = "retention";

/// The chain's first `prev_hash`.
const GENESIS: [u8; 32] = [0; 32];

fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().to_vec()
}

fn entry_hash(prev: &[u8], seq: i64, at: i64, kind: &str, body_sha256: &[u8]) -> Vec<u8> {
    sha256(&[
        prev,
        &seq.to_be_bytes(),
        &at.to_be_bytes(),
        kind.as_bytes(),
        &[0],
        body_sha256,
    ])
}

fn salt() -> Result<[u8; 16], StoreError> {
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| StoreError::Conflict("the system random source failed".into()))?;
    Ok(salt)
}

/// Appends an entry to the journal; returns its `seq`.
pub fn append_journal(
    conn: &Connection,
    kind: &str,
    subject: Option<i64>,
    competency: Option<i64>,
    body: &Value,
    at: i64,
) -> Result<i64, StoreError> {
    let (last, prev): (i64, Vec<u8>) = conn
        .prepare_cached("SELECT seq, hash FROM assessment_journal ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, GENESIS.to_vec()));
    // AUTOINCREMENT: a seq is never reused, even after the last entry vanished.
    let used: i64 = conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'assessment_journal'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let seq = last.max(used) + 1;
    let text = body.to_string();
    let salt = salt()?;
    let body_sha256 = sha256(&[&salt, text.as_bytes()]);
    let hash = entry_hash(&prev, seq, at, kind, &body_sha256);
    conn.prepare_cached(
        "INSERT INTO assessment_journal
             (seq, at, kind, subject_id, competency_id, body, salt, body_sha256, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        seq,
        at,
        kind,
        subject,
        competency,
        text,
        &salt[..],
        body_sha256,
        prev,
        hash
    ])?;
    Ok(seq)
}

// ---------------------------------------------------------------------------------------
// Frameworks

fn text_json(t: &Text) -> String {
    serde_json::to_string(t).unwrap_or_default()
}

fn parse_text(s: &str) -> Text {
    serde_json::from_str(s).unwrap_or_else(|_| Text::same(s))
}

/// Stores a framework: new competencies, levels and relations are added, existing ones
/// (same URI) take the new names. Nothing is deleted: evidence may point at any of them.
pub fn store_framework(conn: &Connection, f: &Framework, at: i64) -> Result<i64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO frameworks (uri, version, name, description, source, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
         ON CONFLICT (uri) DO UPDATE SET version = excluded.version, name = excluded.name,
             description = excluded.description, updated_at = excluded.updated_at",
    )?
    .execute(params![
        f.uri,
        f.version,
        text_json(&f.name),
        text_json(&f.description),
        f.source,
        at
    ])?;
    let framework_id: i64 = conn
        .prepare_cached("SELECT id FROM frameworks WHERE uri = ?1")?
        .query_row([&f.uri], |r| r.get(0))?;
    for (position, c) in f.competencies.iter().enumerate() {
        let existing: Option<i64> = conn
            .prepare_cached("SELECT framework_id FROM competencies WHERE uri = ?1")?
            .query_row([&c.uri], |r| r.get(0))
            .optional()?;
        if existing.is_some_and(|owner| owner != framework_id) {
            return Err(StoreError::Conflict(format!(
                "competency {} already belongs to another framework",
                c.uri
            )));
        }
        conn.prepare_cached(
            "INSERT INTO competencies
                 (framework_id, uri, code, name, description, level_code, position)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (uri) DO UPDATE SET code = excluded.code, name = excluded.name,
                 description = excluded.description, level_code = excluded.level_code,
                 position = excluded.position",
        )?
        .execute(params![
            framework_id,
            c.uri,
            c.code,
            text_json(&c.name),
            text_json(&c.description),
            c.level_code,
            position as i64
        ])?;
        let competency_id = competency_id(conn, &c.uri)?.ok_or(StoreError::NotFound)?;
        for (rank, l) in c.levels.iter().enumerate() {
            conn.prepare_cached(
                "INSERT INTO competency_levels
                     (competency_id, uri, code, name, description, rank)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (competency_id, code) DO UPDATE SET uri = excluded.uri,
                     name = excluded.name, description = excluded.description,
                     rank = excluded.rank",
            )?
            .execute(params![
                competency_id,
                l.uri,
                l.code,
                text_json(&l.name),
                text_json(&l.description),
                rank as i64
            ])?;
        }
    }
    for r in &f.relations {
        let (Some(source), Some(target)) = (
            competency_id(conn, &r.source)?,
            competency_id(conn, &r.target)?,
        ) else {
            return Err(StoreError::Conflict(format!(
                "relation {} → {} names a competency that does not exist",
                r.source, r.target
            )));
        };
        conn.prepare_cached(
            "INSERT INTO competency_relations (uri, source_id, target_id, kind)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        )?
        .execute(params![r.uri, source, target, r.kind.as_str()])?;
    }
    Ok(framework_id)
}

/// Stores the built-in CEFR framework unless this version of it is already there.
pub fn seed_builtin(conn: &Connection) -> Result<(), StoreError> {
    let f = crate::competency::cefr::framework()
        .map_err(|e| StoreError::Conflict(format!("the built-in CEFR framework: {e}")))?;
    let stored: Option<String> = conn
        .prepare_cached("SELECT version FROM frameworks WHERE uri = ?1")?
        .query_row([&f.uri], |r| r.get(0))
        .optional()?;
    if stored.as_deref() != Some(f.version.as_str()) {
        store_framework(conn, &f, super::now())?;
    }
    Ok(())
}

pub fn competency_id(conn: &Connection, uri: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM competencies WHERE uri = ?1")?
        .query_row([uri], |r| r.get(0))
        .optional()?)
}

/// A framework as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FrameworkRow {
    pub id: i64,
    pub uri: String,
    pub version: String,
    pub name: Text,
    pub source: String,
}

pub fn frameworks(conn: &Connection) -> Result<Vec<FrameworkRow>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT id, uri, version, name, source FROM frameworks ORDER BY id")?;
    let rows = stmt
        .query_map([], |r| {
            Ok(FrameworkRow {
                id: r.get(0)?,
                uri: r.get(1)?,
                version: r.get(2)?,
                name: parse_text(&r.get::<_, String>(3)?),
                source: r.get(4)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A competency as stored, with its place in its framework.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompetencyRow {
    pub id: i64,
    pub framework_id: i64,
    pub uri: String,
    pub code: String,
    pub name: Text,
    pub level_code: Option<String>,
    /// The competency this one narrows, if any (a descriptor's skill).
    pub parent_id: Option<i64>,
    /// The levels decided on it (a skill), in order.
    pub levels: Vec<LevelRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LevelRef {
    pub code: String,
    pub name: Text,
}

pub fn competencies(
    conn: &Connection,
    framework_id: i64,
) -> Result<Vec<CompetencyRow>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.id, c.framework_id, c.uri, c.code, c.name, c.level_code,
                (SELECT r.target_id FROM competency_relations r
                  WHERE r.source_id = c.id AND r.kind = 'narrows' ORDER BY r.id LIMIT 1),
                (SELECT json_group_array(json_object('code', code, 'name', json(name))) FROM
                    (SELECT code, name FROM competency_levels l WHERE l.competency_id = c.id
                      ORDER BY rank))
         FROM competencies c WHERE c.framework_id = ?1 ORDER BY c.position, c.id",
    )?;
    let rows = stmt
        .query_map([framework_id], |r| {
            Ok(CompetencyRow {
                id: r.get(0)?,
                framework_id: r.get(1)?,
                uri: r.get(2)?,
                code: r.get(3)?,
                name: parse_text(&r.get::<_, String>(4)?),
                level_code: r.get(5)?,
                parent_id: r.get(6)?,
                levels: serde_json::from_str(&r.get::<_, String>(7)?).unwrap_or_default(),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn competency(conn: &Connection, id: i64) -> Result<Option<CompetencyRow>, StoreError> {
    let framework: Option<i64> = conn
        .prepare_cached("SELECT framework_id FROM competencies WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    match framework {
        Some(f) => Ok(competencies(conn, f)?.into_iter().find(|c| c.id == id)),
        None => Ok(None),
    }
}

/// The framework with every competency, level and relation, as stored (for export).
pub fn load_framework(conn: &Connection, uri: &str) -> Result<Option<Framework>, StoreError> {
    let row: Option<(i64, String, String, String, String)> = conn
        .prepare_cached(
            "SELECT id, version, name, description, source FROM frameworks WHERE uri = ?1",
        )?
        .query_row([uri], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let Some((id, version, name, description, source)) = row else {
        return Ok(None);
    };
    let mut competencies = Vec::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT id, uri, code, name, description, level_code FROM competencies
             WHERE framework_id = ?1 ORDER BY position, id",
        )?;
        let mut levels = conn.prepare_cached(
            "SELECT uri, code, name, description FROM competency_levels
             WHERE competency_id = ?1 ORDER BY rank",
        )?;
        let rows: Vec<(i64, String, String, String, String, Option<String>)> = stmt
            .query_map([id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        for (cid, curi, code, cname, cdesc, level_code) in rows {
            let levels = levels
                .query_map([cid], |r| {
                    Ok(FrameworkLevel {
                        uri: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                        code: r.get(1)?,
                        name: parse_text(&r.get::<_, String>(2)?),
                        description: parse_text(&r.get::<_, String>(3)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            competencies.push(FrameworkCompetency {
                uri: curi,
                code,
                name: parse_text(&cname),
                description: parse_text(&cdesc),
                level_code,
                levels,
            });
        }
    }
    let relations = conn
        .prepare_cached(
            "SELECT r.uri, s.uri, t.uri, r.kind FROM competency_relations r
             JOIN competencies s ON s.id = r.source_id
             JOIN competencies t ON t.id = r.target_id
             WHERE s.framework_id = ?1 ORDER BY r.id",
        )?
        .query_map([id], |r| {
            Ok(Relation {
                uri: r.get(0)?,
                source: r.get(1)?,
                target: r.get(2)?,
                kind: RelationKind::parse(&r.get::<_, String>(3)?).unwrap_or(RelationKind::Narrows),
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Framework {
        uri: uri.to_string(),
        version,
        name: parse_text(&name),
        description: parse_text(&description),
        source,
        competencies,
        relations,
    }))
}

// ---------------------------------------------------------------------------------------
// Evidence and scores

/// A stored row of evidence.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvidenceRow {
    pub id: i64,
    pub pupil_id: i64,
    pub competency_id: i64,
    pub source: Source,
    pub kind: EvidenceKind,
    pub supersedes: Option<i64>,
    pub value_bp: Option<i64>,
    pub scale_level: Option<i64>,
    pub comment: String,
    pub statement_id: Option<String>,
    pub actor: String,
    pub at: i64,
}

const EVIDENCE_COLUMNS: &str = "id, pupil_id, competency_id, source, kind, supersedes, value_bp, \
                                scale_level, comment, statement_id, actor, at";

fn evidence_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EvidenceRow> {
    Ok(EvidenceRow {
        id: r.get(0)?,
        pupil_id: r.get(1)?,
        competency_id: r.get(2)?,
        source: Source::parse(&r.get::<_, String>(3)?).unwrap_or(Source::Observation),
        kind: EvidenceKind::parse(&r.get::<_, String>(4)?).unwrap_or(EvidenceKind::Record),
        supersedes: r.get(5)?,
        value_bp: r.get(6)?,
        scale_level: r.get(7)?,
        comment: r.get(8)?,
        statement_id: r.get(9)?,
        actor: r.get(10)?,
        at: r.get(11)?,
    })
}

pub fn evidence_by_id(conn: &Connection, id: i64) -> Result<Option<EvidenceRow>, StoreError> {
    let sql = format!("SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], evidence_from_row)
        .optional()?)
}

/// Every row of a pupil's evidence, oldest first.
pub fn pupil_evidence(conn: &Connection, pupil: i64) -> Result<Vec<EvidenceRow>, StoreError> {
    let sql = format!(
        "SELECT {EVIDENCE_COLUMNS} FROM evidence WHERE pupil_id = ?1 ORDER BY competency_id, id"
    );
    let rows = conn
        .prepare_cached(&sql)?
        .query_map([pupil], evidence_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// A pair's rows, in the order the current algorithm reads them.
fn pair_rows(conn: &Connection, pupil: i64, competency: i64) -> Result<Vec<Row>, StoreError> {
    let mut rows = conn
        .prepare_cached(
            "SELECT id, source, value_bp, supersedes, at, coalesce(uid, id) FROM evidence
             WHERE pupil_id = ?1 AND competency_id = ?2 ORDER BY id",
        )?
        .query_map([pupil, competency], evidence_input)?
        .collect::<Result<Vec<_>, _>>()?;
    mastery::order(&mut rows, mastery::ALGORITHM);
    Ok(rows)
}

/// An evidence row as the algorithm reads it: id, source, value, supersedes, at, uid.
fn evidence_input(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        source: Source::parse(&r.get::<_, String>(1)?).unwrap_or(Source::Observation),
        value_bp: r.get(2)?,
        supersedes: r.get(3)?,
        at: r.get(4)?,
        uid: r.get(5)?,
    })
}

/// One recalculation: the estimate before and after (`None`: no estimate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Recalc {
    pub pupil_id: i64,
    pub competency_id: i64,
    pub old_bp: Option<i64>,
    pub new_bp: Option<i64>,
    pub journal_seq: i64,
}

/// Recomputes a pair's estimate from its evidence, journals it and stores it. `evidence`
/// names the row that triggered it; the replay reads the pair's rows up to it.
pub(crate) fn recalculate(
    conn: &Connection,
    pupil: i64,
    competency: i64,
    trigger: &str,
    evidence: i64,
    actor: &Actor,
    at: i64,
) -> Result<Recalc, StoreError> {
    let rows = pair_rows(conn, pupil, competency)?;
    let estimate = mastery::estimate(&mastery::effective(&rows));
    let old: Option<i64> = conn
        .prepare_cached("SELECT mastery_bp FROM scores WHERE pupil_id = ?1 AND competency_id = ?2")?
        .query_row([pupil, competency], |r| r.get(0))
        .optional()?;
    let body = json!({
        "pupil": pupil,
        "competency": competency,
        "trigger": trigger,
        "evidence": evidence,
        "through": evidence,
        "actor": actor.journal_name(),
        "algorithm": mastery::ALGORITHM,
        "inputs": estimate.inputs,
        "count": estimate.count,
        "old": old,
        "new": estimate.mastery_bp,
    });
    let seq = append_journal(conn, "score", Some(pupil), Some(competency), &body, at)?;
    match estimate.mastery_bp {
        Some(bp) => conn
            .prepare_cached(
                "INSERT INTO scores (pupil_id, competency_id, mastery_bp, evidence_count,
                                     algorithm, journal_seq, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (pupil_id, competency_id) DO UPDATE SET
                     mastery_bp = excluded.mastery_bp, evidence_count = excluded.evidence_count,
                     algorithm = excluded.algorithm, journal_seq = excluded.journal_seq,
                     updated_at = excluded.updated_at",
            )?
            .execute(params![
                pupil,
                competency,
                bp,
                estimate.count,
                mastery::ALGORITHM,
                seq,
                at
            ])?,
        None => conn
            .prepare_cached("DELETE FROM scores WHERE pupil_id = ?1 AND competency_id = ?2")?
            .execute([pupil, competency])?,
    };
    Ok(Recalc {
        pupil_id: pupil,
        competency_id: competency,
        old_bp: old,
        new_bp: estimate.mastery_bp,
        journal_seq: seq,
    })
}

/// Records new evidence and recalculates its pair. Returns the evidence id and the
/// recalculation. The caller has checked that the actor may record it.
pub fn add_evidence(
    conn: &Connection,
    e: &NewEvidence,
    at: i64,
) -> Result<(i64, Recalc), StoreError> {
    add_evidence_as(conn, e, at, &new_uid(), true)
}

/// A new global id: time-ordered (UUIDv7), so that ids sort as their rows were made, in any
/// copy.
pub fn new_uid() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// [`add_evidence`] with its global id; `logged`: a change other copies receive in a batch
/// (evidence derived from a statement is derived again where the statement arrives).
fn add_evidence_as(
    conn: &Connection,
    e: &NewEvidence,
    at: i64,
    uid: &str,
    logged: bool,
) -> Result<(i64, Recalc), StoreError> {
    insert_evidence_row(
        conn,
        e,
        EvidenceKind::Record,
        None,
        Some(e.value_bp),
        at,
        uid,
        None,
    )?;
    let id = conn.last_insert_rowid();
    if logged {
        super::lrs::log_change(conn, crate::lrs::now_ms(), EVIDENCE_KIND, uid)?;
    }
    let recalc = recalculate(
        conn,
        e.pupil_id,
        e.competency_id,
        EvidenceKind::Record.as_str(),
        id,
        &e.actor,
        at,
    )?;
    Ok((id, recalc))
}

/// The change-log kinds of evidence and of level decisions made here.
pub const EVIDENCE_KIND: &str = "evidence";
pub const LEVEL_KIND: &str = "level";

#[allow(clippy::too_many_arguments)]
fn insert_evidence_row(
    conn: &Connection,
    e: &NewEvidence,
    kind: EvidenceKind,
    supersedes: Option<i64>,
    value_bp: Option<i64>,
    at: i64,
    uid: &str,
    origin: Option<&str>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO evidence (pupil_id, competency_id, source, kind, supersedes, value_bp,
                               scale_level, comment, statement_id, actor, at, uid, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        e.pupil_id,
        e.competency_id,
        e.source.as_str(),
        kind.as_str(),
        supersedes,
        value_bp,
        e.scale_level,
        e.comment,
        e.statement_id,
        e.actor.journal_name(),
        at,
        uid,
        origin
    ])?;
    Ok(())
}

/// A correction (new value) or withdrawal (`None`) of an evidence row that is still in
/// effect. The new row keeps the original's pupil, competency and source.
pub fn supersede(
    conn: &Connection,
    id: i64,
    replacement: Option<(i64, Option<i64>)>,
    comment: &str,
    actor: &Actor,
    at: i64,
) -> Result<Result<(i64, Recalc), Refusal>, StoreError> {
    supersede_as(conn, id, replacement, comment, actor, at, None)
}

/// [`supersede`]; `derived`: the global id of a withdrawal derived from a voiding
/// statement (derived again where the statement arrives, so not logged).
#[allow(clippy::too_many_arguments)]
fn supersede_as(
    conn: &Connection,
    id: i64,
    replacement: Option<(i64, Option<i64>)>,
    comment: &str,
    actor: &Actor,
    at: i64,
    derived: Option<String>,
) -> Result<Result<(i64, Recalc), Refusal>, StoreError> {
    let Some(original) = evidence_by_id(conn, id)? else {
        return Ok(Err(Refusal::new("not_found", format!("no evidence #{id}"))));
    };
    if original.kind == EvidenceKind::Withdrawal {
        return Ok(Err(Refusal::new(
            "evidence_withdrawn",
            format!("evidence #{id} is a withdrawal; it cannot be corrected"),
        )));
    }
    let later: Option<i64> = conn
        .prepare_cached("SELECT id FROM evidence WHERE supersedes = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    if let Some(later) = later {
        return Ok(Err(Refusal::new(
            "evidence_superseded",
            format!("evidence #{id} was already replaced by #{later}: correct that one"),
        )));
    }
    let (kind, value, scale) = match replacement {
        Some((value, scale)) => (EvidenceKind::Correction, Some(value), scale),
        None => (EvidenceKind::Withdrawal, None, None),
    };
    let row = NewEvidence {
        pupil_id: original.pupil_id,
        competency_id: original.competency_id,
        source: original.source,
        value_bp: value.unwrap_or(0),
        scale_level: scale,
        comment: comment.to_string(),
        statement_id: original.statement_id.clone(),
        actor: actor.clone(),
    };
    let logged = derived.is_none();
    let uid = derived.unwrap_or_else(new_uid);
    insert_evidence_row(conn, &row, kind, Some(id), value, at, &uid, None)?;
    let new_id = conn.last_insert_rowid();
    if logged {
        super::lrs::log_change(conn, crate::lrs::now_ms(), EVIDENCE_KIND, &uid)?;
    }
    let recalc = recalculate(
        conn,
        original.pupil_id,
        original.competency_id,
        kind.as_str(),
        new_id,
        actor,
        at,
    )?;
    Ok(Ok((new_id, recalc)))
}

/// A stored estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Score {
    pub pupil_id: i64,
    pub competency_id: i64,
    pub mastery_bp: i64,
    pub evidence_count: i64,
}

fn score_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Score> {
    Ok(Score {
        pupil_id: r.get(0)?,
        competency_id: r.get(1)?,
        mastery_bp: r.get(2)?,
        evidence_count: r.get(3)?,
    })
}

pub fn scores_of(conn: &Connection, pupil: i64) -> Result<Vec<Score>, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT pupil_id, competency_id, mastery_bp, evidence_count FROM scores
             WHERE pupil_id = ?1 ORDER BY competency_id",
        )?
        .query_map([pupil], score_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn all_scores(conn: &Connection) -> Result<Vec<Score>, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT pupil_id, competency_id, mastery_bp, evidence_count FROM scores
             ORDER BY pupil_id, competency_id",
        )?
        .query_map([], score_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

// ---------------------------------------------------------------------------------------
// Levels

/// A teacher's decision of a pupil's level on a levelled competency.
#[derive(Debug, Clone)]
pub struct Decision {
    pub pupil_id: i64,
    pub competency_id: i64,
    pub level_code: String,
    pub decided_by: i64,
    pub justification: String,
    pub evidence_ids: Vec<i64>,
    pub suggestion_id: Option<i64>,
}

/// A decided level as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LevelRow {
    pub id: i64,
    pub pupil_id: i64,
    pub competency_id: i64,
    pub level_code: String,
    pub decided_by: i64,
    pub justification: String,
    pub evidence_ids: Vec<i64>,
    pub suggestion_id: Option<i64>,
    pub at: i64,
}

/// Stores a level decision and its journal entry, after checking that it cites the pupil's
/// own evidence on this competency (or on a descriptor that narrows it). The database
/// itself refuses a decision by anyone but a teacher of the pupil.
pub fn decide_level(
    conn: &Connection,
    d: &Decision,
    at: i64,
) -> Result<Result<i64, Refusal>, StoreError> {
    decide_level_imported(conn, d, at, None)
}

/// [`decide_level`], for a decision imported from another system: the journal also names
/// who imported it and the assertion it came from.
fn decide_level_imported(
    conn: &Connection,
    d: &Decision,
    at: i64,
    imported: Option<(&Actor, &str)>,
) -> Result<Result<i64, Refusal>, StoreError> {
    let levels: Vec<String> = conn
        .prepare_cached(
            "SELECT code FROM competency_levels WHERE competency_id = ?1 ORDER BY rank",
        )?
        .query_map([d.competency_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if levels.is_empty() {
        return Ok(Err(Refusal::new(
            "not_levelled",
            "levels are decided on a skill, not on a descriptor",
        )));
    }
    if !levels.contains(&d.level_code) {
        return Ok(Err(Refusal::new(
            "unknown_level",
            format!(
                "`{}` is not a level of this competency; choose one of {}",
                d.level_code,
                levels.join(", ")
            ),
        )));
    }
    let justification = d.justification.trim();
    if justification.is_empty() || justification.chars().count() > 2000 {
        return Ok(Err(Refusal::new(
            "justification_required",
            "a level decision needs a justification of 1 to 2000 characters",
        )));
    }
    if d.evidence_ids.is_empty() {
        return Ok(Err(Refusal::new(
            "evidence_required",
            "a level decision cites at least one piece of the pupil's evidence",
        )));
    }
    for id in &d.evidence_ids {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM evidence WHERE id = ?1 AND pupil_id = ?2 AND {IN_EFFECT}
               AND (competency_id = ?3 OR EXISTS (
                    SELECT 1 FROM competency_relations r WHERE r.source_id = evidence.competency_id
                       AND r.target_id = ?3 AND r.kind = 'narrows')))"
        );
        let ok: bool = conn
            .prepare_cached(&sql)?
            .query_row(params![id, d.pupil_id, d.competency_id], |r| r.get(0))?;
        if !ok {
            return Ok(Err(Refusal::new(
                "evidence_not_citable",
                format!(
                    "evidence #{id} is not this pupil's evidence in effect on this competency \
                     or its descriptors"
                ),
            )));
        }
    }
    if let Some(id) = d.suggestion_id {
        let suggested: Option<(String, String)> = conn
            .prepare_cached(
                "SELECT pupil_key, competency_uri FROM level_suggestions WHERE id = ?1",
            )?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let uri: Option<String> = conn
            .prepare_cached("SELECT uri FROM competencies WHERE id = ?1")?
            .query_row([d.competency_id], |r| r.get(0))
            .optional()?;
        let pupil_key = super::ai::pseudonym(&super::ai::pseudonym_key(conn)?, d.pupil_id);
        if suggested != uri.map(|u| (pupil_key, u)) {
            return Ok(Err(Refusal::new(
                "suggestion_mismatch",
                format!("suggestion #{id} is not about this pupil and this skill"),
            )));
        }
    }
    if !super::tenant::teaches_pupil(conn, d.decided_by, d.pupil_id)? {
        return Ok(Err(Refusal::new(
            "not_their_teacher",
            "only a teacher of this pupil decides a level",
        )));
    }
    let mut body = json!({
        "pupil": d.pupil_id,
        "competency": d.competency_id,
        "level": d.level_code,
        "decided_by": d.decided_by,
        "actor": Actor::User(d.decided_by).journal_name(),
        "principal": "human",
        "justification": justification,
        "evidence": d.evidence_ids,
        "suggestion": d.suggestion_id,
    });
    if let Some((by, assertion)) = imported {
        body["imported_by"] = json!(by.journal_name());
        body["assertion"] = json!(assertion);
    }
    let seq = append_journal(
        conn,
        "level",
        Some(d.pupil_id),
        Some(d.competency_id),
        &body,
        at,
    )?;
    let uid = new_uid();
    conn.prepare_cached(
        "INSERT INTO level_decisions (pupil_id, competency_id, level_code, decided_by,
             justification, evidence_ids, suggestion_id, journal_seq, at, uid)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        d.pupil_id,
        d.competency_id,
        d.level_code,
        d.decided_by,
        justification,
        serde_json::to_string(&d.evidence_ids).unwrap_or_default(),
        d.suggestion_id,
        seq,
        at,
        uid
    ])?;
    let id = conn.last_insert_rowid();
    super::lrs::log_change(conn, crate::lrs::now_ms(), LEVEL_KIND, &uid)?;
    Ok(Ok(id))
}

/// A decision with what a CaSS assertion names.
#[derive(Debug, Clone)]
pub struct ExportedDecision {
    pub decision: LevelRow,
    pub framework_uri: String,
    pub skill_uri: String,
    pub level_uri: String,
    /// The deciding teacher's opaque xAPI account name.
    pub decided_by_agent: String,
}

/// Every decision about a pupil, oldest first, for export.
pub fn decisions_for_export(
    conn: &Connection,
    pupil: i64,
) -> Result<Vec<ExportedDecision>, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT d.id, d.pupil_id, d.competency_id, d.level_code, d.decided_by,
                    d.justification, d.evidence_ids, d.suggestion_id, d.at,
                    f.uri, c.uri, coalesce(l.uri, ''), coalesce(u.agent_name, '')
             FROM level_decisions d
             JOIN competencies c ON c.id = d.competency_id
             JOIN frameworks f ON f.id = c.framework_id
             LEFT JOIN competency_levels l ON l.competency_id = d.competency_id
                                          AND l.code = d.level_code
             LEFT JOIN users u ON u.id = d.decided_by
             WHERE d.pupil_id = ?1 ORDER BY d.id",
        )?
        .query_map([pupil], |r| {
            Ok(ExportedDecision {
                decision: level_from_row(r)?,
                framework_uri: r.get(9)?,
                skill_uri: r.get(10)?,
                level_uri: r.get(11)?,
                decided_by_agent: r.get(12)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn level_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LevelRow> {
    Ok(LevelRow {
        id: r.get(0)?,
        pupil_id: r.get(1)?,
        competency_id: r.get(2)?,
        level_code: r.get(3)?,
        decided_by: r.get(4)?,
        justification: r.get(5)?,
        evidence_ids: serde_json::from_str(&r.get::<_, String>(6)?).unwrap_or_default(),
        suggestion_id: r.get(7)?,
        at: r.get(8)?,
    })
}

/// Records an assertion exported by another appliance (or this one) as a level decision,
/// only if its agent is, here, a teacher of its subject, and the evidence it cites is that
/// pupil's here. The journal keeps the teacher as the decider and who imported it. An
/// assertion already recorded (same pupil, skill, level, teacher and date) is skipped:
/// `Ok(Ok(None))`.
pub fn import_assertion(
    conn: &Connection,
    a: &crate::competency::interchange::ImportedAssertion,
    home_page: &str,
    imported_by: &Actor,
) -> Result<Result<Option<i64>, Refusal>, StoreError> {
    let user = |agent: &str, role: &str| -> Result<Option<i64>, StoreError> {
        Ok(conn
            .prepare_cached(
                "SELECT id FROM users WHERE agent_name = ?1 AND role = ?2 AND active = 1",
            )?
            .query_row(params![agent, role], |r| r.get(0))
            .optional()?)
    };
    let Some(pupil) = user(&a.subject, "student")? else {
        return Ok(Err(Refusal::new(
            "unknown_subject",
            "its subject is not a pupil of this school",
        )));
    };
    let Some(teacher) = user(&a.agent, "teacher")? else {
        return Ok(Err(Refusal::new(
            "unknown_agent",
            "its agent is not a teacher of this school",
        )));
    };
    let Some(competency) = competency_id(conn, &a.competency)? else {
        return Ok(Err(Refusal::new(
            "unknown_competency",
            format!("no competency {}", a.competency),
        )));
    };
    let level: Option<String> = conn
        .prepare_cached(
            "SELECT code FROM competency_levels WHERE competency_id = ?1 AND (uri = ?2 OR code = ?2)",
        )?
        .query_row(params![competency, a.level], |r| r.get(0))
        .optional()?;
    let Some(level) = level else {
        return Ok(Err(Refusal::new(
            "unknown_level",
            format!("no level {} on this skill", a.level),
        )));
    };
    let mut evidence = Vec::new();
    for e in &a.evidence {
        let id: Option<i64> = if let Some(statement) = e.strip_prefix("urn:uuid:") {
            conn.prepare_cached(
                "SELECT id FROM evidence WHERE statement_id = ?1 AND pupil_id = ?2 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![statement, pupil], |r| r.get(0))
            .optional()?
        } else {
            e.strip_prefix(&format!("{home_page}evidence/"))
                .and_then(|n| n.parse().ok())
        };
        evidence.extend(id);
    }
    let at = a.at_ms / 1000;
    let known = conn
        .prepare_cached(
            "SELECT 1 FROM level_decisions WHERE pupil_id = ?1 AND competency_id = ?2
             AND level_code = ?3 AND decided_by = ?4 AND at = ?5",
        )?
        .exists(params![pupil, competency, level, teacher, at])?;
    if known {
        return Ok(Ok(None));
    }
    let decision = Decision {
        pupil_id: pupil,
        competency_id: competency,
        level_code: level,
        decided_by: teacher,
        justification: if a.justification.trim().is_empty() {
            format!("imported assertion {}", a.id)
        } else {
            a.justification.clone()
        },
        evidence_ids: evidence,
        suggestion_id: None,
    };
    Ok(decide_level_imported(conn, &decision, at, Some((imported_by, &a.id)))?.map(Some))
}

/// The latest decision per competency for a pupil.
pub fn current_levels(conn: &Connection, pupil: i64) -> Result<Vec<LevelRow>, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT id, pupil_id, competency_id, level_code, decided_by, justification,
                    evidence_ids, suggestion_id, at
             FROM level_decisions d WHERE pupil_id = ?1 AND id = (
                 SELECT id FROM level_decisions x
                  WHERE x.pupil_id = d.pupil_id AND x.competency_id = d.competency_id
                  ORDER BY x.at DESC, coalesce(x.uid, x.id) DESC, x.id DESC LIMIT 1)
             ORDER BY competency_id",
        )?
        .query_map([pupil], level_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Per skill and level, how many pupils' current level (the latest decision) it is:
/// `(skill URI, level, pupils)`.
pub fn current_level_counts(conn: &Connection) -> Result<Vec<(String, String, i64)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT c.uri, d.level_code, count(*) FROM level_decisions d
             JOIN competencies c ON c.id = d.competency_id
             WHERE d.id = (SELECT x.id FROM level_decisions x
                           WHERE x.pupil_id = d.pupil_id AND x.competency_id = d.competency_id
                           ORDER BY x.at DESC, coalesce(x.uid, x.id) DESC, x.id DESC LIMIT 1)
             GROUP BY c.uri, d.level_code ORDER BY c.uri, d.level_code",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?)
}

// ---------------------------------------------------------------------------------------
// Verification and replay

/// What [`verify_journal`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalReport {
    pub entries: i64,
    pub recalculations: i64,
    pub redacted: i64,
    /// Each problem in words; empty when the journal is intact and replays to the stored
    /// estimates.
    pub problems: Vec<String>,
}

struct Entry {
    seq: i64,
    at: i64,
    kind: String,
    subject: Option<i64>,
    competency: Option<i64>,
    body: Option<String>,
    salt: Option<Vec<u8>>,
    body_sha256: Vec<u8>,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

/// Walks the journal from its first entry: checks the chain and every body digest,
/// recomputes every recalculation from the evidence it names (its inputs hash, old and new
/// estimate), and compares the state it ends on with the stored estimates.
pub fn verify_journal(conn: &Connection) -> Result<JournalReport, StoreError> {
    let mut report = JournalReport::default();
    let problem = |report: &mut JournalReport, p: String| {
        if report.problems.len() < 50 {
            report.problems.push(p);
        }
    };
    // Evidence in id order, loaded into per-pair lists as the journal reaches it.
    let mut evidence_stmt = conn.prepare(
        "SELECT id, source, value_bp, supersedes, at, coalesce(uid, id), pupil_id, competency_id
         FROM evidence ORDER BY id",
    )?;
    let mut evidence = evidence_stmt.query_map([], |r| {
        Ok((r.get::<_, i64>(6)?, r.get::<_, i64>(7)?, evidence_input(r)?))
    })?;
    let mut next_evidence = evidence.next().transpose()?;
    let mut pairs: HashMap<(i64, i64), Vec<Row>> = HashMap::new();
    // The replayed estimate per pair; `None` inside: no estimate; absent: never scored.
    let mut state: HashMap<(i64, i64), Option<i64>> = HashMap::new();

    let mut stmt = conn.prepare(
        "SELECT seq, at, kind, subject_id, competency_id, body, salt, body_sha256, prev_hash, hash
         FROM assessment_journal ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut prev = GENESIS.to_vec();
    let mut last_seq = 0;
    while let Some(r) = rows.next()? {
        let e = Entry {
            seq: r.get(0)?,
            at: r.get(1)?,
            kind: r.get(2)?,
            subject: r.get(3)?,
            competency: r.get(4)?,
            body: r.get(5)?,
            salt: r.get(6)?,
            body_sha256: r.get(7)?,
            prev_hash: r.get(8)?,
            hash: r.get(9)?,
        };
        report.entries += 1;
        if e.seq != last_seq + 1 {
            problem(
                &mut report,
                format!("entries {} to {} are missing", last_seq + 1, e.seq - 1),
            );
        }
        last_seq = e.seq;
        if e.prev_hash != prev {
            problem(
                &mut report,
                format!("entry {}: does not follow the entry before it", e.seq),
            );
        }
        if entry_hash(&e.prev_hash, e.seq, e.at, &e.kind, &e.body_sha256) != e.hash {
            problem(
                &mut report,
                format!("entry {}: its hash does not match its content", e.seq),
            );
        }
        prev = e.hash.clone();
        let (Some(body), Some(salt)) = (&e.body, &e.salt) else {
            // Redaction blanks an entry whole (erasure, retention).
            report.redacted += 1;
            if e.body.is_some() || e.salt.is_some() || e.subject.is_some() || e.competency.is_some()
            {
                problem(&mut report, format!("entry {}: half redacted", e.seq));
            }
            continue;
        };
        if sha256(&[salt, body.as_bytes()]) != e.body_sha256 {
            problem(
                &mut report,
                format!("entry {}: its body was altered", e.seq),
            );
            continue;
        }
        let Ok(b) = serde_json::from_str::<Value>(body) else {
            problem(
                &mut report,
                format!("entry {}: its body is not JSON", e.seq),
            );
            continue;
        };
        let (pupil, competency) = (b["pupil"].as_i64(), b["competency"].as_i64());
        if pupil != e.subject || competency != e.competency {
            problem(
                &mut report,
                format!(
                    "entry {}: its subject columns disagree with its body",
                    e.seq
                ),
            );
        }
        if e.kind != "score" {
            continue;
        }
        report.recalculations += 1;
        let (Some(pupil), Some(competency), Some(through)) =
            (pupil, competency, b["through"].as_i64())
        else {
            problem(
                &mut report,
                format!("entry {}: an incomplete recalculation", e.seq),
            );
            continue;
        };
        while let Some((p, c, row)) = next_evidence.take() {
            if row.id > through {
                next_evidence = Some((p, c, row));
                break;
            }
            pairs.entry((p, c)).or_default().push(row);
            next_evidence = evidence.next().transpose()?;
        }
        let key = (pupil, competency);
        let Some(algorithm) = b["algorithm"]
            .as_str()
            .filter(|a| mastery::KNOWN.contains(a))
        else {
            problem(
                &mut report,
                format!("entry {}: unknown algorithm {}", e.seq, b["algorithm"]),
            );
            continue;
        };
        let mut rows = pairs.get(&key).cloned().unwrap_or_default();
        mastery::order(&mut rows, algorithm);
        let estimate = mastery::estimate_as(algorithm, &mastery::effective(&rows));
        if b["inputs"].as_str() != Some(estimate.inputs.as_str()) {
            problem(
                &mut report,
                format!(
                    "entry {}: its inputs differ from the evidence it names",
                    e.seq
                ),
            );
        }
        let new = b["new"].as_i64();
        if new != estimate.mastery_bp {
            problem(
                &mut report,
                format!(
                    "entry {}: replay gives another estimate than it records",
                    e.seq
                ),
            );
        }
        let old = b["old"].as_i64();
        let before = state.get(&key).copied().flatten();
        // A retention entry starts its pair afresh: the entries before it are redacted.
        if b["trigger"].as_str() != Some(RETENTION) && old != before {
            problem(
                &mut report,
                format!("entry {}: its old estimate is not the one before it", e.seq),
            );
        }
        state.insert(key, new);
    }
    let used: i64 = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'assessment_journal'",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    if used > last_seq {
        problem(
            &mut report,
            format!(
                "entries {} to {used} were removed from the end",
                last_seq + 1
            ),
        );
    }
    let stored: HashMap<(i64, i64), i64> = all_scores(conn)?
        .into_iter()
        .map(|s| ((s.pupil_id, s.competency_id), s.mastery_bp))
        .collect();
    for (key, bp) in &stored {
        if state.get(key).copied().flatten() != Some(*bp) {
            problem(
                &mut report,
                format!(
                    "the stored estimate of pupil {} on competency {} is not what the journal replays to",
                    key.0, key.1
                ),
            );
        }
    }
    for (key, v) in &state {
        if v.is_some() && !stored.contains_key(key) {
            problem(
                &mut report,
                format!(
                    "the journal has an estimate for pupil {} on competency {} that is not stored",
                    key.0, key.1
                ),
            );
        }
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// Evidence from the LRS

/// A statement's result as a value in basis points: `score.scaled`, else `score.raw` within
/// `min`..`max`, else `success`. `None`: the statement says nothing about how it went.
pub fn result_value(statement: &Value) -> Option<i64> {
    let result = statement.get("result")?;
    let score = result.get("score");
    let scaled = score.and_then(|s| s.get("scaled")).and_then(Value::as_f64);
    let raw = score.and_then(|s| {
        let raw = s.get("raw")?.as_f64()?;
        let (min, max) = (s.get("min")?.as_f64()?, s.get("max")?.as_f64()?);
        (max > min).then(|| (raw - min) / (max - min))
    });
    let success = result
        .get("success")
        .and_then(Value::as_bool)
        .map(|ok| if ok { 1.0 } else { 0.0 });
    let v = scaled.or(raw).or(success)?;
    Some((v.clamp(0.0, 1.0) * 10_000.0).round() as i64)
}

/// The Activities a statement is about: its object and its context activities.
fn activity_iris(statement: &Value) -> Vec<&str> {
    let mut iris = Vec::new();
    let object = &statement["object"];
    if matches!(
        object.get("objectType").and_then(Value::as_str),
        None | Some("Activity")
    ) && let Some(id) = object.get("id").and_then(Value::as_str)
    {
        iris.push(id);
    }
    if let Some(ctx) = statement["context"]["contextActivities"].as_object() {
        for list in ctx.values() {
            let items = match list {
                Value::Array(a) => a.iter().collect::<Vec<_>>(),
                one => vec![one],
            };
            iris.extend(items.into_iter().filter_map(|a| a.get("id")?.as_str()));
        }
    }
    iris
}

const IN_EFFECT: &str = "kind != 'withdrawal' AND NOT EXISTS
    (SELECT 1 FROM evidence later WHERE later.supersedes = evidence.id)";

/// Turns statements the LRS accepted in this transaction into evidence: a statement about
/// one of the tenant's pupils (their xAPI account), with a result, about an Activity aligned
/// to a competency (through `activity_alignments`, or naming the competency's URI itself),
/// becomes one record per competency. A voiding statement withdraws the evidence its target
/// gave. Runs in the LRS's transaction: a statement is stored with its evidence or not at
/// all. Returns how many rows of evidence were written.
pub fn evidence_from_statements(
    conn: &Connection,
    statements: &[&Value],
    home_page: &str,
    actor: &Actor,
    at: i64,
) -> Result<usize, StoreError> {
    let mut written = 0;
    for s in statements {
        let id = s.get("id").and_then(Value::as_str).unwrap_or_default();
        let object = &s["object"];
        if s.get("verb")
            .and_then(|v| v.get("id"))
            .and_then(Value::as_str)
            == Some("http://adlnet.gov/expapi/verbs/voided")
            && object.get("objectType").and_then(Value::as_str) == Some("StatementRef")
        {
            let target = object.get("id").and_then(Value::as_str).unwrap_or_default();
            let sql = format!(
                "SELECT id, coalesce(uid, id) FROM evidence WHERE statement_id = ?1 AND {IN_EFFECT}"
            );
            let ids: Vec<(i64, String)> = conn
                .prepare_cached(&sql)?
                .query_map([target], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (e, uid) in ids {
                let comment = format!("statement {target} voided by statement {id}");
                let derived = Some(format!("v:{id}:{uid}"));
                if supersede_as(conn, e, None, &comment, actor, at, derived)?.is_ok() {
                    written += 1;
                }
            }
            continue;
        }
        let Some(value) = result_value(s) else {
            continue;
        };
        let account = &s["actor"]["account"];
        if account.get("homePage").and_then(Value::as_str) != Some(home_page) {
            continue;
        }
        let Some(agent) = account.get("name").and_then(Value::as_str) else {
            continue;
        };
        let pupil: Option<i64> = conn
            .prepare_cached("SELECT id FROM users WHERE agent_name = ?1 AND role = 'student'")?
            .query_row([agent], |r| r.get(0))
            .optional()?;
        let Some(pupil) = pupil else {
            continue;
        };
        let mut competencies: Vec<i64> = Vec::new();
        for iri in activity_iris(s) {
            let ids: Vec<i64> = conn
                .prepare_cached(
                    "SELECT competency_id FROM activity_alignments WHERE activity_iri = ?1
                     UNION SELECT id FROM competencies WHERE uri = ?1",
                )?
                .query_map([iri], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            competencies.extend(ids);
        }
        competencies.sort_unstable();
        competencies.dedup();
        if competencies.is_empty() {
            continue;
        }
        // Voided before it arrived (the voiding statement came first): no evidence.
        let voided: bool = conn
            .prepare_cached("SELECT voided FROM xapi_statements WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?
            .unwrap_or(false);
        if voided {
            continue;
        }
        // Evidence is dated when the learning happened, if the statement says so.
        let happened = s
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|t| t.unix_timestamp().min(at))
            .unwrap_or(at);
        for competency in competencies {
            let known = conn
                .prepare_cached(
                    "SELECT 1 FROM evidence WHERE statement_id = ?1 AND competency_id = ?2
                     AND kind = 'record'",
                )?
                .exists(params![id, competency])?;
            if known {
                continue;
            }
            let uri: String = conn
                .prepare_cached("SELECT uri FROM competencies WHERE id = ?1")?
                .query_row([competency], |r| r.get(0))?;
            add_evidence_as(
                conn,
                &NewEvidence {
                    pupil_id: pupil,
                    competency_id: competency,
                    source: Source::Xapi,
                    value_bp: value,
                    scale_level: None,
                    comment: String::new(),
                    statement_id: Some(id.to_string()),
                    actor: actor.clone(),
                },
                happened,
                &format!("x:{id}:{uri}"),
                false,
            )?;
            written += 1;
        }
    }
    Ok(written)
}

/// Aligns an Activity to a competency: statements about it become evidence from now on.
pub fn align(conn: &Connection, activity: &str, competency: i64) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "INSERT INTO activity_alignments (activity_iri, competency_id) VALUES (?1, ?2)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![activity, competency])?
        > 0)
}

// ---------------------------------------------------------------------------------------
// Erasure

/// What an erasure removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    pub evidence: i64,
    pub scores: i64,
    pub levels: i64,
    pub suggestions: i64,
    pub journal_entries_redacted: i64,
}

/// Removes a pupil's assessment data: evidence, estimates, level decisions, suggestions
/// about them, and the content of their journal entries (the chain stays verifiable). The
/// caller appends the erasure's tombstone once everything else of the pupil is gone.
pub fn erase_assessment(conn: &Connection, pupil: i64) -> Result<Erased, StoreError> {
    let key = super::ai::pseudonym_key(conn)?;
    let pupil_key = super::ai::pseudonym(&key, pupil);
    let levels = conn.execute("DELETE FROM level_decisions WHERE pupil_id = ?1", [pupil])? as i64;
    let suggestions = conn.execute(
        "DELETE FROM level_suggestions WHERE pupil_key = ?1",
        [&pupil_key],
    )? as i64;
    let scores = conn.execute("DELETE FROM scores WHERE pupil_id = ?1", [pupil])? as i64;
    let evidence = conn.execute("DELETE FROM evidence WHERE pupil_id = ?1", [pupil])? as i64;
    conn.execute("DELETE FROM ai_features WHERE pupil_key = ?1", [&pupil_key])?;
    conn.execute("DELETE FROM ai_levels WHERE pupil_key = ?1", [&pupil_key])?;
    let journal_entries_redacted = conn.execute(
        "UPDATE assessment_journal SET body = NULL, salt = NULL, subject_id = NULL,
                competency_id = NULL
         WHERE subject_id = ?1",
        [pupil],
    )? as i64;
    Ok(Erased {
        evidence,
        scores,
        levels,
        suggestions,
        journal_entries_redacted,
    })
}

/// The erasure's tombstone: the pupil's opaque xAPI account name (what other copies of the
/// tenant's records know them by), who erased them, and what went.
pub fn erasure_tombstone(
    conn: &Connection,
    agent_name: &str,
    by: &Actor,
    counts: &Value,
    at: i64,
) -> Result<i64, StoreError> {
    append_journal(
        conn,
        "erasure",
        None,
        None,
        &json!({"agent": agent_name, "actor": by.journal_name(), "removed": counts}),
        at,
    )
}

#[cfg(test)]
#[path = "competency_tests.rs"]
mod tests;

// ---------------------------------------------------------------------------------------
// Evidence and level decisions between copies of the tenant

/// A row of evidence as it travels to another copy of the tenant: by global names (the
/// pupil's xAPI account name, the competency's URI, the global id of the row it supersedes,
/// `agent:<account name>` for a person who recorded it).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyncedEvidence {
    pub uid: String,
    pub pupil: String,
    pub competency: String,
    pub source: String,
    pub kind: String,
    pub supersedes: Option<String>,
    pub value_bp: Option<i64>,
    pub scale_level: Option<i64>,
    pub comment: String,
    pub statement_id: Option<String>,
    pub actor: String,
    pub at: i64,
}

/// A level decision as it travels to another copy: by global names.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SyncedLevel {
    pub uid: String,
    pub pupil: String,
    pub competency: String,
    pub level_code: String,
    /// The deciding teacher's account name.
    pub decided_by: String,
    pub justification: String,
    /// The global ids of the evidence it cites.
    pub evidence: Vec<String>,
    pub at: i64,
}

/// What merging a row from another copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    Added,
    /// Held already, or about an erased pupil.
    Known,
    /// Not applied here, and why (something it names is not here).
    Missing(String),
}

fn agent_of(conn: &Connection, id: i64) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT agent_name FROM users WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

fn user_of(conn: &Connection, agent: &str) -> Result<Option<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT id FROM users WHERE agent_name = ?1")?
        .query_row([agent], |r| r.get(0))
        .optional()?)
}

/// A local actor's journal name in global terms, and back.
fn actor_out(conn: &Connection, actor: &str) -> Result<String, StoreError> {
    if let Some(id) = actor.strip_prefix("user:").and_then(|i| i.parse().ok())
        && let Some(agent) = agent_of(conn, id)?
    {
        return Ok(format!("agent:{agent}"));
    }
    Ok(actor.to_string())
}

fn actor_in(conn: &Connection, actor: &str) -> Result<Actor, StoreError> {
    if let Some(agent) = actor.strip_prefix("agent:") {
        return Ok(user_of(conn, agent)?.map_or(Actor::System, Actor::User));
    }
    Ok(match actor.strip_prefix("client:") {
        Some(key) => Actor::Client(key.to_string()),
        None => Actor::System,
    })
}

/// The evidence row `uid` in global terms (`None`: gone, e.g. erased since).
pub fn synced_evidence(conn: &Connection, uid: &str) -> Result<Option<SyncedEvidence>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT e.uid, u.agent_name, c.uri, e.source, e.kind, s.uid, e.value_bp,
                    e.scale_level, e.comment, e.statement_id, e.actor, e.at
             FROM evidence e JOIN users u ON u.id = e.pupil_id
             JOIN competencies c ON c.id = e.competency_id
             LEFT JOIN evidence s ON s.id = e.supersedes
             WHERE e.uid = ?1",
        )?
        .query_row([uid], |r| {
            Ok(SyncedEvidence {
                uid: r.get(0)?,
                pupil: r.get(1)?,
                competency: r.get(2)?,
                source: r.get(3)?,
                kind: r.get(4)?,
                supersedes: r.get(5)?,
                value_bp: r.get(6)?,
                scale_level: r.get(7)?,
                comment: r.get(8)?,
                statement_id: r.get(9)?,
                actor: r.get(10)?,
                at: r.get(11)?,
            })
        })
        .optional()?;
    let Some(mut e) = row else {
        return Ok(None);
    };
    e.actor = actor_out(conn, &e.actor)?;
    Ok(Some(e))
}

/// Records evidence made in another copy (`origin`) and recalculates its pair here. Two
/// copies that corrected the same row while apart keep both corrections, and record the
/// pair in `sync_conflicts` (the same way round in every copy).
pub fn merge_evidence(
    conn: &Connection,
    e: &SyncedEvidence,
    origin: &str,
    at: i64,
) -> Result<Merge, StoreError> {
    let held = conn
        .prepare_cached("SELECT 1 FROM evidence WHERE uid = ?1")?
        .exists([&e.uid])?;
    if held || super::replica::is_erased(conn, &e.pupil)? {
        return Ok(Merge::Known);
    }
    let Some(pupil) = user_of(conn, &e.pupil)? else {
        return Ok(Merge::Missing(format!(
            "evidence about a pupil not here ({})",
            e.uid
        )));
    };
    let Some(competency) = competency_id(conn, &e.competency)? else {
        return Ok(Merge::Missing(format!(
            "evidence on competency {}, not here",
            e.competency
        )));
    };
    let (Some(source), Some(kind)) = (Source::parse(&e.source), EvidenceKind::parse(&e.kind))
    else {
        return Err(StoreError::Conflict(format!(
            "evidence {} has an unknown source or kind",
            e.uid
        )));
    };
    let supersedes = match &e.supersedes {
        None => None,
        Some(uid) => {
            let found: Option<(i64, Option<String>)> = conn
                .prepare_cached(
                    "SELECT s.id, (SELECT max(x.uid) FROM evidence x WHERE x.supersedes = s.id)
                     FROM evidence s WHERE s.uid = ?1",
                )?
                .query_row([uid], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let Some((id, other)) = found else {
                return Ok(Merge::Missing(format!(
                    "a correction of evidence {uid}, not here"
                )));
            };
            if let Some(other) = other {
                let (kept, lost) = if other > e.uid {
                    (other.clone(), e.uid.clone())
                } else {
                    (e.uid.clone(), other.clone())
                };
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO sync_conflicts
                         (entity, key, field, kept, kept_hlc, kept_origin, lost, lost_hlc,
                          lost_origin, at)
                     VALUES ('evidence', ?1, 'superseded_by', ?2, 0, '', ?3, 0, '', ?4)",
                )?
                .execute(params![
                    uid,
                    Value::from(kept).to_string(),
                    Value::from(lost).to_string(),
                    at
                ])?;
            }
            Some(id)
        }
    };
    let actor = actor_in(conn, &e.actor)?;
    let row = NewEvidence {
        pupil_id: pupil,
        competency_id: competency,
        source,
        value_bp: e.value_bp.unwrap_or(0),
        scale_level: e.scale_level,
        comment: e.comment.clone(),
        statement_id: e.statement_id.clone(),
        actor: actor.clone(),
    };
    insert_evidence_row(
        conn,
        &row,
        kind,
        supersedes,
        e.value_bp,
        e.at,
        &e.uid,
        Some(origin),
    )?;
    let id = conn.last_insert_rowid();
    recalculate(conn, pupil, competency, kind.as_str(), id, &actor, at)?;
    Ok(Merge::Added)
}

/// The level decision `uid` in global terms (`None`: gone, e.g. erased since).
pub fn synced_level(conn: &Connection, uid: &str) -> Result<Option<SyncedLevel>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT d.uid, p.agent_name, c.uri, d.level_code, t.agent_name, d.justification,
                    (SELECT json_group_array(e.uid) FROM json_each(d.evidence_ids) j
                     JOIN evidence e ON e.id = j.value), d.at
             FROM level_decisions d JOIN users p ON p.id = d.pupil_id
             JOIN users t ON t.id = d.decided_by
             JOIN competencies c ON c.id = d.competency_id
             WHERE d.uid = ?1",
        )?
        .query_row([uid], |r| {
            let evidence: String = r.get(6)?;
            Ok(SyncedLevel {
                uid: r.get(0)?,
                pupil: r.get(1)?,
                competency: r.get(2)?,
                level_code: r.get(3)?,
                decided_by: r.get(4)?,
                justification: r.get(5)?,
                evidence: serde_json::from_str(&evidence).unwrap_or_default(),
                at: r.get(7)?,
            })
        })
        .optional()?;
    Ok(row)
}

/// Records a level decision made in another copy (`origin`), with its journal entry here.
/// The decider must teach the pupil here too, as the database requires; when they no
/// longer do (unenrolled meanwhile), the decision is recorded in `sync_conflicts` instead,
/// never dropped silently.
pub fn merge_level(
    conn: &Connection,
    l: &SyncedLevel,
    origin: &str,
    at: i64,
) -> Result<Merge, StoreError> {
    let held = conn
        .prepare_cached("SELECT 1 FROM level_decisions WHERE uid = ?1")?
        .exists([&l.uid])?;
    if held || super::replica::is_erased(conn, &l.pupil)? {
        return Ok(Merge::Known);
    }
    let (Some(pupil), Some(teacher), Some(competency)) = (
        user_of(conn, &l.pupil)?,
        user_of(conn, &l.decided_by)?,
        competency_id(conn, &l.competency)?,
    ) else {
        return Ok(Merge::Missing(format!(
            "a level decision on {} whose pupil, teacher or competency is not here",
            l.competency
        )));
    };
    let mut evidence = Vec::with_capacity(l.evidence.len());
    for uid in &l.evidence {
        let id: Option<i64> = conn
            .prepare_cached("SELECT id FROM evidence WHERE uid = ?1")?
            .query_row([uid], |r| r.get(0))
            .optional()?;
        match id {
            Some(id) => evidence.push(id),
            None => {
                return Ok(Merge::Missing(format!(
                    "a level decision citing evidence {uid}, not here"
                )));
            }
        }
    }
    if evidence.is_empty() {
        return Ok(Merge::Missing(format!(
            "a level decision ({}) that cites no evidence here",
            l.uid
        )));
    }
    if !super::tenant::teaches_pupil(conn, teacher, pupil)? {
        conn.prepare_cached(
            "INSERT OR IGNORE INTO sync_conflicts
                 (entity, key, field, kept, kept_hlc, kept_origin, lost, lost_hlc, lost_origin, at)
             VALUES ('level', ?1, 'decided_by', 'null', 0, '', ?2, 0, ?3, ?4)",
        )?
        .execute(params![
            l.uid,
            serde_json::to_string(l).unwrap_or_default(),
            origin,
            at
        ])?;
        return Ok(Merge::Missing(format!(
            "a level decision by a teacher who does not teach that pupil here ({})",
            l.uid
        )));
    }
    let body = json!({
        "pupil": pupil,
        "competency": competency,
        "level": l.level_code,
        "decided_by": teacher,
        "actor": Actor::User(teacher).journal_name(),
        "principal": "human",
        "justification": l.justification,
        "evidence": evidence,
        "suggestion": null,
        "merged_from": origin,
    });
    let seq = append_journal(conn, "level", Some(pupil), Some(competency), &body, at)?;
    conn.prepare_cached(
        "INSERT INTO level_decisions (pupil_id, competency_id, level_code, decided_by,
             justification, evidence_ids, suggestion_id, journal_seq, at, uid)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, ?8, ?9)",
    )?
    .execute(params![
        pupil,
        competency,
        l.level_code,
        teacher,
        l.justification,
        serde_json::to_string(&evidence).unwrap_or_default(),
        seq,
        l.at,
        l.uid
    ])?;
    Ok(Merge::Added)
}
