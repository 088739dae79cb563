//! The one mapping from failures to HTTP: a status, a stable snake_case `code` that clients
//! and tests can rely on, and a message meant for a person. Internal causes are logged once
//! here and never sent to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::password::PasswordError;
use crate::store::StoreError;
use crate::tenant::TenantError;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "nothing here")
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "login_required", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn too_many(retry_after_secs: u64, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after_secs: Some(retry_after_secs.max(1)),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", message)
        }
    }

    /// A failure that is our fault: logged with its cause, answered without it.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "something went wrong on the appliance; the operator can find the details in its log",
        )
    }
}

#[derive(serde::Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(serde::Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(Body {
                error: Inner {
                    code: self.code,
                    message: &self.message,
                },
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after_secs
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        // Lets the HTML layer turn the error into a page for browsers.
        response.extensions_mut().insert(self);
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(message) => ApiError::conflict(message),
            StoreError::NotFound => ApiError::not_found(),
            e if e.is_unique_violation() => ApiError::conflict("this already exists"),
            e => ApiError::internal(e),
        }
    }
}

impl From<TenantError> for ApiError {
    fn from(e: TenantError) -> ApiError {
        match e {
            TenantError::BadSlug(_) => ApiError::bad_request("invalid_tenant_name", e.to_string()),
            TenantError::Unknown(_) => ApiError::not_found(),
            TenantError::Suspended(_) => ApiError::forbidden(
                "tenant_suspended",
                "this school's space is suspended; contact the appliance operator",
            ),
            TenantError::Store(e) => e.into(),
            e @ TenantError::Io { .. } => ApiError::internal(e),
        }
    }
}

impl From<PasswordError> for ApiError {
    fn from(e: PasswordError) -> ApiError {
        ApiError::internal(e)
    }
}
