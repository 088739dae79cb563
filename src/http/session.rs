//! Signing in and out (operator and tenant users) and choosing a new password.

use super::extract::{Form, Path};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::i18n::Lang;
use super::layout::{self, alert, csrf_field, field};
use crate::app::AppState;
use crate::auth::password::{password_problem, random_token};
use crate::auth::{
    self, ClientIp, LoginError, LoginOutcome, MaybeSession, Operator, PendingMember,
};
use crate::error::ApiError;

/// The pre-session CSRF token of a visitor who is not signed in: the existing cookie's
/// value, or a new one with the `Set-Cookie` header that stores it.
pub fn pre_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(String, Option<String>), ApiError> {
    if let Some(v) = auth::cookie(headers, state.cookies.pre)
        && v.len() >= 20
    {
        return Ok((v.to_string(), None));
    }
    let token = random_token(24)?;
    let cookie = state.cookies.set(state.cookies.pre, &token, None);
    Ok((token, Some(cookie)))
}

pub fn with_cookie(mut response: Response, cookie: Option<String>) -> Response {
    if let Some(c) = cookie
        && let Ok(v) = HeaderValue::from_str(&c)
    {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.contains("application/json") && !v.contains("text/html"))
        .unwrap_or(false)
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
}

fn login_body(lang: Lang, csrf: &str, problem: Option<&str>) -> Markup {
    html! {
        @if let Some(p) = problem { (alert(p)) }
        form.narrow method="post" {
            (csrf_field(csrf))
            (field("username", lang.t("login.username"), "text", true, "username"))
            (field("password", lang.t("login.password"), "password", true, "current-password"))
            button type="submit" { (lang.t("login.submit")) }
        }
    }
}

fn login_page(
    state: &AppState,
    lang: Lang,
    headers: &HeaderMap,
    title: &str,
    status: StatusCode,
    problem: Option<&str>,
) -> Result<Response, ApiError> {
    let (csrf, cookie) = pre_session(state, headers)?;
    let page = layout::page(lang, title, None, login_body(lang, &csrf, problem));
    Ok(with_cookie((status, page).into_response(), cookie))
}

pub async fn login_form(
    State(state): State<AppState>,
    lang: Lang,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let row = state
        .tenants
        .get(&tenant)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let title = format!("{} · {}", lang.t("login.title"), row.name);
    login_page(&state, lang, &headers, &title, StatusCode::OK, None)
}

fn login_failure(
    state: &AppState,
    lang: Lang,
    headers: &HeaderMap,
    title: &str,
    e: LoginError,
) -> Result<Response, ApiError> {
    let error: ApiError = e.into();
    if wants_json(headers) || error.status.is_server_error() {
        return Err(error);
    }
    let message = if error.code == "too_many_attempts" {
        lang.t("login.wait")
    } else {
        lang.t("login.failed")
    };
    let mut r = login_page(state, lang, headers, title, error.status, Some(message))?;
    if let Some(s) = error.retry_after_secs
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Ok(r)
}

fn login_success(
    state: &AppState,
    headers: &HeaderMap,
    outcome: LoginOutcome,
    html_target: String,
) -> Response {
    let r = if wants_json(headers) {
        axum::Json(serde_json::json!({
            "role": outcome.role,
            "must_change_password": outcome.must_change_password,
            "csrf_token": outcome.csrf,
        }))
        .into_response()
    } else {
        Redirect::to(&html_target).into_response()
    };
    let cookie = state
        .cookies
        .set(state.cookies.session, &outcome.cookie_value, None);
    with_cookie(r, Some(cookie))
}

pub async fn login(
    State(state): State<AppState>,
    lang: Lang,
    ClientIp(ip): ClientIp,
    MaybeSession(previous): MaybeSession,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Form(f): Form<LoginForm>,
) -> Result<Response, ApiError> {
    let row = state
        .tenants
        .get(&tenant)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let title = format!("{} · {}", lang.t("login.title"), row.name);
    match auth::login_member(&state, &tenant, f.username.trim(), &f.password, ip).await {
        Ok(outcome) => {
            let target = if outcome.must_change_password {
                format!("/t/{tenant}/password")
            } else {
                format!("/t/{tenant}/")
            };
            end_previous(&state, previous).await;
            Ok(login_success(&state, &headers, outcome, target))
        }
        Err(e) => login_failure(&state, lang, &headers, &title, e),
    }
}

pub async fn operator_login_form(
    State(state): State<AppState>,
    lang: Lang,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    login_page(
        &state,
        lang,
        &headers,
        lang.t("operator.title"),
        StatusCode::OK,
        None,
    )
}

pub async fn operator_login(
    State(state): State<AppState>,
    lang: Lang,
    ClientIp(ip): ClientIp,
    MaybeSession(previous): MaybeSession,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, ApiError> {
    match auth::login_operator(&state, f.username.trim(), &f.password, ip).await {
        Ok(outcome) => {
            end_previous(&state, previous).await;
            Ok(login_success(&state, &headers, outcome, "/operator".into()))
        }
        Err(e) => login_failure(&state, lang, &headers, lang.t("operator.title"), e),
    }
}

/// Signing in on a browser where someone else is still signed in (a shared classroom PC)
/// ends that earlier session on the server, not only in this browser.
async fn end_previous(state: &AppState, previous: Option<auth::Session>) {
    if let Some(p) = previous
        && let Err(e) = p.end(state).await
    {
        tracing::warn!(error = %e, "could not end the previous session of this browser");
    }
}

fn logged_out(state: &AppState, target: String) -> Response {
    let r = Redirect::to(&target).into_response();
    with_cookie(r, Some(state.cookies.clear(state.cookies.session)))
}

pub async fn logout(
    State(state): State<AppState>,
    member: PendingMember,
) -> Result<Response, ApiError> {
    member.session.end(&state).await?;
    Ok(logged_out(
        &state,
        format!("/t/{}/login", member.tenant.slug),
    ))
}

pub async fn operator_logout(
    State(state): State<AppState>,
    op: Operator,
) -> Result<Response, ApiError> {
    op.session.end(&state).await?;
    Ok(logged_out(&state, "/operator/login".into()))
}

#[derive(serde::Deserialize)]
pub struct PasswordForm {
    /// Required unless the user is replacing a one-time password they just signed in with.
    #[serde(default)]
    current: String,
    password: String,
    confirm: String,
}

fn password_body(lang: Lang, csrf: &str, ask_current: bool, problem: Option<&str>) -> Markup {
    html! {
        @if let Some(p) = problem { (alert(p)) }
        form.narrow method="post" {
            (csrf_field(csrf))
            @if ask_current {
                (field("current", lang.t("password.current"), "password", true, "current-password"))
            }
            (field("password", lang.t("password.new"), "password", true, "new-password"))
            (field("confirm", lang.t("password.confirm"), "password", true, "new-password"))
            p.hint { (lang.t("password.hint")) }
            button type="submit" { (lang.t("password.submit")) }
        }
    }
}

pub async fn password_form(lang: Lang, member: PendingMember) -> Response {
    let ask_current = !member.user.must_change_password;
    layout::page(
        lang,
        lang.t("password.title"),
        None,
        password_body(lang, &member.csrf, ask_current, None),
    )
    .into_response()
}

pub async fn password_submit(
    State(state): State<AppState>,
    lang: Lang,
    member: PendingMember,
    Form(f): Form<PasswordForm>,
) -> Result<Response, ApiError> {
    let ask_current = !member.user.must_change_password;
    let problem = if ask_current
        && !state
            .hasher
            .verify(f.current.clone(), member.user.password_hash.clone())
            .await?
    {
        Some(lang.t("password.wrong_current").to_string())
    } else if f.password != f.confirm {
        Some(lang.t("password.mismatch").to_string())
    } else {
        password_problem(&f.password, &member.user.username)
    };
    if let Some(p) = problem {
        let mut r = (
            StatusCode::BAD_REQUEST,
            layout::page(
                lang,
                lang.t("password.title"),
                None,
                password_body(lang, &member.csrf, ask_current, Some(&p)),
            ),
        )
            .into_response();
        r.extensions_mut()
            .insert(ApiError::bad_request("bad_password_change", p));
        return Ok(r);
    }
    let hash = state.hasher.hash(f.password).await?;
    member.set_password(hash).await?;
    Ok(Redirect::to(&format!("/t/{}/", member.tenant.slug)).into_response())
}
