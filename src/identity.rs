//! The site identity: an Ed25519 key pair made at `init` (and again at `restore`), whose
//! public half and derived `site_id` are recorded in the system database. Federation sync
//! will sign with it; two appliances never share one.

use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::store::backup::hex;
use crate::tls::{TlsError, write_private};

pub const SITE_KEY: &str = "keys/site.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot generate the site key")]
    Generate,
    #[error("the site key file is damaged")]
    Damaged,
    #[error(transparent)]
    Write(#[from] TlsError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct SiteIdentity {
    pub site_id: String,
    pub public_key: Vec<u8>,
}

fn site_id_of(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    format!("site-{}", &hex(digest.as_ref())[..20])
}

/// Generates a new key pair and writes it to `keys/site.key` (0600), replacing any other.
pub fn generate(data_dir: &Path) -> Result<SiteIdentity, IdentityError> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| IdentityError::Generate)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| IdentityError::Generate)?;
    write_private(&data_dir.join(SITE_KEY), pkcs8.as_ref(), false)?;
    let public_key = pair.public_key().as_ref().to_vec();
    Ok(SiteIdentity {
        site_id: site_id_of(&public_key),
        public_key,
    })
}

/// Reads the site key back.
pub fn load(data_dir: &Path) -> Result<SiteIdentity, IdentityError> {
    let bytes = std::fs::read(data_dir.join(SITE_KEY))?;
    let pair = Ed25519KeyPair::from_pkcs8(&bytes).map_err(|_| IdentityError::Damaged)?;
    let public_key = pair.public_key().as_ref().to_vec();
    Ok(SiteIdentity {
        site_id: site_id_of(&public_key),
        public_key,
    })
}

/// The site's key pair, to sign with.
pub fn key_pair(data_dir: &Path) -> Result<Ed25519KeyPair, IdentityError> {
    let bytes = std::fs::read(data_dir.join(SITE_KEY))?;
    Ed25519KeyPair::from_pkcs8(&bytes).map_err(|_| IdentityError::Damaged)
}

/// The site id of a public key (what the hub checks a site's claimed id against).
pub fn site_id(public_key: &[u8]) -> String {
    site_id_of(public_key)
}
