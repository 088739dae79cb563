//! Tenant apps: WebAssembly components a school installs, each granted exactly the
//! capabilities its admin accepted, run with limits that are always on.
//!
//! An app is a component exporting `wasi:http/incoming-handler` and importing the
//! `ceredis:app` interfaces (`plugins/wit/ceredis-app.wit`). It ships a manifest
//! ([`Manifest`]): name, version, routes, the roles that may open it, the capabilities it
//! requests ([`Capability`], each described in plain words for the admin) and its quotas
//! ([`Quotas`]). [`runtime`] compiles and pre-instantiates components once per version and
//! serves each request in a fresh instance; [`calls`] implements the host interfaces, each
//! call checked against the install's grants.
//!
//! Must not: let an app reach another tenant, another app's storage, the network, the
//! filesystem, the environment or the operator's layers; trust anything an app sends
//! (ids, headers, sizes).
//!
//! Key types: [`Manifest`], [`Capability`], [`Quotas`], [`runtime::AppHost`].

pub mod calls;
pub mod runtime;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::http::i18n::Lang;
use crate::tenant::Role;

/// The manifest's file name inside an app's folder.
pub const MANIFEST_FILE: &str = "ceredis-app.toml";

/// The WIT package apps are written against.
pub const WIT_PACKAGE: &str = "ceredis:app@0.1.0";

/// What an app may ask for. Anything not granted is refused at the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Capability {
    /// `storage`: the app's own key-value storage in this school.
    #[serde(rename = "storage")]
    Storage,
    /// `xapi/record`: record learning statements as the signed-in user.
    #[serde(rename = "xapi/record")]
    XapiRecord,
    /// `xapi/read-mine`: read the signed-in user's own statements.
    #[serde(rename = "xapi/read-mine")]
    XapiReadMine,
    /// `competencies/frameworks`: read the school's competency frameworks.
    #[serde(rename = "competencies/frameworks")]
    Frameworks,
    /// `competencies/class-aggregates`: read aggregates of the teacher's own classes.
    #[serde(rename = "competencies/class-aggregates")]
    ClassAggregates,
    /// `competencies/self-assess`: record the signed-in pupil's self-assessments.
    #[serde(rename = "competencies/self-assess")]
    SelfAssess,
    /// `identity/name`: see the signed-in user's real name.
    #[serde(rename = "identity/name")]
    Name,
    /// `clock/precise`: read clocks at their full resolution (otherwise: to the second).
    #[serde(rename = "clock/precise")]
    PreciseClock,
}

impl Capability {
    pub const ALL: &'static [Capability] = &[
        Capability::Storage,
        Capability::XapiRecord,
        Capability::XapiReadMine,
        Capability::Frameworks,
        Capability::ClassAggregates,
        Capability::SelfAssess,
        Capability::Name,
        Capability::PreciseClock,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Capability::Storage => "storage",
            Capability::XapiRecord => "xapi/record",
            Capability::XapiReadMine => "xapi/read-mine",
            Capability::Frameworks => "competencies/frameworks",
            Capability::ClassAggregates => "competencies/class-aggregates",
            Capability::SelfAssess => "competencies/self-assess",
            Capability::Name => "identity/name",
            Capability::PreciseClock => "clock/precise",
        }
    }

    pub fn parse(code: &str) -> Option<Capability> {
        Capability::ALL.iter().copied().find(|c| c.code() == code)
    }

    /// What granting it means, in words an admin reads before installing.
    pub fn describe(self, lang: Lang) -> &'static str {
        let (fr, en) = match self {
            Capability::Storage => (
                "Conserver ses propres données dans l'établissement (dans la limite de son quota).",
                "Keep its own data in this school (within its quota).",
            ),
            Capability::XapiRecord => (
                "Enregistrer des traces d'apprentissage (xAPI) au nom de l'utilisateur connecté ; \
                 celles qui portent sur une compétence deviennent des preuves pour ses enseignants.",
                "Record learning statements (xAPI) as the signed-in user; those about a \
                 competency become evidence for their teachers.",
            ),
            Capability::XapiReadMine => (
                "Lire les traces d'apprentissage de l'utilisateur connecté (sans note pour un élève).",
                "Read the signed-in user's own learning statements (without scores for a pupil).",
            ),
            Capability::Frameworks => (
                "Lire les référentiels de compétences de l'établissement.",
                "Read the school's competency frameworks.",
            ),
            Capability::ClassAggregates => (
                "Lire les synthèses des classes de l'enseignant connecté (effectifs par niveau, \
                 activité par semaine) ; jamais les données d'un élève.",
                "Read summaries of the signed-in teacher's classes (pupils per level, activity \
                 per week); never a single pupil's data.",
            ),
            Capability::SelfAssess => (
                "Enregistrer les auto-évaluations de l'élève connecté.",
                "Record the signed-in pupil's self-assessments.",
            ),
            Capability::Name => (
                "Voir le nom et le prénom de l'utilisateur connecté.",
                "See the signed-in user's name.",
            ),
            Capability::PreciseClock => (
                "Lire l'heure à la milliseconde près (sinon : à la seconde).",
                "Read the time to the millisecond (otherwise: to the second).",
            ),
        };
        match lang {
            Lang::Fr => fr,
            Lang::En => en,
        }
    }
}

/// Per-request limits of an app, as its manifest requests them (within the host's bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Quotas {
    /// Linear memory of one instance.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// Wall-clock time of one request, from instantiation to the response's last byte.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u32,
    /// WebAssembly instructions one request may execute (`None`: only the timeout bounds it).
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Total size of the app's stored keys and values.
    #[serde(default)]
    pub storage_kib: u32,
}

fn default_memory() -> u32 {
    32
}
fn default_timeout() -> u32 {
    2000
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas {
            memory_mib: default_memory(),
            timeout_ms: default_timeout(),
            fuel: None,
            storage_kib: 0,
        }
    }
}

/// The most any manifest may request.
pub const MAX_MEMORY_MIB: u32 = 256;
pub const MAX_TIMEOUT_MS: u32 = 30_000;
pub const MAX_STORAGE_KIB: u32 = 64 * 1024;

/// An app's manifest (`ceredis-app.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The app's id in the school and in its URL: 1–40 of `a-z`, `0-9`, `-`.
    pub name: String,
    pub version: String,
    /// What users see on their home page.
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// The roles that see and may open the app: `admin`, `teacher`, `student`, `researcher`.
    pub roles: Vec<String>,
    /// Paths the app answers under its root: exact (`/answers`) or a prefix (`/api/*`).
    #[serde(default = "default_routes")]
    pub routes: Vec<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub quotas: Quotas,
}

fn default_routes() -> Vec<String> {
    vec!["/*".into()]
}

/// A manifest the host refuses, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

impl Manifest {
    /// Parses and checks a manifest.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest = toml::from_str(text)
            .map_err(|e| ManifestError(format!("{MANIFEST_FILE}: {}", e.message())))?;
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), ManifestError> {
        let bad = |m: String| Err(ManifestError(m));
        if self.name.is_empty()
            || self.name.len() > 40
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || self.name.starts_with('-')
        {
            return bad(format!(
                "name `{}`: use 1 to 40 of a-z, 0-9 and -, not starting with -",
                self.name
            ));
        }
        if self.version.trim().is_empty() || self.version.len() > 40 {
            return bad("version: 1 to 40 characters".into());
        }
        if self.title.trim().is_empty() || self.title.chars().count() > 80 {
            return bad("title: 1 to 80 characters".into());
        }
        if self.description.chars().count() > 1000 {
            return bad("description: at most 1000 characters".into());
        }
        if self.roles.is_empty() {
            return bad("roles: name at least one role that may open the app".into());
        }
        for r in &self.roles {
            if Role::parse(r).is_none() {
                return bad(format!(
                    "roles: `{r}` is not admin, teacher, student or researcher"
                ));
            }
        }
        if self.routes.is_empty() || self.routes.len() > 50 {
            return bad("routes: 1 to 50 paths".into());
        }
        for r in &self.routes {
            if !r.starts_with('/') || r.contains("..") || r.contains("//") || r.len() > 200 {
                return bad(format!(
                    "routes: `{r}` must start with / and contain neither .. nor //"
                ));
            }
            if r.contains('*') && !r.ends_with("/*") || r.matches('*').count() > 1 {
                return bad(format!(
                    "routes: `{r}`: * may only end a prefix, as in /api/*"
                ));
            }
        }
        for c in &self.capabilities {
            if Capability::parse(c).is_none() {
                return bad(format!(
                    "capabilities: `{c}` is not a capability of this host"
                ));
            }
        }
        let q = &self.quotas;
        if q.memory_mib == 0 || q.memory_mib > MAX_MEMORY_MIB {
            return bad(format!("quotas.memory-mib: 1 to {MAX_MEMORY_MIB}"));
        }
        if q.timeout_ms < 10 || q.timeout_ms > MAX_TIMEOUT_MS {
            return bad(format!("quotas.timeout-ms: 10 to {MAX_TIMEOUT_MS}"));
        }
        if q.fuel == Some(0) {
            return bad("quotas.fuel: leave it out, or at least 1".into());
        }
        if q.storage_kib > MAX_STORAGE_KIB {
            return bad(format!("quotas.storage-kib: at most {MAX_STORAGE_KIB}"));
        }
        if q.storage_kib > 0 && !self.capabilities.iter().any(|c| c == "storage") {
            return bad("quotas.storage-kib needs the `storage` capability".into());
        }
        Ok(())
    }

    /// The capabilities requested, known to be valid after [`Manifest::parse`].
    pub fn requested(&self) -> BTreeSet<Capability> {
        self.capabilities
            .iter()
            .filter_map(|c| Capability::parse(c))
            .collect()
    }

    pub fn allows_role(&self, role: Role) -> bool {
        self.roles.iter().any(|r| r == role.as_str())
    }

    /// Whether the app answers `path` (relative to its root, starting with `/`).
    pub fn routes_path(&self, path: &str) -> bool {
        self.routes.iter().any(|r| match r.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix) || path == prefix.trim_end_matches('/'),
            None => path == r,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIZ: &str = r#"
name = "quiz"
version = "1.0.0"
title = "Quiz"
roles = ["student"]
routes = ["/", "/answers", "/api/*"]
capabilities = ["xapi/record"]
[quotas]
memory-mib = 16
"#;

    #[test]
    fn a_manifest_parses_with_defaults_and_routes_match_exactly_or_by_prefix() {
        let m = Manifest::parse(QUIZ).expect("valid");
        assert_eq!(m.quotas.timeout_ms, 2000);
        assert_eq!(m.quotas.memory_mib, 16);
        assert_eq!(
            m.requested().into_iter().collect::<Vec<_>>(),
            vec![Capability::XapiRecord]
        );
        assert!(m.routes_path("/"));
        assert!(m.routes_path("/answers"));
        assert!(!m.routes_path("/answers/"));
        assert!(!m.routes_path("/answersx"));
        assert!(m.routes_path("/api"));
        assert!(m.routes_path("/api/x/y"));
        assert!(!m.routes_path("/apix"));
        assert!(m.allows_role(Role::Student));
        assert!(!m.allows_role(Role::Teacher));
    }

    #[test]
    fn bad_manifests_are_refused_with_the_field_named() {
        let cases = [
            ("name = \"Quiz\"", "name"),
            ("name = \"../x\"", "name"),
            ("roles = []", "roles"),
            ("roles = [\"operator\"]", "roles"),
            ("routes = [\"/a/../b\"]", "routes"),
            ("routes = [\"/a*b\"]", "routes"),
            ("routes = [\"relative\"]", "routes"),
            ("capabilities = [\"network\"]", "capabilities"),
            ("capabilities = [\"xapi/read-all\"]", "capabilities"),
        ];
        for (line, field) in cases {
            let key = line.split(' ').next().unwrap_or_default();
            let text: String = QUIZ
                .lines()
                .map(|l| {
                    if l.starts_with(&format!("{key} ")) {
                        line
                    } else {
                        l
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            let e = Manifest::parse(&text).expect_err(line);
            assert!(e.0.contains(field), "{line}: {e}");
        }
        for (quota, field) in [
            ("memory-mib = 0", "memory-mib"),
            ("memory-mib = 4096", "memory-mib"),
            ("timeout-ms = 1", "timeout-ms"),
            ("fuel = 0", "fuel"),
            ("storage-kib = 10", "storage-kib"),
            ("sockets = 1", "sockets"),
        ] {
            let text = QUIZ.replace("memory-mib = 16", quota);
            let e = Manifest::parse(&text).expect_err(quota);
            assert!(e.0.contains(field), "{quota}: {e}");
        }
    }
}

/// The largest component an install accepts.
pub const MAX_COMPONENT_BYTES: usize = 32 << 20;

/// Why an install was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Grants(String),
    #[error("{0}")]
    Component(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl From<InstallError> for crate::error::ApiError {
    fn from(e: InstallError) -> crate::error::ApiError {
        use crate::error::ApiError;
        let message = e.to_string();
        match e {
            InstallError::Manifest(_) => ApiError::bad_request("app_manifest_invalid", message),
            InstallError::Grants(_) => ApiError::bad_request("app_grant_invalid", message),
            InstallError::Component(_) => ApiError::bad_request("app_component_invalid", message),
            InstallError::Store(e) => e.into(),
        }
    }
}

/// What an install did.
#[derive(Debug, Clone, Serialize)]
pub struct Installed {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub upgrade: bool,
    pub grants: Vec<String>,
}

/// The hex SHA-256 of a component: its identity, shown to the admin and recorded.
pub fn component_hash(bytes: &[u8]) -> String {
    crate::competency::mastery::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Checks a grant list against what the manifest requests: an admin grants only what
/// the app asked for (and may withhold any of it).
pub fn check_grants(manifest: &Manifest, grants: &[String]) -> Result<Vec<String>, InstallError> {
    let requested = manifest.requested();
    let mut out = BTreeSet::new();
    for g in grants {
        let c = Capability::parse(g).ok_or_else(|| {
            InstallError::Grants(format!("grant `{g}` is not a capability of this host"))
        })?;
        if !requested.contains(&c) {
            return Err(InstallError::Grants(format!(
                "grant `{g}`: the app did not request it"
            )));
        }
        out.insert(c);
    }
    Ok(out.into_iter().map(|c| c.code().to_string()).collect())
}

/// Installs (or upgrades) an app in a tenant: checks the manifest and the grants,
/// compiles the component and checks that it links, then records it with its hash.
pub async fn install(
    host: &runtime::AppHost,
    tenant: &crate::tenant::TenantHandle,
    manifest_text: &str,
    component: Vec<u8>,
    grants: &[String],
    actor: &str,
) -> Result<Installed, InstallError> {
    let manifest = Manifest::parse(manifest_text)?;
    let grants = check_grants(&manifest, grants)?;
    if component.is_empty() || component.len() > MAX_COMPONENT_BYTES {
        return Err(InstallError::Component(format!(
            "the component must be 1 byte to {} MiB",
            MAX_COMPONENT_BYTES >> 20
        )));
    }
    let sha256 = component_hash(&component);
    host.prepare(&sha256, component.clone())
        .await
        .map_err(|e| InstallError::Component(e.to_string()))?;
    let new = crate::store::apps::NewApp {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        manifest: serde_json::to_string(&manifest).unwrap_or_default(),
        sha256: sha256.clone(),
        component,
        grants: grants.clone(),
        actor: actor.to_string(),
    };
    let at = crate::store::now();
    let upgrade = tenant
        .db
        .write(move |c| crate::store::apps::install(c, &new, at))
        .await?;
    Ok(Installed {
        name: manifest.name,
        version: manifest.version,
        sha256,
        upgrade,
        grants,
    })
}
