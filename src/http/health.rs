//! Liveness (`/healthz`: the process answers), readiness (`/readyz`: databases reachable
//! and start-up finished) and Prometheus metrics (`/metrics`).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::auth::ClientIp;
use crate::error::ApiError;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    if !state.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "reason": "starting"})),
        )
            .into_response();
    }
    match state.system.read(crate::store::system::site).await {
        Ok(_) => Json(serde_json::json!({"ready": true})).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"ready": false, "reason": "system database unavailable"})),
            )
                .into_response()
        }
    }
}

/// Metrics name routes and tenants and count their activity: only loopback clients, or a
/// scraper presenting `metrics_token`, may read them.
pub async fn metrics(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
) -> Response {
    let token = state.config.metrics_token.expose();
    let allowed = if token.is_empty() {
        ip.is_loopback()
    } else {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|presented| bool::from(presented.as_bytes().ct_eq(token.as_bytes())))
            .unwrap_or(false)
    };
    if !allowed {
        return ApiError::forbidden(
            "metrics_forbidden",
            "metrics are readable from this machine only, or with the configured metrics token",
        )
        .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
