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
//! Must not: read the database or know who is asking. Key types: [`Item`], [`Estimate`].

use ring::digest;

use super::Source;

/// The version of the algorithm this binary applies to new recalculations.
pub const ALGORITHM: &str = "ceredis-mastery/1";

/// Recency factor per step back, in hundredths.
const DECAY_PERCENT: i128 = 85;
/// The prior: its weight (in source-weight units) and its value.
const PRIOR_WEIGHT: i128 = 2;
const PRIOR_BP: i128 = 5_000;

/// One row of a pair's evidence, as stored (in id order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: i64,
    pub source: Source,
    /// `None` for a withdrawal.
    pub value_bp: Option<i64>,
    /// The row this one corrects or withdraws.
    pub supersedes: Option<i64>,
}

/// One item of effective evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item {
    pub id: i64,
    pub source: Source,
    pub value_bp: i64,
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

/// The effective evidence among a pair's rows (given in id order).
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

/// Applies `ceredis-mastery/1` to effective items in id order.
pub fn estimate(items: &[Item]) -> Estimate {
    let mut hash = digest::Context::new(&digest::SHA256);
    hash.update(ALGORITHM.as_bytes());
    hash.update(b"\n");
    for i in items {
        hash.update(format!("{}:{}:{}\n", i.id, i.source.as_str(), i.value_bp).as_bytes());
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
            Row {
                id: 1,
                source: Source::Observation,
                value_bp: Some(0),
                supersedes: None,
            },
            Row {
                id: 2,
                source: Source::Xapi,
                value_bp: Some(8_000),
                supersedes: None,
            },
            Row {
                id: 3,
                source: Source::Observation,
                value_bp: Some(10_000),
                supersedes: Some(1),
            },
            Row {
                id: 4,
                source: Source::Xapi,
                value_bp: None,
                supersedes: Some(2),
            },
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
}
