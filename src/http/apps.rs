//! Tenant apps over HTTP: serving them at `/t/{tenant}/apps/{app}/…` behind the user's
//! session, the admin's install / review / remove pages, and the JSON API.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Multipart, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::{Value, json};

use super::extract::Path;
use super::i18n::Lang;
use super::layout::{self, alert, notice};
use super::users::viewer;
use crate::app::AppState;
use crate::apps::calls::{CallCtx, app_pseudonym};
use crate::apps::runtime::{AppFailure, AppRequest, to_response};
use crate::apps::{self, Capability, Installed, Manifest};
use crate::auth::password::random_token;
use crate::auth::{AdminOnly, AnyRole, Member};
use crate::error::ApiError;
use crate::store::apps::{self as sql, AppRow};
use crate::tenant::{Role, TenantHandle};

/// Request headers an app sees (besides the host's own `x-ceredis-*`): never cookies,
/// credentials, the client's address or the `Host` it used.
const REQUEST_HEADERS: &[&str] = &[
    "accept",
    "accept-language",
    "content-type",
    "if-none-match",
    "if-modified-since",
];

fn app_root(slug: &str, app: &str) -> String {
    format!("/t/{slug}/apps/{app}")
}

/// An installed app as the request needs it.
struct Served {
    row: AppRow,
    manifest: Manifest,
    key: Vec<u8>,
}

async fn load(tenant: &TenantHandle, name: &str) -> Result<Served, ApiError> {
    let name = name.to_string();
    let (row, key) = tenant
        .db
        .read(move |c| Ok((sql::app(c, &name)?, crate::store::ai::pseudonym_key(c)?)))
        .await?;
    let row = row.filter(|r| r.enabled).ok_or_else(no_such_app)?;
    let manifest: Manifest = serde_json::from_str(&row.manifest).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "app_corrupt",
            "this app's stored manifest cannot be read; reinstall it",
        )
    })?;
    Ok(Served { row, manifest, key })
}

fn no_such_app() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_app",
        "no such app in this school",
    )
}

/// `/t/{tenant}/apps/{app}` and everything under it, any method: runs the app.
pub async fn serve(
    State(state): State<AppState>,
    lang: Lang,
    m: Member<AnyRole>,
    Path(params): Path<HashMap<String, String>>,
    request: Request,
) -> Result<Response, ApiError> {
    let name = params.get("app").cloned().unwrap_or_default();
    let served = load(&m.tenant, &name).await?;
    if !served.manifest.allows_role(m.user.role) {
        return Err(ApiError::forbidden(
            "app_not_for_role",
            "this app is not offered to your role in this school",
        ));
    }
    let root = app_root(&m.tenant.slug, &served.row.name);
    let (parts, body) = request.into_parts();
    let full = parts.uri.path();
    let sub = full.strip_prefix(&root).unwrap_or("/");
    if sub.is_empty() {
        return Ok(Redirect::to(&format!("{root}/")).into_response());
    }
    if !served.manifest.routes_path(sub) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_app_page",
            "this app has no such page",
        ));
    }
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{sub}?{q}"),
        None => sub.to_string(),
    };
    let limit = state.apps.limits.max_request_bytes;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| failure_error(&AppFailure::RequestTooLarge(limit)))?;
    let mut headers = HeaderMap::new();
    for name in REQUEST_HEADERS {
        for v in parts.headers.get_all(*name) {
            headers.append(*name, v.clone());
        }
    }
    for (k, v) in [
        ("x-ceredis-base", root.as_str()),
        ("x-ceredis-csrf", m.csrf.as_str()),
        ("x-ceredis-lang", lang.code()),
    ] {
        if let Ok(v) = HeaderValue::from_str(v) {
            headers.insert(k, v);
        }
    }
    let pre = match state.apps.cached(&served.row.sha256) {
        Some(pre) => pre,
        None => {
            let app = served.row.name.clone();
            let bytes = m
                .tenant
                .db
                .read(move |c| sql::component(c, &app))
                .await?
                .ok_or_else(no_such_app)?;
            state
                .apps
                .prepare(&served.row.sha256, bytes)
                .await
                .map_err(|e| report(&m.tenant.slug, &served.row.name, e))?
        }
    };
    let grants: BTreeSet<Capability> = served
        .row
        .grants
        .iter()
        .filter_map(|g| Capability::parse(g))
        .collect();
    let call = CallCtx {
        pseudonym: app_pseudonym(&served.key, &served.row.name, &m.user.agent_name),
        tenant: m.tenant.clone(),
        user: m.user.clone(),
        app: served.row.name.clone(),
        app_title: served.manifest.title.clone(),
        grants,
        storage_quota: served.manifest.quotas.storage_kib as i64 * 1024,
        lang,
        log_lines: 0,
        log_dropped: 0,
    };
    let started = Instant::now();
    let result = state
        .apps
        .serve(
            pre,
            call,
            served.manifest.quotas,
            AppRequest {
                method: parts.method.clone(),
                path: path_and_query,
                headers,
                body,
            },
        )
        .await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    };
    let took = started.elapsed();
    state.metrics.app_request(outcome, took);
    state
        .apps
        .record(&m.tenant.slug, &served.row.name, outcome, took);
    let (status, app_headers, body) =
        result.map_err(|e| report(&m.tenant.slug, &served.row.name, e))?;
    let form_action = match origin(&state, &parts.uri, &parts.headers) {
        Some(origin) => format!("{origin}{root}/"),
        None => "'self'".into(),
    };
    Ok(to_response(status, &app_headers, body, &form_action))
}

/// Logs a contained app failure and turns it into the error the user sees.
fn report(tenant: &str, app: &str, e: AppFailure) -> ApiError {
    tracing::warn!(%tenant, %app, code = e.code(), error = %e, "app request failed");
    failure_error(&e)
}

fn failure_error(e: &AppFailure) -> ApiError {
    ApiError::new(e.status(), e.code(), e.to_string())
}

/// `https://host[:port]` as the browser addressed the appliance (HTTP/2 carries it in the
/// URI's authority, HTTP/1.1 in `Host`).
fn origin(state: &AppState, uri: &axum::http::Uri, headers: &HeaderMap) -> Option<String> {
    let scheme = if state.config.insecure_http {
        "http"
    } else {
        "https"
    };
    let host = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| headers.get(header::HOST)?.to_str().ok().map(str::to_string))?;
    let plain = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    plain.then(|| format!("{scheme}://{host}"))
}

// ---------------------------------------------------------------------------------------
// What each role sees

/// The apps offered to `role`, for home pages.
pub async fn offered(
    tenant: &TenantHandle,
    role: Role,
) -> Result<Vec<(String, Manifest)>, ApiError> {
    let rows = tenant.db.read(sql::apps).await?;
    Ok(rows
        .into_iter()
        .filter(|r| r.enabled)
        .filter_map(|r| {
            let m: Manifest = serde_json::from_str(&r.manifest).ok()?;
            m.allows_role(role).then_some((r.name, m))
        })
        .collect())
}

/// The "Applications" section of a home page (nothing when no app is offered).
pub async fn home_section(
    lang: Lang,
    tenant: &TenantHandle,
    role: Role,
) -> Result<Markup, ApiError> {
    let apps = offered(tenant, role).await?;
    Ok(html! {
        @if !apps.is_empty() {
            section.card #apps {
                h2 { (lang.t("apps.title")) }
                ul.apps {
                    @for (name, m) in &apps {
                        li {
                            a href={ (app_root(&tenant.slug, name)) "/" } { (m.title) }
                            @if !m.description.is_empty() { " — " (m.description) }
                        }
                    }
                }
            }
        }
    })
}

/// `GET /t/{tenant}/api/apps`: the apps offered to the caller (an admin: all, with their
/// hashes and grants).
pub async fn list(m: Member<AnyRole>) -> Result<Json<Value>, ApiError> {
    if m.user.role == Role::Admin {
        let rows = m.tenant.db.read(sql::apps).await?;
        let apps: Vec<Value> = rows
            .iter()
            .map(|r| {
                let title = serde_json::from_str::<Manifest>(&r.manifest)
                    .map(|m| m.title)
                    .unwrap_or_default();
                json!({"name": r.name, "title": title, "version": r.version,
                       "sha256": r.sha256, "grants": r.grants, "size": r.size,
                       "installed_at": r.installed_at, "updated_at": r.updated_at,
                       "url": format!("{}/", app_root(&m.tenant.slug, &r.name))})
            })
            .collect();
        return Ok(Json(json!({ "apps": apps })));
    }
    let apps: Vec<Value> = offered(&m.tenant, m.user.role)
        .await?
        .into_iter()
        .map(|(name, man)| {
            json!({"name": name, "title": man.title, "description": man.description,
                   "url": format!("{}/", app_root(&m.tenant.slug, &name))})
        })
        .collect();
    Ok(Json(json!({ "apps": apps })))
}

// ---------------------------------------------------------------------------------------
// Install, review, remove

/// An upload waiting for the admin's review of its capabilities.
#[derive(Debug, Clone)]
struct Pending {
    tenant: String,
    manifest_text: String,
    manifest: Manifest,
    component: Vec<u8>,
    sha256: String,
    at: Instant,
}

/// Uploads under review, by token; forgotten after [`PENDING_TTL`].
#[derive(Debug, Clone, Default)]
pub struct PendingUploads(Arc<Mutex<HashMap<String, Pending>>>);

const PENDING_TTL: Duration = Duration::from_secs(30 * 60);

impl PendingUploads {
    fn put(&self, p: Pending) -> Result<String, ApiError> {
        let token = random_token(18).map_err(ApiError::internal)?;
        if let Ok(mut map) = self.0.lock() {
            map.retain(|_, v| v.at.elapsed() < PENDING_TTL);
            map.insert(token.clone(), p);
        }
        Ok(token)
    }

    fn get(&self, tenant: &str, token: &str) -> Option<Pending> {
        let map = self.0.lock().ok()?;
        map.get(token)
            .filter(|p| p.tenant == tenant && p.at.elapsed() < PENDING_TTL)
            .cloned()
    }

    fn take(&self, tenant: &str, token: &str) -> Option<Pending> {
        let p = self.get(tenant, token)?;
        self.0.lock().ok()?.remove(token);
        Some(p)
    }
}

struct Upload {
    manifest: Option<String>,
    component: Option<Vec<u8>>,
    grants: Vec<String>,
}

async fn read_upload(mut multipart: Multipart) -> Result<Upload, ApiError> {
    let bad = |m: String| ApiError::bad_request("invalid_upload", m);
    let mut up = Upload {
        manifest: None,
        component: None,
        grants: Vec::new(),
    };
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| bad(e.body_text()))?
    {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "manifest" => {
                let bytes = field.bytes().await.map_err(|e| bad(e.body_text()))?;
                up.manifest = Some(
                    String::from_utf8(bytes.to_vec())
                        .map_err(|_| bad(format!("{}: not UTF-8 text", apps::MANIFEST_FILE)))?,
                );
            }
            "component" => {
                let bytes = field.bytes().await.map_err(|e| bad(e.body_text()))?;
                up.component = Some(bytes.to_vec());
            }
            "grant" => up
                .grants
                .push(field.text().await.map_err(|e| bad(e.body_text()))?),
            "_csrf" => {}
            other => return Err(bad(format!("unexpected form field `{other}`"))),
        }
    }
    Ok(up)
}

fn missing(what: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_upload",
        format!(
            "no {what} uploaded: send the app's `{}` and its `.wasm` component",
            apps::MANIFEST_FILE
        ),
    )
}

/// `POST /t/{tenant}/api/apps`: installs or upgrades an app in one step (multipart:
/// `manifest`, `component`, and a `grant` per capability granted).
pub async fn install_api(
    State(state): State<AppState>,
    m: Member<AdminOnly>,
    multipart: Multipart,
) -> Result<(StatusCode, Json<Installed>), ApiError> {
    let up = read_upload(multipart).await?;
    let manifest = up.manifest.ok_or_else(|| missing("manifest"))?;
    let component = up.component.ok_or_else(|| missing("component"))?;
    let installed = apps::install(
        &state.apps,
        &m.tenant,
        &manifest,
        component,
        &up.grants,
        &format!("user:{}", m.user.id),
    )
    .await?;
    let status = if installed.upgrade {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(installed)))
}

/// `DELETE /t/{tenant}/api/apps/{app}`: removes an app and its storage.
pub async fn remove_api(
    m: Member<AdminOnly>,
    Path((_, app)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    remove(&m, app).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove(m: &Member<AdminOnly>, app: String) -> Result<(), ApiError> {
    let actor = format!("user:{}", m.user.id);
    let at = crate::store::now();
    let removed = m
        .tenant
        .db
        .write(move |c| sql::remove(c, &app, &actor, at))
        .await?;
    if removed { Ok(()) } else { Err(no_such_app()) }
}

/// `GET /t/{tenant}/admin/apps`: installed apps, their hashes and grants, the upload
/// form and the install history.
pub async fn admin_page(lang: Lang, m: Member<AdminOnly>) -> Result<Response, ApiError> {
    render_admin(lang, &m, None).await
}

async fn render_admin(
    lang: Lang,
    m: &Member<AdminOnly>,
    message: Option<Markup>,
) -> Result<Response, ApiError> {
    let (rows, history) = m
        .tenant
        .db
        .read(|c| Ok((sql::apps(c)?, sql::history_of(c, 20)?)))
        .await?;
    let slug = &m.tenant.slug;
    let body = html! {
        @if let Some(msg) = message { (msg) }
        nav.sections { a href={ "/t/" (slug) "/admin" } { (lang.t("admin.title")) } }
        section.card {
            h2 { (lang.t("apps.installed")) }
            @if rows.is_empty() { p { (lang.t("apps.none")) } }
            @for r in &rows {
                @let man: Option<Manifest> = serde_json::from_str(&r.manifest).ok();
                article.app {
                    h3 {
                        a href={ (app_root(slug, &r.name)) "/" } { (man.as_ref().map(|m| m.title.as_str()).unwrap_or(&r.name)) }
                        " " small { (r.name) " " (r.version) }
                    }
                    p { (lang.t("apps.hash")) " : " code.hash { (r.sha256) } " · " (r.size / 1024) " Kio" }
                    @if let Some(man) = &man {
                        p { (lang.t("apps.roles")) " : " (man.roles.join(", ")) }
                    }
                    (grant_list(lang, &r.grants))
                    form method="post" action={ "/t/" (slug) "/admin/apps/" (r.name) "/remove" } {
                        input type="hidden" name="_csrf" value=(m.csrf);
                        button.danger type="submit" { (lang.t("apps.remove")) }
                    }
                }
            }
        }
        section.card {
            h2 { (lang.t("apps.add")) }
            p { (lang.t("apps.add_help")) }
            form method="post" enctype="multipart/form-data" action={ "/t/" (slug) "/admin/apps?_csrf=" (m.csrf) } {
                label { (lang.t("apps.manifest")) " " input type="file" name="manifest" accept=".toml" required; }
                label { (lang.t("apps.component")) " " input type="file" name="component" accept=".wasm" required; }
                button type="submit" { (lang.t("apps.review")) }
            }
        }
        @if !history.is_empty() {
            section.card {
                h2 { (lang.t("apps.history")) }
                table {
                    thead { tr { th { (lang.t("apps.when")) } th { "app" } th { (lang.t("apps.action")) } th { "version" } th { (lang.t("apps.hash")) } th { (lang.t("apps.granted")) } } }
                    tbody {
                        @for h in &history {
                            tr {
                                td { time datetime=(crate::lrs::statement::format_millis(h.at * 1000)) { (crate::lrs::statement::format_millis(h.at * 1000)) } }
                                td { (h.app) } td { (h.action) } td { (h.version) }
                                td { code { (&h.sha256[..h.sha256.len().min(12)]) "…" } }
                                td { (h.grants.join(", ")) }
                            }
                        }
                    }
                }
            }
        }
    };
    let name = m.user.display_name();
    let v = viewer(lang, &m.user, slug, &m.csrf, &name);
    Ok(layout::page(lang, lang.t("apps.admin_title"), Some(v), body).into_response())
}

fn grant_list(lang: Lang, grants: &[String]) -> Markup {
    html! {
        @if grants.is_empty() { p { (lang.t("apps.no_grant")) } }
        @else {
            ul.grants {
                @for g in grants {
                    @if let Some(c) = Capability::parse(g) { li { code { (g) } " — " (c.describe(lang)) } }
                }
            }
        }
    }
}

/// `POST /t/{tenant}/admin/apps` (multipart): checks the upload and shows what the app
/// asks for, for the admin to grant.
pub async fn upload_form(
    State(state): State<AppState>,
    lang: Lang,
    m: Member<AdminOnly>,
    multipart: Multipart,
) -> Result<Response, ApiError> {
    let up = read_upload(multipart).await?;
    let manifest_text = up.manifest.ok_or_else(|| missing("manifest"))?;
    let component = up.component.ok_or_else(|| missing("component"))?;
    let manifest = match Manifest::parse(&manifest_text) {
        Ok(man) => man,
        Err(e) => return render_admin(lang, &m, Some(alert(&e.to_string()))).await,
    };
    let sha256 = apps::component_hash(&component);
    if let Err(e) = state.apps.prepare(&sha256, component.clone()).await {
        return render_admin(lang, &m, Some(alert(&e.to_string()))).await;
    }
    let token = state.app_uploads.put(Pending {
        tenant: m.tenant.slug.clone(),
        manifest_text,
        manifest,
        component,
        sha256,
        at: Instant::now(),
    })?;
    Ok(Redirect::to(&format!("/t/{}/admin/apps/review/{token}", m.tenant.slug)).into_response())
}

/// `GET /t/{tenant}/admin/apps/review/{token}`: the capabilities requested, in words, each
/// to grant or withhold.
pub async fn review_page(
    State(state): State<AppState>,
    lang: Lang,
    m: Member<AdminOnly>,
    Path((_, token)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let p = state
        .app_uploads
        .get(&m.tenant.slug, &token)
        .ok_or_else(ApiError::not_found)?;
    let existing = {
        let name = p.manifest.name.clone();
        m.tenant.db.read(move |c| sql::app(c, &name)).await?
    };
    let slug = &m.tenant.slug;
    let q = &p.manifest.quotas;
    let body = html! {
        section.card {
            h2 { (p.manifest.title) " " small { (p.manifest.name) " " (p.manifest.version) } }
            @if !p.manifest.description.is_empty() { p { (p.manifest.description) } }
            @if let Some(e) = &existing {
                (notice(&format!("{} {} → {}", lang.t("apps.upgrade"), e.version, p.manifest.version)))
            }
            p { (lang.t("apps.hash")) " : " code.hash { (p.sha256) } " · " (p.component.len() / 1024) " Kio" }
            p { (lang.t("apps.roles")) " : " (p.manifest.roles.join(", ")) }
            p { (lang.t("apps.quotas")) " : " (q.memory_mib) " Mio, " (q.timeout_ms) " ms"
                @if let Some(f) = q.fuel { ", fuel " (f) }
                @if q.storage_kib > 0 { ", " (q.storage_kib) " Kio" } }
            form method="post" action={ "/t/" (slug) "/admin/apps/review/" (token) } {
                input type="hidden" name="_csrf" value=(m.csrf);
                fieldset {
                    legend { (lang.t("apps.requested")) }
                    @if p.manifest.requested().is_empty() { p { (lang.t("apps.no_grant")) } }
                    @for c in p.manifest.requested() {
                        label.grant {
                            input type="checkbox" name="grant" value=(c.code()) checked;
                            " " code { (c.code()) } " — " (c.describe(lang))
                        }
                    }
                }
                button type="submit" { (lang.t("apps.install")) }
            }
        }
    };
    let name = m.user.display_name();
    let v = viewer(lang, &m.user, slug, &m.csrf, &name);
    Ok(layout::page(lang, lang.t("apps.review_title"), Some(v), body).into_response())
}

/// `POST /t/{tenant}/admin/apps/review/{token}`: installs with the capabilities ticked.
pub async fn review_submit(
    State(state): State<AppState>,
    lang: Lang,
    m: Member<AdminOnly>,
    Path((_, token)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::bad_request("invalid_form", e.to_string()))?;
    let grants: Vec<String> = pairs
        .into_iter()
        .filter(|(k, _)| k == "grant")
        .map(|(_, v)| v)
        .collect();
    let p = state
        .app_uploads
        .take(&m.tenant.slug, &token)
        .ok_or_else(ApiError::not_found)?;
    let installed = apps::install(
        &state.apps,
        &m.tenant,
        &p.manifest_text,
        p.component,
        &grants,
        &format!("user:{}", m.user.id),
    )
    .await?;
    let text = format!(
        "{} : {} {} ({})",
        lang.t(if installed.upgrade {
            "apps.upgraded"
        } else {
            "apps.installed_one"
        }),
        installed.name,
        installed.version,
        &installed.sha256[..12]
    );
    render_admin(lang, &m, Some(notice(&text))).await
}

/// `POST /t/{tenant}/admin/apps/{app}/remove`.
pub async fn remove_form(
    lang: Lang,
    m: Member<AdminOnly>,
    Path((_, app)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    remove(&m, app.clone()).await?;
    render_admin(
        lang,
        &m,
        Some(notice(&format!("{} : {app}", lang.t("apps.removed")))),
    )
    .await
}
