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
    let pre = client
        .get(app.url("/operator/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = hidden_csrf(&pre);
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
    let csrf = hidden_csrf(
        &client
            .get(app.url("/t/ecole/login"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
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

    let r = admin.client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "csrf_failed".into())
    );
    let r = admin
        .client
        .post(&url)
        .header("x-csrf-token", "guessed")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "csrf_failed".into())
    );
    // The operator's token does not work for the admin's session.
    let r = admin
        .client
        .post(&url)
        .header("x-csrf-token", &op.csrf)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_code(r).await,
        (StatusCode::FORBIDDEN, "csrf_failed".into())
    );
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
