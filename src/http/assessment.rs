//! The assessment API: frameworks, alignments, evidence (observations for a whole class,
//! pupils' self-assessments, corrections and withdrawals), level decisions, each role's
//! view, and erasure.
//!
//! Disclosure by role is decided here and by the types behind it: a teacher gets evidence
//! and estimates of the pupils they teach (anyone else: 404); a pupil gets
//! [`crate::competency::PupilProgress`], which has no number in it, and answers that carry
//! none; researchers and the operator reach none of these routes.

use std::collections::HashMap;

use axum::extract::Query;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::extract::{Json, Path};
use super::i18n::Lang;
use crate::auth::{AdminOnly, AnyRole, Member, Staff, StudentOnly, TeacherOnly};
use crate::competency::{
    self, Actor, Framework, NewEvidence, PupilProgress, Refusal, SELF_ANSWERS, Source,
};
use crate::error::ApiError;
use crate::store::competency::{
    self as sql, CompetencyRow, Decision, EvidenceRow, FrameworkRow, LevelRow, Score,
};
use crate::store::tenant::{self as tenant_sql, User};
use crate::store::{StoreError, now};
use crate::tenant::{Role, TenantHandle};

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        let status = match r.code {
            "not_found" => StatusCode::NOT_FOUND,
            "not_their_teacher" => StatusCode::FORBIDDEN,
            "evidence_superseded" | "evidence_withdrawn" | "project_exists" => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, r.code, r.message)
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_assessment", message)
}

pub async fn frameworks(m: Member<AnyRole>) -> Result<Json<Vec<FrameworkRow>>, ApiError> {
    Ok(Json(m.tenant.db.read(sql::frameworks).await?))
}

/// A framework with its competencies, levels and relations.
pub async fn framework(
    m: Member<AnyRole>,
    Path((_, id)): Path<(String, i64)>,
) -> Result<Json<Framework>, ApiError> {
    let found = m
        .tenant
        .db
        .read(move |c| {
            let uri = sql::frameworks(c)?
                .into_iter()
                .find(|f| f.id == id)
                .map(|f| f.uri);
            match uri {
                Some(uri) => sql::load_framework(c, &uri),
                None => Ok(None),
            }
        })
        .await?;
    found.map(Json).ok_or_else(ApiError::not_found)
}

/// A tenant admin imports a framework: CaSS JSON-LD or a CASE 1.0 package.
pub async fn import_framework(
    m: Member<AdminOnly>,
    Json(doc): Json<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (id, f) = competency::import_framework(&m.tenant, &doc).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "uri": f.uri, "source": f.source,
                    "competencies": f.competencies.len(), "relations": f.relations.len()})),
    ))
}

/// A tenant admin imports CaSS Assertions as level decisions: each becomes a decision only
/// if its agent is a teacher of its subject here and it cites that pupil's evidence; the
/// answer lists what was imported, skipped (already recorded) and refused, with why.
pub async fn import_assertions(
    m: Member<AdminOnly>,
    Json(doc): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let parsed = competency::interchange::assertions(&doc);
    if parsed.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_assertions",
            "expected CaSS JSON-LD holding Assertions",
        ));
    }
    let home = m.tenant.home_page.to_string();
    let by = Actor::User(m.user.id);
    let report = m
        .tenant
        .db
        .write(move |c| {
            let (mut imported, mut skipped, mut refused) = (Vec::new(), 0, Vec::new());
            for a in parsed {
                match a {
                    Err((id, why)) => refused.push(json!({"assertion": id, "reason": why})),
                    Ok(a) => match sql::import_assertion(c, &a, &home, &by)? {
                        Ok(Some(id)) => imported.push(id),
                        Ok(None) => skipped += 1,
                        Err(r) => refused.push(json!({"assertion": a.id, "reason": r.message})),
                    },
                }
            }
            Ok(json!({"imported": imported, "skipped": skipped, "refused": refused}))
        })
        .await?;
    Ok(Json(report))
}

/// A framework as CaSS JSON-LD.
pub async fn framework_cass(
    m: Member<AnyRole>,
    Path((_, id)): Path<(String, i64)>,
) -> Result<Response, ApiError> {
    let Json(f) = framework(m, Path((String::new(), id))).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/ld+json")],
        competency::interchange::to_cass(&f).to_string(),
    )
        .into_response())
}

async fn competency_by_uri(tenant: &TenantHandle, uri: &str) -> Result<CompetencyRow, ApiError> {
    let owned = uri.to_string();
    let found = tenant
        .db
        .read(move |c| match sql::competency_id(c, &owned)? {
            Some(id) => sql::competency(c, id),
            None => Ok(None),
        })
        .await?;
    found.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_competency",
            format!("no competency `{uri}` in this school's frameworks"),
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alignment {
    activity: String,
    competency: String,
}

/// Aligns an xAPI Activity to a competency: statements about the tenant's pupils on it,
/// with a result, become evidence.
pub async fn align(
    m: Member<Staff>,
    Json(a): Json<Alignment>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let activity = a.activity.trim().to_string();
    if activity.is_empty() || activity.len() > 2048 || !activity.contains(':') {
        return Err(invalid("activity: the IRI of an xAPI Activity"));
    }
    let competency = competency_by_uri(&m.tenant, &a.competency).await?;
    let (act, id) = (activity.clone(), competency.id);
    let added = m.tenant.db.write(move |c| sql::align(c, &act, id)).await?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"activity": activity, "competency": competency.uri})),
    ))
}

/// A teacher's own class, or 404.
pub async fn taught_class(m: &Member<TeacherOnly>, class_id: i64) -> Result<(), ApiError> {
    let teacher = m.user.id;
    if m.tenant
        .db
        .read(move |c| tenant_sql::teaches(c, teacher, class_id))
        .await?
    {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

/// A pupil the teacher teaches, or 404.
pub async fn taught_pupil(
    tenant: &TenantHandle,
    teacher: i64,
    pupil: i64,
) -> Result<User, ApiError> {
    let found = tenant
        .db
        .read(move |c| {
            if tenant_sql::teaches_pupil(c, teacher, pupil)? {
                tenant_sql::user_by_id(c, pupil)
            } else {
                Ok(None)
            }
        })
        .await?;
    found.ok_or_else(ApiError::not_found)
}

#[derive(Deserialize)]
pub struct FrameworkChoice {
    framework: Option<i64>,
}

#[derive(Serialize)]
pub struct PupilLine {
    id: i64,
    name: String,
    /// Estimates by competency id.
    scores: HashMap<i64, ScoreCell>,
    /// Decided levels by competency id.
    levels: HashMap<i64, String>,
}

#[derive(Serialize)]
pub struct ScoreCell {
    mastery_bp: i64,
    evidence: i64,
}

#[derive(Serialize)]
pub struct ClassAssessment {
    class_id: i64,
    framework: FrameworkRow,
    competencies: Vec<CompetencyRow>,
    pupils: Vec<PupilLine>,
}

/// The class grid: every pupil's estimate and decided level on every competency of a
/// framework (the built-in CEFR one unless `?framework=` names another).
pub async fn class_assessment(
    m: Member<TeacherOnly>,
    Path((_, class_id)): Path<(String, i64)>,
    Query(choice): Query<FrameworkChoice>,
) -> Result<Json<ClassAssessment>, ApiError> {
    taught_class(&m, class_id).await?;
    let found = m
        .tenant
        .db
        .read(move |c| {
            let all = sql::frameworks(c)?;
            let Some(framework) = (match choice.framework {
                Some(id) => all.into_iter().find(|f| f.id == id),
                None => all.into_iter().next(),
            }) else {
                return Ok(None);
            };
            let competencies = sql::competencies(c, framework.id)?;
            let mut pupils = Vec::new();
            for (user, role) in tenant_sql::members(c, class_id)? {
                if role != "student" {
                    continue;
                }
                let scores = sql::scores_of(c, user.id)?
                    .into_iter()
                    .map(|s| {
                        (
                            s.competency_id,
                            ScoreCell {
                                mastery_bp: s.mastery_bp,
                                evidence: s.evidence_count,
                            },
                        )
                    })
                    .collect();
                let levels = sql::current_levels(c, user.id)?
                    .into_iter()
                    .map(|l| (l.competency_id, l.level_code))
                    .collect();
                pupils.push(PupilLine {
                    id: user.id,
                    name: user.display_name(),
                    scores,
                    levels,
                });
            }
            Ok(Some(ClassAssessment {
                class_id,
                framework,
                competencies,
                pupils,
            }))
        })
        .await?;
    found.map(Json).ok_or_else(ApiError::not_found)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observations {
    pub competency: String,
    pub observations: Vec<Observation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    pub pupil: i64,
    /// Rubric level: 1 not yet, 2 beginning, 3 achieved, 4 exceeded.
    pub level: i64,
    #[serde(default)]
    pub comment: String,
}

#[derive(Serialize)]
pub struct Recorded {
    pub evidence: Vec<i64>,
    recalculations: Vec<sql::Recalc>,
}

fn comment(text: &str) -> Result<String, ApiError> {
    let text = text.trim();
    if text.chars().count() > 2000 {
        return Err(invalid("comment: at most 2000 characters"));
    }
    Ok(text.to_string())
}

/// Records a teacher's observations for several pupils of their class on one competency,
/// all or nothing.
pub async fn observe(
    m: Member<TeacherOnly>,
    Path((_, class_id)): Path<(String, i64)>,
    Json(o): Json<Observations>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(record_observations(&m, class_id, o).await?),
    ))
}

/// The observations of [`observe`], for the JSON API and the class page alike.
pub async fn record_observations(
    m: &Member<TeacherOnly>,
    class_id: i64,
    o: Observations,
) -> Result<Recorded, ApiError> {
    taught_class(m, class_id).await?;
    if o.observations.is_empty() || o.observations.len() > 200 {
        return Err(invalid("observations: 1 to 200 pupils at a time"));
    }
    let competency = competency_by_uri(&m.tenant, &o.competency).await?;
    let mut rows = Vec::with_capacity(o.observations.len());
    for obs in &o.observations {
        let value = competency::rubric_value(obs.level).ok_or_else(|| {
            invalid(format!(
                "level {} for pupil {}: use 1 (not yet) to 4 (exceeded)",
                obs.level, obs.pupil
            ))
        })?;
        rows.push(NewEvidence {
            pupil_id: obs.pupil,
            competency_id: competency.id,
            source: Source::Observation,
            value_bp: value,
            scale_level: Some(obs.level),
            comment: comment(&obs.comment)?,
            statement_id: None,
            actor: Actor::User(m.user.id),
        });
    }
    let at = now();
    let outcome = m
        .tenant
        .db
        .write(move |c| {
            let pupils: Vec<i64> = tenant_sql::members(c, class_id)?
                .into_iter()
                .filter(|(_, role)| role == "student")
                .map(|(u, _)| u.id)
                .collect();
            if let Some(stranger) = rows.iter().find(|r| !pupils.contains(&r.pupil_id)) {
                return Ok(Err(Refusal::new(
                    "not_in_class",
                    format!("user {} is not a pupil of this class", stranger.pupil_id),
                )));
            }
            let mut recorded = Recorded {
                evidence: Vec::new(),
                recalculations: Vec::new(),
            };
            for r in &rows {
                let (id, recalc) = sql::add_evidence(c, r, at)?;
                recorded.evidence.push(id);
                recorded.recalculations.push(recalc);
            }
            Ok(Ok(recorded))
        })
        .await??;
    Ok(outcome)
}

#[derive(Serialize)]
pub struct PupilRecord {
    pupil: PupilName,
    evidence: Vec<EvidenceRow>,
    scores: Vec<Score>,
    levels: Vec<LevelRow>,
    /// What a model proposed; a suggestion is never a decision.
    suggestions: Vec<crate::store::ai::SuggestionRow>,
}

#[derive(Serialize)]
pub struct PupilName {
    id: i64,
    name: String,
}

/// Everything about one pupil a teacher of theirs may see.
pub async fn pupil_assessment(
    m: Member<TeacherOnly>,
    Path((_, pupil)): Path<(String, i64)>,
) -> Result<Json<PupilRecord>, ApiError> {
    let user = taught_pupil(&m.tenant, m.user.id, pupil).await?;
    let record = m
        .tenant
        .db
        .read(move |c| {
            let suggestions = crate::store::ai::suggestions_for(c, pupil)?;
            Ok(PupilRecord {
                pupil: PupilName {
                    id: user.id,
                    name: user.display_name(),
                },
                evidence: sql::pupil_evidence(c, pupil)?,
                scores: sql::scores_of(c, pupil)?,
                levels: sql::current_levels(c, pupil)?,
                suggestions,
            })
        })
        .await?;
    Ok(Json(record))
}

/// A pupil's level decisions as CaSS Assertions (JSON-LD), for a teacher of theirs.
pub async fn pupil_assertions(
    m: Member<TeacherOnly>,
    Path((_, pupil)): Path<(String, i64)>,
) -> Result<Response, ApiError> {
    let user = taught_pupil(&m.tenant, m.user.id, pupil).await?;
    let home = m.tenant.home_page.to_string();
    let out = m
        .tenant
        .db
        .read(move |c| {
            let mut out = Vec::new();
            for x in sql::decisions_for_export(c, pupil)? {
                let mut cited = Vec::new();
                for id in &x.decision.evidence_ids {
                    cited.push(
                        match sql::evidence_by_id(c, *id)?.and_then(|e| e.statement_id) {
                            Some(statement) => format!("urn:uuid:{statement}"),
                            None => format!("{home}evidence/{id}"),
                        },
                    );
                }
                out.push(competency::interchange::assertion(
                    &competency::interchange::AssertionFields {
                        id: &format!("{home}assertions/{}", x.decision.id),
                        framework: &x.framework_uri,
                        competency: &x.skill_uri,
                        level: &x.level_uri,
                        subject: &user.agent_name,
                        agent: &x.decided_by_agent,
                        at_ms: x.decision.at * 1000,
                        evidence: &cited,
                        justification: &x.decision.justification,
                    },
                ));
            }
            Ok::<_, StoreError>(out)
        })
        .await?;
    Ok((
        [(header::CONTENT_TYPE, "application/ld+json")],
        Value::Array(out).to_string(),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Correction {
    /// The new rubric level (an observation) or answer (a self-assessment).
    #[serde(default)]
    level: Option<i64>,
    /// The new result in basis points (xAPI evidence, corrected by a teacher).
    #[serde(default)]
    value_bp: Option<i64>,
    #[serde(default)]
    comment: String,
}

/// Who may replace a row of evidence: a teacher of the pupil (any source), or the pupil
/// for their own self-assessment. Anyone else gets 404.
async fn may_supersede(m: &Member<AnyRole>, evidence: i64) -> Result<EvidenceRow, ApiError> {
    let (user, role) = (m.user.id, m.user.role);
    let row = m
        .tenant
        .db
        .read(move |c| {
            let Some(row) = sql::evidence_by_id(c, evidence)? else {
                return Ok(None);
            };
            let allowed = match role {
                Role::Teacher => tenant_sql::teaches_pupil(c, user, row.pupil_id)?,
                Role::Student => row.pupil_id == user && row.source == Source::SelfAssessment,
                _ => false,
            };
            Ok(allowed.then_some(row))
        })
        .await?;
    row.ok_or_else(ApiError::not_found)
}

/// Writes the correction (`Some`) or withdrawal (`None`). A pupil is told only that it was
/// recorded; a teacher gets the new row and the recalculation.
async fn supersede(
    m: &Member<AnyRole>,
    evidence: i64,
    replacement: Option<(i64, Option<i64>)>,
    comment: String,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let actor = Actor::User(m.user.id);
    let at = now();
    let (id, recalc) = m
        .tenant
        .db
        .write(move |c| sql::supersede(c, evidence, replacement, &comment, &actor, at))
        .await??;
    if m.user.role == Role::Student {
        return Ok(pupil_ack());
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({"evidence": id, "recalculation": recalc})),
    ))
}

/// The answer to a pupil's change of their own evidence: that it was recorded, nothing more.
fn pupil_ack() -> (StatusCode, Json<Value>) {
    (StatusCode::CREATED, Json(json!({"status": "recorded"})))
}

/// A correction: a new row replacing one in effect (the original stays, superseded).
pub async fn correct(
    m: Member<AnyRole>,
    Path((_, evidence)): Path<(String, i64)>,
    Json(body): Json<Correction>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let row = may_supersede(&m, evidence).await?;
    let comment = comment(&body.comment)?;
    let replacement = match (row.source, body.level, body.value_bp) {
        (Source::Observation, Some(level), None) => competency::rubric_value(level)
            .map(|v| (v, Some(level)))
            .ok_or_else(|| invalid("level: use 1 (not yet) to 4 (exceeded)"))?,
        (Source::SelfAssessment, Some(answer), None) => competency::self_value(answer)
            .map(|v| (v, Some(answer)))
            .ok_or_else(|| invalid("level: use 1 (not yet), 2 (with help) or 3 (I can)"))?,
        (Source::Xapi, None, Some(v)) if (0..=10_000).contains(&v) => (v, None),
        (Source::Xapi, _, _) => {
            return Err(invalid(
                "value_bp: the corrected result of an xAPI statement, 0 to 10000",
            ));
        }
        _ => return Err(invalid("level: the corrected rubric level or answer")),
    };
    supersede(&m, evidence, Some(replacement), comment).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Withdrawal {
    #[serde(default)]
    comment: String,
}

/// A withdrawal: a new row taking one out of effect.
pub async fn withdraw(
    m: Member<AnyRole>,
    Path((_, evidence)): Path<(String, i64)>,
    Json(body): Json<Withdrawal>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    may_supersede(&m, evidence).await?;
    let comment = comment(&body.comment)?;
    supersede(&m, evidence, None, comment).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelDecision {
    pub competency: String,
    pub level: String,
    pub justification: String,
    pub evidence: Vec<i64>,
    #[serde(default)]
    pub suggestion: Option<i64>,
}

/// A teacher decides a pupil's level on a skill, citing evidence.
pub async fn decide(
    m: Member<TeacherOnly>,
    Path((_, pupil)): Path<(String, i64)>,
    Json(d): Json<LevelDecision>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    Ok((StatusCode::CREATED, Json(decide_level(&m, pupil, d).await?)))
}

/// The decision of [`decide`], for the JSON API and the pupil page alike.
pub async fn decide_level(
    m: &Member<TeacherOnly>,
    pupil: i64,
    d: LevelDecision,
) -> Result<Value, ApiError> {
    taught_pupil(&m.tenant, m.user.id, pupil).await?;
    let competency = competency_by_uri(&m.tenant, &d.competency).await?;
    let decision = Decision {
        pupil_id: pupil,
        competency_id: competency.id,
        level_code: d.level.clone(),
        decided_by: m.user.id,
        justification: d.justification,
        evidence_ids: d.evidence,
        suggestion_id: d.suggestion,
    };
    let at = now();
    let id = m
        .tenant
        .db
        .write(move |c| sql::decide_level(c, &decision, at))
        .await??;
    Ok(json!({"id": id, "competency": competency.uri, "level": d.level}))
}

/// What a pupil may see of their own assessment.
pub async fn pupil_progress(
    tenant: &TenantHandle,
    pupil: i64,
    lang: Lang,
) -> Result<PupilProgress, ApiError> {
    let (frameworks, estimates, levels) = tenant
        .db
        .read(move |c| {
            let mut frameworks = Vec::new();
            for f in sql::frameworks(c)? {
                let competencies = sql::competencies(c, f.id)?;
                frameworks.push((f, competencies));
            }
            let estimates: HashMap<i64, (i64, i64)> = sql::scores_of(c, pupil)?
                .into_iter()
                .map(|s| (s.competency_id, (s.mastery_bp, s.evidence_count)))
                .collect();
            let levels: HashMap<i64, String> = sql::current_levels(c, pupil)?
                .into_iter()
                .map(|l| (l.competency_id, l.level_code))
                .collect();
            Ok::<_, StoreError>((frameworks, estimates, levels))
        })
        .await?;
    Ok(competency::progress(
        lang.code(),
        &frameworks,
        &estimates,
        &levels,
    ))
}

pub async fn my_progress(
    lang: Lang,
    m: Member<StudentOnly>,
) -> Result<Json<PupilProgress>, ApiError> {
    Ok(Json(pupil_progress(&m.tenant, m.user.id, lang).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfAssessment {
    competency: String,
    /// `not_yet`, `with_help` or `can`.
    answer: String,
}

/// A pupil's self-assessment of a can-do descriptor.
pub async fn self_assess(
    m: Member<StudentOnly>,
    Json(s): Json<SelfAssessment>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let answer = SELF_ANSWERS
        .iter()
        .position(|a| *a == s.answer)
        .ok_or_else(|| invalid("answer: `not_yet`, `with_help` or `can`"))? as i64
        + 1;
    let competency = competency_by_uri(&m.tenant, &s.competency).await?;
    let row = NewEvidence {
        pupil_id: m.user.id,
        competency_id: competency.id,
        source: Source::SelfAssessment,
        value_bp: competency::self_value(answer).unwrap_or(0),
        scale_level: Some(answer),
        comment: String::new(),
        statement_id: None,
        actor: Actor::User(m.user.id),
    };
    let at = now();
    m.tenant
        .db
        .write(move |c| sql::add_evidence(c, &row, at))
        .await?;
    Ok(pupil_ack())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Erasure {
    /// The user's username, typed again.
    confirm: String,
}

/// Erases a user of the tenant: their statements, documents, evidence, estimates, levels,
/// sessions and account, leaving a tombstone in the journal.
pub async fn erase(
    m: Member<AdminOnly>,
    Path((_, user)): Path<(String, i64)>,
    Json(e): Json<Erasure>,
) -> Result<Json<Value>, ApiError> {
    if user == m.user.id {
        return Err(ApiError::conflict("you cannot erase your own account"));
    }
    let actor = Actor::User(m.user.id);
    let home = m.tenant.home_page.to_string();
    let report = m
        .tenant
        .db
        .write(move |c| {
            let Some(target) = tenant_sql::user_by_id(c, user)? else {
                return Err(StoreError::NotFound);
            };
            if !target.username.eq_ignore_ascii_case(e.confirm.trim()) {
                return Ok(Err(Refusal::new(
                    "confirmation_mismatch",
                    "type the user's username to confirm the erasure",
                )));
            }
            crate::store::erasure::erase_user(c, &target, &home, &actor, now())
        })
        .await??;
    Ok(Json(report))
}
