//! Retention: how long a tenant keeps its learning records. Two windows, in days, in the
//! tenant's settings (absent: kept for good): xAPI statements by their timestamp (when the
//! experience happened), and evidence by its date (a record and every correction or
//! withdrawal of it go together). A dry run says what would go and changes nothing.
//!
//! Deleting evidence changes estimates: each affected (pupil, competency) pair is
//! recalculated with the trigger `retention`, after the content of its earlier journal
//! entries is blanked (they named evidence that no longer exists; the chain stays
//! verifiable). The run itself is a journal entry and a change-log row that names what
//! went (statement ids, evidence global ids), so that other copies of the tenant delete the
//! same records ([`apply_synced`]).

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::StoreError;
use crate::competency::Actor;

const STATEMENTS_DAYS: &str = "retention.statements_days";
const EVIDENCE_DAYS: &str = "retention.evidence_days";

/// The windows, in days; `None` keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    pub statements_days: Option<i64>,
    pub evidence_days: Option<i64>,
}

fn days(conn: &Connection, key: &str) -> Result<Option<i64>, StoreError> {
    Ok(super::lrs::setting(conn, key)?.and_then(|v| v.parse().ok()))
}

pub fn policy(conn: &Connection) -> Result<Policy, StoreError> {
    Ok(Policy {
        statements_days: days(conn, STATEMENTS_DAYS)?,
        evidence_days: days(conn, EVIDENCE_DAYS)?,
    })
}

pub fn set_policy(conn: &Connection, p: &Policy) -> Result<(), StoreError> {
    for (key, value) in [
        (STATEMENTS_DAYS, p.statements_days),
        (EVIDENCE_DAYS, p.evidence_days),
    ] {
        match value {
            Some(d) => conn
                .prepare_cached(
                    "INSERT INTO tenant_settings (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![key, d.to_string()])?,
            None => conn
                .prepare_cached("DELETE FROM tenant_settings WHERE key = ?1")?
                .execute([key])?,
        };
    }
    Ok(())
}

/// What a run would delete.
#[derive(Debug, Clone, Default)]
struct Plan {
    statements: Vec<i64>,
    evidence: Vec<i64>,
    pairs: BTreeSet<(i64, i64)>,
}

fn plan(conn: &Connection, p: &Policy, now: i64) -> Result<Plan, StoreError> {
    let mut out = Plan::default();
    if let Some(d) = p.statements_days {
        out.statements = super::lrs::statements_before(conn, (now - d * 86_400) * 1000)?;
    }
    if let Some(d) = p.evidence_days {
        let mut stmt = conn.prepare_cached(
            "WITH RECURSIVE doomed(id) AS (
                 SELECT id FROM evidence WHERE kind = 'record' AND at < ?1
                 UNION SELECT e.id FROM evidence e JOIN doomed d ON e.supersedes = d.id)
             SELECT id, pupil_id, competency_id FROM evidence WHERE id IN doomed ORDER BY id",
        )?;
        let rows = stmt.query_map([now - d * 86_400], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (id, pupil, competency) = row?;
            out.evidence.push(id);
            out.pairs.insert((pupil, competency));
        }
    }
    Ok(out)
}

/// Applies the tenant's policy (or, with `dry_run`, only says what it would do).
pub fn run(
    conn: &Connection,
    dry_run: bool,
    by: &Actor,
    now: i64,
) -> Result<serde_json::Value, StoreError> {
    let policy = policy(conn)?;
    let plan = plan(conn, &policy, now)?;
    let pupils: BTreeSet<i64> = plan.pairs.iter().map(|(p, _)| *p).collect();
    let mut report = json!({
        "dry_run": dry_run,
        "policy": policy,
        "statements": plan.statements.len(),
        "evidence": plan.evidence.len(),
        "pupils": pupils.len(),
        "estimates_recalculated": plan.pairs.len(),
    });
    if dry_run {
        return Ok(report);
    }
    let gone = named(conn, &plan)?;
    let seq = execute(
        conn,
        &plan,
        by,
        now,
        json!({"actor": by.journal_name(), "report": report}),
    )?;
    let mut subject = gone;
    subject["journal"] = json!(seq);
    super::lrs::log_change(conn, now * 1000, "retention", &subject.to_string())?;
    report["journal_seq"] = json!(seq);
    Ok(report)
}

/// What a plan deletes, by the names every copy knows: statement ids, evidence global ids.
fn named(conn: &Connection, plan: &Plan) -> Result<serde_json::Value, StoreError> {
    let seqs = serde_json::to_string(&plan.statements).unwrap_or_else(|_| "[]".into());
    let statements: Vec<String> = conn
        .prepare_cached(
            "SELECT id FROM xapi_statements WHERE seq IN (SELECT value FROM json_each(?1))
             ORDER BY seq",
        )?
        .query_map([&seqs], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let ids = serde_json::to_string(&plan.evidence).unwrap_or_else(|_| "[]".into());
    let evidence: Vec<String> = conn
        .prepare_cached(
            "SELECT uid FROM evidence WHERE id IN (SELECT value FROM json_each(?1))
             AND uid IS NOT NULL ORDER BY id",
        )?
        .query_map([&ids], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(json!({"statements": statements, "evidence": evidence}))
}

/// Deletes what the plan names, recalculates the pairs whose evidence went (their earlier
/// entries blanked) and journals the run with `body`; returns the journal entry.
fn execute(
    conn: &Connection,
    plan: &Plan,
    by: &Actor,
    now: i64,
    body: serde_json::Value,
) -> Result<i64, StoreError> {
    let before = super::replica::last_change(conn)?;
    super::lrs::delete_statements(conn, &plan.statements)?;
    let ids = serde_json::to_string(&plan.evidence).unwrap_or_else(|_| "[]".into());
    conn.prepare_cached("DELETE FROM evidence WHERE id IN (SELECT value FROM json_each(?1))")?
        .execute([&ids])?;
    let through: i64 = conn
        .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'evidence'")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    for (pupil, competency) in &plan.pairs {
        conn.prepare_cached(
            "UPDATE assessment_journal SET body = NULL, salt = NULL, subject_id = NULL,
                    competency_id = NULL
             WHERE kind = 'score' AND subject_id = ?1 AND competency_id = ?2",
        )?
        .execute([pupil, competency])?;
        super::competency::recalculate(
            conn,
            *pupil,
            *competency,
            super::competency::RETENTION,
            through,
            by,
            now,
        )?;
    }
    // The run names what it deleted: the marks its deletions left are not needed.
    super::replica::forget_generation_marks(conn, before)?;
    super::competency::append_journal(conn, "retention", None, None, &body, now)
}

/// Deletes here what a retention run at another copy (`origin`) deleted there: the
/// statements and evidence it names that this copy holds. Returns how many of each went.
pub fn apply_synced(
    conn: &Connection,
    statements: &[String],
    evidence: &[String],
    origin: &str,
    now: i64,
) -> Result<(usize, usize), StoreError> {
    let mut plan = Plan::default();
    let ids = serde_json::to_string(statements).unwrap_or_else(|_| "[]".into());
    plan.statements = conn
        .prepare_cached(
            "SELECT seq FROM xapi_statements WHERE id IN (SELECT value FROM json_each(?1))
             ORDER BY seq",
        )?
        .query_map([&ids], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let uids = serde_json::to_string(evidence).unwrap_or_else(|_| "[]".into());
    let rows: Vec<(i64, i64, i64)> = conn
        .prepare_cached(
            "SELECT id, pupil_id, competency_id FROM evidence
             WHERE uid IN (SELECT value FROM json_each(?1)) ORDER BY id",
        )?
        .query_map([&uids], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (id, pupil, competency) in rows {
        plan.evidence.push(id);
        plan.pairs.insert((pupil, competency));
    }
    if plan.statements.is_empty() && plan.evidence.is_empty() {
        return Ok((0, 0));
    }
    let done = (plan.statements.len(), plan.evidence.len());
    execute(
        conn,
        &plan,
        &Actor::System,
        now,
        json!({"actor": "system", "merged_from": origin,
               "report": {"statements": done.0, "evidence": done.1}}),
    )?;
    Ok(done)
}
