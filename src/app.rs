//! `AppState` — cheap clonable handles shared by every request — and the router.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;

use crate::auth::password::{Hasher, PasswordError};
use crate::auth::throttle::LoginThrottle;
use crate::auth::{self, CookieNames};
use crate::config::Config;
use crate::metrics::{self, Metrics};
use crate::store::{self, Database, DbOptions, StoreError, StoreMetrics};
use crate::tenant::Tenants;
use crate::tenant::roster::RosterJobs;
use crate::{http, tls};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub system: Database,
    pub tenants: Tenants,
    pub hasher: Hasher,
    pub throttle: Arc<LoginThrottle>,
    pub metrics: Arc<Metrics>,
    pub cookies: CookieNames,
    pub roster_jobs: RosterJobs,
    pub export_jobs: crate::http::research::ExportJobs,
    /// The WebAssembly host of the tenants' apps.
    pub apps: Arc<crate::apps::runtime::AppHost>,
    pub app_uploads: crate::http::apps::PendingUploads,
    /// Transfers of the automatic federation sync under way.
    pub sync_board: crate::federation::sync::Board,
    pub ca_pem: Arc<String>,
    ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("data_dir", &self.config.data_dir)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0} is not an initialised data directory: run `ceredis init` first")]
    NotInitialised(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("the app host could not start: {0}")]
    Apps(String),
}

pub const SYSTEM_DB: &str = "system.db";

pub fn db_options(config: &Config) -> DbOptions {
    DbOptions {
        read_connections: config.store.read_connections,
        max_batch: config.store.max_batch,
        ..DbOptions::default()
    }
}

/// Opens the system database of an existing data directory.
pub fn open_system(config: &Config, metrics: StoreMetrics) -> Result<Database, OpenError> {
    let path = config.data_dir.join(SYSTEM_DB);
    if !path.exists() {
        return Err(OpenError::NotInitialised(config.data_dir.clone()));
    }
    Ok(Database::open(
        "system",
        &path,
        store::system::MIGRATIONS,
        db_options(config),
        metrics,
    )?)
}

impl AppState {
    pub fn open(config: Config) -> Result<AppState, OpenError> {
        let store_metrics = StoreMetrics::default();
        let system = open_system(&config, store_metrics.clone())?;
        let tenants = Tenants::new(
            &config.data_dir,
            system.clone(),
            db_options(&config),
            store_metrics.clone(),
            &config.site_url(),
        );
        let ca_pem =
            std::fs::read_to_string(config.data_dir.join(tls::CA_CERT)).unwrap_or_default();
        Ok(AppState {
            hasher: Hasher::new(&config.auth)?,
            throttle: Arc::new(LoginThrottle::new(&config.auth)),
            metrics: Arc::new(Metrics::new(&store_metrics)),
            cookies: auth::cookie_names(config.insecure_http),
            roster_jobs: RosterJobs::default(),
            export_jobs: Default::default(),
            app_uploads: Default::default(),
            sync_board: Default::default(),
            apps: Arc::new(
                crate::apps::runtime::AppHost::new(crate::apps::runtime::HostLimits::default())
                    .map_err(|e| OpenError::Apps(format!("{e:#}")))?,
            ),
            ca_pem: Arc::new(ca_pem),
            ready: Arc::new(AtomicBool::new(false)),
            config: Arc::new(config),
            system,
            tenants,
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// The whole HTTP application, testable without sockets.
pub fn router(state: AppState) -> Router {
    let (routes, _) = http::routes(&state);
    routes
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::session_layer,
        ))
        .layer(middleware::from_fn(http::html_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            http::security_headers,
        ))
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes))
        .with_state(state)
}
