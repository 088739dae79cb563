//! The attack catalogue of tenant apps (`plugins/README.md`, cases A1–A52): a hostile app
//! (`plugins/attacks`), hostile components written in WAT (`tests/fixtures/apps/`) and
//! hostile requests. Every attack fails, and after each one the appliance and the app's
//! next request are healthy.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::apps::{SLUG, example, install, install_in, post_form};
use crate::assessment::{agent_of, json_of, school};
use crate::support::*;

fn manifest_named(text: &str, name: &str) -> String {
    text.replace("name = \"attacks\"", &format!("name = \"{name}\""))
}

struct Hit {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The app tried and the host refused: `{"ok": false, "error": …}`; the error text.
    fn refused(&self, case: &str) -> String {
        assert_eq!(self.status, StatusCode::OK, "{case}: {}", self.body);
        let v = self.json();
        assert_eq!(
            v["ok"], false,
            "{case}: the attack succeeded: {}",
            self.body
        );
        v["error"].as_str().unwrap_or_default().to_string()
    }

    /// The host's error for an instance it stopped: `(status, code)`.
    fn code(&self) -> (StatusCode, String) {
        (
            self.status,
            self.json()["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }
}

async fn hit(s: &Session, app: &str, path: &str) -> Hit {
    let r = s
        .client
        .get(format!("{}/t/{SLUG}/apps/{app}/{path}", s.base))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    Hit {
        status: r.status(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap(),
    }
}

/// The appliance answers and the app's next request runs normally.
async fn healthy(app: &Appliance, s: &Session, case: &str) {
    let r = app.client().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "after {case}: /healthz");
    let h = hit(s, "attacks", "ok").await;
    assert_eq!(
        (h.status, h.body.as_str()),
        (StatusCode::OK, "ok"),
        "after {case}"
    );
}

fn wat(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/apps/{name}.wat",
        env!("CARGO_MANIFEST_DIR")
    );
    wat::parse_file(&path).unwrap()
}

const WAT_MANIFEST: &str = r#"
name = "NAME"
version = "1"
title = "WAT fixture"
roles = ["student", "teacher"]
[quotas]
memory-mib = 16
timeout-ms = 1000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_of_the_catalogue_fails_and_the_host_stays_healthy() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    let (manifest, wasm) = example("attacks");
    let all = [
        "storage",
        "xapi/record",
        "xapi/read-mine",
        "competencies/frameworks",
        "competencies/class-aggregates",
        "competencies/self-assess",
    ];
    for (name, grants) in [
        ("attacks", &all[..]),
        ("attacks-b", &["storage"][..]),
        ("attacks-c", &[][..]),
    ] {
        let r = install(
            &s.admin,
            &manifest_named(&manifest, name),
            wasm.clone(),
            grants,
        )
        .await;
        json_of(r, StatusCode::CREATED).await;
    }
    let fuel = manifest_named(&manifest, "attacks-fuel")
        .replace("timeout-ms = 1000", "timeout-ms = 30000\nfuel = 5000000");
    json_of(
        install(&s.admin, &fuel, wasm.clone(), &[]).await,
        StatusCode::CREATED,
    )
    .await;
    // The same app in another school.
    let op = login(&app, "/operator/login", "operator", PASSWORD)
        .await
        .unwrap();
    let beta_admin = tenant_with_admin(&app, &op, "beta").await;
    let beta_install = install_in(&beta_admin, "beta", &manifest, wasm.clone(), &["storage"]).await;
    assert_eq!(beta_install.status(), StatusCode::CREATED);
    let (_, beta_otp) = add_user(&beta_admin, "beta", "bea", "student").await;
    let bea = activate(&app, "beta", "bea", &beta_otp).await;
    let lea = &s.lea;

    // --- Host calls: identity and scope --------------------------------------------
    // A1 forged actor: another pupil's account.
    let lea_agent = agent_of(lea).await;
    let tom_agent = agent_of(&s.tom).await;
    let home = lea_agent["account"]["homePage"].as_str().unwrap();
    let victim = tom_agent["account"]["name"].as_str().unwrap();
    let path = format!("xapi-forged-actor?home={home}&victim={victim}");
    let e = hit(lea, "attacks", &path).await.refused("A1");
    assert!(e.contains("signed-in user"), "{e}");
    // A2 an actor by mailbox; A3 a forged authority.
    hit(lea, "attacks", "xapi-mbox-actor").await.refused("A2");
    hit(lea, "attacks", "xapi-forged-authority")
        .await
        .refused("A3");
    // A4 control: her own statement is recorded, and reading her own back shows no score.
    assert_eq!(hit(lea, "attacks", "xapi-own").await.json()["ok"], true);
    let mine = hit(lea, "attacks", "xapi-mine").await;
    assert!(mine.body.contains("attacks:probe"), "{}", mine.body);
    assert!(
        !mine.body.contains("score") && !mine.body.contains("0.42"),
        "A4: {}",
        mine.body
    );
    let tom_mine = hit(&s.tom, "attacks", "xapi-mine").await;
    assert!(
        !tom_mine.body.contains("attacks:probe"),
        "A1: {}",
        tom_mine.body
    );
    // A5 a flood of statements; A6 not JSON.
    hit(lea, "attacks", "xapi-flood").await.refused("A5");
    hit(lea, "attacks", "xapi-not-json").await.refused("A6");

    // A7 another app's keys, by name, traversal, absolute path or trailing slash.
    assert_eq!(
        hit(lea, "attacks", "kv-set?key=secret&value=alpha-secret")
            .await
            .json()["ok"],
        true
    );
    for key in [
        "secret",
        "../attacks/secret",
        "/attacks/secret",
        "attacks/secret",
        "secret/",
    ] {
        let query = serde_urlencoded::to_string([("key", key)]).unwrap();
        let v = hit(lea, "attacks-b", &format!("kv-get?{query}"))
            .await
            .json();
        assert_eq!(v["value"], "None", "A7 {key}: {v}");
    }
    assert_eq!(
        hit(lea, "attacks-b", "kv-list?prefix=").await.json()["value"],
        "[]"
    );
    // A8 another tenant's keys: the same app in beta sees nothing of alpha's.
    let v = hit_in(&bea, "beta", "attacks", "kv-get?key=secret").await;
    assert_eq!(v["value"], "None", "A8: {v}");
    // A9 the owner reads its key back (control), so A7/A8 were real misses.
    let v = hit(lea, "attacks", "kv-get?key=secret").await.json();
    assert!(
        v["value"].as_str().unwrap().contains("alpha-secret"),
        "A9: {v}"
    );
    // A10 huge key, A11 huge value, A12 over the storage quota.
    assert!(
        hit(lea, "attacks", "kv-huge-key")
            .await
            .refused("A10")
            .contains("Invalid")
    );
    assert!(
        hit(lea, "attacks", "kv-huge-value")
            .await
            .refused("A11")
            .contains("Invalid")
    );
    assert!(
        hit(lea, "attacks", "kv-fill")
            .await
            .refused("A12")
            .contains("QuotaExceeded")
    );
    // A13 capabilities not granted: denied by default, at every call.
    for path in [
        "kv-get?key=x",
        "xapi-own",
        "xapi-mine",
        "frameworks",
        "my-classes",
        "self-assess?competency=x",
    ] {
        let e = hit(lea, "attacks-c", path).await.refused("A13");
        assert!(e.contains("NotGranted"), "A13 {path}: {e}");
    }
    assert!(
        hit(lea, "attacks", "name")
            .await
            .refused("A13")
            .contains("NotGranted")
    );
    // A14 another teacher's class by its id; a pupil asking for her own class.
    let e = hit(
        &s.autre,
        "attacks",
        &format!("class-aggregates?class={}", s.class_a),
    )
    .await
    .refused("A14");
    assert!(e.contains("NotFound"), "{e}");
    let e = hit(
        lea,
        "attacks",
        &format!("class-aggregates?class={}", s.class_a),
    )
    .await
    .refused("A14");
    assert!(e.contains("NotFound"), "{e}");
    assert_eq!(
        hit(
            &s.prof,
            "attacks",
            &format!("class-aggregates?class={}", s.class_a)
        )
        .await
        .json()["ok"],
        true
    );
    // A15 a teacher self-assessing; A16 an unknown competency.
    let uri = "urn:ceredis:cefr:reception:A1:1";
    hit(&s.prof, "attacks", &format!("self-assess?competency={uri}"))
        .await
        .refused("A15");
    assert!(
        hit(lea, "attacks", "self-assess?competency=urn:nowhere")
            .await
            .refused("A16")
            .contains("NotFound")
    );
    // A17 pseudonyms: stable, different per app, revealing nothing.
    let p1 = hit(lea, "attacks", "echo").await.json()["pseudonym"].clone();
    let p2 = hit(lea, "attacks", "echo").await.json()["pseudonym"].clone();
    let pb = hit(lea, "attacks-b", "echo").await.json()["pseudonym"].clone();
    assert_eq!(p1, p2);
    assert_ne!(p1, pb);
    let p = p1.as_str().unwrap();
    let lea_name = lea_agent["account"]["name"].as_str().unwrap();
    for leak in [lea_name, "lea"] {
        assert!(!p.contains(leak), "A17: {p} contains {leak}");
    }
    let tom_p = hit(&s.tom, "attacks", "echo").await.json()["pseudonym"].clone();
    assert_ne!(p1, tom_p, "A17");

    // --- The sandbox -----------------------------------------------------------------
    // A18–A23 filesystem and environment.
    for (case, path) in [
        ("A18", "fs-preopens"),
        ("A19", "fs-read-absolute"),
        ("A20", "fs-read-relative"),
        ("A21", "fs-write"),
        ("A22", "fs-symlink"),
        ("A23", "env"),
    ] {
        hit(lea, "attacks", path).await.refused(case);
    }
    assert!(!std::path::Path::new("/tmp/ceredis-app-was-here").exists());
    // A24 the appliance's own port; A25 the sidecars' ports; A26 UDP; A27 DNS.
    let port = app.base.rsplit(':').next().unwrap().to_string();
    for p in [port.as_str(), "11434", "8100", "9200", "5432", "80"] {
        hit(lea, "attacks", &format!("tcp?port={p}"))
            .await
            .refused("A24/A25");
    }
    hit(lea, "attacks", "udp").await.refused("A26");
    hit(lea, "attacks", "dns").await.refused("A27");
    // A28 outgoing HTTP, to the appliance itself and outside.
    for authority in [
        format!("127.0.0.1:{port}"),
        "localhost:11434".into(),
        "example.org".into(),
    ] {
        let e = hit(lea, "attacks", &format!("http-out?authority={authority}"))
            .await
            .refused("A28");
        assert!(e.contains("HttpRequestDenied"), "A28: {e}");
    }
    // A29 clocks: to the second only.
    let c = hit(lea, "attacks", "clock").await.json();
    assert_eq!(c["wall_nanos"], 0, "A29: {c}");
    assert!(c["wall_resolution_s"].as_u64().unwrap() >= 1, "A29: {c}");
    assert!(
        c["monotonic_resolution_ns"].as_u64().unwrap() >= 1_000_000_000,
        "A29: {c}"
    );
    assert_eq!(
        c["monotonic_step_ns"].as_u64().unwrap() % 1_000_000_000,
        0,
        "A29: {c}"
    );
    healthy(&app, lea, "the sandbox").await;

    // --- Resources: each ends in the host's error ----------------------------------------
    let cases: [(&str, &str, &str, StatusCode, &str); 10] = [
        (
            "A30",
            "attacks",
            "loop",
            StatusCode::GATEWAY_TIMEOUT,
            "app_timeout",
        ),
        (
            "A31",
            "attacks-fuel",
            "loop",
            StatusCode::BAD_GATEWAY,
            "app_failed",
        ),
        (
            "A32",
            "attacks",
            "recursion",
            StatusCode::BAD_GATEWAY,
            "app_failed",
        ),
        (
            "A33",
            "attacks",
            "memory-bomb",
            StatusCode::BAD_GATEWAY,
            "app_failed",
        ),
        (
            "A37",
            "attacks",
            "huge-response",
            StatusCode::BAD_GATEWAY,
            "app_response_too_large",
        ),
        (
            "A38",
            "attacks",
            "sleep",
            StatusCode::GATEWAY_TIMEOUT,
            "app_timeout",
        ),
        (
            "A39",
            "attacks",
            "slow-body",
            StatusCode::GATEWAY_TIMEOUT,
            "app_timeout",
        ),
        (
            "A40",
            "attacks",
            "no-response",
            StatusCode::BAD_GATEWAY,
            "app_bad_response",
        ),
        (
            "A41",
            "attacks",
            "panic",
            StatusCode::BAD_GATEWAY,
            "app_failed",
        ),
        (
            "A41",
            "attacks-c",
            "panic",
            StatusCode::BAD_GATEWAY,
            "app_failed",
        ),
    ];
    for (case, app_name, path, status, code) in cases {
        let h = hit(lea, app_name, path).await;
        assert_eq!(
            h.code(),
            (status, code.to_string()),
            "{case} {path}: {}",
            h.body
        );
        healthy(&app, lea, case).await;
    }
    let h = hit(lea, "attacks-fuel", "loop").await;
    assert!(h.body.contains("fuel"), "A31: {}", h.body);
    let h = hit(lea, "attacks", "recursion").await;
    // Rust's stack lives in linear memory: it runs off its end before wasm's own stack does.
    assert!(
        h.body.contains("stack") || h.body.contains("out of bounds"),
        "A32: {}",
        h.body
    );
    // A34–A36 hostile WAT components: a table bomb, a huge memory, a looping start.
    for (case, fixture, status, code) in [
        ("A34", "table-bomb", StatusCode::BAD_GATEWAY, "app_failed"),
        ("A35", "big-memory", StatusCode::BAD_GATEWAY, "app_failed"),
        (
            "A36",
            "start-loop",
            StatusCode::GATEWAY_TIMEOUT,
            "app_timeout",
        ),
    ] {
        let m = WAT_MANIFEST.replace("NAME", fixture);
        json_of(
            install(&s.admin, &m, wat(fixture), &[]).await,
            StatusCode::CREATED,
        )
        .await;
        let h = hit(lea, fixture, "").await;
        assert_eq!(h.code(), (status, code.to_string()), "{case}: {}", h.body);
        healthy(&app, lea, case).await;
    }
    // A42 nothing is left over from one instance to the next.
    assert_eq!(
        hit(lea, "attacks", "leftover-set?value=lea-was-here")
            .await
            .body,
        "set"
    );
    assert_eq!(hit(&s.tom, "attacks", "leftover-get").await.body, "", "A42");
    assert_eq!(hit(lea, "attacks", "leftover-get").await.body, "", "A42");

    // --- Responses and requests ------------------------------------------------------------
    // A43 cookies, security headers and redirects are the host's.
    let h = hit(lea, "attacks", "headers").await;
    assert!(h.headers.get("set-cookie").is_none(), "A43");
    assert!(
        h.headers.get("access-control-allow-origin").is_none(),
        "A43"
    );
    assert!(
        h.headers.get("location").is_none(),
        "A43: external redirect kept"
    );
    let csp = h.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'none'") && !csp.contains("script-src *"),
        "A43: {csp}"
    );
    assert_eq!(h.headers["x-frame-options"], "DENY");
    let h = hit(lea, "attacks", "local-redirect").await;
    assert_eq!(h.headers["location"], format!("/t/{SLUG}/apps/attacks/ok"));
    // A44 Host-header and forwarding tricks; cookies and credentials never reach the app.
    let r = lea
        .client
        .get(format!("{}/t/{SLUG}/apps/attacks/echo", lea.base))
        .header("x-forwarded-host", "beta.example")
        .header("forwarded", "host=beta")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-ceredis-base", "/t/beta/apps/attacks")
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["authority"], "app.invalid", "A44: {echo}");
    assert_eq!(
        echo["base"],
        format!("/t/{SLUG}/apps/attacks"),
        "A44: {echo}"
    );
    let seen = echo["headers"].to_string().to_ascii_lowercase();
    for h in [
        "cookie",
        "authorization",
        "x-forwarded",
        "forwarded",
        "\"host\"",
        "beta",
    ] {
        assert!(!seen.contains(h), "A44: the app saw {h}: {seen}");
    }
    // A45 path traversal in the URL stays in the app (or is not found).
    for path in [
        "%2e%2e/%2e%2e/beta/apps/attacks/echo",
        "..%2f..%2fquiz/echo",
        "./echo",
    ] {
        let h = hit(lea, "attacks", path).await;
        if h.status == StatusCode::OK {
            assert_eq!(
                h.json()["base"],
                format!("/t/{SLUG}/apps/attacks"),
                "A45 {path}"
            );
        } else {
            assert_eq!(h.status, StatusCode::NOT_FOUND, "A45 {path}: {}", h.body);
        }
    }
    // A46 trailing slashes: the root redirects to itself with a slash; routes are exact.
    let r = lea.get(&format!("/t/{SLUG}/apps/attacks")).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "A46");
    assert_eq!(
        r.headers()["location"],
        format!("/t/{SLUG}/apps/attacks/"),
        "A46"
    );
    let (quiz_manifest, quiz) = example("quiz");
    json_of(
        install(&s.admin, &quiz_manifest, quiz, &[]).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        hit(lea, "quiz", "answers/").await.status,
        StatusCode::NOT_FOUND,
        "A46"
    );
    // A47 another school's app, with this school's session.
    let r = lea.get("/t/beta/apps/attacks/ok").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "A47");
    // A48 an oversized request body.
    let big = "x".repeat(2 << 20);
    let r = post_form(
        lea,
        &format!("/t/{SLUG}/apps/attacks/ok"),
        &[("junk", big.as_str())],
    )
    .await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "A48");
    healthy(&app, lea, "A48").await;

    // --- Installs --------------------------------------------------------------------
    // A49 an import the host does not offer; A50 a core module; A51 no HTTP handler.
    let (evil_manifest, evil) = example("attacks-import");
    let r = install(&s.admin, &evil_manifest, evil, &[]).await;
    let v = json_of(r, StatusCode::BAD_REQUEST).await;
    assert_eq!(v["error"]["code"], "app_component_invalid");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("evil:host"),
        "A49: {v}"
    );
    for (case, fixture) in [("A50", "core-module"), ("A51", "no-handler")] {
        let m = WAT_MANIFEST.replace("NAME", fixture);
        let v = json_of(
            install(&s.admin, &m, wat(fixture), &[]).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(v["error"]["code"], "app_component_invalid", "{case}: {v}");
    }
    // A52 a removed app is gone with its storage; reinstalled, it starts empty.
    let r = s
        .admin
        .json(
            reqwest::Method::DELETE,
            &format!("/t/{SLUG}/api/apps/attacks"),
            Value::Null,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        hit(lea, "attacks", "ok").await.status,
        StatusCode::NOT_FOUND,
        "A52"
    );
    json_of(
        install(&s.admin, &manifest, wasm, &all).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        hit(lea, "attacks", "kv-get?key=secret").await.json()["value"],
        "None",
        "A52"
    );

    // The app requests were counted by outcome for the operator.
    let metrics = app
        .client()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for outcome in [
        "ok",
        "app_timeout",
        "app_failed",
        "app_response_too_large",
        "app_bad_response",
    ] {
        assert!(
            metrics.contains(&format!(
                "ceredis_app_requests_total{{outcome=\"{outcome}\"}}"
            )),
            "{outcome} not in metrics"
        );
    }
    // The school sees its own apps' outcomes, and none of another school's.
    let school_metrics = |slug: &'static str| {
        let key = app.credential(slug, &["analytics/read"]);
        let request = app
            .client()
            .get(app.url(&format!("/t/{slug}/metrics")))
            .basic_auth(key.0, Some(key.1))
            .send();
        async move { request.await.unwrap().text().await.unwrap() }
    };
    let ours = school_metrics(SLUG).await;
    for outcome in ["ok", "app_timeout", "app_failed"] {
        let line = ours
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "ceredis_school_app_requests_total{{app=\"attacks\",outcome=\"{outcome}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("{outcome} of attacks not in {ours}"));
        let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(n >= 1, "{line}");
    }
    assert!(ours.contains("ceredis_school_app_storage_bytes{app=\"attacks\"}"));
    let theirs = school_metrics("beta").await;
    assert!(
        !theirs.contains("app=\"attacks-b\"") && theirs.contains("app=\"attacks\""),
        "{theirs}"
    );
    assert!(!theirs.contains("app_timeout"), "{theirs}");
    app.kill();
}

async fn hit_in(s: &Session, slug: &str, app: &str, path: &str) -> Value {
    let r = s.get(&format!("/t/{slug}/apps/{app}/{path}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}
