//! The isolation matrix, generated from the route table: every tenant route is attacked by
//! users of another tenant (404), by the operator (403), by roles outside its gate (403),
//! by anonymous clients (401), and machine routes by another tenant's credentials (401).

use std::collections::HashMap;

use ceredis::http::{Access, route_specs};
use ceredis::tenant::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

struct Tenant {
    users: HashMap<Role, Session>,
    class_id: i64,
    /// A user and a credential that routes may act on (reset, revoke) during the matrix.
    target_user_id: i64,
    target_key_id: String,
    key_id: String,
    secret: String,
}

async fn populate(app: &Appliance, op: &Session, slug: &str) -> Tenant {
    let admin = tenant_with_admin(app, op, slug).await;
    let (teacher_id, t_otp) = add_user(&admin, slug, "prof", "teacher").await;
    let (student_id, s_otp) = add_user(&admin, slug, "eleve", "student").await;
    let (_, r_otp) = add_user(&admin, slug, "chercheur", "researcher").await;
    let class: Value = admin
        .post(&format!("/t/{slug}/api/classes"), json!({"title": "5e A"}))
        .await
        .json()
        .await
        .unwrap();
    let class_id = class["id"].as_i64().unwrap();
    for uid in [teacher_id, student_id] {
        let r = admin
            .post(
                &format!("/t/{slug}/api/classes/{class_id}/enrolments"),
                json!({"user_id": uid}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    let cred: Value = admin
        .post(
            &format!("/t/{slug}/api/credentials"),
            json!({"label": "quiz app", "scopes": ["all"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let (target_user_id, _) = add_user(&admin, slug, "cible", "student").await;
    let target: Value = admin
        .post(
            &format!("/t/{slug}/api/credentials"),
            json!({"label": "target", "scopes": ["state"]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let mut users = HashMap::new();
    users.insert(Role::Teacher, activate(app, slug, "prof", &t_otp).await);
    users.insert(Role::Student, activate(app, slug, "eleve", &s_otp).await);
    users.insert(
        Role::Researcher,
        activate(app, slug, "chercheur", &r_otp).await,
    );
    users.insert(Role::Admin, admin);
    Tenant {
        users,
        class_id,
        target_user_id,
        target_key_id: target["key_id"].as_str().unwrap().into(),
        key_id: cred["key_id"].as_str().unwrap().into(),
        secret: cred["secret"].as_str().unwrap().into(),
    }
}

fn concrete(path: &str, slug: &str, t: &Tenant) -> String {
    path.replace("{tenant}", slug)
        .replace("{class}", &t.class_id.to_string())
        .replace("{user}", &t.target_user_id.to_string())
        .replace("{key}", &t.target_key_id)
        .replace("{job}", "no-such-job")
        .replace("{framework}", "1")
        .replace("{pupil}", &t.target_user_id.to_string())
        .replace("{evidence}", "1")
        .replace("{project}", "1")
        .replace("{token}", "no-such-token")
        .replace("{app}", "no-such-app")
        .replace("{*path}", "page")
}

async fn call(s: &Session, method: &Method, path: &str) -> StatusCode {
    let mut req = s
        .client
        .request(method.clone(), format!("{}{path}", s.base))
        .header("x-csrf-token", &s.csrf);
    if *method != Method::GET {
        req = req.json(&json!({}));
    }
    req.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_lets_one_tenant_or_the_operator_reach_another_tenants_data() {
    let mut app = Appliance::init();
    app.start();
    let op = operator(&app).await;
    let alpha = populate(&app, &op, "alpha").await;
    let beta = populate(&app, &op, "beta").await;
    let visitor = {
        let client = app.client();
        Session {
            csrf: form_csrf(&client, &app.url("/t/alpha/login")).await,
            client,
            base: app.base.clone(),
        }
    };
    let anonymous = Session {
        client: app.client(),
        csrf: String::new(),
        base: app.base.clone(),
    };

    let specs = route_specs();
    let mut member_routes = 0;
    let mut checked = 0;
    for spec in &specs {
        match spec.access {
            Access::Members(allowed) => {
                member_routes += 1;
                let in_beta = concrete(spec.path, "beta", &beta);
                let in_alpha = concrete(spec.path, "alpha", &alpha);
                for (role, s) in &alpha.users {
                    assert_eq!(
                        call(s, &spec.method, &in_beta).await,
                        StatusCode::NOT_FOUND,
                        "{role:?} of alpha: {} {in_beta}",
                        spec.method
                    );
                    if spec.path.ends_with("/logout") {
                        continue; // signing out for real would end the session under test
                    }
                    let own = call(s, &spec.method, &in_alpha).await;
                    if allowed.contains(role) {
                        // Any answer but 401/403 means the role check let the user through
                        // (a JSON body sent to a form route then gets 415 from the body
                        // extractor, which runs only after the access extractor).
                        assert!(
                            ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&own),
                            "{role:?}: {} {in_alpha} → {own}",
                            spec.method
                        );
                    } else {
                        assert_eq!(
                            own,
                            StatusCode::FORBIDDEN,
                            "{role:?} must not pass: {} {in_alpha}",
                            spec.method
                        );
                    }
                    checked += 2;
                }
                assert_eq!(
                    call(&op, &spec.method, &in_alpha).await,
                    StatusCode::FORBIDDEN,
                    "operator: {} {in_alpha}",
                    spec.method
                );
                // A visitor with a valid pre-session CSRF token (so the CSRF check passes)
                // but no session must be asked to sign in.
                let anon = call(&visitor, &spec.method, &in_alpha).await;
                assert_eq!(
                    anon,
                    StatusCode::UNAUTHORIZED,
                    "visitor: {} {in_alpha}",
                    spec.method
                );
                checked += 2;
            }
            Access::Machine => {
                let in_beta = app.url(&concrete(spec.path, "beta", &beta));
                let in_alpha = app.url(&concrete(spec.path, "alpha", &alpha));
                let with = |url: &str, key: &str, secret: &str| {
                    anonymous
                        .client
                        .request(spec.method.clone(), url)
                        .basic_auth(key, Some(secret))
                        .send()
                };
                assert_eq!(
                    with(&in_beta, &alpha.key_id, &alpha.secret)
                        .await
                        .unwrap()
                        .status(),
                    StatusCode::UNAUTHORIZED
                );
                assert_eq!(
                    with(&in_alpha, &alpha.key_id, "wrong")
                        .await
                        .unwrap()
                        .status(),
                    StatusCode::UNAUTHORIZED
                );
                assert_eq!(
                    with(&in_alpha, &beta.key_id, &beta.secret)
                        .await
                        .unwrap()
                        .status(),
                    StatusCode::UNAUTHORIZED
                );
                assert_eq!(
                    with(&in_alpha, &alpha.key_id, &alpha.secret)
                        .await
                        .unwrap()
                        .status(),
                    StatusCode::OK
                );
                // A session is not a machine credential.
                assert_eq!(
                    call(
                        &alpha.users[&Role::Admin],
                        &spec.method,
                        &concrete(spec.path, "alpha", &alpha)
                    )
                    .await,
                    StatusCode::UNAUTHORIZED
                );
                checked += 5;
            }
            Access::Operator => {
                let path = concrete(spec.path, "alpha", &alpha);
                for s in alpha.users.values() {
                    assert_eq!(
                        call(s, &spec.method, &path).await,
                        StatusCode::FORBIDDEN,
                        "{} {path}",
                        spec.method
                    );
                }
                checked += alpha.users.len();
            }
            Access::Xapi => {
                // Another tenant's credentials and sessions are strangers to this LRS
                // (the per-resource attacks are in `lrs::one_tenants_lrs_never_reaches_another`).
                let in_beta = app.url(&concrete(spec.path, "beta", &beta));
                for m in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
                    let r = anonymous
                        .client
                        .request(m.clone(), &in_beta)
                        .basic_auth(&alpha.key_id, Some(&alpha.secret))
                        .header("X-Experience-API-Version", "2.0.0")
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{m} {in_beta}");
                    for (role, s) in &alpha.users {
                        let r = s
                            .client
                            .request(m.clone(), &in_beta)
                            .header("x-csrf-token", &s.csrf)
                            .header("X-Experience-API-Version", "2.0.0")
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(
                            r.status(),
                            StatusCode::UNAUTHORIZED,
                            "{role:?}: {m} {in_beta}"
                        );
                    }
                    checked += 1 + alpha.users.len();
                }
            }
            Access::Public => {}
        }
    }
    assert!(
        member_routes >= 30,
        "the table lists the tenant routes ({member_routes})"
    );
    assert!(checked > 200, "{checked} checks");

    // Revoked credentials stop working at once.
    let admin = &alpha.users[&Role::Admin];
    let r = admin
        .json(
            Method::DELETE,
            &format!("/t/alpha/api/credentials/{}", alpha.key_id),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = anonymous
        .client
        .get(app.url("/t/alpha/api/client"))
        .basic_auth(&alpha.key_id, Some(&alpha.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teacher_sees_only_the_classes_they_teach_and_a_suspended_tenant_is_closed() {
    let mut app = Appliance::init();
    app.start();
    let op = operator(&app).await;
    let t = populate(&app, &op, "gamma").await;
    let admin = &t.users[&Role::Admin];
    let other: Value = admin
        .post("/t/gamma/api/classes", json!({"title": "4e C"}))
        .await
        .json()
        .await
        .unwrap();
    let teacher = &t.users[&Role::Teacher];
    let classes: Vec<Value> = teacher
        .get("/t/gamma/api/classes")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(classes.len(), 1);
    assert_eq!(classes[0]["id"].as_i64(), Some(t.class_id));
    let r = teacher
        .get(&format!("/t/gamma/api/classes/{}/members", other["id"]))
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let members: Vec<Value> = teacher
        .get(&format!("/t/gamma/api/classes/{}/members", t.class_id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(members.len(), 2);

    let out = app.cli(&["tenant", "suspend", "gamma"]);
    assert!(out.status.success());
    let r = teacher.get("/t/gamma/api/classes").await;
    assert!(
        [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&r.status()),
        "{}",
        r.status()
    );
    assert!(
        login(&app, "/t/gamma/login", "prof", PASSWORD)
            .await
            .is_err()
    );
    assert!(app.cli(&["tenant", "resume", "gamma"]).status.success());
    assert!(
        login(&app, "/t/gamma/login", "prof", PASSWORD)
            .await
            .is_ok()
    );
}
