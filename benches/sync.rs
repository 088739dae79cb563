//! The continuity copy over a real link: a hub process (`ceredis hub serve`, SQLite) and a
//! site whose school holds `SYNC_STATEMENTS` xAPI statements (default 100 000; 1 000 000
//! for the figure), sent through the LRS like any client's. A counting relay on
//! loopback between site and hub measures the bytes on the wire (TLS included).
//!
//! 1. A full push: bytes on the wire per statement and statements per second.
//! 2. Resuming after a cut: the link drops at half the push. The site is healed and pushes
//!    again. The figure is what crossed the wire beyond a clean push, against one chunk
//!    (1 MiB), the most a resume should re-send.
//! 3. Incremental: a tenth as many new statements, pushed as batches of the change log.
//! 4. The same cut at half and resumed: what was re-sent (beyond the sealed batches the hub
//!    ends up holding, with the clean push's TLS and HTTP overhead), against one batch.
//!
//! `cargo bench --bench sync`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{Value, json};
use support::{Appliance, BIN, relay};

/// A statement like the LRS benchmark's (about 600 bytes of JSON).
fn statement(n: usize) -> Value {
    let (a, v, act) = (n % 2000, (n / 7) % 40, (n * 31) % 5000);
    json!({
        "actor": {"objectType": "Agent", "account": {"homePage": "https://ecole.example/", "name": format!("eleve{a:05}")}},
        "verb": {"id": format!("https://ecole.example/verbes/v{v}"), "display": {"fr-FR": format!("verbe {v}")}},
        "object": {"objectType": "Activity", "id": format!("https://ecole.example/activites/a{act}"),
                   "definition": {"name": {"fr-FR": format!("Activité {act}")},
                                  "type": "http://adlnet.gov/expapi/activities/assessment"}},
        "result": {"score": {"scaled": ((n % 100) as f64) / 100.0}, "success": !n.is_multiple_of(3), "duration": "PT1M12S"},
        "context": {"registration": format!("6f1c2a10-0000-4000-8000-{:012}", (n * 17) % 20_000)},
        "timestamp": "2026-11-20T09:30:00.000Z"
    })
}

fn cli(data: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("SYNC_STATEMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let hub_dir = tempfile::tempdir().unwrap();
    let mut hub = Command::new(BIN)
        .args(["hub", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(hub_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(hub.stdout.take().unwrap()).lines();
    let hub_addr = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(url) = line.strip_prefix("ceredis hub: listening on ") {
            break format!("127.0.0.1:{}", url.rsplit(':').next().unwrap().trim());
        }
    };
    std::thread::spawn(move || for _ in lines {});

    // The school: n statements through the LRS, in batches of 500.
    let mut site = Appliance::init();
    let (ok, text) = cli(&site.data, &["tenant", "create", "ecole"]);
    assert!(ok, "{text}");
    site.start();
    let (user, password) = site.credential("ecole", &["all"]);
    let client = site.client();
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let body: Vec<Value> = chunk.iter().map(|&i| statement(i)).collect();
        let r = client
            .post(site.url("/t/ecole/xapi/statements"))
            .basic_auth(&user, Some(&password))
            .header("X-Experience-API-Version", "1.0.3")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let ingest = started.elapsed();
    site.kill();
    let db_bytes = std::fs::metadata(site.data.join("tenants/ecole/tenant.db"))
        .map(|m| m.len())
        .unwrap_or(0)
        + std::fs::metadata(site.data.join("tenants/ecole/tenant.db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);

    let link = relay(hub_addr).await;
    let token = cli(hub_dir.path(), &["hub", "token", "--label", "bench"]).1;
    let token = token.lines().next().unwrap().trim().to_string();
    let (ok, text) = cli(&site.data, &["federation", "join", &link.url, &token]);
    assert!(ok, "{text}");
    let (ok, text) = cli(&site.data, &["federation", "enable", "--tenant", "ecole"]);
    assert!(ok, "{text}");

    // 1. A full push.
    let before = link.sent.load(Ordering::SeqCst);
    let t = Instant::now();
    let (ok, text) = cli(&site.data, &["federation", "push"]);
    let took = t.elapsed();
    assert!(ok, "{text}");
    let wire = link.sent.load(Ordering::SeqCst) - before;
    println!(
        "continuity copy of a school with {n} statements (ingested in {:.1} s; database {:.1} MB)",
        ingest.as_secs_f64(),
        db_bytes as f64 / 1e6
    );
    println!(
        "  full push: {:.2} MB on the wire = {:.1} B/statement (target ≤ 80), {:.2} s, {:.0} statements/s",
        wire as f64 / 1e6,
        wire as f64 / n as f64,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    println!(
        "  {}",
        text.lines()
            .find(|l| l.contains("committed"))
            .unwrap_or_default()
    );

    // 2. The next generation, cut at half, then resumed.
    let clean = wire as i64;
    link.budget.store(clean / 2, Ordering::SeqCst);
    let before = link.sent.load(Ordering::SeqCst);
    let (ok, text) = cli(&site.data, &["federation", "push", "--full"]);
    assert!(!ok, "the cut push should fail: {text}");
    link.budget.store(i64::MAX, Ordering::SeqCst);
    let (ok, text) = cli(&site.data, &["federation", "push", "--full"]);
    assert!(ok, "{text}");
    let both = (link.sent.load(Ordering::SeqCst) - before) as i64;
    println!(
        "  cut at {:.2} MB, resumed: {:.2} MB in both attempts, {:.1} KiB beyond a clean push \
         (one chunk is 1024 KiB)",
        clean as f64 / 2e6,
        both as f64 / 1e6,
        (both - clean) as f64 / 1024.0
    );
    println!(
        "  {}",
        text.lines()
            .find(|l| l.contains("committed"))
            .unwrap_or_default()
    );

    // 3. Incremental: n/10 more statements after the generation go as batches.
    let m = (n / 10).max(1000);
    let mut site = site;
    let ingest_more = |site: &Appliance, from: usize, count: usize| {
        let client = site.client();
        let (user, password) = (user.clone(), password.clone());
        let url = site.url("/t/ecole/xapi/statements");
        async move {
            for chunk in (from..from + count).collect::<Vec<_>>().chunks(500) {
                let body: Vec<Value> = chunk.iter().map(|&i| statement(i)).collect();
                let r = client
                    .post(&url)
                    .basic_auth(&user, Some(&password))
                    .header("X-Experience-API-Version", "1.0.3")
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            }
        }
    };
    // The sealed batches the hub holds after change `mark`: their bytes and the last change.
    let hub_db = hub_dir.path().join("hub.db");
    let held_after = |mark: i64| -> (i64, i64) {
        rusqlite::Connection::open_with_flags(&hub_db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap()
            .query_row(
                "SELECT coalesce(sum(length(data)), 0), coalesce(max(last), ?1)
                 FROM continuity_batches WHERE last > ?1",
                [mark],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    };
    let (_, mark) = held_after(0);
    site.start();
    ingest_more(&site, n, m).await;
    site.kill();
    let before = link.sent.load(Ordering::SeqCst);
    let t = Instant::now();
    let (ok, text) = cli(&site.data, &["federation", "push"]);
    let took = t.elapsed();
    assert!(ok && text.contains("batches sent"), "{text}");
    let wire = link.sent.load(Ordering::SeqCst) - before;
    println!(
        "  incremental push of {m} new statements: {:.2} MB on the wire = {:.1} B/statement \
         (target ≤ 80), {:.2} s, {:.0} statements/s",
        wire as f64 / 1e6,
        wire as f64 / m as f64,
        took.as_secs_f64(),
        m as f64 / took.as_secs_f64()
    );
    println!("  {}", text.lines().last().unwrap_or_default());

    // 4. The same again, cut at half, then resumed: what crossed the wire beyond a clean
    // push of the same batches (their sealed bytes, times the wire's overhead in the clean
    // push), against one batch.
    let (sealed, mark) = held_after(mark);
    let overhead = wire as f64 / sealed as f64;
    site.start();
    ingest_more(&site, n + m, m).await;
    site.kill();
    let budget = wire as i64;
    link.budget.store(budget / 2, Ordering::SeqCst);
    let before = link.sent.load(Ordering::SeqCst);
    let (ok, text) = cli(&site.data, &["federation", "push"]);
    assert!(!ok, "the cut push should fail: {text}");
    link.budget.store(i64::MAX, Ordering::SeqCst);
    let (ok, text) = cli(&site.data, &["federation", "push"]);
    assert!(ok, "{text}");
    let both = (link.sent.load(Ordering::SeqCst) - before) as i64;
    let (sealed, _) = held_after(mark);
    let clean = (sealed as f64 * overhead) as i64;
    let batches: i64 = text
        .split(" batches sent")
        .next()
        .and_then(|t| t.rsplit(' ').next())
        .and_then(|b| b.parse().ok())
        .unwrap_or(1);
    println!(
        "  incremental push cut at {:.2} MB, resumed ({batches} batches after the cut): \
         {:.1} KiB beyond a clean push of the same batches (one batch here is about {:.1} KiB)",
        budget as f64 / 2e6,
        (both - clean) as f64 / 1024.0,
        wire as f64 / 1024.0 / (m as f64 / 10_000.0).ceil()
    );
    let _ = hub.kill();
    let _ = hub.wait();
}
