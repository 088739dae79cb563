//! SQL of a tenant database (`tenants/<slug>/tenant.db`): the tenant's layers 5–8. Users,
//! classes, enrolments, machine credentials, roster imports. Nothing here is ever read with
//! an operator session (see `auth`).

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::shared::SESSIONS_AND_TOKENS;
use super::{Migrations, StoreError, now};
use crate::tenant::Role;

pub const MIGRATIONS: Migrations = Migrations(&[
    V1,
    SESSIONS_AND_TOKENS,
    super::lrs::V1,
    super::lrs::V2,
    super::lrs::V3,
    super::competency::V1,
    super::research::V1,
    super::apps::V1,
    super::replica::V1,
    super::replica::V2,
    super::replica::V3,
    super::replica::V4,
    super::replica::V5,
]);

const V1: &str = "
CREATE TABLE orgs (
    id           INTEGER PRIMARY KEY,
    sourced_id   TEXT NOT NULL UNIQUE,
    name         TEXT NOT NULL,
    org_type     TEXT NOT NULL,
    identifier   TEXT,
    parent_sourced_id TEXT,
    active       INTEGER NOT NULL DEFAULT 1,
    updated_at   INTEGER NOT NULL
);
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    sourced_id    TEXT UNIQUE,
    username      TEXT NOT NULL UNIQUE COLLATE NOCASE,
    given_name    TEXT NOT NULL,
    family_name   TEXT NOT NULL,
    email         TEXT,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'teacher', 'student', 'researcher')),
    password_hash TEXT,
    must_change_password INTEGER NOT NULL DEFAULT 0,
    active        INTEGER NOT NULL DEFAULT 1,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE TABLE classes (
    id          INTEGER PRIMARY KEY,
    sourced_id  TEXT UNIQUE,
    title       TEXT NOT NULL,
    class_code  TEXT,
    org_sourced_id TEXT,
    active      INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE enrolments (
    id          INTEGER PRIMARY KEY,
    sourced_id  TEXT UNIQUE,
    class_id    INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('teacher', 'student')),
    created_at  INTEGER NOT NULL,
    UNIQUE (class_id, user_id)
);
CREATE INDEX enrolments_by_user ON enrolments(user_id);
CREATE TABLE api_credentials (
    id            INTEGER PRIMARY KEY,
    key_id        TEXT NOT NULL UNIQUE,
    secret_sha256 BLOB NOT NULL,
    label         TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    created_by    INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
);
";

/// What every tenant database holds from its first open: the built-in CEFR framework and
/// the AI principal's pseudonym key.
pub fn seed(conn: &Connection) -> Result<(), StoreError> {
    super::competency::seed_builtin(conn)?;
    super::ai::seed_key(conn)?;
    super::apps::rekey_user_keys(conn)?;
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct User {
    pub id: i64,
    pub sourced_id: Option<String>,
    pub username: String,
    pub given_name: String,
    pub family_name: String,
    pub email: Option<String>,
    pub role: Role,
    pub active: bool,
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub must_change_password: bool,
    /// The opaque name of the user's xAPI account (see [`crate::lrs::learner`]).
    #[serde(skip)]
    pub agent_name: String,
}

impl User {
    pub fn display_name(&self) -> String {
        format!("{} {}", self.given_name, self.family_name)
    }
}

const USER_COLUMNS: &str = "id, sourced_id, username, given_name, family_name, email, role, \
                            active, password_hash, must_change_password, agent_name";

fn user_from_row(r: &Row<'_>) -> rusqlite::Result<User> {
    let role: String = r.get(6)?;
    Ok(User {
        id: r.get(0)?,
        sourced_id: r.get(1)?,
        username: r.get(2)?,
        given_name: r.get(3)?,
        family_name: r.get(4)?,
        email: r.get(5)?,
        role: Role::parse(&role).unwrap_or(Role::Student),
        active: r.get(7)?,
        password_hash: r.get(8)?,
        must_change_password: r.get(9)?,
        agent_name: r.get::<_, Option<String>>(10)?.unwrap_or_default(),
    })
}

/// A user to create or update (by `sourced_id` when it has one, else by `username`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFields {
    pub sourced_id: Option<String>,
    pub username: String,
    pub given_name: String,
    pub family_name: String,
    pub email: Option<String>,
    pub role: Role,
    pub active: bool,
}

fn unique_to_conflict(e: StoreError, what: &str) -> StoreError {
    if e.is_unique_violation() {
        StoreError::Conflict(format!("{what} already exists"))
    } else {
        e
    }
}

pub fn insert_user(
    conn: &Connection,
    user: &UserFields,
    password_hash: Option<&str>,
    must_change_password: bool,
) -> Result<i64, StoreError> {
    let t = now();
    conn.execute(
        "INSERT INTO users (sourced_id, username, given_name, family_name, email, role,
                            password_hash, must_change_password, active, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
        params![
            user.sourced_id,
            user.username,
            user.given_name,
            user.family_name,
            user.email,
            user.role.as_str(),
            password_hash,
            must_change_password,
            user.active,
            t
        ],
    )
    .map_err(|e| unique_to_conflict(e.into(), &format!("a user named `{}`", user.username)))?;
    let id = conn.last_insert_rowid();
    super::replica::note_user(conn, id)?;
    Ok(id)
}

pub fn update_user(conn: &Connection, id: i64, user: &UserFields) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE users SET sourced_id = ?2, username = ?3, given_name = ?4, family_name = ?5,
                email = ?6, role = ?7, active = ?8, updated_at = ?9 WHERE id = ?1",
        params![
            id,
            user.sourced_id,
            user.username,
            user.given_name,
            user.family_name,
            user.email,
            user.role.as_str(),
            user.active,
            now()
        ],
    )
    .map_err(|e| unique_to_conflict(e.into(), &format!("a user named `{}`", user.username)))?;
    super::replica::note_user(conn, id)
}

pub fn user_by_id(conn: &Connection, id: i64) -> Result<Option<User>, StoreError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], user_from_row)
        .optional()?)
}

pub fn user_by_username(conn: &Connection, username: &str) -> Result<Option<User>, StoreError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([username], user_from_row)
        .optional()?)
}

pub fn user_by_sourced_id(conn: &Connection, sourced_id: &str) -> Result<Option<User>, StoreError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE sourced_id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([sourced_id], user_from_row)
        .optional()?)
}

pub fn users(conn: &Connection, role: Option<Role>) -> Result<Vec<User>, StoreError> {
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users WHERE (?1 IS NULL OR role = ?1)
         ORDER BY family_name, given_name, username"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map([role.map(Role::as_str)], user_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn set_password(
    conn: &Connection,
    user_id: i64,
    password_hash: &str,
    must_change: bool,
) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE users SET password_hash = ?2, must_change_password = ?3, updated_at = ?4
         WHERE id = ?1",
        params![user_id, password_hash, must_change, now()],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    super::replica::note_user(conn, user_id)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Class {
    pub id: i64,
    pub sourced_id: Option<String>,
    pub title: String,
    pub class_code: Option<String>,
    pub active: bool,
}

fn class_from_row(r: &Row<'_>) -> rusqlite::Result<Class> {
    Ok(Class {
        id: r.get(0)?,
        sourced_id: r.get(1)?,
        title: r.get(2)?,
        class_code: r.get(3)?,
        active: r.get(4)?,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassFields {
    pub sourced_id: Option<String>,
    pub title: String,
    pub class_code: Option<String>,
    pub org_sourced_id: Option<String>,
    pub active: bool,
}

pub fn insert_class(conn: &Connection, class: &ClassFields) -> Result<i64, StoreError> {
    let t = now();
    conn.execute(
        "INSERT INTO classes (sourced_id, title, class_code, org_sourced_id, active,
                              created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![
            class.sourced_id,
            class.title,
            class.class_code,
            class.org_sourced_id,
            class.active,
            t
        ],
    )
    .map_err(|e| unique_to_conflict(e.into(), "a class with this identifier"))?;
    let id = conn.last_insert_rowid();
    super::replica::note_class(conn, id)?;
    Ok(id)
}

pub fn update_class(conn: &Connection, id: i64, class: &ClassFields) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE classes SET title = ?2, class_code = ?3, org_sourced_id = ?4, active = ?5,
                updated_at = ?6 WHERE id = ?1",
        params![
            id,
            class.title,
            class.class_code,
            class.org_sourced_id,
            class.active,
            now()
        ],
    )?;
    super::replica::note_class(conn, id)
}

pub fn classes(conn: &Connection) -> Result<Vec<Class>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, sourced_id, title, class_code, active FROM classes ORDER BY title, id",
    )?;
    let rows = stmt
        .query_map([], class_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn class_by_id(conn: &Connection, id: i64) -> Result<Option<Class>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, sourced_id, title, class_code, active FROM classes WHERE id = ?1",
        )?
        .query_row([id], class_from_row)
        .optional()?)
}

pub fn class_by_sourced_id(
    conn: &Connection,
    sourced_id: &str,
) -> Result<Option<(Class, Option<String>)>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, sourced_id, title, class_code, active, org_sourced_id FROM classes
             WHERE sourced_id = ?1",
        )?
        .query_row([sourced_id], |r| Ok((class_from_row(r)?, r.get(5)?)))
        .optional()?)
}

/// Classes in which `user_id` is enrolled with `role`.
pub fn classes_of(conn: &Connection, user_id: i64, role: &str) -> Result<Vec<Class>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.id, c.sourced_id, c.title, c.class_code, c.active FROM classes c
         JOIN enrolments e ON e.class_id = c.id
         WHERE e.user_id = ?1 AND e.role = ?2 AND c.active = 1
         ORDER BY c.title, c.id",
    )?;
    let rows = stmt
        .query_map(params![user_id, role], class_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Whether `user_id` teaches `class_id`.
pub fn teaches(conn: &Connection, user_id: i64, class_id: i64) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM enrolments WHERE user_id = ?1 AND class_id = ?2 AND role = 'teacher'",
        )?
        .exists(params![user_id, class_id])?)
}

/// Whether `teacher_id` is an active teacher of a class where `pupil_id` is an active
/// pupil (the same rule as the database's trigger on level decisions).
pub fn teaches_pupil(
    conn: &Connection,
    teacher_id: i64,
    pupil_id: i64,
) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM enrolments t
             JOIN enrolments p ON p.class_id = t.class_id AND p.role = 'student'
             JOIN users tu ON tu.id = t.user_id AND tu.role = 'teacher' AND tu.active = 1
             JOIN users pu ON pu.id = p.user_id AND pu.role = 'student' AND pu.active = 1
             WHERE t.user_id = ?1 AND t.role = 'teacher' AND p.user_id = ?2",
        )?
        .exists(params![teacher_id, pupil_id])?)
}

/// The active pupils of every class `teacher_id` teaches, by name.
pub fn pupils_of(conn: &Connection, teacher_id: i64) -> Result<Vec<User>, StoreError> {
    let sql = format!(
        "SELECT {cols} FROM users u WHERE u.active = 1 AND u.id IN (
             SELECT e.user_id FROM enrolments t
             JOIN enrolments e ON e.class_id = t.class_id AND e.role = 'student'
             WHERE t.user_id = ?1 AND t.role = 'teacher')
         ORDER BY u.family_name, u.given_name",
        cols = prefixed_user_columns()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map([teacher_id], user_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

fn prefixed_user_columns() -> String {
    USER_COLUMNS
        .split(", ")
        .map(|c| format!("u.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Members of a class with their role in it, teachers first.
pub fn members(conn: &Connection, class_id: i64) -> Result<Vec<(User, String)>, StoreError> {
    let sql = format!(
        "SELECT {cols}, e.role FROM users u JOIN enrolments e ON e.user_id = u.id
         WHERE e.class_id = ?1 AND u.active = 1
         ORDER BY e.role DESC, u.family_name, u.given_name",
        cols = prefixed_user_columns()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map([class_id], |r| Ok((user_from_row(r)?, r.get(11)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn enrol(
    conn: &Connection,
    sourced_id: Option<&str>,
    class_id: i64,
    user_id: i64,
    role: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO enrolments (sourced_id, class_id, user_id, role, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (class_id, user_id) DO UPDATE SET role = excluded.role,
             sourced_id = coalesce(excluded.sourced_id, enrolments.sourced_id)",
        params![sourced_id, class_id, user_id, role, now()],
    )?;
    super::replica::note_enrolment(conn, class_id, user_id)
}

pub fn unenrol(conn: &Connection, class_id: i64, user_id: i64) -> Result<bool, StoreError> {
    let gone = conn.execute(
        "DELETE FROM enrolments WHERE class_id = ?1 AND user_id = ?2",
        params![class_id, user_id],
    )? > 0;
    super::replica::note_enrolment(conn, class_id, user_id)?;
    Ok(gone)
}

/// The enrolment stored under a OneRoster `sourcedId`: (class id, user id, role).
pub fn enrolment_by_sourced_id(
    conn: &Connection,
    sourced_id: &str,
) -> Result<Option<(i64, i64, String)>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT class_id, user_id, role FROM enrolments WHERE sourced_id = ?1")?
        .query_row([sourced_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?)
}

pub fn delete_enrolment_by_sourced_id(
    conn: &Connection,
    sourced_id: &str,
) -> Result<bool, StoreError> {
    let Some((class_id, user_id, _)) = enrolment_by_sourced_id(conn, sourced_id)? else {
        return Ok(false);
    };
    unenrol(conn, class_id, user_id)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgFields {
    pub sourced_id: String,
    pub name: String,
    pub org_type: String,
    pub identifier: Option<String>,
    pub parent_sourced_id: Option<String>,
    pub active: bool,
}

pub fn org_by_sourced_id(
    conn: &Connection,
    sourced_id: &str,
) -> Result<Option<OrgFields>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT sourced_id, name, org_type, identifier, parent_sourced_id, active FROM orgs
             WHERE sourced_id = ?1",
        )?
        .query_row([sourced_id], |r| {
            Ok(OrgFields {
                sourced_id: r.get(0)?,
                name: r.get(1)?,
                org_type: r.get(2)?,
                identifier: r.get(3)?,
                parent_sourced_id: r.get(4)?,
                active: r.get(5)?,
            })
        })
        .optional()?)
}

pub fn upsert_org(conn: &Connection, org: &OrgFields) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO orgs (sourced_id, name, org_type, identifier, parent_sourced_id, active,
                           updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (sourced_id) DO UPDATE SET name = excluded.name,
             org_type = excluded.org_type, identifier = excluded.identifier,
             parent_sourced_id = excluded.parent_sourced_id, active = excluded.active,
             updated_at = excluded.updated_at",
        params![
            org.sourced_id,
            org.name,
            org.org_type,
            org.identifier,
            org.parent_sourced_id,
            org.active,
            now()
        ],
    )?;
    Ok(())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Credential {
    pub key_id: String,
    pub label: String,
    pub scopes: Vec<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    #[serde(skip)]
    pub secret_sha256: Vec<u8>,
}

fn credential_from_row(r: &Row<'_>) -> rusqlite::Result<Credential> {
    let scopes: String = r.get(3)?;
    Ok(Credential {
        key_id: r.get(0)?,
        label: r.get(1)?,
        secret_sha256: r.get(2)?,
        scopes: scopes.split_whitespace().map(str::to_string).collect(),
        created_at: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

pub fn insert_credential(
    conn: &Connection,
    key_id: &str,
    secret_sha256: &[u8],
    label: &str,
    scopes: &[String],
    created_by: Option<i64>,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO api_credentials (key_id, secret_sha256, label, scopes, created_by, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            key_id,
            secret_sha256,
            label,
            scopes.join(" "),
            created_by,
            now()
        ],
    )?;
    Ok(())
}

pub fn credential(conn: &Connection, key_id: &str) -> Result<Option<Credential>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT key_id, label, secret_sha256, scopes, created_at, revoked_at
             FROM api_credentials WHERE key_id = ?1",
        )?
        .query_row([key_id], credential_from_row)
        .optional()?)
}

pub fn credentials(conn: &Connection) -> Result<Vec<Credential>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT key_id, label, secret_sha256, scopes, created_at, revoked_at
         FROM api_credentials ORDER BY created_at DESC, id DESC",
    )?;
    let rows = stmt
        .query_map([], credential_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

pub fn revoke_credential(conn: &Connection, key_id: &str) -> Result<(), StoreError> {
    let n = conn.execute(
        "UPDATE api_credentials SET revoked_at = ?2 WHERE key_id = ?1 AND revoked_at IS NULL",
        params![key_id, now()],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}
