//! The CEREDIS competency and assessment engine, one per tenant: frameworks (competencies,
//! relations, levels), evidence with its provenance, mastery estimates, the hash-chained
//! journal of every recalculation, CEFR level decisions and the views each role may see.
//!
//! The rules this module makes structural rather than written as policy:
//! - evidence is append-only: a correction or a withdrawal is a new record naming the one it
//!   replaces ([`EvidenceKind`]);
//! - every recalculation of a mastery estimate is an entry of the journal (trigger, actor,
//!   inputs hash, algorithm version, old → new), chained by SHA-256; replaying the journal
//!   recomputes every entry from the evidence and must end on the stored estimates
//!   (`store::competency::verify_journal`, run by `ceredis doctor`);
//! - only a teacher of the pupil decides a level, with a justification citing evidence; the
//!   database refuses any other author (a trigger), and suggestions live in their own table;
//! - what a pupil sees is built from [`PupilProgress`], a type with no number in it.
//!
//! SQL lives in `store::competency`; the AI principal's restricted handle in `store::ai`.
//! Must not: write SQL, or hand a pupil anything built from a score.
//!
//! Key types: [`Framework`], [`Source`], [`NewEvidence`], [`PupilProgress`], [`Refusal`].

pub mod cefr;
pub mod interchange;
pub mod mastery;
pub mod research;

use serde::{Deserialize, Serialize};

/// A text in the languages of the UI (French first, English).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text {
    #[serde(default)]
    pub en: String,
    #[serde(default)]
    pub fr: String,
}

impl Text {
    pub fn same(s: &str) -> Text {
        Text {
            en: s.to_string(),
            fr: s.to_string(),
        }
    }

    /// The text in `lang` (`"fr"` or `"en"`), falling back to the other language.
    pub fn get(&self, lang: &str) -> &str {
        let (first, other) = if lang == "en" {
            (&self.en, &self.fr)
        } else {
            (&self.fr, &self.en)
        };
        if first.is_empty() { other } else { first }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RelationKind {
    #[serde(rename = "narrows")]
    Narrows,
    #[serde(rename = "requires")]
    Requires,
    #[serde(rename = "isEquivalentTo")]
    IsEquivalentTo,
}

impl RelationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RelationKind::Narrows => "narrows",
            RelationKind::Requires => "requires",
            RelationKind::IsEquivalentTo => "isEquivalentTo",
        }
    }

    pub fn parse(s: &str) -> Option<RelationKind> {
        [
            RelationKind::Narrows,
            RelationKind::Requires,
            RelationKind::IsEquivalentTo,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A competency framework as imported, exported or shipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Framework {
    pub uri: String,
    pub version: String,
    pub name: Text,
    pub description: Text,
    /// `builtin`, `cass`, `case` or `local`.
    pub source: String,
    pub competencies: Vec<FrameworkCompetency>,
    pub relations: Vec<Relation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameworkCompetency {
    pub uri: String,
    pub code: String,
    pub name: Text,
    pub description: Text,
    /// The level a descriptor is written at (`B1`), for descriptors of a levelled skill.
    pub level_code: Option<String>,
    /// The levels a teacher decides between for this competency (a CEFR skill).
    pub levels: Vec<FrameworkLevel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameworkLevel {
    pub uri: String,
    pub code: String,
    pub name: Text,
    pub description: Text,
}

/// `source` narrows / requires / is equivalent to `target` (both competency URIs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relation {
    pub uri: Option<String>,
    pub source: String,
    pub target: String,
    pub kind: RelationKind,
}

/// Where a piece of evidence comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A statement accepted by the tenant's LRS, about an activity aligned to the competency.
    Xapi,
    /// A teacher's observation: a rubric level and a comment.
    Observation,
    /// The pupil's own assessment of a can-do descriptor.
    #[serde(rename = "self")]
    SelfAssessment,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Xapi => "xapi",
            Source::Observation => "observation",
            Source::SelfAssessment => "self",
        }
    }

    pub fn parse(s: &str) -> Option<Source> {
        [Source::Xapi, Source::Observation, Source::SelfAssessment]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// What a row of evidence is: a first record, or a new row replacing an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceKind {
    Record,
    Correction,
    Withdrawal,
}

impl EvidenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceKind::Record => "record",
            EvidenceKind::Correction => "correction",
            EvidenceKind::Withdrawal => "withdrawal",
        }
    }

    pub fn parse(s: &str) -> Option<EvidenceKind> {
        [
            EvidenceKind::Record,
            EvidenceKind::Correction,
            EvidenceKind::Withdrawal,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The teacher's rubric: four levels of an observation.
pub const RUBRIC: [&str; 4] = ["not_yet", "beginning", "achieved", "exceeded"];

/// An observation's rubric level (1..=4) as a value in basis points.
pub fn rubric_value(level: i64) -> Option<i64> {
    match level {
        1 => Some(0),
        2 => Some(3_333),
        3 => Some(6_667),
        4 => Some(10_000),
        _ => None,
    }
}

/// A pupil's answers to "can I do this?".
pub const SELF_ANSWERS: [&str; 3] = ["not_yet", "with_help", "can"];

/// A self-assessment answer (1..=3) as a value in basis points.
pub fn self_value(answer: i64) -> Option<i64> {
    match answer {
        1 => Some(0),
        2 => Some(5_000),
        3 => Some(10_000),
        _ => None,
    }
}

/// Who did something, as the journal records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A signed-in person of the tenant (teacher, pupil, admin).
    User(i64),
    /// A machine credential (an xAPI client), by key id.
    Client(String),
    /// The appliance itself (demo data, retention).
    System,
}

impl Actor {
    pub fn journal_name(&self) -> String {
        match self {
            Actor::User(id) => format!("user:{id}"),
            Actor::Client(key) => format!("client:{key}"),
            Actor::System => "system".into(),
        }
    }
}

/// A new record of evidence.
#[derive(Debug, Clone)]
pub struct NewEvidence {
    pub pupil_id: i64,
    pub competency_id: i64,
    pub source: Source,
    pub value_bp: i64,
    /// The rubric level (observation) or answer (self-assessment) the value came from.
    pub scale_level: Option<i64>,
    pub comment: String,
    /// The statement it came from (xAPI).
    pub statement_id: Option<String>,
    pub actor: Actor,
}

/// A write the engine refused, with a stable code and a message for the user. Nothing was
/// changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// Where a pupil stands on a can-do descriptor, in words. Derived from the estimate and
/// the decided level, never carrying either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Reached,
    WorkingOn,
    NotStarted,
}

/// An estimate at or above this, on at least [`REACHED_MIN_EVIDENCE`] items, reads as a
/// descriptor reached.
pub const REACHED_BP: i64 = 7_000;
pub const REACHED_MIN_EVIDENCE: i64 = 2;

/// The status of a descriptor from its estimate (if any) and whether a level at or above
/// the descriptor's has been decided for its skill.
pub fn status(estimate: Option<(i64, i64)>, level_decided_at_or_above: bool) -> Status {
    match estimate {
        _ if level_decided_at_or_above => Status::Reached,
        Some((bp, n)) if bp >= REACHED_BP && n >= REACHED_MIN_EVIDENCE => Status::Reached,
        Some((_, n)) if n > 0 => Status::WorkingOn,
        _ => Status::NotStarted,
    }
}

/// What a pupil sees of their own assessment: decided levels, descriptors and where they
/// stand on each. There is deliberately no numeric field anywhere in this tree.
#[derive(Debug, Clone, Serialize)]
pub struct PupilProgress {
    pub frameworks: Vec<FrameworkProgress>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FrameworkProgress {
    pub uri: String,
    pub name: String,
    pub skills: Vec<SkillProgress>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkillProgress {
    pub uri: String,
    pub name: String,
    /// The level a teacher decided, if any.
    pub level: Option<LevelName>,
    pub descriptors: Vec<DescriptorProgress>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LevelName {
    pub code: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DescriptorProgress {
    pub uri: String,
    pub level: Option<String>,
    pub text: String,
    pub status: Status,
}

/// Builds what a pupil sees from their frameworks, estimates and decided levels: each
/// framework's skills (competencies narrowing nothing) with the decided level, and each
/// skill's descriptors with a [`Status`]. The estimates go in; no number comes out.
pub fn progress(
    lang: &str,
    frameworks: &[(
        crate::store::competency::FrameworkRow,
        Vec<crate::store::competency::CompetencyRow>,
    )],
    estimates: &std::collections::HashMap<i64, (i64, i64)>,
    levels: &std::collections::HashMap<i64, String>,
) -> PupilProgress {
    let frameworks = frameworks
        .iter()
        .map(|(f, competencies)| FrameworkProgress {
            uri: f.uri.clone(),
            name: f.name.get(lang).to_string(),
            skills: competencies
                .iter()
                .filter(|c| c.parent_id.is_none())
                .map(|skill| {
                    let decided = levels.get(&skill.id);
                    let rank = |code: &str| skill.levels.iter().position(|l| l.code == code);
                    let decided_rank = decided.and_then(|d| rank(d));
                    SkillProgress {
                        uri: skill.uri.clone(),
                        name: skill.name.get(lang).to_string(),
                        level: decided.and_then(|code| {
                            skill
                                .levels
                                .iter()
                                .find(|l| &l.code == code)
                                .map(|l| LevelName {
                                    code: l.code.clone(),
                                    name: l.name.get(lang).to_string(),
                                })
                        }),
                        descriptors: competencies
                            .iter()
                            .filter(|d| d.parent_id == Some(skill.id))
                            .map(|d| {
                                let at_or_above = match (decided_rank, d.level_code.as_deref()) {
                                    (Some(have), Some(at)) => rank(at).is_some_and(|r| r <= have),
                                    _ => false,
                                };
                                DescriptorProgress {
                                    uri: d.uri.clone(),
                                    level: d.level_code.clone(),
                                    text: d.name.get(lang).to_string(),
                                    status: status(estimates.get(&d.id).copied(), at_or_above),
                                }
                            })
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect();
    PupilProgress { frameworks }
}

/// Reads a framework from CaSS JSON-LD or a CASE 1.0 package and stores it in the tenant:
/// new competencies, levels and relations are added, known ones (same URI) renamed.
/// Returns the framework's id and what was read.
pub async fn import_framework(
    tenant: &crate::tenant::TenantHandle,
    doc: &serde_json::Value,
) -> Result<(i64, Framework), crate::error::ApiError> {
    use crate::error::ApiError;
    let framework = interchange::import(doc).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_framework",
            e,
        )
    })?;
    if framework.uri == cefr::URI {
        return Err(ApiError::conflict(
            "the built-in CEFR framework comes with the appliance and cannot be replaced",
        ));
    }
    let stored = framework.clone();
    let at = crate::store::now();
    let id = tenant
        .db
        .write(move |c| crate::store::competency::store_framework(c, &stored, at))
        .await?;
    Ok((id, framework))
}
