//! The mastery algorithm: how a pupil's evidence on one competency becomes an estimate.
//!
//! Versioned by [`ALGORITHM`]; the journal records the version of every recalculation, and
//! replay dispatches on it, so a later version never reinterprets an earlier entry. All
//! arithmetic is on integers (basis points, 0..=10 000), so that a replay on any machine
//! gives the same figure to the last digit.
//!
//! `ceredis-mastery/1`:
//! - the *effective* evidence of a (pupil, competency) pair is every record or correction
//!   that no later row supersedes (a correction replaces a row; a withdrawal removes it);
//! - each item weighs by its source (a teacher's observation 3, an xAPI result 2, a pupil's
//!   self-assessment 1) times a recency factor: the newest item 1, each older one 0.85 of
//!   the one after it (rounded down in basis points, so items about 57 places back weigh 0);
//! - a prior of weight 2 at 5 000 (half-way) keeps one lucky answer from reading as mastery;
//! - the estimate is the weighted mean, rounded half up.
//!
//! `ceredis-mastery/2` is the same arithmetic on the items ordered by when the learning
//! happened (the row's `at`), then by the row's global id, instead of by the local row id;
//! its inputs hash names the global ids. Two copies of a school that hold the same evidence,
//! received in any order, give the same estimate and the same inputs hash.
//!
//! Must not: read the database or know who is asking. Key types: [`Item`], [`Estimate`].

use ring::digest;

use super::Source;

/// The version of the algorithm this binary applies to new recalculations.
pub const ALGORITHM: &str = "ceredis-mastery/2";
/// Every version a journal entry may name, and that replay knows.
pub const KNOWN: [&str; 2] = ["ceredis-mastery/1", ALGORITHM];

/// Recency factor per step back, in hundredths.
const DECAY_PERCENT: i128 = 85;
/// The prior: its weight (in source-weight units) and its value.
const PRIOR_WEIGHT: i128 = 2;
const PRIOR_BP: i128 = 5_000;

/// One row of a pair's evidence, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub source: Source,
    /// `None` for a withdrawal.
    pub value_bp: Option<i64>,
    /// The row this one corrects or withdraws.
    pub supersedes: Option<i64>,
    /// When the learning happened (Unix seconds), and the row's id in every copy.
    pub at: i64,
    pub uid: String,
}

/// One item of effective evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: i64,
    pub source: Source,
    pub value_bp: i64,
    pub uid: String,
}

/// Puts a pair's rows in the order `algorithm` reads them.
pub fn order(rows: &mut [Row], algorithm: &str) {
    if algorithm == KNOWN[0] {
        rows.sort_by_key(|r| r.id);
    } else {
        rows.sort_by(|a, b| (a.at, &a.uid).cmp(&(b.at, &b.uid)));
    }
}

/// What the algorithm made of a pair's effective evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Estimate {
    /// `None` when no effective evidence is left (every item withdrawn).
    pub mastery_bp: Option<i64>,
    pub count: i64,
    /// SHA-256 of the algorithm version and the effective items, hex.
    pub inputs: String,
}

/// The effective evidence among a pair's rows, in their order.
pub fn effective(rows: &[Row]) -> Vec<Item> {
    let superseded: std::collections::HashSet<i64> =
        rows.iter().filter_map(|r| r.supersedes).collect();
    rows.iter()
        .filter(|r| !superseded.contains(&r.id))
        .filter_map(|r| {
            r.value_bp.map(|v| Item {
                id: r.id,
                source: r.source,
                value_bp: v,
                uid: r.uid.clone(),
            })
        })
        .collect()
}

fn weight(source: Source) -> i128 {
    match source {
        Source::Observation => 3,
        Source::Xapi => 2,
        Source::SelfAssessment => 1,
    }
}

/// Applies the current version to effective items in its order.
pub fn estimate(items: &[Item]) -> Estimate {
    estimate_as(ALGORITHM, items)
}

/// Applies version `algorithm` (one of [`KNOWN`]) to effective items in its order.
pub fn estimate_as(algorithm: &str, items: &[Item]) -> Estimate {
    let mut hash = digest::Context::new(&digest::SHA256);
    hash.update(algorithm.as_bytes());
    hash.update(b"\n");
    for i in items {
        let name = if algorithm == KNOWN[0] {
            i.id.to_string()
        } else {
            i.uid.clone()
        };
        hash.update(format!("{name}:{}:{}\n", i.source.as_str(), i.value_bp).as_bytes());
    }
    let inputs = hex(hash.finish().as_ref());
    if items.is_empty() {
        return Estimate {
            mastery_bp: None,
            count: 0,
            inputs,
        };
    }
    let mut factor: i128 = 10_000;
    let mut num: i128 = PRIOR_WEIGHT * 10_000 * PRIOR_BP;
    let mut den: i128 = PRIOR_WEIGHT * 10_000;
    for item in items.iter().rev() {
        let w = weight(item.source) * factor;
        num += w * i128::from(item.value_bp.clamp(0, 10_000));
        den += w;
        factor = factor * DECAY_PERCENT / 100;
    }
    Estimate {
        mastery_bp: Some(((num + den / 2) / den) as i64),
        count: items.len() as i64,
        inputs,
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, source: Source, value_bp: i64) -> Item {
        Item {
            id,
            source,
            value_bp,
            uid: format!("u{id}"),
        }
    }

    fn row(id: i64, source: Source, value_bp: Option<i64>, supersedes: Option<i64>) -> Row {
        Row {
            id,
            source,
            value_bp,
            supersedes,
            at: 0,
            uid: format!("u{id}"),
        }
    }

    #[test]
    fn one_perfect_answer_is_not_mastery() {
        let e = estimate(&[item(1, Source::Xapi, 10_000)]);
        // (2·5000 + 2·10000) / 4 = 7500
        assert_eq!(e.mastery_bp, Some(7_500));
        assert_eq!(e.count, 1);
    }

    #[test]
    fn newer_evidence_counts_more() {
        let rising = estimate(&[
            item(1, Source::Observation, 0),
            item(2, Source::Observation, 10_000),
        ]);
        let falling = estimate(&[
            item(1, Source::Observation, 10_000),
            item(2, Source::Observation, 0),
        ]);
        assert!(rising.mastery_bp > falling.mastery_bp);
        // Newest 3·10000, older 3·8500, prior 2·10000.
        // rising = (3·10000·10000 + 2·10000·5000) / (30000 + 25500 + 20000) = 5298.01…
        assert_eq!(rising.mastery_bp, Some(5_298));
    }

    #[test]
    fn corrections_replace_and_withdrawals_remove() {
        let rows = vec![
            row(1, Source::Observation, Some(0), None),
            row(2, Source::Xapi, Some(8_000), None),
            row(3, Source::Observation, Some(10_000), Some(1)),
            row(4, Source::Xapi, None, Some(2)),
        ];
        assert_eq!(effective(&rows), vec![item(3, Source::Observation, 10_000)]);
    }

    #[test]
    fn the_inputs_hash_names_the_items_and_the_version() {
        let a = estimate(&[item(1, Source::Xapi, 5_000)]);
        let b = estimate(&[item(1, Source::Xapi, 5_001)]);
        let c = estimate(&[item(2, Source::Xapi, 5_000)]);
        assert_ne!(a.inputs, b.inputs);
        assert_ne!(a.inputs, c.inputs);
        assert_eq!(a.inputs.len(), 64);
        assert_eq!(estimate(&[]).mastery_bp, None);
    }

    #[test]
    fn version_2_reads_rows_by_when_they_happened_in_any_copy() {
        // The same evidence, stored in another order (another copy received it later).
        let mut here = vec![
            Row {
                at: 100,
                ..row(1, Source::Observation, Some(2_000), None)
            },
            Row {
                at: 200,
                ..row(2, Source::Observation, Some(9_000), None)
            },
        ];
        let mut there = vec![
            Row {
                id: 7,
                ..here[1].clone()
            },
            Row {
                id: 8,
                ..here[0].clone()
            },
        ];
        order(&mut here, ALGORITHM);
        order(&mut there, ALGORITHM);
        let (a, b) = (estimate(&effective(&here)), estimate(&effective(&there)));
        assert_eq!(a, b, "same estimate and inputs in both copies");
        // Version 1 reads them by local id: the two copies disagree.
        order(&mut here, KNOWN[0]);
        order(&mut there, KNOWN[0]);
        assert_ne!(
            estimate_as(KNOWN[0], &effective(&here)).mastery_bp,
            estimate_as(KNOWN[0], &effective(&there)).mastery_bp
        );
    }
}
