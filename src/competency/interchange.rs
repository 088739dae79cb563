//! Frameworks in the formats other systems speak: CaSS JSON-LD (schema.cassproject.org 0.4:
//! `Framework`, `Competency`, `Relation`, `Level`), read and written, and CASE 1.0 JSON
//! (`CFPackage`: `CFDocument`, `CFItems`, `CFAssociations`), read.
//!
//! CaSS identifies objects by URL, and versions them by appending `/<timestamp>` to the
//! `@id`; references between objects use the unversioned id, which is what is stored here.
//! Texts may be plain strings or language-tagged values. What the engine adds that CaSS
//! has no word for (the level a descriptor is written at) travels as `ceredis:levelCode`.
//!
//! Must not: touch the database. Key functions: [`import`], [`to_cass`].

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{Framework, FrameworkCompetency, FrameworkLevel, Relation, RelationKind, Text};

const CASS_CONTEXT: &str = "https://schema.cassproject.org/0.4";

/// Why a document could not be read as a framework, in words.
pub type ImportError = String;

/// Reads a framework from CaSS JSON-LD (an array or `@graph` of objects) or a CASE 1.0
/// `CFPackage`, whichever `doc` is.
pub fn import(doc: &Value) -> Result<Framework, ImportError> {
    if doc.get("CFDocument").is_some() {
        return from_case(doc);
    }
    let objects = objects(doc);
    if objects.is_empty() {
        return Err("expected CaSS JSON-LD (an array of objects) or a CASE CFPackage".into());
    }
    from_cass(&objects)
}

/// The objects of a JSON-LD document: an array, a `@graph`, or one object.
fn objects(doc: &Value) -> Vec<&Value> {
    match doc {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) if o.contains_key("@graph") => doc["@graph"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Value::Object(_) => vec![doc],
        _ => Vec::new(),
    }
}

/// A CaSS object's type without its vocabulary (`Framework` for
/// `https://schema.cassproject.org/0.4/Framework` too).
fn cass_type(o: &Value) -> &str {
    let t = o.get("@type").and_then(Value::as_str).unwrap_or("");
    t.rsplit('/').next().unwrap_or(t)
}

/// The unversioned id of a CaSS object: its `@id` without a trailing `/<timestamp>`.
pub fn short_id(id: &str) -> String {
    match id.rsplit_once('/') {
        Some((head, tail)) if tail.len() >= 10 && tail.bytes().all(|b| b.is_ascii_digit()) => {
            head.to_string()
        }
        _ => id.to_string(),
    }
}

fn id_of(o: &Value) -> Option<String> {
    o.get("@id").and_then(Value::as_str).map(short_id)
}

/// A CaSS text: a string, a `{"@language", "@value"}` object, or an array of either.
fn text(v: Option<&Value>) -> Text {
    let mut out = Text::default();
    let mut plain = None;
    let items: Vec<&Value> = match v {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(one) => vec![one],
        None => Vec::new(),
    };
    for item in items {
        match item {
            Value::String(s) => plain = Some(s.clone()),
            Value::Object(o) => {
                let value = o
                    .get("@value")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                match o
                    .get("@language")
                    .and_then(Value::as_str)
                    .map(|l| &l[..l.len().min(2)])
                {
                    Some("fr") => out.fr = value,
                    Some("en") => out.en = value,
                    _ => plain = Some(value),
                }
            }
            _ => {}
        }
    }
    if let Some(p) = plain {
        if out.en.is_empty() {
            out.en = p.clone();
        }
        if out.fr.is_empty() {
            out.fr = p;
        }
    }
    out
}

fn cass_text(t: &Text) -> Value {
    if t.en == t.fr || t.fr.is_empty() || t.en.is_empty() {
        Value::String(if t.en.is_empty() {
            t.fr.clone()
        } else {
            t.en.clone()
        })
    } else {
        json!([{"@language": "fr", "@value": t.fr}, {"@language": "en", "@value": t.en}])
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(short_id).collect(),
        Some(Value::String(s)) => vec![short_id(s)],
        _ => Vec::new(),
    }
}

fn from_cass(objects: &[&Value]) -> Result<Framework, ImportError> {
    let frameworks: Vec<&&Value> = objects
        .iter()
        .filter(|o| cass_type(o) == "Framework")
        .collect();
    let [framework] = frameworks.as_slice() else {
        return Err(format!(
            "expected exactly one CaSS Framework, found {}",
            frameworks.len()
        ));
    };
    let uri = id_of(framework).ok_or("the Framework has no @id")?;
    let by_id: HashMap<String, &Value> = objects
        .iter()
        .filter_map(|o| id_of(o).map(|id| (id, *o)))
        .collect();
    let listed = |key: &str, kind: &str| -> Result<Vec<&Value>, ImportError> {
        strings(framework.get(key))
            .iter()
            .map(|id| {
                by_id
                    .get(id)
                    .copied()
                    .filter(|o| cass_type(o) == kind)
                    .ok_or_else(|| {
                        format!("the Framework lists {kind} {id}, which is not in the document")
                    })
            })
            .collect()
    };
    let mut levels_of: HashMap<String, Vec<FrameworkLevel>> = HashMap::new();
    for l in listed("level", "Level")? {
        let Some(competency) = l.get("competency").and_then(Value::as_str).map(short_id) else {
            continue; // a level of the framework as a whole: not something a teacher decides
        };
        let code = text(l.get("name"));
        levels_of
            .entry(competency)
            .or_default()
            .push(FrameworkLevel {
                uri: id_of(l).unwrap_or_default(),
                code: code.en.clone(),
                name: if l.get("title").is_some() {
                    text(l.get("title"))
                } else {
                    code
                },
                description: text(l.get("description")),
            });
    }
    let competencies = listed("competency", "Competency")?
        .into_iter()
        .map(|c| {
            let uri = id_of(c).unwrap_or_default();
            FrameworkCompetency {
                code: ["ceasn:codedNotation", "codedNotation"]
                    .iter()
                    .find_map(|k| c.get(*k).and_then(Value::as_str))
                    .unwrap_or("")
                    .to_string(),
                name: text(c.get("name")),
                description: text(c.get("description")),
                level_code: c
                    .get("ceredis:levelCode")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                levels: levels_of.remove(&uri).unwrap_or_default(),
                uri,
            }
        })
        .collect::<Vec<_>>();
    let known: std::collections::HashSet<&str> =
        competencies.iter().map(|c| c.uri.as_str()).collect();
    let mut relations = Vec::new();
    for r in listed("relation", "Relation")? {
        let kind = r.get("relationType").and_then(Value::as_str).unwrap_or("");
        let Some(kind) = RelationKind::parse(kind) else {
            continue; // other CaSS relation types (desires, isRelatedTo…) have no meaning here
        };
        let (source, target) = (
            r.get("source")
                .and_then(Value::as_str)
                .map(short_id)
                .unwrap_or_default(),
            r.get("target")
                .and_then(Value::as_str)
                .map(short_id)
                .unwrap_or_default(),
        );
        if !known.contains(source.as_str()) || !known.contains(target.as_str()) {
            return Err(format!(
                "relation {} names a competency outside the framework",
                id_of(r).unwrap_or_default()
            ));
        }
        relations.push(Relation {
            uri: id_of(r),
            source,
            target,
            kind,
        });
    }
    Ok(Framework {
        uri,
        version: framework
            .get("schema:version")
            .or_else(|| framework.get("version"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        name: text(framework.get("name")),
        description: text(framework.get("description")),
        source: "cass".into(),
        competencies,
        relations,
    })
}

/// A relation's id when it has none of its own (the built-in framework's).
fn relation_id(framework: &str, r: &Relation) -> String {
    r.uri.clone().unwrap_or_else(|| {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!("{}|{}|{}", r.source, r.target, r.kind.as_str()).as_bytes(),
        );
        format!(
            "{framework}:relation:{}",
            super::mastery::hex(&digest.as_ref()[..8])
        )
    })
}

/// The framework as CaSS JSON-LD: the Framework, then its Competencies, Relations and
/// Levels, each with its `@id`.
pub fn to_cass(f: &Framework) -> Value {
    let obj = |kind: &str, id: &str| json!({"@context": CASS_CONTEXT, "@type": kind, "@id": id});
    let mut framework = obj("Framework", &f.uri);
    framework["name"] = cass_text(&f.name);
    framework["description"] = cass_text(&f.description);
    if !f.version.is_empty() {
        framework["schema:version"] = json!(f.version);
    }
    framework["competency"] = json!(f.competencies.iter().map(|c| &c.uri).collect::<Vec<_>>());
    let relation_ids: Vec<String> = f.relations.iter().map(|r| relation_id(&f.uri, r)).collect();
    framework["relation"] = json!(relation_ids);
    framework["level"] = json!(
        f.competencies
            .iter()
            .flat_map(|c| c.levels.iter().map(|l| &l.uri))
            .collect::<Vec<_>>()
    );
    let mut out = vec![framework];
    for c in &f.competencies {
        let mut o = obj("Competency", &c.uri);
        o["name"] = cass_text(&c.name);
        if !c.description.en.is_empty() || !c.description.fr.is_empty() {
            o["description"] = cass_text(&c.description);
        }
        if !c.code.is_empty() {
            o["ceasn:codedNotation"] = json!(c.code);
        }
        if let Some(level) = &c.level_code {
            o["ceredis:levelCode"] = json!(level);
        }
        out.push(o);
    }
    for (r, id) in f.relations.iter().zip(&relation_ids) {
        let mut o = obj("Relation", id);
        o["source"] = json!(r.source);
        o["target"] = json!(r.target);
        o["relationType"] = json!(r.kind.as_str());
        out.push(o);
    }
    for c in &f.competencies {
        for l in &c.levels {
            let mut o = obj("Level", &l.uri);
            o["competency"] = json!(c.uri);
            o["name"] = json!(l.code);
            o["title"] = cass_text(&l.name);
            if !l.description.en.is_empty() || !l.description.fr.is_empty() {
                o["description"] = cass_text(&l.description);
            }
            out.push(o);
        }
    }
    Value::Array(out)
}

/// What a CaSS `Assertion` of a level decision says.
#[derive(Debug)]
pub struct AssertionFields<'a> {
    pub id: &'a str,
    pub framework: &'a str,
    pub competency: &'a str,
    pub level: &'a str,
    pub subject: &'a str,
    pub agent: &'a str,
    pub at_ms: i64,
    pub evidence: &'a [String],
    pub justification: &'a str,
}

/// A level decision as a CaSS `Assertion`. CaSS encrypts `subject` and `agent` with the
/// parties' keys; the appliance has none, so both are the opaque xAPI account names the
/// tenant's records already use (never a name), and `evidence` names the cited statements
/// (`urn:uuid:…`) or the appliance's own evidence rows.
pub fn assertion(a: &AssertionFields<'_>) -> Value {
    json!({
        "@context": CASS_CONTEXT,
        "@type": "Assertion",
        "@id": a.id,
        "framework": a.framework,
        "competency": a.competency,
        "level": a.level,
        "subject": a.subject,
        "agent": a.agent,
        "assertionDate": a.at_ms,
        "negative": false,
        "confidence": 1.0,
        "evidence": a.evidence,
        "ceredis:justification": a.justification,
    })
}

/// A CaSS `Assertion` as read for import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedAssertion {
    pub id: String,
    pub competency: String,
    /// The level's URI or code.
    pub level: String,
    pub subject: String,
    pub agent: String,
    pub at_ms: i64,
    pub evidence: Vec<String>,
    pub justification: String,
}

/// The Assertions of a CaSS JSON-LD document (an array or `@graph`). Assertions whose
/// subject or agent is encrypted (an object, as CaSS writes them for its own keys) cannot
/// be attributed here and are reported as such.
pub fn assertions(doc: &Value) -> Vec<Result<ImportedAssertion, (String, String)>> {
    objects(doc)
        .into_iter()
        .filter(|o| cass_type(o) == "Assertion")
        .map(|o| {
            let id = id_of(o).unwrap_or_default();
            let field = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
            let (Some(subject), Some(agent)) = (field("subject"), field("agent")) else {
                return Err((id, "its subject or agent is encrypted or missing".into()));
            };
            let (Some(competency), Some(level)) = (field("competency"), field("level")) else {
                return Err((id, "it names no competency or no level".into()));
            };
            Ok(ImportedAssertion {
                competency: short_id(&competency),
                level: short_id(&level),
                subject,
                agent,
                at_ms: o.get("assertionDate").and_then(Value::as_i64).unwrap_or(0),
                evidence: strings(o.get("evidence")),
                justification: field("ceredis:justification")
                    .or_else(|| field("description"))
                    .unwrap_or_default(),
                id,
            })
        })
        .collect()
}

fn case_text(o: &Value, key: &str) -> String {
    o.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

/// A CASE 1.0 `CFPackage`: items become competencies (`fullStatement`, `humanCodingScheme`),
/// `isChildOf` becomes narrows (to an item; a child of the document is top-level),
/// `exactMatchOf` is equivalent to, and `A precedes B` makes B require A.
fn from_case(doc: &Value) -> Result<Framework, ImportError> {
    let document = &doc["CFDocument"];
    let uri = ["uri", "identifier"]
        .iter()
        .map(|k| case_text(document, k))
        .find(|s| !s.is_empty())
        .ok_or("the CFDocument has neither uri nor identifier")?;
    let items = doc["CFItems"].as_array().cloned().unwrap_or_default();
    let mut uri_of: HashMap<String, String> = HashMap::new();
    let mut competencies = Vec::new();
    for item in &items {
        let id = case_text(item, "identifier");
        let item_uri = Some(case_text(item, "uri"))
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| id.clone());
        if item_uri.is_empty() {
            return Err("a CFItem has neither uri nor identifier".into());
        }
        uri_of.insert(id, item_uri.clone());
        uri_of.insert(item_uri.clone(), item_uri.clone());
        let statement = case_text(item, "fullStatement");
        let lang = case_text(item, "language");
        let name = if lang.starts_with("en") {
            Text {
                en: statement,
                fr: String::new(),
            }
        } else if lang.starts_with("fr") {
            Text {
                en: String::new(),
                fr: statement,
            }
        } else {
            Text::same(&statement)
        };
        competencies.push(FrameworkCompetency {
            uri: item_uri,
            code: case_text(item, "humanCodingScheme"),
            name,
            description: Text::same(&case_text(item, "notes")),
            level_code: None,
            levels: Vec::new(),
        });
    }
    let node = |a: &Value, key: &str| -> Option<String> {
        let n = a.get(key)?;
        let id = n.get("identifier").and_then(Value::as_str).unwrap_or("");
        let u = n.get("uri").and_then(Value::as_str).unwrap_or("");
        uri_of.get(id).or_else(|| uri_of.get(u)).cloned()
    };
    let mut relations = Vec::new();
    for a in doc["CFAssociations"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let (Some(origin), Some(destination)) =
            (node(a, "originNodeURI"), node(a, "destinationNodeURI"))
        else {
            continue; // an end outside the items (the document itself, another framework)
        };
        let (source, target, kind) = match a.get("associationType").and_then(Value::as_str) {
            Some("isChildOf") => (origin, destination, RelationKind::Narrows),
            Some("exactMatchOf") => (origin, destination, RelationKind::IsEquivalentTo),
            Some("precedes") => (destination, origin, RelationKind::Requires),
            _ => continue,
        };
        relations.push(Relation {
            uri: Some(case_text(a, "uri")).filter(|u| !u.is_empty()),
            source,
            target,
            kind,
        });
    }
    Ok(Framework {
        uri,
        version: case_text(document, "version"),
        name: Text::same(&case_text(document, "title")),
        description: Text::same(&case_text(document, "description")),
        source: "case".into(),
        competencies,
        relations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Value {
        serde_json::from_str(include_str!("../../tests/fixtures/cass-framework.jsonld")).unwrap()
    }

    #[test]
    fn a_framework_built_with_the_cass_library_is_read_whole() {
        let f = import(&fixture()).unwrap();
        assert_eq!(f.name.fr, "Anglais oral, cycle 4");
        assert_eq!(f.competencies.len(), 5);
        let versioned = fixture()[0]["@id"].as_str().unwrap().to_string();
        assert_eq!(f.uri, short_id(&versioned));
        assert_ne!(f.uri, versioned, "the version is not part of the identity");
        let listening = f
            .competencies
            .iter()
            .find(|c| c.name.fr == "Écouter et comprendre")
            .unwrap();
        let codes: Vec<&str> = listening.levels.iter().map(|l| l.code.as_str()).collect();
        assert_eq!(codes, ["A1", "A2", "B1"]);
        assert_eq!(listening.levels[1].name.fr, "Intermédiaire");
        let kinds: Vec<RelationKind> = f.relations.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds
                .iter()
                .filter(|k| **k == RelationKind::Narrows)
                .count(),
            3
        );
        assert!(
            kinds.contains(&RelationKind::Requires)
                && kinds.contains(&RelationKind::IsEquivalentTo)
        );
        // References resolve to the competencies' unversioned ids.
        for r in &f.relations {
            assert!(f.competencies.iter().any(|c| c.uri == r.source));
        }
    }

    #[test]
    fn cass_export_reads_back_the_same() {
        let f = import(&fixture()).unwrap();
        let again = import(&to_cass(&f)).unwrap();
        assert_eq!(again, f);
        let cefr = crate::competency::cefr::framework().unwrap();
        let mut back = import(&to_cass(&cefr)).unwrap();
        back.source = "builtin".into();
        for r in &mut back.relations {
            r.uri = None;
        }
        assert_eq!(back, cefr);
    }

    #[test]
    fn versioned_ids_lose_their_version_only() {
        assert_eq!(
            short_id("https://x/api/data/T/abc/1795340644953"),
            "https://x/api/data/T/abc"
        );
        assert_eq!(
            short_id("https://x/api/data/T/abc"),
            "https://x/api/data/T/abc"
        );
        assert_eq!(
            short_id("urn:ceredis:cefr:reception:level:A1"),
            "urn:ceredis:cefr:reception:level:A1"
        );
    }

    #[test]
    fn a_case_package_becomes_a_framework() {
        let doc =
            serde_json::from_str::<Value>(include_str!("../../tests/fixtures/case-package.json"))
                .unwrap();
        let f = import(&doc).unwrap();
        assert_eq!(f.source, "case");
        assert_eq!(f.competencies.len(), 4);
        let narrows = f
            .relations
            .iter()
            .filter(|r| r.kind == RelationKind::Narrows)
            .count();
        assert_eq!(narrows, 3, "{:?}", f.relations);
        assert!(f.relations.iter().any(|r| r.kind == RelationKind::Requires));
        assert!(import(&json!({"CFDocument": {}})).is_err());
        assert!(import(&json!([{"@type": "Competency", "@id": "x"}])).is_err());
    }
}
