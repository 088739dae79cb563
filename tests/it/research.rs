//! Research exports through the real server: a project's researcher gets pseudonymised,
//! k-anonymous CSV, or the gate's reason; every attempt is journaled; nobody else exports.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::assessment::school;
use crate::support::*;

const SLUG: &str = "ecole";

async fn project(s: &crate::assessment::School, name: &str, k: i64, researcher: i64) -> i64 {
    let r = s
        .admin
        .post(
            &format!("/t/{SLUG}/api/research/projects"),
            json!({"name": name, "title": "Compréhension orale en 4e", "quasi_identifiers": ["class"],
                   "k": k, "researchers": [researcher]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_researcher_gets_only_what_the_privacy_gate_passes_and_every_export_is_journaled() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    // 4e A has 2 pupils and 4e B 1; 4e C gets 10 more, 4e D 5.
    let mut names = vec!["lea".to_string(), "tom".to_string(), "zoe".to_string()];
    for (class, n) in [("4e C", 10), ("4e D", 5)] {
        let mut ids = Vec::new();
        for i in 0..n {
            let name = format!("{}-{i}", class.replace(' ', "").to_lowercase());
            ids.push(add_user(&s.admin, SLUG, &name, "student").await.0);
            names.push(name);
        }
        let c: Value = s
            .admin
            .post(&format!("/t/{SLUG}/api/classes"), json!({"title": class}))
            .await
            .json()
            .await
            .unwrap();
        for id in ids {
            s.admin
                .post(
                    &format!("/t/{SLUG}/api/classes/{}/enrolments", c["id"]),
                    json!({"user_id": id}),
                )
                .await;
        }
    }
    let researcher = s.ids["chercheuse"];
    let bad = s
        .admin
        .post(
            &format!("/t/{SLUG}/api/research/projects"),
            json!({"name": "x", "title": "x", "quasi_identifiers": ["class"], "k": 3,
                   "researchers": [researcher]}),
        )
        .await;
    assert_eq!(
        error_code(bad).await,
        (StatusCode::BAD_REQUEST, "invalid_project".into())
    );
    let not_researcher = s
        .admin
        .post(
            &format!("/t/{SLUG}/api/research/projects"),
            json!({"name": "x", "title": "x", "quasi_identifiers": ["class"],
                   "researchers": [s.ids["prof"]]}),
        )
        .await;
    assert_eq!(
        error_code(not_researcher).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "not_a_researcher".into())
    );
    let ok = project(&s, "oral-4e", 5, researcher).await;
    let too_strict = project(&s, "oral-4e-k20", 20, researcher).await;

    // Accepted: 18 pupils; classes of 2 and 1 would need suppressing 3 (more than 5 %), so
    // the class is generalised to its grade.
    let r = s
        .researcher
        .get(&format!("/t/{SLUG}/api/research/projects/{ok}/export"))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = r.text().await.unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "pupil,class,skill,level,descriptors_reached,evidence"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 18 * 4, "every pupil, every skill");
    assert!(
        rows.iter().all(|r| r.split(',').nth(1) == Some("4e")),
        "{csv}"
    );
    for name in &names {
        assert!(!csv.contains(name.as_str()), "{name} appears in the export");
    }
    for word in ["Prénom", "Durand", "@"] {
        assert!(!csv.contains(word), "{word} appears in the export");
    }
    let pupils: std::collections::HashSet<&str> =
        rows.iter().map(|r| r.split(',').next().unwrap()).collect();
    assert_eq!(pupils.len(), 18);
    let distribution = s
        .researcher
        .get(&format!(
            "/t/{SLUG}/api/research/projects/{ok}/export?dataset=distribution"
        ))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        distribution.starts_with("class,skill,level,n,suppressed"),
        "{distribution}"
    );

    // Refused, with the reason.
    let refused = s
        .researcher
        .get(&format!(
            "/t/{SLUG}/api/research/projects/{too_strict}/export"
        ))
        .await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let v: Value = refused.json().await.unwrap();
    assert_eq!(v["error"]["code"], "privacy_gate");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fewer than k = 20"),
        "{v}"
    );
    // Nobody else exports: another researcher's project is not found; other roles forbidden.
    for (who, session) in [("teacher", &s.prof), ("pupil", &s.lea), ("admin", &s.admin)] {
        let r = session
            .get(&format!("/t/{SLUG}/api/research/projects/{ok}/export"))
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{who}");
    }
    let (_, otp) = add_user(&s.admin, SLUG, "autre-chercheur", "researcher").await;
    let other_session = activate(&app, SLUG, "autre-chercheur", &otp).await;
    let r = other_session
        .get(&format!("/t/{SLUG}/api/research/projects/{ok}/export"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // The journal holds every export of the project, the refused one included.
    let conn =
        rusqlite::Connection::open(app.data_path().join(format!("tenants/{SLUG}/tenant.db")))
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT body FROM assessment_journal WHERE kind = 'export' ORDER BY seq")
        .unwrap();
    let bodies: Vec<Value> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|b| serde_json::from_str(&b.unwrap()).unwrap())
        .collect();
    let passed: Vec<bool> = bodies
        .iter()
        .map(|b| b["gate"]["passed"].as_bool().unwrap())
        .collect();
    assert_eq!(passed, [true, true, false], "{bodies:?}");
    assert_eq!(bodies[0]["actor"], format!("user:{researcher}"));
    assert_eq!(bodies[0]["project"], "oral-4e");
    assert_eq!(bodies[0]["gate"]["suppressed_pupils"], 0);
    assert!(
        bodies[2]["gate"]["reason"]
            .as_str()
            .unwrap()
            .contains("k = 20")
    );

    // A long export runs in the background: its progress, then its file.
    let started: Value = s
        .researcher
        .post(
            &format!("/t/{SLUG}/api/research/projects/{ok}/exports"),
            json!({"dataset": "pupils"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let status_url = started["status"].as_str().unwrap().to_string();
    let mut status = Value::Null;
    for _ in 0..100 {
        status = s.researcher.get(&status_url).await.json().await.unwrap();
        if status["finished"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status["finished"], true, "{status}");
    assert_eq!(
        (status["done"].as_i64(), status["total"].as_i64()),
        (Some(18), Some(18)),
        "{status}"
    );
    assert_eq!(status["gate"]["passed"], true);
    let r = other_session.get(&status_url).await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "another researcher's job"
    );
    let file = s
        .researcher
        .get(started["file"].as_str().unwrap())
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(file.lines().count(), 18 * 4 + 1);
    assert!(file.starts_with("pupil,class,skill,level,descriptors_reached,evidence"));
    let exports: i64 = conn
        .query_row(
            "SELECT count(*) FROM assessment_journal WHERE kind = 'export'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(exports, 4, "the background export is journaled too");

    // The research page's button starts the same job and shows its progress page.
    let r = s
        .researcher
        .client
        .post(app.url(&format!("/t/{SLUG}/research/projects/{ok}/exports")))
        .form(&[
            ("_csrf", s.researcher.csrf.as_str()),
            ("dataset", "distribution"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let page_url = r.headers()["location"].to_str().unwrap().to_string();
    let mut page = String::new();
    for _ in 0..100 {
        page = s.researcher.get(&page_url).await.text().await.unwrap();
        if page.contains("Télécharger le CSV") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(page.contains("/csv\""), "{page}");
}
