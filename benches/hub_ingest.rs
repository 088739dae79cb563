//! Hub ingest: 50 sites push their school's continuity copy at the same moment, to a hub
//! on SQLite, then to a hub on PostgreSQL (a private cluster, as the tests start it). Each
//! school holds 2 MiB that do not compress, so each push is three sealed chunks. All
//! processes (the hub, PostgreSQL and the 50 `ceredis federation push`) share this
//! machine's cores; the figures are the wall time until every push is committed, the
//! megabytes per second the hub took in, and the pushes' p50 / p99.
//!
//! `cargo bench --bench hub_ingest` (`HUB_SITES` changes the number of sites).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

#[path = "../tests/it/postgres.rs"]
#[allow(dead_code)]
mod postgres;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Appliance, BIN};

fn cli(data: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn start_hub(dir: &Path, postgres: Option<&str>) -> (Child, String) {
    let mut command = Command::new(BIN);
    command
        .args(["hub", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir);
    if let Some(p) = postgres {
        command.args(["--postgres", p]);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(url) = line.strip_prefix("ceredis hub: listening on ") {
            break format!(
                "https://127.0.0.1:{}",
                url.rsplit(':').next().unwrap().trim()
            );
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Joins every site to the hub, then pushes all at once.
fn round(engine: &str, sites: &[Appliance], postgres: Option<&str>) {
    let hub_dir = tempfile::tempdir().unwrap();
    let (mut hub, url) = start_hub(hub_dir.path(), postgres);
    let with_pg = |mut args: Vec<String>| {
        if let Some(p) = postgres {
            args.extend(["--postgres".to_string(), p.to_string()]);
        }
        args
    };
    for s in sites {
        let args = with_pg(vec![
            "hub".into(),
            "token".into(),
            "--label".into(),
            "site".into(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let token = cli(hub_dir.path(), &args).trim().to_string();
        cli(&s.data, &["federation", "join", &url, &token]);
    }
    let started = Instant::now();
    let pushes: Vec<(Instant, Child)> = sites
        .iter()
        .map(|s| {
            let child = Command::new(BIN)
                .args(["federation", "push", "--data-dir"])
                .arg(&s.data)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            (Instant::now(), child)
        })
        .collect();
    let mut times = Vec::new();
    let mut bytes = 0u64;
    for (t, child) in pushes {
        let out = child.wait_with_output().unwrap();
        times.push(t.elapsed());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("committed"), "{text}");
        // "… N sent now, B bytes)"
        bytes += text
            .split(" bytes")
            .next()
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|b| b.parse::<u64>().ok())
            .unwrap_or(0);
    }
    let wall = started.elapsed();
    times.sort();
    println!(
        "  {engine:<10} {:>8.2} s {:>10.1} MB/s {:>10.0} ms {:>10.0} ms",
        wall.as_secs_f64(),
        bytes as f64 / 1e6 / wall.as_secs_f64(),
        pct(&times, 0.5).as_secs_f64() * 1e3,
        pct(&times, 0.99).as_secs_f64() * 1e3
    );
    let _ = hub.kill();
    let _ = hub.wait();
}

fn main() {
    let n: usize = std::env::var("HUB_SITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let sites: Vec<Appliance> = (0..n)
        .map(|_| {
            let site = Appliance::init();
            cli(&site.data, &["tenant", "create", "ecole"]);
            rusqlite::Connection::open(site.data.join("tenants/ecole/tenant.db"))
                .unwrap()
                .execute(
                    "INSERT INTO xapi_attachments (sha2, content_type, length, content)
                     VALUES ('ballast', 'application/octet-stream', 2097152, randomblob(2097152))",
                    [],
                )
                .unwrap();
            cli(&site.data, &["federation", "enable", "--tenant", "ecole"]);
            site
        })
        .collect();
    println!("hub ingest: {n} sites push at once (2 MiB each, 3 sealed chunks)");
    println!(
        "  {:<10} {:>10} {:>15} {:>13} {:>13}",
        "hub on", "all done", "ingest", "push p50", "push p99"
    );
    round("SQLite", &sites, None);
    let pg = postgres::cluster().database();
    round("PostgreSQL", &sites, Some(&pg));
}
