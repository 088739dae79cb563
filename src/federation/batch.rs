//! Incremental batches of a tenant's changes, between two generations of its continuity
//! copy (and between the copies of a tenant held by two sites).
//!
//! A batch is the site's local change-log rows after `after` through `last` (its
//! per-tenant sequence numbers; the batch before it ended at `after`), turned into what another copy needs to replay them: statements with their
//! attachments (immutable: one already held is skipped), field operations on users,
//! classes and enrolments (merged per field, see [`crate::store::replica`]), documents
//! (merged like a field), evidence and level decisions (append-only, by global id),
//! erasures (tombstones), and marks of changes only a generation carries. It is JSON, zstd,
//! then sealed with ChaCha20-Poly1305 under the tenant's key with a random nonce; the
//! associated data names the tenant, the origin site and the range, so a batch cannot be
//! passed off as another. Applying a batch records its origin's cursor in the same
//! transaction: applying it again changes nothing.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::competency::Actor;
use crate::lrs::Version;
use crate::lrs::statement::{Storer, prepare};
use crate::store::StoreError;
use crate::store::lrs::{self as sql, Blob, DocumentKey};
use crate::store::replica::{self, FieldOp};

pub const FORMAT: u32 = 1;
/// A batch ends after the change-log row that takes it past this many statements.
const STATEMENTS_PER_BATCH: usize = 10_000;
/// … or after this many rows.
const ROWS_PER_BATCH: i64 = 2_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub format: u32,
    /// The site that wrote these changes.
    pub origin: String,
    /// Where the origin's previous batch ended.
    pub after: i64,
    pub last: i64,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Item {
    /// Statements stored together (they share `stored`), with the attachments they carry.
    Statements {
        stored: i64,
        /// The statements as stored, JSON text.
        list: Vec<String>,
        blobs: Vec<Attachment>,
    },
    Field {
        op: FieldOp,
    },
    /// A document's change: its stamp (the etag it got, `null` when deleted, merged like a
    /// field) and, if it is still the current version here, its content.
    Document {
        kind: String,
        activity: String,
        agent: String,
        registration: String,
        id: String,
        op: FieldOp,
        doc: Option<Doc>,
    },
    /// A user erased at the origin: their records go here too, and nothing of theirs
    /// comes back.
    Erase {
        agent: String,
        at: i64,
    },
    /// A change at the origin that only a generation carries (`what`: the table, or the
    /// kind of change, e.g. a retention run): the copy that applies the batch does not
    /// have it, and says so.
    Generation {
        what: String,
    },
    /// Evidence recorded at the origin (an observation, a self-assessment, a correction or
    /// a withdrawal; evidence from statements is derived from them): append-only.
    Evidence {
        e: crate::store::competency::SyncedEvidence,
    },
    /// A teacher's level decision at the origin: append-only.
    Level {
        l: crate::store::competency::SyncedLevel,
    },
    /// A retention run at the origin: the statements and evidence it deleted go here too.
    Retain {
        statements: Vec<String>,
        evidence: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub sha2: String,
    pub content_type: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Doc {
    pub content_type: String,
    pub content: String,
    pub etag: String,
    pub updated: i64,
}

fn doc_kind(kind: &str) -> Option<&'static str> {
    ["state", "activity_profile", "agent_profile"]
        .into_iter()
        .find(|k| *k == kind)
}

/// Builds the batch of the local changes after `after` through `through` at most (at
/// most a few thousand rows of the change log); `None` when the log has no row there.
pub fn build(
    conn: &Connection,
    origin: &str,
    after: i64,
    through: i64,
) -> Result<Option<Batch>, StoreError> {
    let rows = replica::changes(conn, after, through, ROWS_PER_BATCH)?;
    let Some(first) = rows.first().map(|r| r.seq) else {
        return Ok(None);
    };
    let mut items = Vec::new();
    let (mut statements, mut last) = (0usize, first);
    for row in rows {
        last = row.seq;
        // Another copy's change: the batch only steps over it, so that the next one
        // follows on (a batch may carry nothing but that step).
        if row.merged {
            continue;
        }
        let only_generation = || Item::Generation {
            what: row.kind.clone(),
        };
        match row.kind.as_str() {
            "statements" => match row
                .subject
                .split_once('-')
                .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.parse::<i64>().ok()?)))
            {
                Some((a, b)) => statements += statement_items(conn, a, b, &mut items)?,
                None => items.push(only_generation()),
            },
            "field" => match serde_json::from_str::<FieldOp>(&row.subject) {
                Ok(mut op) => {
                    if op.po.is_empty() && op.p != 0 {
                        op.po = origin.to_string();
                    }
                    items.push(Item::Field { op });
                }
                Err(_) => items.push(only_generation()),
            },
            // A table only a generation carries changed (see `replica::V2`).
            replica::GENERATION_KIND => items.push(Item::Generation {
                what: row.subject.clone(),
            }),
            "erasure" => items.push(Item::Erase {
                agent: row.subject.clone(),
                at: crate::store::now(),
            }),
            // Gone since (its pupil was erased): the erasure that follows says so.
            crate::store::competency::EVIDENCE_KIND => {
                if let Some(e) = crate::store::competency::synced_evidence(conn, &row.subject)? {
                    items.push(Item::Evidence { e });
                }
            }
            "retention" => {
                let named = serde_json::from_str::<Value>(&row.subject)
                    .ok()
                    .and_then(|v| {
                        let list = |k: &str| -> Option<Vec<String>> {
                            serde_json::from_value(v.get(k)?.clone()).ok()
                        };
                        Some((list("statements")?, list("evidence")?))
                    });
                // A run logged before runs named what they deleted: only a generation.
                items.push(match named {
                    Some((statements, evidence)) => Item::Retain {
                        statements,
                        evidence,
                    },
                    None => only_generation(),
                });
            }
            crate::store::competency::LEVEL_KIND => {
                if let Some(l) = crate::store::competency::synced_level(conn, &row.subject)? {
                    items.push(Item::Level { l });
                }
            }
            kind => {
                let item = match (doc_kind(kind), serde_json::from_str::<Value>(&row.subject)) {
                    (Some(kind), Ok(subject)) => document_item(conn, kind, &subject, origin)?,
                    _ => None,
                };
                items.push(item.unwrap_or_else(only_generation));
            }
        }
        if statements >= STATEMENTS_PER_BATCH {
            break;
        }
    }
    // Consecutive marks of one table are one.
    items.dedup_by(|a, b| matches!((a, b), (Item::Generation { what: x }, Item::Generation { what: y }) if x == y));
    Ok(Some(Batch {
        format: FORMAT,
        origin: origin.to_string(),
        after,
        last,
        items,
    }))
}

impl Batch {
    /// Whether the copy at the hub needs a new generation once this batch is there: it
    /// carries an erasure (older generations hold what was erased) or marks a change only
    /// a generation carries.
    pub fn needs_generation(&self) -> bool {
        self.items
            .iter()
            .any(|i| matches!(i, Item::Erase { .. } | Item::Generation { .. }))
    }
}

/// Appends the statements stored with `seq` in `a..=b` (those still held), grouped by
/// `stored`; returns how many.
fn statement_items(
    conn: &Connection,
    a: i64,
    b: i64,
    items: &mut Vec<Item>,
) -> Result<usize, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, stored, full FROM xapi_statements WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
    )?;
    let rows: Vec<(i64, i64, String)> = stmt
        .query_map(params![a, b], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let n = rows.len();
    for (seq, stored, full) in rows {
        let blobs = attachments(conn, seq)?;
        match items.last_mut() {
            Some(Item::Statements {
                stored: s,
                list,
                blobs: held,
            }) if *s == stored => {
                list.push(full);
                for b in blobs {
                    if !held.contains(&b) {
                        held.push(b);
                    }
                }
            }
            _ => items.push(Item::Statements {
                stored,
                list: vec![full],
                blobs,
            }),
        }
    }
    Ok(n)
}

fn attachments(conn: &Connection, seq: i64) -> Result<Vec<Attachment>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.sha2, a.content_type, a.content FROM xapi_statement_attachments s
         JOIN xapi_attachments a ON a.sha2 = s.sha2 WHERE s.seq = ?1",
    )?;
    let rows = stmt
        .query_map([seq], |r| {
            Ok(Attachment {
                sha2: r.get(0)?,
                content_type: r.get(1)?,
                content: B64.encode(r.get::<_, Vec<u8>>(2)?),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

fn document_item(
    conn: &Connection,
    kind: &str,
    subject: &Value,
    origin: &str,
) -> Result<Option<Item>, StoreError> {
    let text = |k: &str| subject[k].as_str().unwrap_or_default().to_string();
    let (Some(id), Ok(mut op)) = (
        subject["id"].as_str(),
        serde_json::from_value::<FieldOp>(subject["op"].clone()),
    ) else {
        return Ok(None);
    };
    if op.po.is_empty() && op.p != 0 {
        op.po = origin.to_string();
    }
    let key = DocumentKey {
        kind: doc_kind(kind).unwrap_or("state"),
        activity_id: text("activity"),
        agent: text("agent"),
        registration: text("registration"),
    };
    let doc = sql::document(conn, &key, id)?
        .filter(|d| op.v.as_str() == Some(d.etag.as_str()))
        .map(|d| Doc {
            content_type: d.content_type,
            content: B64.encode(&d.content),
            etag: d.etag,
            updated: d.updated,
        });
    Ok(Some(Item::Document {
        kind: kind.into(),
        activity: key.activity_id,
        agent: key.agent,
        registration: key.registration,
        id: id.into(),
        op,
        doc,
    }))
}

/// What applying a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The batch was applied before: nothing changed.
    pub known: bool,
    pub statements: usize,
    pub fields: usize,
    pub conflicts: usize,
    pub documents: usize,
    pub erasures: usize,
    /// Evidence and level decisions recorded.
    pub assessments: usize,
    /// Statements and evidence deleted by another copy's retention run.
    pub retained: usize,
    /// What this copy lacks of the batch: changes that only a generation carries (by table
    /// or kind), and evidence that names something not here.
    pub lacking: Vec<String>,
    /// The rows not here yet that rows of this or earlier batches wait for (see
    /// [`replica::retry_waiting`]).
    pub awaiting: Vec<String>,
}

fn bad(why: String) -> StoreError {
    StoreError::Conflict(why)
}

/// Applies a batch from another copy of the tenant, in one transaction (the caller's).
/// `me` is this copy's origin name. Batches of one origin apply in order: one that does not
/// follow the last applied (its `after` is the cursor) is refused, so that none is
/// skipped; one applied before changes nothing.
pub fn apply(conn: &Connection, batch: &Batch, me: &str, at: i64) -> Result<Applied, StoreError> {
    if batch.format != FORMAT {
        return Err(bad(format!(
            "batch format {} is not known here",
            batch.format
        )));
    }
    let cursor = replica::cursor(conn, &batch.origin)?;
    if batch.last <= cursor {
        return Ok(Applied {
            known: true,
            ..Applied::default()
        });
    }
    if batch.after != cursor {
        return Err(bad(format!(
            "batch {}..{} of {} does not follow what was applied here (through {cursor})",
            batch.after, batch.last, batch.origin
        )));
    }
    let home = sql::fixed_home_page(conn)?.unwrap_or_default();
    let before = replica::last_change(conn)?;
    let mut done = Applied::default();
    for item in &batch.items {
        match item {
            Item::Statements {
                stored,
                list,
                blobs,
            } => done.statements += apply_statements(conn, &home, *stored, list, blobs)?,
            Item::Field { op } => {
                done.fields += 1;
                match replica::apply_field(conn, op, &batch.origin, me, at)? {
                    replica::Outcome::Merged(replica::Merged::Won | replica::Merged::Lost) => {
                        done.conflicts += 1;
                    }
                    // Held back until what it names is here: tried again below.
                    replica::Outcome::Merged(_) | replica::Outcome::Lacking(_) => {}
                }
            }
            Item::Document {
                kind,
                activity,
                agent,
                registration,
                id,
                op,
                doc,
            } => {
                let key = document_key(kind, activity, agent, registration)?;
                let merged =
                    apply_document(conn, &key, id, op, doc.as_ref(), &batch.origin, me, at)?;
                if matches!(merged, replica::Merged::Won | replica::Merged::Lost) {
                    done.conflicts += 1;
                }
                done.documents += 1;
            }
            Item::Erase { agent, at: when } => {
                done.erasures += 1;
                erase(conn, &home, agent, *when)?;
            }
            Item::Generation { what } => {
                if !done.lacking.contains(what) {
                    done.lacking.push(what.clone());
                }
            }
            Item::Evidence { e } => {
                let merged = crate::store::competency::merge_evidence(conn, e, &batch.origin, at)?;
                note_merge(&mut done, merged);
            }
            Item::Retain {
                statements,
                evidence,
            } => {
                let (s, e) = crate::store::retention::apply_synced(
                    conn,
                    statements,
                    evidence,
                    &batch.origin,
                    at,
                )?;
                done.retained += s + e;
            }
            Item::Level { l } => {
                let merged = crate::store::competency::merge_level(conn, l, &batch.origin, at)?;
                note_merge(&mut done, merged);
            }
        }
    }
    done.awaiting = replica::retry_waiting(conn, me, at)?;
    replica::mark_merged(conn, before, &batch.origin)?;
    replica::set_cursor(conn, &batch.origin, batch.last)?;
    Ok(done)
}

fn note_merge(done: &mut Applied, merged: crate::store::competency::Merge) {
    match merged {
        crate::store::competency::Merge::Added => done.assessments += 1,
        crate::store::competency::Merge::Known => {}
        crate::store::competency::Merge::Missing(why) => {
            if !done.lacking.contains(&why) {
                done.lacking.push(why);
            }
        }
    }
}

fn document_key(
    kind: &str,
    activity: &str,
    agent: &str,
    registration: &str,
) -> Result<DocumentKey, StoreError> {
    Ok(DocumentKey {
        kind: doc_kind(kind).ok_or_else(|| bad(format!("`{kind}` is not a document kind")))?,
        activity_id: activity.into(),
        agent: agent.into(),
        registration: registration.into(),
    })
}

/// Merges a document's stamp like a field; when it wins, the document takes its content
/// (or goes, when it was deleted). A stamp whose content was replaced at its origin before
/// the batch was made changes only the version: the later stamp brings the content.
#[allow(clippy::too_many_arguments)]
fn apply_document(
    conn: &Connection,
    key: &DocumentKey,
    id: &str,
    op: &FieldOp,
    doc: Option<&Doc>,
    origin: &str,
    me: &str,
    at: i64,
) -> Result<replica::Merged, StoreError> {
    if op.e != "doc" || op.k != sql::document_name(key, id) {
        return Err(bad("a document's stamp names another document".into()));
    }
    let erased = replica::erased_agents(conn)?;
    if erased.iter().any(|a| key.agent.contains(a.as_str())) {
        return Ok(replica::Merged::Lost);
    }
    let merged = replica::merge_field(conn, op, origin, me, at)?;
    if !matches!(merged, replica::Merged::Followed | replica::Merged::Won) {
        return Ok(merged);
    }
    match (doc, op.v.is_null()) {
        (_, true) => {
            sql::remove_document(conn, key, id)?;
        }
        (Some(d), false) => {
            let content = B64
                .decode(&d.content)
                .map_err(|_| bad("a document's content is not base64".into()))?;
            sql::store_document(
                conn,
                key,
                id,
                &sql::Document {
                    content_type: d.content_type.clone(),
                    content,
                    etag: d.etag.clone(),
                    updated: d.updated,
                },
            )?;
        }
        (None, false) => {}
    }
    Ok(merged)
}

fn erase(conn: &Connection, home: &str, agent: &str, at: i64) -> Result<(), StoreError> {
    let user: Option<i64> = conn
        .prepare_cached("SELECT id FROM users WHERE agent_name = ?1")?
        .query_row([agent], |r| r.get(0))
        .optional()?;
    if let Some(user) =
        user.and_then(|id| crate::store::tenant::user_by_id(conn, id).ok().flatten())
        && crate::store::erasure::erase_user(conn, &user, home, &Actor::System, at)?.is_ok()
    {
        return Ok(());
    }
    replica::erase(conn, agent, at)
}

/// Stores statements that arrived in a batch: one already held (by id) is left as it is,
/// as is one about an erased user. Their evidence is derived here as for any statement.
fn apply_statements(
    conn: &Connection,
    home: &str,
    stored: i64,
    list: &[String],
    blobs: &[Attachment],
) -> Result<usize, StoreError> {
    let erased: HashSet<String> = replica::erased_agents(conn)?
        .into_iter()
        .map(|a| crate::lrs::learner_key(home, &a).0)
        .collect();
    let mut fresh = Vec::new();
    for text in list {
        let value: Value = serde_json::from_str(text)
            .map_err(|_| bad("a statement in the batch is not JSON".into()))?;
        let storer = Storer {
            authority: value["authority"].clone(),
            key: String::new(),
        };
        let p = prepare(value, &storer, Version::V2, String::new);
        if p.id.is_empty() {
            return Err(bad("a statement in the batch has no id".into()));
        }
        let held = conn
            .prepare_cached("SELECT 1 FROM xapi_statements WHERE id = ?1")?
            .query_row([&p.id], |_| Ok(()))
            .optional()?
            .is_some();
        if held || p.keys.iter().any(|(k, _)| erased.contains(k)) {
            continue;
        }
        fresh.push(p);
    }
    if fresh.is_empty() {
        return Ok(0);
    }
    let blobs: Vec<Blob> = blobs
        .iter()
        .map(|b| {
            Ok(Blob {
                sha2: b.sha2.clone(),
                content_type: b.content_type.clone(),
                content: B64
                    .decode(&b.content)
                    .map_err(|_| bad("an attachment is not base64".into()))?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    let n = match sql::insert_statements(conn, &fresh, &blobs, stored)? {
        Ok(n) => n,
        Err(e) => return Err(bad(format!("a statement of the batch was refused: {e}"))),
    };
    let values: Vec<&Value> = fresh.iter().map(|p| &p.value).collect();
    // Dated as at the origin: when the statements were stored there.
    crate::store::competency::evidence_from_statements(
        conn,
        &values,
        home,
        &Actor::System,
        stored / 1000,
    )?;
    Ok(n)
}

const CONTEXT: &str = "ceredis-continuity-v1|batch";

fn aad(uid: &str, origin: &str, after: i64, last: i64) -> Vec<u8> {
    format!("{CONTEXT}|{uid}|{origin}|{after}|{last}").into_bytes()
}

/// JSON, zstd, sealed: `nonce ‖ ciphertext ‖ tag`.
pub fn seal(key: &[u8], uid: &str, batch: &Batch) -> Result<Vec<u8>, std::io::Error> {
    let json = serde_json::to_vec(batch).map_err(std::io::Error::other)?;
    let mut data = zstd::encode_all(&json[..], 3)?;
    let mut nonce = [0u8; 12];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
        .map_err(|_| std::io::Error::other("no randomness available"))?;
    let sealing = UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| std::io::Error::other("bad key"))?;
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(uid, &batch.origin, batch.after, batch.last)),
            &mut data,
        )
        .map_err(|_| std::io::Error::other("sealing failed"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&data);
    Ok(out)
}

/// Opens a sealed batch said to be `origin`'s changes after `after` through `last`: `None`
/// when the key is wrong, a byte changed, or it is another batch.
pub fn open(
    key: &[u8],
    uid: &str,
    origin: &str,
    after: i64,
    last: i64,
    sealed: &[u8],
) -> Option<Batch> {
    if sealed.len() < 12 {
        return None;
    }
    let (nonce, body) = sealed.split_at(12);
    let mut data = body.to_vec();
    let opening = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).ok()?);
    let plain = opening
        .open_in_place(
            Nonce::try_assume_unique_for_key(nonce).ok()?,
            Aad::from(aad(uid, origin, after, last)),
            &mut data,
        )
        .ok()?;
    let json = zstd::decode_all(&plain[..]).ok()?;
    let batch: Batch = serde_json::from_slice(&json).ok()?;
    (batch.origin == origin && batch.after == after && batch.last == last).then_some(batch)
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
