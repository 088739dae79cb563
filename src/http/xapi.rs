//! The tenant's xAPI endpoint, `/t/{tenant}/xapi/…`: Statements, State, Activity Profile,
//! Agent Profile, Activities, Agents and About, for xAPI 1.0.3 and 2.0.0.
//!
//! Every request goes through [`serve`]: CORS preflight, the 1.0.3 alternate request syntax
//! (`POST ?method=…` with headers and content in a form), the `X-Experience-API-Version`
//! check, authentication (`auth::lrs_caller`), scopes, then the resource. Every response
//! carries the version and consistency headers and the CORS headers browser content needs
//! (never `Access-Control-Allow-Credentials`: cookies are not accepted cross-origin).
//!
//! Must not: write SQL (see `store::lrs`) or validate statements itself (see `lrs`).

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::{self, LrsCaller, LrsWho, MaybeSession};
use crate::competency::Actor;
use crate::error::ApiError;
use crate::lrs::document::{self, Preconditions, WriteMode};
use crate::lrs::multipart::{self, Part};
use crate::lrs::query::{self, Format, StatementQuery};
use crate::lrs::signature::{self, SIGNATURE_USAGE};
use crate::lrs::statement::{self, Prepared, Storer};
use crate::lrs::validate::{self, is_iri, is_uuid};
use crate::lrs::{self, LrsError, ReadScope, VERSIONS, Version, now_ms};
use crate::store::lrs::{self as sql, Blob, DocumentKey};
use crate::tenant::Role;

const VERSION_HEADER: &str = "x-experience-api-version";
const CONSISTENT_THROUGH: &str = "x-experience-api-consistent-through";

/// The resources of the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Statements,
    More,
    State,
    ActivityProfile,
    AgentProfile,
    Activities,
    Agents,
    About,
}

/// The handler of one resource (every method; [`serve`] answers per method).
pub fn resource(resource: Resource) -> MethodRouter<AppState> {
    any(
        move |State(s): State<AppState>,
              Path(tenant): Path<String>,
              session: MaybeSession,
              request: Request| serve(s, tenant, resource, None, session, request),
    )
}

/// The next page of a statement query (`more` links).
pub async fn more(
    State(s): State<AppState>,
    Path((tenant, token)): Path<(String, String)>,
    session: MaybeSession,
    request: Request,
) -> Response {
    serve(s, tenant, Resource::More, Some(token), session, request).await
}

/// One request, after the alternate syntax has been unfolded.
struct XRequest {
    method: Method,
    headers: HeaderMap,
    params: Vec<(String, String)>,
    body: Bytes,
    version: Version,
}

impl XRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or_default()
    }

    fn is_read(&self) -> bool {
        matches!(self.method, Method::GET | Method::HEAD)
    }
}

async fn serve(
    state: AppState,
    slug: String,
    resource: Resource,
    token: Option<String>,
    session: MaybeSession,
    request: Request,
) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let mut version = default_version(&state);
    let mut response = if request.method() == Method::OPTIONS {
        preflight(request.headers())
    } else {
        match unfold(&state, request).await {
            Ok(x) => {
                version = x.version;
                let authorization = x.header("authorization").map(str::to_string);
                match handle(&state, &slug, resource, token, authorization, session, x).await {
                    Ok(r) => r,
                    Err(e) => ApiError::from(e).into_response(),
                }
            }
            Err(e) => ApiError::from(e).into_response(),
        }
    };
    let h = response.headers_mut();
    h.insert(VERSION_HEADER, HeaderValue::from_static(version.header()));
    if let Ok(v) = HeaderValue::from_str(&statement::format_millis(now_ms())) {
        h.insert(CONSISTENT_THROUGH, v);
    }
    if let Some(o) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "ETag, Last-Modified, Content-Type, X-Experience-API-Version, \
                 X-Experience-API-Consistent-Through",
            ),
        );
    }
    response
}

fn preflight(headers: &HeaderMap) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or(HeaderValue::from_static(
                "Authorization, Content-Type, X-Experience-API-Version, If-Match, If-None-Match",
            )),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

fn pairs(bytes: &[u8]) -> Result<Vec<(String, String)>, LrsError> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes)
        .map_err(|_| LrsError::invalid("the query string or form is not valid urlencoded data"))
}

/// Reads the body and unfolds the alternate request syntax into an ordinary request.
async fn unfold(state: &AppState, request: Request) -> Result<XRequest, LrsError> {
    let (parts, body) = request.into_parts();
    let limit = state.config.limits.max_upload_bytes;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| LrsError::TooLarge(limit))?;
    let mut params = pairs(parts.uri.query().unwrap_or_default().as_bytes())?;
    let mut method = parts.method;
    let mut headers = parts.headers;
    let mut body = body;
    let mut alternate = false;
    if let Some(i) = params.iter().position(|(k, _)| k == "method") {
        if method != Method::POST {
            return Err(LrsError::invalid(
                "the alternate request syntax (?method=) is only for POST requests",
            ));
        }
        let (_, target) = params.remove(i);
        if let Some((k, _)) = params.first() {
            return Err(LrsError::invalid(format!(
                "with the alternate request syntax every parameter goes in the form body, not \
                 the query string ({k})"
            )));
        }
        let form_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !form_type
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
        {
            return Err(LrsError::invalid(
                "the alternate request syntax needs Content-Type: application/x-www-form-urlencoded",
            ));
        }
        method = match target.to_ascii_uppercase().as_str() {
            "GET" => Method::GET,
            "PUT" => Method::PUT,
            "POST" => Method::POST,
            "DELETE" => Method::DELETE,
            "HEAD" => Method::HEAD,
            other => {
                return Err(LrsError::invalid(format!(
                    "method: \"{other}\" is not an xAPI method"
                )));
            }
        };
        let mut content = Bytes::new();
        headers.remove(header::CONTENT_TYPE);
        for (k, v) in pairs(&body)? {
            let lower = k.to_ascii_lowercase();
            match lower.as_str() {
                "content" => content = Bytes::from(v.into_bytes()),
                "authorization"
                | "x-experience-api-version"
                | "content-type"
                | "if-match"
                | "if-none-match" => {
                    let name = HeaderName::from_bytes(lower.as_bytes())
                        .map_err(|_| LrsError::invalid("bad header name in the form"))?;
                    let value = HeaderValue::from_str(&v)
                        .map_err(|_| LrsError::invalid(format!("{k}: not a valid header value")))?;
                    headers.insert(name, value);
                }
                "content-length" => {}
                _ => params.push((k, v)),
            }
        }
        if !headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        body = content;
        alternate = true;
    }
    let version = match headers.get(VERSION_HEADER).and_then(|v| v.to_str().ok()) {
        Some(v) => Version::parse(v).ok_or_else(|| {
            LrsError::invalid(format!(
                "X-Experience-API-Version: \"{v}\" is not a version this LRS speaks (1.0.x, 2.0.0)"
            ))
        })?,
        None => default_version(state),
    };
    if !headers.contains_key(VERSION_HEADER) && !is_about(&parts.uri) {
        return Err(LrsError::invalid(
            "X-Experience-API-Version is required (1.0.3 or 2.0.0)",
        ));
    }
    if alternate && version == Version::V2 {
        return Err(LrsError::invalid(
            "xAPI 2.0 has no alternate request syntax: send the method, headers and body as such",
        ));
    }
    Ok(XRequest {
        method,
        headers,
        params,
        body,
        version,
    })
}

/// The version named in answers to requests that do not say theirs.
fn default_version(state: &AppState) -> Version {
    Version::parse(&state.config.lrs.default_version).unwrap_or(Version::V2)
}

fn is_about(uri: &axum::http::Uri) -> bool {
    uri.path().trim_end_matches('/').ends_with("/xapi/about")
}

async fn handle(
    state: &AppState,
    slug: &str,
    resource: Resource,
    token: Option<String>,
    authorization: Option<String>,
    session: MaybeSession,
    x: XRequest,
) -> Result<Response, LrsError> {
    if resource == Resource::About {
        return about_resource(&x);
    }
    let caller = auth::lrs_caller(state, slug, authorization.as_deref(), session.0.as_ref())
        .await
        .map_err(|e| LrsError::Forbidden(e.message))?
        .ok_or(LrsError::Unauthenticated)?;
    match resource {
        Resource::Statements => match x.method {
            Method::GET | Method::HEAD => {
                let q = query::parse(&x.params, x.version)?;
                read_statements(&caller, q, &x).await
            }
            Method::POST | Method::PUT => write_statements(&caller, &x).await,
            _ => Err(method_not_allowed()),
        },
        Resource::More => {
            if !x.is_read() {
                return Err(method_not_allowed());
            }
            if let Some((k, _)) = x.params.first() {
                return Err(LrsError::invalid(format!(
                    "{k} cannot be added to a more link"
                )));
            }
            let page = query::decode_more(token.as_deref().unwrap_or_default())?;
            read_statements(&caller, StatementQuery::Many(page), &x).await
        }
        Resource::State | Resource::ActivityProfile | Resource::AgentProfile => {
            documents(&caller, resource, &x).await
        }
        Resource::Activities => activity_resource(&caller, &x).await,
        Resource::Agents => agent_resource(&caller, &x),
        Resource::About => about_resource(&x),
    }
}

fn method_not_allowed() -> LrsError {
    LrsError::invalid("this method is not allowed on this resource")
}

fn require(ok: bool, what: &str) -> Result<(), LrsError> {
    if ok {
        Ok(())
    } else {
        Err(LrsError::Forbidden(format!(
            "these credentials do not allow {what}"
        )))
    }
}

/// The authority the LRS writes into statements stored by `caller`, and its "mine" key.
fn storer(caller: &LrsCaller) -> Storer {
    let tenant = &caller.tenant;
    let home = format!("urn:ceredis:tenant:{}", tenant.slug);
    match &caller.who {
        LrsWho::Credential { key_id, label } => Storer {
            authority: json!({"objectType": "Agent", "name": label,
                "account": {"homePage": &*tenant.home_page, "name": key_id}}),
            key: format!("{home}:credential:{key_id}"),
        },
        LrsWho::Member(user) => Storer {
            authority: crate::lrs::learner(&tenant.home_page, &user.agent_name),
            key: format!("{home}:user:{}", user.id),
        },
    }
}

/// A credential reads all statements (`statements/read`) or those it stored
/// (`statements/read/mine`); a member what [`lrs::member_scope`] allows.
async fn read_scope(caller: &LrsCaller) -> Result<ReadScope, LrsError> {
    match &caller.who {
        LrsWho::Credential { .. } if caller.allows("statements/read") => Ok(ReadScope::All),
        LrsWho::Credential { .. } => {
            require(caller.allows("statements/read/mine"), "reading statements")?;
            let key = statement::stored_by_index_key(&storer(caller).key);
            Ok(ReadScope::AnyOf(vec![(key, statement::mask::STORED_BY)]))
        }
        LrsWho::Member(user) => lrs::member_scope(&caller.tenant, user).await,
    }
}

/// Whether the caller reads scores: everyone except pupils, who never see raw scores.
fn reads_scores(caller: &LrsCaller) -> bool {
    !matches!(&caller.who, LrsWho::Member(u) if u.role == Role::Student)
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

fn http_date(ms: i64) -> Option<HeaderValue> {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).ok()?;
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    HeaderValue::from_str(&t.format(&f).ok()?).ok()
}

// ---------------------------------------------------------------------------------------
// Statements

fn reader_languages(x: &XRequest) -> Vec<String> {
    x.header("accept-language")
        .unwrap_or_default()
        .split(',')
        .filter_map(|l| l.split(';').next())
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && l != "*")
        .collect()
}

async fn format_statement(
    caller: &LrsCaller,
    json: String,
    format: Format,
    languages: &[String],
) -> Result<String, LrsError> {
    let scores = reads_scores(caller);
    if format == Format::Exact && scores {
        return Ok(json);
    }
    let mut value: Value = serde_json::from_str(&json)
        .map_err(|e| LrsError::Store(crate::store::StoreError::Conflict(e.to_string())))?;
    if !scores {
        statement::without_scores(&mut value);
    }
    match format {
        Format::Ids => statement::to_ids(&mut value),
        Format::Canonical => {
            let mut ids = Vec::new();
            collect_activity_ids(&value, &mut ids);
            let defs = caller
                .tenant
                .db
                .read(move |c| {
                    ids.into_iter()
                        .map(|id| Ok((id.clone(), sql::activity_definition(c, &id)?)))
                        .collect::<Result<Vec<_>, crate::store::StoreError>>()
                })
                .await?;
            apply_canonical(&mut value, &defs);
            statement::filter_languages(&mut value, languages);
        }
        Format::Exact => {}
    }
    Ok(value.to_string())
}

fn collect_activity_ids(s: &Value, out: &mut Vec<String>) {
    if let Some(o) = s.get("object") {
        match o.get("objectType").and_then(Value::as_str) {
            None | Some("Activity") => {
                if let Some(id) = o.get("id").and_then(Value::as_str) {
                    out.push(id.to_string());
                }
            }
            Some("SubStatement") => collect_activity_ids(o, out),
            _ => {}
        }
    }
}

fn apply_canonical(s: &mut Value, defs: &[(String, Option<Value>)]) {
    let Some(o) = s.get_mut("object") else { return };
    match o.get("objectType").and_then(Value::as_str) {
        None | Some("Activity") => {
            let id = o.get("id").and_then(Value::as_str).unwrap_or_default();
            if let Some((_, Some(def))) = defs.iter().find(|(i, _)| i == id)
                && let Value::Object(obj) = o
                && def.as_object().is_some_and(|d| !d.is_empty())
            {
                obj.insert("definition".into(), def.clone());
            }
        }
        Some("SubStatement") => apply_canonical(o, defs),
        _ => {}
    }
}

async fn read_statements(
    caller: &LrsCaller,
    q: StatementQuery,
    x: &XRequest,
) -> Result<Response, LrsError> {
    let scope = read_scope(caller).await?;
    let slug = caller.tenant.slug.clone();
    let languages = reader_languages(x);
    match q {
        StatementQuery::One {
            id,
            voided,
            format,
            attachments,
        } => {
            let found = caller
                .tenant
                .db
                .read(move |c| sql::statement_by_id(c, &id, voided))
                .await?
                .ok_or(LrsError::NotFound("statement"))?;
            if let ReadScope::AnyOf(keys) = scope {
                let seq = found.seq;
                let allowed = caller
                    .tenant
                    .db
                    .read(move |c| sql::has_any_index_key(c, seq, &keys))
                    .await?;
                if !allowed {
                    return Err(LrsError::NotFound("statement"));
                }
            }
            let rendered = statement::render(&found.json, found.stored, found.has_timestamp);
            let body = format_statement(caller, rendered, format, &languages).await?;
            let mut r = if attachments {
                let seq = found.seq;
                let files = caller
                    .tenant
                    .db
                    .read(move |c| sql::attachments_of(c, &[seq]))
                    .await?;
                multipart_response(body.as_bytes(), &files)
            } else {
                json_response(StatusCode::OK, body)
            };
            if let Some(v) = http_date(found.stored) {
                r.headers_mut().insert(header::LAST_MODIFIED, v);
            }
            Ok(r)
        }
        StatementQuery::Many(mut page) => {
            let mut filter = page.filter.clone();
            if filter.upto.is_none() {
                let last = caller.tenant.db.read(sql::last_seq).await?;
                filter.upto = Some(last);
                page.filter.upto = Some(last);
            }
            if let ReadScope::AnyOf(keys) = scope {
                filter.any_of = keys;
            }
            let limit = filter.limit;
            let run = filter.clone();
            let mut rows = caller.tenant.db.read(move |c| sql::query(c, &run)).await?;
            let has_more = rows.len() > limit;
            rows.truncate(limit);
            let more = match (has_more, rows.last()) {
                (true, Some(last)) => {
                    page.filter.after = Some(last.seq);
                    format!(
                        "/t/{slug}/xapi/statements/more/{}",
                        query::encode_more(&page)
                    )
                }
                _ => String::new(),
            };
            let mut body = String::with_capacity(rows.iter().map(|r| r.json.len() + 64).sum());
            body.push_str("{\"statements\":[");
            for (i, row) in rows.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                let rendered = statement::render(&row.json, row.stored, row.has_timestamp);
                body.push_str(&format_statement(caller, rendered, page.format, &languages).await?);
            }
            body.push_str("],\"more\":");
            body.push_str(&Value::String(more).to_string());
            body.push('}');
            let latest = rows.iter().map(|r| r.stored).max();
            let mut r = if page.attachments {
                let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
                let files = caller
                    .tenant
                    .db
                    .read(move |c| sql::attachments_of(c, &seqs))
                    .await?;
                multipart_response(body.as_bytes(), &files)
            } else {
                json_response(StatusCode::OK, body)
            };
            if let Some(v) = http_date(latest.unwrap_or_else(now_ms)) {
                r.headers_mut().insert(header::LAST_MODIFIED, v);
            }
            Ok(r)
        }
    }
}

fn multipart_response(json: &[u8], files: &[(String, String, Vec<u8>)]) -> Response {
    let (content_type, body) = multipart::build(json, files);
    let mut r = Response::new(Body::from(body));
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

async fn write_statements(caller: &LrsCaller, x: &XRequest) -> Result<Response, LrsError> {
    require(caller.allows("statements/write"), "storing statements")?;
    let put = x.method == Method::PUT;
    let put_id = if put {
        if let Some((k, _)) = x.params.iter().find(|(k, _)| k != "statementId") {
            return Err(LrsError::invalid(format!(
                "{k} is not a parameter of PUT statements"
            )));
        }
        let id = x
            .param("statementId")
            .ok_or_else(|| LrsError::invalid("PUT statements needs the statementId parameter"))?;
        if !is_uuid(id) {
            return Err(LrsError::invalid(format!(
                "statementId: \"{id}\" is not a UUID"
            )));
        }
        Some(id.to_ascii_lowercase())
    } else {
        if let Some((k, _)) = x.params.first() {
            return Err(LrsError::invalid(format!(
                "{k} is not a parameter of POST statements"
            )));
        }
        None
    };
    let content_type = x.content_type();
    let (json, parts) = match essence(content_type).as_str() {
        "application/json" => (x.body.clone(), Vec::new()),
        "multipart/mixed" => {
            let b = multipart::boundary(content_type)
                .ok_or_else(|| LrsError::invalid("multipart/mixed needs a boundary"))?;
            multipart::parse(x.body.clone(), &b).await?
        }
        other => {
            return Err(LrsError::invalid(format!(
                "statements are sent as application/json or multipart/mixed, not \"{other}\""
            )));
        }
    };
    let value: Value = serde_json::from_slice(&json)
        .map_err(|e| LrsError::invalid(format!("the body is not valid JSON: {e}")))?;
    let batch: Vec<Value> = match value {
        Value::Array(items) if !put => items,
        Value::Array(_) => return Err(LrsError::invalid("PUT statements takes one statement")),
        Value::Object(_) => vec![value],
        _ => {
            return Err(LrsError::invalid(
                "the body must be a statement or an array of statements",
            ));
        }
    };
    let mut seen_ids = std::collections::HashSet::new();
    for (i, s) in batch.iter().enumerate() {
        validate::statement(s, x.version).map_err(|e| {
            if batch.len() > 1 {
                LrsError::invalid(e.0.replacen("statement", &format!("statement[{i}]"), 1))
            } else {
                LrsError::Invalid(e.0)
            }
        })?;
        if let Some(id) = s.get("id").and_then(Value::as_str) {
            if !seen_ids.insert(id.to_ascii_lowercase()) {
                return Err(LrsError::invalid(format!(
                    "statement id {id} appears twice in the batch"
                )));
            }
            if let Some(p) = &put_id
                && !id.eq_ignore_ascii_case(p)
            {
                return Err(LrsError::invalid(
                    "statement.id differs from the statementId parameter",
                ));
            }
        }
    }
    let blobs = match_attachments(&batch, parts)?;
    let who = storer(caller);
    let prepared: Vec<Prepared> = batch
        .into_iter()
        .map(|mut s| {
            if let (Some(id), Value::Object(o)) = (&put_id, &mut s) {
                o.insert("id".into(), Value::String(id.clone()));
            }
            statement::prepare(s, &who, x.version, statement::new_id)
        })
        .collect();
    let ids: Vec<String> = prepared.iter().map(|p| p.id.clone()).collect();
    let actor = match &caller.who {
        LrsWho::Credential { key_id, .. } => Actor::Client(key_id.clone()),
        LrsWho::Member(user) => Actor::User(user.id),
    };
    lrs::store(&caller.tenant, prepared, blobs, actor).await?;
    if put {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Ok(json_response(StatusCode::OK, Value::from(ids).to_string()))
    }
}

/// Pairs the parts of a multipart request with the statements' attachment objects: every
/// attachment without a `fileUrl` needs its part, every part must be declared, and
/// signatures must verify.
fn match_attachments(batch: &[Value], parts: Vec<Part>) -> Result<Vec<Blob>, LrsError> {
    let mut declared: Vec<(String, &Value, &Value)> = Vec::new();
    for s in batch {
        for a in s
            .get("attachments")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let sha2 = a
                .get("sha2")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_ascii_lowercase();
            declared.push((sha2, a, s));
        }
    }
    for part in &parts {
        if !declared.iter().any(|(sha2, _, _)| *sha2 == part.sha2) {
            return Err(LrsError::invalid(format!(
                "the attachment part {} is not declared by any statement",
                part.sha2
            )));
        }
    }
    for (sha2, a, s) in &declared {
        let part = parts.iter().find(|p| p.sha2 == *sha2);
        let has_url = a.get("fileUrl").is_some();
        if part.is_none() && !has_url {
            return Err(LrsError::invalid(format!(
                "attachment {sha2} has no fileUrl and its content was not sent"
            )));
        }
        if a.get("usageType").and_then(Value::as_str) == Some(SIGNATURE_USAGE) {
            let ct = a
                .get("contentType")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if essence(ct) != "application/octet-stream" {
                return Err(LrsError::invalid(
                    "a signature attachment's contentType must be application/octet-stream",
                ));
            }
            let Some(p) = part else {
                return Err(LrsError::invalid(
                    "a signature attachment's content must be sent with the statement",
                ));
            };
            signature::verify(&p.content, s)?;
        }
    }
    let mut blobs: Vec<Blob> = Vec::new();
    for p in parts {
        if blobs.iter().any(|b| b.sha2 == p.sha2) {
            continue;
        }
        let content_type = declared
            .iter()
            .find(|(sha2, _, _)| *sha2 == p.sha2)
            .and_then(|(_, a, _)| a.get("contentType").and_then(Value::as_str))
            .map(str::to_string)
            .unwrap_or(p.content_type);
        blobs.push(Blob {
            sha2: p.sha2,
            content_type,
            content: p.content,
        });
    }
    Ok(blobs)
}

// ---------------------------------------------------------------------------------------
// Documents

fn only_params(x: &XRequest, allowed: &[&str], resource: &str) -> Result<(), LrsError> {
    let mut seen = Vec::new();
    for (k, _) in &x.params {
        if !allowed.contains(&k.as_str()) {
            return Err(LrsError::invalid(format!(
                "{k} is not a parameter of the {resource} resource"
            )));
        }
        if seen.contains(k) {
            return Err(LrsError::invalid(format!("{k} is given twice")));
        }
        seen.push(k.clone());
    }
    Ok(())
}

fn required_param<'a>(x: &'a XRequest, name: &str) -> Result<&'a str, LrsError> {
    x.param(name)
        .ok_or_else(|| LrsError::invalid(format!("the {name} parameter is required")))
}

fn activity_param(x: &XRequest) -> Result<String, LrsError> {
    let id = required_param(x, "activityId")?;
    if !is_iri(id) {
        return Err(LrsError::invalid(format!(
            "activityId: \"{id}\" is not an IRI"
        )));
    }
    Ok(id.to_string())
}

async fn documents(
    caller: &LrsCaller,
    resource: Resource,
    x: &XRequest,
) -> Result<Response, LrsError> {
    let (kind, name, id_param, scope) = match resource {
        Resource::State => ("state", "State", "stateId", "state"),
        Resource::ActivityProfile => (
            "activity_profile",
            "Activity Profile",
            "profileId",
            "profile",
        ),
        _ => ("agent_profile", "Agent Profile", "profileId", "profile"),
    };
    let read = x.is_read();
    require(
        caller.allows(scope) || (read && caller.allows("all/read")),
        &format!("the {name} resource"),
    )?;
    let allowed: &[&str] = match resource {
        Resource::State => &["activityId", "agent", "registration", "stateId", "since"],
        Resource::ActivityProfile => &["activityId", "profileId", "since"],
        _ => &["agent", "profileId", "since"],
    };
    only_params(x, allowed, name)?;
    let activity_id = if resource == Resource::AgentProfile {
        String::new()
    } else {
        activity_param(x)?
    };
    let agent = if resource == Resource::ActivityProfile {
        String::new()
    } else {
        query::agent_param("agent", required_param(x, "agent")?)?
    };
    let registration = match x.param("registration") {
        Some(r) if is_uuid(r) => r.to_ascii_lowercase(),
        Some(r) => {
            return Err(LrsError::invalid(format!(
                "registration: \"{r}\" is not a UUID"
            )));
        }
        None => String::new(),
    };
    let key = DocumentKey {
        kind,
        activity_id,
        agent,
        registration,
    };
    let doc_id = x.param(id_param).map(str::to_string);
    let since = match x.param("since") {
        Some(s) => {
            if doc_id.is_some() || !read {
                return Err(LrsError::invalid(format!(
                    "since is only for listing documents, without {id_param}"
                )));
            }
            Some(
                validate::parse_timestamp(s)
                    .map(|m| m.div_euclid(1000))
                    .ok_or_else(|| {
                        LrsError::invalid(format!("since: \"{s}\" is not an ISO 8601 timestamp"))
                    })?,
            )
        }
        None => None,
    };
    let pre = Preconditions {
        if_match: x.header("if-match").map(str::to_string),
        if_none_match: x.header("if-none-match").map(str::to_string),
    };
    let db = caller.tenant.db.clone();
    match x.method {
        Method::GET | Method::HEAD => match doc_id {
            Some(id) => {
                let found = db
                    .read(move |c| sql::document(c, &key, &id))
                    .await?
                    .ok_or(LrsError::NotFound("document"))?;
                let mut r = Response::new(Body::from(found.content));
                let h = r.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&found.content_type) {
                    h.insert(header::CONTENT_TYPE, v);
                }
                if let Ok(v) = HeaderValue::from_str(&found.etag) {
                    h.insert(header::ETAG, v);
                }
                if let Some(v) = http_date(found.updated) {
                    h.insert(header::LAST_MODIFIED, v);
                }
                Ok(r)
            }
            None => {
                if resource == Resource::State && x.param("agent").is_none() {
                    return Err(LrsError::invalid("the agent parameter is required"));
                }
                let (ids, latest) = db.read(move |c| sql::document_ids(c, &key, since)).await?;
                let mut r = json_response(StatusCode::OK, Value::from(ids).to_string());
                if let Some(v) = http_date(latest.unwrap_or_else(now_ms)) {
                    r.headers_mut().insert(header::LAST_MODIFIED, v);
                }
                Ok(r)
            }
        },
        Method::PUT | Method::POST => {
            let id = doc_id.ok_or_else(|| {
                LrsError::invalid(format!("the {id_param} parameter is required"))
            })?;
            let content_type = match x.content_type() {
                "" => "application/octet-stream".to_string(),
                ct => ct.to_string(),
            };
            let mode = if x.method == Method::PUT {
                WriteMode::Replace {
                    // 1.0.3 asks for a precondition on every profile PUT; 2.0.0 only when
                    // the document exists, for every document resource.
                    new_needs_precondition: x.version == Version::V1 && resource != Resource::State,
                    existing_needs_precondition: x.version == Version::V2
                        || resource != Resource::State,
                }
            } else {
                WriteMode::Merge
            };
            let content = x.body.to_vec();
            let now = now_ms();
            db.write(move |c| {
                Ok(document::write(
                    c,
                    &key,
                    &id,
                    &content_type,
                    content,
                    mode,
                    &pre,
                    now,
                ))
            })
            .await??;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Method::DELETE => {
            if doc_id.is_none() && resource != Resource::State {
                return Err(LrsError::invalid(format!(
                    "the {id_param} parameter is required"
                )));
            }
            let now = now_ms();
            db.write(move |c| Ok(document::delete(c, &key, doc_id.as_deref(), &pre, now)))
                .await??;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => Err(method_not_allowed()),
    }
}

// ---------------------------------------------------------------------------------------
// Activities, Agents, About

fn readable(caller: &LrsCaller) -> bool {
    ["all/read", "define", "profile", "state", "statements/read"]
        .iter()
        .any(|s| caller.allows(s))
}

async fn activity_resource(caller: &LrsCaller, x: &XRequest) -> Result<Response, LrsError> {
    if !x.is_read() {
        return Err(method_not_allowed());
    }
    require(readable(caller), "reading Activities")?;
    only_params(x, &["activityId"], "Activities")?;
    let id = activity_param(x)?;
    let lookup = id.clone();
    let definition = caller
        .tenant
        .db
        .read(move |c| sql::activity_definition(c, &lookup))
        .await?;
    let mut activity = json!({"objectType": "Activity", "id": id});
    if let Some(d) = definition.filter(|d| d.as_object().is_some_and(|o| !o.is_empty())) {
        activity["definition"] = d;
    }
    Ok(json_response(StatusCode::OK, activity.to_string()))
}

fn agent_resource(caller: &LrsCaller, x: &XRequest) -> Result<Response, LrsError> {
    if !x.is_read() {
        return Err(method_not_allowed());
    }
    require(readable(caller), "reading Agents")?;
    only_params(x, &["agent"], "Agents")?;
    let raw = required_param(x, "agent")?;
    let agent: Value = serde_json::from_str(raw)
        .map_err(|_| LrsError::invalid("agent: must be an Agent as JSON"))?;
    validate::agent(&agent, "agent")?;
    let mut person = json!({"objectType": "Person"});
    for key in ["name", "mbox", "mbox_sha1sum", "openid", "account"] {
        if let Some(v) = agent.get(key) {
            person[key] = json!([v]);
        }
    }
    Ok(json_response(StatusCode::OK, person.to_string()))
}

fn about_resource(x: &XRequest) -> Result<Response, LrsError> {
    if !x.is_read() {
        return Err(method_not_allowed());
    }
    if let Some((k, _)) = x.params.first() {
        return Err(LrsError::invalid(format!(
            "{k} is not a parameter of the About resource"
        )));
    }
    Ok(json_response(
        StatusCode::OK,
        json!({"version": VERSIONS, "extensions": {}}).to_string(),
    ))
}
