//! The tenant's learning records in the browser: the statement browser for teachers and
//! admins (filter by pupil, verb, activity and period, newest first, in pages) and a pupil's
//! own activity history. Both read through [`lrs::member_scope`], the same rule as the
//! xAPI endpoint: a teacher sees statements about the pupils of their classes, a pupil
//! statements about themselves, and never a raw score.

use std::collections::HashMap;

use axum::response::{IntoResponse, Response};
use maud::{Markup, html};
use serde_json::Value;

use super::extract::Query;
use super::i18n::Lang;
use super::layout;
use super::users::viewer;
use crate::auth::{Member, Staff, StudentOnly};
use crate::error::ApiError;
use crate::lrs::statement::{self, mask};
use crate::lrs::{self, ReadScope};
use crate::store::lrs::{self as sql, Filter, StoredStatement};
use crate::store::tenant::{self as users_sql, User};
use crate::tenant::{Role, TenantHandle};

/// Statements per page.
const PAGE: usize = 50;
/// Activities offered as suggestions in the browser's activity field.
const SUGGESTED_ACTIVITIES: usize = 300;

#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct BrowseParams {
    /// A pupil's user id.
    #[serde(default, skip_serializing_if = "is_blank")]
    pupil: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    verb: Option<String>,
    #[serde(default, skip_serializing_if = "is_blank")]
    activity: Option<String>,
    /// First day, `YYYY-MM-DD` (UTC).
    #[serde(default, skip_serializing_if = "is_blank")]
    from: Option<String>,
    /// Last day, `YYYY-MM-DD` (UTC), included.
    #[serde(default, skip_serializing_if = "is_blank")]
    to: Option<String>,
    /// Continue with statements stored before this one (its `seq`).
    #[serde(default, skip_serializing)]
    before: Option<i64>,
}

fn is_blank(v: &Option<String>) -> bool {
    v.as_deref().is_none_or(|s| s.trim().is_empty())
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// Milliseconds at 00:00 UTC of a `YYYY-MM-DD` day.
fn day_start(field: &str, day: &str) -> Result<i64, ApiError> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(day, &format).map_err(|_| {
        ApiError::bad_request(
            "invalid_date",
            format!("{field}: `{day}` is not a YYYY-MM-DD date"),
        )
    })?;
    Ok(date.midnight().assume_utc().unix_timestamp() * 1000)
}

/// What a page of statements shows, read in one go.
struct Found {
    rows: Vec<StoredStatement>,
    pupils: Vec<User>,
    /// Agent name → the user's name, for every user this reader may name.
    names: HashMap<String, String>,
    verbs: Vec<String>,
    activities: Vec<(String, Value)>,
}

/// One page of what `user` may read, newest first, before statement `before`.
async fn page_filter(
    tenant: &TenantHandle,
    user: &User,
    before: Option<i64>,
) -> Result<Filter, ApiError> {
    let mut filter = Filter {
        limit: PAGE,
        after: before,
        ..Filter::default()
    };
    if let ReadScope::AnyOf(keys) = lrs::member_scope(tenant, user).await? {
        filter.any_of = keys;
    }
    Ok(filter)
}

pub async fn browser(
    lang: Lang,
    m: Member<Staff>,
    Query(params): Query<BrowseParams>,
) -> Result<Response, ApiError> {
    let mut filter = page_filter(&m.tenant, &m.user, params.before).await?;
    if let Some(verb) = given(&params.verb) {
        filter
            .keys
            .push((statement::verb_index_key(verb), mask::VERB));
    }
    if let Some(activity) = given(&params.activity) {
        filter
            .keys
            .push((statement::activity_index_key(activity), mask::ACTIVITY));
    }
    if let Some(from) = given(&params.from) {
        filter.since = Some(day_start("from", from)? - 1);
    }
    if let Some(to) = given(&params.to) {
        filter.until = Some(day_start("to", to)? + 86_400_000 - 1);
    }
    let pupil: Option<i64> = match given(&params.pupil) {
        Some(p) => Some(p.parse().map_err(|_| {
            ApiError::bad_request("invalid_pupil", format!("pupil: `{p}` is not a user id"))
        })?),
        None => None,
    };
    let (user_id, role) = (m.user.id, m.user.role);
    let home = m.tenant.home_page.clone();
    let found = m
        .tenant
        .db
        .read(move |c| {
            let pupils = match role {
                Role::Admin => users_sql::users(c, Some(Role::Student))?,
                _ => users_sql::pupils_of(c, user_id)?,
            };
            let named = match role {
                Role::Admin => users_sql::users(c, None)?,
                _ => pupils.clone(),
            };
            if let Some(id) = pupil {
                // A pupil this reader may not see is an empty page, as for an unknown one.
                let key = match pupils.iter().find(|p| p.id == id) {
                    Some(p) => lrs::learner_key(&home, &p.agent_name),
                    None => (statement::agent_index_key("none"), mask::AGENT),
                };
                filter.keys.push(key);
            }
            Ok(Found {
                rows: sql::query(c, &filter)?,
                names: named
                    .iter()
                    .map(|u| (u.agent_name.clone(), u.display_name()))
                    .collect(),
                pupils,
                verbs: sql::known_verbs(c)?,
                activities: sql::activities(c, SUGGESTED_ACTIVITIES)?,
            })
        })
        .await?;
    let base = format!("/t/{}/statements", m.tenant.slug);
    let body = html! {
        form.filters method="get" action=(base) {
            div.field {
                label for="pupil" { (lang.t("browse.pupil")) }
                select id="pupil" name="pupil" {
                    option value="" { (lang.t("browse.all")) }
                    @for p in &found.pupils {
                        option value=(p.id) selected[pupil == Some(p.id)] {
                            (p.family_name) " " (p.given_name)
                        }
                    }
                }
            }
            div.field {
                label for="verb" { (lang.t("browse.verb")) }
                select id="verb" name="verb" {
                    option value="" { (lang.t("browse.all")) }
                    @for v in &found.verbs {
                        option value=(v) selected[given(&params.verb) == Some(v.as_str())] { (last_segment(v)) }
                    }
                }
            }
            div.field {
                label for="activity" { (lang.t("browse.activity")) }
                input id="activity" name="activity" type="url" list="activities"
                    value=(given(&params.activity).unwrap_or_default());
                datalist id="activities" {
                    @for (id, def) in &found.activities {
                        option value=(id) { (language_map(def.get("name"), lang).unwrap_or_default()) }
                    }
                }
            }
            div.field {
                label for="from" { (lang.t("browse.from")) }
                input id="from" name="from" type="date" value=(given(&params.from).unwrap_or_default());
            }
            div.field {
                label for="to" { (lang.t("browse.to")) }
                input id="to" name="to" type="date" value=(given(&params.to).unwrap_or_default());
            }
            button type="submit" { (lang.t("browse.filter")) }
        }
        (statement_table(lang, &m.tenant, &found))
        (pager(lang, &base, &params, &found.rows))
    };
    let name = m.user.display_name();
    let v = viewer(lang, &m.user, &m.tenant.slug, &m.csrf, &name);
    Ok(layout::page(lang, lang.t("browse.title"), Some(v), body).into_response())
}

fn statement_table(lang: Lang, tenant: &TenantHandle, found: &Found) -> Markup {
    let shown = &found.rows[..found.rows.len().min(PAGE)];
    html! {
        @if shown.is_empty() {
            p { (lang.t("browse.none")) }
        } @else {
            table.statements {
                thead { tr {
                    th { (lang.t("browse.when")) }
                    th { (lang.t("browse.who")) }
                    th { (lang.t("browse.verb")) }
                    th { (lang.t("browse.activity")) }
                    th { (lang.t("browse.result")) }
                } }
                tbody {
                    @for row in shown {
                        @let s = Summary::of(row, lang, &tenant.home_page, &found.names);
                        tr {
                            td { time datetime=(s.when) { (short_time(&s.when)) } }
                            td { (s.who) }
                            td { span title=(s.verb_id) { (s.verb) } }
                            td {
                                span title=(s.object_id) { (s.object) }
                                details {
                                    summary { (lang.t("browse.json")) }
                                    pre { (s.pretty) }
                                }
                            }
                            td { (s.result(lang, true)) }
                        }
                    }
                }
            }
        }
    }
}

/// Links to the newest page and to the next (older) one.
fn pager(lang: Lang, base: &str, params: &BrowseParams, rows: &[StoredStatement]) -> Markup {
    let query = serde_urlencoded::to_string(params).unwrap_or_default();
    let sep = if query.is_empty() { "" } else { "&" };
    let older = (rows.len() > PAGE).then(|| rows[PAGE - 1].seq);
    html! {
        nav.pager {
            @if params.before.is_some() {
                a href={ (base) "?" (query) } { (lang.t("browse.newest")) }
            }
            @if let Some(seq) = older {
                " "
                a href={ (base) "?" (query) (sep) "before=" (seq) } rel="next" { (lang.t("browse.older")) }
            }
        }
    }
}

#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct HistoryParams {
    #[serde(default, skip_serializing)]
    before: Option<i64>,
}

/// A pupil's own activity: what they did, when, and whether it was completed or passed;
/// never a score.
pub async fn history(
    lang: Lang,
    m: Member<StudentOnly>,
    Query(params): Query<HistoryParams>,
) -> Result<Response, ApiError> {
    let filter = page_filter(&m.tenant, &m.user, params.before).await?;
    let rows = m.tenant.db.read(move |c| sql::query(c, &filter)).await?;
    let names = HashMap::from([(m.user.agent_name.clone(), lang.t("history.me").to_string())]);
    let shown = &rows[..rows.len().min(PAGE)];
    let base = format!("/t/{}/history", m.tenant.slug);
    let body = html! {
        @if shown.is_empty() { p { (lang.t("history.none")) } }
        ol.history {
            @for row in shown {
                @let s = Summary::of(row, lang, &m.tenant.home_page, &names);
                li {
                    time datetime=(s.when) { (short_time(&s.when)) } " · "
                    strong { (s.verb) } " " (s.object)
                    @let r = s.result(lang, false);
                    @if !r.0.is_empty() { " · " (r) }
                }
            }
        }
        nav.pager {
            @if params.before.is_some() { a href=(base) { (lang.t("browse.newest")) } }
            @if rows.len() > PAGE {
                " "
                a href={ (base) "?before=" (shown[PAGE - 1].seq) } rel="next" { (lang.t("browse.older")) }
            }
        }
    };
    let name = m.user.display_name();
    let v = viewer(lang, &m.user, &m.tenant.slug, &m.csrf, &name);
    Ok(layout::page(lang, lang.t("history.title"), Some(v), body).into_response())
}

/// One statement as a line of the browser or the history.
struct Summary {
    when: String,
    who: String,
    verb: String,
    verb_id: String,
    object: String,
    object_id: String,
    result: Value,
    pretty: String,
}

impl Summary {
    fn of(
        row: &StoredStatement,
        lang: Lang,
        home: &str,
        names: &HashMap<String, String>,
    ) -> Summary {
        let rendered = statement::render(&row.json, row.stored, row.has_timestamp);
        let value: Value = serde_json::from_str(&rendered).unwrap_or(Value::Null);
        let verb = &value["verb"];
        let verb_id = verb["id"].as_str().unwrap_or_default().to_string();
        let object = &value["object"];
        let (object_label, object_id) = match object["objectType"].as_str() {
            None | Some("Activity") => (
                language_map(object["definition"].get("name"), lang),
                object["id"].as_str().unwrap_or_default().to_string(),
            ),
            Some("Agent") | Some("Group") => {
                (Some(agent_label(object, home, names)), String::new())
            }
            Some(other) => (
                Some(other.to_string()),
                object["id"].as_str().unwrap_or_default().to_string(),
            ),
        };
        Summary {
            when: value["timestamp"].as_str().unwrap_or_default().to_string(),
            who: agent_label(&value["actor"], home, names),
            verb: language_map(verb.get("display"), lang)
                .unwrap_or_else(|| last_segment(&verb_id).to_string()),
            object: object_label.unwrap_or_else(|| object_id.clone()),
            object_id,
            result: value.get("result").cloned().unwrap_or(Value::Null),
            pretty: serde_json::to_string_pretty(&value).unwrap_or(rendered),
            verb_id,
        }
    }

    /// Success and completion, and the score when `scores` (staff only).
    fn result(&self, lang: Lang, scores: bool) -> Markup {
        let r = &self.result;
        let mut parts: Vec<String> = Vec::new();
        if scores {
            if let Some(scaled) = r["score"]["scaled"].as_f64() {
                parts.push(format!("{:.0} %", scaled * 100.0));
            } else if let (Some(raw), Some(max)) =
                (r["score"]["raw"].as_f64(), r["score"]["max"].as_f64())
            {
                parts.push(format!("{raw}/{max}"));
            }
        }
        match r["success"].as_bool() {
            Some(true) => parts.push(lang.t("browse.passed").into()),
            Some(false) => parts.push(lang.t("browse.failed").into()),
            None => {}
        }
        if r["completion"].as_bool() == Some(true) {
            parts.push(lang.t("browse.completed").into());
        }
        html! { (parts.join(" · ")) }
    }
}

/// A user's name when the agent is one of the tenant's accounts this reader may name, else
/// the name the statement gives, else its identifier.
fn agent_label(agent: &Value, home: &str, names: &HashMap<String, String>) -> String {
    let account = &agent["account"];
    if account["homePage"].as_str() == Some(home)
        && let Some(name) = account["name"].as_str().and_then(|n| names.get(n))
    {
        return name.clone();
    }
    if let Some(name) = agent["name"].as_str() {
        return name.to_string();
    }
    statement::agent_key(agent).unwrap_or_else(|| "—".into())
}

/// The entry of a language map for `lang`, else English, else any.
fn language_map(map: Option<&Value>, lang: Lang) -> Option<String> {
    let map = map?.as_object()?;
    let starts = |code: &str| {
        map.iter()
            .find(|(k, _)| k.to_ascii_lowercase().starts_with(code))
            .and_then(|(_, v)| v.as_str())
    };
    starts(lang.code())
        .or_else(|| starts("en"))
        .or_else(|| map.values().find_map(Value::as_str))
        .map(str::to_string)
}

/// `completed` for `http://adlnet.gov/expapi/verbs/completed`.
fn last_segment(iri: &str) -> &str {
    iri.trim_end_matches('/')
        .rsplit(['/', '#', ':'])
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(iri)
}

/// `2026-11-22 09:31` from an ISO 8601 timestamp.
fn short_time(iso: &str) -> String {
    iso.get(..16).unwrap_or(iso).replacen('T', " ", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_prefer_the_readers_language() {
        let map = serde_json::json!({"en-US": "completed", "fr-FR": "a terminé"});
        assert_eq!(
            language_map(Some(&map), Lang::Fr).as_deref(),
            Some("a terminé")
        );
        assert_eq!(
            language_map(Some(&map), Lang::En).as_deref(),
            Some("completed")
        );
        let only_de = serde_json::json!({"de": "abgeschlossen"});
        assert_eq!(
            language_map(Some(&only_de), Lang::Fr).as_deref(),
            Some("abgeschlossen")
        );
        assert_eq!(
            last_segment("http://adlnet.gov/expapi/verbs/completed"),
            "completed"
        );
        assert_eq!(
            last_segment("https://w3id.org/xapi/dod-isd/verbs/answered/"),
            "answered"
        );
        assert_eq!(short_time("2026-11-22T09:31:02.123Z"), "2026-11-22 09:31");
    }
}
