//! Prometheus metrics, in a registry owned by `AppState` (no global recorder): per-route
//! request counts and latency, plus the storage writer's queue depth, group-commit batch
//! sizes and commit durations (registered by `store::StoreMetrics`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::app::AppState;
use crate::store::StoreMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnly {
    pub method: String,
    pub route: String,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteLabel, Counter>,
    pub latency: Family<RouteOnly, Histogram, fn() -> Histogram>,
    pub logins: Family<LoginLabel, Counter>,
    pub apps: Family<AppLabel, Counter>,
    pub app_latency: Histogram,
    pub continuity: Family<AppLabel, Counter>,
    pub pulls: Family<AppLabel, Counter>,
    pub pulled_batches: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabel {
    pub outcome: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new(store: &StoreMetrics) -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RouteLabel, Counter>::default();
        let latency =
            Family::<RouteOnly, Histogram, fn() -> Histogram>::new_with_constructor(latency);
        let logins = Family::<LoginLabel, Counter>::default();
        registry.register(
            "ceredis_http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "ceredis_http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "ceredis_logins",
            "Login attempts by outcome",
            logins.clone(),
        );
        let apps = Family::<AppLabel, Counter>::default();
        registry.register(
            "ceredis_app_requests",
            "Tenant app requests by outcome (ok, app_failed, app_timeout, app_busy, …)",
            apps.clone(),
        );
        let app_latency = self::latency();
        registry.register(
            "ceredis_app_request_duration_seconds",
            "Tenant app requests, from instantiation to the response's last byte",
            app_latency.clone(),
        );
        let continuity = Family::<AppLabel, Counter>::default();
        registry.register(
            "ceredis_continuity_pushes",
            "Automatic pushes of tenants' continuity copies to the federation hub, by outcome (ok, failed)",
            continuity.clone(),
        );
        let pulls = Family::<AppLabel, Counter>::default();
        registry.register(
            "ceredis_continuity_pulls",
            "Automatic pulls of the other holders' batches from the federation hub, by outcome (ok, failed)",
            pulls.clone(),
        );
        let pulled_batches = Counter::default();
        registry.register(
            "ceredis_continuity_batches_pulled",
            "Batches of other sites applied here by automatic pulls",
            pulled_batches.clone(),
        );
        store.register(&mut registry);
        Metrics {
            continuity,
            pulls,
            pulled_batches,
            apps,
            app_latency,
            registry,
            requests,
            latency,
            logins,
        }
    }

    /// Counts one app request by outcome, and times it.
    pub fn app_request(&self, outcome: &'static str, took: std::time::Duration) {
        self.apps.get_or_create(&AppLabel { outcome }).inc();
        self.app_latency.observe(took.as_secs_f64());
    }

    pub fn continuity_push(&self, outcome: &'static str) {
        self.continuity.get_or_create(&AppLabel { outcome }).inc();
    }

    /// An automatic pull: its outcome and the batches it applied.
    pub fn continuity_pull(&self, outcome: &'static str, batches: usize) {
        self.pulls.get_or_create(&AppLabel { outcome }).inc();
        self.pulled_batches.inc_by(batches as u64);
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        text
    }
}

/// Counts and times every routed request under its route template (never the raw path,
/// which would put tenant names and ids in label values without bound).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state
        .metrics
        .latency
        .get_or_create(&RouteOnly {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&RouteLabel {
            method,
            route,
            status,
        })
        .inc();
    response
}
