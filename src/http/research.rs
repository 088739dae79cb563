//! Research projects and their exports: a tenant admin declares a project (its
//! quasi-identifiers, `k`, the share of pupils it may suppress, its researchers); a
//! researcher of the project downloads tidy CSV for R that the privacy gate
//! (`competency::research`) has passed, or is told why not. Every attempt is journaled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use axum::response::Redirect;
use maud::html;

use super::extract::{Form, Json, Path, Query};
use super::i18n::Lang;
use crate::app::AppState;
use crate::auth::{AdminOnly, Member, ResearcherOnly};
use crate::competency::research::{MIN_K, Qi};
use crate::error::ApiError;
use crate::store::now;
use crate::store::research::{self as sql, Dataset, NewProject, Project};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRequest {
    name: String,
    title: String,
    quasi_identifiers: Vec<Qi>,
    #[serde(default = "default_k")]
    k: i64,
    #[serde(default = "default_suppression")]
    max_suppressed: f64,
    researchers: Vec<i64>,
}

fn default_k() -> i64 {
    MIN_K as i64
}

fn default_suppression() -> f64 {
    0.05
}

/// A tenant admin declares a research project.
pub async fn create(
    m: Member<AdminOnly>,
    Json(p): Json<ProjectRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let bad = |msg: &str| ApiError::bad_request("invalid_project", msg.to_string());
    let name = p.name.trim().to_string();
    if name.is_empty()
        || name.len() > 60
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(bad("name: 1 to 60 lowercase letters, digits and dashes"));
    }
    if p.title.trim().is_empty() || p.title.chars().count() > 200 {
        return Err(bad("title: 1 to 200 characters"));
    }
    if p.k < MIN_K as i64 {
        return Err(bad("k: at least 5"));
    }
    if !(0.0..=0.5).contains(&p.max_suppressed) {
        return Err(bad("max_suppressed: a share of pupils between 0 and 0.5"));
    }
    if p.researchers.is_empty() {
        return Err(bad("researchers: at least one researcher of this school"));
    }
    let mut qis = p.quasi_identifiers;
    qis.dedup();
    let project = NewProject {
        name: name.clone(),
        title: p.title.trim().to_string(),
        quasi_identifiers: qis,
        k: p.k,
        max_suppressed: p.max_suppressed,
        researchers: p.researchers,
    };
    let (by, at) = (m.user.id, now());
    let id = m
        .tenant
        .db
        .write(move |c| sql::create_project(c, &project, by, at))
        .await??;
    Ok((StatusCode::CREATED, Json(json!({"id": id, "name": name}))))
}

/// The researcher's own projects.
pub async fn list(m: Member<ResearcherOnly>) -> Result<Json<Vec<Project>>, ApiError> {
    let me = m.user.id;
    Ok(Json(
        m.tenant
            .db
            .read(move |c| sql::projects(c, Some(me)))
            .await?,
    ))
}

#[derive(Deserialize)]
pub struct ExportParams {
    #[serde(default = "default_dataset")]
    dataset: Dataset,
}

fn default_dataset() -> Dataset {
    Dataset::Pupils
}

/// Gathers, gates and journals an export; `progress(done, total)` follows the pupils read.
async fn run_export(
    tenant: &crate::tenant::TenantHandle,
    project: i64,
    dataset: Dataset,
    researcher: i64,
    progress: Arc<ExportJob>,
) -> Result<(String, Value), ApiError> {
    let watch = progress.clone();
    let prepared = tenant
        .db
        .read(move |c| {
            sql::prepare_export(c, project, dataset, researcher, &|done, total| {
                watch.total.store(total, Ordering::Relaxed);
                watch.done.store(done, Ordering::Relaxed);
            })
        })
        .await?
        .ok_or_else(ApiError::not_found)?;
    let at = now();
    let (prepared, _) = tenant
        .db
        .write(move |c| {
            let seq = sql::journal_export(c, &prepared, at)?;
            Ok((prepared, seq))
        })
        .await?;
    Ok(prepared.outcome?)
}

fn csv_response(project: i64, dataset: Dataset, csv: String, gate: &Value) -> Response {
    let name = match dataset {
        Dataset::Pupils => "pupils",
        Dataset::Distribution => "distribution",
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"project-{project}-{name}.csv\""),
            ),
        ],
        csv,
    )
        .into_response();
    if let Ok(v) = gate.to_string().parse() {
        response.headers_mut().insert("x-privacy-gate", v);
    }
    response
}

/// An export of one of the researcher's projects, as CSV, or the gate's refusal (422),
/// in one request (what an R script reads with `read.csv`).
pub async fn export(
    m: Member<ResearcherOnly>,
    Path((_, project)): Path<(String, i64)>,
    Query(params): Query<ExportParams>,
) -> Result<Response, ApiError> {
    let job = Arc::new(ExportJob::default());
    let (csv, gate) = run_export(&m.tenant, project, params.dataset, m.user.id, job).await?;
    Ok(csv_response(project, params.dataset, csv, &gate))
}

/// A long export in the background, watched through its progress.
#[derive(Debug, Default)]
pub struct ExportJob {
    pub total: AtomicU64,
    pub done: AtomicU64,
    outcome: Mutex<Option<Result<(String, Value), ApiError>>>,
}

/// Exports running or finished in this process: each knows its tenant and researcher, who
/// alone may watch it and fetch its file.
#[derive(Debug, Clone, Default)]
pub struct ExportJobs {
    jobs: Arc<Mutex<Vec<JobEntry>>>,
}

/// Tenant slug, researcher, job id, project, dataset, the job.
type JobEntry = (String, i64, String, i64, Dataset, Arc<ExportJob>);

const KEPT_EXPORTS: usize = 32;

impl ExportJobs {
    fn start(
        &self,
        slug: &str,
        researcher: i64,
        project: i64,
        dataset: Dataset,
    ) -> Result<(String, Arc<ExportJob>), ApiError> {
        let id = crate::auth::password::random_token(12)?;
        let job = Arc::new(ExportJob::default());
        if let Ok(mut jobs) = self.jobs.lock() {
            if jobs.len() >= KEPT_EXPORTS {
                jobs.remove(0);
            }
            jobs.push((
                slug.to_string(),
                researcher,
                id.clone(),
                project,
                dataset,
                job.clone(),
            ));
        }
        Ok((id, job))
    }

    fn get(&self, slug: &str, researcher: i64, id: &str) -> Option<(i64, Dataset, Arc<ExportJob>)> {
        self.jobs
            .lock()
            .ok()?
            .iter()
            .find(|(s, r, i, ..)| s == slug && *r == researcher && i == id)
            .map(|(_, _, _, p, d, j)| (*p, *d, j.clone()))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartExport {
    #[serde(default = "default_dataset")]
    dataset: Dataset,
}

/// Starts an export in the background; its progress is at the returned `status` URL.
pub async fn start_export(
    State(state): State<AppState>,
    m: Member<ResearcherOnly>,
    Path((_, project)): Path<(String, i64)>,
    Json(body): Json<StartExport>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (id, job) = state
        .export_jobs
        .start(&m.tenant.slug, m.user.id, project, body.dataset)?;
    let (tenant, researcher, dataset) = (m.tenant.clone(), m.user.id, body.dataset);
    let watch = job.clone();
    tokio::spawn(async move {
        let outcome = run_export(&tenant, project, dataset, researcher, watch.clone()).await;
        if let Ok(mut o) = watch.outcome.lock() {
            *o = Some(outcome);
        }
    });
    let slug = &m.tenant.slug;
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"job": id, "status": format!("/t/{slug}/api/research/exports/{id}"),
                    "file": format!("/t/{slug}/api/research/exports/{id}/csv")}),
        ),
    ))
}

/// Where an export stands: pupils read out of the total, then the gate's answer.
pub async fn export_status(
    State(state): State<AppState>,
    m: Member<ResearcherOnly>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(status_of(&state, &m, &id)?))
}

fn status_of(state: &AppState, m: &Member<ResearcherOnly>, id: &str) -> Result<Value, ApiError> {
    let (_, _, job) = state
        .export_jobs
        .get(&m.tenant.slug, m.user.id, id)
        .ok_or_else(ApiError::not_found)?;
    let outcome = job.outcome.lock().ok().and_then(|o| {
        o.as_ref().map(|r| match r {
            Ok((_, gate)) => json!({"finished": true, "gate": gate}),
            Err(e) => json!({"finished": true, "refused": {"code": e.code, "message": e.message}}),
        })
    });
    let mut status = outcome.unwrap_or_else(|| json!({"finished": false}));
    status["done"] = json!(job.done.load(Ordering::Relaxed));
    status["total"] = json!(job.total.load(Ordering::Relaxed));
    Ok(status)
}

/// The file of a finished export (409 while it runs; the gate's refusal if it refused).
pub async fn export_file(
    State(state): State<AppState>,
    m: Member<ResearcherOnly>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (project, dataset, job) = state
        .export_jobs
        .get(&m.tenant.slug, m.user.id, &id)
        .ok_or_else(ApiError::not_found)?;
    let outcome = job.outcome.lock().ok().and_then(|o| o.clone());
    match outcome {
        None => Err(ApiError::conflict(
            "the export is still running: follow its status",
        )),
        Some(Err(e)) => Err(e),
        Some(Ok((csv, gate))) => Ok(csv_response(project, dataset, csv, &gate)),
    }
}

#[derive(Deserialize)]
pub struct StartForm {
    dataset: Dataset,
}

/// The research page's export button: starts the export, then shows its progress.
pub async fn start_form(
    State(state): State<AppState>,
    m: Member<ResearcherOnly>,
    Path((_, project)): Path<(String, i64)>,
    Form(f): Form<StartForm>,
) -> Result<Response, ApiError> {
    let slug = m.tenant.slug.clone();
    let (_, Json(started)) = start_export(
        State(state),
        m,
        Path((slug.clone(), project)),
        Json(StartExport { dataset: f.dataset }),
    )
    .await?;
    let job = started["job"].as_str().unwrap_or_default();
    Ok(Redirect::to(&format!("/t/{slug}/research/exports/{job}")).into_response())
}

/// An export's progress page: refreshes itself every second until the gate has answered,
/// then offers the file or says why it was refused.
pub async fn export_page(
    lang: Lang,
    State(state): State<AppState>,
    m: Member<ResearcherOnly>,
    Path((slug, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let status = status_of(&state, &m, &id)?;
    let finished = status["finished"] == true;
    let body = html! {
        @if !finished {
            p role="status" { (lang.t("researcher.reading")) " " (status["done"]) " / " (status["total"]) }
            progress max=(status["total"].as_u64().unwrap_or(0).max(1)) value=(status["done"]) {}
        } @else if let Some(reason) = status["refused"]["message"].as_str() {
            (super::layout::alert(reason))
        } @else {
            p role="status" { (lang.t("researcher.ready")) }
            p { a href={ "/t/" (slug) "/api/research/exports/" (id) "/csv" } { (lang.t("researcher.download")) } }
        }
        p { a href={ "/t/" (slug) "/research" } { (lang.t("researcher.back")) } }
    };
    let mut page = super::users::member_page(lang, &m, lang.t("researcher.export_title"), body);
    if !finished {
        page.headers_mut()
            .insert("refresh", header::HeaderValue::from_static("1"));
    }
    Ok(page)
}
