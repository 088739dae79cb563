//! Authentication and access control.
//!
//! Owns sessions (secure cookies whose SHA-256 is stored in the database of their realm:
//! the system database for the operator, the tenant database for tenant users), CSRF
//! checks on every state-changing request, login throttling, argon2id password hashing and
//! machine credentials (HTTP Basic, checked by a constant-time comparison of SHA-256
//! digests — never argon2, which would cap machine clients at a few dozen requests/s).
//!
//! Access control is a type: a handler that needs tenant data takes [`Member<G>`] (a
//! signed-in user of the tenant in the path whose role passes the gate `G`) or
//! [`ApiClient`]; both carry the only [`crate::tenant::TenantHandle`] a handler can get.
//! The operator's [`Operator`] extractor carries no tenant handle at all: the operator
//! cannot read tenant data. Outcomes: no session → 401; a user of another tenant → 404
//! (the tenant's existence is not revealed); the operator on tenant data → 403; a role
//! outside the gate → 403.
//!
//! Key types: [`Session`], [`Member`], [`Operator`], [`ApiClient`], [`Gate`], [`Authorized`].

pub mod password;
pub mod throttle;

use std::marker::PhantomData;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::error::ApiError;
use crate::store::shared;
use crate::store::system;
use crate::store::tenant::{self as tenant_sql, User};
use crate::tenant::{Role, TenantHandle};

/// Proof that an access check passed. Only this module (and the local console, which acts
/// for the tenant admin on the appliance itself) can make one; `Tenants::handle` wants it.
#[derive(Debug)]
pub struct Authorized(());

impl Authorized {
    /// The local console (`ceredis user add|import`), run by someone with root on the
    /// appliance acting for a tenant admin.
    pub(crate) fn console() -> Authorized {
        Authorized(())
    }
}

/// Who a session belongs to.
#[derive(Debug, Clone)]
pub enum Principal {
    Operator { id: i64, username: String },
    Member { slug: String, user: User },
}

/// A valid session, resolved once per request by [`session_layer`].
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Arc<Principal>,
    pub csrf: String,
    token_hash: Vec<u8>,
}

/// Cookie names: `__Host-` (Secure, Path=/, no Domain) over HTTPS; plain names in
/// `--insecure-http` development mode, where browsers would drop `__Host-` cookies.
#[derive(Debug, Clone, Copy)]
pub struct CookieNames {
    pub session: &'static str,
    pub pre: &'static str,
    pub secure: bool,
}

pub fn cookie_names(insecure_http: bool) -> CookieNames {
    if insecure_http {
        CookieNames {
            session: "ceredis-session",
            pre: "ceredis-pre",
            secure: false,
        }
    } else {
        CookieNames {
            session: "__Host-ceredis-session",
            pre: "__Host-ceredis-pre",
            secure: true,
        }
    }
}

impl CookieNames {
    pub fn set(&self, name: &str, value: &str, max_age_secs: Option<i64>) -> String {
        let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
        if self.secure {
            c.push_str("; Secure");
        }
        if let Some(age) = max_age_secs {
            c.push_str(&format!("; Max-Age={age}"));
        }
        c
    }

    pub fn clear(&self, name: &str) -> String {
        self.set(name, "", Some(0))
    }
}

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The realm a session cookie belongs to: `op.<token>` or `t.<slug>.<token>`.
enum Realm<'a> {
    Operator(&'a str),
    Tenant(&'a str, &'a str),
}

fn parse_session_cookie(value: &str) -> Option<Realm<'_>> {
    if let Some(token) = value.strip_prefix("op.") {
        return Some(Realm::Operator(token));
    }
    let rest = value.strip_prefix("t.")?;
    let (slug, token) = rest.split_once('.')?;
    Some(Realm::Tenant(slug, token))
}

pub fn operator_cookie_value(token: &str) -> String {
    format!("op.{token}")
}

pub fn tenant_cookie_value(slug: &str, token: &str) -> String {
    format!("t.{slug}.{token}")
}

async fn resolve_session(state: &AppState, value: &str) -> Result<Option<Session>, ApiError> {
    let Some(realm) = parse_session_cookie(value) else {
        return Ok(None);
    };
    match realm {
        Realm::Operator(token) => {
            let hash = password::sha256(token.as_bytes());
            let lookup = hash.clone();
            let found = state
                .system
                .read(move |c| {
                    let Some(s) = shared::find_session(c, &lookup)? else {
                        return Ok(None);
                    };
                    Ok(system::operator_by_id(c, s.principal_id)?.map(|op| (s, op)))
                })
                .await?;
            Ok(found.map(|(s, op)| Session {
                principal: Arc::new(Principal::Operator {
                    id: op.id,
                    username: op.username,
                }),
                csrf: s.csrf,
                token_hash: hash,
            }))
        }
        Realm::Tenant(slug, token) => {
            if crate::tenant::validate_slug(slug).is_err() {
                return Ok(None);
            }
            // Looking a session up is itself the access check for this realm.
            let handle = match state.tenants.handle(slug, &Authorized(())).await {
                Ok(h) => h,
                Err(_) => return Ok(None),
            };
            let hash = password::sha256(token.as_bytes());
            let lookup = hash.clone();
            let found = handle
                .db
                .read(move |c| {
                    let Some(s) = shared::find_session(c, &lookup)? else {
                        return Ok(None);
                    };
                    Ok(tenant_sql::user_by_id(c, s.principal_id)?
                        .filter(|u| u.active)
                        .map(|u| (s, u)))
                })
                .await?;
            Ok(found.map(|(s, user)| Session {
                principal: Arc::new(Principal::Member {
                    slug: handle.slug.clone(),
                    user,
                }),
                csrf: s.csrf,
                token_hash: hash,
            }))
        }
    }
}

impl Session {
    /// Ends this session (logout).
    pub async fn end(&self, state: &AppState) -> Result<(), ApiError> {
        let hash = self.token_hash.clone();
        match self.principal.as_ref() {
            Principal::Operator { .. } => {
                state
                    .system
                    .write(move |c| shared::delete_session(c, &hash))
                    .await?
            }
            Principal::Member { slug, .. } => {
                let handle = state.tenants.handle(slug, &Authorized(())).await?;
                handle
                    .db
                    .write(move |c| shared::delete_session(c, &hash))
                    .await?
            }
        }
        Ok(())
    }
}

/// Starts a session for a principal in a realm's database and returns the cookie value.
pub async fn start_session(
    state: &AppState,
    db: &crate::store::Database,
    principal_id: i64,
    cookie_value: impl FnOnce(&str) -> String,
) -> Result<(String, String), ApiError> {
    let token = password::random_token(32)?;
    let csrf = password::random_token(24)?;
    let hash = password::sha256(token.as_bytes());
    let ttl = i64::from(state.config.auth.session_hours) * 3600;
    let stored = csrf.clone();
    db.write(move |c| shared::insert_session(c, &hash, principal_id, &stored, ttl))
        .await?;
    Ok((cookie_value(&token), csrf))
}

/// Paths of a tenant's xAPI endpoint (`/t/{tenant}/xapi/…`).
fn is_lrs_path(path: &str) -> bool {
    path.strip_prefix("/t/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, rest)| rest.starts_with("xapi/"))
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The host the client addressed: over HTTP/2 it comes in the `:authority` pseudo-header
/// (the request URI), over HTTP/1.1 in `Host`.
pub fn request_host<'a>(uri: &'a axum::http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))
}

/// Whether the `Origin` header (when sent) names this server.
fn same_origin(request: &Request) -> bool {
    let headers = request.headers();
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // Old browsers send no Origin; the token check still applies.
    };
    let host = request_host(request.uri(), headers).unwrap_or_default();
    origin
        .split_once("://")
        .map(|(_, rest)| rest.eq_ignore_ascii_case(host))
        .unwrap_or(false)
}

/// Resolves the session cookie once per request and enforces CSRF on every request that
/// changes state: the token must come in `X-CSRF-Token`, in an urlencoded form field
/// `_csrf`, or (multipart uploads only) in the `_csrf` query parameter, and equal the
/// session's token (or, before login, the pre-session cookie). Requests that carry an
/// `Authorization` header and no session cookie are machine clients: they cannot be forged
/// by a browser, and are exempt.
pub async fn session_layer(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match check_request(&state, request).await {
        Ok(request) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn check_request(state: &AppState, mut request: Request) -> Result<Request, ApiError> {
    let names = state.cookies;
    let session = match cookie(request.headers(), names.session) {
        Some(value) => resolve_session(state, value).await?,
        None => None,
    };
    if !is_safe(request.method()) {
        let has_cookie = cookie(request.headers(), names.session).is_some()
            || cookie(request.headers(), names.pre).is_some();
        // No ambient credentials: an `Authorization` header (a browser never adds one to a
        // forged request), or the LRS, whose alternate request syntax carries the
        // credentials in the form body.
        let machine = (request.headers().contains_key(header::AUTHORIZATION)
            || is_lrs_path(request.uri().path()))
            && !has_cookie;
        if !machine {
            if !same_origin(&request) {
                return Err(ApiError::forbidden(
                    "cross_origin",
                    "this request came from another site and was refused",
                ));
            }
            // The session's token, or the pre-session cookie's (double submit): a login or
            // setup form shown before a session existed stays valid on a shared PC where
            // someone is still signed in. Both are HttpOnly `__Host-` cookies that another
            // site can neither read nor set.
            let expected: Vec<String> = session
                .iter()
                .map(|s| s.csrf.clone())
                .chain(cookie(request.headers(), names.pre).map(str::to_string))
                .collect();
            let (provided, rebuilt) = provided_csrf(request, state).await?;
            request = rebuilt;
            let ok = provided.is_some_and(|p| {
                expected
                    .iter()
                    .any(|e| bool::from(e.as_bytes().ct_eq(p.as_bytes())))
            });
            if !ok {
                return Err(ApiError::forbidden(
                    "csrf_failed",
                    "the form has expired or did not come from this site; reload the page and try again",
                ));
            }
        }
    }
    if let Some(s) = session {
        request.extensions_mut().insert(s);
    }
    Ok(request)
}

async fn provided_csrf(
    request: Request,
    state: &AppState,
) -> Result<(Option<String>, Request), ApiError> {
    if let Some(v) = request
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
    {
        let v = v.to_string();
        return Ok((Some(v), request));
    }
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let token = request.uri().query().and_then(|q| {
            form_urlencoded_pairs(q.as_bytes())
                .into_iter()
                .find(|(k, _)| k == "_csrf")
                .map(|(_, v)| v)
        });
        return Ok((token, request));
    }
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let (parts, body) = request.into_parts();
        let bytes: Bytes = axum::body::to_bytes(body, state.config.limits.max_body_bytes)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the form is larger than this appliance accepts",
                )
            })?;
        let token = form_urlencoded_pairs(&bytes)
            .into_iter()
            .find(|(k, _)| k == "_csrf")
            .map(|(_, v)| v);
        return Ok((token, Request::from_parts(parts, Body::from(bytes))));
    }
    Ok((None, request))
}

fn form_urlencoded_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes).unwrap_or_default()
}

/// Which tenant roles may pass. Implemented by zero-sized marker types.
pub trait Gate: Send + Sync + 'static {
    const ROLES: &'static [Role];
}

/// Every role of the tenant.
#[derive(Debug)]
pub struct AnyRole;
/// Tenant admins and teachers.
#[derive(Debug)]
pub struct Staff;
/// Tenant admins only.
#[derive(Debug)]
pub struct AdminOnly;
/// Teachers only (their own classes).
#[derive(Debug)]
pub struct TeacherOnly;
/// Students only.
#[derive(Debug)]
pub struct StudentOnly;
/// Researchers only.
#[derive(Debug)]
pub struct ResearcherOnly;

impl Gate for AnyRole {
    const ROLES: &'static [Role] = &Role::ALL;
}
impl Gate for Staff {
    const ROLES: &'static [Role] = &[Role::Admin, Role::Teacher];
}
impl Gate for AdminOnly {
    const ROLES: &'static [Role] = &[Role::Admin];
}
impl Gate for TeacherOnly {
    const ROLES: &'static [Role] = &[Role::Teacher];
}
impl Gate for StudentOnly {
    const ROLES: &'static [Role] = &[Role::Student];
}
impl Gate for ResearcherOnly {
    const ROLES: &'static [Role] = &[Role::Researcher];
}

/// A signed-in user of the tenant named in the path, whose role passes `G`.
#[derive(Debug)]
pub struct Member<G: Gate> {
    pub tenant: TenantHandle,
    pub user: User,
    pub csrf: String,
    gate: PhantomData<G>,
}

/// Like [`Member<AnyRole>`], but also admits a user who must still replace a one-time
/// password: only the password page takes it.
#[derive(Debug)]
pub struct PendingMember {
    pub tenant: TenantHandle,
    pub user: User,
    pub csrf: String,
    pub session: Session,
}

fn path_tenant(params: &RawPathParams) -> Option<String> {
    params
        .iter()
        .find(|(k, _)| *k == "tenant")
        .map(|(_, v)| v.to_string())
}

async fn member_parts(
    parts: &mut Parts,
    state: &AppState,
    roles: &[Role],
) -> Result<(TenantHandle, User, Session), ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| ApiError::not_found())?;
    let slug = path_tenant(&params).ok_or_else(ApiError::not_found)?;
    let session = parts
        .extensions
        .get::<Session>()
        .cloned()
        .ok_or_else(|| ApiError::unauthorized("sign in to continue"))?;
    let user = match session.principal.as_ref() {
        Principal::Operator { .. } => {
            return Err(ApiError::forbidden(
                "operator_no_tenant_data",
                "the appliance operator cannot read a school's data",
            ));
        }
        Principal::Member { slug: s, user } if *s == slug => user.clone(),
        Principal::Member { .. } => return Err(ApiError::not_found()),
    };
    if !roles.contains(&user.role) {
        return Err(ApiError::forbidden(
            "role_forbidden",
            "your role does not give access to this page",
        ));
    }
    let tenant = state.tenants.handle(&slug, &Authorized(())).await?;
    Ok((tenant, user, session))
}

impl<G: Gate> FromRequestParts<AppState> for Member<G> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (tenant, user, session) = member_parts(parts, state, G::ROLES).await?;
        if user.must_change_password {
            return Err(ApiError::forbidden(
                "password_change_required",
                "choose a new password before continuing",
            ));
        }
        Ok(Member {
            tenant,
            user,
            csrf: session.csrf,
            gate: PhantomData,
        })
    }
}

impl FromRequestParts<AppState> for PendingMember {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (tenant, user, session) = member_parts(parts, state, &Role::ALL).await?;
        Ok(PendingMember {
            tenant,
            user,
            csrf: session.csrf.clone(),
            session,
        })
    }
}

/// The signed-in appliance operator. Carries no tenant handle.
#[derive(Debug)]
pub struct Operator {
    pub id: i64,
    pub username: String,
    pub csrf: String,
    pub session: Session,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        let session = parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("sign in as the operator to continue"))?;
        match session.principal.as_ref() {
            Principal::Operator { id, username } => Ok(Operator {
                id: *id,
                username: username.clone(),
                csrf: session.csrf.clone(),
                session: session.clone(),
            }),
            Principal::Member { .. } => Err(ApiError::forbidden(
                "operator_only",
                "only the appliance operator can do this",
            )),
        }
    }
}

/// The session of whoever is signed in, if anyone (for pages that adapt to it).
#[derive(Debug)]
pub struct MaybeSession(pub Option<Session>);

impl FromRequestParts<AppState> for MaybeSession {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(MaybeSession(parts.extensions.get::<Session>().cloned()))
    }
}

/// Scopes a machine credential may hold (the xAPI scopes of the LRS).
pub const SCOPES: &[&str] = &[
    "statements/write",
    "statements/read",
    "statements/read/mine",
    "state",
    "define",
    "profile",
    "analytics/read",
    "all/read",
    "all",
];

/// A machine client authenticated with HTTP Basic credentials of the tenant in the path.
#[derive(Debug)]
pub struct ApiClient {
    pub tenant: TenantHandle,
    pub key_id: String,
    pub label: String,
    pub scopes: Vec<String>,
}

impl ApiClient {
    /// Whether the credential holds `scope` (or `all`; `all/read` covers read scopes).
    pub fn allows(&self, scope: &str) -> bool {
        scope_allows(&self.scopes, scope)
    }
}

/// Whether `held` covers `scope`: `all` covers everything, `all/read` every read scope.
fn scope_allows(held: &[String], scope: &str) -> bool {
    held.iter()
        .any(|s| s == scope || s == "all" || (s == "all/read" && scope.contains("/read")))
}

fn basic_credentials(authorization: &str) -> Option<(String, String)> {
    let (scheme, encoded) = authorization.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// Checks HTTP Basic credentials (the value of an `Authorization` header) against the
/// machine credentials of tenant `slug`. `None`: missing, unknown, revoked or wrong, or the
/// tenant is unknown or suspended (all look the same).
pub async fn basic_client(
    state: &AppState,
    slug: &str,
    authorization: Option<&str>,
) -> Result<Option<ApiClient>, ApiError> {
    let Some((key_id, secret)) = authorization.and_then(basic_credentials) else {
        return Ok(None);
    };
    let tenant = match state.tenants.handle(slug, &Authorized(())).await {
        Ok(t) => t,
        Err(_) => return Ok(None),
    };
    let lookup = key_id.clone();
    let found = tenant
        .db
        .read(move |c| tenant_sql::credential(c, &lookup))
        .await?;
    let presented = password::sha256(secret.as_bytes());
    // Compare against a digest even when the key is unknown, so timing reveals nothing.
    let (stored, usable) = match &found {
        Some(c) => (c.secret_sha256.clone(), c.revoked_at.is_none()),
        None => (vec![0u8; 32], false),
    };
    let matches: bool = presented.ct_eq(&stored).into();
    Ok(match found {
        Some(c) if matches && usable => Some(ApiClient {
            tenant,
            key_id: c.key_id,
            label: c.label,
            scopes: c.scopes,
        }),
        _ => None,
    })
}

impl FromRequestParts<AppState> for ApiClient {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let challenge = || {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_credentials",
                "send this tenant's API credentials with HTTP Basic authentication",
            )
            .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"ceredis\""),
            );
            r
        };
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found().into_response())?;
        let slug = path_tenant(&params).ok_or_else(|| ApiError::not_found().into_response())?;
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match basic_client(state, &slug, authorization).await {
            Ok(Some(client)) => Ok(client),
            Ok(None) => Err(challenge()),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// Who is calling the tenant's LRS: a machine credential, or a signed-in member of the
/// tenant (through the session cookie). Carries the tenant handle and the xAPI scopes.
#[derive(Debug)]
pub struct LrsCaller {
    pub tenant: TenantHandle,
    pub scopes: Vec<String>,
    pub who: LrsWho,
}

#[derive(Debug, Clone)]
pub enum LrsWho {
    Credential { key_id: String, label: String },
    Member(User),
}

impl LrsCaller {
    /// Whether the caller holds `scope` (`all` covers everything, `all/read` every read).
    pub fn allows(&self, scope: &str) -> bool {
        scope_allows(&self.scopes, scope)
    }
}

/// Authenticates an LRS request: HTTP Basic credentials of the tenant, or else the session
/// of a member of the tenant. Members read statements through their session only: an admin
/// all of them, a teacher those about their pupils, a student those about themselves.
pub async fn lrs_caller(
    state: &AppState,
    slug: &str,
    authorization: Option<&str>,
    session: Option<&Session>,
) -> Result<Option<LrsCaller>, ApiError> {
    if authorization.is_some() {
        return Ok(basic_client(state, slug, authorization)
            .await?
            .map(|c| LrsCaller {
                tenant: c.tenant,
                scopes: c.scopes,
                who: LrsWho::Credential {
                    key_id: c.key_id,
                    label: c.label,
                },
            }));
    }
    let Some(session) = session else {
        return Ok(None);
    };
    let user = match session.principal.as_ref() {
        Principal::Member { slug: s, user } if s == slug && !user.must_change_password => {
            user.clone()
        }
        _ => return Ok(None),
    };
    let scopes: &[&str] = match user.role {
        Role::Admin => &["statements/read", "all/read"],
        // Only statements, and only about their pupils (see `http::xapi`).
        Role::Teacher => &["statements/read"],
        Role::Student => &["statements/read/mine"],
        Role::Researcher => &[],
    };
    let tenant = state.tenants.handle(slug, &Authorized(())).await?;
    Ok(Some(LrsCaller {
        tenant,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        who: LrsWho::Member(user),
    }))
}

/// The client's address, from the socket (the appliance terminates TLS itself, so there is
/// no proxy header to trust).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        Ok(ClientIp(ip))
    }
}

/// What a successful login produced.
#[derive(Debug)]
pub struct LoginOutcome {
    pub cookie_value: String,
    /// The session's CSRF token, for clients that send `X-CSRF-Token`.
    pub csrf: String,
    pub role: Option<Role>,
    pub must_change_password: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("wrong user name or password")]
    Rejected,
    #[error("too many attempts; wait {0} s")]
    Throttled(u64),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> ApiError {
        match e {
            LoginError::Rejected => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_login",
                "wrong user name or password",
            ),
            LoginError::Throttled(secs) => ApiError::too_many(
                secs,
                format!("too many failed attempts: try again in {secs} s"),
            ),
            LoginError::Api(e) => e,
        }
    }
}

impl From<crate::store::StoreError> for LoginError {
    fn from(e: crate::store::StoreError) -> Self {
        LoginError::Api(e.into())
    }
}

impl From<password::PasswordError> for LoginError {
    fn from(e: password::PasswordError) -> Self {
        LoginError::Api(e.into())
    }
}

fn throttle_begin(
    state: &AppState,
    account: &str,
    ip: std::net::IpAddr,
) -> Result<throttle::Attempt, LoginError> {
    state
        .throttle
        .begin(account, ip, std::time::Instant::now())
        .map_err(|wait| {
            state
                .metrics
                .logins
                .get_or_create(&crate::metrics::LoginLabel {
                    outcome: "throttled",
                })
                .inc();
            LoginError::Throttled(wait.as_secs().max(1))
        })
}

fn record(state: &AppState, attempt: throttle::Attempt, ok: bool) {
    if ok {
        attempt.succeeded();
    }
    let outcome = if ok { "success" } else { "failure" };
    state
        .metrics
        .logins
        .get_or_create(&crate::metrics::LoginLabel { outcome })
        .inc();
}

/// Checks a tenant user's password and opens a session.
pub async fn login_member(
    state: &AppState,
    slug: &str,
    username: &str,
    password: &str,
    ip: std::net::IpAddr,
) -> Result<LoginOutcome, LoginError> {
    let account = format!("t/{slug}/{}", username.to_lowercase());
    let attempt = throttle_begin(state, &account, ip)?;
    let tenant = state
        .tenants
        .handle(slug, &Authorized(()))
        .await
        .map_err(|e| LoginError::Api(e.into()))?;
    let name = username.to_string();
    let user = tenant
        .db
        .read(move |c| tenant_sql::user_by_username(c, &name))
        .await?
        .filter(|u| u.active);
    let stored = user.as_ref().and_then(|u| u.password_hash.clone());
    let ok = state.hasher.verify(password.to_string(), stored).await?;
    record(state, attempt, ok);
    let user = match user {
        Some(u) if ok => u,
        _ => return Err(LoginError::Rejected),
    };
    let slug_owned = tenant.slug.clone();
    let (cookie_value, csrf) = start_session(state, &tenant.db, user.id, |token| {
        tenant_cookie_value(&slug_owned, token)
    })
    .await?;
    Ok(LoginOutcome {
        cookie_value,
        csrf,
        role: Some(user.role),
        must_change_password: user.must_change_password,
    })
}

/// Checks the operator's password and opens an operator session.
pub async fn login_operator(
    state: &AppState,
    username: &str,
    password: &str,
    ip: std::net::IpAddr,
) -> Result<LoginOutcome, LoginError> {
    let account = format!("op/{}", username.to_lowercase());
    let attempt = throttle_begin(state, &account, ip)?;
    let name = username.to_string();
    let operator = state
        .system
        .read(move |c| system::operator_by_name(c, &name))
        .await?;
    let stored = operator.as_ref().map(|o| o.password_hash.clone());
    let ok = state.hasher.verify(password.to_string(), stored).await?;
    record(state, attempt, ok);
    let operator = match operator {
        Some(o) if ok => o,
        _ => return Err(LoginError::Rejected),
    };
    let (cookie_value, csrf) =
        start_session(state, &state.system, operator.id, operator_cookie_value).await?;
    Ok(LoginOutcome {
        cookie_value,
        csrf,
        role: None,
        must_change_password: false,
    })
}

/// Purposes of one-time setup links.
pub const OPERATOR_SETUP: &str = "operator";
pub const TENANT_ADMIN_SETUP: &str = "tenant-admin";

/// The state of a tenant's setup link (for the page that explains it).
pub async fn tenant_setup_state(
    state: &AppState,
    slug: &str,
    token: &str,
) -> Result<shared::TokenState, ApiError> {
    let tenant = state.tenants.handle(slug, &Authorized(())).await?;
    let hash = password::sha256(token.as_bytes());
    Ok(tenant
        .db
        .read(move |c| shared::setup_token_state(c, &hash, TENANT_ADMIN_SETUP))
        .await?)
}

/// Consumes a tenant's one-time setup link and creates its first admin, then signs them in.
pub async fn complete_tenant_setup(
    state: &AppState,
    slug: &str,
    token: &str,
    fields: tenant_sql::UserFields,
    password_hash: String,
) -> Result<Result<String, shared::TokenState>, ApiError> {
    let tenant = state.tenants.handle(slug, &Authorized(())).await?;
    let hash = password::sha256(token.as_bytes());
    let created = tenant
        .db
        .write(move |c| {
            let state = shared::consume_setup_token(c, &hash, TENANT_ADMIN_SETUP)?;
            if state != shared::TokenState::Valid {
                return Ok(Err(state));
            }
            Ok(Ok(tenant_sql::insert_user(
                c,
                &fields,
                Some(&password_hash),
                false,
            )?))
        })
        .await?;
    match created {
        Ok(user_id) => {
            let slug = tenant.slug.clone();
            let (cookie, _) = start_session(state, &tenant.db, user_id, |t| {
                tenant_cookie_value(&slug, t)
            })
            .await?;
            Ok(Ok(cookie))
        }
        Err(s) => Ok(Err(s)),
    }
}

/// Issues a tenant's one-time admin setup link token (the operator hands it over).
pub async fn issue_tenant_setup_token(state: &AppState, slug: &str) -> Result<String, ApiError> {
    let tenant = state.tenants.handle(slug, &Authorized(())).await?;
    issue_setup_token(&tenant.db, TENANT_ADMIN_SETUP, 7 * 24 * 3600).await
}

pub async fn issue_setup_token(
    db: &crate::store::Database,
    purpose: &'static str,
    ttl_secs: i64,
) -> Result<String, ApiError> {
    let token = password::random_token(32)?;
    let hash = password::sha256(token.as_bytes());
    db.write(move |c| shared::insert_setup_token(c, &hash, purpose, ttl_secs))
        .await?;
    Ok(token)
}

impl PendingMember {
    /// Replaces the user's password (clearing a one-time password) and ends their other
    /// sessions.
    pub async fn set_password(&self, password_hash: String) -> Result<(), ApiError> {
        let user_id = self.user.id;
        let keep = self.session.token_hash.clone();
        self.tenant
            .db
            .write(move |c| {
                tenant_sql::set_password(c, user_id, &password_hash, false)?;
                shared::delete_other_sessions(c, user_id, &keep)
            })
            .await?;
        Ok(())
    }
}
