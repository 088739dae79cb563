//! Tables that the system database and every tenant database both have, with the same
//! shape: login sessions and one-time setup tokens.

use rusqlite::{Connection, OptionalExtension, params};

use super::{StoreError, now};

pub const SESSIONS_AND_TOKENS: &str = "
CREATE TABLE sessions (
    token_hash   BLOB PRIMARY KEY,
    principal_id INTEGER NOT NULL,
    csrf         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_by_principal ON sessions(principal_id);
CREATE TABLE setup_tokens (
    token_hash BLOB PRIMARY KEY,
    purpose    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
) WITHOUT ROWID;
";

/// A stored session, found by the SHA-256 of its cookie token.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub principal_id: i64,
    pub csrf: String,
    pub expires_at: i64,
}

pub fn insert_session(
    conn: &Connection,
    token_hash: &[u8],
    principal_id: i64,
    csrf: &str,
    ttl_secs: i64,
) -> Result<(), StoreError> {
    let t = now();
    conn.execute(
        "INSERT INTO sessions (token_hash, principal_id, csrf, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![token_hash, principal_id, csrf, t, t + ttl_secs],
    )?;
    // Expired sessions are swept as new ones arrive.
    conn.execute("DELETE FROM sessions WHERE expires_at < ?1", [t])?;
    Ok(())
}

pub fn find_session(
    conn: &Connection,
    token_hash: &[u8],
) -> Result<Option<SessionRow>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT principal_id, csrf, expires_at FROM sessions
             WHERE token_hash = ?1 AND expires_at > ?2",
            params![token_hash, now()],
            |r| {
                Ok(SessionRow {
                    principal_id: r.get(0)?,
                    csrf: r.get(1)?,
                    expires_at: r.get(2)?,
                })
            },
        )
        .optional()?)
}

pub fn delete_session(conn: &Connection, token_hash: &[u8]) -> Result<(), StoreError> {
    conn.execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])?;
    Ok(())
}

pub fn delete_sessions_of(conn: &Connection, principal_id: i64) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM sessions WHERE principal_id = ?1",
        [principal_id],
    )?;
    Ok(())
}

/// Ends every session of `principal_id` but the one whose hash is `keep`.
pub fn delete_other_sessions(
    conn: &Connection,
    principal_id: i64,
    keep: &[u8],
) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM sessions WHERE principal_id = ?1 AND token_hash <> ?2",
        params![principal_id, keep],
    )?;
    Ok(())
}

pub fn insert_setup_token(
    conn: &Connection,
    token_hash: &[u8],
    purpose: &str,
    ttl_secs: i64,
) -> Result<(), StoreError> {
    let t = now();
    conn.execute(
        "INSERT INTO setup_tokens (token_hash, purpose, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![token_hash, purpose, t, t + ttl_secs],
    )?;
    Ok(())
}

/// State of a setup token, as the setup page must explain it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Valid,
    Used,
    Expired,
    Unknown,
}

pub fn setup_token_state(
    conn: &Connection,
    token_hash: &[u8],
    purpose: &str,
) -> Result<TokenState, StoreError> {
    let row: Option<(i64, Option<i64>)> = conn
        .query_row(
            "SELECT expires_at, used_at FROM setup_tokens WHERE token_hash = ?1 AND purpose = ?2",
            params![token_hash, purpose],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        None => TokenState::Unknown,
        Some((_, Some(_))) => TokenState::Used,
        Some((exp, None)) if exp <= now() => TokenState::Expired,
        Some(_) => TokenState::Valid,
    })
}

/// Marks the token used; returns the state it was in. Only a `Valid` token is consumed, and
/// only once: two concurrent requests cannot both see `Valid`.
pub fn consume_setup_token(
    conn: &Connection,
    token_hash: &[u8],
    purpose: &str,
) -> Result<TokenState, StoreError> {
    let state = setup_token_state(conn, token_hash, purpose)?;
    if state == TokenState::Valid {
        conn.execute(
            "UPDATE setup_tokens SET used_at = ?2 WHERE token_hash = ?1",
            params![token_hash, now()],
        )?;
    }
    Ok(state)
}
