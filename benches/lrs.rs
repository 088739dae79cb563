//! The LRS against its peers, with the same client code for all: ingest in batches of 100
//! (each acknowledged only after a durable commit), single-statement POSTs from 32 clients,
//! and queries on a tenant holding 1 M statements. Ingest bodies are serialized before the
//! clock starts, for every target alike.
//!
//! Run through `benches/lrs.sh`, which installs and starts the peers (Ralph with its
//! filesystem backend, Learning Locker's `xapi-statements` in memory) and passes them here as
//! `PEER_<NAME>=<endpoint>` and `PEER_<NAME>_AUTH=<user:password>`. Alone,
//! `cargo bench --bench lrs` measures ceredis only. `QUERY_STATEMENTS` sets the size of the
//! query tenant (default 1 000 000); `ONLY=ingest|singles|queries` runs one part.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use support::*;

struct Target {
    name: String,
    endpoint: String,
    user: String,
    password: String,
    client: Client,
}

impl Target {
    fn post(&self, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/statements", self.endpoint))
            .basic_auth(&self.user, Some(&self.password))
            .header("X-Experience-API-Version", "1.0.3")
            .json(body)
    }

    fn post_bytes(&self, body: Bytes) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/statements", self.endpoint))
            .basic_auth(&self.user, Some(&self.password))
            .header("X-Experience-API-Version", "1.0.3")
            .header("Content-Type", "application/json")
            .body(body)
    }

    fn get(&self, path_and_query: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path_and_query}", self.endpoint))
            .basic_auth(&self.user, Some(&self.password))
            .header("X-Experience-API-Version", "1.0.3")
    }
}

const AGENTS: usize = 2000;
const VERBS: usize = 40;
const ACTIVITIES: usize = 5000;
const REGISTRATIONS: usize = 20_000;

fn registration(i: usize) -> String {
    format!("6f1c2a10-0000-4000-8000-{i:012}")
}

fn agent(i: usize) -> Value {
    json!({"objectType": "Agent", "account": {"homePage": "https://ecole.example/", "name": format!("eleve{i:05}")}})
}

/// A realistic statement (about 600 bytes): pupil, verb, activity with a name, score,
/// registration, parent activity, timestamp.
fn statement(n: usize) -> Value {
    let (a, v, act, reg) = (
        n % AGENTS,
        (n / 7) % VERBS,
        (n * 31) % ACTIVITIES,
        (n * 17) % REGISTRATIONS,
    );
    json!({
        "actor": agent(a),
        "verb": {"id": format!("https://ecole.example/verbes/v{v}"), "display": {"fr-FR": format!("verbe {v}")}},
        "object": {"objectType": "Activity", "id": format!("https://ecole.example/activites/a{act}"),
                   "definition": {"name": {"fr-FR": format!("Activité {act}")},
                                  "type": "http://adlnet.gov/expapi/activities/assessment"}},
        "result": {"score": {"scaled": ((n % 100) as f64) / 100.0}, "success": !n.is_multiple_of(3), "duration": "PT1M12S"},
        "context": {"registration": registration(reg),
                    "contextActivities": {"parent": [{"id": format!("https://ecole.example/sequences/s{}", act % 50)}]}},
        "timestamp": "2026-11-20T09:30:00.000Z"
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The bodies of `total` statements in batches of `batch`, numbered from `offset`: built
/// before the clock starts, so that the load generator does not take CPU from the server
/// under test while it is measured.
fn batches(total: usize, batch: usize, offset: usize) -> Vec<Bytes> {
    (0..total / batch)
        .map(|b| {
            let body: Vec<Value> = (0..batch)
                .map(|i| statement(offset + b * batch + i))
                .collect();
            Bytes::from(serde_json::to_vec(&body).unwrap())
        })
        .collect()
}

/// Posts the `bodies` from `clients` concurrent clients. Returns statements per second.
async fn ingest(t: &Arc<Target>, bodies: Vec<Bytes>, batch: usize, clients: usize) -> f64 {
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (t, next, bodies) = (t.clone(), next.clone(), bodies.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(b) else {
                    return;
                };
                let r = t.post_bytes(body.clone()).send().await.unwrap();
                let status = r.status();
                if status != StatusCode::OK {
                    panic!(
                        "{}: {status} {}",
                        t.name,
                        r.text().await.unwrap_or_default()
                    );
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    (bodies.len() * batch) as f64 / start.elapsed().as_secs_f64()
}

/// Loads `total` statements numbered from `offset`, in batches of 500 from 4 clients, 50 000
/// at a time.
async fn load(t: &Arc<Target>, total: usize, offset: usize) {
    let mut done = 0;
    while done < total {
        let chunk = (total - done).min(50_000);
        ingest(t, batches(chunk, 500, offset + done), 500, 4).await;
        done += chunk;
    }
}

/// Single-statement POSTs from `clients` clients for `secs` seconds: statements per second.
async fn singles(t: &Arc<Target>, clients: usize, secs: u64, offset: usize) -> f64 {
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (t, done) = (t.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while Instant::now() < deadline {
                let r = t
                    .post(&statement(offset + c * 1_000_000 + i))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK, "{}", t.name);
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn peers() -> Vec<Target> {
    let mut out = Vec::new();
    for (name, var) in [
        ("Ralph (fs backend)", "PEER_RALPH"),
        ("xapi-statements (memory)", "PEER_XAPI_STATEMENTS"),
    ] {
        let Ok(endpoint) = std::env::var(var) else {
            continue;
        };
        let auth = std::env::var(format!("{var}_AUTH")).unwrap_or_default();
        let (user, password) = auth.split_once(':').unwrap_or(("", ""));
        out.push(Target {
            name: name.to_string(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            user: user.to_string(),
            password: password.to_string(),
            client: Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
        });
    }
    out
}

fn ceredis_target(app: &Appliance, slug: &str) -> Target {
    let (user, password) = app.credential(slug, &["all"]);
    Target {
        name: "ceredis".into(),
        endpoint: app.url(&format!("/t/{slug}/xapi")),
        user,
        password,
        client: app.client(),
    }
}

async fn timed(t: &Target, path: &str) -> (Duration, Value) {
    let start = Instant::now();
    let r = t.get(path).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    let body: Value = r.json().await.unwrap();
    (start.elapsed(), body)
}

fn enc(v: &Value) -> String {
    serde_urlencoded::to_string([("x", v.to_string())]).unwrap()[2..].to_string()
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let query_size: usize = std::env::var("QUERY_STATEMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut app = Appliance::init();
    app.start();
    for slug in ["ingest", "singles", "query"] {
        let out = app.cli(&["tenant", "create", slug]);
        assert!(out.status.success());
    }
    let ours = Arc::new(ceredis_target(&app, "ingest"));
    let peers: Vec<Arc<Target>> = peers().into_iter().map(Arc::new).collect();
    println!("LRS benchmark on {cores} cores; ceredis over HTTPS (its own CA), peers over HTTP");

    let only = std::env::var("ONLY").unwrap_or_default();
    let runs = |part: &str| only.is_empty() || only == part;

    // 1. Ingest, batches of 100, 4 concurrent clients.
    if runs("ingest") {
        let clients = std::env::var("INGEST_CLIENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        println!(
            "\n== ingest: batches of 100 statements, {clients} clients, each batch acknowledged when durable"
        );
        ingest(&ours, batches(1000, 100, 0), 100, clients).await; // warm-up
        let total = std::env::var("INGEST_STATEMENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000);
        let ceredis_rate = ingest(&ours, batches(total, 100, 1000), 100, clients).await;
        println!("{:<28} {:>9.0} statements/s", "ceredis", ceredis_rate);
        for p in &peers {
            ingest(p, batches(1000, 100, 0), 100, clients).await;
            let rate = ingest(p, batches(10_000, 100, 1000), 100, clients).await;
            println!(
                "{:<28} {:>9.0} statements/s   ceredis is {:.1}x",
                p.name,
                rate,
                ceredis_rate / rate
            );
        }
    }

    // 2. Single-statement POSTs from 32 clients.
    if runs("singles") {
        println!("\n== single-statement POSTs from 32 concurrent clients, 10 s");
        let singles_target = Arc::new(ceredis_target(&app, "singles"));
        let rate = singles(&singles_target, 32, 10, 0).await;
        println!("{:<28} {:>9.0} statements/s", "ceredis", rate);
        for p in &peers {
            let peer_rate = singles(p, 32, 10, 5_000_000).await;
            println!(
                "{:<28} {:>9.0} statements/s   ceredis is {:.1}x",
                p.name,
                peer_rate,
                rate / peer_rate
            );
        }
    }

    // 3. Queries on a tenant with `query_size` statements.
    if !runs("queries") {
        return;
    }
    println!("\n== queries on one tenant holding {query_size} statements (pages of 50)");
    let q = Arc::new(ceredis_target(&app, "query"));
    let start = Instant::now();
    let half = query_size / 2 / 500 * 500;
    load(&q, half, 0).await;
    // `since` queries start from the middle of the load.
    let (_, latest) = timed(&q, "/statements?limit=1").await;
    let mid_stored = latest["statements"][0]["stored"]
        .as_str()
        .unwrap()
        .to_string();
    load(&q, query_size - half, half).await;
    println!(
        "loaded {query_size} statements in {:.0} s (batches of 500)",
        start.elapsed().as_secs_f64()
    );
    let rounds = 1000;
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |m: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % m as u64) as usize
    };
    let report = |label: &str, mut times: Vec<Duration>, returned: usize| {
        times.sort();
        println!(
            "{label:<34} p50 {:>9}  p99 {:>9}  max {:>9}  ({} queries, {returned} statements returned)",
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            ms(*times.last().unwrap()),
            times.len()
        );
    };
    let (mut times, mut returned) = (Vec::new(), 0);
    for _ in 0..rounds {
        let path = format!("/statements?limit=50&agent={}", enc(&agent(next(AGENTS))));
        let (d, body) = timed(&q, &path).await;
        returned += body["statements"].as_array().unwrap().len();
        times.push(d);
    }
    report("by agent", times, returned);
    let (mut times, mut returned) = (Vec::new(), 0);
    for _ in 0..rounds {
        let path = format!(
            "/statements?limit=50&activity=https://ecole.example/activites/a{}&since={mid_stored}",
            next(ACTIVITIES)
        );
        let (d, body) = timed(&q, &path).await;
        returned += body["statements"].as_array().unwrap().len();
        times.push(d);
    }
    report("by activity + since", times, returned);
    let (mut times, mut returned) = (Vec::new(), 0);
    for _ in 0..rounds {
        let n = next(query_size);
        let path = format!(
            "/statements?limit=50&verb=https://ecole.example/verbes/v{}&registration={}",
            (n / 7) % VERBS,
            registration((n * 17) % REGISTRATIONS)
        );
        let (d, body) = timed(&q, &path).await;
        returned += body["statements"].as_array().unwrap().len();
        times.push(d);
    }
    report("by verb + registration", times, returned);
    let (mut times, mut returned) = (Vec::new(), 0);
    for _ in 0..rounds / 5 {
        let mut path = format!(
            "/statements?limit=50&verb=https://ecole.example/verbes/v{}",
            next(VERBS)
        );
        for _ in 0..5 {
            let (d, body) = timed(&q, &path).await;
            returned += body["statements"].as_array().unwrap().len();
            times.push(d);
            let more = body["more"].as_str().unwrap().to_string();
            if more.is_empty() {
                break;
            }
            path = more[more.find("/statements").unwrap()..].to_string();
        }
    }
    report("more paging (5 pages by verb)", times, returned);
    app.kill();
}
