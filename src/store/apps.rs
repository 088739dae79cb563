//! SQL of tenant apps: the installed components with their manifests and grants, each
//! app's key-value storage, and the install history.

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;

pub const V1: &str = "
CREATE TABLE apps (
    name          TEXT PRIMARY KEY,
    version       TEXT NOT NULL,
    manifest      TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    component     BLOB NOT NULL,
    grants        TEXT NOT NULL,
    enabled       INTEGER NOT NULL DEFAULT 1,
    installed_at  INTEGER NOT NULL,
    installed_by  TEXT NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE TABLE app_kv (
    app    TEXT NOT NULL REFERENCES apps(name) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  BLOB NOT NULL,
    PRIMARY KEY (app, key)
) WITHOUT ROWID;
CREATE TABLE app_history (
    id       INTEGER PRIMARY KEY,
    at       INTEGER NOT NULL,
    app      TEXT NOT NULL,
    action   TEXT NOT NULL,
    version  TEXT NOT NULL,
    sha256   TEXT NOT NULL,
    grants   TEXT NOT NULL,
    actor    TEXT NOT NULL
);
";

/// An installed app, without its component's bytes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AppRow {
    pub name: String,
    pub version: String,
    /// The manifest as installed (JSON of [`crate::apps::Manifest`]).
    #[serde(skip)]
    pub manifest: String,
    pub sha256: String,
    /// Granted capability codes.
    pub grants: Vec<String>,
    pub enabled: bool,
    pub installed_at: i64,
    pub installed_by: String,
    pub updated_at: i64,
    pub size: i64,
}

const COLUMNS: &str = "name, version, manifest, sha256, grants, enabled, installed_at,
                       installed_by, updated_at, length(component)";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AppRow> {
    let grants: String = r.get(4)?;
    Ok(AppRow {
        name: r.get(0)?,
        version: r.get(1)?,
        manifest: r.get(2)?,
        sha256: r.get(3)?,
        grants: serde_json::from_str(&grants).unwrap_or_default(),
        enabled: r.get(5)?,
        installed_at: r.get(6)?,
        installed_by: r.get(7)?,
        updated_at: r.get(8)?,
        size: r.get(9)?,
    })
}

pub fn apps(conn: &Connection) -> Result<Vec<AppRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM apps ORDER BY name"))?
        .query_map([], row)?
        .collect::<Result<_, _>>()?)
}

pub fn app(conn: &Connection, name: &str) -> Result<Option<AppRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM apps WHERE name = ?1"))?
        .query_row([name], row)
        .optional()?)
}

pub fn component(conn: &Connection, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT component FROM apps WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

/// What an install or an upgrade writes.
#[derive(Debug, Clone)]
pub struct NewApp {
    pub name: String,
    pub version: String,
    pub manifest: String,
    pub sha256: String,
    pub component: Vec<u8>,
    pub grants: Vec<String>,
    pub actor: String,
}

/// Installs an app, or replaces the installed version (keeping its storage). Returns
/// whether it was an upgrade.
pub fn install(conn: &Connection, app: &NewApp, at: i64) -> Result<bool, StoreError> {
    let grants = serde_json::to_string(&app.grants).unwrap_or_else(|_| "[]".into());
    let upgrade = conn
        .prepare_cached("SELECT 1 FROM apps WHERE name = ?1")?
        .exists([&app.name])?;
    conn.prepare_cached(
        "INSERT INTO apps (name, version, manifest, sha256, component, grants, enabled,
                           installed_at, installed_by, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?7)
         ON CONFLICT (name) DO UPDATE SET version = excluded.version,
             manifest = excluded.manifest, sha256 = excluded.sha256,
             component = excluded.component, grants = excluded.grants,
             updated_at = excluded.updated_at",
    )?
    .execute(params![
        app.name,
        app.version,
        app.manifest,
        app.sha256,
        app.component,
        grants,
        at,
        app.actor
    ])?;
    history(
        conn,
        at,
        &app.name,
        if upgrade { "upgrade" } else { "install" },
        &app.version,
        &app.sha256,
        &grants,
        &app.actor,
    )?;
    Ok(upgrade)
}

/// Removes an app and its storage. Returns whether it was installed.
pub fn remove(conn: &Connection, name: &str, actor: &str, at: i64) -> Result<bool, StoreError> {
    let Some(existing) = app(conn, name)? else {
        return Ok(false);
    };
    conn.prepare_cached("DELETE FROM app_kv WHERE app = ?1")?
        .execute([name])?;
    conn.prepare_cached("DELETE FROM apps WHERE name = ?1")?
        .execute([name])?;
    let grants = serde_json::to_string(&existing.grants).unwrap_or_default();
    history(
        conn,
        at,
        name,
        "remove",
        &existing.version,
        &existing.sha256,
        &grants,
        actor,
    )?;
    Ok(true)
}

#[allow(clippy::too_many_arguments)]
fn history(
    conn: &Connection,
    at: i64,
    app: &str,
    action: &str,
    version: &str,
    sha256: &str,
    grants: &str,
    actor: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO app_history (at, app, action, version, sha256, grants, actor)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![at, app, action, version, sha256, grants, actor])?;
    Ok(())
}

/// One line of an app's install history.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HistoryRow {
    pub at: i64,
    pub app: String,
    pub action: String,
    pub version: String,
    pub sha256: String,
    pub grants: Vec<String>,
    pub actor: String,
}

pub fn history_of(conn: &Connection, limit: i64) -> Result<Vec<HistoryRow>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT at, app, action, version, sha256, grants, actor FROM app_history
             ORDER BY id DESC LIMIT ?1",
        )?
        .query_map([limit], |r| {
            let grants: String = r.get(5)?;
            Ok(HistoryRow {
                at: r.get(0)?,
                app: r.get(1)?,
                action: r.get(2)?,
                version: r.get(3)?,
                sha256: r.get(4)?,
                grants: serde_json::from_str(&grants).unwrap_or_default(),
                actor: r.get(6)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}

// ---------------------------------------------------------------------------------------
// Key-value storage

pub fn kv_get(conn: &Connection, app: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT value FROM app_kv WHERE app = ?1 AND key = ?2")?
        .query_row([app, key], |r| r.get(0))
        .optional()?)
}

/// Bytes an app stores: keys and values.
pub fn kv_usage(conn: &Connection, app: &str) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT coalesce(sum(length(CAST(key AS BLOB)) + length(value)), 0)
             FROM app_kv WHERE app = ?1",
        )?
        .query_row([app], |r| r.get(0))?)
}

/// Bytes of keys and values each installed app keeps, by app name.
pub fn kv_usage_by_app(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT a.name, coalesce(sum(length(CAST(k.key AS BLOB)) + length(k.value)), 0)
             FROM apps a LEFT JOIN app_kv k ON k.app = a.name GROUP BY a.name ORDER BY a.name",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?)
}

/// Sets a key if the app's storage stays within `quota` bytes; returns whether it did.
pub fn kv_set(
    conn: &Connection,
    app: &str,
    key: &str,
    value: &[u8],
    quota: i64,
) -> Result<bool, StoreError> {
    let current = kv_get(conn, app, key)?
        .map(|v| (key.len() + v.len()) as i64)
        .unwrap_or(0);
    let after = kv_usage(conn, app)? - current + (key.len() + value.len()) as i64;
    if after > quota {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO app_kv (app, key, value) VALUES (?1, ?2, ?3)
         ON CONFLICT (app, key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![app, key, value])?;
    Ok(true)
}

pub fn kv_delete(conn: &Connection, app: &str, key: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("DELETE FROM app_kv WHERE app = ?1 AND key = ?2")?
        .execute([app, key])?
        > 0)
}

/// Keys of an app starting with `prefix`, in byte order.
pub fn kv_keys(
    conn: &Connection,
    app: &str,
    prefix: &str,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    // Byte-wise prefix match without LIKE's wildcards: keys ≥ prefix, then filtered.
    let mut out = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT key FROM app_kv WHERE app = ?1 AND key >= ?2 ORDER BY key LIMIT ?3",
    )?;
    let mut rows = stmt.query(params![app, prefix, limit])?;
    while let Some(r) = rows.next()? {
        let key: String = r.get(0)?;
        if !key.starts_with(prefix) {
            break;
        }
        out.push(key);
    }
    Ok(out)
}

/// A user's id as one app sees it: keyed by the tenant's secret and the app's name, so two
/// apps cannot link their users and the id says nothing about the person. It is made from
/// the user's agent name, the same in every copy of the tenant (local row ids are not), so
/// that a user's data in an app means the same at every site holding the school.
pub fn user_pseudonym(key: &[u8], app: &str, agent_name: &str) -> String {
    pseudonym_of(key, &format!("app:{app}:agent:{agent_name}"))
}

fn pseudonym_of(key: &[u8], what: &str) -> String {
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
        what.as_bytes(),
    );
    format!("u_{}", crate::competency::mastery::hex(&tag.as_ref()[..12]))
}

/// The setting that says a tenant's per-user app keys are under [`user_pseudonym`].
const KEYED_BY_AGENT: &str = "apps.user_keys_by_agent";

/// Moves every user's app keys from the pseudonym of their local row id (the one used
/// before) to [`user_pseudonym`], once per database. Returns how many keys moved.
pub fn rekey_user_keys(conn: &Connection) -> Result<i64, StoreError> {
    if super::lrs::setting(conn, KEYED_BY_AGENT)?.is_some() {
        return Ok(0);
    }
    let key = super::ai::pseudonym_key(conn)?;
    let apps: Vec<String> = conn
        .prepare_cached("SELECT name FROM apps")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let users: Vec<(i64, String)> = conn
        .prepare_cached("SELECT id, agent_name FROM users WHERE agent_name IS NOT NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut moved = 0;
    for app in &apps {
        for (id, agent) in &users {
            let old = format!("u/{}/", pseudonym_of(&key, &format!("app:{app}:user:{id}")));
            let new = format!("u/{}/", user_pseudonym(&key, app, agent));
            let end = format!("{}0", &old[..old.len() - 1]);
            moved += conn
                .prepare_cached(
                    "UPDATE app_kv SET key = ?4 || substr(key, length(?2) + 1)
                     WHERE app = ?1 AND key >= ?2 AND key < ?3",
                )?
                .execute(params![app, old, end, new])? as i64;
        }
    }
    super::lrs::put_setting(conn, KEYED_BY_AGENT, "1")?;
    Ok(moved)
}

/// Erases what every app keeps about one user: the keys under `u/<pseudonym>/`, the
/// namespace the WIT reserves for per-user data. Returns how many keys went.
pub fn erase_user_keys(conn: &Connection, agent_name: &str) -> Result<i64, StoreError> {
    let key = super::ai::pseudonym_key(conn)?;
    // Keys may outlive their app (see `replica::V5`): every app that has any.
    let names: Vec<String> = conn
        .prepare_cached("SELECT DISTINCT app FROM app_kv")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut erased = 0;
    for app in names {
        let prefix = format!("u/{}/", user_pseudonym(&key, &app, agent_name));
        // The pseudonym is hex and `/` sorts before `0`: every key with the prefix lies in
        // [prefix, prefix with its last `/` raised to `0`).
        let end = format!("{}0", &prefix[..prefix.len() - 1]);
        erased += conn
            .prepare_cached("DELETE FROM app_kv WHERE app = ?1 AND key >= ?2 AND key < ?3")?
            .execute(params![app, prefix, end])? as i64;
    }
    Ok(erased)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_app_keys_move_once_to_the_agents_pseudonym_and_erasure_finds_them() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrate(
            &mut conn,
            std::path::Path::new("test"),
            super::super::tenant::MIGRATIONS,
        )
        .unwrap();
        super::super::tenant::seed(&conn).unwrap();
        conn.execute_batch(
            "INSERT INTO users (id, agent_name, username, given_name, family_name, role,
                                created_at, updated_at)
             VALUES (7, 'a7', 'lea', 'Léa', 'M', 'student', 0, 0),
                    (8, 'a8', 'tom', 'Tom', 'B', 'student', 0, 0);
             INSERT INTO apps (name, version, manifest, sha256, component, grants,
                               installed_at, installed_by, updated_at)
             VALUES ('quiz', '1', '{}', '', x'00', '[]', 0, '', 0);",
        )
        .unwrap();
        let key = super::super::ai::pseudonym_key(&conn).unwrap();
        // Keys as the pseudonym of the local row id made them.
        let old = |id: i64| format!("u/{}/", pseudonym_of(&key, &format!("app:quiz:user:{id}")));
        for (k, v) in [
            (format!("{}score", old(7)), "lea"),
            (format!("{}score", old(8)), "tom"),
            ("shared/top".to_string(), "all"),
        ] {
            conn.execute(
                "INSERT INTO app_kv (app, key, value) VALUES ('quiz', ?1, ?2)",
                params![k, v.as_bytes()],
            )
            .unwrap();
        }
        // A database that was keyed by row id has no mark yet.
        conn.execute(
            "DELETE FROM tenant_settings WHERE key = ?1",
            [KEYED_BY_AGENT],
        )
        .unwrap();
        assert_eq!(rekey_user_keys(&conn).unwrap(), 2);
        assert_eq!(rekey_user_keys(&conn).unwrap(), 0, "once only");
        let lea = format!("u/{}/score", user_pseudonym(&key, "quiz", "a7"));
        assert_eq!(
            kv_get(&conn, "quiz", &lea).unwrap().as_deref(),
            Some(&b"lea"[..])
        );
        assert_eq!(
            kv_get(&conn, "quiz", &format!("{}score", old(7))).unwrap(),
            None
        );
        assert_eq!(
            kv_get(&conn, "quiz", "shared/top").unwrap().as_deref(),
            Some(&b"all"[..])
        );
        // Another copy where Léa's row id differs finds the same key; erasing her takes
        // her key and nothing else.
        assert_ne!(
            user_pseudonym(&key, "quiz", "a7"),
            user_pseudonym(&key, "quiz", "a8")
        );
        assert_eq!(erase_user_keys(&conn, "a7").unwrap(), 1);
        assert_eq!(kv_get(&conn, "quiz", &lea).unwrap(), None);
        let left: i64 = conn
            .query_row("SELECT count(*) FROM app_kv", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 2);
    }
}
