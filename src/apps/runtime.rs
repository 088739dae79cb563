//! Running apps: one wasmtime engine for the appliance, components compiled and
//! pre-instantiated once per version ([`ProxyPre`], keyed by the component's SHA-256), and
//! a fresh instance from the pooling allocator for every request.
//!
//! Limits that are always on: the instance's memory, tables and instances
//! ([`StoreLimits`]), a wall-clock deadline checked at every epoch tick (the engine's epoch
//! advances every [`TICK`]; at each tick a running app yields to other requests, and past
//! its deadline it traps), optional fuel, a cap on requests running at once per tenant,
//! and caps on request and response sizes. The WASI context has no preopened directory,
//! no environment, no arguments, no stdio, no network (sockets and name lookups refused),
//! no outgoing HTTP, and clocks rounded to the second unless `clock/precise` is granted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::calls::{self, CallCtx};
use super::{Capability, Quotas};

/// How often the engine's epoch advances: the granularity of deadlines and of yielding.
pub const TICK: Duration = Duration::from_millis(2);

/// The host's own bounds, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    /// Requests of one tenant's apps running at once; more wait up to their timeout.
    pub per_tenant: usize,
    /// Instances alive at once in the whole appliance (the pool's size).
    pub instances: u32,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
}

impl Default for HostLimits {
    fn default() -> HostLimits {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        HostLimits {
            // One tenant can never take every core.
            per_tenant: (cores / 2).max(1),
            instances: 64,
            max_request_bytes: 1 << 20,
            max_response_bytes: 4 << 20,
        }
    }
}

/// Why an app request did not produce the app's response.
#[derive(Debug, thiserror::Error)]
pub enum AppFailure {
    #[error("the app could not be started: {0}")]
    Unavailable(String),
    #[error("too many requests to this school's apps are running; try again in a moment")]
    Busy,
    #[error("the app did not answer within {0} ms")]
    Timeout(u32),
    #[error("the app stopped with an error: {0}")]
    Trap(String),
    #[error("the app's response is larger than {0} bytes")]
    ResponseTooLarge(usize),
    #[error("the request body is larger than {0} bytes")]
    RequestTooLarge(usize),
    #[error("the app sent an invalid response: {0}")]
    BadResponse(String),
}

impl AppFailure {
    /// A stable label for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            AppFailure::Unavailable(_) => "app_unavailable",
            AppFailure::Busy => "app_busy",
            AppFailure::Timeout(_) => "app_timeout",
            AppFailure::Trap(_) => "app_failed",
            AppFailure::ResponseTooLarge(_) => "app_response_too_large",
            AppFailure::RequestTooLarge(_) => "body_too_large",
            AppFailure::BadResponse(_) => "app_bad_response",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppFailure::Unavailable(_) | AppFailure::Busy => StatusCode::SERVICE_UNAVAILABLE,
            AppFailure::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            AppFailure::RequestTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

/// The state of one request's store.
pub struct AppCtx {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: NoOutgoing,
    limits: StoreLimits,
    deadline: Instant,
    pub(crate) call: CallCtx,
}

impl WasiView for AppCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for AppCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// Apps have no network: every outgoing HTTP request is refused.
struct NoOutgoing;

impl WasiHttpHooks for NoOutgoing {
    fn send_request(
        &mut self,
        _request: axum::http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        axum::http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Clocks rounded to the second: an app cannot time other requests finely.
struct CoarseWall;
impl wasmtime_wasi::HostWallClock for CoarseWall {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Duration::from_secs(now.as_secs())
    }
}

struct CoarseMonotonic(Instant);
impl wasmtime_wasi::HostMonotonicClock for CoarseMonotonic {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        self.0.elapsed().as_secs() * 1_000_000_000
    }
}

/// What the app is asked: `path` is the path and query under the app's root; `headers`
/// are only those the app may see.
#[derive(Debug)]
pub struct AppRequest {
    pub method: axum::http::Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// One engine, one linker, the compiled apps and the per-tenant slots.
pub struct AppHost {
    engine: Engine,
    linker: Linker<AppCtx>,
    compiled: Mutex<HashMap<String, ProxyPre<AppCtx>>>,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
    usage: Mutex<HashMap<String, AppUsage>>,
    pub limits: HostLimits,
}

/// One tenant's [`Usage`] by app name and outcome.
pub type AppUsage = BTreeMap<(String, &'static str), Usage>;

/// Requests one app of one tenant served with one outcome since the appliance started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub requests: u64,
    pub seconds: f64,
}

impl std::fmt::Debug for AppHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppHost")
            .field("limits", &self.limits)
            .finish()
    }
}

impl AppHost {
    pub fn new(limits: HostLimits) -> wasmtime::Result<AppHost> {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(limits.instances)
            .total_core_instances(limits.instances * 8)
            .total_memories(limits.instances * 2)
            .total_tables(limits.instances * 4)
            .total_stacks(limits.instances)
            .max_memory_size(super::MAX_MEMORY_MIB as usize * (1 << 20))
            .table_elements(20_000)
            .max_core_instances_per_component(16)
            .max_memories_per_component(2)
            .max_tables_per_component(4)
            // Reset a slot by zeroing what an instance touched instead of handing the pages
            // back to the kernel: the next instance does not fault them in again.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(256 << 10)
            // Where the kernel can say which pages an instance dirtied (Linux ≥ 6.7), only
            // those are reset.
            .pagemap_scan(Enabled::Auto);
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .consume_fuel(true)
            .max_wasm_stack(512 * 1024)
            .async_stack_size(2 << 20)
            // Memory comes back zeroed for the next instance: nothing leaks between them.
            .memory_init_cow(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::<AppCtx>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        calls::App::add_to_linker::<AppCtx, HasSelf<AppCtx>>(&mut linker, |s| s)?;
        let ticker = engine.weak();
        std::thread::Builder::new()
            .name("app-epoch".into())
            .spawn(move || {
                while let Some(engine) = ticker.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })?;
        Ok(AppHost {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            usage: Mutex::new(HashMap::new()),
            limits,
        })
    }

    /// Compiles a component and checks that it links: it must export
    /// `wasi:http/incoming-handler` and import nothing but WASI and `ceredis:app`.
    /// Cached by `sha256` (a version's hash), so a request never compiles.
    pub async fn prepare(
        &self,
        sha256: &str,
        bytes: Vec<u8>,
    ) -> Result<ProxyPre<AppCtx>, AppFailure> {
        if let Some(pre) = self.cached(sha256) {
            return Ok(pre);
        }
        let engine = self.engine.clone();
        let linker = self.linker.clone();
        let pre = tokio::task::spawn_blocking(move || -> Result<ProxyPre<AppCtx>, String> {
            let component = Component::new(&engine, &bytes).map_err(|e| {
                format!("this file is not a WebAssembly component this host can run: {e}")
            })?;
            let instance = linker
                .instantiate_pre(&component)
                .map_err(|e| format!("the component needs what this host does not offer: {e}"))?;
            ProxyPre::new(instance).map_err(|e| {
                format!("the component does not export wasi:http/incoming-handler: {e}")
            })
        })
        .await
        .map_err(|e| AppFailure::Unavailable(e.to_string()))?
        .map_err(AppFailure::Unavailable)?;
        if let Ok(mut map) = self.compiled.lock() {
            map.insert(sha256.to_string(), pre.clone());
        }
        Ok(pre)
    }

    pub fn cached(&self, sha256: &str) -> Option<ProxyPre<AppCtx>> {
        self.compiled.lock().ok()?.get(sha256).cloned()
    }

    /// Forgets compiled versions no installed app uses any more.
    pub fn retain(&self, live: &BTreeSet<String>) {
        if let Ok(mut map) = self.compiled.lock() {
            map.retain(|k, _| live.contains(k));
        }
    }

    /// Counts one request of `tenant`'s `app` that ended with `outcome` (`ok` or a
    /// failure's code), for the tenant's metrics.
    pub fn record(&self, tenant: &str, app: &str, outcome: &'static str, took: Duration) {
        let mut map = match self.usage.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        let u = map
            .entry(tenant.to_string())
            .or_default()
            .entry((app.to_string(), outcome))
            .or_default();
        u.requests += 1;
        u.seconds += took.as_secs_f64();
    }

    /// What [`AppHost::record`] counted for `tenant`, by app and outcome.
    pub fn usage(&self, tenant: &str) -> AppUsage {
        match self.usage.lock() {
            Ok(m) => m.get(tenant).cloned().unwrap_or_default(),
            Err(poisoned) => poisoned
                .into_inner()
                .get(tenant)
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn slots_of(&self, tenant: &str) -> Arc<Semaphore> {
        let mut map = match self.slots.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(tenant.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_tenant)))
            .clone()
    }

    /// Serves one request with a fresh instance of `pre`.
    pub async fn serve(
        &self,
        pre: ProxyPre<AppCtx>,
        call: CallCtx,
        quotas: Quotas,
        request: AppRequest,
    ) -> Result<(StatusCode, HeaderMap, Bytes), AppFailure> {
        let AppRequest {
            method,
            path,
            headers,
            body,
        } = request;
        if body.len() > self.limits.max_request_bytes {
            return Err(AppFailure::RequestTooLarge(self.limits.max_request_bytes));
        }
        let timeout = Duration::from_millis(quotas.timeout_ms as u64);
        let started = Instant::now();
        let deadline = started + timeout;
        let slots = self.slots_of(&call.tenant.slug);
        let _permit = tokio::time::timeout(timeout, slots.acquire_owned())
            .await
            .map_err(|_| AppFailure::Busy)?
            .map_err(|_| AppFailure::Busy)?;
        let precise = call.grants.contains(&Capability::PreciseClock);
        let mut wasi = WasiCtxBuilder::new();
        if !precise {
            wasi.wall_clock(CoarseWall)
                .monotonic_clock(CoarseMonotonic(Instant::now()));
        }
        let ctx = AppCtx {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: NoOutgoing,
            limits: StoreLimitsBuilder::new()
                .memory_size(quotas.memory_mib as usize * (1 << 20))
                .table_elements(20_000)
                .instances(16)
                .tables(8)
                .memories(4)
                .trap_on_grow_failure(true)
                .build(),
            deadline,
            call,
        };
        let mut store = Store::new(&self.engine, ctx);
        store.limiter(|s| &mut s.limits);
        store
            .set_fuel(quotas.fuel.unwrap_or(u64::MAX))
            .map_err(|e| AppFailure::Unavailable(e.to_string()))?;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|cx| {
            if Instant::now() >= cx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });

        let mut request = Request::builder()
            .method(method)
            .uri(format!("https://app.invalid{path}"))
            .body(Full::new(body))
            .map_err(|e| AppFailure::BadResponse(e.to_string()))?;
        *request.headers_mut() = headers;
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Https, request)
            .map_err(|e| AppFailure::Unavailable(e.to_string()))?;
        let out = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(|e| AppFailure::Unavailable(e.to_string()))?;
        // The instance runs in this request's own task: no spawn and no wake-up from
        // another thread. It never outlives its request: once the response is read, or
        // when the client goes away and this future is dropped, the call is dropped too.
        let call = std::pin::pin!(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        });
        let max = self.limits.max_response_bytes;
        let answer = std::pin::pin!(async move {
            match receiver.await {
                Ok(Ok(response)) => Some(collect(response, max, quotas.timeout_ms).await),
                Ok(Err(code)) => Some(Err(AppFailure::BadResponse(format!("{code:?}")))),
                // The app returned (or trapped) without answering.
                Err(_) => None,
            }
        });
        let outcome = tokio::time::timeout_at(deadline.into(), async {
            let (mut call, mut answer) = (call, answer);
            let mut returned = None;
            let answered = loop {
                tokio::select! {
                    biased;
                    a = &mut answer => break a,
                    r = &mut call, if returned.is_none() => returned = Some(r),
                }
            };
            if let Some(result) = answered {
                return result;
            }
            let returned = match returned {
                Some(r) => r,
                None => call.await,
            };
            Err(match returned {
                Ok(()) => {
                    AppFailure::BadResponse("the app returned without sending a response".into())
                }
                Err(e) => trap(e, quotas.timeout_ms),
            })
        })
        .await;
        match outcome {
            Ok(result) => result,
            Err(_) => Err(AppFailure::Timeout(quotas.timeout_ms)),
        }
    }
}

/// Reads a response body whole, refusing more than `max` bytes.
async fn collect(
    response: axum::http::Response<HyperOutgoingBody>,
    max: usize,
    timeout_ms: u32,
) -> Result<(StatusCode, HeaderMap, Bytes), AppFailure> {
    let (parts, mut body) = response.into_parts();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e {
            wasmtime_wasi_http::Error::HttpResponseTimeout => AppFailure::Timeout(timeout_ms),
            other => AppFailure::Trap(format!("{other:?}")),
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(AppFailure::ResponseTooLarge(max));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok((parts.status, parts.headers, Bytes::from(out)))
}

fn trap(e: wasmtime::Error, timeout_ms: u32) -> AppFailure {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        return match trap {
            wasmtime::Trap::Interrupt => AppFailure::Timeout(timeout_ms),
            wasmtime::Trap::OutOfFuel => AppFailure::Trap("it ran out of fuel".into()),
            wasmtime::Trap::StackOverflow => AppFailure::Trap("its stack overflowed".into()),
            other => AppFailure::Trap(other.to_string()),
        };
    }
    AppFailure::Trap(format!("{e:#}").lines().next().unwrap_or_default().into())
}

/// Response headers an app may set; everything else (cookies, security policies, CORS,
/// caching of other origins…) is the host's.
pub const RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-language",
    "cache-control",
    "etag",
    "last-modified",
    "location",
    "vary",
];

/// The response the browser gets: the app's status, body and allowed headers, with the
/// host's policy on top. Apps run no script and submit forms only to themselves
/// (`form_action`: the app's root URL as the browser sees it).
pub fn to_response(
    status: StatusCode,
    app_headers: &HeaderMap,
    body: Bytes,
    form_action: &str,
) -> Response<Body> {
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    let h = out.headers_mut();
    for name in RESPONSE_HEADERS {
        for value in app_headers.get_all(*name) {
            if *name == "location" && !local_location(value) {
                continue;
            }
            h.append(HeaderName::from_static(name), value.clone());
        }
    }
    if !h.contains_key(header::CONTENT_TYPE) {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    let policy = format!(
        "default-src 'self'; script-src 'none'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; media-src 'self' data:; connect-src 'none'; object-src 'none'; \
         base-uri 'none'; form-action {form_action}; frame-ancestors 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&policy) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    out
}

/// A redirect stays on the appliance: a path starting with one `/`.
fn local_location(value: &HeaderValue) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.starts_with('/') && !v.starts_with("//") && !v.contains('\\'))
}
