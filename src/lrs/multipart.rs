//! `multipart/mixed` bodies: statements with their attachments. The first part is the
//! statement JSON; every further part is one attachment's content, named by its
//! `X-Experience-API-Hash` header (the SHA-2 of its bytes, which is checked).
//!
//! Must not: store anything; the caller matches parts to the statements' attachment objects.

use axum::body::Bytes;

use super::LrsError;

/// One attachment's bytes, with the hash and type its part declared.
#[derive(Debug, Clone)]
pub struct Part {
    pub sha2: String,
    pub content_type: String,
    pub content: Vec<u8>,
}

/// The boundary parameter of a `multipart/mixed` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut pieces = content_type.split(';');
    let essence = pieces.next()?.trim();
    if !essence.eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    pieces.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Hex SHA-2 digest of `content` with the same length as `like` (SHA-224/256/384/512).
pub fn sha2_like(like: &str, content: &[u8]) -> Option<String> {
    use ring::digest::{SHA256, SHA384, SHA512, digest};
    let algorithm = match like.len() {
        64 => &SHA256,
        96 => &SHA384,
        128 => &SHA512,
        _ => return None,
    };
    Some(
        digest(algorithm, content)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// Splits a `multipart/mixed` request into the statement JSON and the attachment parts.
pub async fn parse(body: Bytes, boundary: &str) -> Result<(Bytes, Vec<Part>), LrsError> {
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let bad = |e: multer::Error| LrsError::invalid(format!("the multipart body is malformed: {e}"));
    let first = multipart
        .next_field()
        .await
        .map_err(bad)?
        .ok_or_else(|| LrsError::invalid("the multipart body has no statement part"))?;
    let first_type = first
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !first_type
        .split(';')
        .next()
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/json"))
    {
        return Err(LrsError::invalid(
            "the first part of a multipart body must be the statements, as application/json",
        ));
    }
    let statements = first.bytes().await.map_err(bad)?;
    let mut parts = Vec::new();
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let header = |name: &str| {
            field
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let sha2 = header("x-experience-api-hash")
            .ok_or_else(|| {
                LrsError::invalid("an attachment part has no X-Experience-API-Hash header")
            })?
            .trim()
            .to_ascii_lowercase();
        let content_type = header("content-type").unwrap_or_default();
        if let Some(encoding) = header("content-transfer-encoding")
            && !encoding.trim().eq_ignore_ascii_case("binary")
        {
            return Err(LrsError::invalid(format!(
                "attachment {sha2}: Content-Transfer-Encoding must be binary, not {encoding}"
            )));
        }
        let content = field.bytes().await.map_err(bad)?.to_vec();
        match sha2_like(&sha2, &content) {
            Some(actual) if actual == sha2 => {}
            _ => {
                return Err(LrsError::invalid(format!(
                    "attachment {sha2}: its content does not have this SHA-2 hash"
                )));
            }
        }
        parts.push(Part {
            sha2,
            content_type,
            content,
        });
    }
    Ok((statements, parts))
}

/// Builds a `multipart/mixed` response: the JSON first, then each attachment.
pub fn build(json: &[u8], attachments: &[(String, String, Vec<u8>)]) -> (String, Vec<u8>) {
    let boundary = format!("ceredis-{:016x}", u64::from_le_bytes(ring_random_bytes()));
    let mut body = Vec::with_capacity(json.len() + 256);
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n").as_bytes(),
    );
    body.extend_from_slice(json);
    for (sha2, content_type, content) in attachments {
        body.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\
                 Content-Transfer-Encoding: binary\r\nX-Experience-API-Hash: {sha2}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
    }
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/mixed; boundary={boundary}"), body)
}

fn ring_random_bytes() -> [u8; 8] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_what_it_builds() {
        let content = b"hello".to_vec();
        let sha = sha2_like(&"0".repeat(64), &content).unwrap();
        let (ct, body) = build(
            b"{\"a\":1}",
            &[(sha.clone(), "text/plain".into(), content.clone())],
        );
        let b = boundary(&ct).unwrap();
        let (json, parts) = parse(Bytes::from(body), &b).await.unwrap();
        assert_eq!(&json[..], b"{\"a\":1}");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].sha2, sha);
        assert_eq!(parts[0].content, content);
    }

    #[tokio::test]
    async fn a_part_whose_hash_lies_is_refused() {
        let (ct, body) = build(
            b"{}",
            &[("a".repeat(64), "text/plain".into(), b"x".to_vec())],
        );
        let e = parse(Bytes::from(body), &boundary(&ct).unwrap())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("SHA-2"), "{e}");
    }
}
