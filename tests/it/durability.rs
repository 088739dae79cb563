//! Acknowledged writes survive SIGKILL: many concurrent writers, the server is killed right
//! after acknowledgements while more writes are in flight, and after restart every
//! acknowledged write is there. Repeated 20 times (`benches/kill_loop.sh` runs more).

use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_sigkill_twenty_times() {
    let rounds: usize = std::env::var("KILL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20)
        .max(20);
    let mut app = Appliance::init();
    app.start();
    let op = operator(&app).await;
    let mut admin = tenant_with_admin(&app, &op, "ecole").await;
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..rounds {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let mut writers = Vec::new();
        for w in 0..16 {
            let (s, acked) = (admin.clone(), acked.clone());
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let title = format!("r{round}-w{w}-{i}");
                    match s
                        .client
                        .post(format!("{}/t/ecole/api/classes", s.base))
                        .header("x-csrf-token", &s.csrf)
                        .json(&json!({"title": title}))
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == StatusCode::CREATED => {
                            acked.lock().unwrap().push(title)
                        }
                        _ => return, // the server died under us: this write was never acknowledged
                    }
                }
            }));
        }
        // Let acknowledgements accumulate, then pull the plug with writes still in flight.
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            if acked.lock().unwrap().len() >= 40 + (round % 20) * 3 {
                break;
            }
        }
        app.kill();
        for w in writers {
            let _ = w.await;
        }
        acknowledged.extend(acked.lock().unwrap().drain(..));
        app.start();
        admin.base = app.base.clone();
        // The session itself was durable too: no new login needed.
        let stored: Vec<Value> = admin
            .get("/t/ecole/api/classes")
            .await
            .json()
            .await
            .unwrap();
        let titles: std::collections::HashSet<&str> = stored
            .iter()
            .map(|c| c["title"].as_str().unwrap())
            .collect();
        let missing: Vec<&String> = acknowledged
            .iter()
            .filter(|t| !titles.contains(t.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged writes lost: {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert_eq!(titles.len(), stored.len(), "no duplicates");
    }
    assert!(acknowledged.len() >= rounds * 40);
    println!(
        "{rounds} SIGKILL rounds, {} acknowledged writes checked: 0 lost, 0 duplicated",
        acknowledged.len()
    );
    let doctor = app.cli(&["doctor"]);
    assert!(
        String::from_utf8_lossy(&doctor.stdout).contains("tenants/ecole/tenant.db: integrity ok")
    );
}
