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
//!
//! `cargo bench --bench apps` (builds `plugins/` for wasm32-wasip2 first).

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

fn main() {
    let dir = components();
    let hello = std::fs::read(dir.join("hello.wasm")).expect("hello.wasm");
    let quiz = std::fs::read(dir.join("quiz.wasm")).expect("quiz.wasm");
    let data = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let db = Database::open(
            "bench",
            &data.path().join("tenant.db"),
            ceredis::store::tenant::MIGRATIONS,
            DbOptions::default(),
            StoreMetrics::default(),
        )
        .expect("tenant database");
        let tenant = TenantHandle {
            slug: "bench".into(),
            name: "Bench".into(),
            db,
            home_page: Arc::from("https://bench.example/"),
        };
        let host = Arc::new(AppHost::new(HostLimits::default()).expect("app host"));
        let sha = ceredis::apps::component_hash(&hello);
        let pre = host.prepare(&sha, hello).await.expect("hello compiles");

        // 1. The guest part.
        let n = 20_000;
        for _ in 0..500 {
            host.serve(
                pre.clone(),
                call_ctx(&tenant),
                Quotas::default(),
                request("/"),
            )
            .await
            .expect("warm-up");
        }
        let mut times = Vec::with_capacity(n);
        let all = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            let (status, _, body) = host
                .serve(
                    pre.clone(),
                    call_ctx(&tenant),
                    Quotas::default(),
                    request("/"),
                )
                .await
                .expect("serve");
            times.push(t.elapsed());
            assert!(status == 200 && &body[..] == b"ok");
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

        // 2. Over HTTP, side by side.
        let bench = Bench {
            host: host.clone(),
            pre: pre.clone(),
            tenant: tenant.clone(),
        };
        let app = Router::new()
            .route("/native", get(native))
            .route("/app", get(via_app))
            .with_state(bench);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client");
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
        println!(
            "  {:<8} {:>10.1} {:>10.1} {:>14.0}",
            "native",
            us(pct(&nat, 0.5)),
            us(pct(&nat, 0.99)),
            nat_rps
        );
        println!(
            "  {:<8} {:>10.1} {:>10.1} {:>14.0}",
            "app",
            us(pct(&wasm, 0.5)),
            us(pct(&wasm, 0.99)),
            wasm_rps
        );
        println!(
            "  app / native: p50 ×{:.2}, p99 ×{:.2}, throughput ×{:.2}",
            us(pct(&wasm, 0.5)) / us(pct(&nat, 0.5)),
            us(pct(&wasm, 0.99)) / us(pct(&nat, 0.99)),
            wasm_rps / nat_rps
        );

        // 3. Cold install → first response, on a host with nothing compiled.
        let mut colds = Vec::new();
        for _ in 0..3 {
            let cold = AppHost::new(HostLimits::default()).expect("app host");
            let t = Instant::now();
            let sha = ceredis::apps::component_hash(&quiz);
            let pre = cold
                .prepare(&sha, quiz.clone())
                .await
                .expect("quiz compiles");
            let compiled = t.elapsed();
            let (status, _, body) = cold
                .serve(pre, call_ctx(&tenant), Quotas::default(), request("/"))
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
    });
}
