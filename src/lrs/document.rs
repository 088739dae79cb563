//! Documents (State, Activity Profile, Agent Profile): ETags, the `If-Match` /
//! `If-None-Match` preconditions, and JSON merge on POST. A write is decided inside the
//! tenant writer's transaction, so two clients racing on one document cannot both win.
//!
//! Must not: parse HTTP (the caller passes the header values).

use rusqlite::Connection;
use serde_json::Value;

use super::LrsError;
use crate::store::lrs::{self as sql, Document, DocumentKey};

/// A quoted SHA-1 of the content, the ETag the xAPI specification describes.
pub fn etag(content: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, content);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// The precondition headers of a write.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
}

fn etag_listed(list: &str, etag: &str) -> bool {
    let bare = etag.trim_matches('"');
    list.split(',').map(str::trim).any(|t| {
        t == "*"
            || t.trim_start_matches("W/")
                .trim_matches('"')
                .eq_ignore_ascii_case(bare)
    })
}

impl Preconditions {
    fn any(&self) -> bool {
        self.if_match.is_some() || self.if_none_match.is_some()
    }

    fn check(&self, current: Option<&Document>) -> Result<(), LrsError> {
        if let Some(m) = &self.if_match {
            match current {
                Some(d) if etag_listed(m, &d.etag) => {}
                Some(_) => {
                    return Err(LrsError::PreconditionFailed(
                        "If-Match does not match the document's current ETag".into(),
                    ));
                }
                None => {
                    return Err(LrsError::PreconditionFailed(
                        "If-Match was sent but the document does not exist".into(),
                    ));
                }
            }
        }
        if let (Some(m), Some(d)) = (&self.if_none_match, current)
            && etag_listed(m, &d.etag)
        {
            return Err(LrsError::PreconditionFailed(
                "If-None-Match: the document already exists".into(),
            ));
        }
        Ok(())
    }
}

/// How a document is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// PUT: replace. Without `If-Match` or `If-None-Match`, a request is refused (400) when
    /// `new_needs_precondition` and the document does not exist, and refused (409) when
    /// `existing_needs_precondition` and it does.
    Replace {
        new_needs_precondition: bool,
        existing_needs_precondition: bool,
    },
    /// POST: merge JSON objects (or create).
    Merge,
}

fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/json"))
}

/// Applies a write inside the writer's transaction.
#[allow(clippy::too_many_arguments)]
pub fn write(
    conn: &Connection,
    key: &DocumentKey,
    doc_id: &str,
    content_type: &str,
    content: Vec<u8>,
    mode: WriteMode,
    pre: &Preconditions,
    now_ms: i64,
) -> Result<(), LrsError> {
    let current = sql::document(conn, key, doc_id)?;
    pre.check(current.as_ref())?;
    let (content_type, content) = match (mode, current) {
        (
            WriteMode::Replace {
                new_needs_precondition: true,
                ..
            },
            None,
        ) if !pre.any() => {
            return Err(LrsError::invalid(
                "send If-None-Match: * to create this document (or If-Match to replace it)",
            ));
        }
        (
            WriteMode::Replace {
                existing_needs_precondition: true,
                ..
            },
            Some(_),
        ) if !pre.any() => {
            return Err(LrsError::Conflict(
                "this document exists: send If-Match with its ETag (or If-None-Match: *) to \
                 replace it"
                    .into(),
            ));
        }
        (WriteMode::Merge, Some(old)) => {
            let new_obj = is_json(content_type)
                .then(|| serde_json::from_slice::<Value>(&content).ok())
                .flatten();
            let old_obj = is_json(&old.content_type)
                .then(|| serde_json::from_slice::<Value>(&old.content).ok())
                .flatten();
            match (old_obj, new_obj) {
                (Some(Value::Object(mut o)), Some(Value::Object(n))) => {
                    o.extend(n);
                    (
                        "application/json".to_string(),
                        Value::Object(o).to_string().into_bytes(),
                    )
                }
                _ => {
                    return Err(LrsError::invalid(
                        "POST merges JSON objects only: both the stored document and the \
                         request body must be JSON objects sent as application/json",
                    ));
                }
            }
        }
        (WriteMode::Merge, None) => {
            if is_json(content_type)
                && !matches!(
                    serde_json::from_slice::<Value>(&content),
                    Ok(Value::Object(_))
                )
            {
                return Err(LrsError::invalid(
                    "a document sent as application/json must be a JSON object",
                ));
            }
            (content_type.to_string(), content)
        }
        (WriteMode::Replace { .. }, _) => (content_type.to_string(), content),
    };
    let doc = Document {
        etag: etag(&content),
        content_type,
        content,
        updated: now_ms,
    };
    sql::put_document(conn, key, doc_id, &doc)?;
    Ok(())
}

/// Deletes one document (with its preconditions) or all documents under `key`.
pub fn delete(
    conn: &Connection,
    key: &DocumentKey,
    doc_id: Option<&str>,
    pre: &Preconditions,
    now_ms: i64,
) -> Result<(), LrsError> {
    if let Some(id) = doc_id {
        let current = sql::document(conn, key, id)?;
        pre.check(current.as_ref())?;
    }
    sql::delete_documents(conn, key, doc_id, now_ms)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::migrate(
            &mut conn,
            std::path::Path::new("test"),
            crate::store::tenant::MIGRATIONS,
        )
        .unwrap();
        conn
    }

    fn key() -> DocumentKey {
        DocumentKey {
            kind: "activity_profile",
            activity_id: "http://example.org/a".into(),
            agent: String::new(),
            registration: String::new(),
        }
    }

    const JSON: &str = "application/json";

    #[test]
    fn replace_needs_a_precondition_once_the_document_exists() {
        let c = db();
        let replace = WriteMode::Replace {
            new_needs_precondition: false,
            existing_needs_precondition: true,
        };
        let none = Preconditions::default();
        write(
            &c,
            &key(),
            "p",
            JSON,
            b"{\"a\":1}".to_vec(),
            replace,
            &none,
            1,
        )
        .unwrap();
        let again = write(
            &c,
            &key(),
            "p",
            JSON,
            b"{\"a\":2}".to_vec(),
            replace,
            &none,
            2,
        );
        assert!(matches!(again, Err(LrsError::Conflict(_))), "{again:?}");
        let stale = Preconditions {
            if_match: Some(etag(b"{\"a\":0}")),
            if_none_match: None,
        };
        let r = write(&c, &key(), "p", JSON, b"{}".to_vec(), replace, &stale, 3);
        assert!(matches!(r, Err(LrsError::PreconditionFailed(_))), "{r:?}");
        let fresh = Preconditions {
            if_match: Some(etag(b"{\"a\":1}")),
            if_none_match: None,
        };
        write(
            &c,
            &key(),
            "p",
            JSON,
            b"{\"a\":3}".to_vec(),
            replace,
            &fresh,
            4,
        )
        .unwrap();
        let create_only = Preconditions {
            if_match: None,
            if_none_match: Some("*".into()),
        };
        let r = write(
            &c,
            &key(),
            "p",
            JSON,
            b"{}".to_vec(),
            replace,
            &create_only,
            5,
        );
        assert!(matches!(r, Err(LrsError::PreconditionFailed(_))), "{r:?}");
        let doc = sql::document(&c, &key(), "p").unwrap().unwrap();
        assert_eq!(doc.content, b"{\"a\":3}");
        assert_eq!(doc.etag, etag(b"{\"a\":3}"));
    }

    #[test]
    fn post_merges_json_objects_and_refuses_anything_else() {
        let c = db();
        let none = Preconditions::default();
        write(
            &c,
            &key(),
            "p",
            JSON,
            br#"{"a":1,"b":1}"#.to_vec(),
            WriteMode::Merge,
            &none,
            1,
        )
        .unwrap();
        write(
            &c,
            &key(),
            "p",
            JSON,
            br#"{"b":2,"c":3}"#.to_vec(),
            WriteMode::Merge,
            &none,
            2,
        )
        .unwrap();
        let doc = sql::document(&c, &key(), "p").unwrap().unwrap();
        let merged: Value = serde_json::from_slice(&doc.content).unwrap();
        assert_eq!(merged, serde_json::json!({"a": 1, "b": 2, "c": 3}));
        let r = write(
            &c,
            &key(),
            "p",
            "text/plain",
            b"x".to_vec(),
            WriteMode::Merge,
            &none,
            3,
        );
        assert!(matches!(r, Err(LrsError::Invalid(_))), "{r:?}");
        let unchanged = sql::document(&c, &key(), "p").unwrap().unwrap();
        assert_eq!(unchanged.content, doc.content);
    }
}
