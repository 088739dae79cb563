//! Statements between the wire and the database: what the LRS sets on a statement it accepts
//! (`id`, `authority`, `version`; `stored` and a missing `timestamp` are spliced in when the
//! statement is read, because only the writer knows them), the index keys that filters
//! query, statement comparison for immutability, and the `ids` / `canonical` formats.
//!
//! Must not: touch the database (see `store::lrs`) or validate (see [`super::validate`]).

use serde_json::{Map, Value, json};

use super::Version;
use super::validate::parse_timestamp;

/// Index key kinds, one bit each in the index's mask.
pub mod mask {
    /// The statement's verb.
    pub const VERB: i64 = 1;
    /// `context.registration`.
    pub const REGISTRATION: i64 = 2;
    /// The actor, or an Agent/Group object.
    pub const AGENT: i64 = 4;
    /// Authority, instructor, team, context agents and groups, group members, sub-statements.
    pub const RELATED_AGENT: i64 = 8;
    /// The object Activity.
    pub const ACTIVITY: i64 = 16;
    /// Context activities and the Activities of a sub-statement.
    pub const RELATED_ACTIVITY: i64 = 32;
    /// The credential or user that stored the statement (`statements/read/mine`).
    pub const STORED_BY: i64 = 64;
    /// The kinds a statement inherits from the statement its StatementRef targets.
    pub const INHERITED: i64 =
        VERB | REGISTRATION | AGENT | RELATED_AGENT | ACTIVITY | RELATED_ACTIVITY;
}

pub const VOIDED_VERB: &str = "http://adlnet.gov/expapi/verbs/voided";

/// A validated statement ready for the writer.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Lower-case UUID.
    pub id: String,
    /// The statement as stored, without `stored` (and without `timestamp` when the client
    /// sent none).
    pub json: String,
    /// Milliseconds since the epoch of the client's timestamp, if it sent one.
    pub timestamp: Option<i64>,
    /// The target of a StatementRef object.
    pub target: Option<String>,
    pub voiding: bool,
    /// `(key, mask)` pairs for the filter index.
    pub keys: Vec<(String, i64)>,
    /// The ids of those keys already known to the database (looked up before the write);
    /// the writer resolves the others.
    pub key_ids: Vec<Option<i64>>,
    /// SHA-2 digests of the attachments whose content came with the statement.
    pub attachments: Vec<String>,
    /// The Activities the statement names, each with its definition as JSON text when it
    /// carries one: what the LRS's canonical definitions are updated from.
    pub activities: Vec<(String, Option<String>)>,
    /// Whether the LRS chose the id (the client sent none): no stored statement can have
    /// it, so the writer skips looking for one.
    pub new_id: bool,
    /// The statement as a value, for comparison with an existing one of the same id.
    pub value: Value,
}

/// The IFI of an Agent or identified Group as one string, or `None` for an anonymous Group.
pub fn agent_key(agent: &Value) -> Option<String> {
    if let Some(m) = agent.get("mbox").and_then(Value::as_str) {
        return Some(format!("mbox:{}", m.to_ascii_lowercase()));
    }
    if let Some(m) = agent.get("mbox_sha1sum").and_then(Value::as_str) {
        return Some(format!("sha1:{}", m.to_ascii_lowercase()));
    }
    if let Some(m) = agent.get("openid").and_then(Value::as_str) {
        return Some(format!("openid:{m}"));
    }
    let account = agent.get("account")?;
    Some(format!(
        "account:{}\u{1f}{}",
        account.get("homePage").and_then(Value::as_str)?,
        account.get("name").and_then(Value::as_str)?
    ))
}

/// Index key of an agent filter value.
pub fn agent_index_key(ifi: &str) -> String {
    format!("a:{ifi}")
}

pub fn activity_index_key(id: &str) -> String {
    format!("o:{id}")
}

pub fn verb_index_key(id: &str) -> String {
    format!("v:{id}")
}

pub fn registration_index_key(id: &str) -> String {
    format!("r:{}", id.to_ascii_lowercase())
}

pub fn stored_by_index_key(who: &str) -> String {
    format!("m:{who}")
}

struct Keys(Vec<(String, i64)>);

/// Adds `key` with the roles in `mask` to a list of index keys, each key once.
pub fn add_key(keys: &mut Vec<(String, i64)>, key: String, mask: i64) {
    match keys.iter_mut().find(|(k, _)| *k == key) {
        Some((_, m)) => *m |= mask,
        None => keys.push((key, mask)),
    }
}

impl Keys {
    fn add(&mut self, key: String, mask: i64) {
        add_key(&mut self.0, key, mask);
    }

    fn agent(&mut self, who: &Value, direct: bool) {
        let kind = if direct {
            mask::AGENT
        } else {
            mask::RELATED_AGENT
        };
        if let Some(k) = agent_key(who) {
            self.add(agent_index_key(&k), kind);
        }
        for m in who
            .get("member")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(k) = agent_key(m) {
                self.add(agent_index_key(&k), mask::RELATED_AGENT);
            }
        }
    }

    fn activity(&mut self, a: &Value, direct: bool) {
        if let Some(id) = a.get("id").and_then(Value::as_str) {
            let kind = if direct {
                mask::ACTIVITY
            } else {
                mask::RELATED_ACTIVITY
            };
            self.add(activity_index_key(id), kind);
        }
    }

    /// Actor, verb, object and context of a statement or sub-statement.
    fn body(&mut self, s: &Value, sub: bool) {
        if let Some(actor) = s.get("actor") {
            self.agent(actor, !sub);
        }
        if let Some(v) = s.pointer("/verb/id").and_then(Value::as_str) {
            self.add(verb_index_key(v), mask::VERB);
        }
        if let Some(object) = s.get("object") {
            match object.get("objectType").and_then(Value::as_str) {
                None | Some("Activity") => self.activity(object, !sub),
                Some("Agent" | "Group") => self.agent(object, !sub),
                Some("SubStatement") => self.body(object, true),
                _ => {}
            }
        }
        let Some(context) = s.get("context") else {
            return;
        };
        if let Some(r) = context.get("registration").and_then(Value::as_str) {
            self.add(registration_index_key(r), mask::REGISTRATION);
        }
        for key in ["instructor", "team"] {
            if let Some(a) = context.get(key) {
                self.agent(a, false);
            }
        }
        for (key, inner) in [("contextAgents", "agent"), ("contextGroups", "group")] {
            for item in context
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(a) = item.get(inner) {
                    self.agent(a, false);
                }
            }
        }
        if let Some(Value::Object(ca)) = context.get("contextActivities") {
            for v in ca.values() {
                match v {
                    Value::Array(items) => items.iter().for_each(|a| self.activity(a, false)),
                    a => self.activity(a, false),
                }
            }
        }
    }
}

/// The LRS returns every context activity list as an array, even when a single Activity
/// was sent.
fn context_activities_as_arrays(statement: &mut Map<String, Value>) {
    let Some(Value::Object(ca)) = statement
        .get_mut("context")
        .and_then(|c| c.get_mut("contextActivities"))
    else {
        return;
    };
    for v in ca.values_mut() {
        if v.is_object() {
            *v = Value::Array(vec![v.take()]);
        }
    }
}

/// A duration with its seconds cut to hundredths: the precision statement comparison uses.
fn truncated_duration(d: &str) -> String {
    match d.split_once('.') {
        Some((whole, fraction)) if d.ends_with('S') => {
            let digits: String = fraction.trim_end_matches('S').chars().take(2).collect();
            format!("{whole}.{digits:0<2}S")
        }
        _ => d.to_string(),
    }
}

/// Who is storing: the authority the LRS writes into statements, and the key that
/// `statements/read/mine` matches.
#[derive(Debug, Clone)]
pub struct Storer {
    pub authority: Value,
    pub key: String,
}

/// An id for a statement sent without one: a time-ordered UUID (version 7), so that the
/// LRS's own ids go to the end of the id index instead of a random page of it.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Sets the LRS's properties on a validated statement and computes what the writer needs.
pub fn prepare(
    mut statement: Value,
    storer: &Storer,
    version: Version,
    new_id: impl FnOnce() -> String,
) -> Prepared {
    let Value::Object(obj) = &mut statement else {
        // Validation only lets objects through.
        return prepare(json!({}), storer, version, new_id);
    };
    let (id, generated) = match obj.get("id").and_then(Value::as_str) {
        Some(id) => (id.to_ascii_lowercase(), false),
        None => (new_id(), true),
    };
    obj.insert("id".into(), Value::String(id.clone()));
    obj.remove("stored");
    context_activities_as_arrays(obj);
    if let Some(Value::Object(sub)) = obj.get_mut("object")
        && sub.get("objectType").and_then(Value::as_str) == Some("SubStatement")
    {
        context_activities_as_arrays(sub);
    }
    obj.insert("authority".into(), storer.authority.clone());
    if !obj.contains_key("version") {
        let v = match version {
            Version::V1 => "1.0.0",
            Version::V2 => "2.0.0",
        };
        obj.insert("version".into(), Value::String(v.into()));
    }
    let timestamp = obj
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(parse_timestamp)
        .map(|micros| micros.div_euclid(1000));
    let (target, voiding) = match obj.get("object") {
        Some(o) if o.get("objectType").and_then(Value::as_str) == Some("StatementRef") => (
            o.get("id")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase),
            obj.get("verb")
                .and_then(|v| v.get("id"))
                .and_then(Value::as_str)
                == Some(VOIDED_VERB),
        ),
        _ => (None, false),
    };
    let mut keys = statement_keys(&statement);
    keys.add(stored_by_index_key(&storer.key), mask::STORED_BY);
    let attachments = statement
        .get("attachments")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.get("sha2").and_then(Value::as_str))
        .map(str::to_ascii_lowercase)
        .collect();
    Prepared {
        json: json_text(&statement),
        activities: named_activities(&statement),
        new_id: generated,
        id,
        timestamp,
        target,
        voiding,
        keys: keys.0,
        key_ids: Vec::new(),
        attachments,
        value: statement,
    }
}

/// A value as compact JSON text, written straight into a buffer (`Value`'s `Display` goes
/// through the formatting machinery, several times slower on the ingest path).
pub fn json_text(value: &Value) -> String {
    // Serializing a `Value` cannot fail: its map keys are strings.
    serde_json::to_string(value).unwrap_or_default()
}

/// The index keys of a statement's content and authority.
fn statement_keys(statement: &Value) -> Keys {
    let mut keys = Keys(Vec::new());
    keys.body(statement, false);
    if let Some(a) = statement.get("authority") {
        keys.agent(a, false);
    }
    keys
}

/// Every index key of a stored statement's own content and authority, with its roles.
pub fn all_keys(statement: &Value) -> Vec<(String, i64)> {
    statement_keys(statement).0
}

/// The index keys a stored statement passes on to the statements whose StatementRef targets
/// it, each with the roles that pass (see [`mask::INHERITED`]).
pub fn inheritable_keys(statement: &Value) -> Vec<(String, i64)> {
    statement_keys(statement)
        .0
        .into_iter()
        .filter_map(|(k, m)| (m & mask::INHERITED != 0).then_some((k, m & mask::INHERITED)))
        .collect()
}

/// The Activities of a statement (its object, its SubStatement's, their context
/// activities), each with its definition as JSON text if it has one.
fn named_activities(statement: &Value) -> Vec<(String, Option<String>)> {
    fn collect<'a>(s: &'a Value, out: &mut Vec<&'a Value>) {
        if let Some(o) = s.get("object") {
            match o.get("objectType").and_then(Value::as_str) {
                None | Some("Activity") => out.push(o),
                Some("SubStatement") => collect(o, out),
                _ => {}
            }
        }
        if let Some(Value::Object(ca)) = s.pointer("/context/contextActivities") {
            for v in ca.values() {
                match v {
                    Value::Array(items) => out.extend(items.iter()),
                    a => out.push(a),
                }
            }
        }
    }
    let mut found = Vec::new();
    collect(statement, &mut found);
    found
        .into_iter()
        .filter_map(|a| {
            let id = a.get("id").and_then(Value::as_str)?;
            Some((id.to_string(), a.get("definition").map(json_text)))
        })
        .collect()
}

/// Whether two statements with the same id carry the same content: the LRS's own
/// properties (`stored`, `authority`, `version`) are ignored and timestamps are compared as
/// instants.
pub fn same_content(a: &Value, b: &Value) -> bool {
    fn strip(v: &Value) -> (Value, Option<i64>) {
        let mut v = v.clone();
        let mut stamp = None;
        if let Value::Object(o) = &mut v {
            for k in ["stored", "authority", "version"] {
                o.remove(k);
            }
            if let Some(t) = o.remove("timestamp") {
                stamp = t.as_str().and_then(parse_timestamp);
            }
            context_activities_as_arrays(o);
            if let Some(Value::Object(sub)) = o.get_mut("object") {
                context_activities_as_arrays(sub);
            }
            if let Some(d) = o
                .get_mut("result")
                .and_then(|r| r.get_mut("duration"))
                .filter(|d| d.is_string())
            {
                *d = Value::String(truncated_duration(d.as_str().unwrap_or_default()));
            }
        }
        (v, stamp)
    }
    let (a, ta) = strip(a);
    let (b, tb) = strip(b);
    a == b && (ta == tb || ta.is_none() || tb.is_none())
}

/// Formats milliseconds since the epoch as an xAPI timestamp (`…T…:…:….mmmZ`).
pub fn format_millis(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The stored JSON with `stored` (and the default `timestamp`) spliced in.
pub fn render(json: &str, stored_ms: i64, has_timestamp: bool) -> String {
    let stored = format_millis(stored_ms);
    let rest = json.strip_prefix('{').unwrap_or(json);
    let sep = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    if has_timestamp {
        format!("{{\"stored\":\"{stored}\"{sep}{rest}")
    } else {
        format!("{{\"stored\":\"{stored}\",\"timestamp\":\"{stored}\"{sep}{rest}")
    }
}

/// Removes `result.score` from a statement and its SubStatement: what a pupil reads of
/// their own statements (pupils never see raw scores).
pub fn without_scores(statement: &mut Value) {
    if let Some(result) = statement.get_mut("result").and_then(Value::as_object_mut) {
        result.remove("score");
    }
    if let Some(object) = statement.get_mut("object")
        && object.get("objectType").and_then(Value::as_str) == Some("SubStatement")
    {
        without_scores(object);
    }
}

/// The `ids` format: Agents, Groups, Activities and Verbs reduced to what identifies them.
pub fn to_ids(statement: &mut Value) {
    fn agent(v: &mut Value) {
        let Value::Object(o) = v else { return };
        let members = o.remove("member");
        let identified = agent_key(&Value::Object(o.clone())).is_some();
        o.retain(|k, _| {
            matches!(
                k.as_str(),
                "objectType" | "mbox" | "mbox_sha1sum" | "openid" | "account"
            )
        });
        if let (false, Some(Value::Array(mut m))) = (identified, members) {
            m.iter_mut().for_each(agent);
            o.insert("member".into(), Value::Array(m));
        }
    }
    fn activity(v: &mut Value) {
        if let Value::Object(o) = v {
            o.retain(|k, _| k == "id");
        }
    }
    fn body(s: &mut Value) {
        let Value::Object(o) = s else { return };
        if let Some(a) = o.get_mut("actor") {
            agent(a);
        }
        if let Some(Value::Object(v)) = o.get_mut("verb") {
            v.retain(|k, _| k == "id");
        }
        if let Some(object) = o.get_mut("object") {
            match object.get("objectType").and_then(Value::as_str) {
                None | Some("Activity") => activity(object),
                Some("Agent" | "Group") => agent(object),
                Some("SubStatement") => body(object),
                _ => {}
            }
        }
        if let Some(Value::Object(c)) = o.get_mut("context") {
            for k in ["instructor", "team"] {
                if let Some(a) = c.get_mut(k) {
                    agent(a);
                }
            }
            for (k, inner) in [("contextAgents", "agent"), ("contextGroups", "group")] {
                if let Some(Value::Array(items)) = c.get_mut(k) {
                    for item in items {
                        if let Some(a) = item.get_mut(inner) {
                            agent(a);
                        }
                    }
                }
            }
            if let Some(Value::Object(ca)) = c.get_mut("contextActivities") {
                for v in ca.values_mut() {
                    match v {
                        Value::Array(items) => items.iter_mut().for_each(activity),
                        a => activity(a),
                    }
                }
            }
        }
        if let Some(a) = o.get_mut("authority") {
            agent(a);
        }
    }
    body(statement);
}

/// Keeps, in every language map of the statement, only the entry that best matches the
/// reader's languages (the `canonical` format).
pub fn filter_languages(value: &mut Value, languages: &[String]) {
    const MAPS: &[&str] = &["display", "name", "description"];
    match value {
        Value::Object(o) => {
            for (k, v) in o.iter_mut() {
                if MAPS.contains(&k.as_str())
                    && let Value::Object(map) = v
                    && map.values().all(Value::is_string)
                {
                    pick_language(map, languages);
                } else if k != "extensions" {
                    filter_languages(v, languages);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| filter_languages(v, languages)),
        _ => {}
    }
}

fn pick_language(map: &mut Map<String, Value>, languages: &[String]) {
    if map.len() <= 1 {
        return;
    }
    let chosen = languages
        .iter()
        .find_map(|want| {
            map.keys()
                .find(|k| k.eq_ignore_ascii_case(want))
                .or_else(|| {
                    map.keys().find(|k| {
                        k.split('-').next().is_some_and(|p| {
                            p.eq_ignore_ascii_case(want.split('-').next().unwrap_or_default())
                        })
                    })
                })
                .cloned()
        })
        .or_else(|| map.keys().next().cloned());
    if let Some(keep) = chosen {
        map.retain(|k, _| *k == keep);
    }
}

/// Merges a newer Activity definition into the one the LRS keeps: language maps are
/// merged entry by entry, other properties replaced.
pub fn merge_definition(old: &mut Value, new: &Value) {
    let (Value::Object(o), Value::Object(n)) = (old, new) else {
        return;
    };
    for (k, v) in n {
        match (o.get_mut(k), v) {
            (Some(Value::Object(existing)), Value::Object(incoming))
                if k == "name" || k == "description" || k == "extensions" =>
            {
                for (lk, lv) in incoming {
                    existing.insert(lk.clone(), lv.clone());
                }
            }
            _ => {
                o.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storer() -> Storer {
        Storer {
            authority: json!({"objectType": "Agent", "name": "quiz",
                "account": {"homePage": "https://ecole.example/t/a/", "name": "k1"}}),
            key: "cred:k1".into(),
        }
    }

    #[test]
    fn prepare_sets_the_lrs_properties_and_index_keys() {
        let s = json!({
            "id": "EC531277-B57B-4C15-8D91-D292C5B2B8F7",
            "actor": {"objectType": "Group", "mbox": "mailto:team@example.org",
                      "member": [{"mbox": "mailto:a@example.org"}]},
            "verb": {"id": "http://example.org/v"},
            "object": {"objectType": "SubStatement", "actor": {"mbox": "mailto:b@example.org"},
                       "verb": {"id": "http://example.org/w"}, "object": {"id": "http://example.org/act"}},
            "context": {"registration": "AAAAAAAA-b57b-4c15-8d91-d292c5b2b8f7",
                        "contextActivities": {"parent": {"id": "http://example.org/p"}}},
            "stored": "2020-01-01T00:00:00Z"
        });
        let p = prepare(s, &storer(), Version::V1, || unreachable!());
        assert_eq!(p.id, "ec531277-b57b-4c15-8d91-d292c5b2b8f7");
        assert_eq!(p.value["version"], "1.0.0");
        assert!(p.value.get("stored").is_none());
        assert_eq!(p.value["authority"]["account"]["name"], "k1");
        let has = |k: &str, m: i64| p.keys.iter().any(|(key, mk)| key == k && mk & m != 0);
        assert!(has("a:mbox:mailto:team@example.org", mask::AGENT));
        assert!(has("a:mbox:mailto:a@example.org", mask::RELATED_AGENT));
        assert!(has("a:mbox:mailto:b@example.org", mask::RELATED_AGENT));
        assert!(!has("a:mbox:mailto:b@example.org", mask::AGENT));
        assert!(has("o:http://example.org/act", mask::RELATED_ACTIVITY));
        assert!(has("o:http://example.org/p", mask::RELATED_ACTIVITY));
        assert!(has(
            "r:aaaaaaaa-b57b-4c15-8d91-d292c5b2b8f7",
            mask::REGISTRATION
        ));
        assert!(has("v:http://example.org/w", mask::VERB));
        assert!(has("m:cred:k1", mask::STORED_BY));
    }

    #[test]
    fn render_splices_stored_and_the_default_timestamp() {
        let r: Value =
            serde_json::from_str(&render("{\"id\":\"x\"}", 1_700_000_000_123, false)).unwrap();
        assert_eq!(r["stored"], "2023-11-14T22:13:20.123Z");
        assert_eq!(r["timestamp"], r["stored"]);
        let r: Value = serde_json::from_str(&render("{}", 0, true)).unwrap();
        assert_eq!(r, json!({"stored": "1970-01-01T00:00:00.000Z"}));
    }

    #[test]
    fn same_content_ignores_lrs_properties_and_timestamp_spelling() {
        let a = json!({"actor": {"mbox": "mailto:a@b.c"}, "timestamp": "2026-01-01T10:00:00Z", "version": "1.0.0"});
        let b = json!({"actor": {"mbox": "mailto:a@b.c"}, "timestamp": "2026-01-01T11:00:00+01:00", "stored": "x"});
        assert!(same_content(&a, &b));
        let c = json!({"actor": {"mbox": "mailto:other@b.c"}, "timestamp": "2026-01-01T10:00:00Z"});
        assert!(!same_content(&a, &c));
        let d1 = json!({"result": {"duration": "P1DT12H36M0.1237S"}});
        let d2 = json!({"result": {"duration": "P1DT12H36M0.12S"}});
        let d3 = json!({"result": {"duration": "P1DT12H36M0.13S"}});
        assert!(same_content(&d1, &d2));
        assert!(!same_content(&d1, &d3));
    }

    #[test]
    fn ids_format_keeps_only_identifiers() {
        let mut s = json!({
            "actor": {"objectType": "Agent", "name": "Élève", "mbox": "mailto:a@b.c"},
            "verb": {"id": "http://v", "display": {"fr": "x"}},
            "object": {"id": "http://o", "definition": {"name": {"fr": "Quiz"}}},
            "context": {"team": {"objectType": "Group", "name": "anon", "member": [{"name": "n", "mbox": "mailto:m@b.c"}]}}
        });
        to_ids(&mut s);
        assert_eq!(
            s["actor"],
            json!({"objectType": "Agent", "mbox": "mailto:a@b.c"})
        );
        assert_eq!(s["verb"], json!({"id": "http://v"}));
        assert_eq!(s["object"], json!({"id": "http://o"}));
        let mut typed = json!({"object": {"objectType": "Activity", "id": "http://o"}});
        to_ids(&mut typed);
        assert_eq!(typed["object"], json!({"id": "http://o"}));
        assert_eq!(
            s["context"]["team"],
            json!({"objectType": "Group", "member": [{"mbox": "mailto:m@b.c"}]})
        );
    }

    #[test]
    fn canonical_keeps_one_language() {
        let mut s =
            json!({"verb": {"id": "http://v", "display": {"en-US": "did", "fr-FR": "a fait"}}});
        filter_languages(&mut s, &["fr".to_string()]);
        assert_eq!(s["verb"]["display"], json!({"fr-FR": "a fait"}));
    }
}
