//! A vocabulary quiz for young learners of English. Each answer becomes an xAPI statement
//! about the pupil, with a scored result on a question aligned (through its context) to a
//! CEFR can-do descriptor, so the school's assessment pipeline turns it into evidence.
//! The pupil is thanked and shown the right answers in words, never a score.

use ceredis_app::{App, Request, Response, escape, page, xapi};
use serde_json::json;

struct Quiz;

struct Question {
    id: &'static str,
    prompt: &'static str,
    choices: [&'static str; 3],
    answer: usize,
    /// The CEFR descriptor the question practises.
    descriptor: &'static str,
}

/// Recognising familiar words (reception Pre-A1 1), matching a word to its meaning
/// (reception Pre-A1 2) and reading short signs (reception A1 2).
const QUESTIONS: &[Question] = &[
    Question {
        id: "colour-red",
        prompt: "« red » veut dire…",
        choices: ["bleu", "rouge", "vert"],
        answer: 1,
        descriptor: "urn:ceredis:cefr:reception:Pre-A1:1",
    },
    Question {
        id: "number-seven",
        prompt: "« seven » veut dire…",
        choices: ["sept", "six", "dix"],
        answer: 0,
        descriptor: "urn:ceredis:cefr:reception:Pre-A1:1",
    },
    Question {
        id: "word-apple",
        prompt: "Quelle image va avec le mot « apple » ?",
        choices: ["🍎 une pomme", "🍌 une banane", "🍞 du pain"],
        answer: 0,
        descriptor: "urn:ceredis:cefr:reception:Pre-A1:2",
    },
    Question {
        id: "word-dog",
        prompt: "Quelle image va avec le mot « dog » ?",
        choices: ["🐱 un chat", "🐶 un chien", "🐦 un oiseau"],
        answer: 1,
        descriptor: "urn:ceredis:cefr:reception:Pre-A1:2",
    },
    Question {
        id: "sign-exit",
        prompt: "Le panneau « EXIT » indique…",
        choices: ["l'entrée", "les toilettes", "la sortie"],
        answer: 2,
        descriptor: "urn:ceredis:cefr:reception:A1:2",
    },
    Question {
        id: "sign-closed",
        prompt: "Sur une porte, « CLOSED » veut dire…",
        choices: ["fermé", "ouvert", "poussez"],
        answer: 0,
        descriptor: "urn:ceredis:cefr:reception:A1:2",
    },
];

const ACTIVITY: &str = "urn:ceredis:app:quiz:vocabulary-1";

impl App for Quiz {
    fn handle(req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/") => form(&req),
            ("POST", "/answers") => answers(&req),
            _ => Response::not_found(),
        }
    }
}

fn form(req: &Request) -> Response {
    let mut body = String::from(
        "<h1>Quiz : mes premiers mots d'anglais</h1>\
         <p>Choisis une réponse pour chaque question, puis envoie.</p>",
    );
    body.push_str(&format!(
        r#"<form method="post" action="{}/answers" class="quiz">{}"#,
        escape(req.base()),
        req.csrf_field()
    ));
    for q in QUESTIONS {
        body.push_str(&format!("<fieldset><legend>{}</legend>", escape(q.prompt)));
        for (i, choice) in q.choices.iter().enumerate() {
            body.push_str(&format!(
                r#"<label><input type="radio" name="{id}" value="{i}" required> {c}</label> "#,
                id = q.id,
                c = escape(choice)
            ));
        }
        body.push_str("</fieldset>");
    }
    body.push_str(r#"<button type="submit">Envoyer mes réponses</button></form>"#);
    Response::html(page("Quiz", &body))
}

fn answers(req: &Request) -> Response {
    let form = req.form();
    let chosen = |id: &str| -> Option<usize> {
        form.iter()
            .find(|(k, _)| k == id)
            .and_then(|(_, v)| v.parse().ok())
    };
    let mut statements = Vec::new();
    for q in QUESTIONS {
        let Some(choice) = chosen(q.id).filter(|c| *c < q.choices.len()) else {
            return Response::text(400, format!("answer every question ({} is missing)", q.id));
        };
        let right = choice == q.answer;
        statements.push(json!({
            "verb": {"id": "http://adlnet.gov/expapi/verbs/answered",
                     "display": {"en-US": "answered", "fr-FR": "a répondu"}},
            "object": {
                "id": format!("{ACTIVITY}:{}", q.id),
                "definition": {
                    "type": "http://adlnet.gov/expapi/activities/cmi.interaction",
                    "name": {"fr-FR": q.prompt},
                    "interactionType": "choice",
                    "choices": q.choices.iter().enumerate()
                        .map(|(i, c)| json!({"id": i.to_string(), "description": {"fr-FR": c}}))
                        .collect::<Vec<_>>(),
                    "correctResponsesPattern": [q.answer.to_string()]
                }
            },
            "result": {
                "response": choice.to_string(),
                "success": right,
                "score": {"scaled": if right { 1.0 } else { 0.0 }}
            },
            "context": {
                "contextActivities": {
                    "parent": [{"id": ACTIVITY}],
                    "category": [{"id": q.descriptor}]
                }
            }
        }));
    }
    if let Err(e) = xapi::record_statements(&serde_json::Value::Array(statements).to_string()) {
        return Response::from_error(&e);
    }
    let mut body = String::from(
        "<h1>Merci !</h1><p class=\"notice\">Tes réponses sont enregistrées. \
         Ton enseignant verra ce que tu as appris.</p><h2>Les bonnes réponses</h2><ul>",
    );
    for q in QUESTIONS {
        body.push_str(&format!(
            "<li>{} <strong>{}</strong></li>",
            escape(q.prompt),
            escape(q.choices[q.answer])
        ));
    }
    body.push_str(&format!(
        r#"</ul><p><a href="{}/">Recommencer</a></p>"#,
        escape(req.base())
    ));
    Response::html(page("Quiz", &body))
}

ceredis_app::export_app!(Quiz);
