//! The tenant LRS over real HTTPS: the MUST rules of xAPI 1.0.3 and 2.0.0 that the ADL
//! conformance suite checks (so that CI guards conformance without the suite), tenant
//! isolation over every resource, scopes, and durability under SIGKILL during ingest.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

/// A client of one tenant's LRS with one credential.
#[derive(Clone)]
struct Lrs {
    client: Client,
    base: String,
    key: String,
    secret: String,
    version: &'static str,
}

fn tenant(app: &Appliance, slug: &str) {
    let out = app.cli(&["tenant", "create", slug]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lrs {
    fn new(app: &Appliance, slug: &str, scopes: &[&str]) -> Lrs {
        let (key, secret) = app.credential(slug, scopes);
        Lrs {
            client: app.client(),
            base: app.url(&format!("/t/{slug}/xapi")),
            key,
            secret,
            version: "2.0.0",
        }
    }

    fn v1(&self) -> Lrs {
        Lrs {
            version: "1.0.3",
            ..self.clone()
        }
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.key, Some(&self.secret))
            .header("X-Experience-API-Version", self.version)
    }

    async fn post(&self, body: &Value) -> Response {
        self.req(Method::POST, "/statements")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.unwrap()
    }

    async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.unwrap()
    }

    async fn store(&self, body: &Value) -> Vec<String> {
        let r = self.post(body).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{text}");
        serde_json::from_str(&text).unwrap()
    }
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn statement(who: &str, verb: &str, activity: &str) -> Value {
    json!({
        "actor": {"objectType": "Agent", "name": who, "mbox": format!("mailto:{who}@ecole.example")},
        "verb": {"id": format!("http://adlnet.gov/expapi/verbs/{verb}"), "display": {"fr-FR": verb, "en-US": verb}},
        "object": {"id": format!("http://ecole.example/activites/{activity}"),
                   "definition": {"name": {"fr-FR": "Écoute", "en-US": "Listening"}}}
    })
}

fn pupil_filter(who: &str) -> String {
    let agent = json!({"mbox": format!("mailto:{who}@ecole.example")}).to_string();
    format!("agent={}", urlencode(&agent))
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("x", s)]).unwrap()[2..].to_string()
}

async fn error_message(r: Response) -> (StatusCode, String) {
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// The ids of every statement the credential may read, following `more` links.
async fn all_ids(lrs: &Lrs) -> Vec<String> {
    ids_matching(lrs, "limit=500").await
}

/// The ids of the statements a query returns, following `more` links.
async fn ids_matching(lrs: &Lrs, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut next = format!("/statements?{query}");
    loop {
        let page = lrs.get_json(&next).await;
        for s in page["statements"].as_array().unwrap() {
            ids.push(s["id"].as_str().unwrap().to_string());
        }
        match page["more"].as_str() {
            Some(m) if !m.is_empty() => next = m[m.find("/statements").unwrap()..].to_string(),
            _ => return ids,
        }
    }
}

async fn count(lrs: &Lrs) -> usize {
    all_ids(lrs).await.len()
}

/// A started appliance with these tenants.
fn appliance_with(slugs: &[&str]) -> Appliance {
    let mut app = Appliance::init();
    app.start();
    for slug in slugs {
        tenant(&app, slug);
    }
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_follow_the_spec() {
    let app = appliance_with(&["ecole"]);
    let lrs = Lrs::new(&app, "ecole", &["all"]);

    // Stored, with the LRS's properties and headers.
    let ids = lrs.store(&statement("lea", "answered", "quiz-1")).await;
    assert_eq!(ids.len(), 1);
    let r = lrs
        .get(&format!("/statements?statementId={}", ids[0]))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h["x-experience-api-version"], "2.0.0");
    assert!(h.contains_key("x-experience-api-consistent-through"));
    assert!(h.contains_key("last-modified"));
    let s: Value = r.json().await.unwrap();
    assert_eq!(s["id"], ids[0].as_str());
    assert_eq!(s["version"], "2.0.0");
    assert_eq!(
        s["timestamp"], s["stored"],
        "a missing timestamp is the stored time"
    );
    assert!(s["stored"].as_str().unwrap().ends_with('Z'));
    assert!(s["authority"]["account"]["name"].is_string());

    // Bad statements: 400 naming the property, nothing stored.
    let before = count(&lrs).await;
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"verb": {"id": "http://v"}, "object": {"id": "http://o"}}),
            "statement.actor",
        ),
        (
            {
                let mut s = statement("lea", "answered", "quiz-1");
                s["actor"]["mbox"] = json!("lea@ecole.example");
                s
            },
            "statement.actor.mbox",
        ),
        (
            {
                let mut s = statement("lea", "answered", "quiz-1");
                s["result"] = json!({"score": {"scaled": 2}});
                s
            },
            "statement.result.score.scaled",
        ),
        (
            {
                let mut s = statement("lea", "answered", "quiz-1");
                s["Verb"] = json!({});
                s
            },
            "statement.Verb",
        ),
        (
            {
                let mut s = statement("lea", "answered", "quiz-1");
                s["timestamp"] = json!("2026-01-01T10:00:00-00:00");
                s
            },
            "statement.timestamp",
        ),
        (
            json!([statement("lea", "answered", "quiz-1"),
                   {"actor": {"mbox": "mailto:a@b.c"}, "verb": {"id": "not an iri"}, "object": {"id": "http://o"}}]),
            "statement[1].verb.id",
        ),
    ];
    for (body, path) in bad {
        let (status, message) = error_message(lrs.post(&body).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(message.starts_with(path), "{message:?} should name {path}");
    }
    assert_eq!(count(&lrs).await, before, "a refused batch stores nothing");

    // A batch that reuses an id is refused.
    let dup = uuid();
    let mut a = statement("lea", "answered", "quiz-1");
    a["id"] = json!(dup);
    let (status, _) = error_message(lrs.post(&json!([a.clone(), a.clone()])).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Immutability: same id and content changes nothing; other content is a conflict.
    let id = uuid();
    let put = |body: Value| {
        let lrs = lrs.clone();
        let id = id.clone();
        async move {
            lrs.req(Method::PUT, &format!("/statements?statementId={id}"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let original = statement("lea", "completed", "quiz-1");
    assert_eq!(put(original.clone()).await, StatusCode::NO_CONTENT);
    assert_eq!(put(original.clone()).await, StatusCode::NO_CONTENT);
    let mut posted = original.clone();
    posted["id"] = json!(id);
    assert_eq!(lrs.store(&posted).await, vec![id.clone()]);
    assert_eq!(
        put(statement("lea", "failed", "quiz-1")).await,
        StatusCode::CONFLICT
    );
    let kept = lrs.get_json(&format!("/statements?statementId={id}")).await;
    assert_eq!(
        kept["verb"]["id"],
        "http://adlnet.gov/expapi/verbs/completed"
    );
    // A batch is all or nothing: a conflict, or voiding a voiding statement, anywhere in it
    // stores none of it.
    let before = count(&lrs).await;
    let mut other = statement("lea", "failed", "quiz-1");
    other["id"] = json!(id);
    let fresh = statement("tom", "completed", "quiz-9");
    let r = lrs.post(&json!([fresh.clone(), other])).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let (voiding, voids_voiding) = (uuid(), uuid());
    let r = lrs
        .post(&json!([fresh.clone(),
            {"id": voiding, "actor": {"mbox": "mailto:prof@ecole.example"},
             "verb": {"id": "http://adlnet.gov/expapi/verbs/voided"},
             "object": {"objectType": "StatementRef", "id": id}},
            {"id": voids_voiding, "actor": {"mbox": "mailto:prof@ecole.example"},
             "verb": {"id": "http://adlnet.gov/expapi/verbs/voided"},
             "object": {"objectType": "StatementRef", "id": voiding}}]))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        count(&lrs).await,
        before,
        "nothing of either batch was stored"
    );
    let r = lrs
        .req(Method::GET, &format!("/statements?statementId={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the refused voiding did not void it"
    );
    let r = lrs
        .req(Method::PUT, "/statements")
        .json(&original)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "PUT needs statementId");

    // Unknown and wrong-case parameters, bad values.
    for q in [
        "foo=bar",
        "Limit=1",
        "statementId=wrong",
        "limit=-1",
        "since=yesterday",
        "verb=answered",
        &format!("statementId={id}&verb=http://v"),
    ] {
        assert_eq!(
            lrs.get(&format!("/statements?{q}")).await.status(),
            StatusCode::BAD_REQUEST,
            "{q}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voiding_filters_paging_and_formats() {
    let app = appliance_with(&["ecole"]);
    let lrs = Lrs::new(&app, "ecole", &["all"]);
    let verb = "http://ecole.example/verbes/ecouter";

    // V (verb X) is voided by D; R (verb X) refers to V.
    let mut v = statement("lea", "answered", "quiz-2");
    v["verb"] = json!({"id": verb});
    let v_id = lrs.store(&v).await.remove(0);
    let d_id = lrs
        .store(&json!({"actor": {"mbox": "mailto:prof@ecole.example"},
            "verb": {"id": "http://adlnet.gov/expapi/verbs/voided"},
            "object": {"objectType": "StatementRef", "id": v_id}}))
        .await
        .remove(0);
    let r_id = lrs
        .store(
            &json!({"actor": {"mbox": "mailto:prof@ecole.example"}, "verb": {"id": verb},
            "object": {"objectType": "StatementRef", "id": v_id}}),
        )
        .await
        .remove(0);
    assert_eq!(
        lrs.get(&format!("/statements?statementId={v_id}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    let voided = lrs
        .get_json(&format!("/statements?voidedStatementId={v_id}"))
        .await;
    assert_eq!(voided["id"], v_id.as_str());
    let by_verb = lrs.get_json(&format!("/statements?verb={verb}")).await;
    let got: Vec<&str> = by_verb["statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        vec![r_id.as_str(), d_id.as_str()],
        "referrers match, the voided one does not"
    );
    let (status, message) = error_message(
        lrs.post(&json!({"actor": {"mbox": "mailto:prof@ecole.example"},
            "verb": {"id": "http://adlnet.gov/expapi/verbs/voided"},
            "object": {"id": "http://ecole.example/activites/quiz-2"}}))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("StatementRef"), "{message}");
    // Voiding a statement that does not exist yet is accepted, and the statement is voided
    // when it arrives.
    let late = uuid();
    lrs.store(&json!({"actor": {"mbox": "mailto:prof@ecole.example"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/voided"},
        "object": {"objectType": "StatementRef", "id": late}}))
        .await;
    let mut arrives = statement("lea", "answered", "quiz-late");
    arrives["id"] = json!(late);
    lrs.store(&arrives).await;
    assert_eq!(
        lrs.get(&format!("/statements?statementId={late}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        lrs.get(&format!("/statements?voidedStatementId={late}"))
            .await
            .status(),
        StatusCode::OK
    );

    // `more` paging over one registration, newest first, then oldest first.
    let registration = uuid();
    let mut batch = Vec::new();
    for i in 0..7 {
        let mut s = statement("tom", "answered", &format!("q{i}"));
        s["context"] = json!({"registration": registration});
        batch.push(s);
    }
    let posted = lrs.store(&Value::Array(batch)).await;
    for ascending in [false, true] {
        let mut seen = Vec::new();
        let mut next =
            format!("/statements?registration={registration}&limit=3&ascending={ascending}");
        let mut pages = 0;
        loop {
            let page = lrs.get_json(&next).await;
            pages += 1;
            for s in page["statements"].as_array().unwrap() {
                seen.push(s["id"].as_str().unwrap().to_string());
            }
            let more = page["more"].as_str().unwrap();
            if more.is_empty() {
                break;
            }
            assert!(more.starts_with("/t/ecole/xapi/statements"), "{more}");
            next = more["/t/ecole/xapi".len()..].to_string();
        }
        assert_eq!(pages, 3);
        let mut expected = posted.clone();
        if !ascending {
            expected.reverse();
        }
        assert_eq!(seen, expected, "ascending={ascending}");
    }
    // A forged more token cannot carry another tenant's or another filter's data beyond
    // what the caller may read: garbage is refused.
    assert_eq!(
        lrs.get("/statements/more/garbage").await.status(),
        StatusCode::BAD_REQUEST
    );

    // Formats.
    let mut rich = statement("zoe", "answered", "quiz-3");
    rich["context"] = json!({"contextActivities": {"category": {"id": "http://ecole.example/cat",
        "definition": {"name": {"en-US": "Category", "en-GB": "Category (GB)"}}}}});
    let id = lrs.store(&rich).await.remove(0);
    let exact = lrs.get_json(&format!("/statements?statementId={id}")).await;
    assert!(
        exact["context"]["contextActivities"]["category"].is_array(),
        "always arrays"
    );
    assert_eq!(exact["actor"], rich["actor"]);
    let ids = lrs
        .get_json(&format!("/statements?statementId={id}&format=ids"))
        .await;
    assert_eq!(
        ids["actor"],
        json!({"objectType": "Agent", "mbox": "mailto:zoe@ecole.example"})
    );
    assert_eq!(
        ids["object"],
        json!({"id": "http://ecole.example/activites/quiz-3"})
    );
    assert_eq!(
        ids["verb"],
        json!({"id": "http://adlnet.gov/expapi/verbs/answered"})
    );
    let canonical: Value = lrs
        .req(
            Method::GET,
            &format!("/statements?statementId={id}&format=canonical"),
        )
        .header("Accept-Language", "en-GB")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        canonical["context"]["contextActivities"]["category"][0]["definition"]["name"],
        json!({"en-GB": "Category (GB)"})
    );
    assert_eq!(canonical["verb"]["display"].as_object().unwrap().len(), 1);

    // Filters: agent, activity, related, since/until.
    let mine = lrs
        .get_json(&format!("/statements?{}", pupil_filter("zoe")))
        .await;
    assert_eq!(mine["statements"].as_array().unwrap().len(), 1);
    let related = lrs
        .get_json("/statements?activity=http://ecole.example/cat&related_activities=true")
        .await;
    assert_eq!(related["statements"][0]["id"], id.as_str());
    let direct = lrs
        .get_json("/statements?activity=http://ecole.example/cat")
        .await;
    assert!(direct["statements"].as_array().unwrap().is_empty());
    let stored = exact["stored"].as_str().unwrap().to_string();
    let since = lrs.get_json(&format!("/statements?since={stored}")).await;
    assert!(
        since["statements"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["id"] != id.as_str()),
        "since is exclusive"
    );
    let until = lrs
        .get_json(&format!("/statements?until={stored}&limit=1"))
        .await;
    assert_eq!(
        until["statements"][0]["id"],
        id.as_str(),
        "until is inclusive"
    );

    // Activities keep the merged definition; Agents answer a Person.
    let activity = lrs
        .get_json("/activities?activityId=http://ecole.example/cat")
        .await;
    assert_eq!(activity["definition"]["name"]["en-GB"], "Category (GB)");
    let person = lrs
        .get_json(&format!(
            "/agents?agent={}",
            urlencode(&json!({"mbox": "mailto:zoe@ecole.example", "name": "Zoé"}).to_string())
        ))
        .await;
    assert_eq!(
        person,
        json!({"objectType": "Person", "name": ["Zoé"], "mbox": ["mailto:zoe@ecole.example"]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_headers_and_the_alternate_syntax() {
    let app = appliance_with(&["ecole"]);
    let lrs = Lrs::new(&app, "ecole", &["all"]);
    let plain = app.client();

    // About: public, no version needed.
    let about: Value = plain
        .get(app.url("/t/ecole/xapi/about"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        about["version"],
        json!(["1.0.0", "1.0.1", "1.0.2", "1.0.3", "2.0.0"])
    );

    // Missing or unknown versions are refused, and the answer still names a version.
    let r = plain
        .get(app.url("/t/ecole/xapi/statements"))
        .basic_auth(&lrs.key, Some(&lrs.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["x-experience-api-version"], "2.0.0");
    for (sent, status, answered) in [
        ("1.0.2", StatusCode::OK, "1.0.3"),
        ("1.0", StatusCode::OK, "1.0.3"),
        ("2.0.0", StatusCode::OK, "2.0.0"),
        ("0.95", StatusCode::BAD_REQUEST, "2.0.0"),
        ("1.1.0", StatusCode::BAD_REQUEST, "2.0.0"),
    ] {
        let r = plain
            .get(app.url("/t/ecole/xapi/statements?limit=1"))
            .basic_auth(&lrs.key, Some(&lrs.secret))
            .header("X-Experience-API-Version", sent)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{sent}");
        assert_eq!(r.headers()["x-experience-api-version"], answered, "{sent}");
    }

    // Wrong credentials: 401 without a browser prompt.
    let r = plain
        .get(app.url("/t/ecole/xapi/statements"))
        .basic_auth(&lrs.key, Some("wrong"))
        .header("X-Experience-API-Version", "2.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(!r.headers().contains_key("www-authenticate"));

    // 1.0.3's alternate request syntax: PUT as a form POST, credentials in the form.
    let id = uuid();
    let form = [
        ("statementId", id.clone()),
        ("content", statement("lea", "answered", "alt").to_string()),
        ("X-Experience-API-Version", "1.0.3".to_string()),
        (
            "Authorization",
            format!("Basic {}", base64_pair(&lrs.key, &lrs.secret)),
        ),
    ];
    let r = plain
        .post(app.url("/t/ecole/xapi/statements?method=PUT"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NO_CONTENT,
        "{}",
        r.text().await.unwrap()
    );
    let s = lrs.get_json(&format!("/statements?statementId={id}")).await;
    assert_eq!(s["version"], "1.0.0");
    // Extra query parameters, and 2.0 (which dropped the syntax), are refused.
    let r = plain
        .post(app.url(&format!(
            "/t/ecole/xapi/statements?method=PUT&statementId={id}"
        )))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let mut v2 = form.clone();
    v2[2].1 = "2.0.0".into();
    v2[0].1 = uuid();
    let r = plain
        .post(app.url("/t/ecole/xapi/statements?method=PUT"))
        .form(&v2)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // CORS for browser content: preflight, and the origin echoed without credentials.
    let r = plain
        .request(Method::OPTIONS, app.url("/t/ecole/xapi/statements"))
        .header("Origin", "https://contenu.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type,x-experience-api-version",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://contenu.example"
    );
    assert!(!r.headers().contains_key("access-control-allow-credentials"));
}

fn base64_pair(key: &str, secret: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn multipart_body(statement: &Value, parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "ceredisTestBoundary42";
    let mut body =
        format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n{statement}").into_bytes();
    for (sha, content) in parts {
        body.extend(format!("\r\n--{boundary}\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: binary\r\nX-Experience-API-Hash: {sha}\r\n\r\n").as_bytes());
        body.extend(*content);
    }
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/mixed; boundary={boundary}"), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_are_content_addressed_and_returned_in_multipart() {
    let app = appliance_with(&["ecole"]);
    let lrs = Lrs::new(&app, "ecole", &["all"]);
    let content = "Mon enregistrement : «bonjour»".as_bytes();
    let sha = sha256_hex(content);
    let with_attachment = |s: &mut Value| {
        s["attachments"] = json!([{"usageType": "http://adlnet.gov/expapi/attachments/audio",
            "display": {"fr-FR": "Enregistrement"}, "contentType": "text/plain",
            "length": content.len(), "sha2": sha}]);
    };
    let mut first = statement("lea", "recorded", "oral-1");
    with_attachment(&mut first);
    let mut second = statement("tom", "recorded", "oral-1");
    with_attachment(&mut second);

    // Declared without fileUrl but not sent: refused.
    let (status, message) = error_message(lrs.post(&first).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message.contains("content was not sent"), "{message}");
    // A part whose bytes do not hash to its header: refused.
    let (ct, body) = multipart_body(&first, &[(&sha, b"tampered")]);
    let r = lrs
        .req(Method::POST, "/statements")
        .header("Content-Type", ct)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let mut ids = Vec::new();
    for s in [&first, &second] {
        let (ct, body) = multipart_body(s, &[(&sha, content)]);
        let r = lrs
            .req(Method::POST, "/statements")
            .header("Content-Type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        ids.push(r.json::<Vec<String>>().await.unwrap().remove(0));
    }
    let r = lrs
        .get(&format!(
            "/statements?statementId={}&attachments=true",
            ids[0]
        ))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("multipart/mixed; boundary="), "{ct}");
    let body = r.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("Mon enregistrement : «bonjour»"),
        "raw bytes, not base64"
    );
    assert_eq!(
        text.matches(&sha).count(),
        2,
        "once in the statement, once in the part header"
    );

    // Stored once for both statements.
    let db = rusqlite::Connection::open_with_flags(
        app.data.join("tenants/ecole/tenant.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let (blobs, links): (i64, i64) = db
        .query_row(
            "SELECT (SELECT count(*) FROM xapi_attachments), (SELECT count(*) FROM xapi_statement_attachments)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((blobs, links), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_honour_etags_and_merge() {
    let app = appliance_with(&["ecole"]);
    let lrs = Lrs::new(&app, "ecole", &["all"]);
    let agent = urlencode(&json!({"mbox": "mailto:lea@ecole.example"}).to_string());
    let state = format!(
        "/activities/state?activityId=http://ecole.example/quiz&agent={agent}&stateId=progress"
    );
    let send = |method: Method, path: String, body: Value, headers: Vec<(&'static str, String)>| {
        let lrs = lrs.clone();
        async move {
            let mut r = lrs.req(method, &path).json(&body);
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.send().await.unwrap()
        }
    };

    assert_eq!(
        send(Method::PUT, state.clone(), json!({"page": 1}), vec![])
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let r = lrs.get(&state).await;
    assert_eq!(r.status(), StatusCode::OK);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.len() == 42,
        "quoted SHA-1: {etag}"
    );
    assert!(r.headers().contains_key("last-modified"));
    // 2.0: replacing an existing document needs a precondition.
    let r = send(Method::PUT, state.clone(), json!({"page": 9}), vec![]).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = send(
        Method::PUT,
        state.clone(),
        json!({"page": 9}),
        vec![("If-Match", "\"0000\"".into())],
    )
    .await;
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let r = send(
        Method::PUT,
        state.clone(),
        json!({"page": 9}),
        vec![("If-None-Match", "*".into())],
    )
    .await;
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        lrs.get_json(&state).await,
        json!({"page": 1}),
        "unchanged by refused writes"
    );
    let r = send(
        Method::PUT,
        state.clone(),
        json!({"page": 2}),
        vec![("If-Match", etag.clone())],
    )
    .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // POST merges JSON objects (top level).
    let r = send(Method::POST, state.clone(), json!({"score": 3}), vec![]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(lrs.get_json(&state).await, json!({"page": 2, "score": 3}));
    let r = lrs
        .req(Method::POST, &state)
        .header("Content-Type", "text/plain")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(lrs.get_json(&state).await, json!({"page": 2, "score": 3}));

    // Listing and deleting.
    let list = format!("/activities/state?activityId=http://ecole.example/quiz&agent={agent}");
    assert_eq!(lrs.get_json(&list).await, json!(["progress"]));
    let r = lrs.req(Method::DELETE, &list).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(lrs.get_json(&list).await, json!([]));

    // 1.0.3 profiles: a PUT without a precondition is refused even for a new document.
    let profile =
        "/activities/profile?activityId=http://ecole.example/quiz&profileId=settings".to_string();
    let r = lrs
        .v1()
        .req(Method::PUT, &profile)
        .json(&json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = lrs
        .v1()
        .req(Method::PUT, &profile)
        .header("If-None-Match", "*")
        .json(&json!({"a": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = lrs
        .v1()
        .req(Method::PUT, &profile)
        .json(&json!({"a": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // Agent profiles, and parameters checked.
    let agent_profile = format!("/agents/profile?agent={agent}&profileId=prefs");
    let r = lrs
        .req(Method::PUT, &agent_profile)
        .header("Content-Type", "application/octet-stream")
        .body(vec![0u8, 1, 2])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = lrs.get(&agent_profile).await;
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(&r.bytes().await.unwrap()[..], &[0u8, 1, 2]);
    for bad in [
        "/activities/state?agent=true&activityId=http://a&stateId=x".to_string(),
        format!("/activities/state?activityId=http://a&agent={agent}&stateId=x&registration=nope"),
        "/activities/profile?profileId=x".to_string(),
        format!("/agents/profile?agent={agent}&profileId=x&extra=1"),
    ] {
        assert_eq!(
            lrs.get(&bad).await.status(),
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_limit_what_a_credential_does() {
    let app = appliance_with(&["ecole"]);
    let writer = Lrs::new(&app, "ecole", &["statements/write"]);
    let mine = Lrs::new(&app, "ecole", &["statements/write", "statements/read/mine"]);
    let reader = Lrs::new(&app, "ecole", &["all/read"]);
    let theirs = writer
        .store(&statement("lea", "answered", "q"))
        .await
        .remove(0);
    let own = mine
        .store(&statement("tom", "answered", "q"))
        .await
        .remove(0);
    assert_eq!(
        writer.get("/statements").await.status(),
        StatusCode::FORBIDDEN
    );
    let visible = mine.get_json("/statements").await;
    let ids: Vec<&str> = visible["statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![own.as_str()],
        "read/mine sees only what it stored"
    );
    assert_eq!(
        mine.get(&format!("/statements?statementId={theirs}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(count(&reader).await, 2);
    // Voided, another credential's statement stays out of reach too.
    writer
        .store(&json!({"actor": {"mbox": "mailto:prof@ecole.example"},
            "verb": {"id": "http://adlnet.gov/expapi/verbs/voided"},
            "object": {"objectType": "StatementRef", "id": theirs}}))
        .await;
    assert_eq!(
        mine.get(&format!("/statements?voidedStatementId={theirs}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        reader.post(&statement("x", "answered", "q")).await.status(),
        StatusCode::FORBIDDEN
    );
    let r = reader
        .req(
            Method::PUT,
            "/activities/profile?activityId=http://a&profileId=p",
        )
        .header("If-None-Match", "*")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// Every resource, written in tenant A, is invisible from tenant B, and A's credentials do
/// not open B's endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_lrs_never_reaches_another() {
    let app = appliance_with(&["alpha", "beta"]);
    let a = Lrs::new(&app, "alpha", &["all"]);
    let b = Lrs::new(&app, "beta", &["all"]);
    let agent = urlencode(&json!({"mbox": "mailto:lea@ecole.example"}).to_string());
    let id = uuid();
    let mut s = statement("lea", "answered", "secret-quiz");
    s["id"] = json!(id);
    a.store(&s).await;
    let docs = [
        format!("/activities/state?activityId=http://ecole.example/quiz&agent={agent}&stateId=s"),
        "/activities/profile?activityId=http://ecole.example/quiz&profileId=p".to_string(),
        format!("/agents/profile?agent={agent}&profileId=p"),
    ];
    for d in &docs {
        let r = a
            .req(Method::PUT, d)
            .header("If-None-Match", "*")
            .json(&json!({"secret": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{d}");
    }

    // A's credentials on B's endpoint: refused on every resource and method.
    let crossed = Lrs {
        base: b.base.clone(),
        ..a.clone()
    };
    let mut paths: Vec<String> = docs.to_vec();
    paths.extend([
        "/statements".to_string(),
        format!("/statements?statementId={id}"),
        "/activities?activityId=http://ecole.example/activites/secret-quiz".to_string(),
        format!("/agents?agent={agent}"),
        format!("/statements/more/{}", "x"),
    ]);
    let mut checked = 0;
    for p in &paths {
        for m in [Method::GET, Method::PUT, Method::POST, Method::DELETE] {
            let r = crossed.req(m.clone(), p).json(&s).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{m} {p}");
            checked += 1;
        }
    }
    assert!(checked >= 32);

    // B's own view shows nothing of A, and B may reuse the same statement id.
    assert_eq!(
        b.get(&format!("/statements?statementId={id}"))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(count(&b).await, 0);
    for d in &docs {
        assert_eq!(b.get(d).await.status(), StatusCode::NOT_FOUND, "{d}");
    }
    let activity = b
        .get_json("/activities?activityId=http://ecole.example/activites/secret-quiz")
        .await;
    assert!(
        activity.get("definition").is_none(),
        "A's definition leaked: {activity}"
    );
    let mut other = statement("tom", "failed", "other");
    other["id"] = json!(id);
    assert_eq!(b.store(&other).await, vec![id.clone()]);
    assert_eq!(
        a.get_json(&format!("/statements?statementId={id}")).await["verb"]["id"],
        "http://adlnet.gov/expapi/verbs/answered"
    );
}

/// SIGKILL while 10 000 statements are being ingested in batches of 100 by 4 clients;
/// after restart every acknowledged statement is there exactly once. Repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_statements_survive_sigkill_during_ingest() {
    let rounds: usize = std::env::var("KILL_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .map_or(3, |r: usize| r.clamp(3, 1000));
    let mut app = appliance_with(&["ecole"]);
    let mut lrs = Lrs::new(&app, "ecole", &["all"]);
    let mut acknowledged: HashSet<String> = HashSet::new();
    for round in 0..rounds {
        let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let mut clients = Vec::new();
        for c in 0..4 {
            let (lrs, acked) = (lrs.clone(), acked.clone());
            clients.push(tokio::spawn(async move {
                for b in 0..25 {
                    let batch: Vec<Value> = (0..100)
                        .map(|i| {
                            let mut s = statement(
                                &format!("p{c}"),
                                "answered",
                                &format!("r{round}-b{b}-{i}"),
                            );
                            s["id"] = json!(uuid());
                            s
                        })
                        .collect();
                    match lrs
                        .req(Method::POST, "/statements")
                        .json(&batch)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == StatusCode::OK => {
                            let ids: Vec<String> = match r.json().await {
                                Ok(ids) => ids,
                                Err(_) => return,
                            };
                            acked.lock().unwrap().extend(ids);
                        }
                        _ => return, // killed under us: never acknowledged
                    }
                }
            }));
        }
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            if acked.lock().unwrap().len() >= 2000 + (round % 5) * 700 {
                break;
            }
        }
        app.kill();
        for c in clients {
            let _ = c.await;
        }
        acknowledged.extend(acked.lock().unwrap().drain(..));
        app.start();
        lrs.base = app.url("/t/ecole/xapi");
        lrs.client = app.client();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for id in all_ids(&lrs).await {
            *seen.entry(id).or_default() += 1;
        }
        let missing = acknowledged
            .iter()
            .filter(|id| !seen.contains_key(*id))
            .count();
        let duplicated = seen.values().filter(|n| **n > 1).count();
        assert_eq!(missing, 0, "round {round}: acknowledged statements lost");
        assert_eq!(duplicated, 0, "round {round}: statements returned twice");
        eprintln!(
            "round {round}: {} acknowledged so far, {} stored, 0 lost, 0 duplicated",
            acknowledged.len(),
            seen.len()
        );
    }
}

/// A class with its teacher and pupils, created by the tenant admin; returns the class id.
async fn class_with(admin: &Session, slug: &str, title: &str, members: &[(i64, &str)]) -> i64 {
    let r = admin
        .post(&format!("/t/{slug}/api/classes"), json!({"title": title}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let class: Value = r.json().await.unwrap();
    let id = class["id"].as_i64().unwrap();
    for (user, role) in members {
        let r = admin
            .post(
                &format!("/t/{slug}/api/classes/{id}/enrolments"),
                json!({"user_id": user, "role": role}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    id
}

/// The statements a signed-in member reads through the xAPI endpoint with their session.
async fn session_statements(s: &Session, query: &str) -> (StatusCode, Vec<Value>) {
    let r = s
        .client
        .get(format!("{}/t/ecole/xapi/statements{query}", s.base))
        .header("X-Experience-API-Version", "2.0.0")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let list = body["statements"].as_array().cloned().unwrap_or_default();
    (status, list)
}

async fn page(s: &Session, path: &str) -> (StatusCode, String) {
    let r = s
        .client
        .get(format!("{}{path}", s.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

fn actor_names(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|s| {
            s["actor"]["account"]["name"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_read_only_the_statements_about_their_pupils_and_themselves() {
    let mut app = Appliance::init();
    app.start();
    let op = operator(&app).await;
    let admin = tenant_with_admin(&app, &op, "ecole").await;
    let (prof_id, prof_otp) = add_user(&admin, "ecole", "prof", "teacher").await;
    let (lea_id, lea_otp) = add_user(&admin, "ecole", "lea", "student").await;
    let (tom_id, tom_otp) = add_user(&admin, "ecole", "tom", "student").await;
    let (_, res_otp) = add_user(&admin, "ecole", "chercheuse", "researcher").await;
    class_with(
        &admin,
        "ecole",
        "6A",
        &[(prof_id, "teacher"), (lea_id, "student")],
    )
    .await;
    class_with(&admin, "ecole", "6B", &[(tom_id, "student")]).await;
    let prof = activate(&app, "ecole", "prof", &prof_otp).await;
    let lea = activate(&app, "ecole", "lea", &lea_otp).await;
    let tom = activate(&app, "ecole", "tom", &tom_otp).await;
    let researcher = activate(&app, "ecole", "chercheuse", &res_otp).await;

    // Each user has an opaque xAPI account on the tenant's home page: not the username.
    let agent = |s: &Session| {
        let s = s.clone();
        async move {
            let me: Value = s.get("/t/ecole/api/me").await.json().await.unwrap();
            me["xapi_agent"].clone()
        }
    };
    let (lea_agent, tom_agent, prof_agent) =
        (agent(&lea).await, agent(&tom).await, agent(&prof).await);
    let home = lea_agent["account"]["homePage"].as_str().unwrap();
    assert!(
        home.starts_with("https://") && home.ends_with("/t/ecole/"),
        "{home}"
    );
    let lea_name = lea_agent["account"]["name"].as_str().unwrap().to_string();
    assert!(
        lea_name.len() >= 32 && !lea_name.contains("lea"),
        "{lea_name}"
    );
    assert_ne!(lea_agent, tom_agent);

    // Content records statements as the pupils; the teacher observes Léa.
    let lrs = Lrs::new(&app, "ecole", &["all"]);
    let scored = |actor: &Value, verb: &str, scaled: f64| {
        let mut s = statement("x", verb, "quiz");
        s["actor"] = actor.clone();
        s["result"] = json!({"score": {"scaled": scaled, "raw": scaled * 10.0, "min": 0, "max": 10},
                             "success": scaled >= 0.5, "completion": true});
        s
    };
    let mut observed = statement("x", "experienced", "oral");
    observed["actor"] = prof_agent.clone();
    observed["object"] = lea_agent.clone();
    let someone_else = statement("anne", "completed", "quiz");
    for s in [
        scored(&lea_agent, "completed", 0.87),
        scored(&tom_agent, "completed", 0.31),
        observed,
        someone_else,
    ] {
        assert_eq!(lrs.post(&s).await.status(), StatusCode::OK);
    }
    let tom_statement = all_ids(&lrs).await;
    assert_eq!(tom_statement.len(), 4);

    // Léa reads the two statements about her, without their scores, in every format.
    for format in ["exact", "ids", "canonical"] {
        let (status, list) = session_statements(&lea, &format!("?format={format}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list.len(), 2, "{format}: {list:?}");
        for s in &list {
            assert!(
                s["result"].get("score").is_none(),
                "{format}: a pupil saw a score: {s}"
            );
        }
    }
    // Asking for Tom, by filter or by id, finds nothing.
    let tom_filter = format!("?agent={}", urlencode(&tom_agent.to_string()));
    let (_, list) = session_statements(&lea, &tom_filter).await;
    assert!(list.is_empty(), "{list:?}");
    let (_, toms) = session_statements(&tom, "").await;
    assert_eq!(
        actor_names(&toms),
        vec![tom_agent["account"]["name"].as_str().unwrap()]
    );
    assert!(toms[0]["result"].get("score").is_none());
    let tom_id_statement = toms[0]["id"].as_str().unwrap();
    let (status, _) = session_statements(&lea, &format!("?statementId={tom_id_statement}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A pupil's session cannot record statements (it could forge someone's evidence).
    let r = lea
        .client
        .post(format!("{}/t/ecole/xapi/statements", lea.base))
        .header("X-Experience-API-Version", "2.0.0")
        .header("x-csrf-token", &lea.csrf)
        .json(&scored(&tom_agent, "failed", 0.0))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(all_ids(&lrs).await.len(), 4, "nothing was stored");

    // The teacher reads what concerns the pupils of 6A (and themselves), with scores; not
    // Tom of 6B, not a stranger.
    let (status, list) = session_statements(&prof, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(
        list.iter()
            .any(|s| s["result"]["score"]["scaled"] == json!(0.87))
    );
    let (status, _) = session_statements(&prof, &format!("?statementId={tom_id_statement}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = session_statements(&prof, &tom_filter).await;
    assert!(list.is_empty());
    // The admin reads them all; a researcher none.
    let (_, list) = session_statements(&admin, "").await;
    assert_eq!(list.len(), 4);
    let (status, _) = session_statements(&researcher, "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The statement browser: the teacher's pupils only, filters, scores for staff.
    let (status, html) = page(&prof, "/t/ecole/statements").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("Prénom lea") && html.contains("87 %"),
        "{html}"
    );
    assert!(!html.contains("Prénom tom") && !html.contains("31 %") && !html.contains("anne"));
    let (_, html) = page(&prof, &format!("/t/ecole/statements?pupil={tom_id}")).await;
    assert!(!html.contains("31 %") && !html.contains("Prénom tom"));
    let verb = urlencode("http://adlnet.gov/expapi/verbs/experienced");
    let (_, html) = page(&prof, &format!("/t/ecole/statements?verb={verb}")).await;
    assert_eq!(html.matches("<details>").count(), 1, "{html}");
    assert!(!html.contains("87 %"));
    let (_, html) = page(&prof, "/t/ecole/statements?from=2999-01-01").await;
    assert_eq!(html.matches("<details>").count(), 0);
    let (_, html) = page(&admin, "/t/ecole/statements?to=2000-01-01").await;
    assert_eq!(html.matches("<details>").count(), 0);
    let (_, html) = page(&admin, "/t/ecole/statements").await;
    assert!(html.contains("Prénom tom") && html.contains("31 %") && html.contains("anne"));
    let (status, _) = page(&admin, "/t/ecole/statements?from=22/11/2026").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = page(&lea, "/t/ecole/statements").await;
    assert!(
        status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND,
        "{status}"
    );

    // Pages of 50, newest first, with a link to the older ones.
    let batch: Vec<Value> = (0..60)
        .map(|i| scored(&lea_agent, "answered", f64::from(i) / 100.0))
        .collect();
    assert_eq!(
        lrs.post(&Value::Array(batch)).await.status(),
        StatusCode::OK
    );
    let (_, first) = page(&prof, &format!("/t/ecole/statements?pupil={lea_id}")).await;
    assert_eq!(first.matches("<details>").count(), 50);
    let older = first
        .split("rel=\"next\"")
        .next()
        .and_then(|h| h.rsplit("href=\"").next())
        .and_then(|h| h.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    assert!(older.contains("before="), "{older}");
    let (_, second) = page(&prof, &older).await;
    assert_eq!(second.matches("<details>").count(), 62 - 50, "{older}");
    assert!(!second.contains("rel=\"next\""));

    // The pupil's history: her own activity, never a score.
    let (status, html) = page(&lea, "/t/ecole/history").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(html.matches("<li>").count(), 50, "{html}");
    assert!(html.contains("rel=\"next\""));
    assert!(
        !html.contains(" %") && !html.contains("/10"),
        "a score reached a pupil: {html}"
    );
    let (_, html) = page(&tom, "/t/ecole/history").await;
    assert_eq!(html.matches("<li>").count(), 1);
    let (status, _) = page(&prof, "/t/ecole/history").await;
    assert_ne!(status, StatusCode::OK);
}

fn tenant_db(app: &Appliance, slug: &str) -> rusqlite::Connection {
    let path = app.data_path().join("tenants").join(slug).join("tenant.db");
    rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
}

/// The change log that forwarding and sync will read, as the tenant's database holds it.
fn change_log(app: &Appliance, slug: &str) -> Vec<(String, String)> {
    let db = tenant_db(app, slug);
    let mut stmt = db
        .prepare("SELECT kind, subject FROM change_log ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The ids of the statements with `seq` in `first-last`, in order.
fn statements_in(app: &Appliance, slug: &str, range: &str) -> Vec<String> {
    let (first, last) = range.split_once('-').unwrap();
    let db = tenant_db(app, slug);
    let mut stmt = db
        .prepare("SELECT id FROM xapi_statements WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq")
        .unwrap();
    stmt.query_map([first, last], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_change_enters_the_change_log_in_order() {
    let app = appliance_with(&["ecole"]);
    let lrs = Lrs::new(&app, "ecole", &["all"]);
    let batch = lrs
        .store(&json!([
            statement("lea", "completed", "a"),
            statement("tom", "completed", "b"),
            statement("noe", "failed", "c")
        ]))
        .await;
    let single = lrs.store(&statement("lea", "passed", "d")).await;
    // Refused and repeated statements change nothing.
    let mut bad = statement("lea", "passed", "e");
    bad["verb"]["id"] = json!("not an iri");
    assert_eq!(lrs.post(&bad).await.status(), StatusCode::BAD_REQUEST);
    let mut again = statement("lea", "passed", "d");
    again["id"] = json!(single[0]);
    assert_eq!(lrs.store(&again).await, single);
    let agent = urlencode(&json!({"mbox": "mailto:lea@ecole.example"}).to_string());
    let r = lrs
        .req(
            Method::PUT,
            &format!("/activities/state?activityId=http://ecole.example/quiz&agent={agent}&stateId=progress"),
        )
        .json(&json!({"page": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // The rows written when the school was made (its framework, its credential, its
    // settings: the xAPI home page, the AI pseudonym key) are not the LRS's.
    let log: Vec<(String, String)> = change_log(&app, "ecole")
        .into_iter()
        .filter(|(k, s)| !(k == "field" && s.contains(r#""f":"row""#)))
        .collect();
    let kinds: Vec<&str> = log.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["statements", "statements", "state"], "{log:?}");
    assert_eq!(statements_in(&app, "ecole", &log[0].1), batch);
    assert_eq!(statements_in(&app, "ecole", &log[1].1), single);
    let doc: serde_json::Value = serde_json::from_str(&log[2].1).unwrap();
    assert_eq!(
        (doc["id"].as_str(), doc["activity"].as_str()),
        (Some("progress"), Some("http://ecole.example/quiz")),
        "the change names the document: {doc}"
    );
    assert!(doc["op"]["h"].as_i64().unwrap() > 0, "and stamps it: {doc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_stay_exact_when_the_recent_index_moves_to_the_large_one() {
    let app = appliance_with(&["ecole"]);
    let lrs = Lrs::new(&app, "ecole", &["all"]);
    let registration = uuid();
    let with_registration = |mut s: Value| {
        s["context"] = json!({"registration": registration});
        s
    };
    let commented = |target: &str| {
        json!({"actor": {"mbox": "mailto:prof@ecole.example"},
            "verb": {"id": "http://adlnet.gov/expapi/verbs/commented"},
            "object": {"objectType": "StatementRef", "id": target}})
    };
    let lea_answers = || with_registration(statement("lea", "answered", "fractions"));
    // Before the move: e1 and e2 in the registration, a comment on a statement that has
    // not arrived yet, and a statement that will be voided.
    let late = uuid();
    let e1 = lrs.store(&lea_answers()).await.remove(0);
    let e2 = lrs
        .store(&with_registration(statement(
            "tom",
            "answered",
            "fractions",
        )))
        .await
        .remove(0);
    let early_comment = lrs.store(&commented(&late)).await.remove(0);
    let to_void = lrs
        .store(&statement("lea", "attempted", "geometrie"))
        .await
        .remove(0);
    // Enough other statements for the recent index rows to move to the large index.
    for b in 0..42 {
        let batch: Vec<Value> = (0..100)
            .map(|i| {
                statement(
                    &format!("eleve{b}x{i}"),
                    "experienced",
                    &format!("lecon-{i}"),
                )
            })
            .collect();
        lrs.store(&Value::Array(batch)).await;
    }
    let db = tenant_db(&app, "ecole");
    let rows_of = |table: &str, id: &str| -> i64 {
        db.query_row(
            &format!(
                "SELECT count(*) FROM {table} WHERE seq = (SELECT seq FROM xapi_statements WHERE id = ?1)"
            ),
            [id],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert!(rows_of("xapi_index", &e1) > 0, "e1's index rows moved");
    assert_eq!(rows_of("xapi_index_recent", &e1), 0);

    // After the move: lea again, the statement the early comment waited for (its comment,
    // stored before the move, now also matches lea), a voiding, a comment on e2.
    let l1 = lrs.store(&lea_answers()).await.remove(0);
    let mut arrives = statement("lea", "passed", "fractions");
    arrives["id"] = json!(late);
    lrs.store(&arrives).await;
    let voiding = lrs
        .store(&json!({"actor": {"mbox": "mailto:prof@ecole.example"},
            "verb": {"id": "http://adlnet.gov/expapi/verbs/voided"},
            "object": {"objectType": "StatementRef", "id": to_void}}))
        .await
        .remove(0);
    let late_comment = lrs.store(&commented(&e2)).await.remove(0);
    assert!(
        rows_of("xapi_index_recent", &early_comment) > 0,
        "the early comment's inherited rows are recent"
    );
    assert!(rows_of("xapi_index", &early_comment) > 0);

    // Newest first, two per page, across both index tables.
    let lea = pupil_filter("lea");
    assert_eq!(
        ids_matching(&lrs, &format!("{lea}&limit=2")).await,
        vec![
            voiding.clone(),
            late.clone(),
            l1.clone(),
            early_comment.clone(),
            e1.clone()
        ],
        "lea's statements and the statements that refer to them, not the voided one"
    );
    assert_eq!(
        ids_matching(&lrs, &format!("{lea}&limit=2&ascending=true")).await,
        vec![
            e1.clone(),
            early_comment.clone(),
            l1.clone(),
            late.clone(),
            voiding
        ]
    );
    assert_eq!(
        ids_matching(&lrs, &format!("{}&limit=2", pupil_filter("tom"))).await,
        vec![late_comment.clone(), e2.clone()]
    );
    // Two keys: one in each table must both hold.
    let fractions = urlencode("http://ecole.example/activites/fractions");
    assert_eq!(
        ids_matching(
            &lrs,
            &format!("activity={fractions}&registration={registration}&limit=3")
        )
        .await,
        vec![late_comment.clone(), l1, e2.clone(), e1]
    );
    let verb = urlencode("http://adlnet.gov/expapi/verbs/commented");
    assert_eq!(
        ids_matching(&lrs, &format!("verb={verb}&{lea}")).await,
        vec![early_comment],
        "its own verb is in the large index, lea in the recent one"
    );
    // A comment on the comment on e2 is about tom too; a cycle of references ends.
    let chained = lrs.store(&commented(&late_comment)).await.remove(0);
    assert_eq!(
        ids_matching(&lrs, &pupil_filter("tom")).await,
        vec![chained, late_comment, e2]
    );
    let (x, y) = (uuid(), uuid());
    let mut to_y = commented(&y);
    to_y["id"] = json!(x);
    let mut to_x = commented(&x);
    to_x["id"] = json!(y);
    lrs.store(&Value::Array(vec![to_y, to_x])).await;
    let prof = urlencode(&json!({"mbox": "mailto:prof@ecole.example"}).to_string());
    let by_prof = ids_matching(&lrs, &format!("agent={prof}&limit=3")).await;
    assert_eq!(&by_prof[..2], &[y, x]);
}
