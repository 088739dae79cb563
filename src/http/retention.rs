//! The tenant's retention windows (tenant admins): read them with what a run would delete
//! now, set them, and run them — or dry-run them, which changes nothing.

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::Json;
use crate::auth::{AdminOnly, Member};
use crate::competency::Actor;
use crate::error::ApiError;
use crate::store::now;
use crate::store::retention::{self as sql, Policy};

/// The windows and what a run would delete now.
pub async fn show(m: Member<AdminOnly>) -> Result<Json<Value>, ApiError> {
    let by = Actor::User(m.user.id);
    let at = now();
    let preview = m
        .tenant
        .db
        .read(move |c| sql::run(c, true, &by, at))
        .await?;
    Ok(Json(preview))
}

/// Sets the windows, in days (`null` keeps records for good; at least 30 days otherwise).
pub async fn set(m: Member<AdminOnly>, Json(p): Json<Policy>) -> Result<Json<Value>, ApiError> {
    for (name, d) in [
        ("statements_days", p.statements_days),
        ("evidence_days", p.evidence_days),
    ] {
        if d.is_some_and(|d| !(30..=36_500).contains(&d)) {
            return Err(ApiError::bad_request(
                "invalid_retention",
                format!("{name}: between 30 and 36500 days, or null to keep for good"),
            ));
        }
    }
    m.tenant.db.write(move |c| sql::set_policy(c, &p)).await?;
    Ok(Json(json!({"policy": p})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    dry_run: bool,
}

/// Runs the windows now (or dry-runs them). The run is journaled.
pub async fn run(
    m: Member<AdminOnly>,
    Json(r): Json<RunRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let by = Actor::User(m.user.id);
    let at = now();
    let dry_run = r.dry_run;
    let report = if dry_run {
        m.tenant
            .db
            .read(move |c| sql::run(c, true, &by, at))
            .await?
    } else {
        m.tenant
            .db
            .write(move |c| sql::run(c, false, &by, at))
            .await?
    };
    Ok((StatusCode::OK, Json(report)))
}
