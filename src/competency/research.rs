//! Research exports (the seed's RStudio flow): tidy CSV for R, per research project, that
//! pass a privacy gate before anything leaves the appliance.
//!
//! - Pupils appear under a **keyed pseudonym**: HMAC-SHA-256 with the project's own key,
//!   which never leaves the appliance (two projects cannot join their exports).
//! - **No direct identifier** is ever a column: no name, username, e-mail, user id or xAPI
//!   account. The columns are fixed here, not chosen by the caller.
//! - The project declares its **quasi-identifiers** (a pupil's class, their school). The gate
//!   generalises them (class `4e B` → grade `4e`) and suppresses the pupils of groups still
//!   smaller than `k` (at least 5), choosing the least generalisation whose suppression stays
//!   within the project's limit; if none does, it refuses and says why.
//! - Aggregate tables suppress every cell counting fewer than 5 pupils.
//!
//! Must not: read the database, or release a row the gate has not passed. Key types:
//! [`Population`], [`Release`], [`Refusal`](super::Refusal).

use std::collections::{BTreeMap, HashMap};

use ring::hmac;

use super::Refusal;

/// The smallest `k` a project may ask for.
pub const MIN_K: usize = 5;
/// Aggregate cells counting fewer pupils than this are suppressed.
pub const MIN_CELL: usize = 5;

/// A quasi-identifier a project may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Qi {
    /// The pupil's class (generalised to its grade: the title's first word).
    Class,
    /// The pupil's school (OneRoster org); never generalised below "the tenant".
    School,
}

impl Qi {
    pub fn column(self) -> &'static str {
        match self {
            Qi::Class => "class",
            Qi::School => "school",
        }
    }

    /// The value at generalisation level `level` (0: as is, 1: coarser).
    fn generalise(self, value: &str, level: u8) -> String {
        match (self, level) {
            (_, 0) => value.to_string(),
            (Qi::Class, _) => value.split_whitespace().next().unwrap_or("").to_string(),
            (Qi::School, _) => "*".into(),
        }
    }
}

/// One pupil as the export sees them: quasi-identifier values, and per skill what may be
/// released about them.
#[derive(Debug, Clone)]
pub struct Pupil {
    pub id: i64,
    pub class: String,
    pub school: String,
    pub skills: Vec<SkillFacts>,
}

#[derive(Debug, Clone)]
pub struct SkillFacts {
    pub skill: String,
    pub level: Option<String>,
    pub descriptors_reached: i64,
    pub evidence: i64,
}

/// The population of one export.
#[derive(Debug, Clone)]
pub struct Population {
    pub pupils: Vec<Pupil>,
}

/// What the gate let through.
#[derive(Debug, Clone)]
pub struct Release {
    /// `(pupil id, generalised quasi-identifier values in declared order)`, kept pupils only.
    pub kept: Vec<(i64, Vec<String>)>,
    pub suppressed: usize,
    /// The generalisation level chosen per quasi-identifier.
    pub levels: Vec<u8>,
    /// The size of the smallest group released.
    pub smallest_group: usize,
}

fn key_of(p: &Pupil, qis: &[Qi], levels: &[u8]) -> Vec<String> {
    qis.iter()
        .zip(levels)
        .map(|(qi, l)| {
            let value = match qi {
                Qi::Class => &p.class,
                Qi::School => &p.school,
            };
            qi.generalise(value, *l)
        })
        .collect()
}

/// The k-anonymity gate. Tries every generalisation (least first) and takes the first
/// whose groups all reach `k` after suppressing at most `max_suppressed` pupils.
pub fn gate(
    population: &Population,
    qis: &[Qi],
    k: usize,
    max_suppressed: f64,
) -> Result<Release, Refusal> {
    if k < MIN_K {
        return Err(Refusal::new(
            "privacy_gate",
            format!("k = {k} is below the minimum of {MIN_K}"),
        ));
    }
    let n = population.pupils.len();
    if n < k {
        return Err(Refusal::new(
            "privacy_gate",
            format!("the export would describe {n} pupils, fewer than k = {k}"),
        ));
    }
    let mut candidates: Vec<Vec<u8>> = vec![Vec::new()];
    for _ in qis {
        candidates = candidates
            .into_iter()
            .flat_map(|c| {
                [0u8, 1].map(|l| {
                    let mut next = c.clone();
                    next.push(l);
                    next
                })
            })
            .collect();
    }
    candidates.sort_by_key(|c| c.iter().map(|l| u32::from(*l)).sum::<u32>());
    let allowed = (max_suppressed * n as f64).floor() as usize;
    let mut best: Option<(usize, usize, Vec<u8>)> = None;
    for levels in candidates {
        let mut groups: HashMap<Vec<String>, usize> = HashMap::new();
        for p in &population.pupils {
            *groups.entry(key_of(p, qis, &levels)).or_default() += 1;
        }
        let suppressed: usize = groups.values().filter(|c| **c < k).sum();
        let smallest = groups
            .values()
            .copied()
            .filter(|c| *c >= k)
            .min()
            .unwrap_or(0);
        if suppressed <= allowed && n - suppressed >= k {
            let kept = population
                .pupils
                .iter()
                .filter_map(|p| {
                    let key = key_of(p, qis, &levels);
                    (groups[&key] >= k).then_some((p.id, key))
                })
                .collect();
            return Ok(Release {
                kept,
                suppressed,
                levels,
                smallest_group: smallest,
            });
        }
        if best.as_ref().is_none_or(|(s, _, _)| suppressed < *s) {
            best = Some((
                suppressed,
                groups.values().copied().min().unwrap_or(0),
                levels,
            ));
        }
    }
    let (suppressed, smallest, levels) = best.unwrap_or((n, 0, Vec::new()));
    let how: Vec<String> = qis
        .iter()
        .zip(&levels)
        .map(|(qi, l)| {
            format!(
                "{} {}",
                qi.column(),
                if *l == 0 { "as is" } else { "generalised" }
            )
        })
        .collect();
    Err(Refusal::new(
        "privacy_gate",
        format!(
            "no release reaches k = {k}: even with {} the smallest group has {smallest} \
             pupil(s), and suppressing the groups below k would remove {suppressed} of {n} \
             pupils (the project allows {allowed}). Declare fewer quasi-identifiers, or \
             export a larger population.",
            how.join(" and ")
        ),
    ))
}

/// A pupil's pseudonym in one project.
pub fn pseudonym(project_key: &[u8], pupil: i64) -> String {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, project_key),
        format!("pupil:{pupil}").as_bytes(),
    );
    format!("r_{}", super::mastery::hex(&tag.as_ref()[..10]))
}

/// The tidy pupil-level table: one row per pupil and skill.
pub fn pupils_csv(
    population: &Population,
    release: &Release,
    qis: &[Qi],
    project_key: &[u8],
) -> Result<String, csv::Error> {
    let by_id: HashMap<i64, &Pupil> = population.pupils.iter().map(|p| (p.id, p)).collect();
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["pupil"];
    header.extend(qis.iter().map(|q| q.column()));
    header.extend(["skill", "level", "descriptors_reached", "evidence"]);
    out.write_record(&header)?;
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (id, key) in &release.kept {
        let Some(p) = by_id.get(id) else { continue };
        for s in &p.skills {
            let mut row = vec![pseudonym(project_key, *id)];
            row.extend(key.iter().cloned());
            row.extend([
                s.skill.clone(),
                s.level.clone().unwrap_or_default(),
                s.descriptors_reached.to_string(),
                s.evidence.min(50).to_string(),
            ]);
            rows.push(row);
        }
    }
    // Sorted by pseudonym: the order says nothing about who came first in the roster.
    rows.sort();
    for r in rows {
        out.write_record(&r)?;
    }
    String::from_utf8(out.into_inner().map_err(|e| e.into_error())?)
        .map_err(|e| csv::Error::from(std::io::Error::other(e)))
}

/// The aggregate table: pupils per (quasi-identifiers, skill, decided level), with cells
/// below [`MIN_CELL`] suppressed (`n` empty, `suppressed` true).
pub fn distribution_csv(
    population: &Population,
    release: &Release,
    qis: &[Qi],
) -> Result<(String, usize), csv::Error> {
    let by_id: HashMap<i64, &Pupil> = population.pupils.iter().map(|p| (p.id, p)).collect();
    let mut cells: BTreeMap<(Vec<String>, String, String), usize> = BTreeMap::new();
    for (id, key) in &release.kept {
        let Some(p) = by_id.get(id) else { continue };
        for s in &p.skills {
            let level = s.level.clone().unwrap_or_else(|| "none".into());
            *cells
                .entry((key.clone(), s.skill.clone(), level))
                .or_default() += 1;
        }
    }
    let mut out = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<&str> = qis.iter().map(|q| q.column()).collect();
    header.extend(["skill", "level", "n", "suppressed"]);
    out.write_record(&header)?;
    let mut released = 0;
    for ((key, skill, level), n) in cells {
        let small = n < MIN_CELL;
        let mut row = key;
        row.extend([
            skill,
            level,
            if small { String::new() } else { n.to_string() },
            small.to_string(),
        ]);
        released += usize::from(!small);
        out.write_record(&row)?;
    }
    let text = String::from_utf8(out.into_inner().map_err(|e| e.into_error())?)
        .map_err(|e| csv::Error::from(std::io::Error::other(e)))?;
    Ok((text, released))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pupil(id: i64, class: &str) -> Pupil {
        Pupil {
            id,
            class: class.into(),
            school: "Collège Jean Moulin".into(),
            skills: vec![SkillFacts {
                skill: "reception".into(),
                level: Some(if id % 2 == 0 { "A2" } else { "B1" }.into()),
                descriptors_reached: id % 6,
                evidence: id % 30,
            }],
        }
    }

    /// Classes of 12, 9, 3 and 6 pupils; the 3-pupil class shares its grade with the
    /// 9-pupil one.
    fn school() -> Population {
        let mut pupils = Vec::new();
        let mut id = 0;
        for (class, n) in [("4e A", 12), ("4e B", 9), ("3e A", 3), ("5e C", 6)] {
            for _ in 0..n {
                id += 1;
                pupils.push(pupil(id, class));
            }
        }
        Population { pupils }
    }

    #[test]
    fn the_gate_generalises_or_suppresses_until_every_group_has_k_pupils() {
        let pop = school();
        // 3 of 30 pupils (10 %) may go: the 3e A class is suppressed, classes kept as is.
        let r = gate(&pop, &[Qi::Class], 5, 0.10).unwrap();
        assert_eq!((r.suppressed, r.levels.clone()), (3, vec![0]));
        assert!(r.kept.iter().all(|(_, key)| key[0] != "3e A"));
        // With k = 7, 3e A and 5e C are too small as classes and as grades: refused with
        // the reason, unless suppressing 9 of 30 is allowed.
        let refused = gate(&pop, &[Qi::Class], 7, 0.10).unwrap_err();
        assert_eq!(refused.code, "privacy_gate");
        assert!(refused.message.contains("k = 7"), "{}", refused.message);
        assert!(
            refused.message.contains("of 30 pupils"),
            "{}",
            refused.message
        );
        let r = gate(&pop, &[Qi::Class], 7, 0.30).unwrap();
        assert_eq!(r.suppressed, 9);
        // k below 5, or a population below k, is never released.
        assert!(gate(&pop, &[Qi::Class], 4, 1.0).is_err());
        let tiny = Population {
            pupils: pop.pupils[..4].to_vec(),
        };
        assert!(gate(&tiny, &[], 5, 1.0).is_err());
    }

    #[test]
    fn a_linkage_attack_on_the_quasi_identifiers_singles_out_no_one() {
        let pop = school();
        let key = b"project-key-never-leaves-the-appliance";
        for k in [5, 6] {
            let qis = [Qi::Class, Qi::School];
            let release = gate(&pop, &qis, k, 0.35).unwrap();
            let csv = pupils_csv(&pop, &release, &qis, key).unwrap();
            let mut rows = csv::Reader::from_reader(csv.as_bytes());
            let released: Vec<(String, String, String)> = rows
                .records()
                .map(|r| {
                    let r = r.unwrap();
                    (r[0].to_string(), r[1].to_string(), r[2].to_string())
                })
                .collect();
            // The attacker knows every pupil's name, class and school, and links them to
            // the export by the released quasi-identifier values alone.
            let mut expected_hits = 0.0;
            let mut targets = 0;
            for p in &pop.pupils {
                let known: Vec<String> = key_of(p, &qis, &release.levels);
                let candidates: std::collections::HashSet<&str> = released
                    .iter()
                    .filter(|(_, class, school)| *class == known[0] && *school == known[1])
                    .map(|(pseudo, _, _)| pseudo.as_str())
                    .collect();
                if candidates.is_empty() {
                    continue; // suppressed: not in the export at all
                }
                targets += 1;
                assert!(
                    candidates.len() >= k,
                    "{} candidates for pupil {}",
                    candidates.len(),
                    p.id
                );
                expected_hits += 1.0 / candidates.len() as f64;
            }
            assert!(targets > 0);
            let rate = expected_hits / pop.pupils.len() as f64;
            assert!(
                rate <= 1.0 / k as f64,
                "re-identification rate {rate} with k = {k}"
            );
            // No direct identifier: the columns are fixed; pseudonyms are keyed.
            assert_eq!(
                csv.lines().next().unwrap(),
                "pupil,class,school,skill,level,descriptors_reached,evidence"
            );
            assert!(
                released
                    .iter()
                    .all(|(p, _, _)| p.starts_with("r_") && p.len() == 22)
            );
            assert_ne!(pseudonym(key, 1), pseudonym(b"another project", 1));
        }
    }

    #[test]
    fn small_aggregate_cells_are_suppressed() {
        let pop = school();
        let release = gate(&pop, &[Qi::Class], 5, 0.10).unwrap();
        let (csv, released) = distribution_csv(&pop, &release, &[Qi::Class]).unwrap();
        let mut r = csv::Reader::from_reader(csv.as_bytes());
        let mut seen = 0;
        for row in r.records() {
            let row = row.unwrap();
            seen += 1;
            match &row[3] {
                "" => assert_eq!(&row[4], "true"),
                n => assert!(n.parse::<usize>().unwrap() >= MIN_CELL, "{row:?}"),
            }
        }
        assert!(seen > released && released > 0, "{csv}");
    }
}
