//! Machine credentials of a tenant (for xAPI clients, later sync): created by the tenant
//! admin with named scopes, shown once, stored as a SHA-256 digest, revocable.

use super::extract::{Json, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::i18n::Lang;
use super::layout::{csrf_field, field, notice};
use super::users::render_admin;
use crate::auth::{AdminOnly, ApiClient, Member, SCOPES};
use crate::error::ApiError;
use crate::store::tenant::{self as sql, Credential};
use crate::tenant::CreatedCredential;

pub fn section(lang: Lang, slug: &str, csrf: &str, creds: &[Credential]) -> Markup {
    html! {
        section id="credentials" {
            h2 { (lang.t("admin.credentials")) }
            p.small { (lang.t("cred.endpoint")) " " code { "/t/" (slug) "/xapi/" } " — HTTP Basic (key id : secret), X-Experience-API-Version 1.0.3 / 2.0.0" }
            table {
                tbody {
                    @for c in creds {
                        tr {
                            td { code { (c.key_id) } }
                            td { (c.label) }
                            td { (c.scopes.join(" ")) }
                            td {
                                @if c.revoked_at.is_some() { (lang.t("cred.revoked")) } @else {
                                    form.inline method="post" action={ "/t/" (slug) "/admin/credentials/" (c.key_id) "/revoke" } {
                                        (csrf_field(csrf))
                                        button type="submit" { (lang.t("cred.revoke")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form method="post" action={ "/t/" (slug) "/admin/credentials" } {
                (csrf_field(csrf))
                (field("label", lang.t("cred.label"), "text", true, "off"))
                fieldset {
                    legend { (lang.t("cred.scopes")) }
                    @for s in SCOPES {
                        label.check { input type="checkbox" name="scope" value=(s); " " code { (s) } }
                    }
                }
                button type="submit" { (lang.t("cred.create")) }
            }
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCredential {
    label: String,
    scopes: Vec<String>,
}

async fn create_credential(
    m: &Member<AdminOnly>,
    label: String,
    scopes: Vec<String>,
) -> Result<CreatedCredential, ApiError> {
    crate::tenant::create_credential(&m.tenant, label, scopes, Some(m.user.id)).await
}

pub async fn list(m: Member<AdminOnly>) -> Result<Json<Vec<Credential>>, ApiError> {
    Ok(Json(m.tenant.db.read(sql::credentials).await?))
}

pub async fn create(
    m: Member<AdminOnly>,
    Json(n): Json<NewCredential>,
) -> Result<(StatusCode, Json<CreatedCredential>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(create_credential(&m, n.label, n.scopes).await?),
    ))
}

pub async fn revoke(
    m: Member<AdminOnly>,
    Path((_, key_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    m.tenant
        .db
        .write(move |c| sql::revoke_credential(c, &key_id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn create_form(
    lang: Lang,
    m: Member<AdminOnly>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // Repeated `scope` fields: parse the pairs, not a struct.
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::bad_request("invalid_form", e.to_string()))?;
    let label = pairs
        .iter()
        .find(|(k, _)| k == "label")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let scopes = pairs
        .into_iter()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v)
        .collect();
    let created = create_credential(&m, label, scopes).await?;
    let shown = html! {
        (notice(lang.t("cred.secret")))
        p { code { (created.key_id) } " : " code.secret { (created.secret) } }
    };
    render_admin(lang, &m, Some(shown)).await
}

pub async fn revoke_form(
    m: Member<AdminOnly>,
    Path((_, key_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let slug = m.tenant.slug.clone();
    m.tenant
        .db
        .write(move |c| sql::revoke_credential(c, &key_id))
        .await?;
    Ok(Redirect::to(&format!("/t/{slug}/admin#credentials")).into_response())
}

#[derive(serde::Serialize)]
pub struct ClientView {
    tenant: String,
    key_id: String,
    label: String,
    scopes: Vec<String>,
}

/// What a machine client's credentials are: lets an integrator check them.
pub async fn whoami(client: ApiClient) -> Json<ClientView> {
    Json(ClientView {
        tenant: client.tenant.slug,
        key_id: client.key_id,
        label: client.label,
        scopes: client.scopes,
    })
}
