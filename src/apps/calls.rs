//! The `ceredis:app` host interfaces. Every call acts for the request's user, in the
//! request's tenant, for the request's app ([`CallCtx`]): nothing an app passes can name
//! another. A call whose capability was not granted returns `not-granted` and does nothing.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::Capability;
use super::runtime::AppCtx;
use crate::competency::{Actor, NewEvidence, Source};
use crate::http::i18n::Lang;
use crate::lrs::{self, statement};
use crate::store::StoreError;
use crate::store::apps as sql;
use crate::store::lrs::Filter;
use crate::store::tenant::User;
use crate::tenant::{Role, TenantHandle};

wasmtime::component::bindgen!({
    path: "plugins/wit",
    world: "ceredis:app/app",
    imports: { default: async },
});

use self::ceredis::app::types::{Error, ErrorCode};
use self::ceredis::app::{competencies, identity, kv, log, types, xapi};

/// Who and what one request's host calls act for.
#[derive(Debug, Clone)]
pub struct CallCtx {
    pub tenant: TenantHandle,
    pub user: User,
    pub app: String,
    pub app_title: String,
    pub grants: BTreeSet<Capability>,
    pub storage_quota: i64,
    /// The user's id for this app ([`app_pseudonym`]).
    pub pseudonym: String,
    pub lang: Lang,
    pub log_lines: u32,
    pub log_dropped: u32,
}

pub use crate::store::apps::user_pseudonym as app_pseudonym;

pub const MAX_KEY: usize = 256;
pub const MAX_VALUE: usize = 64 * 1024;
pub const MAX_STATEMENTS: usize = 50;
pub const MAX_LOG_LINES: u32 = 100;
pub const MAX_LOG_LINE: usize = 1024;

fn error(code: ErrorCode, message: impl Into<String>) -> Error {
    Error {
        code,
        message: message.into(),
    }
}

fn store_error(e: StoreError) -> Error {
    tracing::warn!(error = %e, "app host call failed in storage");
    error(
        ErrorCode::Unavailable,
        "the school's storage could not serve this call",
    )
}

impl CallCtx {
    fn need(&self, capability: Capability) -> Result<(), Error> {
        if self.grants.contains(&capability) {
            Ok(())
        } else {
            Err(error(
                ErrorCode::NotGranted,
                format!(
                    "this app was not granted `{}` at install",
                    capability.code()
                ),
            ))
        }
    }
}

impl types::Host for AppCtx {}

impl identity::Host for AppCtx {
    async fn current_role(&mut self) -> identity::Role {
        match self.call.user.role {
            Role::Admin => identity::Role::Admin,
            Role::Teacher => identity::Role::Teacher,
            Role::Student => identity::Role::Student,
            Role::Researcher => identity::Role::Researcher,
        }
    }

    async fn pseudonym(&mut self) -> String {
        self.call.pseudonym.clone()
    }

    async fn display_name(&mut self) -> Result<String, Error> {
        self.call.need(Capability::Name)?;
        Ok(self.call.user.display_name())
    }

    async fn language(&mut self) -> String {
        self.call.lang.code().to_string()
    }
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(error(
            ErrorCode::Invalid,
            format!("a key is 1 to {MAX_KEY} bytes"),
        ));
    }
    Ok(())
}

impl kv::Host for AppCtx {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, Error> {
        self.call.need(Capability::Storage)?;
        check_key(&key)?;
        let app = self.call.app.clone();
        self.call
            .tenant
            .db
            .read(move |c| sql::kv_get(c, &app, &key))
            .await
            .map_err(store_error)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), Error> {
        self.call.need(Capability::Storage)?;
        check_key(&key)?;
        if value.len() > MAX_VALUE {
            return Err(error(
                ErrorCode::Invalid,
                format!("a value is at most {MAX_VALUE} bytes"),
            ));
        }
        let app = self.call.app.clone();
        let quota = self.call.storage_quota;
        let stored = self
            .call
            .tenant
            .db
            .write(move |c| sql::kv_set(c, &app, &key, &value, quota))
            .await
            .map_err(store_error)?;
        if stored {
            Ok(())
        } else {
            Err(error(
                ErrorCode::QuotaExceeded,
                format!("this app may store at most {quota} bytes in this school"),
            ))
        }
    }

    async fn delete(&mut self, key: String) -> Result<bool, Error> {
        self.call.need(Capability::Storage)?;
        check_key(&key)?;
        let app = self.call.app.clone();
        self.call
            .tenant
            .db
            .write(move |c| sql::kv_delete(c, &app, &key))
            .await
            .map_err(store_error)
    }

    async fn list_keys(&mut self, prefix: String, limit: u32) -> Result<Vec<String>, Error> {
        self.call.need(Capability::Storage)?;
        if prefix.len() > MAX_KEY || limit > 1000 {
            return Err(error(
                ErrorCode::Invalid,
                "a prefix is at most 256 bytes and a limit at most 1000",
            ));
        }
        let app = self.call.app.clone();
        self.call
            .tenant
            .db
            .read(move |c| sql::kv_keys(c, &app, &prefix, limit as i64))
            .await
            .map_err(store_error)
    }
}

impl CallCtx {
    /// The app's authority on the statements it records for a user: the app and the user
    /// together (xAPI's two-member Group authority).
    fn storer(&self) -> statement::Storer {
        let home = &*self.tenant.home_page;
        statement::Storer {
            authority: json!({
                "objectType": "Group",
                "member": [
                    {"objectType": "Agent", "name": self.app_title,
                     "account": {"homePage": home, "name": format!("app:{}", self.app)}},
                    lrs::learner(home, &self.user.agent_name),
                ]
            }),
            key: format!(
                "urn:ceredis:tenant:{}:app:{}:user:{}",
                self.tenant.slug, self.app, self.user.id
            ),
        }
    }
}

impl xapi::Host for AppCtx {
    async fn record_statements(&mut self, statements: String) -> Result<Vec<String>, Error> {
        self.call.need(Capability::XapiRecord)?;
        let parsed: Value = serde_json::from_str(&statements)
            .map_err(|e| error(ErrorCode::Invalid, format!("statements: not JSON ({e})")))?;
        let list = match parsed {
            Value::Array(list) => list,
            one @ Value::Object(_) => vec![one],
            _ => {
                return Err(error(
                    ErrorCode::Invalid,
                    "statements: a JSON array or one statement object",
                ));
            }
        };
        if list.is_empty() || list.len() > MAX_STATEMENTS {
            return Err(error(
                ErrorCode::Invalid,
                format!("statements: 1 to {MAX_STATEMENTS} at a time"),
            ));
        }
        let me = lrs::learner(&self.call.tenant.home_page, &self.call.user.agent_name);
        let mut out = Vec::with_capacity(list.len());
        for (i, mut s) in list.into_iter().enumerate() {
            let Some(obj) = s.as_object_mut() else {
                return Err(error(
                    ErrorCode::Invalid,
                    format!("statement {i}: not an object"),
                ));
            };
            match obj.get("actor") {
                None => {
                    obj.insert("actor".into(), me.clone());
                }
                Some(actor) if same_agent(actor, &me) => {
                    obj.insert("actor".into(), me.clone());
                }
                Some(_) => {
                    return Err(error(
                        ErrorCode::Invalid,
                        format!(
                            "statement {i}: an app records statements only as the signed-in user; leave `actor` out"
                        ),
                    ));
                }
            }
            if obj.contains_key("authority") {
                return Err(error(
                    ErrorCode::Invalid,
                    format!("statement {i}: the host sets `authority`; leave it out"),
                ));
            }
            out.push(s);
        }
        let storer = self.call.storer();
        lrs::record(
            &self.call.tenant,
            out,
            &storer,
            Actor::User(self.call.user.id),
        )
        .await
        .map_err(|e| match e {
            lrs::LrsError::Store(e) => store_error(e),
            other => error(ErrorCode::Invalid, other.to_string()),
        })
    }

    async fn my_statements(
        &mut self,
        activity: Option<String>,
        limit: u32,
    ) -> Result<String, Error> {
        self.call.need(Capability::XapiReadMine)?;
        if limit == 0 || limit > 100 {
            return Err(error(ErrorCode::Invalid, "limit: 1 to 100"));
        }
        let (key, mask) = lrs::learner_key(&self.call.tenant.home_page, &self.call.user.agent_name);
        let mut filter = Filter {
            limit: limit as usize,
            keys: vec![(key, mask)],
            ..Filter::default()
        };
        if let Some(a) = activity {
            filter
                .keys
                .push((statement::activity_index_key(&a), statement::mask::ACTIVITY));
        }
        let rows = self
            .call
            .tenant
            .db
            .read(move |c| crate::store::lrs::query(c, &filter))
            .await
            .map_err(store_error)?;
        let pupil = self.call.user.role == Role::Student;
        let list: Vec<Value> = rows
            .iter()
            .take(limit as usize)
            .filter_map(|r| {
                let text = statement::render(&r.json, r.stored, r.has_timestamp);
                let mut v: Value = serde_json::from_str(&text).ok()?;
                if pupil {
                    statement::without_scores(&mut v);
                }
                Some(v)
            })
            .collect();
        Ok(Value::Array(list).to_string())
    }
}

/// Whether `actor` is the user's own account (the only actor an app may name).
fn same_agent(actor: &Value, me: &Value) -> bool {
    actor.get("account") == me.get("account")
        && actor.as_object().is_some_and(|o| {
            o.keys()
                .all(|k| matches!(k.as_str(), "account" | "objectType" | "name"))
        })
        && actor.get("objectType").is_none_or(|t| t == "Agent")
}

impl competencies::Host for AppCtx {
    async fn frameworks(&mut self) -> Result<String, Error> {
        self.call.need(Capability::Frameworks)?;
        let lang = self.call.lang;
        let frameworks = self
            .call
            .tenant
            .db
            .read(move |c| {
                use crate::store::competency as comp;
                let mut out = Vec::new();
                for f in comp::frameworks(c)? {
                    let competencies: Vec<Value> = comp::competencies(c, f.id)?
                        .into_iter()
                        .map(|k| {
                            let levels: Vec<&str> =
                                k.levels.iter().map(|l| l.code.as_str()).collect();
                            json!({"uri": k.uri, "code": k.code, "name": k.name.get(lang.code()),
                                   "level": k.level_code, "levels": levels})
                        })
                        .collect();
                    out.push(json!({"uri": f.uri, "version": f.version,
                                    "name": f.name.get(lang.code()), "competencies": competencies}));
                }
                Ok(out)
            })
            .await
            .map_err(store_error)?;
        Ok(Value::Array(frameworks).to_string())
    }

    async fn my_classes(&mut self) -> Result<Vec<competencies::ClassInfo>, Error> {
        self.call.need(Capability::ClassAggregates)?;
        if self.call.user.role != Role::Teacher {
            return Ok(Vec::new());
        }
        let teacher = self.call.user.id;
        let classes = self
            .call
            .tenant
            .db
            .read(move |c| crate::store::tenant::classes_of(c, teacher, "teacher"))
            .await
            .map_err(store_error)?;
        Ok(classes
            .into_iter()
            .map(|c| competencies::ClassInfo {
                id: c.id,
                title: c.title,
            })
            .collect())
    }

    async fn class_aggregates(&mut self, class_id: i64) -> Result<String, Error> {
        self.call.need(Capability::ClassAggregates)?;
        let teacher = self.call.user.id;
        let is_teacher = self.call.user.role == Role::Teacher;
        let figures = self
            .call
            .tenant
            .db
            .read(move |c| {
                if !is_teacher || !crate::store::tenant::teaches(c, teacher, class_id)? {
                    return Ok(None);
                }
                crate::store::analytics::figures(c, Some(class_id)).map(Some)
            })
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                error(
                    ErrorCode::NotFound,
                    format!("no class {class_id} taught by the signed-in user"),
                )
            })?;
        let mut v = serde_json::to_value(&figures)
            .map_err(|e| error(ErrorCode::Unavailable, e.to_string()))?;
        // Weeks as dates an app can show without a calendar of its own.
        v["weekly_evidence"] = figures
            .weekly_evidence
            .iter()
            .map(|(start, count, mean)| {
                let day = time::OffsetDateTime::from_unix_timestamp(*start)
                    .map(|t| t.date().to_string())
                    .unwrap_or_default();
                json!({"week": day, "evidence": count, "mean_bp": mean})
            })
            .collect();
        Ok(v.to_string())
    }

    async fn self_assess(
        &mut self,
        competency: String,
        answer: competencies::SelfAnswer,
    ) -> Result<(), Error> {
        self.call.need(Capability::SelfAssess)?;
        if self.call.user.role != Role::Student {
            return Err(error(
                ErrorCode::Invalid,
                "only a pupil assesses themselves",
            ));
        }
        let scale = match answer {
            competencies::SelfAnswer::NotYet => 1,
            competencies::SelfAnswer::WithHelp => 2,
            competencies::SelfAnswer::Can => 3,
        };
        let pupil = self.call.user.id;
        let at = crate::store::now();
        let recorded = self
            .call
            .tenant
            .db
            .write(move |c| {
                let Some(id) = crate::store::competency::competency_id(c, &competency)? else {
                    return Ok(false);
                };
                let row = NewEvidence {
                    pupil_id: pupil,
                    competency_id: id,
                    source: Source::SelfAssessment,
                    value_bp: crate::competency::self_value(scale).unwrap_or(0),
                    scale_level: Some(scale),
                    comment: String::new(),
                    statement_id: None,
                    actor: Actor::User(pupil),
                };
                crate::store::competency::add_evidence(c, &row, at)?;
                Ok(true)
            })
            .await
            .map_err(store_error)?;
        if recorded {
            Ok(())
        } else {
            Err(error(
                ErrorCode::NotFound,
                "no such competency in this school",
            ))
        }
    }
}

impl log::Host for AppCtx {
    async fn write(&mut self, level: log::Level, message: String) {
        let call = &mut self.call;
        if call.log_lines >= MAX_LOG_LINES {
            if call.log_dropped == 0 {
                tracing::warn!(target: "app", tenant = %call.tenant.slug, app = %call.app,
                    "more than {MAX_LOG_LINES} log lines in one request: the rest are dropped");
            }
            call.log_dropped += 1;
            return;
        }
        call.log_lines += 1;
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let (tenant, app) = (&call.tenant.slug, &call.app);
        match level {
            log::Level::Debug => tracing::debug!(target: "app", %tenant, %app, "{message:?}"),
            log::Level::Info => tracing::info!(target: "app", %tenant, %app, "{message:?}"),
            log::Level::Warn => tracing::warn!(target: "app", %tenant, %app, "{message:?}"),
            log::Level::Error => tracing::error!(target: "app", %tenant, %app, "{message:?}"),
        }
    }
}
