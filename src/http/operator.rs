//! The operator console (layers 1–4): tenants (create, suspend, resume) and appliance
//! health. The operator's extractor carries no tenant handle: nothing here can read a
//! tenant's users, classes or evidence.

use super::extract::{Form, Json, Path};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::i18n::Lang;
use super::layout::{self, Viewer, csrf_field, field, notice};
use crate::app::AppState;
use crate::auth::{self, Operator};
use crate::doctor;
use crate::error::ApiError;
use crate::store::system::{self, TenantRow};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    slug: String,
    #[serde(default)]
    name: String,
}

#[derive(serde::Deserialize)]
pub struct NewTenantForm {
    slug: String,
    #[serde(default)]
    name: String,
}

#[derive(serde::Serialize)]
pub struct CreatedTenant {
    tenant: TenantRow,
    /// One-time link for the tenant's first admin (valid 7 days).
    admin_setup_url: String,
}

/// `https://<host the browser used>` (or the configured public URL).
pub fn origin(state: &AppState, uri: &Uri, headers: &HeaderMap) -> String {
    if !state.config.public_url.is_empty() {
        return state.config.public_url.trim_end_matches('/').to_string();
    }
    let host = auth::request_host(uri, headers).unwrap_or("localhost");
    let scheme = if state.config.insecure_http {
        "http"
    } else {
        "https"
    };
    format!("{scheme}://{host}")
}

async fn create_tenant(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    slug: &str,
    name: &str,
) -> Result<CreatedTenant, ApiError> {
    let tenant = state.tenants.create(slug.trim(), name).await?;
    let token = auth::issue_tenant_setup_token(state, &tenant.slug).await?;
    tracing::info!(tenant = %tenant.slug, "tenant created");
    Ok(CreatedTenant {
        admin_setup_url: format!(
            "{}/t/{}/setup/{token}",
            origin(state, uri, headers),
            tenant.slug
        ),
        tenant,
    })
}

pub async fn list(
    State(state): State<AppState>,
    _op: Operator,
) -> Result<Json<Vec<TenantRow>>, ApiError> {
    Ok(Json(state.tenants.list().await?))
}

pub async fn create(
    State(state): State<AppState>,
    _op: Operator,
    uri: Uri,
    headers: HeaderMap,
    Json(t): Json<NewTenant>,
) -> Result<(StatusCode, Json<CreatedTenant>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(create_tenant(&state, &uri, &headers, &t.slug, &t.name).await?),
    ))
}

pub async fn console(
    State(state): State<AppState>,
    lang: Lang,
    op: Operator,
) -> Result<Response, ApiError> {
    render_console(&state, lang, &op, None).await
}

async fn render_console(
    state: &AppState,
    lang: Lang,
    op: &Operator,
    created: Option<&CreatedTenant>,
) -> Result<Response, ApiError> {
    let tenants = state.tenants.list().await?;
    let site = state.system.read(system::site).await?;
    let health = doctor::quick(&state.config);
    let (membership, copies) = state
        .system
        .read(|c| {
            Ok((
                crate::store::federation::membership(c)?,
                crate::federation::continuity::states(c)?,
            ))
        })
        .await?;
    let when = |t: Option<i64>| {
        t.map_or_else(
            || lang.t("federation.never").to_string(),
            |t| crate::lrs::statement::format_millis(t * 1000),
        )
    };
    let body = html! {
        p.small { (lang.t("operator.no_data")) }
        @if let Some(c) = created {
            section.card {
                (notice(lang.t("operator.setup_link")))
                p { code.secret { (c.admin_setup_url) } }
            }
        }
        section {
            h2 { (lang.t("operator.tenants")) }
            table {
                thead { tr { th { (lang.t("operator.slug")) } th { (lang.t("operator.name")) } th { "" } th { "" } } }
                tbody {
                    @for t in &tenants {
                        tr {
                            td { code { (t.slug) } }
                            td { (t.name) }
                            td { (if t.status == "active" { lang.t("status.active") } else { lang.t("status.suspended") }) }
                            td {
                                form.inline method="post" action={ "/operator/tenants/" (t.slug) "/status" } {
                                    (csrf_field(&op.csrf))
                                    @if t.status == "active" {
                                        input type="hidden" name="suspended" value="true";
                                        button type="submit" { (lang.t("operator.suspend")) }
                                    } @else {
                                        input type="hidden" name="suspended" value="false";
                                        button type="submit" { (lang.t("operator.resume")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h3 { (lang.t("operator.create")) }
            form method="post" action="/operator/tenants" {
                (csrf_field(&op.csrf))
                (field("slug", lang.t("operator.slug"), "text", true, "off"))
                (field("name", lang.t("operator.name"), "text", true, "organization"))
                button type="submit" { (lang.t("operator.create")) }
            }
        }
        section {
            h2 { (lang.t("federation.title")) }
            @match &membership {
                None => p { (lang.t("federation.not_joined")) },
                Some(m) => {
                    p { (lang.t("federation.hub")) " " code { (m.hub_id) } " — " (m.hub_url) ", "
                        (lang.t("federation.joined")) " " (when(Some(m.joined_at))) }
                    h3 { (lang.t("federation.continuity")) }
                    @if copies.is_empty() { p { (lang.t("federation.none")) } }
                    @else {
                        table.continuity {
                            thead { tr {
                                th { (lang.t("operator.slug")) } th { (lang.t("federation.generation")) }
                                th { (lang.t("federation.last_success")) } th { (lang.t("federation.transfer")) }
                                th { (lang.t("federation.last_error")) }
                            } }
                            tbody {
                                @for (slug, c) in &copies {
                                    tr {
                                        td { code { (slug) } }
                                        td { (c.committed) }
                                        td { (when(c.committed_at)) }
                                        td { (state.sync_board.transfer(slug).unwrap_or_default()) }
                                        td class=(if c.last_error.is_some() { "bad" } else { "" }) {
                                            @if let Some(e) = &c.last_error { (when(c.last_error_at)) " — " (e) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { (lang.t("operator.health")) }
            @if let Some(s) = &site {
                p { (lang.t("operator.site")) " : " code { (s.site_id) } }
            }
            ul.checks {
                @for c in &health {
                    li class=(if c.ok { "ok" } else { "bad" }) {
                        strong { (c.name) } " — " (c.detail)
                        @if let Some(fix) = &c.fix { br; span.small { (fix) } }
                    }
                }
            }
        }
    };
    let viewer = Viewer {
        name: &op.username,
        role_label: lang.t("operator.role"),
        logout_action: "/operator/logout".into(),
        csrf: &op.csrf,
    };
    Ok(layout::page(lang, lang.t("operator.title"), Some(viewer), body).into_response())
}

pub async fn create_form(
    State(state): State<AppState>,
    lang: Lang,
    op: Operator,
    uri: Uri,
    headers: HeaderMap,
    Form(f): Form<NewTenantForm>,
) -> Result<Response, ApiError> {
    let created = create_tenant(&state, &uri, &headers, &f.slug, &f.name).await?;
    render_console(&state, lang, &op, Some(&created)).await
}

#[derive(serde::Deserialize)]
pub struct StatusForm {
    suspended: bool,
}

pub async fn status_form(
    State(state): State<AppState>,
    _op: Operator,
    Path(slug): Path<String>,
    Form(f): Form<StatusForm>,
) -> Result<Response, ApiError> {
    state.tenants.set_status(&slug, f.suspended).await?;
    tracing::info!(tenant = %slug, suspended = f.suspended, "tenant status changed");
    Ok(Redirect::to("/operator").into_response())
}
