//! A tenant's continuity copy at the hub: encrypted so that the hub never reads it, and
//! restorable on a new appliance with the tenant's recovery key.
//!
//! Keys. Enabling the copy makes a recovery key (32 random bytes, shown once to the
//! operator, never stored). Three values are derived from it with HKDF-SHA256: the
//! tenant's opaque id at the hub, the encryption key (kept in the site's system database,
//! never in the tenant's own, to push), and a restore verifier (the hub keeps only its hash).
//!
//! Generations. A push takes a consistent snapshot of the tenant's database, compresses it
//! with zstd and cuts it into chunks of [`CHUNK`] bytes, each sealed with
//! ChaCha20-Poly1305 under the site's generation key ([`generation_key`]: the tenant's key
//! and the site's id). The nonce is the generation and the chunk's index; the associated
//! data is the tenant id, generation and index. Chunk 0 is a sealed manifest: name, size
//! and SHA-256 of the database, its maker and the last change it holds. A generation number
//! is reserved durably before its first chunk is sealed, and a site never reuses one: a
//! nonce never seals two plaintexts under one key. The sealed chunks wait in
//! `spool/continuity/<slug>/` until the hub commits them. An interrupted push resumes there
//! and re-sends only what the hub lacks. The hub acknowledges a commit after its durable
//! write, then drops every older generation, and with them whatever the tenant erased since.
//!
//! Batches and holders. Between generations a push sends the changes as batches
//! ([`super::batch`]). Several sites may hold a tenant (`restore --alongside`): each
//! [`pull`]s the others' batches and applies them, and before a generation a site sends as
//! batches every change up to its snapshot, so that the other holders get them all.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use reqwest::Method;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::client::{FederationError, HubClient};
use crate::store::{Database, StoreError, now};
use crate::tenant::{TenantHandle, Tenants};

/// Bytes of compressed database per chunk.
pub const CHUNK: usize = 1 << 20;
const CONTEXT: &[u8] = b"ceredis-continuity-v1";
const RECOVERY_PREFIX: &str = "cer1";

#[derive(Debug, thiserror::Error)]
pub enum ContinuityError {
    #[error(transparent)]
    Federation(#[from] FederationError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(
        "this is not a recovery key: it looks like `cer1.<43 characters>`, as it was shown \
         when the continuity copy was enabled"
    )]
    BadRecoveryKey,
    #[error(
        "the continuity copy of `{0}` is not enabled: `ceredis federation enable --tenant {0}`"
    )]
    NotEnabled(String),
    #[error("the continuity copy of `{0}` is already enabled (its recovery key was shown then)")]
    AlreadyEnabled(String),
    #[error("a tenant `{0}` already exists on this appliance: restore under another name")]
    Exists(String),
    #[error("another push of `{0}` is under way")]
    Busy(String),
    #[error(
        "the hub's copy does not decrypt with this recovery key, or it was altered \
         (chunk {0}); nothing was restored"
    )]
    Damaged(i64),
    #[error("the restored database is not sound ({0}); nothing was restored")]
    Unsound(String),
    #[error(
        "the hub no longer holds the changes of {origin} after {cursor} (its batches start \
         after {after}): restore this school from the hub again to catch up"
    )]
    Gap {
        origin: String,
        cursor: i64,
        after: i64,
    },
    #[error(transparent)]
    Tenant(#[from] crate::tenant::TenantError),
}

/// The tenant's recovery key.
pub struct RecoveryKey([u8; 32]);

impl std::fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKey(…)")
    }
}

impl RecoveryKey {
    pub fn generate() -> Result<RecoveryKey, ContinuityError> {
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| std::io::Error::other("no randomness available"))?;
        Ok(RecoveryKey(bytes))
    }

    pub fn parse(text: &str) -> Result<RecoveryKey, ContinuityError> {
        let rest = text
            .trim()
            .strip_prefix(RECOVERY_PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or(ContinuityError::BadRecoveryKey)?;
        let bytes: [u8; 32] = B64
            .decode(rest)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(ContinuityError::BadRecoveryKey)?;
        Ok(RecoveryKey(bytes))
    }

    fn derive(&self, info: &str) -> [u8; 32] {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, CONTEXT).extract(&self.0);
        let mut out = [0u8; 32];
        // Both calls fail only for outputs longer than 255 hash lengths.
        if let Ok(okm) = prk.expand(&[info.as_bytes()], hkdf::HKDF_SHA256) {
            let _ = okm.fill(&mut out);
        }
        out
    }

    /// The tenant's id at the hub: says nothing of the tenant.
    pub fn tenant_uid(&self) -> String {
        crate::store::backup::hex(&self.derive("tenant-id")[..16])
    }

    pub fn encryption_key(&self) -> [u8; 32] {
        self.derive("encryption")
    }

    pub fn verifier(&self) -> [u8; 32] {
        self.derive("restore-verifier")
    }
}

impl std::fmt::Display for RecoveryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{RECOVERY_PREFIX}.{}", B64.encode(self.0))
    }
}

/// The key that seals the generations a site makes: derived from the tenant's key and the
/// site's id, so that two sites holding one tenant never seal with the same key and nonce.
pub fn generation_key(tenant_key: &[u8], origin: &str) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, CONTEXT).extract(tenant_key);
    let mut out = [0u8; 32];
    let info = format!("generation|{origin}");
    // Both calls fail only for outputs longer than 255 hash lengths.
    if let Ok(okm) = prk.expand(&[info.as_bytes()], hkdf::HKDF_SHA256) {
        let _ = okm.fill(&mut out);
    }
    out
}

fn sealing_key(key: &[u8]) -> Option<LessSafeKey> {
    Some(LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, key).ok()?,
    ))
}

fn nonce(generation: i64, idx: i64) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&generation.to_be_bytes());
    n[8..].copy_from_slice(&(idx as u32).to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad(uid: &str, generation: i64, idx: i64) -> Vec<u8> {
    format!(
        "{}|{uid}|{generation}|{idx}",
        String::from_utf8_lossy(CONTEXT)
    )
    .into_bytes()
}

/// Seals one chunk.
pub fn seal(key: &[u8], uid: &str, generation: i64, idx: i64, plain: &[u8]) -> Vec<u8> {
    let mut data = plain.to_vec();
    if let Some(k) = sealing_key(key)
        && k.seal_in_place_append_tag(
            nonce(generation, idx),
            Aad::from(aad(uid, generation, idx)),
            &mut data,
        )
        .is_ok()
    {
        return data;
    }
    Vec::new()
}

/// Opens one chunk; `None` when the key is wrong or a byte changed.
pub fn open(key: &[u8], uid: &str, generation: i64, idx: i64, sealed: &[u8]) -> Option<Vec<u8>> {
    let mut data = sealed.to_vec();
    let plain = sealing_key(key)?
        .open_in_place(
            nonce(generation, idx),
            Aad::from(aad(uid, generation, idx)),
            &mut data,
        )
        .ok()?;
    Some(plain.to_vec())
}

/// The continuity state of a tenant, from its own database.
#[derive(Debug, Clone, Serialize)]
pub struct State {
    pub tenant_uid: String,
    #[serde(skip)]
    pub key: Vec<u8>,
    #[serde(skip)]
    pub verifier: Vec<u8>,
    pub enabled_at: i64,
    /// The last generation number reserved.
    pub generation: i64,
    /// The last generation the hub committed.
    pub committed: i64,
    pub committed_at: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    /// The last row of the tenant's change log the hub holds (in a generation or a batch).
    pub batched: i64,
    pub batched_at: Option<i64>,
    /// The next push seals a generation (an erasure came from another site).
    pub generation_due: bool,
    /// When the other sites' batches were last pulled.
    pub pulled_at: Option<i64>,
    /// What the last pull could not bring: changes that only a generation carries.
    pub lacking: Option<String>,
}

const STATE_COLUMNS: &str = "tenant_uid, key, verifier, enabled_at, generation, committed,
                             committed_at, last_error, last_error_at, batched, batched_at,
                             generation_due, pulled_at, lacking";

/// The state in the row's columns from `at` on.
fn state_from(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<State> {
    Ok(State {
        tenant_uid: r.get(at)?,
        key: r.get(at + 1)?,
        verifier: r.get(at + 2)?,
        enabled_at: r.get(at + 3)?,
        generation: r.get(at + 4)?,
        committed: r.get(at + 5)?,
        committed_at: r.get(at + 6)?,
        last_error: r.get(at + 7)?,
        last_error_at: r.get(at + 8)?,
        batched: r.get(at + 9)?,
        batched_at: r.get(at + 10)?,
        generation_due: r.get(at + 11)?,
        pulled_at: r.get(at + 12)?,
        lacking: r.get(at + 13)?,
    })
}

fn state_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<State> {
    state_from(r, 0)
}

/// The continuity state of tenant `slug` (in the system database).
pub fn state(conn: &rusqlite::Connection, slug: &str) -> Result<Option<State>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {STATE_COLUMNS} FROM continuity WHERE slug = ?1"
        ))?
        .query_row([slug], state_row)
        .optional()?)
}

/// The state of a tenant whose copy is enabled.
async fn enabled_state(system: &Database, slug: &str) -> Result<State, ContinuityError> {
    let owned = slug.to_string();
    system
        .read(move |c| state(c, &owned))
        .await?
        .ok_or_else(|| ContinuityError::NotEnabled(slug.to_string()))
}

/// Every tenant with its continuity copy enabled: `(slug, state)`.
pub fn states(conn: &rusqlite::Connection) -> Result<Vec<(String, State)>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT slug, {STATE_COLUMNS} FROM continuity ORDER BY slug"
        ))?
        .query_map([], |r| Ok((r.get(0)?, state_from(r, 1)?)))?
        .collect::<Result<_, _>>()?)
}

/// The rows not here yet that rows from other sites wait for.
pub async fn awaited(handle: &TenantHandle) -> Result<Vec<String>, StoreError> {
    handle.db.read(crate::store::replica::awaited).await
}

/// How many changes of the tenant wait for the hub (those after `batched`).
pub async fn pending(handle: &TenantHandle, batched: i64) -> Result<i64, StoreError> {
    handle
        .db
        .read(move |c| crate::store::replica::pending_changes(c, batched))
        .await
}

/// Enables the tenant's continuity copy; returns the recovery key, to show once.
pub async fn enable(system: &Database, slug: &str) -> Result<RecoveryKey, ContinuityError> {
    let recovery = RecoveryKey::generate()?;
    let (uid, key, verifier) = (
        recovery.tenant_uid(),
        recovery.encryption_key(),
        recovery.verifier(),
    );
    let owned = slug.to_string();
    let inserted = system
        .write(move |c| {
            Ok(c.prepare_cached(
                "INSERT OR IGNORE INTO continuity (slug, tenant_uid, key, verifier, enabled_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![owned, uid, &key[..], &verifier[..], now()])?)
        })
        .await?;
    if inserted == 0 {
        return Err(ContinuityError::AlreadyEnabled(slug.to_string()));
    }
    Ok(recovery)
}

/// What chunk 0 says of the generation.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    slug: String,
    name: String,
    created_at: i64,
    /// Size and SHA-256 of the database file.
    bytes: u64,
    sha256: String,
    /// Chunks, this one included.
    chunks: i64,
    /// The site that made it, and the last row of its change log it holds: the batches
    /// that follow it start there.
    #[serde(default)]
    origin: String,
    #[serde(default)]
    covers: i64,
}

/// Writes sealed chunks of what is written to it into a spool folder.
struct ChunkSink<'a> {
    dir: &'a Path,
    key: &'a [u8],
    uid: &'a str,
    generation: i64,
    next: i64,
    buffer: Vec<u8>,
}

impl ChunkSink<'_> {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let sealed = seal(self.key, self.uid, self.generation, self.next, &self.buffer);
        std::fs::write(chunk_path(self.dir, self.next), sealed)?;
        self.next += 1;
        self.buffer.clear();
        Ok(())
    }
}

impl Write for ChunkSink<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let n = room.min(data.len());
        self.buffer.extend_from_slice(&data[..n]);
        if self.buffer.len() == CHUNK {
            self.flush_chunk()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn chunk_path(dir: &Path, idx: i64) -> PathBuf {
    dir.join(format!("chunk-{idx:06}"))
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub generation: i64,
    pub chunks: i64,
    /// Chunks sent now (the others the hub had from an interrupted push).
    pub sent: i64,
    pub bytes_sent: u64,
    pub resumed: bool,
    /// Batches sent (changes after the last generation, or after the last batch).
    pub batches: i64,
    /// Changes the hub holds now, up to this row of the change log.
    pub batched: i64,
    /// How many sites hold the tenant's copy (this one included).
    pub holders: usize,
}

fn spool_dir(data_dir: &Path, slug: &str) -> PathBuf {
    data_dir.join("spool").join("continuity").join(slug)
}

/// A sealed generation in the spool.
#[derive(Debug, Clone)]
struct Sealed {
    generation: i64,
    chunks: i64,
    covers: i64,
    /// The other sites' changes it holds: `(origin, through)`.
    merged: Vec<(String, i64)>,
}

/// The spooled generation waiting for the hub, if one is complete.
fn spooled(dir: &Path) -> Option<Sealed> {
    let text = std::fs::read_to_string(dir.join("ready")).ok()?;
    let mut parts = text.split_whitespace();
    let mut number = || parts.next().and_then(|p| p.parse::<i64>().ok());
    let (generation, chunks, covers) = (number()?, number()?, number().unwrap_or(0));
    let merged = text
        .split_whitespace()
        .skip(3)
        .filter_map(|p| {
            let (o, n) = p.split_once(':')?;
            Some((o.to_string(), n.parse().ok()?))
        })
        .collect();
    Some(Sealed {
        generation,
        chunks,
        covers,
        merged,
    })
}

/// Pushes the tenant's copy: finishes the generation an interrupted push left, then sends
/// the changes after the last push as batches, or a new generation when the hub has none,
/// an erasure requires it, or `full` asks for one. Reports progress through `progress`. On failure the reason is recorded in the
/// tenant's continuity state, in plain words.
pub async fn push(
    client: &HubClient,
    system: &Database,
    handle: &TenantHandle,
    data_dir: &Path,
    full: bool,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Pushed, ContinuityError> {
    let result = match PushLock::take(data_dir, &handle.slug) {
        Ok(_lock) => push_inner(client, system, handle, data_dir, full, progress).await,
        Err(e) => Err(e),
    };
    record_outcome(system, &handle.slug, result).await
}

/// Records why a push or a pull failed, in plain words (or that it did not).
async fn record_outcome<T>(
    system: &Database,
    slug: &str,
    result: Result<T, ContinuityError>,
) -> Result<T, ContinuityError> {
    let (error, at) = match &result {
        Ok(_) => (None, None),
        Err(e) => (Some(e.to_string()), Some(now())),
    };
    let slug = slug.to_string();
    system
        .write(move |c| {
            c.prepare_cached(
                "UPDATE continuity SET last_error = ?2, last_error_at = ?3 WHERE slug = ?1",
            )?
            .execute(params![slug, error, at])?;
            Ok(())
        })
        .await?;
    result
}

/// One push of a tenant at a time (the server's sync and `ceredis federation push` share
/// the spool): an exclusive lock on `spool/continuity/<slug>.lock`, released on drop.
struct PushLock(std::fs::File);

impl PushLock {
    fn take(data_dir: &Path, slug: &str) -> Result<PushLock, ContinuityError> {
        let dir = data_dir.join("spool").join("continuity");
        std::fs::create_dir_all(&dir)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{slug}.lock")))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| ContinuityError::Busy(slug.to_string()))?;
        Ok(PushLock(file))
    }
}

impl Drop for PushLock {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(&self.0, rustix::fs::FlockOperation::Unlock);
    }
}

/// What the hub says of a tenant's copy when its holder registers it.
struct HubCopy {
    latest: i64,
    holders: Vec<String>,
}

async fn register(client: &HubClient, base: &str, st: &State) -> Result<HubCopy, ContinuityError> {
    let (_, body) = client
        .send(
            Method::PUT,
            base,
            json_bytes(&json!({"verifier": B64.encode(&st.verifier)})),
        )
        .await?;
    let v = serde_json::from_slice::<Value>(&body).unwrap_or_default();
    Ok(HubCopy {
        latest: v["latest"]["generation"].as_i64().unwrap_or(0),
        holders: v["holders"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|h| h.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn is_taken(e: &ContinuityError) -> bool {
    matches!(e, ContinuityError::Federation(FederationError::Refused { code, .. })
        if code == "generation_taken")
}

async fn push_inner(
    client: &HubClient,
    system: &Database,
    handle: &TenantHandle,
    data_dir: &Path,
    full: bool,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Pushed, ContinuityError> {
    let st = enabled_state(system, &handle.slug).await?;
    let base = format!("/federation/v1/continuity/{}", st.tenant_uid);
    let hub = register(client, &base, &st).await?;
    let dir = spool_dir(data_dir, &handle.slug);
    let mut pushed = Pushed {
        generation: st.committed,
        chunks: 0,
        sent: 0,
        bytes_sent: 0,
        resumed: false,
        batches: 0,
        batched: st.batched,
        holders: hub.holders.len(),
    };
    let mut due = full || hub.latest == 0 || st.generation_due;
    let mut floor = hub.latest;
    // A generation an interrupted push left goes first (unless another site took its
    // number meanwhile: then a new one is sealed).
    if let Some(sealed) = spooled(&dir).filter(|s| s.generation > hub.latest) {
        let generation = sealed.generation;
        let sent = send_with_batches(
            client,
            system,
            handle,
            &st,
            &base,
            data_dir,
            &dir,
            sealed,
            hub.latest > 0,
            &mut pushed,
            progress,
        )
        .await;
        match sent {
            // The generation an interrupted push left is the one a `--full` asked for; one
            // more only if an erasure pulled meanwhile asks for it.
            Ok(()) => {
                pushed.resumed = true;
                due = st.generation_due;
            }
            Err(e) if is_taken(&e) => {
                floor = floor.max(generation);
                due = true;
            }
            Err(e) => return Err(e),
        }
    }
    // With a generation at the hub, the changes since go as batches. An erasure, or a
    // change only a generation carries, ends with a new generation: the hub then drops
    // every older copy of what was erased.
    if hub.latest > 0 || pushed.resumed {
        due |= send_batches(
            client,
            system,
            handle,
            &st,
            &base,
            data_dir,
            i64::MAX,
            &mut pushed,
            progress,
        )
        .await?;
    }
    // A new generation; if another site is sending one of the same number, the next.
    let mut tries = 0;
    while due {
        tries += 1;
        let sealed = seal_generation(
            system,
            handle,
            &st,
            client.site_id(),
            floor.max(pushed.generation),
            &dir,
        )
        .await?;
        let generation = sealed.generation;
        match send_with_batches(
            client,
            system,
            handle,
            &st,
            &base,
            data_dir,
            &dir,
            sealed,
            hub.latest > 0 || pushed.generation > 0,
            &mut pushed,
            progress,
        )
        .await
        {
            Ok(()) => due = false,
            Err(e) if is_taken(&e) && tries < 3 => floor = floor.max(generation),
            Err(e) => return Err(e),
        }
    }
    Ok(pushed)
}

/// Sends a sealed generation; first, when the hub holds a generation already, the changes
/// up to the snapshot as batches, so that the other sites holding the tenant can apply
/// every change of this one (the new generation holds them, but they do not restore it).
#[allow(clippy::too_many_arguments)]
async fn send_with_batches(
    client: &HubClient,
    system: &Database,
    handle: &TenantHandle,
    st: &State,
    base: &str,
    data_dir: &Path,
    dir: &Path,
    sealed: Sealed,
    batches_first: bool,
    pushed: &mut Pushed,
    progress: &(dyn Fn(String) + Sync),
) -> Result<(), ContinuityError> {
    if batches_first {
        send_batches(
            client,
            system,
            handle,
            st,
            base,
            data_dir,
            sealed.covers,
            pushed,
            progress,
        )
        .await?;
    }
    let result = send_generation(client, system, handle, base, dir, sealed, pushed, progress).await;
    if result.as_ref().is_err_and(is_taken) {
        std::fs::remove_dir_all(dir)?;
    }
    result
}

/// Sends the spooled generation `sealed` (only the chunks the hub lacks), commits it, and
/// records what it covers.
#[allow(clippy::too_many_arguments)]
async fn send_generation(
    client: &HubClient,
    system: &Database,
    handle: &TenantHandle,
    base: &str,
    dir: &Path,
    sealed: Sealed,
    pushed: &mut Pushed,
    progress: &(dyn Fn(String) + Sync),
) -> Result<(), ContinuityError> {
    let Sealed {
        generation,
        chunks,
        covers,
        merged,
    } = sealed;
    let (_, body) = client
        .send(
            Method::GET,
            &format!("{base}/generations/{generation}"),
            Vec::new(),
        )
        .await?;
    let present: Vec<i64> = serde_json::from_slice::<Value>(&body).unwrap_or_default()["present"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let started = std::time::Instant::now();
    for idx in (0..chunks).filter(|i| !present.contains(i)) {
        let data = std::fs::read(chunk_path(dir, idx))?;
        tokio::time::sleep(pace(
            pushed.bytes_sent,
            started.elapsed(),
            client.max_bytes_per_sec(),
        ))
        .await;
        pushed.bytes_sent += data.len() as u64;
        client
            .send(
                Method::PUT,
                &format!("{base}/generations/{generation}/chunks/{idx}"),
                data,
            )
            .await?;
        pushed.sent += 1;
        progress(format!(
            "{}: generation {generation}, chunk {}/{chunks} sent",
            handle.slug,
            idx + 1
        ));
    }
    client
        .send(
            Method::POST,
            &format!("{base}/generations/{generation}/commit"),
            json_bytes(&json!({
                "chunks": chunks,
                "covers": covers,
                "merged": merged.iter().map(|(o, n)| json!({"origin": o, "through": n})).collect::<Vec<_>>(),
            })),
        )
        .await?;
    let slug = handle.slug.clone();
    system
        .write(move |c| {
            c.prepare_cached(
                "UPDATE continuity SET committed = ?2, committed_at = ?3,
                                       generation = max(generation, ?2),
                                       batched = max(batched, ?4), batched_at = ?3,
                                       generation_due = 0
                 WHERE slug = ?1",
            )?
            .execute(params![slug, generation, now(), covers])?;
            Ok(())
        })
        .await?;
    std::fs::remove_dir_all(dir)?;
    handle
        .db
        .write(move |c| crate::store::replica::compact(c, 0, covers))
        .await?;
    pushed.generation = generation;
    pushed.chunks = chunks;
    pushed.batched = pushed.batched.max(covers);
    Ok(())
}

/// Writes `data` to `path` so that it survives a crash: a temporary file, synced, renamed.
fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let temp = path.with_extension("partial");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

/// Where a sealed batch waits until the hub has it: the same bytes are sent again after a
/// failure, so that a batch the hub stored without our hearing it is recognised.
fn batch_spool(data_dir: &Path, slug: &str) -> PathBuf {
    data_dir
        .join("spool")
        .join("continuity")
        .join(format!("{slug}.batch"))
}

/// Sends the changes after the last batch through `through`, one batch at a time, each
/// recorded once the hub has it. Returns whether a new generation is due (a batch carried
/// an erasure or a change only a generation carries, or the hub's batches do not line up
/// with ours).
#[allow(clippy::too_many_arguments)]
async fn send_batches(
    client: &HubClient,
    system: &Database,
    handle: &TenantHandle,
    st: &State,
    base: &str,
    data_dir: &Path,
    through: i64,
    pushed: &mut Pushed,
    progress: &(dyn Fn(String) + Sync),
) -> Result<bool, ContinuityError> {
    let spool = batch_spool(data_dir, &handle.slug);
    let started = std::time::Instant::now();
    let mut due = false;
    while pushed.batched < through {
        let after = pushed.batched;
        let waiting = std::fs::read(&spool).ok().and_then(|data| {
            let (head, sealed) = data.split_at(data.iter().position(|b| *b == b'\n')? + 1);
            let text = std::str::from_utf8(head).ok()?;
            let mut parts = text.split_whitespace();
            let (a, l): (i64, i64) = (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
            let needs = parts.next() == Some("generation");
            (a == after).then(|| (l, needs, sealed.to_vec()))
        });
        let (last, needs, sealed) = match waiting {
            Some(found) => found,
            None => {
                let origin = client.site_id().to_string();
                let built = handle
                    .db
                    .read(move |c| super::batch::build(c, &origin, after, through))
                    .await?;
                let Some(batch) = built else {
                    break;
                };
                let needs = batch.needs_generation();
                let sealed = super::batch::seal(&st.key, &st.tenant_uid, &batch)?;
                let mut file = format!(
                    "{} {}{}\n",
                    batch.after,
                    batch.last,
                    if needs { " generation" } else { "" }
                )
                .into_bytes();
                file.extend_from_slice(&sealed);
                write_durably(&spool, &file)?;
                (batch.last, needs, sealed)
            }
        };
        due |= needs;
        tokio::time::sleep(pace(
            pushed.bytes_sent,
            started.elapsed(),
            client.max_bytes_per_sec(),
        ))
        .await;
        pushed.bytes_sent += sealed.len() as u64;
        match client
            .send(
                Method::PUT,
                &format!("{base}/batches/{after}/{last}"),
                sealed,
            )
            .await
        {
            Ok(_) => {}
            Err(FederationError::Refused { code, .. })
                if code == "batch_gap" || code == "batch_differs" =>
            {
                let _ = std::fs::remove_file(&spool);
                return Ok(true);
            }
            Err(e) => return Err(e.into()),
        }
        let slug = handle.slug.clone();
        system
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE continuity SET batched = ?2, batched_at = ?3 WHERE slug = ?1",
                )?
                .execute(params![slug, last, now()])?;
                Ok(())
            })
            .await?;
        std::fs::remove_file(&spool)?;
        handle
            .db
            .write(move |c| crate::store::replica::compact(c, after, last))
            .await?;
        pushed.batches += 1;
        pushed.batched = last;
        progress(format!("{}: changes through {last} sent", handle.slug));
    }
    Ok(due)
}

/// How long to wait before sending more, so that the `bytes` sent since the transfer
/// began, `elapsed` ago, stay within `rate` bytes per second (0: no cap). The cap holds on
/// average: each chunk leaves at full speed, and the next waits its turn.
pub fn pace(bytes: u64, elapsed: std::time::Duration, rate: u64) -> std::time::Duration {
    if rate == 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::from_secs_f64(bytes as f64 / rate as f64).saturating_sub(elapsed)
}

fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Reserves a new generation number, snapshots the database and seals it into `dir`.
async fn seal_generation(
    system: &Database,
    handle: &TenantHandle,
    st: &State,
    origin: &str,
    hub_latest: i64,
    dir: &Path,
) -> Result<Sealed, ContinuityError> {
    let floor = st.generation.max(st.committed).max(hub_latest);
    let slug = handle.slug.clone();
    let generation = system
        .write(move |c| {
            c.prepare_cached("UPDATE continuity SET generation = ?2 WHERE slug = ?1")?
                .execute(params![slug, floor + 1])?;
            Ok(floor + 1)
        })
        .await?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let snapshot = dir.join("snapshot.db");
    crate::store::backup::snapshot(handle.db.path(), &snapshot)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let (covers, merged) = rusqlite::Connection::open_with_flags(
        &snapshot,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .and_then(|c| {
        let covers: i64 = c.query_row("SELECT coalesce(max(seq), 0) FROM change_log", [], |r| {
            r.get(0)
        })?;
        let merged: Vec<(String, i64)> = c
            .prepare("SELECT origin, applied FROM sync_cursors ORDER BY origin")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        Ok((covers, merged))
    })
    .map_err(StoreError::from)?;
    let merged_text: String = merged.iter().map(|(o, n)| format!(" {o}:{n}")).collect();
    let (key, uid, slug, name, dir, origin) = (
        generation_key(&st.key, origin).to_vec(),
        st.tenant_uid.clone(),
        handle.slug.clone(),
        handle.name.clone(),
        dir.to_path_buf(),
        origin.to_string(),
    );
    let chunks = tokio::task::spawn_blocking(move || -> Result<i64, ContinuityError> {
        let mut file = std::fs::File::open(&snapshot)?;
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let mut sink = ChunkSink {
            dir: &dir,
            key: &key,
            uid: &uid,
            generation,
            next: 1,
            buffer: Vec::with_capacity(CHUNK),
        };
        let mut bytes = 0u64;
        {
            let mut encoder = zstd::stream::write::Encoder::new(&mut sink, 3)?;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = std::io::Read::read(&mut file, &mut buf)?;
                if n == 0 {
                    break;
                }
                digest.update(&buf[..n]);
                encoder.write_all(&buf[..n])?;
                bytes += n as u64;
            }
            encoder.finish()?;
        }
        sink.flush_chunk()?;
        let chunks = sink.next;
        let manifest = Manifest {
            format: 1,
            slug,
            name,
            created_at: now(),
            bytes,
            sha256: crate::store::backup::hex(digest.finish().as_ref()),
            chunks,
            origin,
            covers,
        };
        let plain = serde_json::to_vec(&manifest).unwrap_or_default();
        std::fs::write(chunk_path(&dir, 0), seal(&key, &uid, generation, 0, &plain))?;
        std::fs::remove_file(&snapshot)?;
        // Written last: the spool is complete.
        std::fs::write(
            dir.join("ready"),
            format!("{generation} {chunks} {covers}{merged_text}"),
        )?;
        Ok(chunks)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))??;
    Ok(Sealed {
        generation,
        chunks,
        covers,
        merged,
    })
}

/// The manifest of a batch carried by hand (`ceredis federation export`): signed by the
/// site's key, it names the generation, its chunks and their SHA-256.
pub const BATCH_FORMAT: &str = "ceredis-continuity-batch-1";
pub const BATCH_FILE: &str = "batch.json";
pub const BATCH_SIGNATURE: &str = "batch.sig";

#[derive(Debug, Serialize, Deserialize)]
pub struct Batch {
    pub format: String,
    pub site_id: String,
    pub tenant_uid: String,
    /// What the hub keeps of the restore verifier (its SHA-256), to register the copy.
    pub verifier_hash: String,
    pub generation: i64,
    pub chunks: i64,
    pub chunk_sha256: Vec<String>,
    pub created_at: i64,
    /// The last change of the site the generation holds.
    #[serde(default)]
    pub covers: i64,
}

/// What the signature of a batch file covers.
pub fn batch_signing_input(batch_json: &[u8]) -> Vec<u8> {
    let mut input = b"ceredis-batch-v1\n".to_vec();
    input.extend_from_slice(batch_json);
    input
}

/// Seals a generation of the tenant's copy (or takes the one waiting in the spool) and
/// writes it, signed, into `to/<tenant id>-g<generation>/` for a hub with no link to this
/// site: `ceredis hub import` there. Returns that folder.
pub async fn export(
    system: &Database,
    handle: &TenantHandle,
    data_dir: &Path,
    to: &Path,
) -> Result<PathBuf, ContinuityError> {
    let _lock = PushLock::take(data_dir, &handle.slug)?;
    let st = enabled_state(system, &handle.slug).await?;
    let dir = spool_dir(data_dir, &handle.slug);
    let key =
        crate::identity::key_pair(data_dir).map_err(|e| std::io::Error::other(e.to_string()))?;
    let site_id = crate::identity::site_id(ring::signature::KeyPair::public_key(&key).as_ref());
    let Sealed {
        generation,
        chunks,
        covers,
        ..
    } = match spooled(&dir).filter(|s| s.generation > st.committed) {
        Some(found) => found,
        None => seal_generation(system, handle, &st, &site_id, 0, &dir).await?,
    };
    let out = to.join(format!("{}-g{generation}", st.tenant_uid));
    std::fs::create_dir_all(&out)?;
    let mut chunk_sha256 = Vec::new();
    for idx in 0..chunks {
        let name = format!("chunk-{idx:06}");
        let data = std::fs::read(dir.join(&name))?;
        chunk_sha256.push(crate::store::backup::hex(
            ring::digest::digest(&ring::digest::SHA256, &data).as_ref(),
        ));
        std::fs::write(out.join(&name), data)?;
    }
    let batch = Batch {
        format: BATCH_FORMAT.into(),
        site_id,
        tenant_uid: st.tenant_uid.clone(),
        verifier_hash: super::secret_hash(&B64.encode(&st.verifier)),
        generation,
        chunks,
        chunk_sha256,
        created_at: now(),
        covers,
    };
    let json = serde_json::to_vec_pretty(&batch).unwrap_or_default();
    let signature = B64.encode(key.sign(&batch_signing_input(&json)).as_ref());
    std::fs::write(out.join(BATCH_FILE), &json)?;
    // Written last: a folder with its signature is complete.
    std::fs::write(out.join(BATCH_SIGNATURE), signature)?;
    Ok(out)
}

/// What a restore brought back.
#[derive(Debug, Clone)]
pub struct Restored {
    pub slug: String,
    pub name: String,
    pub generation: i64,
    pub bytes: u64,
    /// Batches of changes after the generation, applied on top of it.
    pub batches: usize,
}

/// Restores a tenant from the hub's continuity copy, under `slug`, with its recovery key.
/// This site becomes the copy's holder: its only one (the appliance it replaces is refused
/// from then on), or, `alongside`, one more beside those that hold it (a second campus):
/// they then exchange their changes. Nothing is created unless every chunk decrypts and
/// the database passes its integrity check.
pub async fn restore(
    client: &HubClient,
    tenants: &Tenants,
    data_dir: &Path,
    recovery: &RecoveryKey,
    slug: &str,
    alongside: bool,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Restored, ContinuityError> {
    crate::tenant::validate_slug(slug)?;
    if tenants.get(slug).await?.is_some() || crate::tenant::tenant_db_path(data_dir, slug).exists()
    {
        return Err(ContinuityError::Exists(slug.to_string()));
    }
    let uid = recovery.tenant_uid();
    let key = recovery.encryption_key();
    let base = format!("/federation/v1/continuity/{uid}");
    let (_, body) = client
        .send(
            Method::POST,
            &format!("{base}/claim"),
            json_bytes(&json!({
                "verifier": B64.encode(recovery.verifier()),
                "alongside": alongside,
            })),
        )
        .await?;
    let latest = serde_json::from_slice::<Value>(&body).unwrap_or_default()["latest"].clone();
    let (Some(generation), Some(chunks), Some(maker)) = (
        latest["generation"].as_i64(),
        latest["chunks"].as_i64(),
        latest["origin"].as_str(),
    ) else {
        return Err(FederationError::Refused {
            status: 404,
            code: "no_generation".into(),
            message: "the hub holds no complete copy of this tenant yet".into(),
        }
        .into());
    };
    let chunk_key = generation_key(&key, maker);
    let fetch = |idx: i64| {
        let path = format!("{base}/generations/{generation}/chunks/{idx}");
        let uid = uid.clone();
        async move {
            let (_, sealed) = client.send(Method::GET, &path, Vec::new()).await?;
            open(&chunk_key, &uid, generation, idx, &sealed).ok_or(ContinuityError::Damaged(idx))
        }
    };
    let manifest: Manifest =
        serde_json::from_slice(&fetch(0).await?).map_err(|_| ContinuityError::Damaged(0))?;
    if manifest.chunks != chunks || manifest.origin != maker {
        return Err(ContinuityError::Damaged(0));
    }
    let spool = data_dir.join("spool");
    std::fs::create_dir_all(&spool)?;
    let temp = spool.join(format!("restore-{slug}.db"));
    let _ = std::fs::remove_file(&temp);
    let mut decoder = zstd::stream::write::Decoder::new(std::fs::File::create(&temp)?)?;
    for idx in 1..chunks {
        let plain = match fetch(idx).await {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        decoder.write_all(&plain)?;
        progress(format!("{slug}: chunk {}/{chunks} received", idx + 1));
    }
    decoder.flush()?;
    drop(decoder);
    let (path, expected) = (temp.clone(), manifest.sha256.clone());
    let check = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
        let sha =
            crate::store::backup::hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        if sha != expected {
            return Err("its SHA-256 differs from the copy's manifest".into());
        }
        let conn = rusqlite::Connection::open(&path).map_err(|e| e.to_string())?;
        let verdict: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        if verdict != "ok" {
            return Err(verdict);
        }
        Ok(())
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    if let Err(why) = check {
        let _ = std::fs::remove_file(&temp);
        return Err(ContinuityError::Unsound(why));
    }
    let batches = match replay_batches(client, &base, &key, &uid, &manifest, &temp, progress).await
    {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    let applied = {
        let path = temp.clone();
        tokio::task::spawn_blocking(move || -> Result<Vec<(String, i64)>, StoreError> {
            let conn = rusqlite::Connection::open(&path)?;
            crate::store::replica::cursors(&conn)
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??
    };
    tenants.adopt(slug, &manifest.name, &temp).await?;
    // What it applied of each site's changes: the hub keeps no batch for it beyond that.
    let _ = acknowledge(client, &base, &applied).await;
    // This site keeps the copy from now on, from the generation it restored.
    let (owned, uid, verifier) = (slug.to_string(), recovery.tenant_uid(), recovery.verifier());
    tenants
        .system()
        .write(move |c| {
            c.prepare_cached(
                "INSERT INTO continuity (slug, tenant_uid, key, verifier, enabled_at, generation,
                                         committed, committed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?5)",
            )?
            .execute(params![
                owned,
                uid,
                &key[..],
                &verifier[..],
                now(),
                generation
            ])?;
            Ok(())
        })
        .await?;
    Ok(Restored {
        slug: slug.to_string(),
        name: manifest.name,
        generation,
        bytes: manifest.bytes,
        batches,
    })
}

/// Applies to the restored database `path` every batch the hub holds after its generation,
/// each origin's in order, then names what the generation held as its maker's. Returns how
/// many batches were applied.
async fn replay_batches(
    client: &HubClient,
    base: &str,
    key: &[u8],
    uid: &str,
    manifest: &Manifest,
    path: &Path,
    progress: &(dyn Fn(String) + Sync),
) -> Result<usize, ContinuityError> {
    let (_, body) = client
        .send(Method::GET, &format!("{base}/batches"), Vec::new())
        .await?;
    let listed = listed_batches(&body);
    let mut batches = Vec::with_capacity(listed.len());
    for (i, (origin, after, last)) in listed.iter().enumerate() {
        let (_, sealed) = client
            .send(
                Method::GET,
                &format!("{base}/batch/{origin}/{last}"),
                Vec::new(),
            )
            .await?;
        let batch =
            super::batch::open(key, uid, origin, *after, *last, &sealed).ok_or_else(|| {
                ContinuityError::Unsound(format!(
                    "batch {after}..{last} of {origin} does not open with this key"
                ))
            })?;
        batches.push(batch);
        progress(format!("batch {}/{} received", i + 1, listed.len()));
    }
    let (path, me, maker, covers) = (
        path.to_path_buf(),
        client.site_id().to_string(),
        manifest.origin.clone(),
        manifest.covers,
    );
    tokio::task::spawn_blocking(move || -> Result<usize, ContinuityError> {
        let mut conn = rusqlite::Connection::open(&path).map_err(StoreError::from)?;
        crate::store::migrate(&mut conn, &path, crate::store::tenant::MIGRATIONS)?;
        let tx = conn.transaction().map_err(StoreError::from)?;
        let mut applied = 0;
        if !maker.is_empty() {
            crate::store::replica::adopt_from(&tx, &maker)?;
            crate::store::replica::set_cursor(&tx, &maker, covers)?;
        }
        for batch in &batches {
            let done = super::batch::apply(&tx, batch, &me, now())
                .map_err(|e| ContinuityError::Unsound(e.to_string()))?;
            applied += usize::from(!done.known);
        }
        tx.commit().map_err(StoreError::from)?;
        Ok(applied)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))?
}

/// Tells the hub how far this site applied each other site's batches.
async fn acknowledge(
    client: &HubClient,
    base: &str,
    cursors: &[(String, i64)],
) -> Result<(), ContinuityError> {
    let cursors: Vec<Value> = cursors
        .iter()
        .map(|(o, n)| json!({"origin": o, "through": n}))
        .collect();
    client
        .send(
            Method::PUT,
            &format!("{base}/pulled"),
            json_bytes(&json!({ "cursors": cursors })),
        )
        .await?;
    Ok(())
}

/// What a pull brought from the other sites that hold the tenant.
#[derive(Debug, Clone, Default)]
pub struct Pulled {
    /// Batches applied now (those applied before are skipped).
    pub batches: usize,
    pub statements: usize,
    pub fields: usize,
    pub conflicts: usize,
    pub documents: usize,
    pub erasures: usize,
    /// Evidence and level decisions recorded.
    pub assessments: usize,
    /// What another site changed that is not here (changes only a generation carries, or
    /// that name something not here): `site: what, …`.
    pub lacking: Vec<String>,
    /// The rows not here yet that rows from other sites wait for, after the last batch.
    pub awaiting: Vec<String>,
}

/// Applies the batches of the other sites that hold the tenant, each site's in order, each
/// in one transaction of the tenant's database that also records how far it went; then
/// tells the hub. An erasure that arrives makes the next push a generation, so that the
/// hub drops the older copies of what was erased.
pub async fn pull(
    client: &HubClient,
    system: &Database,
    handle: &TenantHandle,
    data_dir: &Path,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Pulled, ContinuityError> {
    let result = match PushLock::take(data_dir, &handle.slug) {
        Ok(_lock) => pull_inner(client, system, handle, progress).await,
        Err(e) => Err(e),
    };
    record_outcome(system, &handle.slug, result).await
}

async fn pull_inner(
    client: &HubClient,
    system: &Database,
    handle: &TenantHandle,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Pulled, ContinuityError> {
    let st = enabled_state(system, &handle.slug).await?;
    let base = format!("/federation/v1/continuity/{}", st.tenant_uid);
    let me = client.site_id().to_string();
    let mut pulled = Pulled::default();
    // Registering tells which sites hold the tenant: alone, there is nothing to pull.
    if register(client, &base, &st)
        .await?
        .holders
        .iter()
        .all(|h| *h == me)
    {
        return Ok(pulled);
    }
    let (_, body) = client
        .send(Method::GET, &format!("{base}/batches"), Vec::new())
        .await?;
    let mut listed = listed_batches(&body);
    listed.retain(|(origin, _, _)| *origin != me);
    for (i, (origin, after, last)) in listed.iter().enumerate() {
        let owned = origin.clone();
        let cursor = handle
            .db
            .read(move |c| crate::store::replica::cursor(c, &owned))
            .await?;
        if *last <= cursor {
            continue;
        }
        if *after != cursor {
            return Err(ContinuityError::Gap {
                origin: origin.clone(),
                cursor,
                after: *after,
            });
        }
        let (_, sealed) = client
            .send(
                Method::GET,
                &format!("{base}/batch/{origin}/{last}"),
                Vec::new(),
            )
            .await?;
        let Some(done) = apply_sealed(handle, &st, &me, origin, *after, *last, &sealed).await?
        else {
            continue;
        };
        pulled.batches += 1;
        pulled.statements += done.statements;
        pulled.fields += done.fields;
        pulled.conflicts += done.conflicts;
        pulled.documents += done.documents;
        pulled.erasures += done.erasures;
        pulled.assessments += done.assessments;
        if !done.lacking.is_empty() {
            pulled
                .lacking
                .push(format!("{origin}: {}", done.lacking.join(", ")));
        }
        pulled.awaiting = done.awaiting;
        progress(format!(
            "{}: batch {}/{} from {origin} applied",
            handle.slug,
            i + 1,
            listed.len()
        ));
    }
    let cursors = handle.db.read(crate::store::replica::cursors).await?;
    acknowledge(client, &base, &cursors).await?;
    note_pulled(system, &handle.slug, &pulled).await?;
    Ok(pulled)
}

/// Applies one sealed batch of another site (`origin`'s changes after `after` through
/// `last`) to the tenant, in one transaction that records how far it went; `None` when it
/// was applied before. A batch that does not follow the last one applied is refused.
#[allow(clippy::too_many_arguments)]
pub async fn apply_sealed(
    handle: &TenantHandle,
    st: &State,
    me: &str,
    origin: &str,
    after: i64,
    last: i64,
    sealed: &[u8],
) -> Result<Option<super::batch::Applied>, ContinuityError> {
    let owned = origin.to_string();
    let cursor = handle
        .db
        .read(move |c| crate::store::replica::cursor(c, &owned))
        .await?;
    if last <= cursor {
        return Ok(None);
    }
    if after != cursor {
        return Err(ContinuityError::Gap {
            origin: origin.to_string(),
            cursor,
            after,
        });
    }
    let batch = super::batch::open(&st.key, &st.tenant_uid, origin, after, last, sealed)
        .ok_or_else(|| {
            ContinuityError::Unsound(format!(
                "batch {after}..{last} of {origin} does not open with this tenant's key"
            ))
        })?;
    let me = me.to_string();
    let done = handle
        .db
        .write(move |c| super::batch::apply(c, &batch, &me, now()))
        .await?;
    Ok((!done.known).then_some(done))
}

/// Records a pull's outcome: when, whether an erasure makes the next push a generation,
/// and what is not here.
pub async fn note_pulled(
    system: &Database,
    slug: &str,
    pulled: &Pulled,
) -> Result<(), ContinuityError> {
    let (slug, erased, lacking) = (
        slug.to_string(),
        pulled.erasures > 0,
        (!pulled.lacking.is_empty()).then(|| pulled.lacking.join("; ")),
    );
    system
        .write(move |c| {
            c.prepare_cached(
                "UPDATE continuity SET pulled_at = ?2, generation_due = generation_due OR ?3,
                                       lacking = coalesce(?4, lacking)
                 WHERE slug = ?1",
            )?
            .execute(params![slug, now(), erased, lacking])?;
            Ok(())
        })
        .await?;
    Ok(())
}

/// The batches the hub lists: `(origin, after, last)`, each origin's in order.
fn listed_batches(body: &[u8]) -> Vec<(String, i64, i64)> {
    serde_json::from_slice::<Value>(body).unwrap_or_default()["batches"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| {
                    Some((
                        b["origin"].as_str()?.to_string(),
                        b["after"].as_i64()?,
                        b["last"].as_i64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_keeps_the_average_rate_under_the_cap() {
        use std::time::Duration;
        assert_eq!(pace(10 << 20, Duration::ZERO, 0), Duration::ZERO);
        // 2 MiB sent at 1 MiB/s: the third chunk waits until 2 s have passed.
        assert_eq!(
            pace(2 << 20, Duration::from_millis(500), 1 << 20),
            Duration::from_millis(1500)
        );
        assert_eq!(
            pace(2 << 20, Duration::from_secs(3), 1 << 20),
            Duration::ZERO
        );
        assert_eq!(pace(0, Duration::ZERO, 1 << 20), Duration::ZERO);
    }

    #[test]
    fn recovery_keys_read_back_and_derive_distinct_values() {
        let r = RecoveryKey::generate().unwrap();
        let again = RecoveryKey::parse(&r.to_string()).unwrap();
        assert_eq!(r.tenant_uid(), again.tenant_uid());
        assert_eq!(r.tenant_uid().len(), 32);
        assert_ne!(r.encryption_key(), r.verifier());
        let other = RecoveryKey::generate().unwrap();
        assert_ne!(r.tenant_uid(), other.tenant_uid());
        for bad in ["", "cer1.", "cer2.AAAA", &r.to_string()[..20]] {
            assert!(matches!(
                RecoveryKey::parse(bad),
                Err(ContinuityError::BadRecoveryKey)
            ));
        }
    }

    #[test]
    fn a_chunk_opens_only_with_its_key_tenant_generation_and_index() {
        let r = RecoveryKey::generate().unwrap();
        let (key, uid) = (r.encryption_key(), r.tenant_uid());
        let sealed = seal(&key, &uid, 3, 7, b"les notes de Lea");
        assert!(!sealed.windows(3).any(|w| w == b"Lea"));
        assert_eq!(
            open(&key, &uid, 3, 7, &sealed).unwrap(),
            b"les notes de Lea"
        );
        let other = RecoveryKey::generate().unwrap();
        assert!(open(&other.encryption_key(), &uid, 3, 7, &sealed).is_none());
        assert!(open(&key, &other.tenant_uid(), 3, 7, &sealed).is_none());
        assert!(open(&key, &uid, 4, 7, &sealed).is_none());
        assert!(open(&key, &uid, 3, 8, &sealed).is_none());
        let mut altered = sealed.clone();
        altered[0] ^= 1;
        assert!(open(&key, &uid, 3, 7, &altered).is_none());
    }
}
