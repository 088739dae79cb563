//! SQL of the learning-analytics figures: for a class or the whole school, the decided
//! level distribution per skill, evidence per week, and how many pupils have evidence on
//! each skill. Aggregates only: no row here names a pupil.

use std::collections::{BTreeMap, HashMap};

use rusqlite::Connection;

use super::StoreError;
use crate::competency::Text;

#[derive(Debug, Clone, serde::Serialize)]
pub struct SkillFigures {
    pub uri: String,
    pub code: String,
    pub name: Text,
    /// Pupils per decided level, in the skill's level order (levels with none included).
    pub levels: Vec<(String, i64)>,
    /// Pupils with no level decided on this skill.
    pub undecided: i64,
    /// Pupils with at least one piece of evidence in effect on the skill or its descriptors.
    pub covered: i64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Figures {
    pub pupils: i64,
    pub skills: Vec<SkillFigures>,
    /// `(first day of the week as Unix seconds, evidence rows that week, their mean result
    /// in basis points)`, the last 12 weeks with any: activity and progress over time.
    pub weekly_evidence: Vec<(i64, i64, i64)>,
    pub evidence_total: i64,
}

/// The figures of one class's pupils, or of every active pupil (`class: None`).
pub fn figures(conn: &Connection, class: Option<i64>) -> Result<Figures, StoreError> {
    let pupils: Vec<i64> = conn
        .prepare_cached(
            "SELECT u.id FROM users u WHERE u.role = 'student' AND u.active = 1 AND
                 (?1 IS NULL OR EXISTS (SELECT 1 FROM enrolments e WHERE e.user_id = u.id
                                         AND e.class_id = ?1 AND e.role = 'student'))",
        )?
        .query_map([class], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let set = serde_json::to_string(&pupils).unwrap_or_else(|_| "[]".into());
    // Current level per (pupil, skill).
    let mut decided: HashMap<i64, HashMap<String, i64>> = HashMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT d.competency_id, d.level_code, count(*) FROM level_decisions d
             WHERE d.pupil_id IN (SELECT value FROM json_each(?1)) AND d.id = (
                 SELECT max(id) FROM level_decisions x
                  WHERE x.pupil_id = d.pupil_id AND x.competency_id = d.competency_id)
             GROUP BY d.competency_id, d.level_code",
        )?;
        let rows = stmt.query_map([&set], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (skill, level, n) = row?;
            decided.entry(skill).or_default().insert(level, n);
        }
    }
    // Pupils with estimates per skill (on the skill itself or a descriptor narrowing it).
    let mut covered: HashMap<i64, i64> = HashMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT coalesce(r.target_id, s.competency_id) AS skill, count(DISTINCT s.pupil_id)
             FROM scores s
             LEFT JOIN competency_relations r ON r.source_id = s.competency_id AND r.kind = 'narrows'
             WHERE s.pupil_id IN (SELECT value FROM json_each(?1))
             GROUP BY skill",
        )?;
        let rows = stmt.query_map([&set], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (skill, n) = row?;
            covered.insert(skill, n);
        }
    }
    let mut skills = Vec::new();
    for f in super::competency::frameworks(conn)? {
        for c in super::competency::competencies(conn, f.id)? {
            if c.parent_id.is_some() || c.levels.is_empty() {
                continue;
            }
            let counts = decided.remove(&c.id).unwrap_or_default();
            let levels: Vec<(String, i64)> = c
                .levels
                .iter()
                .map(|l| (l.code.clone(), counts.get(&l.code).copied().unwrap_or(0)))
                .collect();
            let with_level: i64 = levels.iter().map(|(_, n)| n).sum();
            skills.push(SkillFigures {
                uri: c.uri.clone(),
                code: c.code.clone(),
                name: c.name.clone(),
                undecided: pupils.len() as i64 - with_level,
                covered: covered.get(&c.id).copied().unwrap_or(0),
                levels,
            });
        }
    }
    let mut weeks: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    {
        let mut stmt = conn.prepare_cached(
            "SELECT (at - (at + 259200) % 604800) AS week, count(*),
                    coalesce(CAST(round(avg(value_bp)) AS INTEGER), 0)
             FROM evidence WHERE pupil_id IN (SELECT value FROM json_each(?1))
             GROUP BY week ORDER BY week DESC LIMIT 12",
        )?;
        let rows = stmt.query_map([&set], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (week, n, mean) = row?;
            weeks.insert(week, (n, mean));
        }
    }
    let evidence_total: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM evidence WHERE pupil_id IN (SELECT value FROM json_each(?1))",
        )?
        .query_row([&set], |r| r.get(0))?;
    Ok(Figures {
        pupils: pupils.len() as i64,
        skills,
        weekly_evidence: weeks.into_iter().map(|(w, (n, m))| (w, n, m)).collect(),
        evidence_total,
    })
}
