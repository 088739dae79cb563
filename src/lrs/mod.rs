//! The built-in xAPI learning record store (xAPI 1.0.3 and 2.0.0 / IEEE 9274.1.1), one per
//! tenant at `/t/{tenant}/xapi/`.
//!
//! Owns the rules of the data model and of the resources: statement validation
//! ([`validate`]), what the LRS sets on a statement and how statements are compared and
//! formatted ([`statement`]), statement queries ([`query`]), documents with their
//! concurrency rules ([`document`]), attachments in `multipart/mixed` bodies
//! ([`multipart`]) and signed statements ([`signature`]). The HTTP side (headers, the
//! alternate request syntax, CORS) is `http::xapi`; the SQL is `store::lrs`.
//!
//! Must not: decide who the caller is (that is `auth`), or acknowledge a write before the
//! tenant database's writer has committed it.
//!
//! Key types: [`Version`], [`LrsError`].

pub mod document;
pub mod multipart;
pub mod query;
pub mod signature;
pub mod statement;
pub mod validate;

use std::collections::HashSet;

use axum::http::StatusCode;

use crate::competency::Actor;
use crate::error::ApiError;
use crate::store::StoreError;
use crate::store::lrs::{self as sql, Blob, StatementConflict};
use crate::store::tenant::User;
use crate::tenant::{Role, TenantHandle};
use statement::{Prepared, Storer};

/// The xAPI version a request speaks, from its `X-Experience-API-Version` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// 1.0.0 to 1.0.3 (authoring tools still send `1.0.2`, some send `1.0`).
    V1,
    /// 2.0.0.
    V2,
}

impl Version {
    /// Parses the header value; `None` for a version this LRS does not speak.
    pub fn parse(header: &str) -> Option<Version> {
        let h = header.trim();
        let patch_ok = |rest: &str| {
            rest.is_empty()
                || rest
                    .strip_prefix('.')
                    .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        if let Some(rest) = h.strip_prefix("1.0") {
            return patch_ok(rest).then_some(Version::V1);
        }
        if let Some(rest) = h.strip_prefix("2.0") {
            return patch_ok(rest).then_some(Version::V2);
        }
        None
    }

    /// What the LRS answers in `X-Experience-API-Version`.
    pub fn header(self) -> &'static str {
        match self {
            Version::V1 => "1.0.3",
            Version::V2 => "2.0.0",
        }
    }
}

/// The versions listed by the About resource.
pub const VERSIONS: &[&str] = &["1.0.0", "1.0.1", "1.0.2", "1.0.3", "2.0.0"];

/// What a request to the LRS can fail with, as the xAPI specification names it.
#[derive(Debug, thiserror::Error)]
pub enum LrsError {
    /// 400: a malformed request or statement; the message names the property.
    #[error("{0}")]
    Invalid(String),
    /// 401: no or wrong credentials.
    #[error("send this school's xAPI credentials with HTTP Basic authentication")]
    Unauthenticated,
    /// 403: the credentials lack the scope.
    #[error("{0}")]
    Forbidden(String),
    #[error("no such {0}")]
    NotFound(&'static str),
    /// 409: a statement id already used for other content, or a document write that needs
    /// a precondition header.
    #[error("{0}")]
    Conflict(String),
    /// 412: `If-Match` / `If-None-Match` did not hold.
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("the request body is larger than this LRS accepts ({0} bytes)")]
    TooLarge(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LrsError {
    pub fn invalid(message: impl Into<String>) -> LrsError {
        LrsError::Invalid(message.into())
    }
}

impl From<validate::Invalid> for LrsError {
    fn from(e: validate::Invalid) -> LrsError {
        LrsError::Invalid(e.0)
    }
}

impl From<LrsError> for ApiError {
    fn from(e: LrsError) -> ApiError {
        let message = e.to_string();
        match e {
            LrsError::Invalid(_) => ApiError::bad_request("xapi_invalid", message),
            LrsError::Unauthenticated => {
                ApiError::new(StatusCode::UNAUTHORIZED, "bad_credentials", message)
            }
            LrsError::Forbidden(_) => ApiError::forbidden("xapi_scope", message),
            LrsError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            LrsError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "xapi_conflict", message),
            LrsError::PreconditionFailed(_) => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "xapi_precondition",
                message,
            ),
            LrsError::TooLarge(_) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
            }
            LrsError::Store(e) => e.into(),
        }
    }
}

/// A user's xAPI agent: an account on the tenant's home page, named by the user's opaque
/// agent name (never the username or the real name: statements may leave the appliance).
/// Content launched for a pupil records statements as this agent; the pupil's history and
/// the staff's statement browser read statements about it.
pub fn learner(home_page: &str, agent_name: &str) -> serde_json::Value {
    serde_json::json!({
        "objectType": "Agent",
        "account": {"homePage": home_page, "name": agent_name}
    })
}

/// The index key of [`learner`], with the roles of the `agent` filter (actor or object).
pub fn learner_key(home_page: &str, agent_name: &str) -> (String, i64) {
    let ifi = statement::agent_key(&learner(home_page, agent_name)).unwrap_or_default();
    (statement::agent_index_key(&ifi), statement::mask::AGENT)
}

/// Which statements a reader may see: all of the tenant's, or only those with at least one
/// of these `(index key, mask)`.
#[derive(Debug, Clone)]
pub enum ReadScope {
    All,
    AnyOf(Vec<(String, i64)>),
}

/// What a member of the tenant reads: an admin every statement, a teacher those about the
/// pupils of their classes (and about themselves), a pupil those about themselves, a
/// researcher none (research goes through exports).
pub async fn member_scope(tenant: &TenantHandle, user: &User) -> Result<ReadScope, LrsError> {
    let home = tenant.home_page.clone();
    let own = learner_key(&home, &user.agent_name);
    match user.role {
        Role::Admin => Ok(ReadScope::All),
        Role::Student => Ok(ReadScope::AnyOf(vec![own])),
        Role::Teacher => {
            let teacher = user.id;
            let pupils = tenant
                .db
                .read(move |c| crate::store::tenant::pupils_of(c, teacher))
                .await?;
            let mut keys: Vec<(String, i64)> = pupils
                .iter()
                .map(|p| learner_key(&home, &p.agent_name))
                .collect();
            keys.push(own);
            Ok(ReadScope::AnyOf(keys))
        }
        Role::Researcher => Err(LrsError::Forbidden(
            "researchers read research exports, not statements".into(),
        )),
    }
}

/// Stores prepared statements and their attachments through the tenant's writer; returns
/// once they are durable. A statement id already stored with the same content changes
/// nothing; with other content the whole batch is refused (409).
///
/// In the same transaction, statements about the tenant's pupils on Activities aligned to a
/// competency become evidence, journaled with `actor`
/// (`store::competency::evidence_from_statements`).
pub async fn store(
    tenant: &TenantHandle,
    mut prepared: Vec<Prepared>,
    blobs: Vec<Blob>,
    actor: Actor,
) -> Result<(), LrsError> {
    // Resolve the index keys already known on a reader, off the writer's thread.
    let keys: Vec<String> = prepared
        .iter()
        .flat_map(|p| p.keys.iter().map(|(k, _)| k.as_str()))
        .collect::<HashSet<&str>>()
        .into_iter()
        .map(str::to_string)
        .collect();
    let known = tenant
        .db
        .read(move |c| {
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            sql::known_key_ids(c, &refs)
        })
        .await?;
    for p in &mut prepared {
        p.key_ids = p.keys.iter().map(|(k, _)| known.get(k).copied()).collect();
    }
    let now = now_ms();
    let home = tenant.home_page.clone();
    // The batch comes back out so that it is freed here, not on the writer's thread.
    let (outcome, _batch) = tenant
        .db
        .write_checked(move |c| {
            let outcome = sql::insert_statements(c, &prepared, &blobs, now)?;
            if outcome.is_ok() {
                let values: Vec<&serde_json::Value> = prepared.iter().map(|p| &p.value).collect();
                crate::store::competency::evidence_from_statements(
                    c,
                    &values,
                    &home,
                    &actor,
                    now / 1000,
                )?;
            }
            Ok((outcome, (prepared, blobs)))
        })
        .await?;
    match outcome {
        Ok(_) => Ok(()),
        Err(e @ StatementConflict::Different(_)) => Err(LrsError::Conflict(e.to_string())),
        Err(e @ StatementConflict::VoidingVoided(_)) => Err(LrsError::Invalid(e.to_string())),
    }
}

/// Validates and stores statements recorded by the appliance itself (the demo school's
/// sample activity, later tenant apps), with `storer` as their authority. Returns their ids.
pub async fn record(
    tenant: &TenantHandle,
    statements: Vec<serde_json::Value>,
    storer: &Storer,
    actor: Actor,
) -> Result<Vec<String>, LrsError> {
    for s in &statements {
        validate::statement(s, Version::V2)?;
    }
    let prepared: Vec<Prepared> = statements
        .into_iter()
        .map(|s| statement::prepare(s, storer, Version::V2, statement::new_id))
        .collect();
    let ids = prepared.iter().map(|p| p.id.clone()).collect();
    store(tenant, prepared, Vec::new(), actor).await?;
    Ok(ids)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_headers() {
        for v in ["1.0", "1.0.0", "1.0.2", "1.0.3", "1.0.31"] {
            assert_eq!(Version::parse(v), Some(Version::V1), "{v}");
        }
        assert_eq!(Version::parse("2.0.0"), Some(Version::V2));
        for v in ["", "0.95", "1.1.0", "1.0.", "2.1", "3.0.0", "1.0.x"] {
            assert_eq!(Version::parse(v), None, "{v}");
        }
    }
}
