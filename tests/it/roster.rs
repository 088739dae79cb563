//! OneRoster import over HTTP and the CLI: dry run, line-numbered errors that write
//! nothing, idempotent re-import, deltas, and visible progress.

use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use crate::support::*;

const ORGS: &str = "sourcedId,status,dateLastModified,name,type,identifier,parentSourcedId\norg-1,,,Collège Jean Moulin,school,0751234A,\n";

fn users(n: usize) -> String {
    let mut s = String::from(
        "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName,middleName,identifier,email,sms,phone,agentSourcedIds,grades,password\n",
    );
    s.push_str(
        "t-1,,,true,org-1,teacher,m.durand,,Marie,Durand,,,marie.durand@college.example,,,,,\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "s-{i},,,true,org-1,student,eleve{i},,Élève{i},Nom{i},,,,,,,06,\n"
        ));
    }
    s
}

fn classes() -> String {
    "sourcedId,status,dateLastModified,title,grades,courseSourcedId,classCode,classType,location,schoolSourcedId,termSourcedIds,subjects,subjectCodes,periods\n\
     c-1,,,6e A Anglais,06,course-1,6A-EN,scheduled,Salle 12,org-1,term-1,English,,1\n"
        .to_string()
}

fn enrollments(n: usize) -> String {
    let mut s = String::from(
        "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,beginDate,endDate\n",
    );
    s.push_str("e-t,,,c-1,org-1,t-1,teacher,true,,\n");
    for i in 0..n {
        s.push_str(&format!("e-{i},,,c-1,org-1,s-{i},student,false,,\n"));
    }
    s
}

/// A zip bundle as school systems export it: the CSV files in a folder, plus a manifest.
fn zipped(files: &[(&str, String)]) -> Vec<u8> {
    use std::io::Write;
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let options = zip::write::SimpleFileOptions::default();
    for (name, text) in files {
        z.start_file(format!("oneroster-export/{name}"), options)
            .unwrap();
        z.write_all(text.as_bytes()).unwrap();
    }
    z.start_file("oneroster-export/manifest.csv", options)
        .unwrap();
    z.write_all(b"propertyName,value\nmanifest.version,1.0\n")
        .unwrap();
    z.finish().unwrap();
    buf.into_inner()
}

/// Uploads files; a name ending in `.zip` sends its text as `users.csv` inside a bundle.
async fn upload(admin: &Session, files: &[(&str, String)], dry_run: bool) -> Value {
    let mut form = Form::new();
    for (name, text) in files {
        let part = if name.ends_with(".zip") {
            Part::bytes(zipped(&[("users.csv", text.clone())])).file_name(name.to_string())
        } else {
            Part::text(text.clone())
                .file_name(name.to_string())
                .mime_str("text/csv")
                .unwrap()
        };
        form = form.part("files", part);
    }
    if dry_run {
        form = form.text("dry_run", "true");
    }
    let r = admin
        .client
        .post(format!("{}/t/ecole/api/roster/import", admin.base))
        .header("x-csrf-token", &admin.csrf)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "{}",
        r.text().await.unwrap()
    );
    let started: Value = r.json().await.unwrap();
    let url = started["status_url"].as_str().unwrap().to_string();
    let mut saw_progress = false;
    for _ in 0..600 {
        let v: Value = admin.get(&url).await.json().await.unwrap();
        if v["total"].as_u64().unwrap_or(0) > 0 {
            saw_progress = true;
        }
        if !v["report"].is_null() || !v["failure"].is_null() {
            assert!(
                saw_progress,
                "the job reported its size while running or at the end"
            );
            assert!(v["failure"].is_null(), "{v}");
            if v["report"]["errors"].as_array().unwrap().is_empty() {
                assert_eq!(v["done"], v["total"], "{v}");
            }
            return v["report"].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("import did not finish");
}

async fn count_users(admin: &Session) -> usize {
    admin
        .get("/t/ecole/api/users")
        .await
        .json::<Vec<Value>>()
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_imports_once_reimports_as_unchanged_and_refuses_broken_files_whole() {
    let mut app = Appliance::init();
    app.start();
    let op = operator(&app).await;
    let admin = tenant_with_admin(&app, &op, "ecole").await;
    let files = vec![
        ("orgs.csv", ORGS.to_string()),
        ("users.csv", users(1200)),
        ("classes.csv", classes()),
        ("enrollments.csv", enrollments(1200)),
    ];

    let dry = upload(&admin, &files, true).await;
    assert_eq!(dry["applied"], false);
    assert_eq!(dry["users"]["created"], 1201);
    assert_eq!(dry["enrollments"]["created"], 1201);
    assert_eq!(count_users(&admin).await, 1, "a dry run writes nothing");

    let real = upload(&admin, &files, false).await;
    assert_eq!(real["applied"], true);
    assert_eq!(real["users"]["created"], 1201);
    assert_eq!(real["classes"]["created"], 1);
    assert_eq!(count_users(&admin).await, 1202);

    let again = upload(&admin, &files, false).await;
    for kind in ["orgs", "users", "classes", "enrollments"] {
        assert_eq!(again[kind]["created"], 0, "{kind}");
        assert_eq!(again[kind]["updated"], 0, "{kind}");
    }
    assert_eq!(again["users"]["unchanged"], 1201);

    // The same users as a zip bundle (as school systems export them): nothing changes, and
    // the files the import does not read are listed.
    let from_zip = upload(&admin, &[("export.zip", users(1200))], false).await;
    assert_eq!(from_zip["users"]["unchanged"], 1201, "{from_zip}");
    assert!(
        from_zip["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["file"] == "oneroster-export/manifest.csv")
    );

    // The imported teacher sees the class and its pupils (after an admin-issued password).
    let users_list: Vec<Value> = admin.get("/t/ecole/api/users").await.json().await.unwrap();
    let teacher_id = users_list
        .iter()
        .find(|u| u["username"] == "m.durand")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let reset: Value = admin
        .post(
            &format!("/t/ecole/api/users/{teacher_id}/password"),
            serde_json::json!({}),
        )
        .await
        .json()
        .await
        .unwrap();
    let teacher = activate(
        &app,
        "ecole",
        "m.durand",
        reset["one_time_password"].as_str().unwrap(),
    )
    .await;
    let classes_seen: Vec<Value> = teacher
        .get("/t/ecole/api/classes")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(classes_seen.len(), 1);
    let members: Vec<Value> = teacher
        .get(&format!(
            "/t/ecole/api/classes/{}/members",
            classes_seen[0]["id"]
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(members.len(), 1201);

    // A delta: one pupil leaves, one enrolment is removed.
    let delta_users = "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,givenName,familyName\ns-0,tobedeleted,2026-11-20,true,org-1,student,eleve0,Élève0,Nom0\n".to_string();
    let delta_enr = "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role\ne-0,tobedeleted,2026-11-20,c-1,org-1,s-0,student\n".to_string();
    let delta = upload(
        &admin,
        &[("users.csv", delta_users), ("enrollments.csv", delta_enr)],
        false,
    )
    .await;
    assert_eq!(delta["users"]["removed"], 1);
    assert_eq!(delta["enrollments"]["removed"], 1);

    // Broken files: every problem with its line, and nothing written at all.
    let broken_users = format!(
        "{}s-new,,,true,org-1,student,nouveau,,New,Pupil,,,,,,,06,\ns-bad,,,true,org-1,wizard,merlin,,Mer,Lin,,,,,,,06,\ns-clash,,,true,org-1,student,admin-ecole,,Ada,Clash,,,,,,,06,\ns-new,,,true,org-1,student,nouveau2,,Dup,Licate,,,,,,,06,\n",
        users(0)
    );
    let broken_enr = "sourcedId,status,dateLastModified,classSourcedId,schoolSourcedId,userSourcedId,role,primary,beginDate,endDate\ne-x,,,c-missing,org-1,s-new,student,false,,\n".to_string();
    let before = count_users(&admin).await;
    let refused = upload(
        &admin,
        &[("users.csv", broken_users), ("enrollments.csv", broken_enr)],
        false,
    )
    .await;
    assert_eq!(refused["applied"], false);
    let errors = refused["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["file"] == "users.csv"
            && e["line"] == 4
            && e["message"].as_str().unwrap().contains("wizard")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e["file"] == "enrollments.csv"
            && e["line"] == 2
            && e["message"].as_str().unwrap().contains("c-missing")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e["file"] == "users.csv"
            && e["line"] == 5
            && e["message"].as_str().unwrap().contains("admin-ecole")),
        "a clash with a hand-made account is found before writing: {errors:?}"
    );
    assert!(
        errors.iter().any(|e| e["file"] == "users.csv"
            && e["line"] == 6
            && e["message"].as_str().unwrap().contains("line 3")),
        "duplicate sourcedId: {errors:?}"
    );
    assert_eq!(count_users(&admin).await, before, "nothing written");

    // The CLI reads a directory of files and says the same.
    let dir = app.data_path().parent().unwrap().join("export");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in &files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let out = app.cli(&[
        "user",
        "import",
        "--tenant",
        "ecole",
        "--dry-run",
        dir.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Dry run: nothing was written."), "{text}");
}
