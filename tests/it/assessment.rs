//! The assessment flow through the real server: xAPI results and teachers' observations
//! become journaled evidence, a teacher decides a level, a pupil sees levels and
//! descriptors and never a number, and each rule is attacked.

use std::collections::BTreeSet;

use ceredis::http::{Access, route_specs};
use ceredis::tenant::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

const SLUG: &str = "ecole";
const DESCRIPTOR: &str = "urn:ceredis:cefr:reception:A2:1";
const SKILL: &str = "urn:ceredis:cefr:reception";
const QUIZ: &str = "https://apps.ecole.example/quiz/ecoute-1";

/// One school: `prof` teaches 4e A (lea, tom); `autre` teaches 4e B (zoe).
pub struct School {
    pub admin: Session,
    pub prof: Session,
    pub autre: Session,
    pub lea: Session,
    pub tom: Session,
    pub researcher: Session,
    pub ids: std::collections::HashMap<&'static str, i64>,
    pub class_a: i64,
}

async fn class(admin: &Session, title: &str, members: &[i64]) -> i64 {
    let c: Value = admin
        .post(&format!("/t/{SLUG}/api/classes"), json!({"title": title}))
        .await
        .json()
        .await
        .unwrap();
    let id = c["id"].as_i64().unwrap();
    for m in members {
        let r = admin
            .post(
                &format!("/t/{SLUG}/api/classes/{id}/enrolments"),
                json!({"user_id": m}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    id
}

pub async fn school(app: &Appliance) -> School {
    let op = operator(app).await;
    let admin = tenant_with_admin(app, &op, SLUG).await;
    let mut ids = std::collections::HashMap::new();
    let mut sessions = std::collections::HashMap::new();
    for (name, role) in [
        ("prof", "teacher"),
        ("autre", "teacher"),
        ("lea", "student"),
        ("tom", "student"),
        ("zoe", "student"),
        ("chercheuse", "researcher"),
    ] {
        let (id, otp) = add_user(&admin, SLUG, name, role).await;
        ids.insert(name, id);
        sessions.insert(name, activate(app, SLUG, name, &otp).await);
    }
    let class_a = class(&admin, "4e A", &[ids["prof"], ids["lea"], ids["tom"]]).await;
    class(&admin, "4e B", &[ids["autre"], ids["zoe"]]).await;
    let mut take = |n: &str| sessions.remove(n).unwrap();
    School {
        prof: take("prof"),
        autre: take("autre"),
        lea: take("lea"),
        tom: take("tom"),
        researcher: take("chercheuse"),
        admin,
        ids,
        class_a,
    }
}

pub async fn json_of(r: reqwest::Response, expected: StatusCode) -> Value {
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, expected, "{text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

pub async fn agent_of(s: &Session) -> Value {
    let me = json_of(s.get(&format!("/t/{SLUG}/api/me")).await, StatusCode::OK).await;
    me["xapi_agent"].clone()
}

pub async fn pupil_record(teacher: &Session, pupil: i64) -> Value {
    json_of(
        teacher
            .get(&format!("/t/{SLUG}/api/pupils/{pupil}/assessment"))
            .await,
        StatusCode::OK,
    )
    .await
}

/// The ids of the statements a credential reads, about `agent` if given.
async fn statement_ids(
    app: &Appliance,
    key: &(String, String),
    agent: Option<&Value>,
) -> Vec<String> {
    let mut req = app
        .client()
        .get(app.url(&format!("/t/{SLUG}/xapi/statements")))
        .basic_auth(&key.0, Some(&key.1))
        .header("X-Experience-API-Version", "1.0.3");
    if let Some(a) = agent {
        req = req.query(&[("agent", a.to_string())]);
    }
    let v: Value = req.send().await.unwrap().json().await.unwrap();
    v["statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// `ceredis doctor` replays the tenant's journal to the stored estimates.
fn assert_journal_replays(app: &Appliance) {
    let out = app.cli(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let journal: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("assessment journal"))
        .collect();
    assert!(
        journal.len() == 1 && journal[0].contains(" ok ") && journal[0].contains("replayed"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn statement(id: &str, actor: &Value, activity: &str, result: Value) -> Value {
    json!({
        "id": id,
        "actor": actor,
        "verb": {"id": "http://adlnet.gov/expapi/verbs/answered"},
        "object": {"id": activity},
        "result": result,
    })
}

async fn post_statements(app: &Appliance, key: &(String, String), body: Value) -> StatusCode {
    app.client()
        .post(app.url(&format!("/t/{SLUG}/xapi/statements")))
        .basic_auth(&key.0, Some(&key.1))
        .header("X-Experience-API-Version", "1.0.3")
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xapi_results_on_aligned_activities_become_journaled_evidence() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    let lea = s.ids["lea"];
    let key = app.credential(SLUG, &["statements/write", "statements/read"]);
    let agent = agent_of(&s.lea).await;
    let r = s
        .prof
        .post(
            &format!("/t/{SLUG}/api/alignments"),
            json!({"activity": QUIZ, "competency": DESCRIPTOR}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let bad = s
        .prof
        .post(
            &format!("/t/{SLUG}/api/alignments"),
            json!({"activity": QUIZ, "competency": "urn:nowhere"}),
        )
        .await;
    assert_eq!(
        error_code(bad).await,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_competency".into()
        )
    );

    let aligned = "6f1d8e34-1b0c-4c8e-9b51-000000000001";
    let by_category = "6f1d8e34-1b0c-4c8e-9b51-000000000002";
    let mut direct = statement(
        by_category,
        &agent,
        "https://apps.ecole.example/quiz/free",
        json!({"success": true}),
    );
    direct["context"] = json!({"contextActivities": {"category": [{"id": DESCRIPTOR}]}});
    let batch = json!([
        statement(aligned, &agent, QUIZ, json!({"score": {"scaled": 0.8}})),
        direct,
        // Not a pupil of the school, no result, an activity aligned to nothing:
        statement(
            "6f1d8e34-1b0c-4c8e-9b51-000000000003",
            &json!({"mbox": "mailto:visiteur@example.org"}),
            QUIZ,
            json!({"success": true})
        ),
        statement(
            "6f1d8e34-1b0c-4c8e-9b51-000000000004",
            &agent,
            QUIZ,
            json!({})
        ),
        statement(
            "6f1d8e34-1b0c-4c8e-9b51-000000000005",
            &agent,
            "https://apps.ecole.example/other",
            json!({"success": true})
        ),
    ]);
    assert_eq!(
        post_statements(&app, &key, batch.clone()).await,
        StatusCode::OK
    );
    // The same statements again change nothing.
    assert_eq!(post_statements(&app, &key, batch).await, StatusCode::OK);

    let record = pupil_record(&s.prof, lea).await;
    let evidence = record["evidence"].as_array().unwrap();
    let from: BTreeSet<&str> = evidence
        .iter()
        .map(|e| e["statement_id"].as_str().unwrap())
        .collect();
    assert_eq!(from, BTreeSet::from([aligned, by_category]), "{record}");
    assert!(evidence.iter().all(|e| e["source"] == "xapi"));
    let values: BTreeSet<i64> = evidence
        .iter()
        .map(|e| e["value_bp"].as_i64().unwrap())
        .collect();
    assert_eq!(values, BTreeSet::from([8_000, 10_000]));
    assert_eq!(record["scores"][0]["evidence_count"], 2);
    let before = record["scores"][0]["mastery_bp"].as_i64().unwrap();

    // Voiding a statement withdraws the evidence it gave.
    let void = json!({
        "id": "6f1d8e34-1b0c-4c8e-9b51-000000000006",
        "actor": {"mbox": "mailto:prof@ecole.example"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/voided"},
        "object": {"objectType": "StatementRef", "id": aligned},
    });
    assert_eq!(post_statements(&app, &key, void).await, StatusCode::OK);
    let record = pupil_record(&s.prof, lea).await;
    let withdrawal = record["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "withdrawal")
        .unwrap_or_else(|| panic!("no withdrawal: {record}"));
    assert_eq!(withdrawal["statement_id"], aligned);
    assert_eq!(record["scores"][0]["evidence_count"], 1);
    assert_ne!(record["scores"][0]["mastery_bp"].as_i64().unwrap(), before);
    // Another teacher's pupil record is not theirs to read.
    let r = s
        .autre
        .get(&format!("/t/{SLUG}/api/pupils/{lea}/assessment"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// Lea's evidence, level and estimates, recorded as her teacher would.
pub async fn assess_lea(s: &School) -> (Vec<i64>, Value) {
    let (lea, tom) = (s.ids["lea"], s.ids["tom"]);
    let recorded = json_of(
        s.prof
            .post(
                &format!("/t/{SLUG}/api/classes/{}/observations", s.class_a),
                json!({"competency": DESCRIPTOR, "observations": [
                    {"pupil": lea, "level": 3, "comment": "Comprend l'annonce du train"},
                    {"pupil": tom, "level": 2},
                ]}),
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
    json_of(
        s.prof
            .post(
                &format!("/t/{SLUG}/api/classes/{}/observations", s.class_a),
                json!({"competency": "urn:ceredis:cefr:reception:A2:2",
                       "observations": [{"pupil": lea, "level": 4}]}),
            )
            .await,
        StatusCode::CREATED,
    )
    .await;
    let r = s
        .prof
        .post(
            &format!("/t/{SLUG}/api/pupils/{lea}/levels"),
            json!({"competency": SKILL, "level": "A2", "evidence": [evidence[0]],
                   "justification": "Comprend les annonces courtes et les horaires."}),
        )
        .await;
    json_of(r, StatusCode::CREATED).await;
    let grid = json_of(
        s.prof
            .get(&format!("/t/{SLUG}/api/classes/{}/assessment", s.class_a))
            .await,
        StatusCode::OK,
    )
    .await;
    (evidence, grid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teacher_assesses_the_class_and_decides_a_level_the_pupil_sees_it_in_words() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    let (lea, zoe) = (s.ids["lea"], s.ids["zoe"]);
    let (evidence, grid) = assess_lea(&s).await;
    let pupils = grid["pupils"].as_array().unwrap();
    assert_eq!(pupils.len(), 2, "{grid}");
    let lea_line = pupils.iter().find(|p| p["id"] == lea).unwrap();
    let skill_id = grid["competencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["uri"] == SKILL)
        .unwrap()["id"]
        .to_string();
    assert_eq!(lea_line["levels"][&skill_id], "A2");
    assert_eq!(lea_line["scores"].as_object().unwrap().len(), 2);

    // What Lea sees: her level and descriptors in words.
    let progress = json_of(
        s.lea
            .client
            .get(app.url(&format!("/t/{SLUG}/api/my/progress")))
            .header("accept-language", "fr")
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let reception = &progress["frameworks"][0]["skills"][0];
    assert_eq!(reception["uri"], SKILL);
    assert_eq!(reception["level"]["code"], "A2");
    assert_eq!(reception["level"]["name"], "A2 — intermédiaire");
    let status_of = |uri: &str| {
        reception["descriptors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["uri"] == uri)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status_of("urn:ceredis:cefr:reception:A1:1"), "reached");
    assert_eq!(status_of(DESCRIPTOR), "reached");
    assert_eq!(status_of("urn:ceredis:cefr:reception:B1:1"), "not_started");

    // The rules, attacked.
    let other_class = s
        .autre
        .get(&format!("/t/{SLUG}/api/classes/{}/assessment", s.class_a))
        .await;
    assert_eq!(other_class.status(), StatusCode::NOT_FOUND);
    let smuggled = s
        .prof
        .post(
            &format!("/t/{SLUG}/api/classes/{}/observations", s.class_a),
            json!({"competency": DESCRIPTOR, "observations": [
                {"pupil": lea, "level": 4}, {"pupil": zoe, "level": 1}]}),
        )
        .await;
    assert_eq!(
        error_code(smuggled).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "not_in_class".into())
    );
    let lea_now = pupil_record(&s.prof, lea).await;
    assert_eq!(
        lea_now["evidence"].as_array().unwrap().len(),
        2,
        "the refused batch wrote nothing"
    );
    let not_theirs = s
        .autre
        .post(
            &format!("/t/{SLUG}/api/pupils/{lea}/levels"),
            json!({"competency": SKILL, "level": "C2", "evidence": [evidence[0]],
                   "justification": "x"}),
        )
        .await;
    assert_eq!(not_theirs.status(), StatusCode::NOT_FOUND);
    for (who, session) in [
        ("pupil", &s.lea),
        ("researcher", &s.researcher),
        ("admin", &s.admin),
    ] {
        let r = session
            .post(
                &format!("/t/{SLUG}/api/pupils/{lea}/levels"),
                json!({"competency": SKILL, "level": "C2", "evidence": [evidence[0]],
                       "justification": "x"}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{who}");
    }
    let key = app.credential(SLUG, &["all"]);
    let machine = app
        .client()
        .post(app.url(&format!("/t/{SLUG}/api/pupils/{lea}/levels")))
        .basic_auth(&key.0, Some(&key.1))
        .json(
            &json!({"competency": SKILL, "level": "C2", "evidence": [evidence[0]],
                      "justification": "x"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        machine.status(),
        StatusCode::UNAUTHORIZED,
        "a machine never decides"
    );
    for bad in [
        json!({"competency": SKILL, "level": "B1", "evidence": [], "justification": "x"}),
        json!({"competency": SKILL, "level": "B1", "evidence": [evidence[0]], "justification": " "}),
        json!({"competency": SKILL, "level": "Z9", "evidence": [evidence[0]], "justification": "x"}),
        json!({"competency": SKILL, "level": "B1", "evidence": [evidence[1]], "justification": "x"}),
        json!({"competency": DESCRIPTOR, "level": "B1", "evidence": [evidence[0]], "justification": "x"}),
    ] {
        let r = s
            .prof
            .post(&format!("/t/{SLUG}/api/pupils/{lea}/levels"), bad.clone())
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let record = pupil_record(&s.prof, lea).await;
    assert_eq!(record["levels"].as_array().unwrap().len(), 1);
    assert_eq!(record["levels"][0]["level_code"], "A2");

    // Pupils self-assess and may take back only their own self-assessments.
    let r = s
        .lea
        .post(
            &format!("/t/{SLUG}/api/my/self-assessments"),
            json!({"competency": "urn:ceredis:cefr:production:A1:2", "answer": "with_help"}),
        )
        .await;
    assert_eq!(
        json_of(r, StatusCode::CREATED).await,
        json!({"status": "recorded"})
    );
    let record = pupil_record(&s.prof, lea).await;
    let own = record["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == "self")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let r = s
        .lea
        .post(
            &format!("/t/{SLUG}/api/evidence/{own}/correction"),
            json!({"level": 3}),
        )
        .await;
    assert_eq!(
        json_of(r, StatusCode::CREATED).await,
        json!({"status": "recorded"})
    );
    let r = s
        .lea
        .post(
            &format!("/t/{SLUG}/api/evidence/{}/withdrawal", evidence[0]),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a teacher's observation");
    let r = s
        .tom
        .post(
            &format!("/t/{SLUG}/api/evidence/{own}/withdrawal"),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "another pupil's");
    // Her teacher corrects an observation; the original stays, superseded.
    let r = s
        .prof
        .post(
            &format!("/t/{SLUG}/api/evidence/{}/correction", evidence[0]),
            json!({"level": 4, "comment": "revu à l'oral"}),
        )
        .await;
    json_of(r, StatusCode::CREATED).await;
    let again = s
        .prof
        .post(
            &format!("/t/{SLUG}/api/evidence/{}/correction", evidence[0]),
            json!({"level": 1}),
        )
        .await;
    assert_eq!(
        error_code(again).await,
        (StatusCode::CONFLICT, "evidence_superseded".into())
    );
}

/// Every number a teacher sees about a pupil, as a pupil's page or file might print it.
fn renderings(grid: &Value, pupil: i64) -> Vec<String> {
    let line = grid["pupils"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == pupil)
        .unwrap();
    let mut out = Vec::new();
    for cell in line["scores"].as_object().unwrap().values() {
        let bp = cell["mastery_bp"].as_i64().unwrap();
        out.push(bp.to_string());
        out.push(format!("{:.4}", bp as f64 / 10_000.0));
        out.push(format!("{:.2}", bp as f64 / 100.0));
        out.push(format!("{:.1}%", bp as f64 / 100.0));
        out.push(format!("{}%", (bp as f64 / 100.0).round()));
    }
    out
}

/// A JSON key a pupil must never receive.
fn forbidden_key(k: &str) -> bool {
    if k == "@value" {
        return false; // a JSON-LD text (framework names in CaSS exports)
    }
    let k = k.to_ascii_lowercase();
    [
        "score", "mastery", "value", "_bp", "estimate", "raw", "scaled",
    ]
    .iter()
    .any(|f| k.contains(f))
}

fn scan_json(v: &Value, path: &str, problems: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                if forbidden_key(k) {
                    problems.push(format!("{path}.{k}"));
                }
                scan_json(v, &format!("{path}.{k}"), problems);
            }
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| scan_json(v, &format!("{path}[{i}]"), problems)),
        // Identifiers are the only numbers a pupil receives.
        Value::Number(n) if !(path.ends_with(".id") || path.ends_with("_id")) => {
            problems.push(format!("{path} = {n}"))
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_a_pupil_can_get_carries_a_score_in_any_format() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    let lea = s.ids["lea"];
    let key = app.credential(SLUG, &["statements/write"]);
    s.prof
        .post(
            &format!("/t/{SLUG}/api/alignments"),
            json!({"activity": QUIZ, "competency": DESCRIPTOR}),
        )
        .await;
    let agent = agent_of(&s.lea).await;
    let quiz = statement(
        "7a2b9c10-0000-4000-8000-000000000001",
        &agent,
        QUIZ,
        json!({"score": {"scaled": 0.6347, "raw": 6347, "min": 0, "max": 10000}, "success": true}),
    );
    assert_eq!(post_statements(&app, &key, quiz).await, StatusCode::OK);
    let (evidence, grid) = assess_lea(&s).await;
    let secrets = renderings(&grid, lea);
    assert!(secrets.len() >= 10, "{grid}");
    let own_self = {
        s.lea
            .post(
                &format!("/t/{SLUG}/api/my/self-assessments"),
                json!({"competency": DESCRIPTOR, "answer": "can"}),
            )
            .await;
        let record = pupil_record(&s.prof, lea).await;
        record["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["source"] == "self")
            .unwrap()["id"]
            .as_i64()
            .unwrap()
    };
    let grid = json_of(
        s.prof
            .get(&format!("/t/{SLUG}/api/classes/{}/assessment", s.class_a))
            .await,
        StatusCode::OK,
    )
    .await;
    let mut secrets = secrets;
    secrets.extend(renderings(&grid, lea));
    secrets.extend(["6347".into(), "0.6347".into(), "63.47".into()]);

    // Every route a pupil may call, generated from the route table, in every format.
    let mut checked = 0;
    let mut problems = Vec::new();
    let mut responses: Vec<(String, String)> = Vec::new();
    for spec in route_specs() {
        let pupil_may = match spec.access {
            Access::Members(roles) => roles.contains(&Role::Student),
            Access::Xapi => spec.method == Method::GET || spec.path.ends_with("/statements"),
            _ => false,
        };
        if !pupil_may || spec.path.ends_with("/logout") || spec.path.ends_with("/password") {
            continue;
        }
        let path = spec
            .path
            .replace("{tenant}", SLUG)
            .replace("{class}", &s.class_a.to_string())
            .replace("{framework}", "1")
            .replace("{pupil}", &lea.to_string())
            .replace("{evidence}", &own_self.to_string())
            .replace("{user}", &lea.to_string())
            .replace("{token}", "x");
        let bodies: Vec<Option<Value>> = if spec.method == Method::GET {
            vec![None]
        } else {
            // Refused bodies, then bodies each of the pupil's write routes accepts.
            vec![
                Some(json!({"competency": DESCRIPTOR, "answer": "maybe"})),
                Some(json!({"level": 9})),
                Some(json!({"competency": DESCRIPTOR, "answer": "with_help"})),
                Some(json!({"level": 2})),
                Some(json!({})),
            ]
        };
        for body in bodies {
            for accept in ["application/json", "text/html", "text/csv", "*/*"] {
                let mut req = s
                    .lea
                    .client
                    .request(spec.method.clone(), app.url(&path))
                    .header("accept", accept)
                    .header("x-csrf-token", &s.lea.csrf)
                    .header("X-Experience-API-Version", "1.0.3");
                if spec.path.contains("/xapi/statements") && spec.method == Method::GET {
                    req = req.query(&[("agent", agent.to_string())]);
                }
                if let Some(b) = &body {
                    req = req.json(b);
                }
                let r = req.send().await.unwrap();
                let status = r.status();
                let text = r.text().await.unwrap();
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    let mut found = Vec::new();
                    scan_json(&v, "", &mut found);
                    for f in found {
                        problems.push(format!("{} {path} ({accept}) → {status}: {f}", spec.method));
                    }
                }
                responses.push((
                    format!("{} {path} ({accept}) → {status}", spec.method),
                    text,
                ));
            }
        }
    }
    // The pupil's writes changed her estimates: the figures after them count too.
    let after = json_of(
        s.prof
            .get(&format!("/t/{SLUG}/api/classes/{}/assessment", s.class_a))
            .await,
        StatusCode::OK,
    )
    .await;
    secrets.extend(renderings(&after, lea));
    for (what, text) in &responses {
        checked += 1;
        for secret in &secrets {
            if text.contains(secret.as_str()) {
                problems.push(format!("{what}: contains `{secret}`"));
            }
        }
    }
    assert!(checked >= 40, "only {checked} responses checked");
    assert!(problems.is_empty(), "{problems:#?}");
    // The writes in the loop really happened (so their answers were checked too).
    let record = pupil_record(&s.prof, lea).await;
    let own: Vec<&Value> = record["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == "self")
        .collect();
    assert!(own.len() >= 3, "{record}");
    assert!(own.iter().any(|e| e["kind"] == "correction"));
    assert!(evidence.len() == 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_pupil_removes_everything_of_theirs_and_leaves_a_tombstone() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    let (lea, tom) = (s.ids["lea"], s.ids["tom"]);
    let key = app.credential(SLUG, &["statements/write", "statements/read"]);
    s.prof
        .post(
            &format!("/t/{SLUG}/api/alignments"),
            json!({"activity": QUIZ, "competency": DESCRIPTOR}),
        )
        .await;
    let agent = agent_of(&s.lea).await;
    let tom_agent = agent_of(&s.tom).await;
    let batch = json!([
        statement(
            "8b3c0d21-0000-4000-8000-000000000001",
            &agent,
            QUIZ,
            json!({"success": true})
        ),
        statement(
            "8b3c0d21-0000-4000-8000-000000000002",
            &tom_agent,
            QUIZ,
            json!({"success": false})
        ),
    ]);
    assert_eq!(post_statements(&app, &key, batch).await, StatusCode::OK);
    assess_lea(&s).await;
    let bad = s
        .admin
        .post(
            &format!("/t/{SLUG}/api/users/{lea}/erasure"),
            json!({"confirm": "tom"}),
        )
        .await;
    assert_eq!(
        error_code(bad).await,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "confirmation_mismatch".into()
        )
    );
    let teacher = s
        .admin
        .post(
            &format!("/t/{SLUG}/api/users/{}/erasure", s.ids["prof"]),
            json!({"confirm": "prof"}),
        )
        .await;
    assert_eq!(
        error_code(teacher).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "has_decisions".into())
    );
    let done = json_of(
        s.admin
            .post(
                &format!("/t/{SLUG}/api/users/{lea}/erasure"),
                json!({"confirm": "lea"}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(done["removed"]["statements"], 1, "{done}");
    assert_eq!(done["removed"]["levels"], 1);
    assert_eq!(done["removed"]["evidence"], 3);

    let r = s
        .prof
        .get(&format!("/t/{SLUG}/api/pupils/{lea}/assessment"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(statement_ids(&app, &key, Some(&agent)).await.is_empty());
    assert_eq!(
        statement_ids(&app, &key, None).await,
        ["8b3c0d21-0000-4000-8000-000000000002"],
        "tom's stays"
    );
    // Lea's session ended with her account.
    let r = s.lea.get(&format!("/t/{SLUG}/api/my/progress")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Tom's record is intact and the journal still verifies.
    let record = pupil_record(&s.prof, tom).await;
    assert_eq!(record["evidence"].as_array().unwrap().len(), 2);
    assert_journal_replays(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_count_levels_evidence_and_coverage_for_the_class_and_the_school() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    assess_lea(&s).await;
    let class = json_of(
        s.prof
            .get(&format!("/t/{SLUG}/api/classes/{}/dashboard", s.class_a))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(class["pupils"], 2);
    assert_eq!(class["evidence_total"], 3);
    let reception = class["skills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["uri"] == SKILL)
        .unwrap();
    let a2 = reception["levels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l[0] == "A2")
        .unwrap();
    assert_eq!(a2[1], 1);
    assert_eq!(reception["undecided"], 1);
    assert_eq!(
        reception["covered"], 2,
        "lea and tom have evidence on reception"
    );
    let weekly: i64 = class["weekly_evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w[1].as_i64().unwrap())
        .sum();
    assert_eq!(weekly, 3);
    // Lea's observations (3 and 4 on the rubric) and Tom's (2): a mean of about 67 %.
    let mean = class["weekly_evidence"][0][2].as_i64().unwrap();
    assert_eq!(mean, ((6_667 + 10_000 + 3_333) as f64 / 3.0).round() as i64);
    let school = json_of(
        s.admin.get(&format!("/t/{SLUG}/api/dashboard")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(school["pupils"], 3, "zoe counts at school level");
    // Another teacher's class is not found; the page draws its charts.
    let r = s
        .autre
        .get(&format!("/t/{SLUG}/api/classes/{}/dashboard", s.class_a))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let page = s
        .prof
        .get(&format!("/t/{SLUG}/classes/{}/dashboard", s.class_a))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<svg class=\"chart\"") && page.contains("Réception · A2: 1"),
        "{page}"
    );

    // The school's own Grafana reads the same figures with an analytics credential.
    let metrics = |key: (String, String)| {
        app.client()
            .get(app.url(&format!("/t/{SLUG}/metrics")))
            .basic_auth(key.0, Some(key.1))
            .send()
    };
    let r = metrics(app.credential(SLUG, &["analytics/read"]))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("ceredis_school_level_pupils{skill=\"reception\",level=\"A2\"} 1"),
        "{text}"
    );
    assert!(text.contains("ceredis_school_pupils 3"), "{text}");
    let r = metrics(app.credential(SLUG, &["statements/write"]))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_imports_a_case_package_and_anyone_reads_frameworks_as_cass() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    let case: Value = serde_json::from_str(include_str!("../fixtures/case-package.json")).unwrap();
    let r = s
        .admin
        .post(&format!("/t/{SLUG}/api/frameworks"), case.clone())
        .await;
    let created = json_of(r, StatusCode::CREATED).await;
    assert_eq!(
        (
            created["competencies"].as_i64(),
            created["relations"].as_i64()
        ),
        (Some(4), Some(4))
    );
    let r = s
        .prof
        .post(&format!("/t/{SLUG}/api/frameworks"), case)
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "only an admin imports");
    let bad = s
        .admin
        .post(
            &format!("/t/{SLUG}/api/frameworks"),
            json!({"CFDocument": {}}),
        )
        .await;
    assert_eq!(
        error_code(bad).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_framework".into())
    );
    let id = created["id"].as_i64().unwrap();
    let cass: Value = s
        .lea
        .get(&format!("/t/{SLUG}/api/frameworks/{id}/cass"))
        .await
        .json()
        .await
        .unwrap();
    let types: Vec<&str> = cass
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["@type"].as_str().unwrap())
        .collect();
    assert_eq!(types.iter().filter(|t| **t == "Competency").count(), 4);
    assert_eq!(types[0], "Framework");
    assert_eq!(cass[0]["name"], "Langues vivantes — cycle 3");
    // The built-in framework cannot be replaced by an import of itself.
    let cefr: Value = s
        .admin
        .get(&format!("/t/{SLUG}/api/frameworks/1/cass"))
        .await
        .json()
        .await
        .unwrap();
    let r = s
        .admin
        .post(&format!("/t/{SLUG}/api/frameworks"), cefr)
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_dry_runs_then_deletes_old_records_and_the_journal_still_replays() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    let lea = s.ids["lea"];
    let key = app.credential(SLUG, &["statements/write", "statements/read"]);
    s.prof
        .post(
            &format!("/t/{SLUG}/api/alignments"),
            json!({"activity": QUIZ, "competency": DESCRIPTOR}),
        )
        .await;
    let agent = agent_of(&s.lea).await;
    let day = 86_400_000i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let at = |days_ago: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(
            ((now - days_ago * day) as i128) * 1_000_000,
        )
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
    };
    let mut old = statement(
        "9c4d1e32-0000-4000-8000-000000000001",
        &agent,
        QUIZ,
        json!({"success": false}),
    );
    old["timestamp"] = json!(at(400));
    let mut recent = statement(
        "9c4d1e32-0000-4000-8000-000000000002",
        &agent,
        QUIZ,
        json!({"success": true}),
    );
    recent["timestamp"] = json!(at(10));
    assert_eq!(
        post_statements(&app, &key, json!([old, recent])).await,
        StatusCode::OK
    );
    let before = pupil_record(&s.prof, lea).await;
    assert_eq!(before["evidence"].as_array().unwrap().len(), 2);

    let bad = s
        .admin
        .json(
            Method::PUT,
            &format!("/t/{SLUG}/api/retention"),
            json!({"statements_days": 3, "evidence_days": null}),
        )
        .await;
    assert_eq!(
        error_code(bad).await,
        (StatusCode::BAD_REQUEST, "invalid_retention".into())
    );
    let r = s
        .admin
        .json(
            Method::PUT,
            &format!("/t/{SLUG}/api/retention"),
            json!({"statements_days": 365, "evidence_days": 365}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let dry = json_of(
        s.admin
            .post(
                &format!("/t/{SLUG}/api/retention/run"),
                json!({"dry_run": true}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (
            dry["statements"].as_i64(),
            dry["evidence"].as_i64(),
            dry["pupils"].as_i64()
        ),
        (Some(1), Some(1), Some(1)),
        "{dry}"
    );
    assert_eq!(
        pupil_record(&s.prof, lea).await["evidence"],
        before["evidence"],
        "a dry run changes nothing"
    );

    let done = json_of(
        s.admin
            .post(
                &format!("/t/{SLUG}/api/retention/run"),
                json!({"dry_run": false}),
            )
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(done["statements"], 1, "{done}");
    let after = pupil_record(&s.prof, lea).await;
    let evidence = after["evidence"].as_array().unwrap();
    assert_eq!(evidence.len(), 1);
    assert_eq!(
        evidence[0]["statement_id"],
        "9c4d1e32-0000-4000-8000-000000000002"
    );
    assert_eq!(after["scores"][0]["evidence_count"], 1);
    assert_eq!(
        after["scores"][0]["mastery_bp"], 7_500,
        "recomputed from the recent result alone"
    );
    assert_eq!(
        statement_ids(&app, &key, None).await,
        ["9c4d1e32-0000-4000-8000-000000000002"]
    );
    assert_journal_replays(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_suggests_and_only_the_teacher_turns_it_into_a_decision() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    let (lea, tom) = (s.ids["lea"], s.ids["tom"]);
    let (evidence, _) = assess_lea(&s).await;
    // The AI principal's handle on the tenant database: it may only suggest.
    let path = app.data_path().join(format!("tenants/{SLUG}/tenant.db"));
    let ai = ceredis::store::ai::AiHandle::open(&path).unwrap();
    let features = ai.features().unwrap();
    assert!(!features.is_empty());
    let lea_key = {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let key = ceredis::store::ai::pseudonym_key(&conn).unwrap();
        ceredis::store::ai::pseudonym(&key, lea)
    };
    let suggestion = ai
        .suggest(&ceredis::store::ai::Suggestion {
            pupil_key: lea_key,
            competency_uri: SKILL.into(),
            level_code: "B1".into(),
            rationale: "réussites régulières en réception".into(),
            source: "onnx:kt-small@1".into(),
        })
        .unwrap();
    let denied = ai.execute(&format!(
        "INSERT INTO level_decisions (pupil_id, competency_id, level_code, decided_by, justification, evidence_ids, journal_seq, at) VALUES ({lea}, 1, 'C2', {}, 'x', '[1]', 1, 1)",
        s.ids["prof"]
    ));
    assert!(ceredis::store::ai::is_denied(&denied.unwrap_err()));
    let record = pupil_record(&s.prof, lea).await;
    assert_eq!(record["suggestions"][0]["level_code"], "B1");
    assert_eq!(
        record["levels"][0]["level_code"], "A2",
        "a suggestion is not a decision"
    );
    let page = s
        .prof
        .get(&format!("/t/{SLUG}/pupils/{lea}?suggestion={suggestion}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!("name=\"suggestion\" value=\"{suggestion}\"")),
        "{page}"
    );
    // Tom's teacher cannot pass Lea's suggestion off as one about Tom.
    let r = s
        .prof
        .post(
            &format!("/t/{SLUG}/api/pupils/{tom}/levels"),
            json!({"competency": SKILL, "level": "B1", "evidence": [evidence[1]],
                   "justification": "x", "suggestion": suggestion}),
        )
        .await;
    assert_eq!(
        error_code(r).await,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "suggestion_mismatch".into()
        )
    );
    let r = s
        .prof
        .post(
            &format!("/t/{SLUG}/api/pupils/{lea}/levels"),
            json!({"competency": SKILL, "level": "B1", "evidence": [evidence[0]],
                   "justification": "Je retiens la suggestion : annonces et lettres comprises.",
                   "suggestion": suggestion}),
        )
        .await;
    json_of(r, StatusCode::CREATED).await;
    let record = pupil_record(&s.prof, lea).await;
    assert_eq!(record["levels"][0]["level_code"], "B1");
    assert_eq!(record["levels"][0]["suggestion_id"], suggestion);
    assert_eq!(record["levels"][0]["decided_by"], s.ids["prof"]);
    // Both decisions go out as CaSS Assertions, naming nobody.
    let assertions: Value = s
        .prof
        .get(&format!("/t/{SLUG}/api/pupils/{lea}/assertions"))
        .await
        .json()
        .await
        .unwrap();
    let levels: Vec<&str> = assertions
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["level"].as_str().unwrap())
        .collect();
    assert_eq!(
        levels,
        [
            "urn:ceredis:cefr:reception:level:A2",
            "urn:ceredis:cefr:reception:level:B1"
        ]
    );
    assert!(
        assertions
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["@type"] == "Assertion"
                && a["competency"] == SKILL
                && a["framework"] == "urn:ceredis:framework:cefr-languages")
    );
    let text = assertions.to_string();
    for name in ["lea", "Prénom", "prof"] {
        assert!(!text.contains(&format!("\"{name}\"")), "{name} in {text}");
    }
    let r = s
        .autre
        .get(&format!("/t/{SLUG}/api/pupils/{lea}/assertions"))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Assertions come back in as decisions only when their agent teaches their subject here.
    let url = format!("/t/{SLUG}/api/assertions");
    let import = |doc: Value| s.admin.post(&url, doc);
    let again = json_of(import(assertions.clone()).await, StatusCode::OK).await;
    assert_eq!(
        (
            again["imported"].as_array().unwrap().len(),
            again["skipped"].as_i64()
        ),
        (0, Some(2)),
        "{again}"
    );
    let mut later = assertions[1].clone();
    later["level"] = json!("urn:ceredis:cefr:reception:level:B2");
    later["assertionDate"] = json!(later["assertionDate"].as_i64().unwrap() + 60_000);
    let mut by_other = later.clone();
    by_other["agent"] = agent_of(&s.autre).await["account"]["name"].clone();
    let mut stranger = later.clone();
    stranger["subject"] = json!("0123456789abcdef0123456789abcdef");
    let mut sealed = later.clone();
    sealed["subject"] = json!({"@type": "EncryptedValue", "payload": "…"});
    let report = json_of(
        import(json!([later, by_other, stranger, sealed])).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(report["imported"].as_array().unwrap().len(), 1, "{report}");
    let reasons: Vec<&str> = report["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 3, "{report}");
    assert!(
        reasons[0].contains("only a teacher of this pupil"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("not a pupil"), "{reasons:?}");
    assert!(reasons[2].contains("encrypted"), "{reasons:?}");
    let record = pupil_record(&s.prof, lea).await;
    assert_eq!(record["levels"][0]["level_code"], "B2");
    assert_eq!(
        record["levels"][0]["decided_by"], s.ids["prof"],
        "the teacher decided, the admin imported"
    );
    let r = s
        .prof
        .post(&format!("/t/{SLUG}/api/assertions"), assertions)
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_shows_a_teacher_the_pupils_or_classes_of_another_teacher() {
    let mut app = Appliance::init();
    app.start();
    let s = school(&app).await;
    let (evidence, _) = assess_lea(&s).await;
    let lea = s.ids["lea"];
    // Every route a teacher may call that names a class, a pupil or a piece of evidence,
    // generated from the route table, called by the teacher of the other class.
    let mut checked = 0;
    for spec in route_specs() {
        let Access::Members(roles) = spec.access else {
            continue;
        };
        let names = ["{class}", "{pupil}", "{evidence}"];
        if !roles.contains(&Role::Teacher) || !names.iter().any(|n| spec.path.contains(n)) {
            continue;
        }
        let path = spec
            .path
            .replace("{tenant}", SLUG)
            .replace("{class}", &s.class_a.to_string())
            .replace("{pupil}", &lea.to_string())
            .replace("{evidence}", &evidence[0].to_string());
        // A body each route accepts, so that only the access check can refuse it.
        let body = if path.ends_with("/observations") {
            json!({"competency": DESCRIPTOR, "observations": [{"pupil": lea, "level": 1}]})
        } else if path.ends_with("/correction") {
            json!({"level": 1})
        } else if path.ends_with("/levels") {
            json!({"competency": SKILL, "level": "C2", "evidence": [evidence[0]],
                   "justification": "x"})
        } else {
            json!({})
        };
        let mut req = s
            .autre
            .client
            .request(spec.method.clone(), app.url(&path))
            .header("x-csrf-token", &s.autre.csrf);
        if spec.method != Method::GET && path.contains("/api/") {
            req = req.json(&body);
        } else if spec.method != Method::GET {
            let level = format!("level-{lea}");
            req = req.form(&[
                ("competency", SKILL),
                ("level", "C2"),
                ("justification", "x"),
                ("evidence", &evidence[0].to_string()),
                (level.as_str(), "1"),
            ]);
        }
        let r = req.send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(
            status == StatusCode::NOT_FOUND,
            "{} {path} → {status}: {text}",
            spec.method
        );
        for leak in ["lea", "Comprend l'annonce", "4e A"] {
            assert!(
                !text.contains(leak),
                "{} {path} shows `{leak}`",
                spec.method
            );
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} routes checked");
    // Nothing the attempts sent was recorded.
    let record = pupil_record(&s.prof, lea).await;
    assert_eq!(record["evidence"].as_array().unwrap().len(), 2);
}
