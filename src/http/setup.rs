//! One-time setup links: the operator's first boot (`/setup/{token}`, printed by
//! `ceredis init`) and a tenant's first admin (`/t/{tenant}/setup/{token}`, shown to the
//! operator when the tenant is created). No default credentials exist anywhere: these links
//! are the only way in, and each works exactly once.

use super::extract::{Form, Path};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::i18n::Lang;
use super::layout::{self, alert, csrf_field, field};
use super::session::{pre_session, with_cookie};
use crate::app::AppState;
use crate::auth::password::{password_problem, sha256};
use crate::auth::{self, OPERATOR_SETUP};
use crate::error::ApiError;
use crate::store::shared::{self, TokenState};
use crate::store::system;
use crate::store::tenant::UserFields;
use crate::tenant::Role;

#[derive(serde::Deserialize)]
pub struct SetupForm {
    username: String,
    #[serde(default)]
    given_name: String,
    #[serde(default)]
    family_name: String,
    password: String,
    confirm: String,
}

fn token_message(lang: Lang, state: TokenState) -> &'static str {
    match state {
        TokenState::Used => lang.t("setup.used"),
        TokenState::Expired => lang.t("setup.expired"),
        _ => lang.t("setup.unknown"),
    }
}

fn form(lang: Lang, csrf: &str, with_names: bool, problem: Option<&str>) -> Markup {
    html! {
        @if let Some(p) = problem { (alert(p)) }
        form method="post" {
            (csrf_field(csrf))
            (field("username", lang.t("login.username"), "text", true, "username"))
            @if with_names {
                (field("given_name", lang.t("setup.given_name"), "text", true, "given-name"))
                (field("family_name", lang.t("setup.family_name"), "text", true, "family-name"))
            }
            (field("password", lang.t("password.new"), "password", true, "new-password"))
            (field("confirm", lang.t("password.confirm"), "password", true, "new-password"))
            p.hint { (lang.t("password.hint")) }
            button type="submit" { (lang.t("setup.submit")) }
        }
    }
}

fn gone(lang: Lang, title: &str, state: TokenState) -> Response {
    let status = match state {
        TokenState::Unknown => StatusCode::NOT_FOUND,
        _ => StatusCode::GONE,
    };
    let mut r = (
        status,
        layout::page(lang, title, None, alert(token_message(lang, state))),
    )
        .into_response();
    r.extensions_mut().insert(ApiError::new(
        status,
        if status == StatusCode::GONE {
            "setup_link_used"
        } else {
            "not_found"
        },
        token_message(Lang::En, state),
    ));
    r
}

fn check_new_password(lang: Lang, f: &SetupForm) -> Option<String> {
    if f.password != f.confirm {
        return Some(lang.t("password.mismatch").to_string());
    }
    if f.username.trim().is_empty() || f.username.len() > 64 {
        return Some("user name: 1 to 64 characters".into());
    }
    password_problem(&f.password, &f.username)
}

pub async fn operator_form(
    State(state): State<AppState>,
    lang: Lang,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let hash = sha256(token.as_bytes());
    let token_state = state
        .system
        .read(move |c| shared::setup_token_state(c, &hash, OPERATOR_SETUP))
        .await?;
    if token_state != TokenState::Valid {
        return Ok(gone(lang, lang.t("setup.title"), token_state));
    }
    let (csrf, cookie) = pre_session(&state, &headers)?;
    let body = html! { p { (lang.t("setup.intro")) } (form(lang, &csrf, false, None)) };
    Ok(with_cookie(
        layout::page(lang, lang.t("setup.title"), None, body).into_response(),
        cookie,
    ))
}

pub async fn operator_submit(
    State(state): State<AppState>,
    lang: Lang,
    headers: HeaderMap,
    Path(token): Path<String>,
    Form(f): Form<SetupForm>,
) -> Result<Response, ApiError> {
    let hash = sha256(token.as_bytes());
    let lookup = hash.clone();
    let token_state = state
        .system
        .read(move |c| shared::setup_token_state(c, &lookup, OPERATOR_SETUP))
        .await?;
    if token_state != TokenState::Valid {
        return Ok(gone(lang, lang.t("setup.title"), token_state));
    }
    if let Some(problem) = check_new_password(lang, &f) {
        let (csrf, cookie) = pre_session(&state, &headers)?;
        let body = form(lang, &csrf, false, Some(&problem));
        let mut r = (
            StatusCode::BAD_REQUEST,
            layout::page(lang, lang.t("setup.title"), None, body),
        )
            .into_response();
        r.extensions_mut()
            .insert(ApiError::bad_request("weak_password", problem));
        return Ok(with_cookie(r, cookie));
    }
    let password_hash = state.hasher.hash(f.password.clone()).await?;
    let username = f.username.trim().to_string();
    let created = state
        .system
        .write(move |c| {
            let s = shared::consume_setup_token(c, &hash, OPERATOR_SETUP)?;
            if s != TokenState::Valid {
                return Ok(Err(s));
            }
            Ok(Ok(system::insert_operator(c, &username, &password_hash)?))
        })
        .await?;
    let operator_id = match created {
        Ok(id) => id,
        Err(s) => return Ok(gone(lang, lang.t("setup.title"), s)),
    };
    tracing::info!(operator = %f.username.trim(), "operator account created from the setup link");
    let (cookie, _) = auth::start_session(
        &state,
        &state.system,
        operator_id,
        auth::operator_cookie_value,
    )
    .await?;
    let mut r = Redirect::to("/operator").into_response();
    if let Ok(v) = state
        .cookies
        .set(state.cookies.session, &cookie, None)
        .parse()
    {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

pub async fn tenant_form(
    State(state): State<AppState>,
    lang: Lang,
    headers: HeaderMap,
    Path((tenant, token)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let token_state = auth::tenant_setup_state(&state, &tenant, &token).await?;
    if token_state != TokenState::Valid {
        return Ok(gone(lang, lang.t("setup.tenant_title"), token_state));
    }
    let (csrf, cookie) = pre_session(&state, &headers)?;
    let body = html! { p { (lang.t("setup.tenant_intro")) } (form(lang, &csrf, true, None)) };
    Ok(with_cookie(
        layout::page(lang, lang.t("setup.tenant_title"), None, body).into_response(),
        cookie,
    ))
}

pub async fn tenant_submit(
    State(state): State<AppState>,
    lang: Lang,
    headers: HeaderMap,
    Path((tenant, token)): Path<(String, String)>,
    Form(f): Form<SetupForm>,
) -> Result<Response, ApiError> {
    let token_state = auth::tenant_setup_state(&state, &tenant, &token).await?;
    if token_state != TokenState::Valid {
        return Ok(gone(lang, lang.t("setup.tenant_title"), token_state));
    }
    let problem = check_new_password(lang, &f).or_else(|| {
        (f.given_name.trim().is_empty() || f.family_name.trim().is_empty())
            .then(|| "given name and family name are required".to_string())
    });
    if let Some(problem) = problem {
        let (csrf, cookie) = pre_session(&state, &headers)?;
        let body = form(lang, &csrf, true, Some(&problem));
        let mut r = (
            StatusCode::BAD_REQUEST,
            layout::page(lang, lang.t("setup.tenant_title"), None, body),
        )
            .into_response();
        r.extensions_mut()
            .insert(ApiError::bad_request("weak_password", problem));
        return Ok(with_cookie(r, cookie));
    }
    let password_hash = state.hasher.hash(f.password.clone()).await?;
    let fields = UserFields {
        sourced_id: None,
        username: f.username.trim().to_string(),
        given_name: f.given_name.trim().to_string(),
        family_name: f.family_name.trim().to_string(),
        email: None,
        role: Role::Admin,
        active: true,
    };
    match auth::complete_tenant_setup(&state, &tenant, &token, fields, password_hash).await? {
        Ok(cookie) => {
            let mut r = Redirect::to(&format!("/t/{tenant}/admin")).into_response();
            if let Ok(v) = state
                .cookies
                .set(state.cookies.session, &cookie, None)
                .parse()
            {
                r.headers_mut().append(header::SET_COOKIE, v);
            }
            Ok(r)
        }
        Err(s) => Ok(gone(lang, lang.t("setup.tenant_title"), s)),
    }
}
