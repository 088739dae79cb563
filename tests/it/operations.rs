//! Operations: backup while writing, verified restore with a new identity, doctor, the
//! configuration example, the HTTP redirect, and ARCHITECTURE.md staying true.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

fn titles_in(db: &std::path::Path) -> BTreeSet<String> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut s = c.prepare("SELECT title FROM classes").unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn site_of(dir: &std::path::Path) -> (String, Option<String>) {
    let c = rusqlite::Connection::open_with_flags(
        dir.join("system.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    c.query_row("SELECT site_id, restored_from FROM site", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_writing_restores_with_integrity_and_a_new_identity() {
    let mut app = Appliance::init();
    app.start();
    let op = operator(&app).await;
    let admin = tenant_with_admin(&app, &op, "ecole").await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writer = {
        let (s, stop, acked) = (admin.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let title = format!("class-{i}");
                let r = s
                    .post("/t/ecole/api/classes", json!({"title": title}))
                    .await;
                assert_eq!(r.status(), StatusCode::CREATED);
                acked.lock().unwrap().push(title);
                i += 1;
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let backup_dir = app.data_path().parent().unwrap().join("backup");
    let out = app.cli(&["backup", "--to", backup_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let after: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();

    let snapshot = titles_in(&backup_dir.join("tenants/ecole/tenant.db"));
    assert!(
        before.is_subset(&snapshot),
        "writes acknowledged before the backup are in it"
    );
    assert!(
        snapshot.is_subset(&after),
        "the snapshot holds only acknowledged writes"
    );
    assert!(
        snapshot.len() < titles_in(&app.data_path().join("tenants/ecole/tenant.db")).len(),
        "writes continued during and after the backup"
    );

    // Restore into a new directory: verified, equal to the snapshot, new site identity.
    let restored = app.data_path().parent().unwrap().join("restored");
    let out = std::process::Command::new(BIN)
        .args([
            "restore",
            "--from",
            backup_dir.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        titles_in(&restored.join("tenants/ecole/tenant.db")),
        snapshot
    );
    let (old_site, _) = site_of(app.data_path());
    let (new_site, from) = site_of(&restored);
    assert_ne!(
        new_site, old_site,
        "a restored copy never shares the identity of its source"
    );
    assert_eq!(from.as_deref(), Some(old_site.as_str()));
    let doctor = std::process::Command::new(BIN)
        .args(["doctor", "--data-dir", restored.to_str().unwrap()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        report.contains("system.db: integrity ok")
            && report.contains("tenants/ecole/tenant.db: integrity ok"),
        "{report}"
    );

    // Restoring over an existing appliance is refused, and a tampered backup is rejected.
    let again = std::process::Command::new(BIN)
        .args([
            "restore",
            "--from",
            backup_dir.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let db = backup_dir.join("tenants/ecole/tenant.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&db, bytes).unwrap();
    let tampered = std::process::Command::new(BIN)
        .args([
            "restore",
            "--from",
            backup_dir.to_str().unwrap(),
            "--data-dir",
            restored.with_extension("x").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!tampered.status.success());
    assert!(String::from_utf8_lossy(&tampered.stderr).contains("does not match the manifest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_what_is_wrong_and_the_fix() {
    let app = Appliance::init();
    let ok = app.cli(&["doctor"]);
    let text = String::from_utf8_lossy(&ok.stdout).to_string();
    assert!(ok.status.success(), "{text}");
    assert!(
        text.contains("system.db: integrity ok") && text.contains(", 0 problem(s)"),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            app.data_path().join("keys/site.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    for f in ["system.db-wal", "system.db-shm"] {
        let _ = std::fs::remove_file(app.data_path().join(f));
    }
    std::fs::write(app.data_path().join("system.db"), vec![0x5a; 8192]).unwrap();
    let bad = app.cli(&["doctor"]);
    let text = String::from_utf8_lossy(&bad.stdout).to_string();
    assert!(!bad.status.success());
    assert!(
        text.contains("[FAIL] keys/site.key") && text.contains("chmod 600"),
        "{text}"
    );
    assert!(
        text.contains("[FAIL] system.db") && text.contains("ceredis restore"),
        "{text}"
    );
}

#[tokio::test]
async fn config_example_prints_the_committed_file_and_bad_keys_are_named() {
    let out = std::process::Command::new(BIN)
        .args(["config", "example"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ceredis.example.toml"))
            .unwrap()
    );
    let out = std::process::Command::new(BIN)
        .args(["config", "show"])
        .env("CEREDIS_AUTH__SESION_HOURS", "3")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sesion_hours"));
    let out = std::process::Command::new(BIN)
        .args(["config", "show"])
        .env("CEREDIS_TLS__ACME__EAB_HMAC_KEY", "hunter2-secret")
        .output()
        .unwrap();
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.contains("[redacted]") && !shown.contains("hunter2"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_port_only_redirects_and_health_endpoints_answer() {
    let mut app = Appliance::init();
    app.start();
    let client = app.client();
    assert_eq!(
        client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    let ready: Value = client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
    let _ = client.get(app.url("/operator/login")).send().await.unwrap();
    let metrics = client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "ceredis_http_requests_total{method=\"GET\",route=\"/operator/login\",status=\"200\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("ceredis_commit_batch_size")
            && metrics.contains("ceredis_writer_queue_depth")
    );
    let ca = client
        .get(app.url("/ca.crt"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(ca.as_bytes(), app.ca_pem().as_slice());

    // The redirect listener, started on its own port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(BIN)
        .args([
            "serve",
            "--data-dir",
            app.data_path().to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--redirect-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut answer = None;
    for _ in 0..100 {
        if let Ok(r) = plain
            .get(format!("http://127.0.0.1:{port}/t/x/login?a=1"))
            .send()
            .await
        {
            answer = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = answer.expect("redirect listener answers");
    assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
    let location = r.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with("https://127.0.0.1:") && location.ends_with("/t/x/login?a=1"),
        "{location}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn architecture_names_only_paths_that_exist() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/ARCHITECTURE.md")).unwrap();
    let lines = text.lines().count();
    assert!(
        lines <= 140,
        "ARCHITECTURE.md stays within two pages ({lines} lines)"
    );
    let mut named = 0;
    for chunk in text.split('`').skip(1).step_by(2) {
        if [
            "src/",
            "tests/",
            "benches/",
            "assets/",
            "plugins/",
            "firmware/",
            ".ci/",
        ]
        .iter()
        .any(|p| chunk.starts_with(p))
        {
            named += 1;
            assert!(
                std::path::Path::new(root).join(chunk).exists(),
                "ARCHITECTURE.md names `{chunk}`, which does not exist"
            );
        }
    }
    assert!(
        named >= 10,
        "ARCHITECTURE.md names the module map ({named} paths)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_metrics_token_only_the_scraper_that_presents_it_reads_metrics() {
    let mut app = Appliance::init_with_env(&[("CEREDIS_METRICS_TOKEN", "scrape-secret-123")]);
    app.start();
    let client = app.client();
    let r = client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "metrics_forbidden".into())
    );
    let r = client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-secret-12")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = client
        .get(app.url("/metrics"))
        .bearer_auth("scrape-secret-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("ceredis_http_requests_total")
    );
}
