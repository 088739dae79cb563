//! Statement validation: every MUST of the xAPI data model (1.0.3 and 2.0.0) that a
//! statement can break. The first problem found is reported with the JSON path of the
//! offending property (`statement.context.instructor.mbox: …`), so that a content author can
//! fix it; nothing is stored when validation fails.
//!
//! Must not: change the statement (that is [`super::statement`]'s job) or look anything up.

use serde_json::{Map, Value};

use super::Version;

/// A statement that breaks the data model: the message names the property.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

type Checked = Result<(), Invalid>;

fn fail<T>(path: &str, what: impl std::fmt::Display) -> Result<T, Invalid> {
    Err(Invalid(format!("{path}: {what}")))
}

const VOIDED: &str = "http://adlnet.gov/expapi/verbs/voided";

const INTERACTION_TYPES: &[&str] = &[
    "true-false",
    "choice",
    "fill-in",
    "long-fill-in",
    "matching",
    "performance",
    "sequencing",
    "likert",
    "numeric",
    "other",
];

/// Validates one statement as sent by a client (`stored` and `authority` may be present; the
/// LRS replaces them).
pub fn statement(value: &Value, version: Version) -> Checked {
    let path = "statement";
    let obj = object(value, path)?;
    allowed(
        obj,
        path,
        &[
            "id",
            "actor",
            "verb",
            "object",
            "result",
            "context",
            "timestamp",
            "stored",
            "authority",
            "version",
            "attachments",
        ],
    )?;
    if let Some(id) = obj.get("id") {
        uuid(id, "statement.id")?;
    }
    statement_body(obj, path, version, false)?;
    if let Some(v) = obj.get("stored") {
        timestamp(v, "statement.stored", version)?;
    }
    if let Some(v) = obj.get("authority") {
        authority(v, "statement.authority")?;
    }
    if let Some(v) = obj.get("version") {
        let s = string(v, "statement.version")?;
        if !version_string(s) {
            return fail(
                "statement.version",
                format!("\"{s}\" is not a 1.0.x or 2.0.x version"),
            );
        }
    }
    Ok(())
}

/// The version strings a statement may carry.
fn version_string(s: &str) -> bool {
    let rest = match s.strip_prefix("1.0").or_else(|| s.strip_prefix("2.0")) {
        Some(r) => r,
        None => return false,
    };
    rest.is_empty()
        || rest
            .strip_prefix('.')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// What statements and sub-statements share.
fn statement_body(obj: &Map<String, Value>, path: &str, version: Version, sub: bool) -> Checked {
    let actor_v = required(obj, "actor", path)?;
    agent_or_group(actor_v, &format!("{path}.actor"))?;
    let verb_v = required(obj, "verb", path)?;
    verb(verb_v, &format!("{path}.verb"))?;
    let object_v = required(obj, "object", path)?;
    let kind = statement_object(object_v, &format!("{path}.object"), version, sub)?;
    let verb_id = verb_v.get("id").and_then(Value::as_str).unwrap_or_default();
    if verb_id == VOIDED && kind != "StatementRef" {
        return fail(
            &format!("{path}.object"),
            "a voiding statement's object must be a StatementRef",
        );
    }
    if let Some(r) = obj.get("result") {
        result(r, &format!("{path}.result"))?;
    }
    if let Some(c) = obj.get("context") {
        context(c, &format!("{path}.context"), version, kind)?;
    }
    if let Some(t) = obj.get("timestamp") {
        timestamp(t, &format!("{path}.timestamp"), version)?;
    }
    if let Some(a) = obj.get("attachments") {
        attachments(a, &format!("{path}.attachments"))?;
    }
    Ok(())
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, Invalid> {
    match value {
        Value::Object(m) => Ok(m),
        _ => fail(path, "must be a JSON object"),
    }
}

fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str, Invalid> {
    match value {
        Value::String(s) => Ok(s),
        _ => fail(path, "must be a string"),
    }
}

fn boolean(value: &Value, path: &str) -> Checked {
    match value {
        Value::Bool(_) => Ok(()),
        _ => fail(path, "must be true or false"),
    }
}

fn number(value: &Value, path: &str) -> Result<f64, Invalid> {
    value
        .as_f64()
        .map_or_else(|| fail(path, "must be a number"), Ok)
}

fn required<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Value, Invalid> {
    match obj.get(key) {
        Some(v) => Ok(v),
        None => fail(&format!("{path}.{key}"), "is required"),
    }
}

fn allowed(obj: &Map<String, Value>, path: &str, keys: &[&str]) -> Checked {
    match obj.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(k) => fail(&format!("{path}.{k}"), "is not a property of this object"),
        None => Ok(()),
    }
}

/// A statement id or registration: a UUID in its hyphenated form, any variant.
pub fn uuid(value: &Value, path: &str) -> Checked {
    let s = string(value, path)?;
    if is_uuid(s) {
        Ok(())
    } else {
        fail(path, format!("\"{s}\" is not a UUID"))
    }
}

/// `8-4-4-4-12` hex digits.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// An absolute IRI: a scheme, a colon, and no spaces.
pub fn is_iri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn iri(value: &Value, path: &str) -> Checked {
    let s = string(value, path)?;
    if is_iri(s) {
        Ok(())
    } else {
        fail(path, format!("\"{s}\" is not an absolute IRI"))
    }
}

/// An IRL: an IRI that can be resolved (http, https and the like).
fn irl(value: &Value, path: &str) -> Checked {
    let s = string(value, path)?;
    if is_iri(s) && s.contains("://") {
        Ok(())
    } else {
        fail(path, format!("\"{s}\" is not a resolvable IRL"))
    }
}

/// RFC 5646 well-formedness, as far as a language map key needs it.
pub fn is_language_tag(tag: &str) -> bool {
    let subtags: Vec<&str> = tag.split('-').collect();
    if subtags
        .iter()
        .any(|s| s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return false;
    }
    let first = subtags[0];
    if first.eq_ignore_ascii_case("x") || first.eq_ignore_ascii_case("i") {
        return subtags.len() > 1;
    }
    (2..=8).contains(&first.len()) && first.bytes().all(|b| b.is_ascii_alphabetic())
}

fn language_map(value: &Value, path: &str) -> Checked {
    let obj = object(value, path)?;
    for (k, v) in obj {
        if !is_language_tag(k) {
            return fail(&format!("{path}.{k}"), "is not an RFC 5646 language tag");
        }
        string(v, &format!("{path}.{k}"))?;
    }
    Ok(())
}

fn extensions(value: &Value, path: &str) -> Checked {
    let obj = object(value, path)?;
    match obj.keys().find(|k| !is_iri(k)) {
        Some(k) => fail(&format!("{path}.{k}"), "extension keys must be IRIs"),
        None => Ok(()),
    }
}

fn mailto(value: &Value, path: &str) -> Checked {
    let s = string(value, path)?;
    let ok = s.strip_prefix("mailto:").is_some_and(|addr| {
        addr.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !addr.contains(' '))
    });
    if ok {
        Ok(())
    } else {
        fail(path, format!("\"{s}\" is not a mailto: address"))
    }
}

fn sha1_hex(value: &Value, path: &str) -> Checked {
    let s = string(value, path)?;
    if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        fail(path, "must be the 40 hex digits of a SHA-1")
    }
}

const IFIS: [&str; 4] = ["mbox", "mbox_sha1sum", "openid", "account"];

fn ifi_count(obj: &Map<String, Value>) -> usize {
    IFIS.iter().filter(|k| obj.contains_key(**k)).count()
}

fn ifi_values(obj: &Map<String, Value>, path: &str) -> Checked {
    if let Some(v) = obj.get("mbox") {
        mailto(v, &format!("{path}.mbox"))?;
    }
    if let Some(v) = obj.get("mbox_sha1sum") {
        sha1_hex(v, &format!("{path}.mbox_sha1sum"))?;
    }
    if let Some(v) = obj.get("openid") {
        iri(v, &format!("{path}.openid"))?;
    }
    if let Some(v) = obj.get("account") {
        account(v, &format!("{path}.account"))?;
    }
    Ok(())
}

fn account(value: &Value, path: &str) -> Checked {
    let obj = object(value, path)?;
    allowed(obj, path, &["homePage", "name"])?;
    irl(
        required(obj, "homePage", path)?,
        &format!("{path}.homePage"),
    )?;
    string(required(obj, "name", path)?, &format!("{path}.name"))?;
    Ok(())
}

/// An Agent (objectType absent or "Agent") with exactly one identifier.
pub fn agent(value: &Value, path: &str) -> Checked {
    let obj = object(value, path)?;
    allowed(
        obj,
        path,
        &[
            "objectType",
            "name",
            "mbox",
            "mbox_sha1sum",
            "openid",
            "account",
        ],
    )?;
    if let Some(t) = obj.get("objectType")
        && string(t, &format!("{path}.objectType"))? != "Agent"
    {
        return fail(&format!("{path}.objectType"), "must be \"Agent\"");
    }
    if let Some(n) = obj.get("name") {
        string(n, &format!("{path}.name"))?;
    }
    if ifi_count(obj) != 1 {
        return fail(
            path,
            "an Agent needs exactly one of mbox, mbox_sha1sum, openid or account",
        );
    }
    ifi_values(obj, path)
}

/// A Group: identified (one identifier, members optional) or anonymous (members required).
pub fn group(value: &Value, path: &str) -> Checked {
    let obj = object(value, path)?;
    allowed(
        obj,
        path,
        &[
            "objectType",
            "name",
            "member",
            "mbox",
            "mbox_sha1sum",
            "openid",
            "account",
        ],
    )?;
    if string(
        required(obj, "objectType", path)?,
        &format!("{path}.objectType"),
    )? != "Group"
    {
        return fail(&format!("{path}.objectType"), "must be \"Group\"");
    }
    if let Some(n) = obj.get("name") {
        string(n, &format!("{path}.name"))?;
    }
    match ifi_count(obj) {
        0 if !obj.contains_key("member") => {
            return fail(
                &format!("{path}.member"),
                "an anonymous Group must list its members",
            );
        }
        0 | 1 => {}
        _ => return fail(path, "a Group has at most one identifier"),
    }
    ifi_values(obj, path)?;
    if let Some(m) = obj.get("member") {
        let Value::Array(members) = m else {
            return fail(&format!("{path}.member"), "must be an array of Agents");
        };
        if ifi_count(obj) == 0 && members.is_empty() {
            return fail(
                &format!("{path}.member"),
                "an anonymous Group must list its members",
            );
        }
        for (i, a) in members.iter().enumerate() {
            agent(a, &format!("{path}.member[{i}]"))?;
        }
    }
    Ok(())
}

/// An Agent or a Group, told apart by `objectType`.
pub fn agent_or_group(value: &Value, path: &str) -> Checked {
    match value.get("objectType") {
        Some(Value::String(t)) if t == "Group" => group(value, path),
        _ => agent(value, path),
    }
}

fn authority(value: &Value, path: &str) -> Checked {
    agent_or_group(value, path)?;
    // A Group authority is OAuth's pair: an anonymous Group of exactly two Agents (the
    // application and the user).
    if value.get("objectType").and_then(Value::as_str) == Some("Group") {
        let obj = object(value, path)?;
        let members = obj
            .get("member")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if ifi_count(obj) != 0 || members != 2 {
            return fail(
                path,
                "a Group authority must be an anonymous Group of exactly two Agents",
            );
        }
    }
    Ok(())
}

fn verb(value: &Value, path: &str) -> Checked {
    let obj = object(value, path)?;
    allowed(obj, path, &["id", "display"])?;
    iri(required(obj, "id", path)?, &format!("{path}.id"))?;
    if let Some(d) = obj.get("display") {
        language_map(d, &format!("{path}.display"))?;
    }
    Ok(())
}

/// Checks the object of a statement and returns its type.
fn statement_object(
    value: &Value,
    path: &str,
    version: Version,
    sub: bool,
) -> Result<&'static str, Invalid> {
    let obj = object(value, path)?;
    let kind = match obj.get("objectType") {
        None => "Activity",
        Some(t) => match string(t, &format!("{path}.objectType"))? {
            "Activity" => "Activity",
            "Agent" => "Agent",
            "Group" => "Group",
            "StatementRef" => "StatementRef",
            "SubStatement" => "SubStatement",
            other => {
                return fail(
                    &format!("{path}.objectType"),
                    format!("\"{other}\" is not a statement object type"),
                );
            }
        },
    };
    match kind {
        "Activity" => activity(value, path)?,
        "Agent" => agent(value, path)?,
        "Group" => group(value, path)?,
        "StatementRef" => statement_ref(value, path)?,
        _ => {
            if sub {
                return fail(path, "a SubStatement cannot contain another SubStatement");
            }
            allowed(
                obj,
                path,
                &[
                    "objectType",
                    "actor",
                    "verb",
                    "object",
                    "result",
                    "context",
                    "timestamp",
                    "attachments",
                ],
            )?;
            statement_body(obj, path, version, true)?;
        }
    }
    Ok(kind)
}

fn statement_ref(value: &Value, path: &str) -> Checked {
    let obj = object(value, path)?;
    allowed(obj, path, &["objectType", "id"])?;
    if obj.get("objectType").and_then(Value::as_str) != Some("StatementRef") {
        return fail(&format!("{path}.objectType"), "must be \"StatementRef\"");
    }
    uuid(required(obj, "id", path)?, &format!("{path}.id"))
}

/// An Activity (objectType absent or "Activity").
pub fn activity(value: &Value, path: &str) -> Checked {
    let obj = object(value, path)?;
    allowed(obj, path, &["objectType", "id", "definition"])?;
    if let Some(t) = obj.get("objectType")
        && string(t, &format!("{path}.objectType"))? != "Activity"
    {
        return fail(&format!("{path}.objectType"), "must be \"Activity\"");
    }
    iri(required(obj, "id", path)?, &format!("{path}.id"))?;
    if let Some(d) = obj.get("definition") {
        definition(d, &format!("{path}.definition"))?;
    }
    Ok(())
}

fn definition(value: &Value, path: &str) -> Checked {
    let obj = object(value, path)?;
    allowed(
        obj,
        path,
        &[
            "name",
            "description",
            "type",
            "moreInfo",
            "extensions",
            "interactionType",
            "correctResponsesPattern",
            "choices",
            "scale",
            "source",
            "target",
            "steps",
        ],
    )?;
    for key in ["name", "description"] {
        if let Some(v) = obj.get(key) {
            language_map(v, &format!("{path}.{key}"))?;
        }
    }
    if let Some(v) = obj.get("type") {
        iri(v, &format!("{path}.type"))?;
    }
    if let Some(v) = obj.get("moreInfo") {
        irl(v, &format!("{path}.moreInfo"))?;
    }
    if let Some(v) = obj.get("extensions") {
        extensions(v, &format!("{path}.extensions"))?;
    }
    let interaction = match obj.get("interactionType") {
        Some(v) => {
            let s = string(v, &format!("{path}.interactionType"))?;
            if !INTERACTION_TYPES.contains(&s) {
                return fail(
                    &format!("{path}.interactionType"),
                    format!("\"{s}\" is not an interaction type"),
                );
            }
            Some(s)
        }
        None => None,
    };
    if let Some(v) = obj.get("correctResponsesPattern") {
        let p = format!("{path}.correctResponsesPattern");
        if interaction.is_none() {
            return fail(&p, "needs an interactionType");
        }
        let Value::Array(items) = v else {
            return fail(&p, "must be an array of strings");
        };
        for (i, item) in items.iter().enumerate() {
            string(item, &format!("{p}[{i}]"))?;
        }
    }
    for key in ["choices", "scale", "source", "target", "steps"] {
        let Some(v) = obj.get(key) else { continue };
        let p = format!("{path}.{key}");
        let fits = match key {
            "choices" => matches!(interaction, Some("choice" | "sequencing")),
            "scale" => interaction == Some("likert"),
            "source" | "target" => interaction == Some("matching"),
            _ => interaction == Some("performance"),
        };
        if !fits {
            return fail(
                &p,
                format!(
                    "is not allowed with interactionType {}",
                    interaction.unwrap_or("(none)")
                ),
            );
        }
        let Value::Array(items) = v else {
            return fail(&p, "must be an array of interaction components");
        };
        let mut seen = std::collections::HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            let c = object(item, &ip)?;
            allowed(c, &ip, &["id", "description"])?;
            let id = string(required(c, "id", &ip)?, &format!("{ip}.id"))?;
            if id.is_empty() || id.chars().any(char::is_whitespace) {
                return fail(&format!("{ip}.id"), "must be a non-empty id without spaces");
            }
            if !seen.insert(id) {
                return fail(&format!("{ip}.id"), "is used twice in the same list");
            }
            if let Some(d) = c.get("description") {
                language_map(d, &format!("{ip}.description"))?;
            }
        }
    }
    Ok(())
}

fn result(value: &Value, path: &str) -> Checked {
    let obj = object(value, path)?;
    allowed(
        obj,
        path,
        &[
            "score",
            "success",
            "completion",
            "response",
            "duration",
            "extensions",
        ],
    )?;
    if let Some(s) = obj.get("score") {
        score(s, &format!("{path}.score"))?;
    }
    for key in ["success", "completion"] {
        if let Some(v) = obj.get(key) {
            boolean(v, &format!("{path}.{key}"))?;
        }
    }
    if let Some(v) = obj.get("response") {
        string(v, &format!("{path}.response"))?;
    }
    if let Some(v) = obj.get("duration") {
        let s = string(v, &format!("{path}.duration"))?;
        if !is_duration(s) {
            return fail(
                &format!("{path}.duration"),
                format!("\"{s}\" is not an ISO 8601 duration"),
            );
        }
    }
    if let Some(v) = obj.get("extensions") {
        extensions(v, &format!("{path}.extensions"))?;
    }
    Ok(())
}

fn score(value: &Value, path: &str) -> Checked {
    let obj = object(value, path)?;
    allowed(obj, path, &["scaled", "raw", "min", "max"])?;
    let get = |k: &str| -> Result<Option<f64>, Invalid> {
        obj.get(k)
            .map(|v| number(v, &format!("{path}.{k}")))
            .transpose()
    };
    let (scaled, raw, min, max) = (get("scaled")?, get("raw")?, get("min")?, get("max")?);
    if let Some(s) = scaled
        && !(-1.0..=1.0).contains(&s)
    {
        return fail(&format!("{path}.scaled"), "must be between -1 and 1");
    }
    if let (Some(lo), Some(hi)) = (min, max)
        && lo >= hi
    {
        return fail(&format!("{path}.max"), "must be greater than min");
    }
    if let Some(r) = raw {
        if min.is_some_and(|lo| r < lo) {
            return fail(&format!("{path}.raw"), "is below min");
        }
        if max.is_some_and(|hi| r > hi) {
            return fail(&format!("{path}.raw"), "is above max");
        }
    }
    Ok(())
}

/// ISO 8601 durations: `PnYnMnDTnHnMnS` (the last number may have a fraction) or `PnW`.
pub fn is_duration(s: &str) -> bool {
    let Some(body) = s.strip_prefix('P') else {
        return false;
    };
    if body.is_empty() {
        return false;
    }
    if let Some(weeks) = body.strip_suffix('W') {
        return !weeks.is_empty() && weeks.bytes().all(|b| b.is_ascii_digit());
    }
    let (date, time) = match body.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (body, None),
    };
    if time == Some("") {
        return false;
    }
    let parts = |text: &str, units: &[u8]| -> Option<usize> {
        let mut count = 0;
        let mut number = String::new();
        let mut next_unit = 0;
        for c in text.chars() {
            if c.is_ascii_digit() || c == '.' || c == ',' {
                number.push(c);
                continue;
            }
            let pos = units[next_unit..].iter().position(|u| *u as char == c)?;
            if number.is_empty() || number.starts_with(['.', ',']) || number.ends_with(['.', ',']) {
                return None;
            }
            number.clear();
            next_unit += pos + 1;
            count += 1;
        }
        number.is_empty().then_some(count)
    };
    let Some(date_parts) = parts(date, b"YMD") else {
        return false;
    };
    let time_parts = match time {
        Some(t) => match parts(t, b"HMS") {
            Some(n) => n,
            None => return false,
        },
        None => 0,
    };
    if date_parts + time_parts == 0 {
        return false;
    }
    // Only the smallest unit given may carry a fraction.
    let numbers: Vec<&str> = body
        .split(|c: char| c.is_ascii_alphabetic())
        .filter(|p| !p.is_empty())
        .collect();
    numbers
        .iter()
        .rev()
        .skip(1)
        .all(|n| n.bytes().all(|b| b.is_ascii_digit()))
}

fn context(value: &Value, path: &str, version: Version, object_kind: &str) -> Checked {
    let obj = object(value, path)?;
    let mut keys = vec![
        "registration",
        "instructor",
        "team",
        "contextActivities",
        "revision",
        "platform",
        "language",
        "statement",
        "extensions",
    ];
    if version == Version::V2 {
        keys.extend(["contextAgents", "contextGroups"]);
    }
    allowed(obj, path, &keys)?;
    if let Some(v) = obj.get("registration") {
        uuid(v, &format!("{path}.registration"))?;
    }
    if let Some(v) = obj.get("instructor") {
        agent_or_group(v, &format!("{path}.instructor"))?;
    }
    if let Some(v) = obj.get("team") {
        group(v, &format!("{path}.team"))?;
    }
    if let Some(v) = obj.get("contextActivities") {
        let p = format!("{path}.contextActivities");
        let ca = object(v, &p)?;
        allowed(ca, &p, &["parent", "grouping", "category", "other"])?;
        for (k, v) in ca {
            let kp = format!("{p}.{k}");
            match v {
                Value::Array(items) => {
                    for (i, a) in items.iter().enumerate() {
                        activity(a, &format!("{kp}[{i}]"))?;
                    }
                }
                Value::Object(_) => activity(v, &kp)?,
                _ => return fail(&kp, "must be an Activity or an array of Activities"),
            }
        }
    }
    for key in ["revision", "platform"] {
        if let Some(v) = obj.get(key) {
            string(v, &format!("{path}.{key}"))?;
            if object_kind != "Activity" {
                return fail(
                    &format!("{path}.{key}"),
                    "is only allowed when the statement's object is an Activity",
                );
            }
        }
    }
    if let Some(v) = obj.get("language") {
        let s = string(v, &format!("{path}.language"))?;
        if !is_language_tag(s) {
            return fail(
                &format!("{path}.language"),
                format!("\"{s}\" is not an RFC 5646 language tag"),
            );
        }
    }
    if let Some(v) = obj.get("statement") {
        statement_ref(v, &format!("{path}.statement"))?;
    }
    if let Some(v) = obj.get("extensions") {
        extensions(v, &format!("{path}.extensions"))?;
    }
    for (key, kind, inner) in [
        ("contextAgents", "contextAgent", "agent"),
        ("contextGroups", "contextGroup", "group"),
    ] {
        let Some(v) = obj.get(key) else { continue };
        let p = format!("{path}.{key}");
        let Value::Array(items) = v else {
            return fail(&p, "must be an array");
        };
        for (i, item) in items.iter().enumerate() {
            let ip = format!("{p}[{i}]");
            let o = object(item, &ip)?;
            allowed(o, &ip, &["objectType", inner, "relevantTypes"])?;
            if string(required(o, "objectType", &ip)?, &format!("{ip}.objectType"))? != kind {
                return fail(&format!("{ip}.objectType"), format!("must be \"{kind}\""));
            }
            let who = required(o, inner, &ip)?;
            if inner == "agent" {
                agent(who, &format!("{ip}.agent"))?;
            } else {
                group(who, &format!("{ip}.group"))?;
            }
            if let Some(rt) = o.get("relevantTypes") {
                let rp = format!("{ip}.relevantTypes");
                let Value::Array(types) = rt else {
                    return fail(&rp, "must be an array of IRIs");
                };
                if types.is_empty() {
                    return fail(&rp, "must not be empty");
                }
                for (j, t) in types.iter().enumerate() {
                    iri(t, &format!("{rp}[{j}]"))?;
                }
            }
        }
    }
    Ok(())
}

/// Parses an xAPI timestamp (ISO 8601 with a time zone) into microseconds since the epoch.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    use time::format_description::well_known::{Iso8601, Rfc3339};
    let parsed = time::OffsetDateTime::parse(s, &Rfc3339)
        .or_else(|_| time::OffsetDateTime::parse(s, &Iso8601::DEFAULT))
        .ok()?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1000).ok()
}

fn timestamp(value: &Value, path: &str, version: Version) -> Checked {
    let s = string(value, path)?;
    if parse_timestamp(s).is_none() {
        return fail(
            path,
            format!("\"{s}\" is not an ISO 8601 date-time with a time zone"),
        );
    }
    let _ = version;
    if s.ends_with("-00:00") || s.ends_with("-0000") || s.ends_with("-00") {
        return fail(path, "UTC must be written Z or +00:00, not -00:00");
    }
    Ok(())
}

fn attachments(value: &Value, path: &str) -> Checked {
    let Value::Array(items) = value else {
        return fail(path, "must be an array of attachments");
    };
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let obj = object(item, &p)?;
        allowed(
            obj,
            &p,
            &[
                "usageType",
                "display",
                "description",
                "contentType",
                "length",
                "sha2",
                "fileUrl",
            ],
        )?;
        iri(required(obj, "usageType", &p)?, &format!("{p}.usageType"))?;
        language_map(required(obj, "display", &p)?, &format!("{p}.display"))?;
        if let Some(d) = obj.get("description") {
            language_map(d, &format!("{p}.description"))?;
        }
        let ct = string(
            required(obj, "contentType", &p)?,
            &format!("{p}.contentType"),
        )?;
        if !is_media_type(ct) {
            return fail(
                &format!("{p}.contentType"),
                format!("\"{ct}\" is not an Internet media type"),
            );
        }
        let length = required(obj, "length", &p)?;
        if !length.is_u64() {
            return fail(&format!("{p}.length"), "must be a non-negative integer");
        }
        let sha2 = string(required(obj, "sha2", &p)?, &format!("{p}.sha2"))?;
        if !matches!(sha2.len(), 56 | 64 | 96 | 128) || !sha2.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return fail(
                &format!("{p}.sha2"),
                "must be the hex digest of a SHA-2 hash",
            );
        }
        if let Some(u) = obj.get("fileUrl") {
            irl(u, &format!("{p}.fileUrl"))?;
        }
    }
    Ok(())
}

/// `type/subtype` with optional parameters.
pub fn is_media_type(s: &str) -> bool {
    let essence = s.split(';').next().unwrap_or_default().trim();
    essence.split_once('/').is_some_and(|(t, sub)| {
        let token = |x: &str| {
            !x.is_empty()
                && x.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        token(t) && token(sub)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "actor": {"mbox": "mailto:eleve@example.org", "name": "Élève"},
            "verb": {"id": "http://adlnet.gov/expapi/verbs/answered", "display": {"fr-FR": "a répondu"}},
            "object": {"id": "http://example.org/quiz/1", "definition": {"interactionType": "choice",
                "choices": [{"id": "a", "description": {"fr": "A"}}], "correctResponsesPattern": ["a"]}},
            "result": {"score": {"scaled": 0.5, "raw": 5, "min": 0, "max": 10}, "duration": "PT1M30.5S"},
            "context": {"registration": "ec531277-b57b-4c15-8d91-d292c5b2b8f7", "language": "fr-FR"},
            "timestamp": "2026-11-22T10:00:00.123Z"
        })
    }

    fn problem(patch: impl FnOnce(&mut Value), version: Version) -> Option<String> {
        let mut s = base();
        patch(&mut s);
        statement(&s, version).err().map(|e| e.0)
    }

    #[test]
    fn a_complete_statement_is_valid_in_both_versions() {
        assert_eq!(problem(|_| {}, Version::V1), None);
        assert_eq!(problem(|_| {}, Version::V2), None);
    }

    #[test]
    fn each_broken_property_is_named() {
        type Patch = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Patch, &str)> = vec![
            (Box::new(|s| s["id"] = json!("not-a-uuid")), "statement.id"),
            (
                Box::new(|s| s["actor"]["mbox"] = json!("eleve@example.org")),
                "statement.actor.mbox",
            ),
            (
                Box::new(|s| s["actor"]["openid"] = json!("http://a.example")),
                "statement.actor",
            ),
            (
                Box::new(|s| s["verb"]["id"] = json!("answered")),
                "statement.verb.id",
            ),
            (
                Box::new(|s| s["verb"]["display"] = json!({"not a tag": "x"})),
                "statement.verb.display.not a tag",
            ),
            (
                Box::new(|s| s["object"]["definition"]["interactionType"] = json!("essay")),
                "statement.object.definition.interactionType",
            ),
            (
                Box::new(|s| s["object"]["definition"]["scale"] = json!([])),
                "statement.object.definition.scale",
            ),
            (
                Box::new(|s| s["result"]["score"]["scaled"] = json!(1.5)),
                "statement.result.score.scaled",
            ),
            (
                Box::new(|s| s["result"]["score"]["raw"] = json!(11)),
                "statement.result.score.raw",
            ),
            (
                Box::new(|s| s["result"]["duration"] = json!("1 minute")),
                "statement.result.duration",
            ),
            (
                Box::new(|s| s["context"]["registration"] = json!(42)),
                "statement.context.registration",
            ),
            (
                Box::new(|s| s["timestamp"] = json!("2026-11-22T10:00:00")),
                "statement.timestamp",
            ),
            (Box::new(|s| s["extra"] = json!(1)), "statement.extra"),
            (
                Box::new(|s| s["version"] = json!("0.95")),
                "statement.version",
            ),
            (
                Box::new(|s| {
                    s["object"] = json!({"objectType": "StatementRef", "id": "ec531277-b57b-4c15-8d91-d292c5b2b8f7"});
                    s["context"]["platform"] = json!("web");
                }),
                "statement.context.platform",
            ),
        ];
        for (patch, path) in cases {
            let message = problem(patch, Version::V2).expect("must be refused");
            assert!(
                message.starts_with(&format!("{path}:")),
                "{message} should name {path}"
            );
        }
    }

    #[test]
    fn voiding_needs_a_statement_ref() {
        let message = problem(
            |s| s["verb"]["id"] = json!("http://adlnet.gov/expapi/verbs/voided"),
            Version::V1,
        )
        .expect("refused");
        assert!(message.contains("StatementRef"), "{message}");
    }

    #[test]
    fn context_agents_exist_only_in_2_0() {
        let patch = |s: &mut Value| {
            s["context"]["contextAgents"] = json!([{"objectType": "contextAgent",
                "agent": {"mbox": "mailto:prof@example.org"}, "relevantTypes": ["http://example.org/t"]}]);
        };
        assert!(problem(patch, Version::V1).is_some());
        assert_eq!(problem(patch, Version::V2), None);
    }

    #[test]
    fn durations_and_timestamps() {
        for ok in ["PT1H", "P1Y2M3DT4H5M6.7S", "P4W", "PT0.5S", "P1D"] {
            assert!(is_duration(ok), "{ok}");
        }
        for bad in ["P", "PT", "1H", "PT1.5H30M", "P1H", "PT1S2M"] {
            assert!(!is_duration(bad), "{bad}");
        }
        assert!(parse_timestamp("2026-11-22T10:00:00+01:00").is_some());
        assert!(parse_timestamp("2026-11-22T10:00:00").is_none());
        assert!(
            problem(
                |s| s["timestamp"] = json!("2026-11-22T10:00:00-00:00"),
                Version::V2
            )
            .is_some()
        );
    }
}
