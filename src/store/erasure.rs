//! Erasure of a tenant's user, in one transaction: their xAPI statements and documents,
//! their assessment data (evidence, estimates, levels, suggestions, the content of their
//! journal entries), what apps keep about them (keys under `u/<pseudonym>/`), their
//! sessions, enrolments and account. What is left is a tombstone: a journal entry and a
//! change-log row naming the user's opaque xAPI account name, so that other copies of the
//! tenant's records (federation sync) erase them too.
//!
//! Must not: erase a teacher whose level decisions are part of pupils' records (their
//! account is deactivated instead), or leave anything of the user behind.

use rusqlite::Connection;
use serde_json::{Value, json};

use super::StoreError;
use crate::competency::{Actor, Refusal};
use crate::store::tenant::User;

/// Erases `user`; returns what went, or why it cannot.
pub fn erase_user(
    conn: &Connection,
    user: &User,
    home_page: &str,
    by: &Actor,
    at: i64,
) -> Result<Result<Value, Refusal>, StoreError> {
    let decided: i64 = conn
        .prepare_cached("SELECT count(*) FROM level_decisions WHERE decided_by = ?1")?
        .query_row([user.id], |r| r.get(0))?;
    if decided > 0 {
        return Ok(Err(Refusal::new(
            "has_decisions",
            format!(
                "{} decided {decided} pupils' levels, which stay in those pupils' records: \
                 deactivate the account instead",
                user.username
            ),
        )));
    }
    let before = super::replica::last_change(conn)?;
    let (index_key, _) = crate::lrs::learner_key(home_page, &user.agent_name);
    let ifi = crate::lrs::statement::agent_key(&crate::lrs::learner(home_page, &user.agent_name))
        .unwrap_or_default();
    let records = super::lrs::erase_agent(conn, &index_key, &ifi)?;
    let assessment = super::competency::erase_assessment(conn, user.id)?;
    let app_keys = super::apps::erase_user_keys(conn, &user.agent_name)?;
    super::shared::delete_sessions_of(conn, user.id)?;
    conn.prepare_cached("DELETE FROM users WHERE id = ?1")?
        .execute([user.id])?;
    // Like a credential's author (`ON DELETE SET NULL`): the id may be given again.
    conn.prepare_cached("UPDATE research_projects SET created_by = NULL WHERE created_by = ?1")?
        .execute([user.id])?;
    let removed = json!({
        "statements": records.statements,
        "documents": records.documents,
        "evidence": assessment.evidence,
        "scores": assessment.scores,
        "levels": assessment.levels,
        "suggestions": assessment.suggestions,
        "journal_entries_redacted": assessment.journal_entries_redacted,
        "app_keys": app_keys,
    });
    let seq = super::competency::erasure_tombstone(conn, &user.agent_name, by, &removed, at)?;
    super::replica::erase(conn, &user.agent_name, at)?;
    super::replica::forget_generation_marks(conn, before)?;
    super::lrs::log_change(conn, at * 1000, "erasure", &user.agent_name)?;
    Ok(Ok(
        json!({"erased": user.username, "removed": removed, "journal_seq": seq}),
    ))
}
