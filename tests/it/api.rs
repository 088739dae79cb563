//! First boot, sessions, CSRF, security headers, throttling and bad input, over HTTPS.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_init_no_credential_guess_works_and_the_setup_link_works_once() {
    let mut app = Appliance::init();
    app.start();
    for (user, pass) in [
        ("admin", "admin"),
        ("admin", "password"),
        ("root", "root"),
        ("operator", "operator"),
        ("ceredis", "ceredis"),
        ("admin", ""),
    ] {
        let r = login(&app, "/operator/login", user, pass)
            .await
            .err()
            .expect("no default credentials");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{user}/{pass}");
    }
    let anonymous = app.client();
    let r = anonymous
        .get(app.url("/api/operator/tenants"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "login_required".into())
    );
    // A guessed setup token is unknown.
    let r = anonymous
        .get(app.url("/setup/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let op = operator(&app).await;
    let r = op.get("/api/operator/tenants").await;
    assert_eq!(r.status(), StatusCode::OK);

    // The link is spent: both showing and submitting it now fail with 410 Gone.
    let client = app.client();
    let r = client.get(app.url(&app.setup_path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    let csrf = form_csrf(&client, &app.url("/operator/login")).await;
    let r = client
        .post(app.url(&app.setup_path))
        .form(&[
            ("username", "intruder"),
            ("password", PASSWORD),
            ("confirm", PASSWORD),
            ("_csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GONE);
    assert!(
        login(&app, "/operator/login", "intruder", PASSWORD)
            .await
            .is_err()
    );
    // And init refuses to mint a second operator link once an operator exists.
    let out = app.cli(&["init", "--new-setup-link"]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_use_host_prefixed_secure_cookies_and_end_on_logout() {
    let mut app = Appliance::init();
    app.start();
    let op = operator(&app).await;
    let admin = tenant_with_admin(&app, &op, "ecole").await;

    // Inspect the cookie a fresh login sets.
    let client = app.client();
    let csrf = form_csrf(&client, &app.url("/t/ecole/login")).await;
    let r = client
        .post(app.url("/t/ecole/login"))
        .form(&[
            ("username", "admin-ecole"),
            ("password", PASSWORD),
            ("_csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("__Host-ceredis-session="))
        .expect("session cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert!(
        !cookie.to_ascii_lowercase().contains("domain="),
        "__Host- cookies have no Domain"
    );
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string();

    // The same token presented as another tenant's session is worthless.
    let _other = tenant_with_admin(&app, &op, "autre").await;
    let token = value.rsplit('.').next().unwrap();
    let forged = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&app.ca_pem()).unwrap())
        .build()
        .unwrap();
    let r = forged
        .get(app.url("/t/autre/api/me"))
        .header("cookie", format!("__Host-ceredis-session=t.autre.{token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = forged
        .get(app.url("/t/ecole/api/me"))
        .header("cookie", format!("__Host-ceredis-session={value}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Logout ends the session server-side: the old cookie no longer works.
    let r = admin
        .client
        .post(app.url("/t/ecole/logout"))
        .header("x-csrf-token", &admin.csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let r = admin.get("/t/ecole/api/me").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_without_the_csrf_token_or_from_another_origin_are_refused() {
    let mut app = Appliance::init();
    app.start();
    let op = operator(&app).await;
    let admin = tenant_with_admin(&app, &op, "ecole").await;
    let body = json!({"title": "6e B"});
    let url = app.url("/t/ecole/api/classes");

    // No token, a guessed one, and the operator's (valid, but for another session).
    for token in [None, Some("guessed"), Some(op.csrf.as_str())] {
        let mut request = admin.client.post(&url).json(&body);
        if let Some(t) = token {
            request = request.header("x-csrf-token", t);
        }
        let r = request.send().await.unwrap();
        assert_eq!(
            error_code(r).await,
            (StatusCode::FORBIDDEN, "csrf_failed".into()),
            "token {token:?}"
        );
    }
    let r = admin
        .client
        .post(&url)
        .header("x-csrf-token", &admin.csrf)
        .header("origin", "https://evil.example")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "cross_origin".into())
    );
    // A form post without its hidden field fails too (login CSRF included).
    let fresh = app.client();
    let r = fresh
        .post(app.url("/t/ecole/login"))
        .form(&[("username", "admin-ecole"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let classes: Vec<Value> = admin
        .get("/t/ecole/api/classes")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        classes.is_empty(),
        "nothing was written by refused requests"
    );
    let r = admin.post("/t/ecole/api/classes", body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_the_security_headers() {
    let mut app = Appliance::init();
    app.start();
    let client = app.client();
    for path in [
        "/",
        "/operator/login",
        "/healthz",
        "/api/operator/tenants",
        "/no/such/page",
        "/assets/app.css",
    ] {
        let r = client.get(app.url(path)).send().await.unwrap();
        let h = r.headers();
        let csp = h
            .get("content-security-policy")
            .unwrap_or_else(|| panic!("{path}: no CSP"))
            .to_str()
            .unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["referrer-policy"], "same-origin", "{path}");
        assert!(
            h["strict-transport-security"]
                .to_str()
                .unwrap()
                .contains("max-age="),
            "{path}"
        );
    }
    // No page of the UI carries inline script.
    let page = client
        .get(app.url("/operator/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>") && !page.contains("onclick="),
        "inline script in {page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_slow_the_account_briefly_and_the_real_user_gets_back_in() {
    let mut app = Appliance::init();
    app.start();
    let op = operator(&app).await;
    let _admin = tenant_with_admin(&app, &op, "ecole").await;
    for _ in 0..5 {
        let r = login(&app, "/t/ecole/login", "admin-ecole", "wrong-password")
            .await
            .err()
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // Now even the right password must wait, and is told how long.
    let r = login(&app, "/t/ecole/login", "admin-ecole", PASSWORD)
        .await
        .err()
        .expect("throttled");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "lockout is short: {wait} s");
    // Another account is not affected.
    let r = login(&app, "/t/ecole/login", "someone-else", "x")
        .await
        .err()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    tokio::time::sleep(std::time::Duration::from_secs(wait + 1)).await;
    assert!(
        login(&app, "/t/ecole/login", "admin-ecole", PASSWORD)
            .await
            .is_ok(),
        "the real user gets back in"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_stable_code_and_writes_nothing() {
    let mut app = Appliance::init();
    app.start();
    let op = operator(&app).await;
    let admin = tenant_with_admin(&app, &op, "ecole").await;
    let url = app.url("/t/ecole/api/users");
    let send = |body: reqwest::Body, content_type: &'static str| {
        admin
            .client
            .post(&url)
            .header("x-csrf-token", &admin.csrf)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases: Vec<(reqwest::Body, &str, StatusCode, &str)> = vec![
        ("{\"username\": ".into(), "application/json", StatusCode::BAD_REQUEST, "invalid_json"),
        (r#"{"username":"x","given_name":"A","family_name":"B","role":"student","shoe_size":42}"#.into(), "application/json", StatusCode::BAD_REQUEST, "invalid_field"),
        (r#"{"username":"x","given_name":"A","family_name":"B","role":"wizard"}"#.into(), "application/json", StatusCode::BAD_REQUEST, "invalid_field"),
        (r#"{"username":"bad name!","given_name":"A","family_name":"B","role":"student"}"#.into(), "application/json", StatusCode::BAD_REQUEST, "invalid_user"),
        (r#"{"username":"x","given_name":"A","family_name":"B","role":"student"}"#.into(), "text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
        (vec![b' '; 2 << 20].into(), "application/json", StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
    ];
    for (body, ct, status, code) in cases {
        let r = send(body, ct).await.unwrap();
        let (s, c) = error_code(r).await;
        assert_eq!((s, c.as_str()), (status, code));
    }
    let users: Vec<Value> = admin.get("/t/ecole/api/users").await.json().await.unwrap();
    assert_eq!(users.len(), 1, "only the admin exists: {users:?}");
    // A duplicate is a conflict, not a crash.
    add_user(&admin, "ecole", "zoe", "student").await;
    let r = admin
        .post(
            "/t/ecole/api/users",
            json!({"username": "ZOE", "given_name": "Z", "family_name": "Z", "role": "student"}),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::CONFLICT, "conflict".into())
    );
    // Unknown routes and methods are clean JSON errors too.
    let r = admin
        .json(Method::PATCH, "/t/ecole/api/users", json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let r = admin.get("/t/ecole/api/nothing-here").await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_http2_and_http1_get_the_same_origin_checks_and_links() {
    let mut app = Appliance::init();
    app.start();
    let op = operator(&app).await;
    // The harness negotiates HTTP/2 (ALPN), as browsers do: the host then comes in
    // `:authority`, not `Host`, and links and origin checks must still use it.
    let r = op.get("/api/operator/tenants").await;
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let created: Value = op
        .client
        .post(app.url("/api/operator/tenants"))
        .header("x-csrf-token", &op.csrf)
        .header("origin", &app.base)
        .json(&json!({"slug": "h2", "name": "H2"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link = created["admin_setup_url"].as_str().unwrap();
    assert!(
        link.starts_with(&format!("{}/t/h2/setup/", app.base)),
        "{link}"
    );

    // The same over HTTP/1.1.
    let h1 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&app.ca_pem()).unwrap())
        .tls_built_in_root_certs(false)
        .cookie_store(true)
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let csrf = form_csrf(&h1, &app.url("/operator/login")).await;
    let r = h1
        .post(app.url("/operator/login"))
        .header("accept", "application/json")
        .header("origin", &app.base)
        .form(&[
            ("username", "operator"),
            ("password", PASSWORD),
            ("_csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    let token = r.json::<Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = h1
        .post(app.url("/api/operator/tenants"))
        .header("x-csrf-token", &token)
        .header("origin", &app.base)
        .json(&json!({"slug": "h1", "name": "H1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let link = r.json::<Value>().await.unwrap()["admin_setup_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        link.starts_with(&format!("{}/t/h1/setup/", app.base)),
        "{link}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_pc_the_next_pupil_signs_in_and_the_previous_session_ends() {
    let mut app = Appliance::init();
    app.start();
    let op = operator(&app).await;
    let admin = tenant_with_admin(&app, &op, "ecole").await;
    let (_, otp_a) = add_user(&admin, "ecole", "pupil-a", "student").await;
    let (_, otp_b) = add_user(&admin, "ecole", "pupil-b", "student").await;
    let a = activate(&app, "ecole", "pupil-a", &otp_a).await;
    activate(&app, "ecole", "pupil-b", &otp_b).await;
    // Pupil A walks away signed in; pupil B uses the same browser.
    let login_page = a.get("/t/ecole/login").await.text().await.unwrap();
    let csrf = hidden_csrf(&login_page);
    let r = a
        .client
        .post(app.url("/t/ecole/login"))
        .header("accept", "application/json")
        .form(&[
            ("username", "pupil-b"),
            ("password", PASSWORD),
            ("_csrf", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let me: Value = a.get("/t/ecole/api/me").await.json().await.unwrap();
    assert_eq!(me["username"], "pupil-b");
    // A's session was ended on the server: the list of A's sessions is empty, so A's old
    // cookie (replaced in this browser) could not be replayed either.
    let db = rusqlite::Connection::open_with_flags(
        app.data_path().join("tenants/ecole/tenant.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let sessions_of_a: i64 = db
        .query_row("SELECT count(*) FROM sessions s JOIN users u ON u.id = s.principal_id WHERE u.username = 'pupil-a'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sessions_of_a, 0);
}
