//! A language portfolio: the pupil reads the CEFR "I can" descriptors of a level and says,
//! for each, "I can", "with help" or "not yet". Each answer is recorded as a
//! self-assessment (evidence her teachers see); the app keeps her last answers in its own
//! storage, under her app-specific pseudonym, to show them next time.

use ceredis_app::{
    App, Request, Response, competencies, competencies::SelfAnswer, escape, identity, kv, page,
};
use serde_json::Value;

struct Portfolio;

const LEVELS: &[&str] = &["Pre-A1", "A1", "A2", "B1", "B2", "C1", "C2"];
const FRAMEWORK: &str = "urn:ceredis:framework:cefr-languages";

impl App for Portfolio {
    fn handle(req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => show(&req, None),
            ("POST", "/answers") => save(&req),
            _ => Response::not_found(),
        }
    }
}

fn level_of(req: &Request) -> &'static str {
    let asked = req
        .query_pairs()
        .into_iter()
        .chain(req.form())
        .find(|(k, _)| k == "level")
        .map(|(_, v)| v);
    LEVELS
        .iter()
        .copied()
        .find(|l| Some(*l) == asked.as_deref())
        .unwrap_or("A1")
}

/// The descriptors of one level of the CEFR framework: `(uri, text)`.
fn descriptors(level: &str) -> Result<Vec<(String, String)>, ceredis_app::Error> {
    let all: Value = serde_json::from_str(&competencies::frameworks()?).unwrap_or_default();
    let mut out = Vec::new();
    for f in all.as_array().into_iter().flatten() {
        if f["uri"] != FRAMEWORK {
            continue;
        }
        for c in f["competencies"].as_array().into_iter().flatten() {
            if c["level"] == level {
                out.push((
                    c["uri"].as_str().unwrap_or_default().to_string(),
                    c["name"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    Ok(out)
}

fn key(uri: &str) -> String {
    format!("u/{}/{uri}", identity::pseudonym())
}

const ANSWERS: &[(&str, &str)] = &[
    ("can", "Je sais faire"),
    ("with-help", "Avec de l'aide"),
    ("not-yet", "Pas encore"),
];

fn show(req: &Request, notice: Option<&str>) -> Response {
    if identity::current_role() != identity::Role::Student {
        return Response::text(403, "this portfolio is for pupils");
    }
    let level = level_of(req);
    let list = match descriptors(level) {
        Ok(list) => list,
        Err(e) => return Response::from_error(&e),
    };
    let mut body = String::from("<h1>Mon portfolio des langues</h1>");
    if let Some(n) = notice {
        body.push_str(&format!("<p class=\"notice\">{}</p>", escape(n)));
    }
    body.push_str("<nav class=\"sections\">");
    for l in LEVELS {
        body.push_str(&format!(
            r#"<a href="{}/?level={l}"{}>{l}</a> "#,
            escape(req.base()),
            if *l == level {
                " aria-current=\"page\""
            } else {
                ""
            }
        ));
    }
    body.push_str("</nav>");
    body.push_str(&format!(
        r#"<form method="post" action="{}/answers">{}<input type="hidden" name="level" value="{level}">"#,
        escape(req.base()),
        req.csrf_field()
    ));
    for (i, (uri, text)) in list.iter().enumerate() {
        let before = kv::get(&key(uri))
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok());
        body.push_str(&format!("<fieldset><legend>{}</legend>", escape(text)));
        body.push_str(&format!(
            r#"<input type="hidden" name="d{i}" value="{}">"#,
            escape(uri)
        ));
        for (code, label) in ANSWERS {
            let checked = if before.as_deref() == Some(code) {
                " checked"
            } else {
                ""
            };
            body.push_str(&format!(
                r#"<label><input type="radio" name="a{i}" value="{code}"{checked}> {label}</label> "#
            ));
        }
        body.push_str("</fieldset>");
    }
    body.push_str(r#"<button type="submit">Enregistrer</button></form>"#);
    Response::html(page("Mon portfolio", &body))
}

fn save(req: &Request) -> Response {
    let form = req.form();
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut saved = 0;
    for i in 0..100 {
        let Some(uri) = field(&format!("d{i}")) else {
            break;
        };
        let Some(answer) = field(&format!("a{i}")) else {
            continue;
        };
        let chosen = match answer.as_str() {
            "can" => SelfAnswer::Can,
            "with-help" => SelfAnswer::WithHelp,
            "not-yet" => SelfAnswer::NotYet,
            _ => return Response::text(400, format!("answer {i}: can, with-help or not-yet")),
        };
        if let Err(e) = competencies::self_assess(&uri, chosen) {
            return Response::from_error(&e);
        }
        if let Err(e) = kv::set(&key(&uri), answer.as_bytes()) {
            return Response::from_error(&e);
        }
        saved += 1;
    }
    let notice = if saved == 0 {
        "Coche au moins une réponse.".to_string()
    } else {
        "C'est enregistré : ton enseignant verra tes réponses.".to_string()
    };
    show(req, Some(&notice))
}

ceredis_app::export_app!(Portfolio);
