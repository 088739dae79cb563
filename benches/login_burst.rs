//! A classroom login burst: 35 pupils sign in at the same second, against the release
//! binary on this machine, with the default argon2id parameters (12 MiB, 3 passes).
//!
//! Run: `cargo bench --bench login_burst`. Prints p50 / p99 / max per burst and overall;
//! target p99 ≤ 1 s on 2 cores.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use tokio::sync::Barrier;

const PUPILS: usize = 35;
const BURSTS: usize = 5;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut app = Appliance::init();
    app.start();
    let op = operator(&app).await;
    let admin = tenant_with_admin(&app, &op, "college").await;
    let mut pupils = Vec::new();
    for i in 0..PUPILS {
        let name = format!("eleve{i:02}");
        let (_, otp) = add_user(&admin, "college", &name, "student").await;
        pupils.push((name, otp));
    }
    println!(
        "{PUPILS} pupils sign in at once, {BURSTS} bursts; cores: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut all = Vec::new();
    for burst in 0..BURSTS {
        // Each pupil has the login page open (pre-session CSRF cookie), then all press Enter.
        let mut ready = Vec::new();
        for (name, pass) in &pupils {
            let client = app.client();
            let csrf = form_csrf(&client, &app.url("/t/college/login")).await;
            ready.push((client, csrf, name.clone(), pass.clone()));
        }
        let barrier = Arc::new(Barrier::new(PUPILS));
        let url = app.url("/t/college/login");
        let tasks: Vec<_> = ready
            .into_iter()
            .map(|(client, csrf, name, pass)| {
                let (barrier, url) = (barrier.clone(), url.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let t = Instant::now();
                    let r = client
                        .post(&url)
                        .header("accept", "application/json")
                        .form(&[
                            ("username", name.as_str()),
                            ("password", pass.as_str()),
                            ("_csrf", csrf.as_str()),
                        ])
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200, "login of {name}");
                    t.elapsed()
                })
            })
            .collect();
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap());
        }
        times.sort();
        println!(
            "burst {burst}: p50 {:>4} ms  p99 {:>4} ms  max {:>4} ms",
            percentile(&times, 0.5).as_millis(),
            percentile(&times, 0.99).as_millis(),
            times[times.len() - 1].as_millis()
        );
        all.extend(times);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    all.sort();
    let p99 = percentile(&all, 0.99);
    println!(
        "overall ({} logins): p50 {} ms, p99 {} ms (target p99 <= 1000 ms: {})",
        all.len(),
        percentile(&all, 0.5).as_millis(),
        p99.as_millis(),
        if p99 <= Duration::from_secs(1) {
            "met"
        } else {
            "NOT met"
        }
    );
}
