//! Signed statements: a statement may carry a JWS (compact serialization) as an attachment
//! with usage type `…/attachments/signature`. The LRS refuses a signature that is not a
//! well-formed JWS with an RS256/RS384/RS512 algorithm, whose payload is not the statement
//! it is attached to, or whose `x5c` certificate does not verify it.
//!
//! Must not: judge whether the signer is trusted (that is the reader's decision).

use base64::Engine;
use serde_json::Value;

use super::LrsError;
use super::statement::same_content;

pub const SIGNATURE_USAGE: &str = "http://adlnet.gov/expapi/attachments/signature";

fn b64(part: &str, what: &str) -> Result<Vec<u8>, LrsError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| {
            LrsError::invalid(format!("the statement signature's {what} is not base64url"))
        })
}

/// The statement as it was before the signature attachment was added.
fn unsigned(statement: &Value) -> Value {
    let mut s = statement.clone();
    if let Some(Value::Array(items)) = s.get_mut("attachments") {
        items.retain(|a| a.get("usageType").and_then(Value::as_str) != Some(SIGNATURE_USAGE));
        if items.is_empty()
            && let Value::Object(o) = &mut s
        {
            o.remove("attachments");
        }
    }
    if let Value::Object(o) = &mut s {
        o.remove("id");
    }
    s
}

/// Checks one signature against the statement (as the client sent it).
pub fn verify(jws: &[u8], statement: &Value) -> Result<(), LrsError> {
    let text = std::str::from_utf8(jws)
        .map_err(|_| LrsError::invalid("the statement signature is not a JWS"))?
        .trim();
    let parts: Vec<&str> = text.split('.').collect();
    let [header_b64, payload_b64, signature_b64] = parts[..] else {
        return Err(LrsError::invalid(
            "the statement signature is not a JWS in compact serialization",
        ));
    };
    let header: Value = serde_json::from_slice(&b64(header_b64, "header")?)
        .map_err(|_| LrsError::invalid("the statement signature's header is not JSON"))?;
    let algorithm: &'static ring::signature::RsaParameters =
        match header.get("alg").and_then(Value::as_str) {
            Some("RS256") => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            Some("RS384") => &ring::signature::RSA_PKCS1_2048_8192_SHA384,
            Some("RS512") => &ring::signature::RSA_PKCS1_2048_8192_SHA512,
            other => {
                return Err(LrsError::invalid(format!(
                    "the statement signature uses {}; only RS256, RS384 and RS512 are allowed",
                    other.unwrap_or("no algorithm")
                )));
            }
        };
    let payload: Value = serde_json::from_slice(&b64(payload_b64, "payload")?)
        .map_err(|_| LrsError::invalid("the statement signature's payload is not JSON"))?;
    let signature = b64(signature_b64, "signature")?;
    if !same_content(&unsigned(&payload), &unsigned(statement)) {
        return Err(LrsError::invalid(
            "the statement signature's payload is not this statement",
        ));
    }
    if let Some(chain) = header.get("x5c").and_then(Value::as_array) {
        let first = chain
            .first()
            .and_then(Value::as_str)
            .ok_or_else(|| LrsError::invalid("the statement signature's x5c is empty"))?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(first)
            .map_err(|_| LrsError::invalid("the statement signature's x5c is not base64"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| LrsError::invalid("the statement signature's x5c is not a certificate"))?;
        let key = cert.public_key().subject_public_key.data.to_vec();
        let signed = format!("{header_b64}.{payload_b64}");
        ring::signature::UnparsedPublicKey::new(algorithm, key)
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| {
                LrsError::invalid(
                    "the statement signature does not verify with its x5c certificate",
                )
            })?;
    }
    Ok(())
}
