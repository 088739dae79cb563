//! Users of a tenant: the admin page (users, classes, credentials), the JSON API, and the
//! signed-in user's own profile.

use super::extract::{Form, Json, Path};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::i18n::Lang;
use super::layout::{self, Viewer, csrf_field, field, notice};
use crate::app::AppState;
use crate::auth::{AdminOnly, AnyRole, Gate, Member, ResearcherOnly};
use crate::error::ApiError;
use crate::store::tenant::{self as sql, User, UserFields};
use crate::tenant::{self, Role};

pub fn viewer<'a>(
    lang: Lang,
    user: &'a User,
    slug: &str,
    csrf: &'a str,
    name: &'a str,
) -> Viewer<'a> {
    Viewer {
        name,
        role_label: lang.t(role_key(user.role)),
        logout_action: format!("/t/{slug}/logout"),
        csrf,
    }
}

/// A page for a signed-in member: the layout with their name, role and sign-out button.
pub fn member_page<G: Gate>(lang: Lang, m: &Member<G>, title: &str, body: Markup) -> Response {
    let name = m.user.display_name();
    let v = viewer(lang, &m.user, &m.tenant.slug, &m.csrf, &name);
    layout::page(lang, title, Some(v), body).into_response()
}

pub fn role_key(role: Role) -> &'static str {
    match role {
        Role::Admin => "role.admin",
        Role::Teacher => "role.teacher",
        Role::Student => "role.student",
        Role::Researcher => "role.researcher",
    }
}

#[derive(serde::Serialize)]
pub struct Me {
    tenant: String,
    username: String,
    display_name: String,
    role: Role,
    /// The user's xAPI agent: what content launched for them records statements as.
    xapi_agent: serde_json::Value,
}

pub async fn me(m: Member<AnyRole>) -> Json<Me> {
    Json(Me {
        tenant: m.tenant.slug.clone(),
        display_name: m.user.display_name(),
        xapi_agent: crate::lrs::learner(&m.tenant.home_page, &m.user.agent_name),
        username: m.user.username,
        role: m.user.role,
    })
}

pub async fn list(m: Member<AdminOnly>) -> Result<Json<Vec<User>>, ApiError> {
    Ok(Json(m.tenant.db.read(|c| sql::users(c, None)).await?))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    username: String,
    given_name: String,
    family_name: String,
    role: Role,
    #[serde(default)]
    email: Option<String>,
}

impl NewUser {
    fn fields(self) -> UserFields {
        UserFields {
            sourced_id: None,
            username: self.username.trim().to_string(),
            given_name: self.given_name.trim().to_string(),
            family_name: self.family_name.trim().to_string(),
            email: self.email.filter(|e| !e.trim().is_empty()),
            role: self.role,
            active: true,
        }
    }
}

#[derive(serde::Serialize)]
pub struct WithPassword {
    user: User,
    /// Shown once; the user must replace it at first sign-in.
    one_time_password: String,
}

pub async fn create(
    State(state): State<AppState>,
    m: Member<AdminOnly>,
    Json(u): Json<NewUser>,
) -> Result<(StatusCode, Json<WithPassword>), ApiError> {
    let (user, otp) = tenant::create_user_with_otp(&m.tenant, &state.hasher, u.fields()).await?;
    Ok((
        StatusCode::CREATED,
        Json(WithPassword {
            user,
            one_time_password: otp,
        }),
    ))
}

pub async fn reset(
    State(state): State<AppState>,
    m: Member<AdminOnly>,
    Path((_, user_id)): Path<(String, i64)>,
) -> Result<Json<WithPassword>, ApiError> {
    let (user, otp) = tenant::reset_password(&m.tenant, &state.hasher, user_id).await?;
    Ok(Json(WithPassword {
        user,
        one_time_password: otp,
    }))
}

pub async fn admin_page(lang: Lang, m: Member<AdminOnly>) -> Result<Response, ApiError> {
    render_admin(lang, &m, None).await
}

/// The admin page, optionally with a one-time secret to show once at the top.
pub async fn render_admin(
    lang: Lang,
    m: &Member<AdminOnly>,
    shown_once: Option<Markup>,
) -> Result<Response, ApiError> {
    let (users, classes, creds) = m
        .tenant
        .db
        .read(|c| Ok((sql::users(c, None)?, sql::classes(c)?, sql::credentials(c)?)))
        .await?;
    let slug = &m.tenant.slug;
    let body = html! {
        @if let Some(s) = shown_once { section.card { (s) } }
        nav.sections {
            a href="#users" { (lang.t("admin.users")) } " · "
            a href="#classes" { (lang.t("admin.classes")) } " · "
            a href={ "/t/" (slug) "/admin/roster" } { (lang.t("admin.roster")) } " · "
            a href={ "/t/" (slug) "/admin/apps" } { (lang.t("apps.admin_title")) } " · "
            a href={ "/t/" (slug) "/admin/continuity" } { (lang.t("continuity.title")) } " · "
            a href="#credentials" { (lang.t("admin.credentials")) } " · "
            a href={ "/t/" (slug) "/statements" } { (lang.t("browse.link")) }
        }
        section id="users" {
            h2 { (lang.t("admin.users")) " (" (users.len()) ")" }
            table {
                thead { tr { th { (lang.t("login.username")) } th { (lang.t("setup.family_name")) } th { (lang.t("setup.given_name")) } th { (lang.t("admin.role")) } th { "" } } }
                tbody {
                    @for u in &users {
                        tr {
                            td { code { (u.username) } }
                            td { (u.family_name) }
                            td { (u.given_name) }
                            td { (lang.t(role_key(u.role))) }
                            td {
                                @if u.password_hash.is_none() { span.small { (lang.t("admin.no_password")) } " " }
                                form.inline method="post" action={ "/t/" (slug) "/admin/users/" (u.id) "/password" } {
                                    (csrf_field(&m.csrf))
                                    button type="submit" aria-label={ (lang.t("admin.reset")) " " (u.username) } { (lang.t("admin.reset")) }
                                }
                            }
                        }
                    }
                }
            }
            h3 { (lang.t("admin.add_user")) }
            form method="post" action={ "/t/" (slug) "/admin/users" } {
                (csrf_field(&m.csrf))
                (field("username", lang.t("login.username"), "text", true, "off"))
                (field("given_name", lang.t("setup.given_name"), "text", true, "off"))
                (field("family_name", lang.t("setup.family_name"), "text", true, "off"))
                div.field {
                    label for="role" { (lang.t("admin.role")) }
                    select id="role" name="role" {
                        @for r in Role::ALL { option value=(r.as_str()) selected[r == Role::Student] { (lang.t(role_key(r))) } }
                    }
                }
                button type="submit" { (lang.t("admin.add_user")) }
            }
        }
        section id="classes" {
            h2 { (lang.t("admin.classes")) " (" (classes.len()) ")" }
            ul {
                @for c in &classes {
                    li { a href={ "/t/" (slug) "/classes/" (c.id) } { (c.title) } }
                }
            }
            h3 { (lang.t("admin.add_class")) }
            form method="post" action={ "/t/" (slug) "/admin/classes" } {
                (csrf_field(&m.csrf))
                (field("title", lang.t("admin.title_field"), "text", true, "off"))
                button type="submit" { (lang.t("admin.add_class")) }
            }
            @if !classes.is_empty() && !users.is_empty() {
                h3 { (lang.t("admin.enrol")) }
                form method="post" action={ "/t/" (slug) "/admin/enrolments" } {
                    (csrf_field(&m.csrf))
                    div.field {
                        label for="user_id" { (lang.t("login.username")) }
                        select id="user_id" name="user_id" {
                            @for u in users.iter().filter(|u| matches!(u.role, Role::Teacher | Role::Student)) {
                                option value=(u.id) { (u.username) " — " (u.display_name()) }
                            }
                        }
                    }
                    div.field {
                        label for="class_id" { (lang.t("admin.class")) }
                        select id="class_id" name="class_id" {
                            @for c in &classes { option value=(c.id) { (c.title) } }
                        }
                    }
                    button type="submit" { (lang.t("admin.enrol")) }
                }
            }
        }
        (super::credentials::section(lang, slug, &m.csrf, &creds))
    };
    let name = m.user.display_name();
    let v = viewer(lang, &m.user, slug, &m.csrf, &name);
    Ok(layout::page(
        lang,
        &format!("{} · {}", lang.t("admin.title"), m.tenant.name),
        Some(v),
        body,
    )
    .into_response())
}

#[derive(serde::Deserialize)]
pub struct NewUserForm {
    username: String,
    given_name: String,
    family_name: String,
    role: Role,
}

fn otp_notice(lang: Lang, user: &User, otp: &str) -> Markup {
    html! {
        (notice(lang.t("admin.otp")))
        p { code { (user.username) } " : " code.secret { (otp) } }
    }
}

pub async fn create_form(
    State(state): State<AppState>,
    lang: Lang,
    m: Member<AdminOnly>,
    Form(f): Form<NewUserForm>,
) -> Result<Response, ApiError> {
    let fields = NewUser {
        username: f.username,
        given_name: f.given_name,
        family_name: f.family_name,
        role: f.role,
        email: None,
    }
    .fields();
    let (user, otp) = tenant::create_user_with_otp(&m.tenant, &state.hasher, fields).await?;
    render_admin(lang, &m, Some(otp_notice(lang, &user, &otp))).await
}

pub async fn reset_form(
    State(state): State<AppState>,
    lang: Lang,
    m: Member<AdminOnly>,
    Path((_, user_id)): Path<(String, i64)>,
) -> Result<Response, ApiError> {
    let (user, otp) = tenant::reset_password(&m.tenant, &state.hasher, user_id).await?;
    render_admin(lang, &m, Some(otp_notice(lang, &user, &otp))).await
}

pub async fn research_page(lang: Lang, m: Member<ResearcherOnly>) -> Result<Response, ApiError> {
    let me = m.user.id;
    let projects = m
        .tenant
        .db
        .read(move |c| crate::store::research::projects(c, Some(me)))
        .await?;
    let slug = &m.tenant.slug;
    let body = html! {
        p { (lang.t("researcher.intro")) }
        @if projects.is_empty() { p { (lang.t("researcher.none")) } }
        @for p in &projects {
            section.card {
                h2 { (p.title) }
                p.small { (p.name) " · k = " (p.k) }
                @for (dataset, label) in [("pupils", "researcher.pupils"), ("distribution", "researcher.distribution")] {
                    form.inline method="post" action={ "/t/" (slug) "/research/projects/" (p.id) "/exports" } {
                        input type="hidden" name="_csrf" value=(m.csrf);
                        input type="hidden" name="dataset" value=(dataset);
                        button type="submit" { (lang.t(label)) }
                    }
                    " "
                }
                p.small { (lang.t("researcher.for_r")) " "
                    code { "/t/" (slug) "/api/research/projects/" (p.id) "/export" } }
            }
        }
    };
    Ok(member_page(lang, &m, lang.t("researcher.title"), body))
}
