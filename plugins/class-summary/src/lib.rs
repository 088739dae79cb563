//! A teacher's summary of their classes, built only from the aggregates the host grants
//! (`competencies/class-aggregates`): pupils per decided level on each skill, how many
//! pupils have evidence, evidence per week. It never sees a pupil's own data.

use ceredis_app::{App, Request, Response, competencies, escape, page};
use serde_json::Value;

struct Summary;

impl App for Summary {
    fn handle(req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => classes(&req),
            ("GET", "/class") => class(&req),
            _ => Response::not_found(),
        }
    }
}

fn classes(req: &Request) -> Response {
    let list = match competencies::my_classes() {
        Ok(list) => list,
        Err(e) => return Response::from_error(&e),
    };
    let mut body = String::from("<h1>Synthèse de mes classes</h1>");
    if list.is_empty() {
        body.push_str("<p>Vous n'enseignez dans aucune classe.</p>");
    }
    body.push_str("<ul>");
    for c in &list {
        body.push_str(&format!(
            r#"<li><a href="{}/class?id={}">{}</a></li>"#,
            escape(req.base()),
            c.id,
            escape(&c.title)
        ));
    }
    body.push_str("</ul>");
    Response::html(page("Synthèse", &body))
}

fn class(req: &Request) -> Response {
    let Some(id) = req
        .query_pairs()
        .into_iter()
        .find(|(k, _)| k == "id")
        .and_then(|(_, v)| v.parse::<i64>().ok())
    else {
        return Response::text(400, "id: a class id");
    };
    let figures: Value = match competencies::class_aggregates(id) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_default(),
        Err(e) => return Response::from_error(&e),
    };
    let mut body = format!(
        "<h1>Synthèse de la classe</h1><p>{} élèves · {} preuves en tout</p>",
        figures["pupils"], figures["evidence_total"]
    );
    for skill in figures["skills"].as_array().into_iter().flatten() {
        let name = skill["name"]["fr"].as_str().unwrap_or_default();
        body.push_str(&format!(
            "<h2>{}</h2><p>{} élèves avec des preuves · {} sans niveau décidé</p><table><tr>",
            escape(name),
            skill["covered"],
            skill["undecided"]
        ));
        let levels = skill["levels"].as_array().cloned().unwrap_or_default();
        for l in &levels {
            body.push_str(&format!(
                "<th>{}</th>",
                escape(l[0].as_str().unwrap_or_default())
            ));
        }
        body.push_str("</tr><tr>");
        for l in &levels {
            body.push_str(&format!("<td>{}</td>", l[1]));
        }
        body.push_str("</tr></table>");
    }
    body.push_str("<h2>Preuves par semaine</h2><ul>");
    for w in figures["weekly_evidence"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<li>semaine du {} : {} preuves</li>",
            escape(w["week"].as_str().unwrap_or_default()),
            w["evidence"]
        ));
    }
    body.push_str(&format!(
        r#"</ul><p><a href="{}/">Mes classes</a></p>"#,
        escape(req.base())
    ));
    Response::html(page("Synthèse", &body))
}

ceredis_app::export_app!(Summary);
