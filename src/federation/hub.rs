//! The federation hub, `ceredis hub serve`: the same binary, with its own data directory
//! (`hub.db`, its own CA and server certificate, its own Ed25519 identity) and its own
//! router. What it stores goes through [`HubStore`], one interface over SQLite (the
//! default).
//!
//! Routes (all under `/federation/v1/`):
//! - `GET ca.pem`: the hub's CA certificate, public; a joining site checks its fingerprint
//!   against its token before it trusts anything else from the hub.
//! - `POST enrol`: a site registers its key with a one-time token; the request is signed
//!   with the key being registered, so nobody enrols a key they do not hold.
//! - `GET site`: what the hub knows of the signed-in site (a signed request).
//! - `continuity/{uid}`: a tenant's encrypted continuity copy (see
//!   [`super::continuity`]). `PUT` registers it to the signing site, and `POST …/claim`
//!   hands it to a site that proves it holds the recovery key, as its only holder or
//!   alongside the others. Under `…/generations/{g}`, a holder can `GET` the chunks the hub
//!   holds, `PUT` and `GET …/chunks/{i}` to store or fetch one (idempotent; a generation
//!   belongs to the site that sent its first chunk), and `POST …/commit` to commit the
//!   generation and drop older ones. `PUT …/batches/{after}/{last}` stores the signing
//!   site's changes in that range, `GET …/batches` lists every site's, `GET
//!   …/batch/{origin}/{last}` returns one, and `PUT …/pulled` records how far a holder
//!   applied the others'; a batch goes once the newest generation holds it and every other
//!   holder applied it. The hub stores only what it cannot read.
//!
//! - `GET publications` lists what the federation publishes to its sites (competency
//!   frameworks, `ceredis hub publish`), and `GET publications/{id}` returns one.
//! - `PUT aggregates/{key}`: a school's pseudonymised aggregates (see
//!   [`super::aggregates`]), refused when a count is under the smallest cell.
//!
//! Every response carries the hub's clock ([`HUB_TIME_HEADER`]).

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::Deserialize;
use serde_json::json;

use super::{
    EnrolmentToken, HUB_TIME_HEADER, MAX_SKEW_SECS, SIGNATURE_HEADER, SITE_HEADER, TIME_HEADER,
    secret_hash, verify,
};
use crate::error::ApiError;
use crate::store::federation::{
    self as sql, BatchInfo, BatchRefusal, ClaimRefusal, ContinuityCopy, Generation,
    GenerationRefusal, SiteRow, TokenRefusal,
};
use crate::store::hub_postgres as pgsql;
use crate::store::{Database, DbOptions, StoreError, StoreMetrics, now};

pub const HUB_DB: &str = "hub.db";
/// The largest request body the hub reads.
pub const MAX_BODY: usize = 64 << 20;

/// Where the hub keeps what it knows: one interface, one implementation per engine.
#[derive(Clone)]
pub enum HubStore {
    Sqlite(Database),
    Postgres(deadpool_postgres::Pool),
}

impl std::fmt::Debug for HubStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HubStore::Sqlite(db) => write!(f, "HubStore::Sqlite({})", db.path().display()),
            HubStore::Postgres(_) => f.write_str("HubStore::Postgres"),
        }
    }
}

/// The newest committed generation of a copy.
pub type Latest = Option<Generation>;

impl HubStore {
    pub fn open_sqlite(data_dir: &Path) -> Result<HubStore, StoreError> {
        Ok(HubStore::Sqlite(Database::open(
            "hub",
            &data_dir.join(HUB_DB),
            sql::HUB_MIGRATIONS,
            DbOptions::default(),
            StoreMetrics::default(),
        )?))
    }

    pub async fn open_postgres(conninfo: &str) -> Result<HubStore, StoreError> {
        Ok(HubStore::Postgres(pgsql::open(conninfo).await?))
    }

    pub fn engine(&self) -> &'static str {
        match self {
            HubStore::Sqlite(_) => "SQLite",
            HubStore::Postgres(_) => "PostgreSQL",
        }
    }

    pub async fn init_hub_id(&self, hub_id: String) -> Result<String, StoreError> {
        match self {
            HubStore::Sqlite(db) => {
                db.write(move |c| {
                    sql::set_hub_id(c, &hub_id, now())?;
                    sql::hub_id(c)?.ok_or(StoreError::NotFound)
                })
                .await
            }
            HubStore::Postgres(p) => pgsql::init_hub_id(p, &hub_id, now()).await,
        }
    }

    /// Records a new one-time token valid for `valid_secs`; returns its secret.
    pub async fn issue_token(&self, label: String, valid_secs: i64) -> Result<String, StoreError> {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| StoreError::Conflict("no randomness available".into()))?;
        let secret = B64.encode(bytes);
        let hash = secret_hash(&secret);
        let at = now();
        match self {
            HubStore::Sqlite(db) => {
                db.write(move |c| sql::add_token(c, &hash, &label, at, at + valid_secs))
                    .await?
            }
            HubStore::Postgres(p) => {
                pgsql::add_token(p, &hash, &label, at, at + valid_secs).await?
            }
        }
        Ok(secret)
    }

    pub async fn enrol(
        &self,
        secret: &str,
        site_id: String,
        public_key: Vec<u8>,
        name: String,
    ) -> Result<Result<String, TokenRefusal>, StoreError> {
        let hash = secret_hash(secret);
        match self {
            HubStore::Sqlite(db) => {
                db.write(move |c| sql::enrol(c, &hash, &site_id, &public_key, &name, now()))
                    .await
            }
            HubStore::Postgres(p) => {
                pgsql::enrol(p, &hash, &site_id, &public_key, &name, now()).await
            }
        }
    }

    pub async fn site(&self, site_id: String) -> Result<Option<SiteRow>, StoreError> {
        match self {
            HubStore::Sqlite(db) => db.read(move |c| sql::site(c, &site_id)).await,
            HubStore::Postgres(p) => pgsql::site(p, &site_id).await,
        }
    }

    pub async fn sites(&self) -> Result<Vec<SiteRow>, StoreError> {
        match self {
            HubStore::Sqlite(db) => db.read(sql::sites).await,
            HubStore::Postgres(p) => pgsql::sites(p).await,
        }
    }

    pub async fn revoke(&self, site_id: String) -> Result<bool, StoreError> {
        match self {
            HubStore::Sqlite(db) => db.write(move |c| sql::revoke(c, &site_id, now())).await,
            HubStore::Postgres(p) => pgsql::revoke(p, &site_id, now()).await,
        }
    }

    pub async fn touch(&self, site_id: String) -> Result<(), StoreError> {
        match self {
            HubStore::Sqlite(db) => db.write(move |c| sql::touch(c, &site_id, now())).await,
            HubStore::Postgres(p) => pgsql::touch(p, &site_id, now()).await,
        }
    }

    pub async fn continuity_copy(&self, uid: String) -> Result<Option<ContinuityCopy>, StoreError> {
        match self {
            HubStore::Sqlite(db) => db.read(move |c| sql::continuity_copy(c, &uid)).await,
            HubStore::Postgres(p) => pgsql::continuity_copy(p, &uid).await,
        }
    }

    /// Registers `uid`'s copy to `site_id` unless it is registered; returns the copy and
    /// its newest generation.
    pub async fn register_continuity(
        &self,
        uid: String,
        site_id: String,
        verifier_hash: String,
    ) -> Result<(Option<ContinuityCopy>, Latest), StoreError> {
        match self {
            HubStore::Sqlite(db) => {
                db.write(move |c| {
                    sql::register_continuity(c, &uid, &site_id, &verifier_hash, now())?;
                    Ok((
                        sql::continuity_copy(c, &uid)?,
                        sql::latest_generation(c, &uid)?,
                    ))
                })
                .await
            }
            HubStore::Postgres(p) => {
                pgsql::register(p, &uid, &site_id, &verifier_hash, now()).await
            }
        }
    }

    /// Gives the copy to a site that proves it holds the recovery key: as its only holder,
    /// or `alongside` the others.
    pub async fn claim(
        &self,
        uid: String,
        site_id: String,
        verifier_hash: String,
        alongside: bool,
    ) -> Result<Result<Latest, ClaimRefusal>, StoreError> {
        match self {
            HubStore::Sqlite(db) => {
                db.write(move |c| sql::claim(c, &uid, &site_id, &verifier_hash, alongside, now()))
                    .await
            }
            HubStore::Postgres(p) => {
                pgsql::claim(p, &uid, &site_id, &verifier_hash, alongside, now()).await
            }
        }
    }

    /// Records how far `holder` applied each origin's batches (and drops those nobody
    /// needs any more).
    pub async fn record_pulled(
        &self,
        uid: String,
        holder: String,
        cursors: Vec<(String, i64)>,
    ) -> Result<(), StoreError> {
        match self {
            HubStore::Sqlite(db) => {
                db.write(move |c| sql::record_pulled(c, &uid, &holder, &cursors, now()))
                    .await
            }
            HubStore::Postgres(p) => pgsql::record_pulled(p, &uid, &holder, &cursors).await,
        }
    }

    /// The chunk indexes held for a generation, and the newest committed generation.
    pub async fn generation_status(
        &self,
        uid: String,
        generation: i64,
    ) -> Result<(Vec<i64>, Latest), StoreError> {
        match self {
            HubStore::Sqlite(db) => {
                db.read(move |c| {
                    Ok((
                        sql::chunks_present(c, &uid, generation)?,
                        sql::latest_generation(c, &uid)?,
                    ))
                })
                .await
            }
            HubStore::Postgres(p) => pgsql::generation_status(p, &uid, generation).await,
        }
    }

    /// Stores a chunk of `origin`'s generation (idempotent).
    pub async fn put_chunk(
        &self,
        uid: String,
        origin: String,
        generation: i64,
        idx: i64,
        data: Vec<u8>,
    ) -> Result<Result<(), GenerationRefusal>, StoreError> {
        match self {
            HubStore::Sqlite(db) => {
                db.write(move |c| sql::put_chunk(c, &uid, &origin, generation, idx, &data))
                    .await
            }
            HubStore::Postgres(p) => {
                pgsql::put_chunk(p, &uid, &origin, generation, idx, &data).await
            }
        }
    }

    /// Commits `origin`'s generation; `covers` says, per site (the maker first), through
    /// which change it holds that site's changes: the batches no holder needs any more go
    /// in the same transaction.
    pub async fn commit_generation(
        &self,
        uid: String,
        origin: String,
        generation: i64,
        chunks: i64,
        covers: Vec<(String, i64)>,
    ) -> Result<Result<(), GenerationRefusal>, StoreError> {
        match self {
            HubStore::Sqlite(db) => {
                db.write(move |c| {
                    sql::commit_generation(c, &uid, &origin, generation, chunks, &covers, now())
                })
                .await
            }
            HubStore::Postgres(p) => {
                pgsql::commit_generation(p, &uid, &origin, generation, chunks, &covers, now()).await
            }
        }
    }

    /// Stores a batch (acknowledged once durable); the same batch again changes nothing.
    pub async fn put_batch(
        &self,
        uid: String,
        origin: String,
        after: i64,
        last: i64,
        data: Vec<u8>,
    ) -> Result<Result<(), BatchRefusal>, StoreError> {
        let sha =
            crate::store::backup::hex(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
        match self {
            HubStore::Sqlite(db) => {
                db.write(move |c| sql::put_batch(c, &uid, &origin, after, last, &sha, &data, now()))
                    .await
            }
            HubStore::Postgres(p) => {
                pgsql::put_batch(p, &uid, &origin, after, last, &sha, &data, now()).await
            }
        }
    }

    pub async fn batches(&self, uid: String) -> Result<Vec<BatchInfo>, StoreError> {
        match self {
            HubStore::Sqlite(db) => db.read(move |c| sql::batches(c, &uid)).await,
            HubStore::Postgres(p) => pgsql::batches(p, &uid).await,
        }
    }

    pub async fn batch(
        &self,
        uid: String,
        origin: String,
        last: i64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            HubStore::Sqlite(db) => db.read(move |c| sql::batch(c, &uid, &origin, last)).await,
            HubStore::Postgres(p) => pgsql::batch(p, &uid, &origin, last).await,
        }
    }

    /// Publishes a framework to every site (the same bytes again change nothing): its id,
    /// and whether it is new.
    pub async fn publish(
        &self,
        kind: String,
        name: String,
        uri: String,
        data: Vec<u8>,
    ) -> Result<(i64, bool), StoreError> {
        let sha =
            crate::store::backup::hex(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
        match self {
            HubStore::Sqlite(db) => {
                db.write(move |c| sql::publish(c, &kind, &name, &uri, &sha, &data, now()))
                    .await
            }
            HubStore::Postgres(p) => {
                pgsql::publish(p, &kind, &name, &uri, &sha, &data, now()).await
            }
        }
    }

    /// Stores a school's latest aggregates.
    pub async fn put_aggregates(
        &self,
        key: String,
        site_id: String,
        school: String,
        body: String,
    ) -> Result<(), StoreError> {
        match self {
            HubStore::Sqlite(db) => {
                db.write(move |c| sql::put_aggregates(c, &key, &site_id, &school, &body, now()))
                    .await
            }
            HubStore::Postgres(p) => {
                pgsql::put_aggregates(p, &key, &site_id, &school, &body, now()).await
            }
        }
    }

    pub async fn aggregates(&self) -> Result<Vec<sql::AggregateRow>, StoreError> {
        match self {
            HubStore::Sqlite(db) => db.read(sql::aggregates).await,
            HubStore::Postgres(p) => pgsql::aggregates(p).await,
        }
    }

    /// The continuity copies `site_id` holds.
    pub async fn copies_held_by(&self, site_id: String) -> Result<Vec<String>, StoreError> {
        match self {
            HubStore::Sqlite(db) => db.read(move |c| sql::copies_held_by(c, &site_id)).await,
            HubStore::Postgres(p) => pgsql::copies_held_by(p, &site_id).await,
        }
    }

    pub async fn publications(&self) -> Result<Vec<sql::Publication>, StoreError> {
        match self {
            HubStore::Sqlite(db) => db.read(sql::publications).await,
            HubStore::Postgres(p) => pgsql::publications(p).await,
        }
    }

    pub async fn publication(&self, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            HubStore::Sqlite(db) => db.read(move |c| sql::publication(c, id)).await,
            HubStore::Postgres(p) => pgsql::publication(p, id).await,
        }
    }

    pub async fn chunk(
        &self,
        uid: String,
        generation: i64,
        idx: i64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            HubStore::Sqlite(db) => db.read(move |c| sql::chunk(c, &uid, generation, idx)).await,
            HubStore::Postgres(p) => pgsql::chunk(p, &uid, generation, idx).await,
        }
    }
}

/// What every hub request handler shares.
#[derive(Clone, Debug)]
pub struct HubState {
    pub store: HubStore,
    pub hub_id: Arc<str>,
    pub ca_pem: Arc<String>,
    /// The hub's Ed25519 public key, base64url: it signs what the hub hands over by hand.
    pub hub_key: Arc<str>,
}

impl HubState {
    /// Opens (creating on first use) the hub's data directory: identity, CA, database.
    /// `postgres`: a PostgreSQL connection string; `None` keeps the hub in `hub.db`.
    pub async fn open(
        data_dir: &Path,
        names: &[String],
        postgres: Option<&str>,
    ) -> anyhow::Result<HubState> {
        std::fs::create_dir_all(data_dir)?;
        let identity = match crate::identity::load(data_dir) {
            Ok(i) => i,
            Err(_) if !data_dir.join(crate::identity::SITE_KEY).exists() => {
                crate::identity::generate(data_dir)?
            }
            Err(e) => return Err(e.into()),
        };
        let hub_id = identity.site_id.replacen("site-", "hub-", 1);
        crate::tls::ensure_ca(data_dir, &hub_id, names)?;
        crate::tls::ensure_server_cert(data_dir, names)?;
        let store = match postgres {
            Some(conninfo) => HubStore::open_postgres(conninfo).await?,
            None => HubStore::open_sqlite(data_dir)?,
        };
        let hub_id = store.init_hub_id(hub_id).await?;
        let ca_pem = std::fs::read_to_string(data_dir.join(crate::tls::CA_CERT))?;
        let hub_key = B64.encode(
            ring::signature::KeyPair::public_key(&crate::identity::key_pair(data_dir)?).as_ref(),
        );
        Ok(HubState {
            store,
            hub_id: Arc::from(hub_id.as_str()),
            ca_pem: Arc::new(ca_pem),
            hub_key: Arc::from(hub_key.as_str()),
        })
    }

    /// The token a site's operator types: the secret and this hub's CA fingerprint.
    pub async fn issue_token(
        &self,
        label: String,
        valid_secs: i64,
    ) -> anyhow::Result<EnrolmentToken> {
        let secret = self.store.issue_token(label, valid_secs).await?;
        let ca_fingerprint = super::ca_fingerprint(&self.ca_pem)
            .ok_or_else(|| anyhow::anyhow!("the hub's CA certificate cannot be read"))?;
        Ok(EnrolmentToken {
            secret,
            ca_fingerprint,
        })
    }
}

pub fn router(state: HubState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/federation/v1/ca.pem", get(ca_pem))
        .route("/federation/v1/enrol", post(enrol))
        .route("/federation/v1/site", get(whoami))
        .route("/federation/v1/publications", get(list_publications))
        .route(
            "/federation/v1/aggregates/{key}",
            axum::routing::put(put_aggregates),
        )
        .route("/federation/v1/publications/{id}", get(get_publication))
        .route(
            "/federation/v1/continuity/{uid}",
            axum::routing::put(register),
        )
        .route("/federation/v1/continuity/{uid}/claim", post(claim))
        .route(
            "/federation/v1/continuity/{uid}/generations/{generation}",
            get(generation_status),
        )
        .route(
            "/federation/v1/continuity/{uid}/generations/{generation}/commit",
            post(commit),
        )
        .route(
            "/federation/v1/continuity/{uid}/generations/{generation}/chunks/{idx}",
            get(get_chunk).put(put_chunk),
        )
        .route("/federation/v1/continuity/{uid}/batches", get(list_batches))
        .route(
            "/federation/v1/continuity/{uid}/pulled",
            axum::routing::put(put_pulled),
        )
        .route(
            "/federation/v1/continuity/{uid}/batches/{after}/{last}",
            axum::routing::put(put_batch),
        )
        .route(
            "/federation/v1/continuity/{uid}/batch/{origin}/{last}",
            get(get_batch),
        )
        .layer(axum::middleware::map_response(stamp_time))
        .with_state(state)
}

async fn stamp_time(mut response: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&now().to_string()) {
        response.headers_mut().insert(HUB_TIME_HEADER, v);
    }
    response
}

async fn ca_pem(State(state): State<HubState>) -> Response {
    (
        [("content-type", "application/x-pem-file")],
        state.ca_pem.as_str().to_string(),
    )
        .into_response()
}

/// A request as signed by a site, its signature not yet checked (that needs the key).
#[derive(Debug)]
pub struct Signed {
    pub site_id: String,
    pub time: i64,
    pub signature: String,
    pub method: String,
    pub path: String,
    pub body: Bytes,
}

impl Signed {
    fn verified_by(&self, public_key: &[u8]) -> bool {
        verify(
            public_key,
            &self.signature,
            &self.method,
            &self.path,
            self.time,
            &self.body,
        )
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok()
}

impl<S: Send + Sync> FromRequest<S> for Signed {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Signed, ApiError> {
        let (parts, body) = req.into_parts();
        let missing = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "signature_required",
                format!(
                    "a federation request is signed by its site: headers {SITE_HEADER}, \
                     {TIME_HEADER} and {SIGNATURE_HEADER}"
                ),
            )
        };
        let site_id = header(&parts.headers, SITE_HEADER).ok_or_else(missing)?;
        let signature = header(&parts.headers, SIGNATURE_HEADER).ok_or_else(missing)?;
        let time: i64 = header(&parts.headers, TIME_HEADER)
            .and_then(|t| t.parse().ok())
            .ok_or_else(missing)?;
        let skew = time - now();
        if skew.abs() > MAX_SKEW_SECS {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "clock_skew",
                format!(
                    "the site's clock is {skew} s away from the hub's (at most \
                     {MAX_SKEW_SECS} s); the hub's time is in {HUB_TIME_HEADER}"
                ),
            ));
        }
        let body = axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("a federation request is at most {MAX_BODY} bytes"),
            )
        })?;
        Ok(Signed {
            site_id: site_id.to_string(),
            time,
            signature: signature.to_string(),
            method: parts.method.as_str().to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string()),
            body,
        })
    }
}

/// The enrolled, unrevoked site that signed `signed`.
pub async fn authenticate(state: &HubState, signed: &Signed) -> Result<SiteRow, ApiError> {
    let site = state
        .store
        .site(signed.site_id.clone())
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "site_unknown",
                format!(
                    "{} is not enrolled with this hub: join it with a token from the hub's operator",
                    signed.site_id
                ),
            )
        })?;
    if !signed.verified_by(&site.public_key) {
        return Err(bad_signature());
    }
    if site.revoked_at.is_some() {
        return Err(revoked(&site.site_id));
    }
    state.store.touch(site.site_id.clone()).await?;
    Ok(site)
}

fn bad_signature() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "bad_signature",
        "the request's signature does not match the site's key",
    )
}

fn revoked(site_id: &str) -> ApiError {
    ApiError::forbidden(
        "site_revoked",
        format!("the hub's operator revoked {site_id}: it can no longer sync with this hub"),
    )
}

#[derive(Deserialize)]
struct EnrolBody {
    token: String,
    name: String,
    /// The site's Ed25519 public key, base64url.
    public_key: String,
}

async fn enrol(State(state): State<HubState>, signed: Signed) -> Result<Response, ApiError> {
    let body: EnrolBody = json_body(&signed.body)?;
    let public_key = bytes32(
        &body.public_key,
        "invalid_key",
        "public_key is an Ed25519 key in base64url",
    )?;
    if crate::identity::site_id(&public_key) != signed.site_id {
        return Err(ApiError::bad_request(
            "site_id_mismatch",
            "a site's id is derived from its key; this id is not that of this key",
        ));
    }
    if !signed.verified_by(&public_key) {
        return Err(bad_signature());
    }
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::bad_request(
            "invalid_name",
            "a site's name is 1 to 200 characters",
        ));
    }
    if !super::secret_is_valid(&body.token) {
        return Err(ApiError::bad_request(
            "invalid_token",
            "the token's secret is 32 bytes in base64url",
        ));
    }
    let outcome = state
        .store
        .enrol(
            &body.token,
            signed.site_id.clone(),
            public_key,
            name.to_string(),
        )
        .await?;
    match outcome {
        Ok(label) => {
            tracing::info!(site = %signed.site_id, %label, "site enrolled");
            Ok((
                StatusCode::CREATED,
                axum::Json(json!({
                    "hub_id": &*state.hub_id,
                    "hub_key": &*state.hub_key,
                    "site_id": signed.site_id,
                    "label": label,
                })),
            )
                .into_response())
        }
        Err(TokenRefusal::Unknown) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "token_unknown",
            "this hub did not issue this enrolment token",
        )),
        Err(TokenRefusal::Used) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "token_used",
            "this enrolment token was already used: ask the hub's operator for a new one",
        )),
        Err(TokenRefusal::Expired) => Err(ApiError::new(
            StatusCode::GONE,
            "token_expired",
            "this enrolment token has expired: ask the hub's operator for a new one",
        )),
        Err(TokenRefusal::Revoked) => Err(revoked(&signed.site_id)),
    }
}

/// `PUT aggregates/{key}`: a school's latest aggregates, refused unless every count is
/// suppressed or at least the smallest cell.
async fn put_aggregates(
    State(state): State<HubState>,
    axum::extract::Path(key): axum::extract::Path<String>,
    signed: Signed,
) -> Result<Response, ApiError> {
    let site = authenticate(&state, &signed).await?;
    if key.len() != 32 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(
            "invalid_key",
            "a school's aggregates key is 32 hex digits",
        ));
    }
    let a: super::aggregates::Aggregates = json_body(&signed.body)?;
    if let Some(why) = super::aggregates::check(&a) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "cell_too_small",
            why,
        ));
    }
    let body = serde_json::to_string(&a).unwrap_or_default();
    state
        .store
        .put_aggregates(key, site.site_id, a.school, body)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET publications`: what the federation publishes to its sites (without the bytes).
async fn list_publications(
    State(state): State<HubState>,
    signed: Signed,
) -> Result<Response, ApiError> {
    authenticate(&state, &signed).await?;
    let list = state.store.publications().await?;
    Ok(axum::Json(json!({ "publications": list })).into_response())
}

async fn get_publication(
    State(state): State<HubState>,
    axum::extract::Path(id): axum::extract::Path<i64>,
    signed: Signed,
) -> Result<Response, ApiError> {
    authenticate(&state, &signed).await?;
    let data = state
        .store
        .publication(id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(([("content-type", "application/ld+json")], data).into_response())
}

async fn whoami(State(state): State<HubState>, signed: Signed) -> Result<Response, ApiError> {
    let site = authenticate(&state, &signed).await?;
    Ok(axum::Json(json!({
        "hub_id": &*state.hub_id,
        "hub_key": &*state.hub_key,
        "site": site,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct VerifierBody {
    /// The restore verifier derived from the tenant's recovery key, base64url.
    verifier: String,
}

fn verifier_hash(body: &[u8]) -> Result<String, ApiError> {
    let b: VerifierBody = json_body(body)?;
    let v = bytes32(
        &b.verifier,
        "invalid_verifier",
        "the verifier is 32 bytes in base64url",
    )?;
    Ok(super::secret_hash(&B64.encode(v)))
}

/// A request body as JSON, or a clear error.
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

/// 32 bytes given in base64url, or the error `code` with `message`.
fn bytes32(text: &str, code: &'static str, message: &'static str) -> Result<Vec<u8>, ApiError> {
    B64.decode(text)
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| ApiError::bad_request(code, message))
}

/// The signing site and the hash of the verifier its body carries, for tenant `uid`.
async fn with_verifier(
    state: &HubState,
    signed: &Signed,
    uid: &str,
) -> Result<(SiteRow, String), ApiError> {
    let site = authenticate(state, signed).await?;
    check_uid(uid)?;
    Ok((site, verifier_hash(&signed.body)?))
}

fn no_copy() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_continuity_copy",
        "the hub holds no continuity copy for this tenant (or this recovery key)",
    )
}

fn latest_json(latest: &Latest) -> serde_json::Value {
    latest.as_ref().map_or(
        serde_json::Value::Null,
        |g| json!({"generation": g.generation, "chunks": g.chunks, "origin": g.origin}),
    )
}

/// `PUT continuity/{uid}`: the site that enabled a tenant's continuity copy registers it
/// (or finds it registered to itself, with the other sites that hold it).
async fn register(
    State(state): State<HubState>,
    axum::extract::Path(uid): axum::extract::Path<String>,
    signed: Signed,
) -> Result<Response, ApiError> {
    let (site, hash) = with_verifier(&state, &signed, &uid).await?;
    let (copy, latest) = state
        .store
        .register_continuity(uid, site.site_id.clone(), hash)
        .await?;
    let copy = must_hold(copy, &site.site_id)?;
    Ok(axum::Json(json!({
        "latest": latest_json(&latest),
        "holders": copy.holders,
    }))
    .into_response())
}

/// The copy, when `site_id` is one of its holders.
fn must_hold(copy: Option<ContinuityCopy>, site_id: &str) -> Result<ContinuityCopy, ApiError> {
    match copy {
        Some(c) if c.held_by(site_id) => Ok(c),
        Some(c) => Err(not_owner(&c.holders)),
        None => Err(no_copy()),
    }
}

fn not_owner(holders: &[String]) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not_owner",
        format!(
            "this tenant's continuity copy is held by {} (it was restored there): this \
             appliance's copy of the tenant is no longer one the federation keeps",
            if holders.is_empty() {
                "no site".to_string()
            } else {
                holders.join(", ")
            }
        ),
    )
}

fn check_uid(uid: &str) -> Result<(), ApiError> {
    if uid.len() == 32 && uid.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_tenant_uid",
            "a tenant's continuity id is 32 hex digits",
        ))
    }
}

#[derive(Deserialize)]
struct ClaimBody {
    /// Hold the copy beside the sites that hold it, instead of replacing them.
    #[serde(default)]
    alongside: bool,
}

/// `POST continuity/{uid}/claim`: a site restoring the tenant with its recovery key takes
/// the copy over, or holds it alongside the others.
async fn claim(
    State(state): State<HubState>,
    axum::extract::Path(uid): axum::extract::Path<String>,
    signed: Signed,
) -> Result<Response, ApiError> {
    let (site, hash) = with_verifier(&state, &signed, &uid).await?;
    let body: ClaimBody = json_body(&signed.body)?;
    let latest = state
        .store
        .claim(uid, site.site_id.clone(), hash, body.alongside)
        .await?
        .map_err(|r| match r {
            ClaimRefusal::NoCopy => no_copy(),
            ClaimRefusal::WrongKey => ApiError::forbidden(
                "wrong_recovery_key",
                "this is not the tenant's recovery key",
            ),
        })?;
    tracing::info!(site = %site.site_id, alongside = body.alongside,
        "continuity copy claimed for a restore");
    Ok(axum::Json(json!({"latest": latest_json(&latest)})).into_response())
}

/// The signed site, if it holds `uid`'s copy.
async fn holder_of(state: &HubState, signed: &Signed, uid: &str) -> Result<SiteRow, ApiError> {
    let site = authenticate(state, signed).await?;
    check_uid(uid)?;
    must_hold(
        state.store.continuity_copy(uid.to_string()).await?,
        &site.site_id,
    )?;
    Ok(site)
}

async fn generation_status(
    State(state): State<HubState>,
    axum::extract::Path((uid, generation)): axum::extract::Path<(String, i64)>,
    signed: Signed,
) -> Result<Response, ApiError> {
    holder_of(&state, &signed, &uid).await?;
    let (present, latest) = state.store.generation_status(uid, generation).await?;
    Ok(axum::Json(json!({"present": present, "latest": latest_json(&latest)})).into_response())
}

fn refused(r: GenerationRefusal) -> ApiError {
    match r {
        GenerationRefusal::Stale(latest) => ApiError::new(
            StatusCode::CONFLICT,
            "generation_stale",
            format!("the hub already committed generation {latest}, newer than this one"),
        ),
        GenerationRefusal::Committed => ApiError::new(
            StatusCode::CONFLICT,
            "generation_committed",
            "this generation is committed: its chunks no longer change",
        ),
        GenerationRefusal::Different => ApiError::new(
            StatusCode::CONFLICT,
            "chunk_differs",
            "the hub holds other bytes under this chunk's index",
        ),
        GenerationRefusal::Missing(missing) => ApiError::new(
            StatusCode::CONFLICT,
            "chunks_missing",
            format!("the hub does not hold chunks {missing:?} of this generation"),
        ),
        GenerationRefusal::Taken(other) => ApiError::new(
            StatusCode::CONFLICT,
            "generation_taken",
            format!("{other} is sending a generation of this number: seal the next one"),
        ),
    }
}

async fn put_chunk(
    State(state): State<HubState>,
    axum::extract::Path((uid, generation, idx)): axum::extract::Path<(String, i64, i64)>,
    signed: Signed,
) -> Result<Response, ApiError> {
    let site = holder_of(&state, &signed, &uid).await?;
    if generation < 1 || idx < 0 || signed.body.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_chunk",
            "generations count from 1, chunks from 0, and a chunk is not empty",
        ));
    }
    state
        .store
        .put_chunk(uid, site.site_id, generation, idx, signed.body.to_vec())
        .await?
        .map_err(refused)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct CommitBody {
    chunks: i64,
    /// The last change of the committing site the generation holds.
    #[serde(default)]
    covers: i64,
    /// Other sites' changes the generation holds: their batches through there go too.
    #[serde(default)]
    merged: Vec<Merged>,
}

#[derive(Deserialize)]
struct Merged {
    origin: String,
    through: i64,
}

async fn commit(
    State(state): State<HubState>,
    axum::extract::Path((uid, generation)): axum::extract::Path<(String, i64)>,
    signed: Signed,
) -> Result<Response, ApiError> {
    let site = holder_of(&state, &signed, &uid).await?;
    let body: CommitBody = json_body(&signed.body)?;
    if body.chunks < 1 || body.covers < 0 {
        return Err(ApiError::bad_request(
            "invalid_body",
            "a generation has at least one chunk, and covers changes from 0",
        ));
    }
    state
        .store
        .commit_generation(
            uid,
            site.site_id.clone(),
            generation,
            body.chunks,
            std::iter::once((site.site_id, body.covers))
                .chain(body.merged.into_iter().map(|m| (m.origin, m.through)))
                .collect(),
        )
        .await?
        .map_err(refused)?;
    Ok(axum::Json(json!({"committed": generation})).into_response())
}

/// `PUT continuity/{uid}/batches/{after}/{last}`: the owner's changes after `after` through
/// `last`, sealed. Answered once durable; the same batch again changes nothing.
async fn put_batch(
    State(state): State<HubState>,
    axum::extract::Path((uid, after, last)): axum::extract::Path<(String, i64, i64)>,
    signed: Signed,
) -> Result<Response, ApiError> {
    let site = holder_of(&state, &signed, &uid).await?;
    if after < 0 || last <= after || signed.body.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_batch",
            "a batch carries changes after `after` through `last` (last > after ≥ 0), and is not empty",
        ));
    }
    state
        .store
        .put_batch(uid, site.site_id, after, last, signed.body.to_vec())
        .await?
        .map_err(|r| match r {
            BatchRefusal::Differs => ApiError::new(
                StatusCode::CONFLICT,
                "batch_differs",
                "the hub holds other bytes for this batch",
            ),
            BatchRefusal::Gap(expected) => ApiError::new(
                StatusCode::CONFLICT,
                "batch_gap",
                format!(
                    "this batch does not follow the last one the hub holds from this site: \
                     the next must carry the changes after {expected}"
                ),
            ),
        })?;
    Ok(axum::Json(json!({"stored": last})).into_response())
}

async fn list_batches(
    State(state): State<HubState>,
    axum::extract::Path(uid): axum::extract::Path<String>,
    signed: Signed,
) -> Result<Response, ApiError> {
    holder_of(&state, &signed, &uid).await?;
    let batches = state.store.batches(uid).await?;
    Ok(axum::Json(json!({"batches": batches})).into_response())
}

#[derive(Deserialize)]
struct PulledBody {
    /// How far this holder applied each other origin's batches.
    cursors: Vec<Merged>,
}

/// `PUT continuity/{uid}/pulled`: a holder says how far it applied the others' batches;
/// those that no holder needs any more go.
async fn put_pulled(
    State(state): State<HubState>,
    axum::extract::Path(uid): axum::extract::Path<String>,
    signed: Signed,
) -> Result<Response, ApiError> {
    let site = holder_of(&state, &signed, &uid).await?;
    let body: PulledBody = json_body(&signed.body)?;
    if body
        .cursors
        .iter()
        .any(|c| c.through < 0 || c.origin.is_empty())
    {
        return Err(ApiError::bad_request(
            "invalid_body",
            "each cursor names an origin and a change number from 0",
        ));
    }
    let cursors: Vec<(String, i64)> = body
        .cursors
        .into_iter()
        .map(|c| (c.origin, c.through))
        .collect();
    state
        .store
        .record_pulled(uid, site.site_id, cursors)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_batch(
    State(state): State<HubState>,
    axum::extract::Path((uid, origin, last)): axum::extract::Path<(String, String, i64)>,
    signed: Signed,
) -> Result<Response, ApiError> {
    holder_of(&state, &signed, &uid).await?;
    let data = state
        .store
        .batch(uid, origin, last)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(([("content-type", "application/octet-stream")], data).into_response())
}

async fn get_chunk(
    State(state): State<HubState>,
    axum::extract::Path((uid, generation, idx)): axum::extract::Path<(String, i64, i64)>,
    signed: Signed,
) -> Result<Response, ApiError> {
    holder_of(&state, &signed, &uid).await?;
    let data = state
        .store
        .chunk(uid, generation, idx)
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(([("content-type", "application/octet-stream")], data).into_response())
}

/// What importing a batch folder did.
#[derive(Debug, Clone, PartialEq)]
pub enum Imported {
    /// The generation is now the hub's newest for this tenant.
    Committed { tenant_uid: String, generation: i64 },
    /// The hub already held this generation: nothing changed.
    AlreadyThere { tenant_uid: String, generation: i64 },
}

/// Imports a batch folder written by `ceredis federation export` (carried by hand): the
/// signature must be an enrolled, unrevoked site's, every chunk must match its SHA-256, and
/// the site must own the tenant's copy. Importing the same folder again changes nothing.
pub async fn import_batch(store: &HubStore, dir: &Path) -> Result<Imported, ApiError> {
    use super::continuity::{
        BATCH_FILE, BATCH_FORMAT, BATCH_SIGNATURE, Batch, batch_signing_input,
    };
    let bad = |why: String| ApiError::bad_request("invalid_batch", why);
    let json = std::fs::read(dir.join(BATCH_FILE))
        .map_err(|e| bad(format!("{}: {e}", dir.join(BATCH_FILE).display())))?;
    let signature = std::fs::read_to_string(dir.join(BATCH_SIGNATURE)).map_err(|e| {
        bad(format!(
            "{}: {e} (an export that did not finish has no signature)",
            dir.join(BATCH_SIGNATURE).display()
        ))
    })?;
    let batch: Batch = serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
    if batch.format != BATCH_FORMAT {
        return Err(bad(format!("unknown batch format `{}`", batch.format)));
    }
    check_uid(&batch.tenant_uid)?;
    let site = store.site(batch.site_id.clone()).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "site_unknown",
            format!("{} is not enrolled with this hub", batch.site_id),
        )
    })?;
    let sig = B64.decode(signature.trim()).unwrap_or_default();
    let valid =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &site.public_key)
            .verify(&batch_signing_input(&json), &sig)
            .is_ok();
    if !valid {
        return Err(bad_signature());
    }
    if site.revoked_at.is_some() {
        return Err(revoked(&site.site_id));
    }
    if batch.chunks < 1 || batch.chunk_sha256.len() != batch.chunks as usize {
        return Err(bad("the batch lists a wrong number of chunks".into()));
    }
    let uid = batch.tenant_uid.clone();
    let (copy, latest) = store
        .register_continuity(
            uid.clone(),
            site.site_id.clone(),
            batch.verifier_hash.clone(),
        )
        .await?;
    must_hold(copy, &site.site_id)?;
    if latest.is_some_and(|g| g.generation == batch.generation && g.chunks == batch.chunks) {
        return Ok(Imported::AlreadyThere {
            tenant_uid: uid,
            generation: batch.generation,
        });
    }
    for (idx, expected) in batch.chunk_sha256.iter().enumerate() {
        let path = dir.join(format!("chunk-{idx:06}"));
        let data = std::fs::read(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let sha =
            crate::store::backup::hex(ring::digest::digest(&ring::digest::SHA256, &data).as_ref());
        if &sha != expected {
            return Err(bad(format!(
                "{} does not match its SHA-256",
                path.display()
            )));
        }
        store
            .put_chunk(
                uid.clone(),
                site.site_id.clone(),
                batch.generation,
                idx as i64,
                data,
            )
            .await?
            .map_err(refused)?;
    }
    store
        .commit_generation(
            uid.clone(),
            site.site_id.clone(),
            batch.generation,
            batch.chunks,
            vec![(site.site_id.clone(), batch.covers)],
        )
        .await?
        .map_err(refused)?;
    tracing::info!(site = %site.site_id, generation = batch.generation, "batch imported");
    Ok(Imported::Committed {
        tenant_uid: uid,
        generation: batch.generation,
    })
}
