//! The tenant admin's page of the school's continuity copy at the federation hub: what it
//! is, whether it is on, its last push and last error in plain words, and the button that
//! turns it on and shows the recovery key, once; and the school's policy on what the
//! federation publishes (`GET`/`PUT /t/{tenant}/api/federation/policy`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{Markup, html};

use super::i18n::Lang;
use super::layout::{self, alert};
use super::users::viewer;
use crate::app::AppState;
use crate::auth::{AdminOnly, Member};
use crate::error::ApiError;
use crate::federation::continuity;

/// `GET /t/{tenant}/admin/continuity`.
pub async fn page(
    State(state): State<AppState>,
    lang: Lang,
    m: Member<AdminOnly>,
) -> Result<Response, ApiError> {
    render(&state, lang, &m, None).await
}

/// `POST /t/{tenant}/admin/continuity`: turns the copy on; the recovery key is shown once.
pub async fn enable(
    State(state): State<AppState>,
    lang: Lang,
    m: Member<AdminOnly>,
) -> Result<Response, ApiError> {
    let shown = match continuity::enable(&state.system, &m.tenant.slug).await {
        Ok(key) => html! {
            section.card.secret {
                h2 { (lang.t("continuity.key_title")) }
                p { (lang.t("continuity.key_help")) }
                p { code.secret { (key.to_string()) } }
            }
        },
        Err(continuity::ContinuityError::AlreadyEnabled(_)) => alert(lang.t("continuity.already")),
        Err(e) => return Err(ApiError::internal(e)),
    };
    render(&state, lang, &m, Some(shown)).await
}

async fn render(
    state: &AppState,
    lang: Lang,
    m: &Member<AdminOnly>,
    shown_once: Option<Markup>,
) -> Result<Response, ApiError> {
    let slug = m.tenant.slug.clone();
    let (joined, copy) = {
        let slug = slug.clone();
        state
            .system
            .read(move |c| {
                Ok((
                    crate::store::federation::membership(c)?.is_some(),
                    continuity::state(c, &slug)?,
                ))
            })
            .await?
    };
    let when = |t: Option<i64>| {
        t.map_or_else(
            || lang.t("federation.never").to_string(),
            |t| crate::lrs::statement::format_millis(t * 1000),
        )
    };
    let body = html! {
        @if let Some(s) = shown_once { (s) }
        nav.sections { a href={ "/t/" (slug) "/admin" } { (lang.t("admin.title")) } }
        section.card {
            p { (lang.t("continuity.what")) }
            @if !joined { p.small { (lang.t("continuity.not_joined")) } }
            @match &copy {
                None => {
                    form method="post" action={ "/t/" (slug) "/admin/continuity" } {
                        input type="hidden" name="_csrf" value=(m.csrf);
                        button type="submit" { (lang.t("continuity.enable")) }
                    }
                }
                Some(c) => {
                    dl.continuity {
                        dt { (lang.t("federation.generation")) } dd { (c.committed) }
                        dt { (lang.t("federation.last_success")) } dd { (when(c.committed_at)) }
                        @if let Some(t) = state.sync_board.transfer(&slug) {
                            dt { (lang.t("federation.transfer")) } dd { (t) }
                        }
                        @if let Some(e) = &c.last_error {
                            dt { (lang.t("federation.last_error")) } dd.bad { (when(c.last_error_at)) " — " (e) }
                        }
                    }
                }
            }
        }
    };
    let name = m.user.display_name();
    let v = viewer(lang, &m.user, &slug, &m.csrf, &name);
    Ok(layout::page(lang, lang.t("continuity.title"), Some(v), body).into_response())
}

/// What the school takes from the federation and gives it.
#[derive(Debug, serde::Serialize)]
pub struct Policy {
    /// Adopt every competency framework the federation publishes.
    adopt_frameworks: bool,
    /// Publish the school's pseudonymised aggregates (pupils per CEFR level per skill,
    /// counts under 5 suppressed).
    publish_aggregates: bool,
}

/// A change of the policy: what is absent stays.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    adopt_frameworks: Option<bool>,
    publish_aggregates: Option<bool>,
}

async fn current(m: &Member<AdminOnly>) -> Result<Policy, ApiError> {
    Ok(Policy {
        adopt_frameworks: crate::federation::publications::adopts(&m.tenant).await?,
        publish_aggregates: crate::federation::aggregates::publishes(&m.tenant).await?,
    })
}

/// `GET /t/{tenant}/api/federation/policy`.
pub async fn policy(m: Member<AdminOnly>) -> Result<super::extract::Json<Policy>, ApiError> {
    Ok(super::extract::Json(current(&m).await?))
}

/// `PUT /t/{tenant}/api/federation/policy`: the school admin's choice; frameworks are
/// adopted, and aggregates published, at the next sync.
pub async fn set_policy(
    m: Member<AdminOnly>,
    super::extract::Json(p): super::extract::Json<PolicyChange>,
) -> Result<super::extract::Json<Policy>, ApiError> {
    for (key, value) in [
        (
            crate::federation::publications::ADOPT_SETTING,
            p.adopt_frameworks,
        ),
        (
            crate::federation::aggregates::PUBLISH_SETTING,
            p.publish_aggregates,
        ),
    ] {
        if let Some(on) = value {
            crate::federation::publications::set_flag(&m.tenant, key, on).await?;
        }
    }
    Ok(super::extract::Json(current(&m).await?))
}
