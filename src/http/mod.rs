//! The HTTP surface: one file per resource, all routes declared in [`routes`] together
//! with the access each needs, so that tests can walk the whole table (the tenant
//! isolation matrix is generated from it).
//!
//! JSON API under `/api/…` and `/t/{tenant}/api/…`; server-rendered pages (maud, checked at
//! compile time) elsewhere. Errors are JSON [`crate::error::ApiError`]s; [`html_errors`]
//! turns them into pages (or a redirect to the login page) for browsers.

pub mod apps;
pub mod assessment;
pub mod assessment_pages;
pub mod classes;
pub mod continuity;
pub mod credentials;
pub mod dashboards;
pub mod extract;
pub mod health;
pub mod i18n;
pub mod layout;
pub mod operator;
pub mod research;
pub mod retention;
pub mod roster;
pub mod session;
pub mod setup;
pub mod statements;
pub mod ui;
pub mod users;
pub mod xapi;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, delete, get, post};
use maud::html;

use crate::app::AppState;
use axum::routing::any;

use crate::auth::{AdminOnly, AnyRole, Gate, ResearcherOnly, Staff, StudentOnly, TeacherOnly};
use crate::error::ApiError;
use crate::tenant::Role;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (login pages, assets, health).
    Public,
    /// The signed-in operator only.
    Operator,
    /// Signed-in users of the tenant in the path with one of these roles.
    Members(&'static [Role]),
    /// A machine client with the tenant's API credentials.
    Machine,
    /// The tenant's xAPI endpoint: its API credentials, or a member's session (scoped by role).
    Xapi,
}

fn members<G: Gate>() -> Access {
    Access::Members(G::ROLES)
}

#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
}

struct Table {
    router: Router<AppState>,
    specs: Vec<RouteSpec>,
}

impl Table {
    fn add(
        mut self,
        method: Method,
        path: &'static str,
        access: Access,
        route: MethodRouter<AppState>,
    ) -> Table {
        self.router = self.router.route(path, route);
        self.specs.push(RouteSpec {
            method,
            path,
            access,
        });
        self
    }
}

/// The largest app upload: a component and its manifest.
const APP_UPLOAD_LIMIT: usize = crate::apps::MAX_COMPONENT_BYTES + (1 << 20);

/// Every route with the access it requires. `upload_limit` caps the roster upload body.
pub fn table(upload_limit: usize) -> (Router<AppState>, Vec<RouteSpec>) {
    use Access::{Machine, Operator, Public, Xapi};
    let t = Table {
        router: Router::new(),
        specs: Vec::new(),
    }
    // Appliance-wide
    .add(Method::GET, "/", Public, get(ui::landing))
    .add(Method::GET, "/healthz", Public, get(health::healthz))
    .add(Method::GET, "/readyz", Public, get(health::readyz))
    .add(Method::GET, "/metrics", Public, get(health::metrics))
    .add(Method::GET, "/ca.crt", Public, get(ui::ca_certificate))
    .add(Method::GET, "/assets/{*path}", Public, get(ui::asset))
    .add(Method::GET, "/lang/{code}", Public, get(ui::switch_lang))
    .add(
        Method::GET,
        "/setup/{token}",
        Public,
        get(setup::operator_form),
    )
    .add(
        Method::POST,
        "/setup/{token}",
        Public,
        post(setup::operator_submit),
    )
    .add(
        Method::GET,
        "/operator/login",
        Public,
        get(session::operator_login_form),
    )
    .add(
        Method::POST,
        "/operator/login",
        Public,
        post(session::operator_login),
    )
    .add(
        Method::POST,
        "/operator/logout",
        Operator,
        post(session::operator_logout),
    )
    .add(Method::GET, "/operator", Operator, get(operator::console))
    .add(
        Method::POST,
        "/operator/tenants",
        Operator,
        post(operator::create_form),
    )
    .add(
        Method::POST,
        "/operator/tenants/{slug}/status",
        Operator,
        post(operator::status_form),
    )
    .add(
        Method::GET,
        "/api/operator/tenants",
        Operator,
        get(operator::list),
    )
    .add(
        Method::POST,
        "/api/operator/tenants",
        Operator,
        post(operator::create),
    )
    // A tenant's realm
    .add(
        Method::GET,
        "/t/{tenant}/login",
        Public,
        get(session::login_form),
    )
    .add(
        Method::POST,
        "/t/{tenant}/login",
        Public,
        post(session::login),
    )
    .add(
        Method::POST,
        "/t/{tenant}/logout",
        members::<AnyRole>(),
        post(session::logout),
    )
    .add(
        Method::GET,
        "/t/{tenant}/setup/{token}",
        Public,
        get(setup::tenant_form),
    )
    .add(
        Method::POST,
        "/t/{tenant}/setup/{token}",
        Public,
        post(setup::tenant_submit),
    )
    .add(
        Method::GET,
        "/t/{tenant}/password",
        members::<AnyRole>(),
        get(session::password_form),
    )
    .add(
        Method::POST,
        "/t/{tenant}/password",
        members::<AnyRole>(),
        post(session::password_submit),
    )
    .add(
        Method::GET,
        "/t/{tenant}/",
        members::<AnyRole>(),
        get(classes::home),
    )
    .add(
        Method::GET,
        "/t/{tenant}/classes/{class}",
        members::<Staff>(),
        get(classes::class_page),
    )
    .add(
        Method::GET,
        "/t/{tenant}/classes/{class}/assessment",
        members::<TeacherOnly>(),
        get(assessment_pages::class_page),
    )
    .add(
        Method::POST,
        "/t/{tenant}/classes/{class}/assessment",
        members::<TeacherOnly>(),
        post(assessment_pages::class_submit),
    )
    .add(
        Method::GET,
        "/t/{tenant}/classes/{class}/dashboard",
        members::<TeacherOnly>(),
        get(dashboards::class_dashboard),
    )
    .add(
        Method::GET,
        "/t/{tenant}/dashboard",
        members::<Staff>(),
        get(dashboards::school_dashboard),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/classes/{class}/dashboard",
        members::<TeacherOnly>(),
        get(dashboards::class_dashboard_json),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/dashboard",
        members::<Staff>(),
        get(dashboards::school_dashboard_json),
    )
    .add(
        Method::GET,
        "/t/{tenant}/metrics",
        Machine,
        get(dashboards::tenant_metrics),
    )
    .add(
        Method::GET,
        "/t/{tenant}/pupils/{pupil}",
        members::<TeacherOnly>(),
        get(assessment_pages::pupil_page),
    )
    .add(
        Method::POST,
        "/t/{tenant}/pupils/{pupil}/levels",
        members::<TeacherOnly>(),
        post(assessment_pages::decide_submit),
    )
    .add(
        Method::GET,
        "/t/{tenant}/progress",
        members::<StudentOnly>(),
        get(assessment_pages::progress_page),
    )
    .add(
        Method::GET,
        "/t/{tenant}/statements",
        members::<Staff>(),
        get(statements::browser),
    )
    .add(
        Method::GET,
        "/t/{tenant}/history",
        members::<StudentOnly>(),
        get(statements::history),
    )
    .add(
        Method::GET,
        "/t/{tenant}/admin",
        members::<AdminOnly>(),
        get(users::admin_page),
    )
    .add(
        Method::POST,
        "/t/{tenant}/admin/users",
        members::<AdminOnly>(),
        post(users::create_form),
    )
    .add(
        Method::POST,
        "/t/{tenant}/admin/users/{user}/password",
        members::<AdminOnly>(),
        post(users::reset_form),
    )
    .add(
        Method::POST,
        "/t/{tenant}/admin/classes",
        members::<AdminOnly>(),
        post(classes::create_form),
    )
    .add(
        Method::POST,
        "/t/{tenant}/admin/enrolments",
        members::<AdminOnly>(),
        post(classes::enrol_form),
    )
    .add(
        Method::POST,
        "/t/{tenant}/admin/credentials",
        members::<AdminOnly>(),
        post(credentials::create_form),
    )
    .add(
        Method::POST,
        "/t/{tenant}/admin/credentials/{key}/revoke",
        members::<AdminOnly>(),
        post(credentials::revoke_form),
    )
    .add(
        Method::GET,
        "/t/{tenant}/admin/roster",
        members::<AdminOnly>(),
        get(roster::page),
    )
    .add(
        Method::POST,
        "/t/{tenant}/admin/roster",
        members::<AdminOnly>(),
        post(roster::upload_form).layer(DefaultBodyLimit::max(upload_limit)),
    )
    .add(
        Method::GET,
        "/t/{tenant}/admin/roster/{job}",
        members::<AdminOnly>(),
        get(roster::job_page),
    )
    .add(
        Method::GET,
        "/t/{tenant}/admin/continuity",
        members::<AdminOnly>(),
        get(continuity::page),
    )
    .add(
        Method::POST,
        "/t/{tenant}/admin/continuity",
        members::<AdminOnly>(),
        post(continuity::enable),
    )
    .add(
        Method::GET,
        "/t/{tenant}/admin/apps",
        members::<AdminOnly>(),
        get(apps::admin_page),
    )
    .add(
        Method::POST,
        "/t/{tenant}/admin/apps",
        members::<AdminOnly>(),
        post(apps::upload_form).layer(DefaultBodyLimit::max(APP_UPLOAD_LIMIT)),
    )
    .add(
        Method::GET,
        "/t/{tenant}/admin/apps/review/{token}",
        members::<AdminOnly>(),
        get(apps::review_page),
    )
    .add(
        Method::POST,
        "/t/{tenant}/admin/apps/review/{token}",
        members::<AdminOnly>(),
        post(apps::review_submit),
    )
    .add(
        Method::POST,
        "/t/{tenant}/admin/apps/{app}/remove",
        members::<AdminOnly>(),
        post(apps::remove_form),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/apps",
        members::<AnyRole>(),
        get(apps::list),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/apps",
        members::<AdminOnly>(),
        post(apps::install_api).layer(DefaultBodyLimit::max(APP_UPLOAD_LIMIT)),
    )
    .add(
        Method::DELETE,
        "/t/{tenant}/api/apps/{app}",
        members::<AdminOnly>(),
        delete(apps::remove_api),
    )
    .add(
        Method::GET,
        "/t/{tenant}/apps/{app}",
        members::<AnyRole>(),
        any(apps::serve),
    )
    .add(
        Method::GET,
        "/t/{tenant}/apps/{app}/",
        members::<AnyRole>(),
        any(apps::serve),
    )
    .add(
        Method::GET,
        "/t/{tenant}/apps/{app}/{*path}",
        members::<AnyRole>(),
        any(apps::serve),
    )
    .add(
        Method::GET,
        "/t/{tenant}/research",
        members::<ResearcherOnly>(),
        get(users::research_page),
    )
    .add(
        Method::POST,
        "/t/{tenant}/research/projects/{project}/exports",
        members::<ResearcherOnly>(),
        post(research::start_form),
    )
    .add(
        Method::GET,
        "/t/{tenant}/research/exports/{job}",
        members::<ResearcherOnly>(),
        get(research::export_page),
    )
    // A tenant's JSON API
    .add(
        Method::GET,
        "/t/{tenant}/api/me",
        members::<AnyRole>(),
        get(users::me),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/users",
        members::<AdminOnly>(),
        get(users::list),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/users",
        members::<AdminOnly>(),
        post(users::create),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/users/{user}/password",
        members::<AdminOnly>(),
        post(users::reset),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/classes",
        members::<Staff>(),
        get(classes::list),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/classes",
        members::<AdminOnly>(),
        post(classes::create),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/classes/{class}/members",
        members::<Staff>(),
        get(classes::members),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/classes/{class}/enrolments",
        members::<AdminOnly>(),
        post(classes::enrol),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/my/classes",
        members::<StudentOnly>(),
        get(classes::my_classes),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/teaching",
        members::<TeacherOnly>(),
        get(classes::teaching),
    )
    // Assessment: frameworks, evidence, levels, each role's view, erasure
    .add(
        Method::GET,
        "/t/{tenant}/api/frameworks",
        members::<AnyRole>(),
        get(assessment::frameworks),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/frameworks",
        members::<AdminOnly>(),
        post(assessment::import_framework),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/frameworks/{framework}",
        members::<AnyRole>(),
        get(assessment::framework),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/frameworks/{framework}/cass",
        members::<AnyRole>(),
        get(assessment::framework_cass),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/alignments",
        members::<Staff>(),
        post(assessment::align),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/classes/{class}/assessment",
        members::<TeacherOnly>(),
        get(assessment::class_assessment),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/classes/{class}/observations",
        members::<TeacherOnly>(),
        post(assessment::observe),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/pupils/{pupil}/assessment",
        members::<TeacherOnly>(),
        get(assessment::pupil_assessment),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/pupils/{pupil}/levels",
        members::<TeacherOnly>(),
        post(assessment::decide),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/pupils/{pupil}/assertions",
        members::<TeacherOnly>(),
        get(assessment::pupil_assertions),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/assertions",
        members::<AdminOnly>(),
        post(assessment::import_assertions),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/evidence/{evidence}/correction",
        members::<AnyRole>(),
        post(assessment::correct),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/evidence/{evidence}/withdrawal",
        members::<AnyRole>(),
        post(assessment::withdraw),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/my/progress",
        members::<StudentOnly>(),
        get(assessment::my_progress),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/my/self-assessments",
        members::<StudentOnly>(),
        post(assessment::self_assess),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/users/{user}/erasure",
        members::<AdminOnly>(),
        post(assessment::erase),
    )
    // What the school takes from the federation's publications
    .add(
        Method::GET,
        "/t/{tenant}/api/federation/policy",
        members::<AdminOnly>(),
        get(continuity::policy),
    )
    .add(
        Method::PUT,
        "/t/{tenant}/api/federation/policy",
        members::<AdminOnly>(),
        axum::routing::put(continuity::set_policy),
    )
    // Retention windows
    .add(
        Method::GET,
        "/t/{tenant}/api/retention",
        members::<AdminOnly>(),
        get(retention::show),
    )
    .add(
        Method::PUT,
        "/t/{tenant}/api/retention",
        members::<AdminOnly>(),
        axum::routing::put(retention::set),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/retention/run",
        members::<AdminOnly>(),
        post(retention::run),
    )
    // Research projects and their exports
    .add(
        Method::POST,
        "/t/{tenant}/api/research/projects",
        members::<AdminOnly>(),
        post(research::create),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/research/projects",
        members::<ResearcherOnly>(),
        get(research::list),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/research/projects/{project}/export",
        members::<ResearcherOnly>(),
        get(research::export),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/research/projects/{project}/exports",
        members::<ResearcherOnly>(),
        post(research::start_export),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/research/exports/{job}",
        members::<ResearcherOnly>(),
        get(research::export_status),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/research/exports/{job}/csv",
        members::<ResearcherOnly>(),
        get(research::export_file),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/credentials",
        members::<AdminOnly>(),
        get(credentials::list),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/credentials",
        members::<AdminOnly>(),
        post(credentials::create),
    )
    .add(
        Method::DELETE,
        "/t/{tenant}/api/credentials/{key}",
        members::<AdminOnly>(),
        delete(credentials::revoke),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/client",
        Machine,
        get(credentials::whoami),
    )
    .add(
        Method::POST,
        "/t/{tenant}/api/roster/import",
        members::<AdminOnly>(),
        post(roster::upload).layer(DefaultBodyLimit::max(upload_limit)),
    )
    .add(
        Method::GET,
        "/t/{tenant}/api/roster/jobs/{job}",
        members::<AdminOnly>(),
        get(roster::job),
    )
    // The tenant's xAPI endpoint (every method; the handler answers per resource)
    .add(
        Method::POST,
        "/t/{tenant}/xapi/statements",
        Xapi,
        xapi::resource(xapi::Resource::Statements),
    )
    .add(
        Method::GET,
        "/t/{tenant}/xapi/statements/more/{token}",
        Xapi,
        any(xapi::more),
    )
    .add(
        Method::PUT,
        "/t/{tenant}/xapi/activities/state",
        Xapi,
        xapi::resource(xapi::Resource::State),
    )
    .add(
        Method::PUT,
        "/t/{tenant}/xapi/activities/profile",
        Xapi,
        xapi::resource(xapi::Resource::ActivityProfile),
    )
    .add(
        Method::GET,
        "/t/{tenant}/xapi/activities",
        Xapi,
        xapi::resource(xapi::Resource::Activities),
    )
    .add(
        Method::PUT,
        "/t/{tenant}/xapi/agents/profile",
        Xapi,
        xapi::resource(xapi::Resource::AgentProfile),
    )
    .add(
        Method::GET,
        "/t/{tenant}/xapi/agents",
        Xapi,
        xapi::resource(xapi::Resource::Agents),
    )
    .add(
        Method::GET,
        "/t/{tenant}/xapi/about",
        Public,
        xapi::resource(xapi::Resource::About),
    );
    (t.router, t.specs)
}

/// The route table alone, for tests and documentation.
pub fn route_specs() -> Vec<RouteSpec> {
    table(0).1
}

pub fn routes(state: &AppState) -> (Router<AppState>, Vec<RouteSpec>) {
    let (router, specs) = table(state.config.limits.max_upload_bytes);
    (router.fallback(not_found), specs)
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// Security headers on every response: a CSP without inline script, HSTS (over HTTPS),
/// no framing, no MIME sniffing, no cross-site referrers.
pub async fn security_headers(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    // Tenant apps' pages carry their own, stricter policy (`apps::runtime::to_response`).
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
             frame-ancestors 'none'",
        ));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), interest-cohort=()"),
    );
    if !state.config.insecure_http {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Browsers asking for HTML get errors as pages: a 401 becomes a redirect to the right
/// login page, other errors a short page in the user's language.
pub async fn html_errors(request: Request, next: Next) -> Response {
    let wants_html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.contains("text/html"))
        .unwrap_or(false);
    let path = request.uri().path().to_string();
    let lang = i18n::Lang::from_headers(request.headers(), i18n::Lang::Fr);
    let response = next.run(request).await;
    if !wants_html {
        return response;
    }
    let Some(error) = response.extensions().get::<ApiError>().cloned() else {
        return response;
    };
    if error.status == StatusCode::UNAUTHORIZED {
        return Redirect::to(&login_path_for(&path)).into_response();
    }
    if error.code == "password_change_required"
        && let Some(tenant) = tenant_of_path(&path)
    {
        return Redirect::to(&format!("/t/{tenant}/password")).into_response();
    }
    let body = layout::page(
        lang,
        lang.t("error.title"),
        None,
        html! {
            (layout::alert(lang.try_t(&format!("error.{}", error.code)).unwrap_or(&error.message)))
            p.code { "(" (error.code) ")" }
            p { a href="/" { (lang.t("error.back")) } }
        },
    );
    let mut page = (error.status, body).into_response();
    if let Some(v) = response.headers().get(header::RETRY_AFTER) {
        page.headers_mut().insert(header::RETRY_AFTER, v.clone());
    }
    page
}

fn tenant_of_path(path: &str) -> Option<&str> {
    path.strip_prefix("/t/")?
        .split('/')
        .next()
        .filter(|s| !s.is_empty())
}

fn login_path_for(path: &str) -> String {
    match tenant_of_path(path) {
        Some(t) => format!("/t/{t}/login"),
        None => "/operator/login".into(),
    }
}
