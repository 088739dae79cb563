//! SQL of research projects and their exports: the project (its quasi-identifiers, `k`, the
//! share of pupils it may suppress, its pseudonym key, which never leaves the appliance),
//! its researchers, the population an export describes, and the journal entry every export
//! leaves (who, when, which project, what the privacy gate decided).

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;

use super::StoreError;
use crate::competency::research::{self, Population, Pupil, Qi, SkillFacts};
use crate::competency::{Actor, Refusal, Status, status};

/// Appended to the tenant migrations.
pub const V1: &str = "
CREATE TABLE research_projects (
    id                INTEGER PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    title             TEXT NOT NULL,
    quasi_identifiers TEXT NOT NULL,
    k                 INTEGER NOT NULL CHECK (k >= 5),
    max_suppressed    REAL NOT NULL CHECK (max_suppressed BETWEEN 0 AND 0.5),
    pseudonym_key     BLOB NOT NULL,
    created_by        INTEGER,
    created_at        INTEGER NOT NULL
);
CREATE TABLE research_members (
    project_id INTEGER NOT NULL REFERENCES research_projects(id),
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (project_id, user_id)
) WITHOUT ROWID;
";

/// A research project, without its key.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Project {
    pub id: i64,
    pub name: String,
    pub title: String,
    pub quasi_identifiers: Vec<Qi>,
    pub k: i64,
    pub max_suppressed: f64,
}

pub struct NewProject {
    pub name: String,
    pub title: String,
    pub quasi_identifiers: Vec<Qi>,
    pub k: i64,
    pub max_suppressed: f64,
    pub researchers: Vec<i64>,
}

/// Creates a project (with a fresh random pseudonym key) and its researchers.
pub fn create_project(
    conn: &Connection,
    p: &NewProject,
    by: i64,
    at: i64,
) -> Result<Result<i64, Refusal>, StoreError> {
    for r in &p.researchers {
        let role: Option<String> = conn
            .prepare_cached("SELECT role FROM users WHERE id = ?1 AND active = 1")?
            .query_row([r], |row| row.get(0))
            .optional()?;
        if role.as_deref() != Some("researcher") {
            return Ok(Err(Refusal::new(
                "not_a_researcher",
                format!("user {r} is not an active researcher of this school"),
            )));
        }
    }
    let qis = serde_json::to_string(&p.quasi_identifiers).unwrap_or_default();
    let inserted = conn
        .prepare_cached(
            "INSERT INTO research_projects
                 (name, title, quasi_identifiers, k, max_suppressed, pseudonym_key, created_by,
                  created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, randomblob(32), ?6, ?7)",
        )?
        .execute(params![p.name, p.title, qis, p.k, p.max_suppressed, by, at])
        .map_err(StoreError::from);
    match inserted {
        Err(e) if e.is_unique_violation() => {
            return Ok(Err(Refusal::new(
                "project_exists",
                format!("a project named `{}` already exists", p.name),
            )));
        }
        other => other?,
    };
    let id = conn.last_insert_rowid();
    for r in &p.researchers {
        conn.prepare_cached("INSERT INTO research_members (project_id, user_id) VALUES (?1, ?2)")?
            .execute([id, *r])?;
    }
    Ok(Ok(id))
}

fn project_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project {
        id: r.get(0)?,
        name: r.get(1)?,
        title: r.get(2)?,
        quasi_identifiers: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
        k: r.get(4)?,
        max_suppressed: r.get(5)?,
    })
}

/// The projects a researcher belongs to (every project for `None`).
pub fn projects(conn: &Connection, member: Option<i64>) -> Result<Vec<Project>, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT id, name, title, quasi_identifiers, k, max_suppressed FROM research_projects p
             WHERE ?1 IS NULL OR EXISTS (SELECT 1 FROM research_members m
                                          WHERE m.project_id = p.id AND m.user_id = ?1)
             ORDER BY name",
        )?
        .query_map([member], project_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Everything an export may describe: every active pupil, their first class and its
/// school, and per levelled skill their decided level, descriptors reached and evidence.
/// `progress(done, total)` is called as pupils are read.
pub fn population(
    conn: &Connection,
    progress: &dyn Fn(u64, u64),
) -> Result<Population, StoreError> {
    let mut skills = Vec::new();
    let mut descriptors: HashMap<i64, Vec<(i64, Option<String>)>> = HashMap::new();
    for f in super::competency::frameworks(conn)? {
        for c in super::competency::competencies(conn, f.id)? {
            if let Some(parent) = c.parent_id {
                descriptors
                    .entry(parent)
                    .or_default()
                    .push((c.id, c.level_code.clone()));
            } else if !c.levels.is_empty() {
                skills.push(c);
            }
        }
    }
    let ids: Vec<i64> = conn
        .prepare_cached("SELECT id FROM users WHERE role = 'student' AND active = 1 ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut pupils = Vec::with_capacity(ids.len());
    let total = ids.len() as u64;
    progress(0, total);
    for (n, id) in ids.into_iter().enumerate() {
        if n % 64 == 0 {
            progress(n as u64, total);
        }
        let (class, school): (String, String) = conn
            .prepare_cached(
                "SELECT c.title, coalesce(o.name, '') FROM enrolments e
                 JOIN classes c ON c.id = e.class_id
                 LEFT JOIN orgs o ON o.sourced_id = c.org_sourced_id
                 WHERE e.user_id = ?1 AND e.role = 'student' ORDER BY c.title LIMIT 1",
            )?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or_default();
        let scores: HashMap<i64, (i64, i64)> = super::competency::scores_of(conn, id)?
            .into_iter()
            .map(|s| (s.competency_id, (s.mastery_bp, s.evidence_count)))
            .collect();
        let levels: HashMap<i64, String> = super::competency::current_levels(conn, id)?
            .into_iter()
            .map(|l| (l.competency_id, l.level_code))
            .collect();
        let facts = skills
            .iter()
            .map(|skill| {
                let level = levels.get(&skill.id).cloned();
                let rank = |code: &str| skill.levels.iter().position(|l| l.code == code);
                let decided = level.as_deref().and_then(rank);
                let mine = descriptors
                    .get(&skill.id)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let reached = mine
                    .iter()
                    .filter(|(d, at)| {
                        let covered = matches!((decided, at.as_deref().and_then(rank)),
                            (Some(have), Some(r)) if r <= have);
                        status(scores.get(d).copied(), covered) == Status::Reached
                    })
                    .count() as i64;
                let evidence = mine
                    .iter()
                    .map(|(d, _)| d)
                    .chain([&skill.id])
                    .filter_map(|d| scores.get(d).map(|s| s.1))
                    .sum();
                SkillFacts {
                    skill: skill.code.clone(),
                    level,
                    descriptors_reached: reached,
                    evidence,
                }
            })
            .collect();
        pupils.push(Pupil {
            id,
            class,
            school,
            skills: facts,
        });
    }
    progress(total, total);
    Ok(Population { pupils })
}

/// Which table an export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dataset {
    /// One row per pupil and skill.
    Pupils,
    /// Pupils per quasi-identifiers, skill and level, small cells suppressed.
    Distribution,
}

/// An export's result: the CSV and what the gate said, or the gate's refusal, with the
/// journal body to append either way.
pub struct Prepared {
    pub outcome: Result<(String, serde_json::Value), Refusal>,
    journal: serde_json::Value,
}

/// Reads and gates an export for a researcher of the project (on a read connection: a long
/// export does not hold the writer). `Ok(None)`: not a project of theirs.
pub fn prepare_export(
    conn: &Connection,
    project: i64,
    dataset: Dataset,
    researcher: i64,
    progress: &dyn Fn(u64, u64),
) -> Result<Option<Prepared>, StoreError> {
    let row: Option<(Project, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT id, name, title, quasi_identifiers, k, max_suppressed, pseudonym_key
             FROM research_projects p WHERE id = ?1 AND EXISTS
                 (SELECT 1 FROM research_members m WHERE m.project_id = p.id AND m.user_id = ?2)",
        )?
        .query_row([project, researcher], |r| {
            Ok((project_from_row(r)?, r.get(6)?))
        })
        .optional()?;
    let Some((p, key)) = row else {
        return Ok(None);
    };
    let population = population(conn, progress)?;
    let outcome = research::gate(
        &population,
        &p.quasi_identifiers,
        p.k as usize,
        p.max_suppressed,
    )
    .and_then(|release| {
        let csv_error = |e: csv::Error| Refusal::new("export_failed", e.to_string());
        let (csv, rows) = match dataset {
            Dataset::Pupils => {
                let csv = research::pupils_csv(&population, &release, &p.quasi_identifiers, &key)
                    .map_err(csv_error)?;
                let rows = csv.lines().count().saturating_sub(1);
                (csv, rows)
            }
            Dataset::Distribution => {
                let (csv, released) =
                    research::distribution_csv(&population, &release, &p.quasi_identifiers)
                        .map_err(csv_error)?;
                if released == 0 {
                    return Err(Refusal::new(
                        "privacy_gate",
                        "every cell of this table counts fewer than 5 pupils: nothing can be released",
                    ));
                }
                (csv, released)
            }
        };
        let gate = json!({
            "passed": true, "rows": rows, "suppressed_pupils": release.suppressed,
            "smallest_group": release.smallest_group,
        });
        Ok((csv, gate))
    });
    let gate = match &outcome {
        Ok((_, gate)) => gate.clone(),
        Err(r) => json!({"passed": false, "reason": r.message}),
    };
    let journal = json!({
        "project": p.name,
        "dataset": dataset,
        "actor": Actor::User(researcher).journal_name(),
        "k": p.k,
        "quasi_identifiers": p.quasi_identifiers,
        "population": population.pupils.len(),
        "gate": gate,
    });
    Ok(Some(Prepared { outcome, journal }))
}

/// Journals an export attempt, whatever the gate decided.
pub fn journal_export(conn: &Connection, prepared: &Prepared, at: i64) -> Result<i64, StoreError> {
    super::competency::append_journal(conn, "export", None, None, &prepared.journal, at)
}
