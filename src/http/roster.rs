//! Roster import pages and API: upload OneRoster CSV files (optionally as a dry run), then
//! watch the import's progress and read its report.

use axum::Json;
use axum::extract::{Multipart, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::extract::Path;
use super::i18n::Lang;
use super::layout::{self, alert, notice};
use super::users::viewer;
use crate::app::AppState;
use crate::auth::password::random_token;
use crate::auth::{AdminOnly, Member};
use crate::error::ApiError;
use crate::tenant::roster::{self, Counts, ProgressView, RosterFiles};

async fn read_upload(mut multipart: Multipart) -> Result<(RosterFiles, bool), ApiError> {
    let mut files = RosterFiles::default();
    let mut dry_run = false;
    let bad = |m: String| ApiError::bad_request("invalid_upload", m);
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| bad(e.body_text()))?
    {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "dry_run" => {
                let v = field.text().await.map_err(|e| bad(e.body_text()))?;
                dry_run = matches!(v.as_str(), "on" | "true" | "1");
            }
            "files" | "file" => {
                let filename = field.file_name().unwrap_or_default().to_string();
                if filename.is_empty() {
                    continue;
                }
                let bytes = field.bytes().await.map_err(|e| bad(e.body_text()))?;
                if filename.to_ascii_lowercase().ends_with(".zip") {
                    files.add_zip(&filename, &bytes).map_err(bad)?;
                    continue;
                }
                let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    bad(format!(
                        "{filename}: not UTF-8 text; export the CSV as UTF-8"
                    ))
                })?;
                files.add(&filename, text).map_err(bad)?;
            }
            "_csrf" => {}
            other => return Err(bad(format!("unexpected form field `{other}`"))),
        }
    }
    if files.is_empty() {
        return Err(bad(format!(
            "no file uploaded; expected some of {}",
            roster::FILES.join(", ")
        )));
    }
    Ok((files, dry_run))
}

async fn start(
    state: &AppState,
    m: &Member<AdminOnly>,
    files: RosterFiles,
    dry_run: bool,
) -> Result<String, ApiError> {
    let id = random_token(9)?;
    let progress = state.roster_jobs.start(&m.tenant.slug, &id);
    let tenant = m.tenant.clone();
    let who = m.user.username.clone();
    tokio::spawn(async move {
        match roster::run(&tenant, files, dry_run, progress.clone()).await {
            Ok(report) => {
                tracing::info!(tenant = %tenant.slug, by = %who, dry_run, applied = report.applied, errors = report.errors.len(), "roster import finished");
                if let Ok(mut r) = progress.report.lock() {
                    *r = Some(report);
                }
            }
            Err(e) => {
                tracing::error!(tenant = %tenant.slug, error = %e, "roster import failed");
                let message = match e {
                    crate::store::StoreError::Conflict(m) => m,
                    _ => "the import stopped on a storage error; rows written before it are kept, and running it again resumes".into(),
                };
                if let Ok(mut f) = progress.failure.lock() {
                    *f = Some(message);
                }
            }
        }
    });
    Ok(id)
}

#[derive(serde::Serialize)]
pub struct Started {
    job: String,
    status_url: String,
}

pub async fn upload(
    State(state): State<AppState>,
    m: Member<AdminOnly>,
    multipart: Multipart,
) -> Result<(StatusCode, Json<Started>), ApiError> {
    let (files, dry_run) = read_upload(multipart).await?;
    let job = start(&state, &m, files, dry_run).await?;
    let status_url = format!("/t/{}/api/roster/jobs/{job}", m.tenant.slug);
    Ok((StatusCode::ACCEPTED, Json(Started { job, status_url })))
}

pub async fn job(
    State(state): State<AppState>,
    m: Member<AdminOnly>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<ProgressView>, ApiError> {
    let p = state
        .roster_jobs
        .get(&m.tenant.slug, &id)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(p.snapshot()))
}

pub async fn page(lang: Lang, m: Member<AdminOnly>) -> Response {
    let slug = &m.tenant.slug;
    let body = html! {
        form method="post" enctype="multipart/form-data" action={ "/t/" (slug) "/admin/roster?_csrf=" (m.csrf) } {
            div.field {
                label for="files" { (lang.t("roster.files")) }
                input id="files" name="files" type="file" accept=".csv,text/csv,.zip,application/zip" multiple required;
            }
            label.check { input type="checkbox" name="dry_run" checked; " " (lang.t("roster.dry_run")) }
            button type="submit" { (lang.t("roster.submit")) }
        }
    };
    let name = m.user.display_name();
    let v = viewer(lang, &m.user, slug, &m.csrf, &name);
    layout::page(lang, lang.t("admin.roster"), Some(v), body).into_response()
}

pub async fn upload_form(
    State(state): State<AppState>,
    m: Member<AdminOnly>,
    multipart: Multipart,
) -> Result<Response, ApiError> {
    let (files, dry_run) = read_upload(multipart).await?;
    let job = start(&state, &m, files, dry_run).await?;
    Ok(Redirect::to(&format!("/t/{}/admin/roster/{job}", m.tenant.slug)).into_response())
}

fn counts_row(lang: Lang, name: &str, c: &Counts) -> Markup {
    let _ = lang;
    html! { tr { th scope="row" { (name) } td { (c.created) } td { (c.updated) } td { (c.unchanged) } td { (c.removed) } } }
}

pub async fn job_page(
    State(state): State<AppState>,
    lang: Lang,
    m: Member<AdminOnly>,
    Path((_, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let p = state
        .roster_jobs
        .get(&m.tenant.slug, &id)
        .ok_or_else(ApiError::not_found)?;
    let view = p.snapshot();
    let slug = &m.tenant.slug;
    let body = html! {
        // app.js polls data-status-url and reloads when the job has finished.
        div #roster-job data-status-url={ "/t/" (slug) "/api/roster/jobs/" (id) } data-finished=(view.finished()) {
            @if !view.finished() {
                label for="roster-progress" { (lang.t("roster.progress")) " : " (view.phase) }
                progress #roster-progress max=(view.total.max(1)) value=(view.done) { (view.done) " / " (view.total) }
            }
            @if let Some(f) = &view.failure { (alert(f)) }
            @if let Some(r) = &view.report {
                @if !r.errors.is_empty() {
                    (alert(lang.t("roster.errors")))
                    ul.errors { @for e in &r.errors { li { code { (e.file) ":" (e.line) } " " (e.message) } } }
                } @else if r.dry_run {
                    (notice(lang.t("roster.dry_done")))
                } @else {
                    (notice(lang.t("roster.done")))
                }
                h2 { (lang.t("roster.report")) }
                table {
                    thead { tr { th {} th { "+" } th { "~" } th { "=" } th { "−" } } }
                    tbody {
                        (counts_row(lang, "orgs", &r.orgs))
                        (counts_row(lang, "users", &r.users))
                        (counts_row(lang, "classes", &r.classes))
                        (counts_row(lang, "enrollments", &r.enrollments))
                    }
                }
                @if !r.warnings.is_empty() {
                    ul.warnings { @for w in &r.warnings { li { code { (w.file) ":" (w.line) } " " (w.message) } } }
                }
                p { a href={ "/t/" (slug) "/admin/roster" } { (lang.t("admin.roster")) } " · " a href={ "/t/" (slug) "/admin" } { (lang.t("admin.title")) } }
            }
        }
    };
    let name = m.user.display_name();
    let v = viewer(lang, &m.user, slug, &m.csrf, &name);
    Ok(layout::page(lang, lang.t("admin.roster"), Some(v), body).into_response())
}
