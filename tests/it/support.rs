//! The harness: real `ceredis` processes on 127.0.0.1:0 in temporary data directories,
//! driven over real TLS with a client that trusts the appliance's own CA.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_ceredis");
pub const PASSWORD: &str = "correct-horse-battery";

pub struct Appliance {
    _dir: tempfile::TempDir,
    pub data: PathBuf,
    pub setup_path: String,
    child: Option<Child>,
    pub base: String,
    env: Vec<(String, String)>,
    /// The HTTPS address to serve on (`127.0.0.1:0` unless a test needs a known port).
    pub listen: String,
}

impl Appliance {
    /// `ceredis init` in a fresh directory.
    pub fn init() -> Appliance {
        Self::init_with_env(&[])
    }

    pub fn init_with_env(env: &[(&str, &str)]) -> Appliance {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let out = Command::new(BIN)
            .args(["init", "--data-dir"])
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .envs(env.iter().cloned())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let link = text
            .split_whitespace()
            .find(|w| w.contains("/setup/"))
            .expect("init prints a setup link");
        let setup_path = link[link.find("/setup/").unwrap()..].to_string();
        Appliance {
            _dir: dir,
            data,
            setup_path,
            child: None,
            base: String::new(),
            env,
            listen: "127.0.0.1:0".into(),
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--data-dir"])
            .arg(&self.data)
            .args(["--listen", &self.listen, "--redirect-listen", ""])
            .envs(self.env.iter().cloned())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx
                .recv_timeout(deadline - std::time::Instant::now())
                .expect("server did not start; see server.log");
            if let Some(url) = line.strip_prefix("ceredis: listening on ") {
                let port = url.rsplit(':').next().unwrap().trim();
                self.base = format!("https://127.0.0.1:{port}");
                break;
            }
        }
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown, no flush, like a power cut for the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.data.join("../server.log")
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .envs(self.env.iter().cloned())
            .output()
            .unwrap()
    }

    /// Adds an API credential to tenant `slug` with these xAPI scopes, through the CLI:
    /// `(key id, secret)`.
    pub fn credential(&self, slug: &str, scopes: &[&str]) -> (String, String) {
        let mut args = vec!["credential", "add", "--tenant", slug, "--label", "test"];
        for s in scopes {
            args.extend(["--scope", s]);
        }
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .to_string()
        };
        (get("key_id="), get("secret="))
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.data.join("tls/ca.crt")).unwrap()
    }

    pub fn client(&self) -> Client {
        client_trusting(&self.ca_pem())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn data_path(&self) -> &Path {
        &self.data
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn client_trusting(ca_pem: &[u8]) -> Client {
    Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .tls_built_in_root_certs(false)
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Opens a form page with `client` (which receives the pre-session cookie) and returns the
/// page's CSRF field.
pub async fn form_csrf(client: &Client, url: &str) -> String {
    hidden_csrf(&client.get(url).send().await.unwrap().text().await.unwrap())
}

/// The `_csrf` hidden field of a page.
pub fn hidden_csrf(html: &str) -> String {
    let at = html
        .find("name=\"_csrf\" value=\"")
        .expect("page has a CSRF field")
        + "name=\"_csrf\" value=\"".len();
    html[at..].split('"').next().unwrap().to_string()
}

/// A signed-in client and its session's CSRF token.
#[derive(Clone)]
pub struct Session {
    pub client: Client,
    pub csrf: String,
    pub base: String,
}

impl Session {
    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    pub async fn json(&self, method: Method, path: &str, body: Value) -> Response {
        self.client
            .request(method, format!("{}{path}", self.base))
            .header("x-csrf-token", &self.csrf)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.json(Method::POST, path, body).await
    }
}

/// Signs in through the real login page (pre-session CSRF cookie, form post).
pub async fn login(
    app: &Appliance,
    login_path: &str,
    username: &str,
    password: &str,
) -> Result<Session, Response> {
    let client = app.client();
    let csrf = form_csrf(&client, &app.url(login_path)).await;
    let r = client
        .post(app.url(login_path))
        .header("accept", "application/json")
        .form(&[
            ("username", username),
            ("password", password),
            ("_csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    if r.status() != StatusCode::OK {
        return Err(r);
    }
    let v: Value = r.json().await.unwrap();
    Ok(Session {
        client,
        csrf: v["csrf_token"].as_str().unwrap().to_string(),
        base: app.base.clone(),
    })
}

/// Uses the init setup link to create the operator, then signs in.
pub async fn operator(app: &Appliance) -> Session {
    let client = app.client();
    let page = client.get(app.url(&app.setup_path)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csrf = hidden_csrf(&page.text().await.unwrap());
    let r = client
        .post(app.url(&app.setup_path))
        .form(&[
            ("username", "operator"),
            ("password", PASSWORD),
            ("confirm", PASSWORD),
            ("_csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "{}",
        r.text().await.unwrap()
    );
    login(app, "/operator/login", "operator", PASSWORD)
        .await
        .map_err(|_| "operator login")
        .unwrap()
}

/// Creates a tenant and its first admin (through the one-time admin link); signs the admin in.
pub async fn tenant_with_admin(app: &Appliance, op: &Session, slug: &str) -> Session {
    let r = op
        .post(
            "/api/operator/tenants",
            json!({"slug": slug, "name": format!("École {slug}")}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    let url = v["admin_setup_url"].as_str().unwrap();
    let path = &url[url.find("/t/").unwrap()..];
    let client = app.client();
    let csrf = form_csrf(&client, &app.url(path)).await;
    let admin = format!("admin-{slug}");
    let r = client
        .post(app.url(path))
        .form(&[
            ("username", admin.as_str()),
            ("given_name", "Ada"),
            ("family_name", "Admin"),
            ("password", PASSWORD),
            ("confirm", PASSWORD),
            ("_csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    login(app, &format!("/t/{slug}/login"), &admin, PASSWORD)
        .await
        .map_err(|_| "admin login")
        .unwrap()
}

/// Adds a user as the tenant admin; returns (id, one-time password).
pub async fn add_user(admin: &Session, slug: &str, username: &str, role: &str) -> (i64, String) {
    let r = admin
        .post(&format!("/t/{slug}/api/users"), json!({"username": username, "given_name": "Prénom", "family_name": username, "role": role}))
        .await;
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let v: Value = r.json().await.unwrap();
    (
        v["user"]["id"].as_i64().unwrap(),
        v["one_time_password"].as_str().unwrap().to_string(),
    )
}

/// Signs a new user in with their one-time password and sets their own password.
pub async fn activate(app: &Appliance, slug: &str, username: &str, otp: &str) -> Session {
    let s = login(app, &format!("/t/{slug}/login"), username, otp)
        .await
        .map_err(|_| "otp login")
        .unwrap();
    let r = s
        .client
        .post(app.url(&format!("/t/{slug}/password")))
        .header("x-csrf-token", &s.csrf)
        .form(&[("password", PASSWORD), ("confirm", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    s
}

pub async fn error_code(r: Response) -> (StatusCode, String) {
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        v["error"]["code"]
            .as_str()
            .unwrap_or("<no code>")
            .to_string(),
    )
}

/// A TCP relay on loopback to `target` (`host:port`): it counts client → server bytes and,
/// past `budget`, cuts the link, as a failing line would.
pub struct Relay {
    pub url: String,
    /// Client → server bytes relayed so far.
    pub sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Client → server bytes still allowed; at 0 every connection is cut and new ones refused.
    pub budget: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

pub async fn relay(target: String) -> Relay {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let budget = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
    let (s, b) = (sent.clone(), budget.clone());
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (sent, budget, target) = (s.clone(), b.clone(), target.clone());
            tokio::spawn(async move {
                if budget.load(std::sync::atomic::Ordering::SeqCst) <= 0 {
                    return;
                }
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                let (mut ri, mut wi) = inbound.split();
                let (mut ro, mut wo) = outbound.split();
                let up = async {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = tokio::io::AsyncReadExt::read(&mut ri, &mut buf)
                            .await
                            .unwrap_or(0);
                        if n == 0
                            || budget.fetch_sub(n as i64, std::sync::atomic::Ordering::SeqCst)
                                < n as i64
                        {
                            return;
                        }
                        sent.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                        if tokio::io::AsyncWriteExt::write_all(&mut wo, &buf[..n])
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                };
                tokio::select! {
                    _ = up => {}
                    _ = tokio::io::copy(&mut ro, &mut wi) => {}
                }
            });
        }
    });
    Relay { url, sent, budget }
}
