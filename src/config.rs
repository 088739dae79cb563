//! Configuration: defaults < `ceredis.toml` < `CEREDIS_*` environment < command-line flags.
//!
//! Unknown keys are rejected with a message that names the key and where it came from.
//! Secrets are wrapped in [`Secret`], which prints as `[redacted]` in `Debug`, `Display` and
//! in `ceredis config show`. The committed example (`ceredis.example.toml`) is what
//! `ceredis config example` prints, and a test checks that it parses to the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const EXAMPLE: &str = include_str!("../ceredis.example.toml");
const ENV_PREFIX: &str = "CEREDIS_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// A value that must never be printed: shows `[redacted]` everywhere.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "[redacted]" })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where every database, key and certificate lives.
    pub data_dir: PathBuf,
    /// HTTPS address of the UI and API (the only public listener).
    pub listen: SocketAddr,
    /// Plain-HTTP address that only redirects to HTTPS; empty to disable.
    pub redirect_listen: String,
    /// The address people type, used in printed links (e.g. `https://ceredis.ecole.fr`).
    /// Empty: derived from `listen`.
    pub public_url: String,
    /// Serve plain HTTP on `listen` (development only: cookies lose their protection).
    pub insecure_http: bool,
    /// Language of pages when the browser does not ask: `fr` or `en`.
    pub default_lang: String,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub store: StoreConfig,
    pub limits: LimitsConfig,
    pub lrs: LrsConfig,
    pub log: LogConfig,
    pub federation: FederationConfig,
    pub hub: HubConfig,
    /// Bearer token a Prometheus scraper sends to read `/metrics`; empty: only clients on
    /// this machine (loopback) may read it.
    pub metrics_token: Secret,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Extra DNS names and IP addresses for the certificate of the local CA.
    pub server_names: Vec<String>,
    pub acme: AcmeConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AcmeConfig {
    /// Public domain name; when set, certificates come from the ACME directory instead of
    /// the local CA (TLS-ALPN-01 on the HTTPS port, which must be reachable as port 443).
    pub domain: String,
    pub contact_email: String,
    pub directory_url: String,
    /// External account binding, for ACME CAs that require it (key id and the base64url
    /// HMAC key the CA gave).
    pub eab_key_id: String,
    pub eab_hmac_key: Secret,
    /// PEM file of the root that signs the ACME directory's own HTTPS certificate, for a
    /// private ACME CA; empty: the system's trusted roots.
    pub ca_root: String,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            domain: String::new(),
            contact_email: String::new(),
            directory_url: "https://acme-v02.api.letsencrypt.org/directory".into(),
            eab_key_id: String::new(),
            eab_hmac_key: Secret::default(),
            ca_root: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub session_hours: u32,
    /// argon2id memory in KiB, iterations and lanes for human passwords.
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    pub argon2_lanes: u32,
    /// Password hashes computed at once (0: one per CPU core).
    pub hash_concurrency: usize,
    /// Failed logins of one account before it must wait; the wait doubles per further
    /// failure up to `max_lockout_secs`, and resets on success.
    pub failures_before_delay: u32,
    pub max_lockout_secs: u64,
    /// Failed logins allowed from one address per window (schools share one address).
    pub ip_failures_per_window: u32,
    pub ip_window_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LrsConfig {
    /// The xAPI version the LRS names in `X-Experience-API-Version` when a request does not
    /// say which it speaks (such requests are refused, except for About): `2.0.0` or `1.0.3`.
    pub default_version: String,
}

impl Default for LrsConfig {
    fn default() -> Self {
        LrsConfig {
            default_version: "2.0.0".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub read_connections: usize,
    pub max_batch: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A `tracing` filter such as `info` or `ceredis=debug,info`.
    pub filter: String,
}

/// The site's sync with its federation hub (once joined).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// Seconds between automatic pushes of a tenant's continuity copy, when the tenant
    /// changed; 0 turns automatic sync off (`ceredis federation push` still works).
    pub sync_interval_secs: u64,
    /// Seconds before the first retry after a failed push; each failure doubles it (up to
    /// `sync_interval_secs`), with random jitter so that sites do not retry in step.
    pub retry_min_secs: u64,
    /// Bandwidth a push may use, in KiB per second on average; 0: no cap.
    pub max_kib_per_sec: u64,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig {
            sync_interval_secs: 3600,
            retry_min_secs: 30,
            max_kib_per_sec: 0,
        }
    }
}

/// Hub mode (`ceredis hub`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// PostgreSQL connection string (`host=… dbname=…` or `postgresql://…`) for the hub's
    /// records; empty keeps them in `hub.db` in the data directory.
    pub postgres: Secret,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("/var/lib/ceredis"),
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            redirect_listen: "0.0.0.0:8080".into(),
            public_url: String::new(),
            insecure_http: false,
            default_lang: "fr".into(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            store: StoreConfig::default(),
            limits: LimitsConfig::default(),
            lrs: LrsConfig::default(),
            log: LogConfig::default(),
            federation: FederationConfig::default(),
            hub: HubConfig::default(),
            metrics_token: Secret::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            session_hours: 12,
            argon2_memory_kib: 12_288,
            argon2_iterations: 3,
            argon2_lanes: 1,
            hash_concurrency: 0,
            failures_before_delay: 5,
            max_lockout_secs: 60,
            ip_failures_per_window: 200,
            ip_window_secs: 300,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            read_connections: 4,
            max_batch: 512,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 1 << 20,
            max_upload_bytes: 32 << 20,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            filter: "info".into(),
        }
    }
}

/// Settings given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub redirect_listen: Option<String>,
    pub public_url: Option<String>,
    pub insecure_http: bool,
}

impl Config {
    /// Loads the layers. `file` is read if given (it must exist), else `ceredis.toml` in the
    /// working directory if present. `env` is the process environment (passed in for tests).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::new();
        let default_file = Path::new("ceredis.toml");
        let chosen = file.or(default_file.exists().then_some(default_file));
        if let Some(path) = chosen {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            table = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
                origin: path.display().to_string(),
                message: e.message().to_string(),
            })?;
            // Check the file on its own so that its mistakes are reported as its own.
            Config::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
                ConfigError::Invalid {
                    origin: path.display().to_string(),
                    message: e.to_string(),
                }
            })?;
        }
        let mut env_vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != "CEREDIS_CONFIG")
            .collect();
        env_vars.sort();
        for (name, value) in env_vars {
            let key_path: Vec<String> = name[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .split("__")
                .map(str::to_string)
                .collect();
            set_path(&mut table, &key_path, parse_env_value(&value));
            Config::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
                ConfigError::Invalid {
                    origin: format!("environment variable {name}"),
                    message: e.to_string(),
                }
            })?;
        }
        let mut config =
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Invalid {
                origin: "configuration".into(),
                message: e.to_string(),
            })?;
        if let Some(d) = &overrides.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(l) = overrides.listen {
            config.listen = l;
        }
        if let Some(r) = &overrides.redirect_listen {
            config.redirect_listen = r.clone();
        }
        if let Some(u) = &overrides.public_url {
            config.public_url = u.clone();
        }
        if overrides.insecure_http {
            config.insecure_http = true;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid {
            origin: "configuration".into(),
            message,
        };
        if !matches!(self.default_lang.as_str(), "fr" | "en") {
            return Err(bad(format!(
                "default_lang must be `fr` or `en`, not `{}`",
                self.default_lang
            )));
        }
        if !matches!(self.lrs.default_version.as_str(), "2.0.0" | "1.0.3") {
            return Err(bad(format!(
                "lrs.default_version must be `2.0.0` or `1.0.3`, not `{}`",
                self.lrs.default_version
            )));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(bad(format!(
                "log.format must be `text` or `json`, not `{}`",
                self.log.format
            )));
        }
        if !self.redirect_listen.is_empty() && self.redirect_listen.parse::<SocketAddr>().is_err() {
            return Err(bad(format!(
                "redirect_listen `{}` is not an address such as 0.0.0.0:80",
                self.redirect_listen
            )));
        }
        if self.auth.argon2_memory_kib < 8 * 1024 || self.auth.argon2_iterations == 0 {
            return Err(bad(
                "auth.argon2_memory_kib must be at least 8192 and argon2_iterations at least 1"
                    .into(),
            ));
        }
        if !self.tls.acme.domain.is_empty() {
            if self.insecure_http {
                return Err(bad(
                    "tls.acme.domain and insecure_http exclude each other".into()
                ));
            }
            if self.tls.acme.eab_key_id.is_empty() != self.tls.acme.eab_hmac_key.is_empty() {
                return Err(bad(
                    "tls.acme.eab_key_id and tls.acme.eab_hmac_key go together".into(),
                ));
            }
        }
        if self.store.read_connections == 0 || self.store.max_batch == 0 {
            return Err(bad(
                "store.read_connections and store.max_batch must be > 0".into(),
            ));
        }
        Ok(())
    }

    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect_listen.parse().ok()
    }

    /// The site's stable URL, for identifiers that outlive a session (xAPI account home
    /// pages): the public URL when configured, else `https://` and the machine's host name.
    pub fn site_url(&self) -> String {
        if !self.public_url.is_empty() {
            return self.public_url.trim_end_matches('/').to_string();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("https://{host}")
    }

    /// The base URL people open, without a trailing slash.
    pub fn base_url(&self, bound: SocketAddr) -> String {
        if !self.public_url.is_empty() {
            return self.public_url.trim_end_matches('/').to_string();
        }
        let scheme = if self.insecure_http { "http" } else { "https" };
        let host = if bound.ip().is_unspecified() || bound.ip().is_loopback() {
            "localhost".to_string()
        } else {
            bound.ip().to_string()
        };
        format!("{scheme}://{host}:{}", bound.port())
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot print configuration: {e}"))
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    // `CEREDIS_AUTH__SESSION_HOURS=8` is an integer, `CEREDIS_INSECURE_HTTP=true` a boolean,
    // `CEREDIS_TLS__SERVER_NAMES=["a","b"]` an array; anything else is a string.
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(inner) = entry {
                set_path(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_committed_example_parses_to_the_defaults() {
        let parsed: Config = toml::from_str(EXAMPLE).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "data_dir = \"/from/file\"\n[auth]\nsession_hours = 4\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("CEREDIS_AUTH__SESSION_HOURS", "6"),
                ("CEREDIS_DATA_DIR", "/from/env"),
                ("OTHER", "x"),
            ]),
            &Overrides {
                data_dir: Some("/from/flag".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.auth.session_hours, 6, "env beats file");
        assert_eq!(c.data_dir, PathBuf::from("/from/flag"), "flag beats env");
        assert_eq!(c.auth.argon2_iterations, 3, "defaults fill the rest");
    }

    #[test]
    fn unknown_keys_are_named_with_their_origin() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[auth]\nsesion_hours = 4\n").unwrap();
        let err = Config::load(Some(&file), env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sesion_hours") && err.contains("c.toml"),
            "{err}"
        );

        let err = Config::load(None, env(&[("CEREDIS_LISTN", "x")]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("listn") && err.contains("CEREDIS_LISTN"),
            "{err}"
        );
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let c = Config::load(
            None,
            env(&[
                ("CEREDIS_TLS__ACME__EAB_HMAC_KEY", "s3cr3t-hmac"),
                ("CEREDIS_METRICS_TOKEN", "s3cr3t-scrape"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.tls.acme.eab_hmac_key.expose(), "s3cr3t-hmac");
        assert_eq!(c.metrics_token.expose(), "s3cr3t-scrape");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert!(!c.to_toml().contains("s3cr3t"));
        assert!(c.to_toml().contains("[redacted]"));
    }

    #[test]
    fn bad_values_are_explained() {
        let err = Config::load(
            None,
            env(&[("CEREDIS_LISTEN", "nowhere")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("CEREDIS_LISTEN"), "{err}");
        let err = Config::load(
            None,
            env(&[("CEREDIS_DEFAULT_LANG", "de")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("default_lang"), "{err}");
    }
}
