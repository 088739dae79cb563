//! Federation: a real hub process (`ceredis hub serve`) and real sites. Enrolment with a
//! one-time token that pins the hub's CA; every later request signed by the site key; and
//! the ways in: reused, expired, foreign and malformed tokens, unsigned, forged, replayed
//! and stale requests, revoked sites.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use reqwest::StatusCode;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use crate::support::*;

/// Where a hub keeps its records: every test here runs on both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

pub const ENGINES: [Engine; 2] = [Engine::Sqlite, Engine::Postgres];

/// A hub in its own temporary data directory.
pub struct Hub {
    _dir: tempfile::TempDir,
    pub data: PathBuf,
    child: Option<Child>,
    pub base: String,
    /// The PostgreSQL database of a hub on PostgreSQL.
    pub postgres: Option<String>,
}

impl Hub {
    pub fn start(engine: Engine) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("hub");
        let postgres = (engine == Engine::Postgres).then(|| crate::postgres::cluster().database());
        let mut hub = Hub {
            _dir: dir,
            data,
            child: None,
            base: String::new(),
            postgres,
        };
        hub.spawn("127.0.0.1:0");
        hub
    }

    fn spawn(&mut self, listen: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.with_file_name("hub.log"))
            .unwrap();
        let mut command = Command::new(BIN);
        command.args(["hub", "serve", "--data-dir"]).arg(&self.data);
        if let Some(p) = &self.postgres {
            command.args(["--postgres", p]);
        }
        let mut child = command
            .args(["--listen", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        self.base = loop {
            let line = lines.next().expect("the hub printed its address").unwrap();
            if let Some(url) = line.strip_prefix("ceredis hub: listening on ") {
                let port = url.rsplit(':').next().unwrap().trim();
                break format!("https://127.0.0.1:{port}");
            }
        };
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    /// SIGKILL, as a crash or a cut link would leave it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the hub again on the same address and records.
    pub fn restart(&mut self) {
        self.stop();
        let listen = self.base.trim_start_matches("https://").to_string();
        self.spawn(&listen);
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(BIN);
        command.args(args).arg("--data-dir").arg(&self.data);
        if let Some(p) = &self.postgres {
            command.args(["--postgres", p]);
        }
        command.output().unwrap()
    }

    /// A fresh one-time token.
    pub fn token(&self, label: &str) -> String {
        let out = self.cli(&["hub", "token", "--label", label]);
        assert!(out.status.success(), "{}", stderr(&out));
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(token.starts_with("ceh1."), "{token}");
        token
    }

    pub fn client(&self) -> reqwest::Client {
        client_trusting(&std::fs::read(self.data.join("tls/ca.crt")).unwrap())
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs `ceredis federation …` on a site; `(success, stdout + stderr)`.
fn federation(site: &Appliance, args: &[&str]) -> (bool, String) {
    let mut all = vec!["federation"];
    all.extend_from_slice(args);
    let out = site.cli(&all);
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

fn site_key(site: &Appliance) -> Ed25519KeyPair {
    Ed25519KeyPair::from_pkcs8(&std::fs::read(site.data.join("keys/site.key")).unwrap()).unwrap()
}

fn site_id(key: &Ed25519KeyPair) -> String {
    ceredis::identity::site_id(key.public_key().as_ref())
}

fn joined_row(data: &Path) -> Option<String> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("system.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row("SELECT hub_id FROM federation", [], |r| r.get(0))
        .ok()
}

/// A request to the hub signed by `key` as site `claimed`, at `time`, for `signed_path`
/// (sent to `sent_path`).
struct Probe<'a> {
    key: &'a Ed25519KeyPair,
    claimed: &'a str,
    time: i64,
    method: reqwest::Method,
    signed_path: &'a str,
    sent_path: &'a str,
    body: &'a [u8],
}

impl Probe<'_> {
    async fn send(&self, hub: &Hub) -> (StatusCode, Value, Option<String>) {
        let sig = ceredis::federation::sign(
            self.key,
            self.method.as_str(),
            self.signed_path,
            self.time,
            self.body,
        );
        let r = hub
            .client()
            .request(
                self.method.clone(),
                format!("{}{}", hub.base, self.sent_path),
            )
            .header("x-ceredis-site", self.claimed)
            .header("x-ceredis-time", self.time.to_string())
            .header("x-ceredis-signature", sig)
            .body(self.body.to_vec())
            .send()
            .await
            .unwrap();
        let hub_time = r
            .headers()
            .get("x-ceredis-hub-time")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status(), r.json().await.unwrap_or_default(), hub_time)
    }
}

fn probe<'a>(
    key: &'a Ed25519KeyPair,
    claimed: &'a str,
    method: reqwest::Method,
    path: &'a str,
    body: &'a [u8],
) -> Probe<'a> {
    Probe {
        key,
        claimed,
        time: now(),
        method,
        signed_path: path,
        sent_path: path,
        body,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_site_joins_its_hub_with_a_one_time_token_and_every_request_is_signed() {
    for engine in ENGINES {
        a_site_joins_its_hub_with_a_one_time_token_and_every_request_is_signed_on(engine).await;
    }
}

async fn a_site_joins_its_hub_with_a_one_time_token_and_every_request_is_signed_on(engine: Engine) {
    let hub = Hub::start(engine);
    let a = Appliance::init();
    let b = Appliance::init();
    let token = hub.token("École A");

    let (ok, text) = federation(&a, &["join", &hub.base, &token, "--name", "École A"]);
    assert!(ok, "{text}");
    assert!(text.contains("Joined hub hub-"), "{text}");
    let (ok, text) = federation(&a, &["status"]);
    assert!(ok && text.contains("reachable"), "{text}");
    assert!(text.contains(&site_id(&site_key(&a))), "{text}");

    // The token was used up: B cannot join with it, and B records no hub.
    let (ok, text) = federation(&b, &["join", &hub.base, &token]);
    assert!(!ok && text.contains("token_used"), "{text}");
    assert_eq!(joined_row(&b.data), None);
    let (ok, text) = federation(&b, &["status"]);
    assert!(!ok && text.contains("has not joined"), "{text}");

    let (ka, kb) = (site_key(&a), site_key(&b));
    let id_a = site_id(&ka);
    let get = reqwest::Method::GET;
    let path = "/federation/v1/site";
    // Unsigned.
    let r = hub
        .client()
        .get(format!("{}{path}", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "signature_required");
    // Control: A's own signature passes.
    let (status, v, _) = probe(&ka, &id_a, get.clone(), path, b"").send(&hub).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["site"]["site_id"], id_a.as_str());
    assert_eq!(v["site"]["name"], "École A");
    // B's key claiming to be A.
    let (status, v, _) = probe(&kb, &id_a, get.clone(), path, b"").send(&hub).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("bad_signature"))
    );
    // A's signature of another request, replayed here.
    let other = "/federation/v1/site?x=1";
    let (status, v, _) = Probe {
        signed_path: other,
        ..probe(&ka, &id_a, get.clone(), path, b"")
    }
    .send(&hub)
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("bad_signature"))
    );
    // A's signature, an hour old: refused, with the hub's time to correct the clock.
    let (status, v, hub_time) = Probe {
        time: now() - 3600,
        ..probe(&ka, &id_a, get.clone(), path, b"")
    }
    .send(&hub)
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("clock_skew"))
    );
    let hub_time: i64 = hub_time.unwrap().parse().unwrap();
    assert!((hub_time - now()).abs() < 60);
    // A site the hub does not know.
    let id_b = site_id(&kb);
    let (status, v, _) = probe(&kb, &id_b, get.clone(), path, b"").send(&hub).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("site_unknown"))
    );

    // Enrolling a key under another site's id is refused, and the token stays usable.
    let fresh = hub.token("École B");
    let secret = fresh.split('.').nth(1).unwrap();
    let body = serde_json::to_vec(&json!({
        "token": secret, "name": "Imposteur",
        "public_key": B64.encode(kb.public_key().as_ref()),
    }))
    .unwrap();
    let enrol = "/federation/v1/enrol";
    let post = reqwest::Method::POST;
    let (status, v, _) = probe(&kb, &id_a, post.clone(), enrol, &body)
        .send(&hub)
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("site_id_mismatch"))
    );
    // Signed by A's key for B's public key: B's id, but not B's signature.
    let (status, v, _) = probe(&ka, &id_b, post.clone(), enrol, &body)
        .send(&hub)
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("bad_signature"))
    );
    let (ok, text) = federation(&b, &["join", &hub.base, &fresh, "--name", "École B"]);
    assert!(ok, "{text}");

    // Revoked: A's requests are refused, a fresh token does not bring it back, B goes on.
    let out = hub.cli(&["hub", "revoke", &id_a]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (ok, text) = federation(&a, &["status"]);
    assert!(!ok && text.contains("site_revoked"), "{text}");
    let again = hub.token("École A, again");
    let (ok, text) = federation(&a, &["join", &hub.base, &again]);
    assert!(!ok && text.contains("site_revoked"), "{text}");
    let (ok, text) = federation(&b, &["status"]);
    assert!(ok, "{text}");
    let sites = stdout(&hub.cli(&["hub", "sites"]));
    let line_a = sites.lines().find(|l| l.starts_with(&id_a)).unwrap();
    let line_b = sites.lines().find(|l| l.starts_with(&id_b)).unwrap();
    assert!(
        line_a.contains("REVOKED") && !line_b.contains("REVOKED"),
        "{sites}"
    );
}

#[tokio::test]
async fn a_token_for_another_hub_an_expired_or_malformed_token_changes_nothing() {
    for engine in ENGINES {
        a_token_for_another_hub_an_expired_or_malformed_token_changes_nothing_on(engine).await;
    }
}

async fn a_token_for_another_hub_an_expired_or_malformed_token_changes_nothing_on(engine: Engine) {
    let hub = Hub::start(engine);
    let other = Hub::start(engine);
    let site = Appliance::init();

    // The token pins `other`'s CA: `hub` is not the hub it was issued by.
    let foreign = other.token("École");
    let (ok, text) = federation(&site, &["join", &hub.base, &foreign]);
    assert!(
        !ok && text.contains("is not the hub that issued this token"),
        "{text}"
    );
    assert_eq!(joined_row(&site.data), None);

    let plain = hub.base.replace("https://", "http://");
    let (ok, text) = federation(&site, &["join", &plain, &hub.token("École")]);
    assert!(!ok && text.contains("must start with https://"), "{text}");

    let out = hub.cli(&["hub", "token", "--label", "École", "--valid-hours", "0"]);
    let expired = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (ok, text) = federation(&site, &["join", &hub.base, &expired]);
    assert!(!ok && text.contains("token_expired"), "{text}");

    let token = hub.token("École");
    for bad in [
        token.replacen("ceh1", "ceh9", 1),
        token[..token.len() - 2].to_string(),
        format!("{token}.extra"),
    ] {
        let (ok, text) = federation(&site, &["join", &hub.base, &bad]);
        assert!(
            !ok && text.contains("not an enrolment token"),
            "{bad}: {text}"
        );
    }
    // A secret the hub never issued, under the right fingerprint.
    let fp = token.rsplit('.').next().unwrap();
    let unknown = format!("ceh1.{}.{fp}", B64.encode([9u8; 32]));
    let (ok, text) = federation(&site, &["join", &hub.base, &unknown]);
    assert!(!ok && text.contains("token_unknown"), "{text}");
    assert_eq!(joined_row(&site.data), None);

    // The hub is not reachable: a clear error, nothing recorded.
    let gone = hub.base.clone();
    drop(hub);
    std::thread::sleep(Duration::from_millis(100));
    let (ok, text) = federation(&site, &["join", &gone, &token]);
    assert!(!ok && text.contains("cannot be reached"), "{text}");
    assert_eq!(joined_row(&site.data), None);

    // And the right token for the right hub joins.
    let (ok, text) = federation(&site, &["join", &other.base, &other.token("École")]);
    assert!(ok, "{text}");
    assert!(joined_row(&site.data).is_some());
}

/// Every row of every table of a tenant database, as text, but what is the appliance's own
/// bookkeeping: the continuity state (whose counters move with each push and restore), the
/// change log and the sync versions and cursors (a restore names which site wrote what, and
/// logs a replayed batch as the batch), the clock, and when a user row was written here.
fn dump(db: &Path) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             AND name NOT IN ('continuity', 'sync_cursors', 'sync_versions', 'change_log')
             ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = Vec::new();
    for t in tables {
        let query = match t.as_str() {
            "users" => "SELECT id, sourced_id, username, given_name, family_name, email, role,
                               password_hash, must_change_password, active, agent_name
                        FROM users"
                .to_string(),
            "tenant_settings" => "SELECT * FROM tenant_settings WHERE key <> 'sync.hlc'".into(),
            _ => format!("SELECT * FROM \"{t}\""),
        };
        let mut stmt = conn.prepare(&query).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                let cells: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect();
                Ok(format!("{t}: {}", cells.join(" | ")))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        out.extend(rows);
    }
    out
}

fn hub_chunks(hub: &Hub) -> Vec<Vec<u8>> {
    const CHUNKS: &str = "SELECT data FROM continuity_chunks ORDER BY generation, idx";
    if let Some(p) = &hub.postgres {
        let hex = crate::postgres::cluster().psql(
            p,
            "SELECT encode(data, 'hex') FROM continuity_chunks ORDER BY generation, idx",
        );
        return hex
            .lines()
            .map(|l| {
                (0..l.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                    .collect()
            })
            .collect();
    }
    let db = rusqlite::Connection::open_with_flags(
        hub.data.join("hub.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.prepare(CHUNKS)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Every byte the hub keeps: its database file, or a dump of its PostgreSQL database.
fn hub_batches(hub: &Hub) -> i64 {
    const COUNT: &str = "SELECT count(*) FROM continuity_batches";
    if let Some(p) = &hub.postgres {
        return crate::postgres::cluster()
            .psql(p, COUNT)
            .trim()
            .parse()
            .unwrap();
    }
    rusqlite::Connection::open_with_flags(
        hub.data.join("hub.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
    .query_row(COUNT, [], |r| r.get(0))
    .unwrap()
}

/// The first column of the first row a query of the hub's records returns, as text.
fn hub_text(hub: &Hub, sql: &str) -> String {
    if let Some(p) = &hub.postgres {
        return crate::postgres::cluster()
            .psql(p, sql)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
    }
    rusqlite::Connection::open_with_flags(
        hub.data.join("hub.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
    .query_row(sql, [], |r| {
        Ok(match r.get_ref(0)? {
            rusqlite::types::ValueRef::Integer(i) => i.to_string(),
            rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).to_string(),
            other => format!("{other:?}"),
        })
    })
    .unwrap_or_default()
}

fn hub_bytes(hub: &Hub) -> Vec<u8> {
    match &hub.postgres {
        Some(p) => crate::postgres::cluster().dump(p),
        None => std::fs::read(hub.data.join("hub.db")).unwrap(),
    }
}

/// Flips one bit of the hub's newest chunk (twice restores it).
fn flip(hub: &Hub) {
    if let Some(p) = &hub.postgres {
        crate::postgres::cluster().psql(
            p,
            "UPDATE continuity_chunks SET data = set_byte(data, 20, get_byte(data, 20) # 64)
             WHERE (generation, idx) =
                   (SELECT generation, idx FROM continuity_chunks ORDER BY idx DESC LIMIT 1)",
        );
        return;
    }
    let db = rusqlite::Connection::open(hub.data.join("hub.db")).unwrap();
    let (g, idx, mut data): (i64, i64, Vec<u8>) = db
        .query_row(
            "SELECT generation, idx, data FROM continuity_chunks ORDER BY idx DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    data[20] ^= 0x40;
    db.execute(
        "UPDATE continuity_chunks SET data = ?3 WHERE generation = ?1 AND idx = ?2",
        rusqlite::params![g, idx, data],
    )
    .unwrap();
}

fn join(hub: &Hub, site: &Appliance, label: &str) {
    let (ok, text) = federation(site, &["join", &hub.base, &hub.token(label)]);
    assert!(ok, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_restored_from_the_hub_equals_its_source_and_the_hub_holds_only_ciphertext() {
    for engine in ENGINES {
        a_tenant_restored_from_the_hub_equals_its_source_and_the_hub_holds_only_ciphertext_on(
            engine,
        )
        .await;
    }
}

async fn a_tenant_restored_from_the_hub_equals_its_source_and_the_hub_holds_only_ciphertext_on(
    engine: Engine,
) {
    let hub = Hub::start(engine);
    let mut a = Appliance::init();
    a.start();
    let s = crate::assessment::school(&a).await;
    crate::assessment::assess_lea(&s).await;
    a.kill();
    join(&hub, &a, "École A");
    let recovery = enable_copy(&a);
    assert!(recovery.starts_with("cer1."), "{recovery}");
    let (ok, text) = federation(&a, &["push"]);
    assert!(ok && text.contains("generation 1 committed"), "{text}");
    // Pushing again makes a new generation; the hub keeps only the newest, so what the
    // school erases leaves the hub with the generations that held it.
    let first = hub_chunks(&hub);
    // A change after it goes as a batch: generation 1 stays, with one batch beside it.
    let out = a.cli(&[
        "user",
        "add",
        "--tenant",
        "ecole",
        "--username",
        "apres",
        "--given-name",
        "Camille-Apres",
        "--family-name",
        "Nouvelle",
        "--role",
        "student",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (ok, text) = federation(&a, &["push"]);
    assert!(ok && text.contains("1 batches sent"), "{text}");
    assert_eq!(hub_batches(&hub), 1);
    let (ok, text) = federation(&a, &["push"]);
    assert!(
        ok && text.contains("0 batches sent"),
        "nothing new, nothing sent: {text}"
    );
    let chunks = hub_chunks(&hub);
    assert_eq!(chunks, first, "generation 1 is still the hub's");

    // Only ciphertext at the hub: none of the school's words, in the chunks or anywhere in
    // the hub's database.
    let hub_db = hub_bytes(&hub);
    // The source's words, wherever SQLite keeps them (the file or its write-ahead log).
    let mut tenant_db = std::fs::read(a.data.join("tenants/ecole/tenant.db")).unwrap();
    tenant_db.extend(std::fs::read(a.data.join("tenants/ecole/tenant.db-wal")).unwrap_or_default());
    for marker in ["chercheuse", "Prénom", "4e A", "Camille-Apres"] {
        let m = marker.as_bytes();
        assert!(
            tenant_db.windows(m.len()).any(|w| w == m),
            "{marker} is in the source"
        );
        assert!(
            !hub_db.windows(m.len()).any(|w| w == m),
            "{marker} at the hub"
        );
        for c in &chunks {
            assert!(!c.windows(m.len()).any(|w| w == m), "{marker} in a chunk");
        }
    }

    let mut b = Appliance::init();
    join(&hub, &b, "École B");
    // Another recovery key finds nothing, and restores nothing.
    let (ok, text) = federation(
        &b,
        &[
            "restore",
            "--tenant",
            "ecole",
            "--recovery-key",
            &format!("cer1.{}", B64.encode([5u8; 32])),
        ],
    );
    assert!(!ok && text.contains("no_continuity_copy"), "{text}");
    assert!(!b.data.join("tenants/ecole").exists());

    // A chunk altered at the hub: the restore refuses, and creates nothing.
    flip(&hub);
    let restore = ["restore", "--tenant", "ecole", "--recovery-key", &recovery];
    let (ok, text) = federation(&b, &restore);
    assert!(!ok && text.contains("does not decrypt"), "{text}");
    assert!(!b.data.join("tenants/ecole").exists());
    let out = b.cli(&["tenant", "list"]);
    assert!(!stdout(&out).contains("ecole"));
    flip(&hub);

    // The right key restores the school, row for row: the generation and the batch after it.
    let (ok, text) = federation(&b, &restore);
    assert!(
        ok && text.contains("Restored `ecole`") && text.contains("and 1 batches"),
        "{text}"
    );
    let source = dump(&a.data.join("tenants/ecole/tenant.db"));
    let restored = dump(&b.data.join("tenants/ecole/tenant.db"));
    assert!(source.len() > 50, "{}", source.len());
    assert_eq!(source, restored);
    // And it works: its teacher signs in and finds Léa's record.
    b.start();
    let prof = login(&b, "/t/ecole/login", "prof", PASSWORD).await.unwrap();
    let record = crate::assessment::pupil_record(&prof, s.ids["lea"]).await;
    assert!(
        !record["evidence"].as_array().unwrap().is_empty(),
        "{record}"
    );

    // The old appliance no longer owns the copy: its pushes are refused, in plain words.
    let (ok, text) = federation(&a, &["push"]);
    assert!(!ok && text.contains("not_owner"), "{text}");
    let (_, status) = federation(&a, &["status"]);
    assert!(status.contains("last sync failed"), "{status}");
    // The new one carries on with batches after the generation it restored (its first
    // only steps over what it restored), and its next generation holds the old site's
    // batch: the hub drops both.
    let (ok, text) = federation(&b, &["push"]);
    assert!(ok && text.contains("1 batches sent"), "{text}");
    assert_eq!(hub_batches(&hub), 2);
    let (ok, text) = federation(&b, &["push", "--full"]);
    assert!(ok && text.contains("generation 2 committed"), "{text}");
    assert_eq!(hub_batches(&hub), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_cut_mid_transfer_resumes_and_resends_only_what_the_hub_lacks() {
    for engine in ENGINES {
        a_push_cut_mid_transfer_resumes_and_resends_only_what_the_hub_lacks_on(engine).await;
    }
}

async fn a_push_cut_mid_transfer_resumes_and_resends_only_what_the_hub_lacks_on(engine: Engine) {
    use std::sync::atomic::Ordering;
    let hub = Hub::start(engine);
    let a = stopped_school().await;
    // 3 MiB that do not compress: the copy takes 4 chunks and more.
    ballast(&a, "ballast", 3 << 20);
    let link = relay(hub.base.replace("https://", "")).await;
    let (relay, budget) = (link.url.clone(), link.budget.clone());
    let (ok, text) = federation(&a, &["join", &relay, &hub.token("École A")]);
    assert!(ok, "{text}");
    let recovery = enable_copy(&a);

    // The link is cut after 1.5 MiB: the second data chunk never arrives whole.
    budget.store(3 << 19, Ordering::SeqCst);
    let before = link.sent.load(Ordering::SeqCst);
    let (ok, text) = federation(&a, &["push"]);
    assert!(!ok && text.contains("cannot be reached"), "{text}");
    assert!(
        link.sent.load(Ordering::SeqCst) - before <= 3 << 19,
        "the link was cut"
    );
    let stored = hub_chunks(&hub).len();
    assert!(stored >= 1, "the hub kept what arrived before the cut");
    let (_, status) = federation(&a, &["status"]);
    assert!(status.contains("cannot be reached"), "{status}");

    // Healed: the push resumes the same generation and sends only the missing chunks.
    budget.store(i64::MAX, Ordering::SeqCst);
    let (ok, text) = federation(&a, &["push"]);
    assert!(ok, "{text}");
    let line = text.lines().find(|l| l.contains("committed")).unwrap();
    assert!(
        line.contains("generation 1 committed") && line.contains("resumed"),
        "{line}"
    );
    let total: usize = line
        .split('(')
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let sent: usize = line
        .split(", ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(total >= 4, "{line}");
    assert_eq!(sent, total - stored, "{line}");
    assert!(!a.data.join("spool/continuity/ecole").exists());

    // What the hub committed restores the school exactly.
    let b = Appliance::init();
    join(&hub, &b, "École B");
    let (ok, text) = federation(
        &b,
        &["restore", "--tenant", "ecole", "--recovery-key", &recovery],
    );
    assert!(ok, "{text}");
    assert_eq!(
        dump(&a.data.join("tenants/ecole/tenant.db")),
        dump(&b.data.join("tenants/ecole/tenant.db"))
    );
}

/// The generation `ceredis federation status` reports for tenant `ecole`, and its line.
fn committed_generation(site: &Appliance) -> (i64, String) {
    let (_, text) = federation(site, &["status"]);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("ecole:"))
        .unwrap_or_default()
        .to_string();
    let generation = line
        .split("generation ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    (generation, line)
}

/// The last change of the school the hub holds, as `federation status` says.
fn sent_through(site: &Appliance) -> i64 {
    let (_, line) = committed_generation(site);
    line.split("changes through ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Polls `ok` for up to 60 s.
async fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_site_pushes_by_itself_and_catches_up_after_the_hub_comes_back() {
    for engine in ENGINES {
        a_serving_site_pushes_by_itself_and_catches_up_after_the_hub_comes_back_on(engine).await;
    }
}

async fn a_serving_site_pushes_by_itself_and_catches_up_after_the_hub_comes_back_on(
    engine: Engine,
) {
    let mut hub = Hub::start(engine);
    let mut a = Appliance::init_with_env(&[
        ("CEREDIS_FEDERATION__SYNC_INTERVAL_SECS", "1"),
        ("CEREDIS_FEDERATION__RETRY_MIN_SECS", "1"),
    ]);
    a.start();
    let s = crate::assessment::school(&a).await;
    join(&hub, &a, "École A");
    // The school's admin turns the copy on from her page and sees the recovery key once;
    // a teacher cannot.
    let path = "/t/ecole/admin/continuity";
    assert_eq!(s.prof.get(path).await.status(), StatusCode::FORBIDDEN);
    let r = crate::apps::post_form(&s.prof, path, &[]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let page = crate::apps::post_form(&s.admin, path, &[])
        .await
        .text()
        .await
        .unwrap();
    let recovery = page
        .split("cer1.")
        .nth(1)
        .map(|rest| format!("cer1.{}", &rest[..43]))
        .unwrap_or_else(|| panic!("no recovery key in {page}"));
    assert!(continuity_key_parses(&recovery), "{recovery}");
    let again = crate::apps::post_form(&s.admin, path, &[])
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !again.contains("cer1.") && again.contains("déjà activée"),
        "{again}"
    );
    // Nobody runs `federation push`: the server does.
    eventually("a first automatic push", || committed_generation(&a).0 >= 1).await;

    // A change is pushed on its own.
    let (generation, before) = (committed_generation(&a).0, sent_through(&a));
    add_user(&s.admin, "ecole", "nouvelle", "student").await;
    eventually("the change pushed", || sent_through(&a) > before).await;
    assert_eq!(
        committed_generation(&a).0,
        generation,
        "a change goes as a batch, not as a new generation"
    );

    // The hub goes away: the site says why it cannot push, in plain words, and retries.
    hub.stop();
    add_user(&s.admin, "ecole", "pendant", "student").await;
    eventually("the failure shown", || {
        committed_generation(&a).1.contains("cannot be reached")
    })
    .await;
    // The operator console says it too.
    let op = login(&a, "/operator/login", "operator", PASSWORD)
        .await
        .unwrap();
    let console = op.get("/operator").await.text().await.unwrap();
    assert!(
        console.contains("Fédération") && console.contains("<code>ecole</code>"),
        "{console}"
    );
    assert!(console.contains("cannot be reached"), "{console}");
    let admin_page = s.admin.get(path).await.text().await.unwrap();
    assert!(admin_page.contains("cannot be reached"), "{admin_page}");
    let stuck = sent_through(&a);
    let line = committed_generation(&a).1;
    let waiting: i64 = line
        .split(" waiting")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        waiting > 0,
        "the change made while the hub was away waits: {line}"
    );
    // Back: the retries catch up without anyone doing anything, and the error clears.
    hub.restart();
    eventually("caught up after the hub came back", || {
        let line = committed_generation(&a).1;
        sent_through(&a) > stuck && !line.contains("failed") && line.contains(", 0 waiting")
    })
    .await;
    let console = op.get("/operator").await.text().await.unwrap();
    assert!(!console.contains("cannot be reached"), "{console}");
    // /metrics counts the pushes and the pulls, failed while the hub was away, then ok.
    let metrics = a
        .client()
        .get(a.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "ceredis_continuity_pushes_total{outcome=\"ok\"}",
        "ceredis_continuity_pulls_total{outcome=\"ok\"}",
        "ceredis_continuity_pulls_total{outcome=\"failed\"}",
        "ceredis_continuity_batches_pulled_total",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // What the hub holds has the user added while it was away.
    let b = Appliance::init();
    join(&hub, &b, "École B");
    let (ok, text) = federation(
        &b,
        &["restore", "--tenant", "ecole", "--recovery-key", &recovery],
    );
    assert!(ok, "{text}");
    let db = rusqlite::Connection::open_with_flags(
        b.data.join("tenants/ecole/tenant.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let users: Vec<String> = db
        .prepare("SELECT username FROM users WHERE username IN ('nouvelle', 'pendant')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(users.len(), 2, "{users:?}");
    a.kill();
}

fn continuity_key_parses(key: &str) -> bool {
    ceredis::federation::continuity::RecoveryKey::parse(key).is_ok()
}

/// Copies a batch folder.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test]
async fn a_site_with_no_link_carries_its_copy_to_the_hub_by_hand() {
    for engine in ENGINES {
        a_site_with_no_link_carries_its_copy_to_the_hub_by_hand_on(engine).await;
    }
}

async fn a_site_with_no_link_carries_its_copy_to_the_hub_by_hand_on(engine: Engine) {
    let hub = Hub::start(engine);
    let a = stopped_school().await;
    join(&hub, &a, "École A");
    let recovery = enable_copy(&a);

    let usb = tempfile::tempdir().unwrap();
    let usb_path = usb.path().to_str().unwrap();
    // As the operator types it: `sync` is another name for `federation`.
    let out = a.cli(&["sync", "export", "--to", usb_path]);
    let (ok, text) = (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    );
    assert!(ok, "{text}");
    let folder = PathBuf::from(
        text.lines()
            .next()
            .unwrap()
            .split(": ")
            .nth(1)
            .unwrap()
            .trim(),
    );
    assert!(folder.join("batch.sig").exists(), "{text}");

    // Altered on the way: a batch whose manifest changed, or a chunk that changed, is
    // refused.
    let forged = tempfile::tempdir().unwrap();
    copy_dir(&folder, &forged.path().join("b"));
    let manifest = forged.path().join("b/batch.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("\"generation\": 1", "\"generation\": 7"),
    )
    .unwrap();
    let out = hub.cli(&["hub", "import", forged.path().to_str().unwrap()]);
    assert!(
        !out.status.success() && stderr(&out).contains("bad_signature"),
        "{}",
        stderr(&out)
    );
    let altered = tempfile::tempdir().unwrap();
    copy_dir(&folder, &altered.path().join("b"));
    let chunk = altered.path().join("b/chunk-000001");
    let mut bytes = std::fs::read(&chunk).unwrap();
    bytes[5] ^= 1;
    std::fs::write(&chunk, bytes).unwrap();
    let out = hub.cli(&["hub", "import", altered.path().to_str().unwrap()]);
    assert!(
        !out.status.success() && stderr(&out).contains("does not match its SHA-256"),
        "{}",
        stderr(&out)
    );

    // The real one is committed; importing it again changes nothing.
    let out = hub.cli(&["hub", "import", usb_path]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("generation 1 committed"),
        "{}",
        stdout(&out)
    );
    let chunks = hub_chunks(&hub);
    let out = hub.cli(&["hub", "import", usb_path]);
    assert!(stdout(&out).contains("already there"), "{}", stdout(&out));
    assert_eq!(hub_chunks(&hub), chunks);

    // And it restores the school on another appliance.
    let b = Appliance::init();
    join(&hub, &b, "École B");
    let (ok, text) = federation(
        &b,
        &["restore", "--tenant", "ecole", "--recovery-key", &recovery],
    );
    assert!(ok, "{text}");
    assert_eq!(
        dump(&a.data.join("tenants/ecole/tenant.db")),
        dump(&b.data.join("tenants/ecole/tenant.db"))
    );
}

/// Puts `size` random bytes (which do not compress) in the school's database, as an
/// attachment that no statement names yet: the continuity copy holds it, no batch does.
fn ballast(site: &Appliance, name: &str, size: u64) {
    rusqlite::Connection::open(site.data.join("tenants/ecole/tenant.db"))
        .unwrap()
        .execute(
            "INSERT OR REPLACE INTO xapi_attachments (sha2, content_type, length, content)
             VALUES (?1, 'application/octet-stream', ?2, randomblob(?2))",
            rusqlite::params![name, size as i64],
        )
        .unwrap();
}

/// A site with the test school, stopped.
async fn stopped_school() -> Appliance {
    let mut a = Appliance::init();
    a.start();
    crate::assessment::school(&a).await;
    a.kill();
    a
}

/// A teacher's correction of an observation to rubric `level`.
async fn correct(prof: &Session, evidence: i64, level: i64, comment: &str) {
    let r = prof
        .post(
            &format!("/t/ecole/api/evidence/{evidence}/correction"),
            json!({"level": level, "comment": comment}),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
}

/// `federation restore --alongside` of the test school on `site`; `(success, output)`.
fn restore_alongside(site: &Appliance, recovery: &str) -> (bool, String) {
    federation(
        site,
        &[
            "restore",
            "--tenant",
            "ecole",
            "--recovery-key",
            recovery,
            "--alongside",
        ],
    )
}

/// Turns the school's continuity copy on from the command line; its recovery key.
fn enable_copy(site: &Appliance) -> String {
    let (ok, text) = federation(site, &["enable", "--tenant", "ecole"]);
    assert!(ok, "{text}");
    text.lines().next().unwrap().trim().to_string()
}

/// The rounds (`SYNC_FAULT_ROUNDS`, default 3) and seed (`SYNC_FAULT_SEED`, printed) of a
/// randomized fault test.
fn fault_run() -> (u64, u64) {
    let var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let rounds = var("SYNC_FAULT_ROUNDS").unwrap_or(3);
    let seed = var("SYNC_FAULT_SEED").unwrap_or_else(|| now() as u64 | 1);
    println!("SYNC_FAULT_SEED={seed}");
    (rounds, seed)
}

/// A small deterministic generator for the fault schedule (xorshift64*).
struct Dice(u64);

impl Dice {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % below.max(1)
    }
}

/// Randomized faults on the continuity copy's generations (`push --full`, the large
/// transfers): each round the school changes, then a push meets one fault: the pushing process killed (SIGKILL) at a random moment, the hub killed
/// and restarted mid-push, the link cut after a random number of bytes, or the same push
/// delivered twice at once. Then the site pushes again, at most 3 times, and the hub's copy
/// must restore to exactly the school: nothing acknowledged lost, nothing duplicated, and
/// one generation's chunks only. `SYNC_FAULT_ROUNDS` (default 3 per engine) and
/// `SYNC_FAULT_SEED` (printed) set the run; `benches/sync_faults.sh` runs 100 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_continuity_copy_survives_random_crashes_cuts_and_duplicates() {
    let (rounds, seed) = fault_run();
    for engine in ENGINES {
        faults_on(engine, rounds, seed).await;
    }
}

async fn faults_on(engine: Engine, rounds: u64, seed: u64) {
    use std::sync::atomic::Ordering;
    let mut dice = Dice(seed);
    let mut hub = Hub::start(engine);
    let a = stopped_school().await;
    let link = relay(hub.base.replace("https://", "")).await;
    let (ok, text) = federation(&a, &["join", &link.url, &hub.token("École A")]);
    assert!(ok, "{text}");
    let recovery = enable_copy(&a);
    let source = a.data.join("tenants/ecole/tenant.db");
    let mut tally = std::collections::BTreeMap::<&str, u32>::new();
    for round in 0..rounds {
        // The school changes: 1 to 3 MiB that do not compress (2 to 4 chunks).
        let size = (1 + dice.next(3)) << 20;
        ballast(&a, &format!("round-{}", round % 4), size);
        let fault = ["kill-site", "kill-hub", "cut-link", "twice"][dice.next(4) as usize];
        *tally.entry(fault).or_default() += 1;
        let push = || {
            Command::new(BIN)
                .args(["federation", "push", "--full", "--data-dir"])
                .arg(&a.data)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        match fault {
            "kill-site" => {
                let mut p = push();
                std::thread::sleep(Duration::from_millis(dice.next(600)));
                let _ = p.kill();
                let _ = p.wait();
            }
            "kill-hub" => {
                let mut p = push();
                std::thread::sleep(Duration::from_millis(dice.next(600)));
                hub.restart();
                let _ = p.wait();
            }
            "cut-link" => {
                link.budget.store(dice.next(size) as i64, Ordering::SeqCst);
                let _ = push().wait();
                link.budget.store(i64::MAX, Ordering::SeqCst);
            }
            _ => {
                let (mut p, mut q) = (push(), push());
                let _ = p.wait();
                let _ = q.wait();
            }
        }
        // Healed: at most 3 pushes to converge.
        let mut converged = false;
        for _ in 0..3 {
            let (ok, _) = federation(&a, &["push", "--full"]);
            if ok {
                converged = true;
                break;
            }
        }
        assert!(
            converged,
            "round {round} ({fault}, seed {seed}): no convergence in 3 pushes"
        );
        // The hub holds one generation, whole, and it decrypts to the school exactly.
        let copy = decrypt_hub_copy(&hub, &recovery);
        assert_eq!(
            dump(&source),
            dump(copy.path()),
            "round {round} ({fault}, seed {seed})"
        );
    }
    println!("{engine:?}: {rounds} rounds, faults {tally:?}: 0 lost, 0 duplicated");
}

/// The hub's stored copy, decrypted with the recovery key into a database file, after
/// checking that the hub holds exactly one generation and exactly its chunks.
fn decrypt_hub_copy(hub: &Hub, recovery: &str) -> tempfile::NamedTempFile {
    use ceredis::federation::continuity::{RecoveryKey, open};
    const ROWS: &str = "SELECT generation, idx FROM continuity_chunks ORDER BY generation, idx";
    let keys: Vec<(i64, i64)> = match &hub.postgres {
        Some(p) => crate::postgres::cluster()
            .psql(p, ROWS)
            .lines()
            .map(|l| {
                let (g, i) = l.split_once('|').unwrap();
                (g.parse().unwrap(), i.parse().unwrap())
            })
            .collect(),
        None => rusqlite::Connection::open_with_flags(
            hub.data.join("hub.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap()
        .prepare(ROWS)
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap(),
    };
    let data = hub_chunks(hub);
    let generation = keys[0].0;
    assert!(
        keys.iter().all(|(g, _)| *g == generation),
        "one generation: {keys:?}"
    );
    let indexes: Vec<i64> = keys.iter().map(|(_, i)| *i).collect();
    assert_eq!(
        indexes,
        (0..keys.len() as i64).collect::<Vec<_>>(),
        "each chunk once"
    );
    let r = RecoveryKey::parse(recovery).unwrap();
    // Each site seals its generations with a key of its own, derived from the tenant's.
    let maker = hub_text(
        hub,
        "SELECT origin FROM continuity_generations WHERE committed_at IS NOT NULL
         ORDER BY generation DESC LIMIT 1",
    );
    let (key, uid) = (
        ceredis::federation::continuity::generation_key(&r.encryption_key(), &maker),
        r.tenant_uid(),
    );
    let manifest: Value =
        serde_json::from_slice(&open(&key, &uid, generation, 0, &data[0]).unwrap()).unwrap();
    assert_eq!(manifest["chunks"], keys.len() as i64, "{manifest}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut decoder = zstd::stream::write::Decoder::new(file.reopen().unwrap()).unwrap();
    for (idx, sealed) in data.iter().enumerate().skip(1) {
        let plain = open(&key, &uid, generation, idx as i64, sealed).unwrap();
        std::io::Write::write_all(&mut decoder, &plain).unwrap();
    }
    std::io::Write::flush(&mut decoder).unwrap();
    drop(decoder);
    file
}

/// The records two copies of a school must agree on, by their global names (local row ids
/// differ between copies): users, classes, enrolments, statements, documents, erased
/// users, and the conflicts recorded.
fn records(db: &Path) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let rows = |sql: &str| -> Vec<String> {
        let mut out: Vec<String> = conn
            .prepare(sql)
            .unwrap()
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        out.sort();
        out
    };
    [
        rows(
            "SELECT 'user ' || json_array(agent_name, username, given_name, family_name, email,
                     role, password_hash, must_change_password, active) FROM users",
        ),
        rows("SELECT 'class ' || json_array(uid, title, active) FROM classes"),
        rows(
            "SELECT 'enrolment ' || json_array(c.uid, u.agent_name, e.role) FROM enrolments e
              JOIN classes c ON c.id = e.class_id JOIN users u ON u.id = e.user_id",
        ),
        rows("SELECT 'statement ' || id FROM xapi_statements"),
        rows(
            "SELECT 'document ' || json_array(agent, doc_id, etag, CAST(content AS TEXT))
              FROM xapi_documents",
        ),
        rows("SELECT 'erased ' || agent_name FROM sync_tombstones"),
        rows(
            "SELECT 'setting ' || json_array(key, value) FROM tenant_settings
              WHERE key NOT IN ('sync.hlc', 'xapi.index_merged_through',
                                'federation.adopted_through') AND typeof(value) = 'text'",
        ),
        rows(
            "SELECT 'evidence ' || json_array(e.uid, u.agent_name, c.uri, e.source, e.kind,
                     s.uid, e.value_bp, e.comment, e.at)
              FROM evidence e JOIN users u ON u.id = e.pupil_id
              JOIN competencies c ON c.id = e.competency_id
              LEFT JOIN evidence s ON s.id = e.supersedes",
        ),
        rows(
            "SELECT 'level ' || json_array(d.uid, p.agent_name, c.uri, d.level_code,
                     t.agent_name, d.justification, d.at)
              FROM level_decisions d JOIN users p ON p.id = d.pupil_id
              JOIN users t ON t.id = d.decided_by JOIN competencies c ON c.id = d.competency_id",
        ),
        rows(
            "SELECT 'estimate ' || json_array(u.agent_name, c.uri, s.mastery_bp, s.evidence_count)
              FROM scores s JOIN users u ON u.id = s.pupil_id
              JOIN competencies c ON c.id = s.competency_id",
        ),
        rows(
            "SELECT 'conflict ' || json_array(entity, key, field, kept, kept_origin, lost,
                     lost_origin) FROM sync_conflicts",
        ),
    ]
    .concat()
}

async fn post_statement(site: &Appliance, key: &(String, String), statement: Value) {
    let r = site
        .client()
        .post(site.url("/t/ecole/xapi/statements"))
        .basic_auth(&key.0, Some(&key.1))
        .header("X-Experience-API-Version", "1.0.3")
        .json(&statement)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
}

fn answered(actor: &Value, n: u32) -> Value {
    json!({
        "actor": actor,
        "verb": {"id": "http://adlnet.gov/expapi/verbs/answered"},
        "object": {"id": format!("https://ecole.example/quiz/{n}")},
    })
}

async fn reset_password(admin: &Session, user: i64) -> String {
    let r = admin
        .post(&format!("/t/ecole/api/users/{user}/password"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    v["one_time_password"].as_str().unwrap().to_string()
}

/// Two sites hold one school: campus B restores it `--alongside` campus A. The hub goes
/// away; both write for days (statements, a document, a new pupil and her enrolment, an
/// erasure, the same pupil's password reset on both sides, the same observation corrected
/// on both sides, a new observation and a level decision). The hub comes back; each
/// site pulls then pushes, and within 3 rounds both hold the same records: the conflict is
/// recorded at both and the later reset wins everywhere, the erased pupil is gone from
/// both with everything of hers, and the hub keeps no batch that both applied. A third
/// appliance restored from the hub then equals them row for row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_holding_one_school_write_apart_and_converge() {
    for engine in ENGINES {
        two_sites_converge_on(engine).await;
    }
}

async fn two_sites_converge_on(engine: Engine) {
    let mut hub = Hub::start(engine);
    let mut a = Appliance::init();
    a.start();
    let s = crate::assessment::school(&a).await;
    let key = a.credential("ecole", &["statements/write", "state"]);
    let observed = crate::assessment::json_of(
        s.prof
            .post(
                &format!("/t/ecole/api/classes/{}/observations", s.class_a),
                json!({"competency": "urn:ceredis:cefr:reception:A2:1",
                       "observations": [{"pupil": s.ids["tom"], "level": 2}]}),
            )
            .await,
        StatusCode::CREATED,
    )
    .await["evidence"][0]
        .as_i64()
        .unwrap();
    let (lea, tom) = (
        crate::assessment::agent_of(&s.lea).await,
        crate::assessment::agent_of(&s.tom).await,
    );
    a.kill();
    join(&hub, &a, "Campus A");
    let recovery = enable_copy(&a);
    let (ok, text) = federation(&a, &["push"]);
    assert!(ok && text.contains("generation 1 committed"), "{text}");
    let mut b = Appliance::init();
    join(&hub, &b, "Campus B");
    let (ok, text) = restore_alongside(&b, &recovery);
    assert!(ok && text.contains("beside the other sites"), "{text}");

    // Apart: the hub is gone.
    hub.stop();
    a.start();
    let admin_a = login(&a, "/t/ecole/login", "admin-ecole", PASSWORD)
        .await
        .unwrap();
    let visitor = json!({"mbox": "mailto:visiteur@ecole.example"});
    for n in 0..2 {
        post_statement(&a, &key, answered(&visitor, n)).await;
    }
    post_statement(&a, &key, answered(&lea, 2)).await;
    let otp_a = reset_password(&admin_a, s.ids["tom"]).await;
    let (nina, _) = add_user(&admin_a, "ecole", "nina", "student").await;
    let r = admin_a
        .post(
            &format!("/t/ecole/api/classes/{}/enrolments", s.class_a),
            json!({"user_id": nina}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // The school admin, at A, publishes the school's aggregates from now on: a setting.
    let r = admin_a
        .json(
            reqwest::Method::PUT,
            "/t/ecole/api/federation/policy",
            json!({"publish_aggregates": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let prof_a = login(&a, "/t/ecole/login", "prof", PASSWORD).await.unwrap();
    correct(&prof_a, observed, 3, "relu à A").await;
    a.kill();
    b.start();
    let admin_b = login(&b, "/t/ecole/login", "admin-ecole", PASSWORD)
        .await
        .unwrap();
    for n in 10..12 {
        post_statement(&b, &key, answered(&visitor, n)).await;
    }
    let r = b
        .client()
        .put(b.url("/t/ecole/xapi/activities/state"))
        .query(&[
            ("activityId", "https://ecole.example/quiz"),
            ("agent", &tom.to_string()),
            ("stateId", "bookmark"),
        ])
        .basic_auth(&key.0, Some(&key.1))
        .header("X-Experience-API-Version", "1.0.3")
        .json(&json!({"page": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let prof_b = login(&b, "/t/ecole/login", "prof", PASSWORD).await.unwrap();
    correct(&prof_b, observed, 4, "relu à B").await;
    let fresh = crate::assessment::json_of(
        prof_b
            .post(
                &format!("/t/ecole/api/classes/{}/observations", s.class_a),
                json!({"competency": "urn:ceredis:cefr:reception:A2:2",
                       "observations": [{"pupil": s.ids["tom"], "level": 4}]}),
            )
            .await,
        StatusCode::CREATED,
    )
    .await["evidence"][0]
        .as_i64()
        .unwrap();
    let r = prof_b
        .post(
            &format!("/t/ecole/api/pupils/{}/levels", s.ids["tom"]),
            json!({"competency": "urn:ceredis:cefr:reception", "level": "A2",
                   "evidence": [fresh], "justification": "Suit les annonces courtes."}),
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let otp_b = reset_password(&admin_b, s.ids["tom"]).await;
    let r = admin_b
        .post(
            &format!("/t/ecole/api/users/{}/erasure", s.ids["lea"]),
            json!({"confirm": "lea"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    b.kill();
    for site in [&a, &b] {
        let (ok, text) = federation(site, &["push"]);
        assert!(!ok, "no hub, no push: {text}");
        let (_, status) = federation(site, &["status"]);
        assert!(status.contains("last sync failed"), "{status}");
    }

    // Together again: each site pulls, then pushes.
    hub.restart();
    let (db_a, db_b) = (
        a.data.join("tenants/ecole/tenant.db"),
        b.data.join("tenants/ecole/tenant.db"),
    );
    assert_ne!(records(&db_a), records(&db_b));
    let mut converged = None;
    for round in 1..=3 {
        for site in [&a, &b] {
            for step in ["pull", "push"] {
                let (ok, text) = federation(site, &[step]);
                assert!(ok, "round {round}, {step}: {text}");
            }
        }
        if records(&db_a) == records(&db_b) {
            converged = Some(round);
            break;
        }
    }
    let rounds = converged.expect("the two sites converge within 3 rounds");
    println!("{engine:?}: converged in {rounds} rounds");
    let held = records(&db_a);
    // Once the hub holds a site's changes, its change log forgets the copies of whole rows
    // they carried (A's policy among them: the settings table and its version keep it).
    for (site, db) in [(&a, &db_a), (&b, &db_b)] {
        let through = sent_through(site);
        assert!(through > 0);
        let rows: i64 = rusqlite::Connection::open(db)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM change_log WHERE seq <= ?1 AND kind = 'field'
                   AND json_extract(subject, '$.f') = 'row'",
                [through],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(rows, 0, "{}", site.data.display());
    }
    // A's policy holds at B too.
    assert!(
        held.iter()
            .any(|r| r == r#"setting ["federation.publish_aggregates","1"]"#),
        "{held:?}"
    );
    // Léa is gone, with everything of hers, from both.
    let lea_name = lea["account"]["name"].as_str().unwrap();
    let tom_name = tom["account"]["name"].as_str().unwrap();
    assert!(held.iter().any(|r| r == &format!("erased {lea_name}")));
    assert!(
        !held
            .iter()
            .any(|r| r.starts_with("user ") && r.contains(lea_name))
    );
    let conn =
        rusqlite::Connection::open_with_flags(&db_b, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let about_lea: i64 = conn
        .query_row(
            "SELECT count(*) FROM xapi_statements WHERE instr(full, ?1) > 0",
            [lea_name],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        about_lea, 0,
        "nothing of Léa's at B, not even A's statement"
    );
    let visitors: i64 = conn
        .query_row(
            "SELECT count(*) FROM xapi_statements WHERE instr(full, 'visiteur@') > 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(visitors, 4, "each site's statements, once");
    assert!(
        held.iter()
            .any(|r| r.starts_with("user ") && r.contains("\"nina\""))
    );
    assert!(
        held.iter()
            .any(|r| r.starts_with("document ") && r.contains(tom_name))
    );
    // Both corrections of Tom's observation stand, at both sites, and the pair is a
    // conflict; B's observation and decision are at A, with the same estimates.
    let corrections: Vec<&String> = held
        .iter()
        .filter(|r| r.starts_with("evidence ") && r.contains("\"correction\""))
        .collect();
    assert_eq!(corrections.len(), 2, "{corrections:?}");
    assert!(corrections.iter().any(|c| c.contains("relu à A")));
    assert!(corrections.iter().any(|c| c.contains("relu à B")));
    assert!(
        held.iter()
            .any(|r| r.starts_with("level ") && r.contains("Suit les annonces"))
    );
    assert!(
        held.iter()
            .any(|r| r.starts_with("estimate ") && r.contains(tom_name))
    );
    assert!(
        held.iter()
            .any(|r| r.starts_with("conflict ") && r.contains("superseded_by")),
        "{held:?}"
    );
    // The password reset on both sides: both fields it changed are conflicts, recorded at
    // both sites, and the later reset (B's) is kept.
    let conflicts: Vec<&String> = held
        .iter()
        .filter(|r| r.starts_with("conflict ") && r.contains("\"user\""))
        .collect();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    let site_b = site_id(&site_key(&b));
    for field in ["password_hash", "must_change_password"] {
        let c = conflicts
            .iter()
            .find(|c| c.contains(&format!("\"{field}\"")))
            .unwrap_or_else(|| panic!("no conflict on {field}: {conflicts:?}"));
        let v: Value = serde_json::from_str(c.trim_start_matches("conflict ")).unwrap();
        assert_eq!(v[1], tom_name, "{c}");
        assert_eq!(v[4], site_b.as_str(), "the later write is kept: {c}");
    }
    a.start();
    b.start();
    for site in [&a, &b] {
        assert!(login(site, "/t/ecole/login", "tom", &otp_b).await.is_ok());
        assert!(login(site, "/t/ecole/login", "tom", &otp_a).await.is_err());
        let nina_in: Vec<Value> = login(site, "/t/ecole/login", "admin-ecole", PASSWORD)
            .await
            .unwrap()
            .get(&format!("/t/ecole/api/classes/{}/members", s.class_a))
            .await
            .json()
            .await
            .unwrap();
        assert!(
            nina_in.iter().any(|m| m["user"]["username"] == "nina"),
            "{nina_in:?}"
        );
    }
    a.kill();
    b.kill();
    // What both applied and a generation holds is gone from the hub.
    assert_eq!(hub_batches(&hub), 0);
    let (_, status) = federation(&a, &["status"]);
    assert!(status.contains("0 waiting"), "{status}");

    // A third appliance restored from the hub holds the same school.
    let c = Appliance::init();
    join(&hub, &c, "Campus C");
    let (ok, text) = restore_alongside(&c, &recovery);
    assert!(ok, "{text}");
    let db_c = c.data.join("tenants/ecole/tenant.db");
    assert_eq!(records(&db_c), held);
}

/// Randomized faults on the batches between two holders of a school. Each round campus A
/// adds pupils (each acknowledged by `ceredis user add`), then its push meets one fault:
/// the pushing process killed (SIGKILL) at a random moment, the hub killed and restarted,
/// A's link cut after a random number of bytes, or two pushes at once; then campus B's pull
/// meets one: killed, its own link cut, two pulls at once, or none. Healed, A pushes and B
/// pulls at most 3 times, and B must then hold exactly A's records: no acknowledged pupil
/// lost, none twice. `SYNC_FAULT_ROUNDS` and `SYNC_FAULT_SEED` as for the generations;
/// `benches/sync_faults.sh` runs both 100 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_between_two_holders_survive_random_crashes_cuts_and_duplicates() {
    let (rounds, seed) = fault_run();
    for engine in ENGINES {
        batch_faults_on(engine, rounds, seed).await;
    }
}

async fn batch_faults_on(engine: Engine, rounds: u64, seed: u64) {
    use std::sync::atomic::Ordering;
    let mut dice = Dice(seed);
    let mut hub = Hub::start(engine);
    let a = stopped_school().await;
    let target = hub.base.replace("https://", "");
    let (link_a, link_b) = (relay(target.clone()).await, relay(target).await);
    let (ok, text) = federation(&a, &["join", &link_a.url, &hub.token("Campus A")]);
    assert!(ok, "{text}");
    let recovery = enable_copy(&a);
    let (ok, text) = federation(&a, &["push"]);
    assert!(ok, "{text}");
    let b = Appliance::init();
    let (ok, text) = federation(&b, &["join", &link_b.url, &hub.token("Campus B")]);
    assert!(ok, "{text}");
    let (ok, text) = restore_alongside(&b, &recovery);
    assert!(ok, "{text}");
    let (db_a, db_b) = (
        a.data.join("tenants/ecole/tenant.db"),
        b.data.join("tenants/ecole/tenant.db"),
    );
    let spawn = |site: &Appliance, step: &str| {
        Command::new(BIN)
            .args(["federation", step, "--data-dir"])
            .arg(&site.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut added = 0;
    let mut tally = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..rounds {
        for _ in 0..1 + dice.next(4) {
            added += 1;
            let name = format!("r{round}-{added}");
            let out = a.cli(&[
                "user",
                "add",
                "--tenant",
                "ecole",
                "--username",
                &name,
                "--given-name",
                &name,
                "--family-name",
                "Élève",
                "--role",
                "student",
            ]);
            assert!(out.status.success(), "{}", stderr(&out));
        }
        let push_fault = ["kill-site", "kill-hub", "cut-link", "twice"][dice.next(4) as usize];
        match push_fault {
            "kill-site" => {
                let mut p = spawn(&a, "push");
                std::thread::sleep(Duration::from_millis(dice.next(400)));
                let _ = p.kill();
                let _ = p.wait();
            }
            "kill-hub" => {
                let mut p = spawn(&a, "push");
                std::thread::sleep(Duration::from_millis(dice.next(400)));
                hub.restart();
                let _ = p.wait();
            }
            "cut-link" => {
                link_a
                    .budget
                    .store(dice.next(6000) as i64, Ordering::SeqCst);
                let _ = spawn(&a, "push").wait();
                link_a.budget.store(i64::MAX, Ordering::SeqCst);
            }
            _ => {
                let (mut p, mut q) = (spawn(&a, "push"), spawn(&a, "push"));
                let _ = p.wait();
                let _ = q.wait();
            }
        }
        let pull_fault = ["kill-site", "cut-link", "twice", "none"][dice.next(4) as usize];
        match pull_fault {
            "kill-site" => {
                let mut p = spawn(&b, "pull");
                std::thread::sleep(Duration::from_millis(dice.next(400)));
                let _ = p.kill();
                let _ = p.wait();
            }
            "cut-link" => {
                link_b
                    .budget
                    .store(dice.next(6000) as i64, Ordering::SeqCst);
                let _ = spawn(&b, "pull").wait();
                link_b.budget.store(i64::MAX, Ordering::SeqCst);
            }
            "twice" => {
                let (mut p, mut q) = (spawn(&b, "pull"), spawn(&b, "pull"));
                let _ = p.wait();
                let _ = q.wait();
            }
            _ => {}
        }
        *tally.entry(format!("push {push_fault}")).or_default() += 1;
        *tally.entry(format!("pull {pull_fault}")).or_default() += 1;
        // Healed: at most 3 rounds of A pushing and B pulling.
        let mut converged = false;
        for _ in 0..3 {
            let (pushed, _) = federation(&a, &["push"]);
            let (pulled, _) = federation(&b, &["pull"]);
            if pushed && pulled && records(&db_a) == records(&db_b) {
                converged = true;
                break;
            }
        }
        let (held_a, held_b) = (records(&db_a), records(&db_b));
        assert!(
            converged,
            "round {round} ({push_fault}, {pull_fault}, seed {seed}): no convergence in 3 \
             rounds"
        );
        // The pupils of the rounds: usernames `r<round>-<n>`.
        let pupils = |held: &[String]| {
            held.iter()
                .filter_map(|r| r.strip_prefix("user "))
                .filter_map(|r| serde_json::from_str::<Value>(r).ok())
                .filter(|u| {
                    u[1].as_str().is_some_and(|n| {
                        n.starts_with('r') && n[1..].starts_with(|c: char| c.is_ascii_digit())
                    })
                })
                .count()
        };
        assert_eq!(
            pupils(&held_b),
            added,
            "round {round}: every pupil A added, once"
        );
        let unique: std::collections::BTreeSet<&String> = held_b.iter().collect();
        assert_eq!(unique.len(), held_b.len(), "round {round}: nothing twice");
        assert_eq!(held_a, held_b);
    }
    println!(
        "{engine:?}: {rounds} rounds of batches, faults {tally:?}: {added} pupils, 0 lost, 0 \
         duplicated"
    );
}

/// The federation publishes a competency framework. The school whose admin chose to adopt
/// what the federation publishes has it after the site's next sync, once; the other school
/// does not, until its operator adopts it by hand. A published app is installed only where
/// the operator adopts it, with nothing granted. A file that is not a framework is
/// refused and publishes nothing, the same file twice publishes once, a key the hub never
/// enrolled reads nothing, and a publication altered at the hub is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framework_the_federation_publishes_reaches_the_schools_that_adopt_it() {
    for engine in ENGINES {
        published_frameworks_on(engine).await;
    }
}

async fn published_frameworks_on(engine: Engine) {
    let hub = Hub::start(engine);
    let mut a = Appliance::init();
    a.start();
    let op = operator(&a).await;
    let ecole = tenant_with_admin(&a, &op, "ecole").await;
    let lycee = tenant_with_admin(&a, &op, "lycee").await;
    let policy = "/t/ecole/api/federation/policy";
    let r = ecole
        .json(
            reqwest::Method::PUT,
            policy,
            json!({"adopt_frameworks": true}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let r = ecole
        .json(
            reqwest::Method::PUT,
            policy,
            json!({"adopt_frameworks": "oui"}),
        )
        .await;
    assert!(r.status().is_client_error(), "{}", r.status());
    let shown: Value = ecole.get(policy).await.json().await.unwrap();
    assert_eq!(
        shown["adopt_frameworks"], true,
        "a bad body changed nothing"
    );
    let other: Value = lycee
        .get("/t/lycee/api/federation/policy")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(other["adopt_frameworks"], false);
    // Another school's admin cannot set it for this one.
    let r = lycee
        .json(
            reqwest::Method::PUT,
            policy,
            json!({"adopt_frameworks": false}),
        )
        .await;
    assert!(r.status().is_client_error());
    a.kill();
    join(&hub, &a, "Site A");
    let frameworks = |slug: &str| -> usize {
        let out = a.cli(&["framework", "list", "--tenant", slug]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).lines().count()
    };
    let before = frameworks("ecole");
    assert_eq!(before, frameworks("lycee"));

    let not_a_framework = a.data.join("not-a-framework.json");
    std::fs::write(&not_a_framework, br#"{"@type": "Person", "name": "x"}"#).unwrap();
    let out = hub.cli(&[
        "hub",
        "publish",
        "--framework",
        not_a_framework.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a framework"), "{}", stderr(&out));
    let listed = |hub: &Hub| stdout(&hub.cli(&["hub", "publications"])).lines().count();
    assert_eq!(listed(&hub), 0, "nothing published");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cass-framework.jsonld"
    );
    for expected in ["Published", "already"] {
        let out = hub.cli(&["hub", "publish", "--framework", fixture]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains(expected), "{}", stdout(&out));
    }
    assert_eq!(listed(&hub), 1);

    let (ok, text) = federation(&a, &["publications"]);
    assert!(ok && text.contains("1 new publications fetched"), "{text}");
    assert!(text.contains("ecole: adopted"), "{text}");
    assert!(!text.contains("lycee: adopted"), "{text}");
    assert_eq!(frameworks("ecole"), before + 1);
    assert_eq!(frameworks("lycee"), before);
    let (ok, text) = federation(&a, &["publications"]);
    assert!(
        ok && text.contains("0 new") && !text.contains("adopted"),
        "{text}"
    );
    let (ok, text) = federation(&a, &["adopt", "--tenant", "lycee", "1"]);
    assert!(ok, "{text}");
    assert_eq!(frameworks("lycee"), before + 1);

    // An app: published with its manifest and component, fetched by every site, installed
    // only where the operator adopts it, with nothing granted. A core module, or a file
    // that is no WebAssembly at all, is not published.
    let (manifest, component) = crate::apps::example("portfolio");
    let dir = a.data.join("publish");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ceredis-app.toml"), &manifest).unwrap();
    std::fs::write(dir.join("app.wasm"), &component).unwrap();
    std::fs::write(dir.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let publish_app = |wasm: &str| {
        hub.cli(&[
            "hub",
            "publish",
            "--app-manifest",
            dir.join("ceredis-app.toml").to_str().unwrap(),
            "--app-component",
            dir.join(wasm).to_str().unwrap(),
        ])
    };
    let out = publish_app("core.wasm");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a WebAssembly component"),
        "{}",
        stderr(&out)
    );
    let out = publish_app("app.wasm");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Published app:portfolio@"),
        "{}",
        stdout(&out)
    );
    // Its id, as the hub says it (PostgreSQL may skip numbers).
    let published = stdout(&out);
    let app_id = published
        .trim()
        .trim_end_matches('.')
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    let (ok, text) = federation(&a, &["publications"]);
    assert!(ok && text.contains("1 new publications fetched"), "{text}");
    assert!(
        !text.contains("adopted app"),
        "apps are never adopted by policy: {text}"
    );
    let apps = |slug: &str| stdout(&a.cli(&["app", "list", "--tenant", slug]));
    assert!(!apps("ecole").contains("portfolio"));
    let (ok, text) = federation(&a, &["adopt", "--tenant", "ecole", &app_id]);
    assert!(ok && text.contains("nothing granted"), "{text}");
    let listed = apps("ecole");
    assert!(listed.contains("portfolio"), "{listed}");
    assert!(!apps("lycee").contains("portfolio"));

    // A key the hub never enrolled reads nothing.
    let stranger = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let id = site_id(&stranger);
    for path in [
        "/federation/v1/publications",
        "/federation/v1/publications/1",
    ] {
        let (status, body, _) = probe(&stranger, &id, reqwest::Method::GET, path, b"")
            .send(&hub)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
    // Altered at the hub: a site fetching it keeps nothing.
    let alter =
        "UPDATE publications SET data = CAST(replace(CAST(data AS TEXT), 'a', 'b') AS BLOB)";
    match &hub.postgres {
        Some(p) => {
            crate::postgres::cluster().psql(
                p,
                "UPDATE publications SET data = convert_to(replace(convert_from(data, 'UTF8'), 'a', 'b'), 'UTF8')",
            );
        }
        None => {
            rusqlite::Connection::open(hub.data.join("hub.db"))
                .unwrap()
                .execute(alter, [])
                .unwrap();
        }
    }
    let b = Appliance::init();
    join(&hub, &b, "Site B");
    let (ok, text) = federation(&b, &["publications"]);
    assert!(!ok && text.contains("does not match the SHA-256"), "{text}");
    let kept: i64 = rusqlite::Connection::open_with_flags(
        b.data.join("system.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap()
    .query_row("SELECT count(*) FROM publications", [], |r| r.get(0))
    .unwrap();
    assert_eq!(kept, 0);
}

/// A school that chose to publish its aggregates sends, per skill, how many pupils' current
/// level is each CEFR level: a count under 5 suppressed, no pupil, teacher or class named.
/// A school that did not choose sends nothing, and the hub refuses a forged publication
/// with a small count or a lowered threshold, and stores nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_school_publishes_aggregates_without_small_cells_or_names() {
    for engine in ENGINES {
        aggregates_on(engine).await;
    }
}

async fn aggregates_on(engine: Engine) {
    let hub = Hub::start(engine);
    let mut a = Appliance::init();
    a.start();
    let s = crate::assessment::school(&a).await;
    let mut pupils = vec![s.ids["lea"], s.ids["tom"]];
    for i in 0..5 {
        let (id, _) = add_user(&s.admin, "ecole", &format!("eleve-{i}"), "student").await;
        let r = s
            .admin
            .post(
                &format!("/t/ecole/api/classes/{}/enrolments", s.class_a),
                json!({"user_id": id}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        pupils.push(id);
    }
    let observations: Vec<Value> = pupils
        .iter()
        .map(|p| json!({"pupil": p, "level": 3}))
        .collect();
    let recorded = crate::assessment::json_of(
        s.prof
            .post(
                &format!("/t/ecole/api/classes/{}/observations", s.class_a),
                json!({"competency": "urn:ceredis:cefr:reception:A2:1",
                       "observations": observations}),
            )
            .await,
        StatusCode::CREATED,
    )
    .await;
    let evidence: Vec<i64> = recorded["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    // Léa is at B1, the six others at A2.
    for (i, (pupil, e)) in pupils.iter().zip(&evidence).enumerate() {
        let level = if i == 0 { "B1" } else { "A2" };
        let r = s
            .prof
            .post(
                &format!("/t/ecole/api/pupils/{pupil}/levels"),
                json!({"competency": "urn:ceredis:cefr:reception", "level": level,
                       "evidence": [e], "justification": "Comprend les annonces."}),
            )
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
    }
    let r = s
        .admin
        .json(
            reqwest::Method::PUT,
            "/t/ecole/api/federation/policy",
            json!({"publish_aggregates": true}),
        )
        .await;
    let policy: Value = r.json().await.unwrap();
    assert_eq!(
        policy,
        json!({"adopt_frameworks": false, "publish_aggregates": true})
    );
    let lea_agent = crate::assessment::agent_of(&s.lea).await;
    a.kill();
    let out = a.cli(&["tenant", "create", "lycee", "--name", "Lycée"]);
    assert!(out.status.success(), "{}", stderr(&out));
    join(&hub, &a, "Site A");
    let (ok, text) = federation(&a, &["aggregates", "--tenant", "lycee"]);
    assert!(ok && text.contains("nothing sent"), "{text}");
    let (ok, text) = federation(&a, &["aggregates", "--tenant", "ecole"]);
    assert!(ok && text.contains("published"), "{text}");
    let out = hub.cli(&["hub", "aggregates"]);
    let shown = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        shown.contains("urn:ceredis:cefr:reception: A2 6, B1 <5"),
        "{shown}"
    );
    assert!(!shown.contains("Lycée"), "{shown}");
    let stored = hub_bytes(&hub);
    for secret in [
        "eleve-0",
        "Léa",
        "4e A",
        lea_agent["account"]["name"].as_str().unwrap(),
    ] {
        let m = secret.as_bytes();
        assert!(
            !stored.windows(m.len()).any(|w| w == m),
            "{secret} at the hub"
        );
    }

    // A forged publication, signed by this enrolled site: refused, nothing stored.
    let key = site_key(&a);
    let id = site_id(&key);
    let path = format!("/federation/v1/aggregates/{}", "ab".repeat(16));
    for (min_cell, count) in [(5, 1), (1, 1), (5, 4)] {
        let body = json!({"school": "Fausse", "computed_at": 0, "min_cell": min_cell,
                          "skills": [{"competency": "urn:x", "levels": {"B1": count}}]})
        .to_string();
        let (status, v, _) = probe(&key, &id, reqwest::Method::PUT, &path, body.as_bytes())
            .send(&hub)
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["error"]["code"], "cell_too_small");
    }
    assert!(!stdout(&hub.cli(&["hub", "aggregates"])).contains("Fausse"));
}

/// A site with no link gets what the hub holds for it by hand: `hub export --site` writes
/// the other holders' batches and the publications, signed with the hub's key, and
/// `federation import` on the site applies them. Importing twice changes nothing; an
/// altered file, an altered manifest and a bundle written for another site are refused
/// before anything is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_with_no_link_gets_the_hubs_changes_by_hand() {
    for engine in ENGINES {
        hub_bundle_on(engine).await;
    }
}

async fn hub_bundle_on(engine: Engine) {
    let hub = Hub::start(engine);
    let a = stopped_school().await;
    join(&hub, &a, "Campus A");
    let recovery = enable_copy(&a);
    assert!(federation(&a, &["push"]).0);
    let b = Appliance::init();
    join(&hub, &b, "Campus B");
    let (ok, text) = restore_alongside(&b, &recovery);
    assert!(ok, "{text}");
    // From now on B has no link. A writes and pushes; the federation publishes a framework.
    let out = a.cli(&[
        "user",
        "add",
        "--tenant",
        "ecole",
        "--username",
        "nina",
        "--given-name",
        "Nina",
        "--family-name",
        "Nouvelle",
        "--role",
        "student",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(federation(&a, &["push"]).0);
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cass-framework.jsonld"
    );
    assert!(
        hub.cli(&["hub", "publish", "--framework", fixture])
            .status
            .success()
    );
    let (db_a, db_b) = (
        a.data.join("tenants/ecole/tenant.db"),
        b.data.join("tenants/ecole/tenant.db"),
    );
    assert_ne!(records(&db_a), records(&db_b));

    let usb = tempfile::tempdir().unwrap();
    let export = |site: &Appliance| {
        let out = hub.cli(&[
            "hub",
            "export",
            "--site",
            &site_id(&site_key(site)),
            "--to",
            usb.path().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        PathBuf::from(stdout(&out).trim())
    };
    let for_b = export(&b);
    // Refused before anything is applied: an altered batch, an altered manifest, a bundle
    // written for another site.
    let altered = usb.path().join("altered");
    copy_dir(&for_b, &altered);
    let batch = std::fs::read_dir(&altered)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("batch-")
        })
        .expect("A's batch is in the bundle");
    let mut bytes = std::fs::read(&batch).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&batch, bytes).unwrap();
    let (ok, text) = federation(&b, &["import", altered.to_str().unwrap()]);
    assert!(!ok && text.contains("does not match its SHA-256"), "{text}");
    copy_dir(&for_b, &altered);
    let manifest = altered.join("hub-bundle.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replacen("\"after\": ", "\"after\": 1", 1)).unwrap();
    let (ok, text) = federation(&b, &["import", altered.to_str().unwrap()]);
    assert!(
        !ok && text.contains("not signed by this site's hub"),
        "{text}"
    );
    let for_a = export(&a);
    let (ok, text) = federation(&b, &["import", for_a.to_str().unwrap()]);
    assert!(!ok && text.contains("not for this site"), "{text}");
    assert_ne!(records(&db_a), records(&db_b), "nothing was applied");

    let (ok, text) = federation(&b, &["import", for_b.to_str().unwrap()]);
    assert!(
        ok && text.contains("Imported 1 batches") && text.contains("1 new publications"),
        "{text}"
    );
    assert_eq!(records(&db_a), records(&db_b));
    let (ok, text) = federation(&b, &["import", for_b.to_str().unwrap()]);
    assert!(
        ok && text.contains("Imported 0 batches") && text.contains("0 new publications"),
        "{text}"
    );
}
