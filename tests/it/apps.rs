//! Tenant apps through the real server: the example apps (built for wasm32-wasip2 from
//! `plugins/`) are installed by an admin and used by teachers and pupils; their effects
//! reach the LRS and the assessment pipeline, and what they were not granted stays out of
//! reach.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::assessment::{School, json_of, pupil_record, school};
use crate::support::*;

pub const SLUG: &str = "ecole";

/// Builds the example apps once per test run (a no-op when they are up to date) and
/// returns the folder of their `.wasm` components.
pub fn components() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("plugins");
        let target = std::env::var_os("PLUGINS_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/ceredis/plugins-target")
            });
        let status = Command::new("cargo")
            .args(["build", "--release", "--target", "wasm32-wasip2", "--quiet"])
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("cargo runs");
        assert!(
            status.success(),
            "building plugins/ failed: run `rustup target add wasm32-wasip2` first"
        );
        target.join("wasm32-wasip2/release")
    })
}

/// The manifest text and component bytes of an example app.
pub fn example(name: &str) -> (String, Vec<u8>) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("plugins")
        .join(name);
    let manifest = std::fs::read_to_string(root.join("ceredis-app.toml")).unwrap();
    let wasm = components().join(format!("{}.wasm", name.replace('-', "_")));
    (manifest, std::fs::read(&wasm).unwrap())
}

/// Installs in the school [`SLUG`] through the JSON API (multipart) with these grants.
pub async fn install(
    admin: &Session,
    manifest: &str,
    component: Vec<u8>,
    grants: &[&str],
) -> reqwest::Response {
    install_in(admin, SLUG, manifest, component, grants).await
}

/// Installs in school `slug` through the JSON API (multipart); returns the response.
pub async fn install_in(
    admin: &Session,
    slug: &str,
    manifest: &str,
    component: Vec<u8>,
    grants: &[&str],
) -> reqwest::Response {
    let mut form = Form::new()
        .part(
            "manifest",
            Part::text(manifest.to_string()).file_name("ceredis-app.toml"),
        )
        .part("component", Part::bytes(component).file_name("app.wasm"));
    for g in grants {
        form = form.text("grant", g.to_string());
    }
    admin
        .client
        .post(format!("{}/t/{slug}/api/apps", admin.base))
        .header("x-csrf-token", &admin.csrf)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

/// Posts a form to an app page, with the session's anti-forgery token.
pub async fn post_form(s: &Session, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    let mut pairs: Vec<(&str, &str)> = vec![("_csrf", s.csrf.as_str())];
    pairs.extend_from_slice(fields);
    s.client
        .post(format!("{}{path}", s.base))
        .header("origin", &s.base)
        .form(&pairs)
        .send()
        .await
        .unwrap()
}

async fn installed_quiz(app: &Appliance) -> School {
    let school = school(app).await;
    let (manifest, wasm) = example("quiz");
    let r = install(&school.admin, &manifest, wasm, &["xapi/record"]).await;
    let v = json_of(r, StatusCode::CREATED).await;
    assert_eq!(v["name"], "quiz");
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    school
}

#[tokio::test]
async fn a_pupil_takes_the_quiz_and_her_answers_become_evidence_her_teacher_sees() {
    let mut app = Appliance::init();
    app.start();
    let s = installed_quiz(&app).await;

    // The pupil's home page offers the quiz; the teacher's does not (it is for pupils).
    let home = s
        .lea
        .get(&format!("/t/{SLUG}/"))
        .await
        .text()
        .await
        .unwrap();
    assert!(home.contains(&format!("/t/{SLUG}/apps/quiz/")), "{home}");
    let teacher_home = s
        .prof
        .get(&format!("/t/{SLUG}/"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!teacher_home.contains("/apps/quiz/"));
    let r = s.prof.get(&format!("/t/{SLUG}/apps/quiz/")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    let r = s.lea.get(&format!("/t/{SLUG}/apps/quiz/")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'none'"), "{csp}");
    assert!(csp.contains(&format!("/t/{SLUG}/apps/quiz/")), "{csp}");
    let page = r.text().await.unwrap();
    assert!(page.contains("name=\"_csrf\""), "{page}");
    assert!(page.contains("colour-red"));

    // She answers: four right, two wrong.
    let answers = [
        ("colour-red", "1"),
        ("number-seven", "0"),
        ("word-apple", "0"),
        ("word-dog", "0"),
        ("sign-exit", "2"),
        ("sign-closed", "1"),
    ];
    let r = post_form(&s.lea, &format!("/t/{SLUG}/apps/quiz/answers"), &answers).await;
    let status = r.status();
    let thanks = r.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{thanks}");
    assert!(thanks.contains("Merci"));
    // No score, no count of right answers, no percentage.
    for bad in ["4/6", "4 / 6", "%", "score", "points"] {
        assert!(!thanks.contains(bad), "`{bad}` in {thanks}");
    }

    // Her teacher sees six new pieces of evidence from xAPI, on the quiz's descriptors,
    // valued 1 where she was right and 0 where she was wrong.
    let record = pupil_record(&s.prof, s.ids["lea"]).await;
    let evidence: Vec<&Value> = record["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "xapi")
        .collect();
    assert_eq!(evidence.len(), 6, "{record}");
    let mut values: Vec<i64> = evidence
        .iter()
        .map(|e| e["value_bp"].as_i64().unwrap())
        .collect();
    values.sort();
    assert_eq!(values, vec![0, 0, 10_000, 10_000, 10_000, 10_000]);
    assert!(evidence.iter().all(|e| e["statement_id"].is_string()));

    // The statements are in the LRS, by her, with the app and her as authority.
    let key = app.credential(SLUG, &["statements/read"]);
    let client = app.client();
    let r = client
        .get(app.url(&format!("/t/{SLUG}/xapi/statements?activity=urn:ceredis:app:quiz:vocabulary-1&related_activities=true")))
        .basic_auth(&key.0, Some(&key.1))
        .header("X-Experience-API-Version", "1.0.3")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let statements = v["statements"].as_array().unwrap();
    assert_eq!(statements.len(), 6);
    let agent = crate::assessment::agent_of(&s.lea).await;
    for st in statements {
        assert_eq!(st["actor"]["account"], agent["account"]);
        let members = st["authority"]["member"].as_array().unwrap();
        assert!(members.iter().any(|m| m["account"]["name"] == "app:quiz"));
        assert!(members.iter().any(|m| m["account"] == agent["account"]));
    }
    app.kill();
}

#[tokio::test]
async fn a_pupil_ticks_her_portfolio_and_each_tick_is_self_assessment_evidence() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    let (manifest, wasm) = example("portfolio");
    let grants = [
        "competencies/frameworks",
        "competencies/self-assess",
        "storage",
    ];
    json_of(
        install(&s.admin, &manifest, wasm, &grants).await,
        StatusCode::CREATED,
    )
    .await;

    let page = s
        .lea
        .get(&format!("/t/{SLUG}/apps/portfolio/?level=A1"))
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    let a1 = [
        "urn:ceredis:cefr:reception:A1:1",
        "urn:ceredis:cefr:production:A1:2",
    ];
    for uri in a1 {
        assert!(page.contains(uri), "{uri} missing from {page}");
    }
    assert!(!page.contains("urn:ceredis:cefr:reception:A2:1"));

    let r = post_form(
        &s.lea,
        &format!("/t/{SLUG}/apps/portfolio/answers"),
        &[
            ("level", "A1"),
            ("d0", a1[0]),
            ("a0", "can"),
            ("d1", a1[1]),
            ("a1", "not-yet"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("enregistré"));

    let record = pupil_record(&s.prof, s.ids["lea"]).await;
    let own: Vec<&Value> = record["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "self")
        .collect();
    assert_eq!(own.len(), 2, "{record}");
    let mut levels: Vec<i64> = own
        .iter()
        .map(|e| e["scale_level"].as_i64().unwrap())
        .collect();
    levels.sort();
    assert_eq!(levels, vec![1, 3]);

    // Her answers come back checked from the app's own storage; Tom's page is his own.
    let again = s
        .lea
        .get(&format!("/t/{SLUG}/apps/portfolio/?level=A1"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(again.matches(" checked>").count(), 2, "{again}");
    let toms = s
        .tom
        .get(&format!("/t/{SLUG}/apps/portfolio/?level=A1"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(toms.matches(" checked>").count(), 0);
    // An unknown descriptor is refused and records nothing.
    let r = post_form(
        &s.lea,
        &format!("/t/{SLUG}/apps/portfolio/answers"),
        &[("d0", "urn:nowhere"), ("a0", "can")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let record = pupil_record(&s.prof, s.ids["lea"]).await;
    let count = record["evidence"].as_array().unwrap().len();
    assert_eq!(count, 2);

    // Erasing Léa erases what the app kept about her, and only that.
    let r = post_form(
        &s.tom,
        &format!("/t/{SLUG}/apps/portfolio/answers"),
        &[("level", "A1"), ("d0", a1[0]), ("a0", "with-help")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let kv_keys = || {
        let db = rusqlite::Connection::open_with_flags(
            app.data_path().join(format!("tenants/{SLUG}/tenant.db")),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let keys: Vec<String> = db
            .prepare("SELECT key FROM app_kv WHERE app = 'portfolio' ORDER BY key")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        keys
    };
    let before = kv_keys();
    assert_eq!(before.len(), 3, "{before:?}");
    let done = json_of(
        s.admin
            .post(
                &format!("/t/{SLUG}/api/users/{}/erasure", s.ids["lea"]),
                serde_json::json!({"confirm": "lea"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(done["removed"]["app_keys"], 2, "{done}");
    let after = kv_keys();
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(before.contains(&after[0]));
    let toms = s
        .tom
        .get(&format!("/t/{SLUG}/apps/portfolio/?level=A1"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(toms.matches(" checked>").count(), 1, "{toms}");
    app.kill();
}

#[tokio::test]
async fn the_class_summary_shows_only_aggregates_of_the_teachers_own_classes() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    let (manifest, wasm) = example("class-summary");

    // Installed without its grant, it is denied at the call.
    json_of(
        install(&s.admin, &manifest, wasm.clone(), &[]).await,
        StatusCode::CREATED,
    )
    .await;
    let r = s.prof.get(&format!("/t/{SLUG}/apps/class-summary/")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("not granted"));

    // Upgraded with it (same version, same hash: an upgrade all the same).
    let v = json_of(
        install(
            &s.admin,
            &manifest,
            wasm,
            &["competencies/class-aggregates"],
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(v["upgrade"], true);
    let list = s
        .prof
        .get(&format!("/t/{SLUG}/apps/class-summary/"))
        .await
        .text()
        .await
        .unwrap();
    assert!(list.contains("4e A") && !list.contains("4e B"), "{list}");

    let mine = s
        .prof
        .get(&format!(
            "/t/{SLUG}/apps/class-summary/class?id={}",
            s.class_a
        ))
        .await;
    assert_eq!(mine.status(), StatusCode::OK);
    let mine = mine.text().await.unwrap();
    assert!(mine.contains("2 élèves"), "{mine}");
    for name in ["lea", "tom", "Lea", "Tom"] {
        assert!(!mine.contains(name), "{name} named in {mine}");
    }
    // Another teacher's class, by its id: not found, as if it did not exist.
    let other = s
        .autre
        .get(&format!(
            "/t/{SLUG}/apps/class-summary/class?id={}",
            s.class_a
        ))
        .await;
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    // Pupils are not offered the app at all.
    let r = s.lea.get(&format!("/t/{SLUG}/apps/class-summary/")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    app.kill();
}

#[tokio::test]
async fn bad_installs_are_refused_with_a_reason_and_change_nothing() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    let (manifest, wasm) = example("quiz");
    let cases: Vec<(String, Vec<u8>, Vec<&str>, &str)> = vec![
        (
            manifest.replace("name = \"quiz\"", "name = \"../quiz\""),
            wasm.clone(),
            vec![],
            "app_manifest_invalid",
        ),
        (
            manifest.replace("xapi/record", "xapi/read-everything"),
            wasm.clone(),
            vec![],
            "app_manifest_invalid",
        ),
        (
            manifest.clone(),
            wasm.clone(),
            vec!["storage"],
            "app_grant_invalid",
        ),
        (
            manifest.clone(),
            b"\0asm\x01\0\0\0".to_vec(),
            vec![],
            "app_component_invalid",
        ),
        (
            manifest.clone(),
            b"not wasm at all".to_vec(),
            vec![],
            "app_component_invalid",
        ),
        (
            manifest.clone(),
            Vec::new(),
            vec![],
            "app_component_invalid",
        ),
    ];
    for (m, w, g, code) in cases {
        let r = install(&s.admin, &m, w, &g).await;
        let (status, got) = error_code(r).await;
        assert_eq!(
            (status, got.as_str()),
            (StatusCode::BAD_REQUEST, code),
            "{g:?}"
        );
    }
    // Only an admin installs.
    for who in [&s.prof, &s.lea] {
        let r = install(who, &manifest, wasm.clone(), &[]).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    let list = json_of(
        s.admin.get(&format!("/t/{SLUG}/api/apps")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["apps"].as_array().unwrap().len(), 0, "{list}");
    let r = s.lea.get(&format!("/t/{SLUG}/apps/quiz/")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    app.kill();
}

/// Noisy neighbour, checked loosely (the benchmark `benches/apps.rs` measures it): while
/// school A's app holds 12 of its 16 MiB and burns CPU in every request it may run, school B's requests all
/// complete before any of A's burning requests ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burning_app_in_one_school_does_not_hold_up_another_school() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    let (manifest, wasm) = example("attacks");
    let slow = manifest
        .replace("name = \"attacks\"", "name = \"burner\"")
        .replace("timeout-ms = 1000", "timeout-ms = 30000");
    json_of(
        install(&s.admin, &slow, wasm, &[]).await,
        StatusCode::CREATED,
    )
    .await;
    let op = login(&app, "/operator/login", "operator", PASSWORD)
        .await
        .unwrap();
    let beta = tenant_with_admin(&app, &op, "beta").await;
    let (hello_manifest, hello) = example("hello");
    let r = install_in(&beta, "beta", &hello_manifest, hello, &[]).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // A: more burning requests than A may run at once.
    let mut burners = Vec::new();
    for _ in 0..4 {
        let lea = s.lea.clone();
        burners.push(tokio::spawn(async move {
            lea.get(&format!("/t/{SLUG}/apps/burner/hog?mib=12"))
                .await
                .status()
        }));
    }
    // B: its app answers, again and again, while A burns.
    let mut answered = 0;
    for _ in 0..40 {
        let r = beta.get("/t/beta/apps/hello/").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.unwrap(), "ok");
        answered += 1;
    }
    assert_eq!(answered, 40);
    assert!(
        burners.iter().all(|b| !b.is_finished()),
        "school A's burning requests ended before school B was served"
    );
    for b in burners {
        b.abort();
    }
    app.kill();
}
