//! Embedded static assets (rust-embed: the files of `assets/` are inside the binary, in
//! debug builds too), the landing page, the language switch and the CA certificate
//! download that lets school PCs trust the appliance.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use rust_embed::RustEmbed;

use super::extract::{Path, Query};
use super::i18n::Lang;
use super::layout;
use crate::app::AppState;
use crate::auth::{MaybeSession, Principal};
use crate::error::ApiError;

#[cfg(test)]
mod tests {
    #[test]
    fn the_language_switch_returns_only_to_local_paths() {
        for ok in ["/", "/t/demo/", "/t/demo/classes/3", "/operator#tenants"] {
            assert!(super::is_local_path(ok), "{ok}");
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "/%5Cevil.example",
            "/%09/evil.example",
            "https://evil.example",
            "/\t/evil",
            "evil",
            "/a?next=//x",
        ] {
            assert!(!super::is_local_path(bad), "{bad}");
        }
    }
}

#[derive(RustEmbed)]
#[folder = "assets/"]
struct Assets;

pub async fn asset(Path(path): Path<String>) -> Response {
    match Assets::get(&path) {
        Some(file) => {
            let mime = file.metadata.mimetype().to_string();
            let mut r = file.data.into_owned().into_response();
            if let Ok(v) = HeaderValue::from_str(&mime) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            r
        }
        None => ApiError::not_found().into_response(),
    }
}

pub async fn ca_certificate(State(state): State<AppState>) -> Response {
    if state.ca_pem.is_empty() {
        return ApiError::not_found().into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/x-x509-ca-cert"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"ceredis-ca.crt\"",
            ),
        ],
        state.ca_pem.as_str().to_string(),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub struct Next {
    next: Option<String>,
}

pub async fn switch_lang(
    State(state): State<AppState>,
    Path(code): Path<String>,
    Query(q): Query<Next>,
) -> Response {
    let Some(lang) = Lang::parse(&code) else {
        return ApiError::bad_request("unknown_language", "languages: fr, en").into_response();
    };
    let next = q
        .next
        .filter(|n| is_local_path(n))
        .unwrap_or_else(|| "/".into());
    let mut r = Redirect::to(&next).into_response();
    let cookie = format!(
        "lang={}; Path=/; Max-Age=31536000; SameSite=Lax{}",
        lang.code(),
        if state.cookies.secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A path of this site only: never an open redirect (`//host`, `/\\host`, encoded or with
/// control characters, which browsers may read as another host).
fn is_local_path(next: &str) -> bool {
    next.starts_with('/')
        && next.len() < 512
        && next
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.~#".contains(c))
        && !next.starts_with("//")
}

pub async fn landing(
    State(state): State<AppState>,
    lang: Lang,
    MaybeSession(session): MaybeSession,
) -> Result<Response, ApiError> {
    if let Some(s) = session {
        return Ok(match s.principal.as_ref() {
            Principal::Operator { .. } => Redirect::to("/operator").into_response(),
            Principal::Member { slug, .. } => Redirect::to(&format!("/t/{slug}/")).into_response(),
        });
    }
    let tenants: Vec<_> = state
        .tenants
        .list()
        .await?
        .into_iter()
        .filter(|t| t.status == "active")
        .collect();
    let body = html! {
        @if tenants.is_empty() {
            p { (lang.t("landing.none")) }
        } @else {
            ul.cards {
                @for t in &tenants {
                    li { a href={ "/t/" (t.slug) "/login" } { (t.name) } }
                }
            }
        }
        p.small { a href="/operator/login" { (lang.t("landing.operator")) } }
    };
    Ok((
        StatusCode::OK,
        layout::page(lang, lang.t("landing.title"), None, body),
    )
        .into_response())
}
