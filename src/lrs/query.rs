//! Statement queries: the parameters of `GET statements` checked and turned into a
//! [`Filter`], and the opaque `more` token that carries a query to its next page.
//!
//! Must not: add the caller's own restrictions (`statements/read/mine`) to a token — they
//! are applied again from the caller's credentials on every page.

use base64::Engine;
use serde_json::Value;

use super::statement::{
    activity_index_key, agent_index_key, agent_key, mask, registration_index_key, verb_index_key,
};
use super::validate::{self, is_iri, is_uuid, parse_timestamp};
use super::{LrsError, Version};
use crate::store::lrs::Filter;

/// Most statements in one page, and the page size when the client asks for 0 or nothing.
pub const MAX_LIMIT: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Format {
    Exact,
    Ids,
    Canonical,
}

/// What `GET statements` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementQuery {
    One {
        id: String,
        voided: bool,
        format: Format,
        attachments: bool,
    },
    Many(Page),
}

/// A page of a statement list, as carried by a `more` token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Page {
    pub filter: Filter,
    pub format: Format,
    pub attachments: bool,
}

const PARAMS: &[&str] = &[
    "statementId",
    "voidedStatementId",
    "agent",
    "verb",
    "activity",
    "registration",
    "related_activities",
    "related_agents",
    "since",
    "until",
    "limit",
    "format",
    "attachments",
    "ascending",
];

fn flag(name: &str, value: Option<&str>) -> Result<bool, LrsError> {
    match value {
        None => Ok(false),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(LrsError::invalid(format!(
            "{name}: \"{other}\" must be true or false"
        ))),
    }
}

/// Milliseconds since the epoch of a `since`/`until` value (floored, which is exact for
/// comparisons with the whole milliseconds of `stored`).
fn instant(name: &str, value: &str) -> Result<i64, LrsError> {
    parse_timestamp(value)
        .map(|micros| micros.div_euclid(1000))
        .ok_or_else(|| {
            LrsError::invalid(format!(
                "{name}: \"{value}\" is not an ISO 8601 timestamp with a time zone"
            ))
        })
}

/// Parses an agent given as a JSON query parameter into its identifier.
pub fn agent_param(name: &str, raw: &str) -> Result<String, LrsError> {
    let value: Value = serde_json::from_str(raw)
        .map_err(|_| LrsError::invalid(format!("{name}: must be an Agent as JSON")))?;
    validate::agent_or_group(&value, name)?;
    agent_key(&value).ok_or_else(|| {
        LrsError::invalid(format!(
            "{name}: an anonymous Group cannot be used as a filter"
        ))
    })
}

/// Checks the query parameters of `GET statements`.
pub fn parse(params: &[(String, String)], _version: Version) -> Result<StatementQuery, LrsError> {
    let mut seen: Vec<&str> = Vec::new();
    for (k, _) in params {
        if !PARAMS.contains(&k.as_str()) {
            return Err(LrsError::invalid(format!(
                "{k} is not a parameter of the statements resource"
            )));
        }
        if seen.contains(&k.as_str()) {
            return Err(LrsError::invalid(format!("{k} is given twice")));
        }
        seen.push(k);
    }
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let format = match get("format") {
        None | Some("exact") => Format::Exact,
        Some("ids") => Format::Ids,
        Some("canonical") => Format::Canonical,
        Some(other) => {
            return Err(LrsError::invalid(format!(
                "format: \"{other}\" is not ids, exact or canonical"
            )));
        }
    };
    let attachments = flag("attachments", get("attachments"))?;
    let single = match (get("statementId"), get("voidedStatementId")) {
        (Some(_), Some(_)) => {
            return Err(LrsError::invalid(
                "statementId and voidedStatementId cannot be used together",
            ));
        }
        (Some(id), None) => Some((id, false)),
        (None, Some(id)) => Some((id, true)),
        (None, None) => None,
    };
    if let Some((id, voided)) = single {
        let name = if voided {
            "voidedStatementId"
        } else {
            "statementId"
        };
        if let Some((other, _)) = params.iter().find(|(k, _)| {
            !matches!(
                k.as_str(),
                "statementId" | "voidedStatementId" | "format" | "attachments"
            )
        }) {
            return Err(LrsError::invalid(format!(
                "{other} cannot be used with {name}"
            )));
        }
        if !is_uuid(id) {
            return Err(LrsError::invalid(format!("{name}: \"{id}\" is not a UUID")));
        }
        return Ok(StatementQuery::One {
            id: id.to_ascii_lowercase(),
            voided,
            format,
            attachments,
        });
    }
    let related_agents = flag("related_agents", get("related_agents"))?;
    let related_activities = flag("related_activities", get("related_activities"))?;
    let mut filter = Filter {
        ascending: flag("ascending", get("ascending"))?,
        ..Filter::default()
    };
    if let Some(a) = get("agent") {
        let m = if related_agents {
            mask::AGENT | mask::RELATED_AGENT
        } else {
            mask::AGENT
        };
        filter
            .keys
            .push((agent_index_key(&agent_param("agent", a)?), m));
    }
    if let Some(v) = get("verb") {
        if !is_iri(v) {
            return Err(LrsError::invalid(format!("verb: \"{v}\" is not an IRI")));
        }
        filter.keys.push((verb_index_key(v), mask::VERB));
    }
    if let Some(a) = get("activity") {
        if !is_iri(a) {
            return Err(LrsError::invalid(format!(
                "activity: \"{a}\" is not an IRI"
            )));
        }
        let m = if related_activities {
            mask::ACTIVITY | mask::RELATED_ACTIVITY
        } else {
            mask::ACTIVITY
        };
        filter.keys.push((activity_index_key(a), m));
    }
    if let Some(r) = get("registration") {
        if !is_uuid(r) {
            return Err(LrsError::invalid(format!(
                "registration: \"{r}\" is not a UUID"
            )));
        }
        filter
            .keys
            .push((registration_index_key(r), mask::REGISTRATION));
    }
    if let Some(s) = get("since") {
        filter.since = Some(instant("since", s)?);
    }
    if let Some(u) = get("until") {
        filter.until = Some(instant("until", u)?);
    }
    filter.limit = match get("limit") {
        None => MAX_LIMIT,
        Some(l) => match l.parse::<usize>() {
            Ok(0) => MAX_LIMIT,
            Ok(n) => n.min(MAX_LIMIT),
            Err(_) => {
                return Err(LrsError::invalid(format!(
                    "limit: \"{l}\" is not a non-negative integer"
                )));
            }
        },
    };
    Ok(StatementQuery::Many(Page {
        filter,
        format,
        attachments,
    }))
}

/// The opaque token of a `more` link.
pub fn encode_more(page: &Page) -> String {
    let json = serde_json::to_vec(page).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

pub fn decode_more(token: &str) -> Result<Page, LrsError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| serde_json::from_slice::<Page>(&b).ok())
        .filter(|p| p.filter.limit <= MAX_LIMIT)
        .ok_or_else(|| LrsError::invalid("this more link is not valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filters_become_index_conditions() {
        let q = parse(
            &p(&[
                ("agent", r#"{"mbox":"mailto:A@example.org"}"#),
                ("related_agents", "true"),
                ("verb", "http://example.org/v"),
                ("since", "2026-01-01T00:00:00.0015Z"),
                ("limit", "10"),
            ]),
            Version::V1,
        )
        .unwrap();
        let StatementQuery::Many(page) = q else {
            panic!("{q:?}")
        };
        assert_eq!(page.filter.limit, 10);
        assert_eq!(page.filter.since, Some(1_767_225_600_001));
        assert_eq!(
            page.filter.keys[0],
            (
                "a:mbox:mailto:a@example.org".to_string(),
                mask::AGENT | mask::RELATED_AGENT
            )
        );
        let back = decode_more(&encode_more(&page)).unwrap();
        assert_eq!(back, page);
    }

    #[test]
    fn bad_parameters_are_named() {
        for (pairs, needle) in [
            (vec![("statementId", "x")], "statementId"),
            (
                vec![
                    ("statementId", "ec531277-b57b-4c15-8d91-d292c5b2b8f7"),
                    ("verb", "http://v"),
                ],
                "verb",
            ),
            (vec![("unknown", "1")], "unknown"),
            (vec![("agent", "{\"name\":\"x\"}")], "agent"),
            (vec![("limit", "-1")], "limit"),
            (vec![("format", "full")], "format"),
            (vec![("since", "yesterday")], "since"),
        ] {
            let e = parse(&p(&pairs), Version::V2).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
        }
        assert!(decode_more("garbage").is_err());
    }
}
