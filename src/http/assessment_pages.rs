//! The assessment pages: a teacher's class grid (record observations for the whole class
//! from the keyboard, see every pupil's levels), a teacher's page for one pupil (evidence,
//! estimates, deciding a level), and a pupil's own skills in words.
//!
//! The pupil's page is built only from [`crate::competency::PupilProgress`], which holds no
//! number: levels, descriptors and where the pupil stands on each.

use std::collections::HashMap;

use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::assessment::{
    LevelDecision, Observation, Observations, pupil_progress, record_observations, taught_class,
    taught_pupil,
};
use super::extract::{Form, Path, Query};
use super::i18n::Lang;
use super::layout::{self, csrf_field};
use super::users::member_page;
use crate::auth::{Member, StudentOnly, TeacherOnly};
use crate::competency::{RUBRIC, Status};
use crate::error::ApiError;
use crate::store::StoreError;
use crate::store::competency::{self as sql, CompetencyRow, EvidenceRow};
use crate::store::tenant as tenant_sql;

fn date(at: i64) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]");
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&f).ok())
        .unwrap_or_default()
}

fn percent(bp: i64) -> String {
    format!("{} %", (bp + 50) / 100)
}

/// The competencies of the first framework (the built-in CEFR one), skills and descriptors.
fn skills_and_descriptors(all: &[CompetencyRow]) -> Vec<(&CompetencyRow, Vec<&CompetencyRow>)> {
    all.iter()
        .filter(|c| c.parent_id.is_none())
        .map(|skill| {
            let descriptors = all
                .iter()
                .filter(|d| d.parent_id == Some(skill.id))
                .collect();
            (skill, descriptors)
        })
        .collect()
}

#[derive(serde::Deserialize, Default)]
pub struct Notice {
    #[serde(default)]
    recorded: Option<usize>,
    #[serde(default)]
    decided: Option<String>,
    /// The descriptor observed last, chosen again in the form.
    #[serde(default)]
    competency: Option<String>,
    /// A model's suggestion the teacher starts the decision from.
    #[serde(default)]
    suggestion: Option<i64>,
}

/// The class grid and the observation form.
pub async fn class_page(
    lang: Lang,
    m: Member<TeacherOnly>,
    Path((_, class_id)): Path<(String, i64)>,
    Query(notice): Query<Notice>,
) -> Result<Response, ApiError> {
    taught_class(&m, class_id).await?;
    let (class, pupils, competencies, levels) = m
        .tenant
        .db
        .read(move |c| {
            let class = tenant_sql::class_by_id(c, class_id)?.ok_or(StoreError::NotFound)?;
            let pupils: Vec<tenant_sql::User> = tenant_sql::members(c, class_id)?
                .into_iter()
                .filter(|(_, r)| r == "student")
                .map(|(u, _)| u)
                .collect();
            let framework = sql::frameworks(c)?
                .into_iter()
                .next()
                .ok_or(StoreError::NotFound)?;
            let competencies = sql::competencies(c, framework.id)?;
            let mut levels = HashMap::new();
            for p in &pupils {
                for l in sql::current_levels(c, p.id)? {
                    levels.insert((p.id, l.competency_id), l.level_code);
                }
            }
            Ok((class, pupils, competencies, levels))
        })
        .await?;
    let slug = &m.tenant.slug;
    let code = lang.code();
    let groups = skills_and_descriptors(&competencies);
    let body = html! {
        @if let Some(n) = notice.recorded {
            (layout::notice(&format!("{} {n}", lang.t("assess.recorded"))))
        }
        section.card {
            h2 { (lang.t("assess.record_title")) }
            form.observations method="post" action={ "/t/" (slug) "/classes/" (class_id) "/assessment" } {
                (csrf_field(&m.csrf))
                label for="competency" { (lang.t("assess.descriptor")) }
                select #competency name="competency" required {
                    @for (skill, descriptors) in &groups {
                        optgroup label=(skill.name.get(code)) {
                            @for d in descriptors {
                                option value=(d.uri) selected[notice.competency.as_deref() == Some(d.uri.as_str())] {
                                    (d.level_code.as_deref().unwrap_or("")) " · " (d.name.get(code))
                                }
                            }
                        }
                    }
                }
                table.grid {
                    thead { tr {
                        th scope="col" { (lang.t("assess.pupil")) }
                        th scope="col" { (lang.t("assess.rubric")) }
                        th scope="col" { (lang.t("assess.comment")) }
                    } }
                    tbody {
                        @for p in &pupils {
                            @let name = format!("{} {}", p.family_name, p.given_name);
                            tr {
                                th scope="row" { (name) }
                                td {
                                    fieldset.rubric aria-label=(name) {
                                        @for (i, key) in RUBRIC.iter().enumerate() {
                                            label {
                                                input type="radio" name={ "level-" (p.id) } value=(i + 1);
                                                " " (lang.t(&format!("rubric.{key}")))
                                            }
                                        }
                                    }
                                }
                                td { input type="text" name={ "comment-" (p.id) } maxlength="2000"
                                        aria-label={ (lang.t("assess.comment")) " — " (name) }; }
                            }
                        }
                    }
                }
                button type="submit" { (lang.t("assess.record")) }
            }
        }
        section.card {
            h2 { (lang.t("assess.levels")) }
            table.grid {
                thead { tr {
                    th scope="col" { (lang.t("assess.pupil")) }
                    @for (skill, _) in &groups { th scope="col" { (skill.name.get(code)) } }
                } }
                tbody {
                    @for p in &pupils {
                        tr {
                            th scope="row" {
                                a href={ "/t/" (slug) "/pupils/" (p.id) } { (p.family_name) " " (p.given_name) }
                            }
                            @for (skill, _) in &groups {
                                td { (levels.get(&(p.id, skill.id)).map(String::as_str).unwrap_or("—")) }
                            }
                        }
                    }
                }
            }
        }
    };
    let title = format!("{} — {}", class.title, lang.t("assess.title"));
    Ok(member_page(lang, &m, &title, body))
}

/// The observation form: `competency`, then `level-<pupil>` (1..4) and `comment-<pupil>`
/// for each pupil observed (a pupil without a level is skipped).
pub async fn class_submit(
    m: Member<TeacherOnly>,
    Path((_, class_id)): Path<(String, i64)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let mut competency = String::new();
    let mut comments: HashMap<i64, String> = HashMap::new();
    let mut observations = Vec::new();
    for (k, v) in &fields {
        if k == "competency" {
            competency = v.clone();
        } else if let Some(pupil) = k.strip_prefix("level-").and_then(|p| p.parse().ok()) {
            let level = v.parse().map_err(|_| {
                ApiError::bad_request("invalid_assessment", "a rubric level is 1 to 4")
            })?;
            observations.push((pupil, level));
        } else if let Some(pupil) = k.strip_prefix("comment-").and_then(|p| p.parse().ok()) {
            comments.insert(pupil, v.clone());
        }
    }
    if observations.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_assessment",
            "choose a level for at least one pupil",
        ));
    }
    let observations: Vec<Observation> = observations
        .into_iter()
        .map(|(pupil, level)| Observation {
            pupil,
            level,
            comment: comments.remove(&pupil).unwrap_or_default(),
        })
        .collect();
    let competency_uri = competency.clone();
    let recorded = record_observations(
        &m,
        class_id,
        Observations {
            competency,
            observations,
        },
    )
    .await?;
    let query = serde_urlencoded::to_string([
        ("recorded", recorded.evidence.len().to_string()),
        ("competency", competency_uri),
    ])
    .unwrap_or_default();
    Ok(Redirect::to(&format!(
        "/t/{}/classes/{class_id}/assessment?{query}",
        m.tenant.slug
    ))
    .into_response())
}

fn source_label(lang: Lang, e: &EvidenceRow) -> &'static str {
    lang.t(&format!("source.{}", e.source.as_str()))
}

/// One pupil, for a teacher of theirs: levels, the decision form, estimates, evidence.
pub async fn pupil_page(
    lang: Lang,
    m: Member<TeacherOnly>,
    Path((_, pupil)): Path<(String, i64)>,
    Query(notice): Query<Notice>,
) -> Result<Response, ApiError> {
    let user = taught_pupil(&m.tenant, m.user.id, pupil).await?;
    let (competencies, evidence, scores, levels, suggestions) = m
        .tenant
        .db
        .read(move |c| {
            let mut competencies = Vec::new();
            for f in sql::frameworks(c)? {
                competencies.extend(sql::competencies(c, f.id)?);
            }
            Ok((
                competencies,
                sql::pupil_evidence(c, pupil)?,
                sql::scores_of(c, pupil)?,
                sql::current_levels(c, pupil)?,
                crate::store::ai::suggestions_for(c, pupil)?,
            ))
        })
        .await?;
    let chosen = suggestions.iter().find(|s| Some(s.id) == notice.suggestion);
    let code = lang.code();
    let by_id: HashMap<i64, &CompetencyRow> = competencies.iter().map(|c| (c.id, c)).collect();
    let by_uri: HashMap<&str, &CompetencyRow> =
        competencies.iter().map(|c| (c.uri.as_str(), c)).collect();
    let label = |id: i64| {
        by_id
            .get(&id)
            .map(|c| {
                format!(
                    "{}{}",
                    c.level_code
                        .as_deref()
                        .map(|l| format!("{l} · "))
                        .unwrap_or_default(),
                    c.name.get(code)
                )
            })
            .unwrap_or_default()
    };
    let superseded: std::collections::HashSet<i64> =
        evidence.iter().filter_map(|e| e.supersedes).collect();
    let in_effect: Vec<&EvidenceRow> = evidence
        .iter()
        .filter(|e| e.value_bp.is_some() && !superseded.contains(&e.id))
        .collect();
    let skills: Vec<&CompetencyRow> = competencies
        .iter()
        .filter(|c| !c.levels.is_empty())
        .collect();
    let slug = &m.tenant.slug;
    let name = user.display_name();
    let body = html! {
        @if let Some(level) = &notice.decided {
            (layout::notice(&format!("{} {level}", lang.t("pupil.decided"))))
        }
        section.card {
            h2 { (lang.t("assess.levels")) }
            @if levels.is_empty() { p { (lang.t("pupil.no_levels")) } }
            ul {
                @for l in &levels {
                    li { strong { (label(l.competency_id)) " : " (l.level_code) } " — " (l.justification) }
                }
            }
        }
        @if !suggestions.is_empty() {
            section.card.suggestions {
                h2 { (lang.t("pupil.suggestions")) }
                p.small { (lang.t("pupil.suggestions_hint")) }
                ul {
                    @for sg in &suggestions {
                        li {
                            strong { (by_uri.get(sg.competency_uri.as_str()).map(|c| c.name.get(code)).unwrap_or(&sg.competency_uri)) " : " (sg.level_code) }
                            " — " (sg.rationale) " (" (sg.source) ") "
                            a href={ "/t/" (slug) "/pupils/" (pupil) "?suggestion=" (sg.id) } { (lang.t("pupil.use_suggestion")) }
                        }
                    }
                }
            }
        }
        section.card {
            h2 { (lang.t("pupil.decide")) }
            form.decide method="post" action={ "/t/" (slug) "/pupils/" (pupil) "/levels" } {
                (csrf_field(&m.csrf))
                @if let Some(sg) = chosen { input type="hidden" name="suggestion" value=(sg.id); }
                label for="skill" { (lang.t("pupil.skill")) }
                select #skill name="competency" required {
                    @for s in &skills {
                        option value=(s.uri) selected[chosen.is_some_and(|sg| sg.competency_uri == s.uri)] { (s.name.get(code)) }
                    }
                }
                label for="level" { (lang.t("pupil.level")) }
                select #level name="level" required {
                    @for l in skills.first().map(|s| s.levels.as_slice()).unwrap_or_default() {
                        option value=(l.code) selected[chosen.is_some_and(|sg| sg.level_code == l.code)] { (l.name.get(code)) }
                    }
                }
                label for="justification" { (lang.t("pupil.justification")) }
                textarea #justification name="justification" required maxlength="2000" rows="3" {}
                fieldset {
                    legend { (lang.t("pupil.cite")) }
                    @if in_effect.is_empty() { p { (lang.t("pupil.no_evidence")) } }
                    @for e in &in_effect {
                        label.cite {
                            input type="checkbox" name="evidence" value=(e.id);
                            " " (date(e.at)) " — " (label(e.competency_id)) " — " (source_label(lang, e))
                            " — " (e.value_bp.map(percent).unwrap_or_default())
                        }
                    }
                }
                button type="submit" { (lang.t("pupil.decide_submit")) }
            }
        }
        section.card {
            h2 { (lang.t("pupil.estimates")) }
            table.grid {
                thead { tr {
                    th scope="col" { (lang.t("assess.descriptor")) }
                    th scope="col" { (lang.t("pupil.estimate")) }
                    th scope="col" { (lang.t("pupil.count")) }
                } }
                tbody {
                    @for s in &scores {
                        tr { td { (label(s.competency_id)) } td { (percent(s.mastery_bp)) } td { (s.evidence_count) } }
                    }
                }
            }
        }
        section.card {
            h2 { (lang.t("pupil.evidence")) }
            table.grid.evidence {
                thead { tr {
                    th scope="col" { (lang.t("pupil.date")) }
                    th scope="col" { (lang.t("assess.descriptor")) }
                    th scope="col" { (lang.t("pupil.source")) }
                    th scope="col" { (lang.t("pupil.value")) }
                    th scope="col" { (lang.t("assess.comment")) }
                } }
                tbody {
                    @for e in evidence.iter().rev() {
                        tr.(if superseded.contains(&e.id) { "superseded" } else { "" }) {
                            td { (date(e.at)) }
                            td { (label(e.competency_id)) }
                            td { (source_label(lang, e))
                                 @if e.supersedes.is_some() { " (" (lang.t(&format!("kind.{}", e.kind.as_str()))) ")" } }
                            td { (e.value_bp.map(percent).unwrap_or_else(|| "—".into())) }
                            td { (e.comment) }
                        }
                    }
                }
            }
        }
    };
    Ok(member_page(lang, &m, &name, body))
}

/// The decision form: `competency`, `level`, `justification` and one `evidence` per
/// citation.
pub async fn decide_submit(
    m: Member<TeacherOnly>,
    Path((_, pupil)): Path<(String, i64)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let evidence: Vec<i64> = fields
        .iter()
        .filter(|(k, _)| k == "evidence")
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    let decision = LevelDecision {
        competency: field("competency"),
        level: field("level"),
        justification: field("justification"),
        evidence,
        suggestion: field("suggestion").parse().ok(),
    };
    let level = decision.level.clone();
    super::assessment::decide_level(&m, pupil, decision).await?;
    Ok(Redirect::to(&format!(
        "/t/{}/pupils/{pupil}?decided={level}",
        m.tenant.slug
    ))
    .into_response())
}

fn status_key(s: Status) -> &'static str {
    match s {
        Status::Reached => "status.reached",
        Status::WorkingOn => "status.working_on",
        Status::NotStarted => "status.not_started",
    }
}

fn status_class(s: Status) -> &'static str {
    match s {
        Status::Reached => "reached",
        Status::WorkingOn => "working",
        Status::NotStarted => "not-started",
    }
}

/// A pupil's own skills: decided levels and descriptors in words.
pub async fn progress_page(lang: Lang, m: Member<StudentOnly>) -> Result<Response, ApiError> {
    let progress = pupil_progress(&m.tenant, m.user.id, lang).await?;
    let body: Markup = html! {
        @for f in &progress.frameworks {
            @for skill in &f.skills {
                section.card.skill {
                    h2 { (skill.name) }
                    @match &skill.level {
                        Some(level) => p.level { (lang.t("progress.level")) " : " strong { (level.name) } },
                        None => p.level { (lang.t("progress.no_level")) },
                    }
                    p.dots aria-hidden="true" {
                        @for d in &skill.descriptors { span class={ "dot " (status_class(d.status)) } {} }
                    }
                    ul.descriptors {
                        @for d in &skill.descriptors {
                            li class=(status_class(d.status)) {
                                span.status { (lang.t(status_key(d.status))) }
                                " "
                                span.text { (d.text) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(member_page(lang, &m, lang.t("progress.title"), body))
}
