//! Human passwords (argon2id, on a bounded pool of blocking threads) and random secrets.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{OnceCell, Semaphore};

use crate::config::AuthConfig;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("argon2 parameters are invalid: {0}")]
    Params(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("the system random generator failed")]
    Random,
    #[error("the hashing pool has stopped")]
    Stopped,
}

/// Hashes and verifies passwords with argon2id. At most `concurrency` hashes run at once,
/// each on a blocking thread, so a login burst queues instead of starving the server and
/// its memory stays bounded (`concurrency × argon2_memory_kib`).
#[derive(Clone)]
pub struct Hasher {
    params: Params,
    slots: Arc<Semaphore>,
    /// A hash of a random password, verified when the account does not exist so that a
    /// missing account takes as long as a wrong password.
    decoy: Arc<OnceCell<String>>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("params", &self.params)
            .finish()
    }
}

pub const MIN_PASSWORD_CHARS: usize = 10;

impl Hasher {
    pub fn new(config: &AuthConfig) -> Result<Hasher, PasswordError> {
        let params = Params::new(
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_lanes,
            None,
        )
        .map_err(|e| PasswordError::Params(e.to_string()))?;
        let concurrency = if config.hash_concurrency == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            config.hash_concurrency
        };
        Ok(Hasher {
            params,
            slots: Arc::new(Semaphore::new(concurrency)),
            decoy: Arc::new(OnceCell::new()),
        })
    }

    fn argon2(params: Params) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }

    /// A PHC string (`$argon2id$v=19$m=…`) for `password`.
    pub fn hash_blocking(&self, password: &str) -> Result<String, PasswordError> {
        let mut salt = [0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| PasswordError::Random)?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
        Self::argon2(self.params.clone())
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    }

    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        // The permit moves into the blocking task: a client that disconnects does not free
        // its slot while the hash still runs.
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PasswordError::Stopped)?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            me.hash_blocking(&password)
        })
        .await
        .map_err(|_| PasswordError::Stopped)?
    }

    /// Verifies `password` against `stored`; with `None` (no such account, or an account
    /// without a password yet) it burns the same time and answers `false`.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let stored = match stored {
            Some(s) => s,
            None => {
                let decoy = self
                    .decoy
                    .get_or_try_init(|| async { self.hash(random_token(18)?).await })
                    .await?
                    .clone();
                let _ = self.verify_inner(password, decoy).await?;
                return Ok(false);
            }
        };
        self.verify_inner(password, stored).await
    }

    async fn verify_inner(&self, password: String, stored: String) -> Result<bool, PasswordError> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PasswordError::Stopped)?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return false;
            };
            // Parameters come from the stored hash, so old hashes keep verifying after a
            // configuration change.
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .await
        .map_err(|_| PasswordError::Stopped)
    }
}

/// `bytes` random bytes, base64url without padding.
pub fn random_token(bytes: usize) -> Result<String, PasswordError> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| PasswordError::Random)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// A one-time password a pupil can type from a printed slip: three groups of four
/// characters from an alphabet without look-alikes (no 0/o, 1/l/i), ~62 bits.
pub fn one_time_password() -> Result<String, PasswordError> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut buf = [0u8; 12];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| PasswordError::Random)?;
    let chars: Vec<char> = buf
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect();
    Ok(chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-"))
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// Why a new password is refused, in words for the person typing it.
pub fn password_problem(password: &str, username: &str) -> Option<String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Some(format!(
            "the password must have at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if password.len() > 1024 {
        return Some("the password is longer than 1024 bytes".into());
    }
    if !username.is_empty() && password.to_lowercase().contains(&username.to_lowercase()) {
        return Some("the password must not contain the user name".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Hasher {
        Hasher::new(&AuthConfig {
            argon2_memory_kib: 8192,
            argon2_iterations: 1,
            ..AuthConfig::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn hashes_verify_and_wrong_passwords_do_not() {
        let h = fast();
        let stored = h.hash("correct horse battery".into()).await.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"));
        assert!(
            h.verify("correct horse battery".into(), Some(stored.clone()))
                .await
                .unwrap()
        );
        assert!(
            !h.verify("correct horse batterY".into(), Some(stored))
                .await
                .unwrap()
        );
        assert!(!h.verify("anything".into(), None).await.unwrap());
        assert!(
            !h.verify("x".into(), Some("not a hash".into()))
                .await
                .unwrap()
        );
    }

    #[test]
    fn one_time_passwords_are_readable_and_distinct() {
        let a = one_time_password().unwrap();
        let b = one_time_password().unwrap();
        assert_eq!(a.len(), 14);
        assert_ne!(a, b);
        assert!(!a.contains(['0', 'o', '1', 'l', 'i']));
    }

    #[test]
    fn weak_passwords_are_explained() {
        assert!(password_problem("short", "amel").is_some());
        assert!(password_problem("amel-is-great-2026", "amel").is_some());
        assert!(password_problem("tulipe-orange-42", "amel").is_none());
    }
}
