//! Federation: a site's link to its federation hub, and the hub itself (`ceredis hub`).
//!
//! Enrolment. The hub's operator issues a one-time token, `ceh1.<secret>.<fingerprint>`.
//! The fingerprint is the SHA-256 of the hub's CA certificate, so the site checks that it
//! is talking to the right hub before it sends anything. `ceredis federation join URL TOKEN`
//! then fetches that CA, compares the fingerprint, and registers the site's Ed25519 key
//! with the token. From then on the site trusts only that CA for the hub (the certificate
//! is pinned), and the hub accepts only requests signed by an enrolled, unrevoked site key.
//! Both sides are authenticated on every exchange.
//!
//! Signatures. A request carries `x-ceredis-site`, `x-ceredis-time` (Unix seconds) and
//! `x-ceredis-signature`: the Ed25519 signature, in base64url, of [`signing_input`] (the
//! method, the path and query, the time and the SHA-256 of the body). The hub refuses a
//! time more than [`MAX_SKEW_SECS`] away from its own clock, and tells the site its time,
//! so the site can correct its offset and try again. Replaying a request inside that
//! window gains nothing: it travels under TLS, and every federation request is
//! idempotent.

pub mod aggregates;
pub mod batch;
pub mod bundle;
pub mod client;
pub mod continuity;
pub mod hub;
pub mod publications;
pub mod sync;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};

pub const TOKEN_PREFIX: &str = "ceh1";
pub const SIGNATURE_CONTEXT: &str = "ceredis-federation-v1";
/// How far a request's time may be from the hub's clock.
pub const MAX_SKEW_SECS: i64 = 900;
pub const SITE_HEADER: &str = "x-ceredis-site";
pub const TIME_HEADER: &str = "x-ceredis-time";
pub const SIGNATURE_HEADER: &str = "x-ceredis-signature";
/// The hub's clock, sent with every error about time.
pub const HUB_TIME_HEADER: &str = "x-ceredis-hub-time";

/// Why a token cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "this is not an enrolment token: it looks like `ceh1.<secret>.<fingerprint>`, as \
     `ceredis hub token` prints it"
)]
pub struct BadToken;

/// A one-time enrolment token, as the hub's operator hands it to a site's operator.
#[derive(Debug, Clone, PartialEq)]
pub struct EnrolmentToken {
    /// 32 random bytes, base64url: the hub keeps only their SHA-256.
    pub secret: String,
    /// SHA-256 of the hub's CA certificate (DER), lowercase hex.
    pub ca_fingerprint: String,
}

impl EnrolmentToken {
    pub fn parse(text: &str) -> Result<EnrolmentToken, BadToken> {
        let mut parts = text.trim().split('.');
        let (Some(TOKEN_PREFIX), Some(secret), Some(fp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BadToken);
        };
        let secret_ok = secret_is_valid(secret);
        let fp_ok = fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit());
        if !secret_ok || !fp_ok {
            return Err(BadToken);
        }
        Ok(EnrolmentToken {
            secret: secret.to_string(),
            ca_fingerprint: fp.to_ascii_lowercase(),
        })
    }
}

impl std::fmt::Display for EnrolmentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TOKEN_PREFIX}.{}.{}", self.secret, self.ca_fingerprint)
    }
}

/// Whether `secret` has a token secret's shape: 32 bytes in base64url.
pub fn secret_is_valid(secret: &str) -> bool {
    B64.decode(secret).is_ok_and(|b| b.len() == 32)
}

/// SHA-256 of a token's secret, as the hub stores it.
pub fn secret_hash(secret: &str) -> String {
    crate::store::backup::hex(
        ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref(),
    )
}

/// SHA-256 (lowercase hex) of the first certificate of a PEM text, or `None` when it
/// holds none.
pub fn ca_fingerprint(pem: &str) -> Option<String> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    if parsed.label != "CERTIFICATE" {
        return None;
    }
    Some(crate::store::backup::hex(
        ring::digest::digest(&ring::digest::SHA256, &parsed.contents).as_ref(),
    ))
}

/// What a request's signature covers.
pub fn signing_input(method: &str, path_and_query: &str, time: i64, body: &[u8]) -> Vec<u8> {
    let body_hash = ring::digest::digest(&ring::digest::SHA256, body);
    format!(
        "{SIGNATURE_CONTEXT}\n{method}\n{path_and_query}\n{time}\n{}",
        crate::store::backup::hex(body_hash.as_ref())
    )
    .into_bytes()
}

/// The signature header's value for a request.
pub fn sign(
    key: &Ed25519KeyPair,
    method: &str,
    path_and_query: &str,
    time: i64,
    body: &[u8],
) -> String {
    B64.encode(
        key.sign(&signing_input(method, path_and_query, time, body))
            .as_ref(),
    )
}

/// Whether `signature` (base64url) is `public_key`'s signature of the request.
pub fn verify(
    public_key: &[u8],
    signature: &str,
    method: &str,
    path_and_query: &str,
    time: i64,
    body: &[u8],
) -> bool {
    let Ok(sig) = B64.decode(signature) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&signing_input(method, path_and_query, time, body), &sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_read_back_and_malformed_ones_are_refused() {
        let token = EnrolmentToken {
            secret: B64.encode([7u8; 32]),
            ca_fingerprint: "ab".repeat(32),
        };
        assert_eq!(EnrolmentToken::parse(&token.to_string()), Ok(token.clone()));
        let text = token.to_string();
        for bad in [
            "",
            "ceh1",
            &text.replacen("ceh1", "ceh2", 1),
            &format!("{text}.x"),
            &text.replace(&token.ca_fingerprint, "zz"),
            &text.replace(&token.secret, &B64.encode([7u8; 16])),
        ] {
            assert_eq!(EnrolmentToken::parse(bad), Err(BadToken), "{bad}");
        }
    }

    #[test]
    fn a_signature_covers_method_path_time_and_body() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public = ring::signature::KeyPair::public_key(&key).as_ref().to_vec();
        let sig = sign(&key, "POST", "/federation/v1/x?a=1", 100, b"body");
        assert!(verify(
            &public,
            &sig,
            "POST",
            "/federation/v1/x?a=1",
            100,
            b"body"
        ));
        assert!(!verify(
            &public,
            &sig,
            "GET",
            "/federation/v1/x?a=1",
            100,
            b"body"
        ));
        assert!(!verify(
            &public,
            &sig,
            "POST",
            "/federation/v1/x?a=2",
            100,
            b"body"
        ));
        assert!(!verify(
            &public,
            &sig,
            "POST",
            "/federation/v1/x?a=1",
            101,
            b"body"
        ));
        assert!(!verify(
            &public,
            &sig,
            "POST",
            "/federation/v1/x?a=1",
            100,
            b"bodY"
        ));
        assert!(!verify(&public, "not base64!", "POST", "/", 100, b""));
        let other =
            Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).unwrap().as_ref())
                .unwrap();
        let forged = sign(&other, "POST", "/federation/v1/x?a=1", 100, b"body");
        assert!(!verify(
            &public,
            &forged,
            "POST",
            "/federation/v1/x?a=1",
            100,
            b"body"
        ));
    }
}
