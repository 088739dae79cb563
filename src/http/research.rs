//! Research projects and their exports: a tenant admin declares a project (its
//! quasi-identifiers, `k`, the share of pupils it may suppress, its researchers); a
//! researcher of the project downloads tidy CSV for R that the privacy gate
//! (`competency::research`) has passed, or is told why not. Every attempt is journaled.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Json, Path, Query};
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

/// An export of one of the researcher's projects, as CSV, or the gate's refusal (422).
pub async fn export(
    m: Member<ResearcherOnly>,
    Path((_, project)): Path<(String, i64)>,
    Query(params): Query<ExportParams>,
) -> Result<Response, ApiError> {
    let (me, at, dataset) = (m.user.id, now(), params.dataset);
    let (csv, gate) = m
        .tenant
        .db
        .write(move |c| sql::export(c, project, dataset, me, at))
        .await??;
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
    Ok(response)
}
