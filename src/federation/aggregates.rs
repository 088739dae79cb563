//! Pseudonymised aggregates a school chooses to publish to its federation (the tenant
//! setting [`PUBLISH_SETTING`], through `PUT /t/{tenant}/api/federation/policy`): per skill,
//! how many pupils' current CEFR level (decided by their teachers) is each level. No pupil,
//! teacher or class is named, no total is given, and every count under
//! [`crate::competency::research::MIN_CELL`] is suppressed (`null`), so that no small group
//! can be singled out. The hub checks the same rule before it stores anything ([`check`]).
//!
//! Must not: publish for a school whose admin did not choose it, or a count of fewer than
//! `MIN_CELL` pupils.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::client::{FederationError, HubClient};
use crate::competency::research::MIN_CELL;
use crate::store::StoreError;
use crate::tenant::TenantHandle;

/// Tenant setting: `1` when the school publishes its aggregates to the federation.
pub const PUBLISH_SETTING: &str = "federation.publish_aggregates";
/// At most this many skills and levels per skill in one publication.
const MAX_SKILLS: usize = 2_000;
const MAX_LEVELS: usize = 32;

/// What a school publishes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregates {
    /// The school's name, as its admin named it.
    pub school: String,
    pub computed_at: i64,
    /// The smallest count published.
    pub min_cell: usize,
    pub skills: Vec<SkillLevels>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkillLevels {
    /// The skill's URI.
    pub competency: String,
    /// Pupils per current level; `None`: fewer than `min_cell`.
    pub levels: BTreeMap<String, Option<i64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error(transparent)]
    Federation(#[from] FederationError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The school's aggregates now, small counts suppressed.
pub async fn compute(handle: &TenantHandle, now: i64) -> Result<Aggregates, StoreError> {
    let counts = handle
        .db
        .read(crate::store::competency::current_level_counts)
        .await?;
    let mut skills: BTreeMap<String, BTreeMap<String, Option<i64>>> = BTreeMap::new();
    for (competency, level, n) in counts {
        let shown = (n >= MIN_CELL as i64).then_some(n);
        skills.entry(competency).or_default().insert(level, shown);
    }
    Ok(Aggregates {
        school: handle.name.clone(),
        computed_at: now,
        min_cell: MIN_CELL,
        skills: skills
            .into_iter()
            .map(|(competency, levels)| SkillLevels { competency, levels })
            .collect(),
    })
}

/// Why the hub refuses a publication of aggregates; `None` when it may be stored.
pub fn check(a: &Aggregates) -> Option<String> {
    if a.min_cell < MIN_CELL {
        return Some(format!("min_cell is at least {MIN_CELL}"));
    }
    if a.school.trim().is_empty() || a.school.chars().count() > 200 {
        return Some("a school's name is 1 to 200 characters".into());
    }
    if a.skills.len() > MAX_SKILLS || a.skills.iter().any(|s| s.levels.len() > MAX_LEVELS) {
        return Some(format!(
            "at most {MAX_SKILLS} skills of at most {MAX_LEVELS} levels"
        ));
    }
    for s in &a.skills {
        for (level, n) in &s.levels {
            if n.is_some_and(|n| n < a.min_cell as i64) {
                return Some(format!(
                    "{} {level}: a count under {} pupils is suppressed (null), never sent",
                    s.competency, a.min_cell
                ));
            }
        }
    }
    None
}

/// The school's opaque key at the hub: the same for each publication of one school.
pub fn key(site_id: &str, slug: &str) -> String {
    crate::store::backup::hex(
        &ring::digest::digest(
            &ring::digest::SHA256,
            format!("{site_id}|{slug}").as_bytes(),
        )
        .as_ref()[..16],
    )
}

/// Whether the school's admin chose to publish its aggregates.
pub async fn publishes(handle: &TenantHandle) -> Result<bool, StoreError> {
    Ok(handle
        .db
        .read(|c| crate::store::lrs::setting(c, PUBLISH_SETTING))
        .await?
        .as_deref()
        == Some("1"))
}

/// Computes and sends the school's aggregates (when its admin chose to); returns what was
/// sent.
pub async fn publish(
    client: &HubClient,
    handle: &TenantHandle,
) -> Result<Option<Aggregates>, AggregateError> {
    if !publishes(handle).await? {
        return Ok(None);
    }
    let a = compute(handle, crate::store::now()).await?;
    let body = serde_json::to_vec(&a).unwrap_or_default();
    client
        .send(
            Method::PUT,
            &format!(
                "/federation/v1/aggregates/{}",
                key(client.site_id(), &handle.slug)
            ),
            body,
        )
        .await?;
    Ok(Some(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(level: &str, n: Option<i64>) -> Aggregates {
        Aggregates {
            school: "École".into(),
            computed_at: 0,
            min_cell: MIN_CELL,
            skills: vec![SkillLevels {
                competency: "urn:ceredis:cefr:reception".into(),
                levels: BTreeMap::from([(level.to_string(), n)]),
            }],
        }
    }

    #[test]
    fn the_hub_refuses_a_small_count_or_a_lowered_threshold() {
        assert_eq!(check(&one("A2", Some(5))), None);
        assert_eq!(check(&one("A2", None)), None);
        for n in [0, 1, 4] {
            assert!(check(&one("A2", Some(n))).is_some(), "{n}");
        }
        let mut lowered = one("A2", Some(2));
        lowered.min_cell = 1;
        assert!(check(&lowered).is_some());
        let mut nameless = one("A2", None);
        nameless.school = " ".into();
        assert!(check(&nameless).is_some());
    }
}
