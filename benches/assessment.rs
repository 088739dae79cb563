//! The assessment engine on a school of 1 000 pupils (40 classes of 25) × 50 CEFR
//! descriptors × 20 pieces of evidence each (1 M evidence events):
//! - evidence → estimate recalculation throughput, each event journaled and durable,
//!   through the real HTTP path (a teacher's observations for a whole class, 8 clients);
//! - the class dashboard (`GET /t/SLUG/api/classes/ID/assessment`) on that tenant, p50/p99;
//! - replaying the whole journal (`ceredis doctor`'s check), entries per second.
//!
//! `cargo bench --bench assessment`. `EVIDENCE_ROUNDS` (default 20) sets the evidence per
//! pupil and descriptor. No peer runs this flow here (the seed's CaSS needs Elasticsearch):
//! the figures stand alone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::*;

const SLUG: &str = "bench";
const CLASSES: usize = 40;
const PER_CLASS: usize = 25;
const COMPETENCIES: usize = 50;
const CLIENTS: usize = 8;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Adds the pupils and classes straight into the tenant's database (the appliance's own
/// user creation hashes a one-time password per user, which is not what is measured here),
/// with the teacher enrolled in every class. Returns the class ids and their pupils.
fn populate(app: &Appliance, teacher: i64) -> Vec<(i64, Vec<i64>)> {
    use ceredis::store::tenant::{self, ClassFields, UserFields};
    let path = app.data_path().join(format!("tenants/{SLUG}/tenant.db"));
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    let tx = conn.transaction().unwrap();
    let mut classes = Vec::new();
    for c in 0..CLASSES {
        let class = tenant::insert_class(
            &tx,
            &ClassFields {
                sourced_id: None,
                title: format!("Classe {c:02}"),
                class_code: None,
                org_sourced_id: None,
                active: true,
            },
        )
        .unwrap();
        tenant::enrol(&tx, None, class, teacher, "teacher").unwrap();
        let pupils: Vec<i64> = (0..PER_CLASS)
            .map(|p| {
                let id = tenant::insert_user(
                    &tx,
                    &UserFields {
                        sourced_id: None,
                        username: format!("eleve-{c:02}-{p:02}"),
                        given_name: "Élève".into(),
                        family_name: format!("{c:02}-{p:02}"),
                        email: None,
                        role: ceredis::tenant::Role::Student,
                        active: true,
                    },
                    None,
                    false,
                )
                .unwrap();
                tenant::enrol(&tx, None, class, id, "student").unwrap();
                id
            })
            .collect();
        classes.push((class, pupils));
    }
    tx.commit().unwrap();
    classes
}

/// The request bodies: for each round, each descriptor, each class, one observation per
/// pupil (rubric levels spread over 1..=4). Built before the clock starts.
fn bodies(classes: &[(i64, Vec<i64>)], descriptors: &[String], rounds: usize) -> Vec<(i64, Bytes)> {
    let mut out = Vec::new();
    for round in 0..rounds {
        for (d, uri) in descriptors.iter().enumerate() {
            for (class, pupils) in classes {
                let observations: Vec<Value> = pupils
                    .iter()
                    .map(|p| json!({"pupil": p, "level": 1 + (*p as usize + d + round) % 4}))
                    .collect();
                let body = json!({"competency": uri, "observations": observations});
                out.push((*class, Bytes::from(serde_json::to_vec(&body).unwrap())));
            }
        }
    }
    out
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("EVIDENCE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut app = Appliance::init();
    app.start();
    let op = operator(&app).await;
    let admin = tenant_with_admin(&app, &op, SLUG).await;
    let (teacher_id, otp) = add_user(&admin, SLUG, "prof", "teacher").await;
    let teacher = Arc::new(activate(&app, SLUG, "prof", &otp).await);
    let classes = populate(&app, teacher_id);
    let framework: Value = teacher
        .get(&format!("/t/{SLUG}/api/frameworks/1"))
        .await
        .json()
        .await
        .unwrap();
    let descriptors: Vec<String> = framework["competencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !c["level_code"].is_null())
        .take(COMPETENCIES)
        .map(|c| c["uri"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(descriptors.len(), COMPETENCIES);
    let work = Arc::new(bodies(&classes, &descriptors, rounds));
    let events = work.len() * PER_CLASS;
    println!(
        "tenant: {} pupils in {CLASSES} classes × {COMPETENCIES} descriptors × {rounds} observations = {events} evidence events",
        CLASSES * PER_CLASS
    );

    // 1. Recalculation throughput.
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (teacher, work, next) = (teacher.clone(), work.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((class, body)) = work.get(i) else {
                    break;
                };
                let r = teacher
                    .client
                    .post(format!(
                        "{}/t/{SLUG}/api/classes/{class}/observations",
                        teacher.base
                    ))
                    .header("x-csrf-token", &teacher.csrf)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::CREATED);
                if i % 4000 == 0 {
                    eprintln!("  {i} / {} requests", work.len());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "recalculation: {events} events in {secs:.1} s = {:.0} events/s (each journaled, durable before the answer; {PER_CLASS} per request, {CLIENTS} clients)",
        events as f64 / secs
    );

    // 2. The class dashboard.
    let mut times = Vec::new();
    for i in 0..400 {
        let (class, _) = classes[i % classes.len()];
        let start = Instant::now();
        let r = teacher
            .get(&format!("/t/{SLUG}/api/classes/{class}/assessment"))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let body = r.bytes().await.unwrap();
        times.push(start.elapsed());
        if i == 0 {
            println!("class dashboard: {} KB per response", body.len() / 1024);
        }
    }
    times.sort();
    println!(
        "class dashboard ({PER_CLASS} pupils × {} competencies, 400 requests): p50 {} p99 {}",
        framework["competencies"].as_array().unwrap().len(),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99))
    );

    // 3. Replaying the journal.
    app.kill();
    let path = app.data_path().join(format!("tenants/{SLUG}/tenant.db"));
    let conn = rusqlite::Connection::open(path).unwrap();
    let start = Instant::now();
    let report = ceredis::store::competency::verify_journal(&conn).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    println!(
        "journal replay: {} entries ({} recalculations) verified in {secs:.1} s = {:.0} entries/s",
        report.entries,
        report.recalculations,
        report.entries as f64 / secs
    );
}
