//! Tenant apps: what a request to a trivial app costs, side by side with a native axum
//! handler serving the same response in the same process and run, and how long a cold
//! install of the quiz takes to its first response.
//!
//! 1. Guest part: a fresh instance (pooling allocator, cached `ProxyPre`) and one call of
//!    `plugins/hello`, through `AppHost::serve` with every limit on. p50 / p99.
//! 2. Over HTTP on loopback: `/native` (an axum handler answering `ok`) and `/app` (the same
//!    router handing the request to `plugins/hello`): sequential p50 / p99, then requests/s
//!    with 8 concurrent clients. The ratio app / native is the overhead.
//! 3. Cold install → first response: compile and link-check `plugins/quiz`, then serve its
//!    first page, on a host with nothing cached (the component bytes already in memory).
//! 4. Noisy neighbour: school B's p50 / p99 over HTTP alone, then while school A's app
//!    holds most of its memory cap and burns CPU to its deadline in every request A may
//!    run; the ratio is the damage A does to B (target: p99 ≤ ×2).
//!
//! `cargo bench --bench apps` (builds `plugins/` for wasm32-wasip2 first);
//! `APPS_BENCH_PARTS=guest,noisy` runs only those parts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use ceredis::apps::Quotas;
use ceredis::apps::calls::CallCtx;
use ceredis::apps::runtime::{AppHost, AppRequest, HostLimits};
use ceredis::http::i18n::Lang;
use ceredis::store::tenant::User;
use ceredis::store::{Database, DbOptions, StoreMetrics};
use ceredis::tenant::{Role, TenantHandle};

fn components() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins");
    let target = std::env::var_os("PLUGINS_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/ceredis/plugins-target")
        });
    let ok = Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "building plugins/ failed: rustup target add wasm32-wasip2"
    );
    target.join("wasm32-wasip2/release")
}

fn call_ctx(tenant: &TenantHandle) -> CallCtx {
    CallCtx {
        tenant: tenant.clone(),
        user: User {
            id: 1,
            sourced_id: None,
            username: "eleve".into(),
            given_name: "Léa".into(),
            family_name: "Robert".into(),
            email: None,
            role: Role::Student,
            active: true,
            password_hash: None,
            must_change_password: false,
            agent_name: "a1".into(),
        },
        app: "hello".into(),
        app_title: "Hello".into(),
        grants: BTreeSet::new(),
        storage_quota: 0,
        pseudonym: "u_bench".into(),
        lang: Lang::Fr,
        log_lines: 0,
        log_dropped: 0,
    }
}

fn request(path: &str) -> AppRequest {
    AppRequest {
        method: Method::GET,
        path: path.into(),
        headers: HeaderMap::new(),
        body: Bytes::new(),
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[derive(Clone)]
struct Bench {
    host: Arc<AppHost>,
    pre: wasmtime_wasi_http::p2::bindings::ProxyPre<ceredis::apps::runtime::AppCtx>,
    tenant: TenantHandle,
}

async fn native() -> impl IntoResponse {
    ([("content-type", "text/plain; charset=utf-8")], "ok")
}

async fn via_app(State(b): State<Bench>) -> impl IntoResponse {
    match b
        .host
        .serve(
            b.pre.clone(),
            call_ctx(&b.tenant),
            Quotas::default(),
            request("/"),
        )
        .await
    {
        Ok((status, headers, body)) => (status, headers, body).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

async fn sequential(client: &reqwest::Client, url: &str, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = client.get(url).send().await.expect("request");
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.expect("body");
        assert_eq!(&body[..], b"ok");
        times.push(t.elapsed());
    }
    times.sort();
    times
}

/// Requests one after another for `span`; their sorted times.
async fn sequential_for(client: &reqwest::Client, url: &str, span: Duration) -> Vec<Duration> {
    let mut times = Vec::new();
    let started = Instant::now();
    while started.elapsed() < span {
        let t = Instant::now();
        let r = client.get(url).send().await.expect("request");
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.expect("body");
        assert_eq!(&body[..], b"ok");
        times.push(t.elapsed());
    }
    times.sort();
    times
}

async fn throughput(client: &reqwest::Client, url: &str, total: usize, clients: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url) = (client.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            for _ in 0..total / clients {
                let r = client.get(&url).send().await.expect("request");
                assert_eq!(r.status(), 200);
                r.bytes().await.expect("body");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// Which parts to run: `APPS_BENCH_PARTS=guest,http,install,noisy` (default: all).
fn wanted(part: &str) -> bool {
    std::env::var("APPS_BENCH_PARTS").map_or(true, |v| v.split(',').any(|p| p.trim() == part))
}

fn tenant(dir: &std::path::Path, slug: &str) -> TenantHandle {
    let db = Database::open(
        slug,
        &dir.join(format!("{slug}.db")),
        ceredis::store::tenant::MIGRATIONS,
        DbOptions::default(),
        StoreMetrics::default(),
    )
    .expect("tenant database");
    TenantHandle {
        slug: slug.into(),
        name: slug.into(),
        db,
        home_page: Arc::from(format!("https://{slug}.example/").as_str()),
    }
}

fn main() {
    let dir = components();
    let hello = std::fs::read(dir.join("hello.wasm")).expect("hello.wasm");
    let quiz = std::fs::read(dir.join("quiz.wasm")).expect("quiz.wasm");
    let attacks = std::fs::read(dir.join("attacks.wasm")).expect("attacks.wasm");
    let data = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let tenant = tenant(data.path(), "bench");
        let host = Arc::new(AppHost::new(HostLimits::default()).expect("app host"));
        let sha = ceredis::apps::component_hash(&hello);
        let pre = host.prepare(&sha, hello).await.expect("hello compiles");
        let bench = Bench {
            host: host.clone(),
            pre,
            tenant,
        };
        if wanted("guest") {
            guest(&bench).await;
        }
        if wanted("http") {
            http(&bench).await;
        }
        if wanted("install") {
            cold_install(&bench, &quiz).await;
        }
        if wanted("noisy") {
            noisy(&bench, data.path(), attacks).await;
        }
    });
}

/// Part 1, the guest part: `AppHost::serve` alone, one request after another.
async fn guest(b: &Bench) {
    let n = 20_000;
    for _ in 0..500 {
        serve_hello(b).await;
    }
    let mut times = Vec::with_capacity(n);
    let all = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        serve_hello(b).await;
        times.push(t.elapsed());
    }
    let rate = n as f64 / all.elapsed().as_secs_f64();
    times.sort();
    println!(
        "guest part: fresh instance + one call of plugins/hello, {n} requests, every limit on"
    );
    println!(
        "  p50 {:.1} µs   p99 {:.1} µs   {:.0} requests/s on one task",
        us(pct(&times, 0.5)),
        us(pct(&times, 0.99)),
        rate
    );
}

async fn serve_hello(b: &Bench) {
    let (status, _, body) = b
        .host
        .serve(
            b.pre.clone(),
            call_ctx(&b.tenant),
            Quotas::default(),
            request("/"),
        )
        .await
        .expect("serve");
    assert!(status == 200 && &body[..] == b"ok");
}

/// Serves `router` on a loopback port; returns its address.
async fn listen(router: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

/// Part 2, over HTTP, side by side with a native handler.
async fn http(b: &Bench) {
    let app = Router::new()
        .route("/native", get(native))
        .route("/app", get(via_app))
        .with_state(b.clone());
    let addr = listen(app).await;
    let client = client();
    let native_url = format!("http://{addr}/native");
    let app_url = format!("http://{addr}/app");
    sequential(&client, &native_url, 1000).await;
    sequential(&client, &app_url, 1000).await;
    let m = 5000;
    let nat = sequential(&client, &native_url, m).await;
    let wasm = sequential(&client, &app_url, m).await;
    let nat_rps = throughput(&client, &native_url, 40_000, 8).await;
    let wasm_rps = throughput(&client, &app_url, 40_000, 8).await;
    println!("\nover HTTP/1.1 on loopback, same router, same client, same response (\"ok\")");
    println!(
        "  {:<8} {:>10} {:>10} {:>14}",
        "", "p50 µs", "p99 µs", "requests/s (8)"
    );
    for (name, times, rps) in [("native", &nat, nat_rps), ("app", &wasm, wasm_rps)] {
        println!(
            "  {:<8} {:>10.1} {:>10.1} {:>14.0}",
            name,
            us(pct(times, 0.5)),
            us(pct(times, 0.99)),
            rps
        );
    }
    println!(
        "  app / native: p50 ×{:.2}, p99 ×{:.2}, throughput ×{:.2}",
        us(pct(&wasm, 0.5)) / us(pct(&nat, 0.5)),
        us(pct(&wasm, 0.99)) / us(pct(&nat, 0.99)),
        wasm_rps / nat_rps
    );
}

/// Part 3, cold install → first response, on a host with nothing compiled.
async fn cold_install(b: &Bench, quiz: &[u8]) {
    let mut colds = Vec::new();
    for _ in 0..3 {
        let cold = AppHost::new(HostLimits::default()).expect("app host");
        let t = Instant::now();
        let sha = ceredis::apps::component_hash(quiz);
        let pre = cold
            .prepare(&sha, quiz.to_vec())
            .await
            .expect("quiz compiles");
        let compiled = t.elapsed();
        let (status, _, body) = cold
            .serve(pre, call_ctx(&b.tenant), Quotas::default(), request("/"))
            .await
            .expect("first page");
        assert_eq!(status, 200);
        assert!(String::from_utf8_lossy(&body).contains("Quiz"));
        colds.push((compiled, t.elapsed()));
    }
    println!(
        "\ncold install of plugins/quiz ({} KiB) → first page, 3 runs",
        quiz.len() / 1024
    );
    for (compiled, first) in colds {
        println!(
            "  compile + link check {:.0} ms, first response at {:.0} ms",
            compiled.as_secs_f64() * 1e3,
            first.as_secs_f64() * 1e3
        );
    }
}

#[derive(Clone)]
struct Noisy {
    host: Arc<AppHost>,
    hog: wasmtime_wasi_http::p2::bindings::ProxyPre<ceredis::apps::runtime::AppCtx>,
    quotas: Quotas,
    tenant: TenantHandle,
}

/// School A's request: its app holds `mib` MiB of its 16 and spins until its deadline.
async fn hog(State(n): State<Noisy>) -> StatusCode {
    let mut ctx = call_ctx(&n.tenant);
    ctx.app = "attacks".into();
    match n
        .host
        .serve(n.hog.clone(), ctx, n.quotas, request("/hog?mib=12"))
        .await
    {
        Ok((status, _, _)) => status,
        Err(e) => e.status(),
    }
}

/// Part 4, noisy neighbour: school B's requests to `plugins/hello` over HTTP, alone, then
/// while school A's app (the same host, the same process) holds 12 of its 16 MiB and burns
/// CPU until its 1 s deadline in every request, with more of A's requests waiting than A
/// may run at once.
async fn noisy(b: &Bench, dir: &std::path::Path, attacks: Vec<u8>) {
    let sha = ceredis::apps::component_hash(&attacks);
    let hog_pre = b
        .host
        .prepare(&sha, attacks)
        .await
        .expect("attacks compiles");
    let manifest = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins/attacks/ceredis-app.toml"),
    )
    .expect("attacks manifest");
    let quotas = ceredis::apps::Manifest::parse(&manifest)
        .expect("attacks manifest parses")
        .quotas;
    let a = Noisy {
        host: b.host.clone(),
        hog: hog_pre,
        quotas,
        tenant: tenant(dir, "noisy-a"),
    };
    let addr_b = listen(
        Router::new()
            .route("/app", get(via_app))
            .with_state(b.clone()),
    )
    .await;
    let addr_a = listen(Router::new().route("/hog", get(hog)).with_state(a)).await;
    // The clients run on a thread and runtime of their own, as browsers would: the server's
    // two workers are the appliance's, one of which A may take.
    let (alone, busy, burned, outcomes, a_clients, span) = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        rt.block_on(async move {
            let client = client();
            let url_b = format!("http://{addr_b}/app");
            let span = Duration::from_secs(5);
            sequential(&client, &url_b, 1000).await;
            let alone = sequential_for(&client, &url_b, span).await;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut burners = Vec::new();
            let a_clients = 4;
            for _ in 0..a_clients {
                let (client, url, stop) =
                    (client.clone(), format!("http://{addr_a}/hog"), stop.clone());
                burners.push(tokio::spawn(async move {
                    let mut outcomes = std::collections::BTreeMap::<u16, u32>::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let r = client.get(&url).send().await.expect("A's request");
                        *outcomes.entry(r.status().as_u16()).or_default() += 1;
                    }
                    outcomes
                }));
            }
            // Let A's first requests grow their memory and start spinning.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let burning_started = Instant::now();
            let busy = sequential_for(&client, &url_b, span).await;
            let burned = burning_started.elapsed();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let mut outcomes = std::collections::BTreeMap::<u16, u32>::new();
            for t in burners {
                for (status, count) in t.await.expect("A's client") {
                    *outcomes.entry(status).or_default() += count;
                }
            }
            (alone, busy, burned, outcomes, a_clients, span)
        })
    })
    .await
    .expect("clients");
    println!(
        "\nnoisy neighbour: school B's app over HTTP, one request after another for {} s alone \
         ({} requests), then {} s while school A's app holds 12 MiB and spins to its deadline \
         ({a_clients} clients, {} at once allowed; {} requests)",
        span.as_secs(),
        alone.len(),
        span.as_secs(),
        b.host.limits.per_tenant,
        busy.len()
    );
    println!("  {:<22} {:>10} {:>10}", "", "p50 µs", "p99 µs");
    for (name, times) in [("B alone", &alone), ("B while A burns", &busy)] {
        println!(
            "  {:<22} {:>10.1} {:>10.1}",
            name,
            us(pct(times, 0.5)),
            us(pct(times, 0.99))
        );
    }
    println!(
        "  while A burns / alone: p50 ×{:.2}, p99 ×{:.2} (target p99 ≤ ×2)",
        us(pct(&busy, 0.5)) / us(pct(&alone, 0.5)),
        us(pct(&busy, 0.99)) / us(pct(&alone, 0.99))
    );
    let outcomes: Vec<String> = outcomes.iter().map(|(s, n)| format!("{n}× {s}")).collect();
    println!(
        "  A's requests during those {:.1} s: {}",
        burned.as_secs_f64(),
        outcomes.join(", ")
    );
}
