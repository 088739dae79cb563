//! Storage: the only module that touches `rusqlite`.
//!
//! Owns every SQLite file of the appliance: the system database (`system.db`, operator data)
//! and one database per tenant (`tenants/<slug>/tenant.db`). Each [`Database`] has exactly one
//! writer thread that applies jobs with **group commit**: the jobs waiting when a transaction
//! starts share it, each inside its own savepoint (a failing job rolls back only itself), and
//! every caller is answered only after `COMMIT` returned. Databases run in WAL mode with
//! `synchronous=FULL`, so a returned `COMMIT` has been fsynced to the WAL: an acknowledged
//! write survives a power cut or `SIGKILL`. Reads go through a small pool of read-only
//! connections on blocking threads.
//!
//! Must not: hold a connection across an `.await`, edit a published migration (migrations are
//! only ever appended), or be reached by handlers except through the tenant-scoped handles of
//! `auth`.
//!
//! Key types: [`Database`], [`Migrations`], [`StoreError`], [`StoreMetrics`].

pub mod ai;
pub mod analytics;
pub mod apps;
pub mod backup;
pub mod competency;
pub mod erasure;
pub mod federation;
pub mod hub_postgres;
pub mod lrs;
pub mod replica;
pub mod research;
pub mod retention;
pub mod shared;
pub mod system;
pub mod tenant;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// What can go wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database writer of {0} has stopped")]
    WriterStopped(String),
    #[error("a write job panicked and was rolled back")]
    JobPanicked,
    #[error("database {path} has schema version {found}, newer than this binary knows ({known})")]
    SchemaTooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("io error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A domain rule refused the write; the message is meant for the user.
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    /// The federation hub's PostgreSQL store.
    #[error("postgresql: {0}")]
    Postgres(String),
}

impl StoreError {
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    }
}

/// The add-only list of schema migrations of one kind of database. Entry `i` moves the
/// database from `PRAGMA user_version = i` to `i + 1`. Never edit an entry: append one.
#[derive(Debug, Clone, Copy)]
pub struct Migrations(pub &'static [&'static str]);

/// Metrics shared by every database of the process, labelled by database name.
#[derive(Clone)]
pub struct StoreMetrics {
    pub queue_depth: Family<DbLabel, Gauge>,
    pub batch_size: Family<DbLabel, Histogram, fn() -> Histogram>,
    pub commit_seconds: Family<DbLabel, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct DbLabel {
    pub db: String,
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
}

fn commit_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 12,
    ))
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            queue_depth: Family::default(),
            batch_size: Family::new_with_constructor(batch_histogram),
            commit_seconds: Family::new_with_constructor(commit_histogram),
        }
    }
}

impl StoreMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "ceredis_writer_queue_depth",
            "Write jobs waiting for the database writer",
            self.queue_depth.clone(),
        );
        registry.register(
            "ceredis_commit_batch_size",
            "Write jobs committed together in one transaction (group commit)",
            self.batch_size.clone(),
        );
        registry.register(
            "ceredis_commit_duration_seconds",
            "Time to run and durably commit one batch",
            self.commit_seconds.clone(),
        );
    }
}

/// Tunables of one database.
#[derive(Debug, Clone, Copy)]
pub struct DbOptions {
    pub read_connections: usize,
    pub max_batch: usize,
    pub queue_capacity: usize,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            read_connections: 4,
            max_batch: 512,
            queue_capacity: 4096,
        }
    }
}

/// Called with the batch's commit outcome once the transaction has ended.
type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A queued write: run inside the shared transaction, or failed without running.
trait WriteJob: Send {
    /// Runs the job; also says when its failure left partial writes in the transaction
    /// (a job run without a savepoint), which then must be rolled back as a whole.
    fn run(self: Box<Self>, conn: &Connection) -> (Completion, Option<String>);
    fn fail(self: Box<Self>, error: String);
}

struct Pending<T, F> {
    job: F,
    reply: oneshot::Sender<Result<T, StoreError>>,
    /// Run in a savepoint of its own (an error undoes only this job).
    savepoint: bool,
}

fn commit_failed(message: String) -> StoreError {
    StoreError::Sqlite(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
        Some(message),
    ))
}

impl<T, F> WriteJob for Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> (Completion, Option<String>) {
        let Pending {
            job,
            reply,
            savepoint,
        } = *self;
        let outcome = if savepoint {
            run_in_savepoint(conn, job)
        } else {
            std::panic::catch_unwind(AssertUnwindSafe(|| job(conn)))
                .unwrap_or(Err(StoreError::JobPanicked))
        };
        let poisoned = match &outcome {
            Err(e) if !savepoint => Some(format!(
                "a write failed midway ({e}); its batch is rolled back"
            )),
            _ => None,
        };
        let done = Box::new(move |commit: Result<(), String>| {
            let result = match (outcome, commit) {
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => Err(commit_failed(e)),
                (Ok(v), Ok(())) => Ok(v),
            };
            let _ = reply.send(result);
        });
        (done, poisoned)
    }

    fn fail(self: Box<Self>, error: String) {
        let _ = self.reply.send(Err(commit_failed(error)));
    }
}

type Job = Box<dyn WriteJob>;

/// One SQLite database: a group-commit writer thread and a pool of read-only connections.
/// Cheap to clone; the writer stops when the last clone is dropped.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    path: PathBuf,
    /// Transactions committed by this process's writer since it opened the database.
    commits: Arc<std::sync::atomic::AtomicU64>,
    writer: mpsc::Sender<Job>,
    readers: Mutex<Vec<Connection>>,
    read_slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.inner.name)
            .field("path", &self.inner.path)
            .finish()
    }
}

/// The page size of new database files.
const PAGE_SIZE: i64 = 16 * 1024;

fn open_connection(path: &Path, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.execute_batch(
        "PRAGMA foreign_keys = ON;
         PRAGMA synchronous = FULL;
         PRAGMA temp_store = MEMORY;",
    )?;
    Ok(conn)
}

/// Applies the migrations that the database file has not seen yet.
pub fn migrate(
    conn: &mut Connection,
    path: &Path,
    migrations: Migrations,
) -> Result<(), StoreError> {
    let known = migrations.0.len() as i64;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > known {
        return Err(StoreError::SchemaTooNew {
            path: path.display().to_string(),
            found,
            known,
        });
    }
    for (i, sql) in migrations.0.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

impl Database {
    /// Opens (creating if needed) the database at `path`, applies migrations, and starts its
    /// writer thread.
    pub fn open(
        name: &str,
        path: &Path,
        migrations: Migrations,
        options: DbOptions,
        metrics: StoreMetrics,
    ) -> Result<Database, StoreError> {
        Self::open_seeded(name, path, migrations, |_| Ok(()), options, metrics)
    }

    /// Like [`Database::open`], then runs `seed` in one transaction before the writer
    /// starts: content every database of this kind must have (it must be idempotent).
    pub fn open_seeded(
        name: &str,
        path: &Path,
        migrations: Migrations,
        seed: fn(&Connection) -> Result<(), StoreError>,
        options: DbOptions,
        metrics: StoreMetrics,
    ) -> Result<Database, StoreError> {
        let mut writer = open_connection(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Only a new file takes it. Statement rows are about 1 KB and every commit rewrites
        // the index pages it touches: larger pages mean fewer page writes and less per-page
        // work for the same bytes (measured with benches/lrs.rs: the writer's CPU per
        // statement drops by about 15 % from 4 KB pages).
        writer.pragma_update(None, "page_size", PAGE_SIZE)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        // The writer walks the statement indexes on every insert: keep their upper levels
        // in its own page cache (grows only as the database does) instead of re-reading
        // them from the OS on each page miss.
        writer.pragma_update(None, "cache_size", -32 * 1024)?;
        migrate(&mut writer, path, migrations)?;
        {
            let tx = writer.transaction()?;
            seed(&tx)?;
            tx.commit()?;
        }
        restrict_permissions(path)?;

        let mut readers = Vec::with_capacity(options.read_connections);
        for _ in 0..options.read_connections.max(1) {
            readers.push(open_connection(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?);
        }

        let (tx, rx) = mpsc::channel::<Job>(options.queue_capacity);
        let label = DbLabel {
            db: name.to_string(),
        };
        let thread_metrics = metrics.clone();
        let max_batch = options.max_batch.max(1);
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = commits.clone();
        std::thread::Builder::new()
            .name(format!("writer-{name}"))
            .spawn(move || writer_loop(writer, rx, max_batch, thread_metrics, label, counted))
            .map_err(|source| StoreError::Io {
                path: path.display().to_string(),
                source,
            })?;

        Ok(Database {
            inner: Arc::new(Inner {
                name: name.to_string(),
                path: path.to_path_buf(),
                commits,
                writer: tx,
                read_slots: Arc::new(Semaphore::new(readers.len())),
                readers: Mutex::new(readers),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Write transactions this process committed to the database since it opened it: a
    /// change since a moment is a larger count than then.
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Runs `job` in the writer's current transaction and returns its result once the
    /// transaction is durably committed. An error from `job` rolls back only this job.
    pub async fn write<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(job, true).await
    }

    /// Like [`Database::write`], without the job's own savepoint (which copies every page
    /// the job touches): for large jobs that check everything before their first write, so
    /// that they fail only for a reason that is not theirs (I/O, a full disk). If such a job
    /// fails anyway, the whole shared transaction is rolled back and every job in it fails:
    /// nothing half-written is ever committed, and nothing of it was acknowledged.
    pub async fn write_checked<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit(job, false).await
    }

    async fn submit<T, F>(&self, job: F, savepoint: bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, StoreError>>();
        let stopped = || StoreError::WriterStopped(self.inner.name.clone());
        self.inner
            .writer
            .send(Box::new(Pending {
                job,
                reply,
                savepoint,
            }))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Runs `query` on a read-only connection on a blocking thread.
    pub async fn read<T, F>(&self, query: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // The permit moves into the blocking task, so a cancelled request keeps its
        // connection (and slot) until the query really ends.
        let slot = self
            .inner
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::WriterStopped(self.inner.name.clone()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let conn = inner
                .readers
                .lock()
                .map_err(|_| StoreError::JobPanicked)?
                .pop()
                .ok_or_else(|| StoreError::WriterStopped(inner.name.clone()))?;
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| query(&conn)))
                .unwrap_or(Err(StoreError::JobPanicked));
            if let Ok(mut pool) = inner.readers.lock() {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|_| StoreError::JobPanicked)?
    }

    /// `PRAGMA integrity_check` on a read connection: `Ok(vec![])` when healthy.
    pub async fn integrity_problems(&self) -> Result<Vec<String>, StoreError> {
        self.read(integrity_problems).await
    }
}

/// Lines reported by `PRAGMA integrity_check`, minus the single `ok` of a healthy file.
pub fn integrity_problems(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let lines = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(lines.into_iter().filter(|l| l != "ok").collect())
}

fn run_in_savepoint<T, F>(conn: &Connection, job: F) -> Result<T, StoreError>
where
    F: FnOnce(&Connection) -> Result<T, StoreError>,
{
    conn.execute_batch("SAVEPOINT job")?;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| job(conn)))
        .unwrap_or(Err(StoreError::JobPanicked));
    match outcome {
        Ok(v) => {
            conn.execute_batch("RELEASE job")?;
            Ok(v)
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
            Err(e)
        }
    }
}

fn writer_loop(
    conn: Connection,
    mut jobs: mpsc::Receiver<Job>,
    max_batch: usize,
    metrics: StoreMetrics,
    label: DbLabel,
    commits: Arc<std::sync::atomic::AtomicU64>,
) {
    let depth = metrics.queue_depth.get_or_create(&label).clone();
    let batch_size = metrics.batch_size.get_or_create(&label).clone();
    let commit_seconds = metrics.commit_seconds.get_or_create(&label).clone();
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        depth.set(jobs.len() as i64);
        batch_size.observe(batch.len() as f64);
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let message = format!("could not start a write transaction: {e}");
            tracing::error!(db = %label.db, error = %message);
            for job in batch.drain(..) {
                job.fail(message.clone());
            }
            continue;
        }
        let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
        let mut lost = None;
        let mut queue = batch.drain(..);
        for job in queue.by_ref() {
            let (done, poisoned) = job.run(&conn);
            completions.push(done);
            if poisoned.is_some() {
                lost = poisoned;
                break;
            }
            // SQLite rolls the whole transaction back on some errors (disk full, I/O):
            // then nothing of this batch may be reported as written, and no later job may
            // run outside a transaction.
            if conn.is_autocommit() {
                lost = Some(
                    "the database rolled the transaction back (disk full or I/O error)".to_string(),
                );
                break;
            }
        }
        if let Some(message) = &lost {
            for job in queue {
                job.fail(message.clone());
            }
        } else {
            drop(queue);
        }
        let commit = match lost {
            Some(message) => Err(message),
            None => conn.execute_batch("COMMIT").map_err(|e| e.to_string()),
        };
        if let Err(message) = &commit {
            tracing::error!(db = %label.db, error = %message, "commit failed; the batch is rolled back");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        commit_seconds.observe(started.elapsed().as_secs_f64());
        if commit.is_ok() {
            commits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        for done in completions {
            done(commit.clone());
        }
    }
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        StoreError::Io {
            path: path.display().to_string(),
            source,
        }
    })
}

#[cfg(not(unix))]
fn restrict_permissions(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Seconds since the Unix epoch, the one time format stored in every database.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_MIGRATIONS: Migrations = Migrations(&[
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE);",
        "ALTER TABLE t ADD COLUMN n INTEGER NOT NULL DEFAULT 0;",
    ]);

    fn open_with(dir: &Path, metrics: StoreMetrics) -> Database {
        Database::open(
            "test",
            &dir.join("t.db"),
            TEST_MIGRATIONS,
            DbOptions::default(),
            metrics,
        )
        .unwrap()
    }

    fn open(dir: &Path) -> Database {
        open_with(dir, StoreMetrics::default())
    }

    fn commits_so_far(metrics: &StoreMetrics) -> f64 {
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("ceredis_commit_batch_size_count"))
            .unwrap();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// Occupies the writer for 300 ms, so that the jobs sent meanwhile queue up behind it
    /// and share its next transaction.
    async fn hold_writer(db: &Database) -> tokio::task::JoinHandle<Result<(), StoreError>> {
        let slow = {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(|_| {
                    std::thread::sleep(Duration::from_millis(300));
                    Ok(())
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        slow
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_queued_behind_a_commit_share_the_next_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = StoreMetrics::default();
        let db = open_with(dir.path(), metrics.clone());
        // Keep the writer busy so that the next 100 jobs queue up behind it.
        let slow = hold_writer(&db).await;
        let mut tasks = Vec::new();
        for i in 0..100 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.write(move |c| {
                    c.execute("INSERT INTO t (v) VALUES (?1)", [format!("v{i}")])?;
                    Ok(())
                })
                .await
            }));
        }
        slow.await.unwrap().unwrap();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let n: i64 = db
            .read(|c| Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(n, 100);
        let commits = commits_so_far(&metrics);
        assert!(
            commits <= 5.0,
            "101 writes took {commits} commits: not grouped"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checked_job_that_fails_midway_takes_its_whole_batch_down() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        // Hold the writer so that the three jobs below share one transaction.
        let slow = hold_writer(&db).await;
        let before = {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(|c| Ok(c.execute("INSERT INTO t (v) VALUES ('before')", [])?))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let midway = {
            let db = db.clone();
            tokio::spawn(async move {
                db.write_checked(|c| {
                    c.execute("INSERT INTO t (v) VALUES ('half')", [])?;
                    // A unique violation after a write: no savepoint to undo `half`.
                    c.execute("INSERT INTO t (v) VALUES ('before')", [])?;
                    Ok(())
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let after = {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(|c| Ok(c.execute("INSERT INTO t (v) VALUES ('after')", [])?))
                    .await
            })
        };
        slow.await.unwrap().unwrap();
        assert!(midway.await.unwrap().is_err());
        assert!(
            before.await.unwrap().is_err(),
            "its transaction was rolled back"
        );
        assert!(after.await.unwrap().is_err(), "it never ran");
        let rows: Vec<String> = db
            .read(|c| {
                let mut stmt = c.prepare("SELECT v FROM t")?;
                let rows = stmt
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                Ok(rows)
            })
            .await
            .unwrap();
        assert!(
            rows.is_empty(),
            "half-written or unacknowledged rows: {rows:?}"
        );
        // The writer goes on.
        db.write_checked(|c| Ok(c.execute("INSERT INTO t (v) VALUES ('next')", [])?))
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn when_the_disk_fills_no_write_is_reported_that_did_not_land() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        // A tiny database (160 KB): some of the writes below hit SQLITE_FULL.
        db.write(|c| {
            c.execute_batch("PRAGMA max_page_count = 10")?;
            Ok(())
        })
        .await
        .unwrap();
        let mut tasks = Vec::new();
        for i in 0..120 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let v = format!("{i:04}-{}", "x".repeat(1500));
                let ok = db
                    .write(move |c| {
                        c.execute("INSERT INTO t (v) VALUES (?1)", [v])?;
                        Ok(())
                    })
                    .await
                    .is_ok();
                (i, ok)
            }));
        }
        let mut acknowledged = Vec::new();
        let mut refused = 0;
        for t in tasks {
            let (i, ok) = t.await.unwrap();
            if ok {
                acknowledged.push(i);
            } else {
                refused += 1;
            }
        }
        assert!(
            refused > 0,
            "the disk never filled: the test proves nothing"
        );
        let stored: std::collections::HashSet<i64> = db
            .read(|c| {
                let mut s = c.prepare("SELECT CAST(substr(v, 1, 4) AS INTEGER) FROM t")?;
                let rows = s.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
                Ok(rows)
            })
            .await
            .unwrap();
        for i in &acknowledged {
            assert!(
                stored.contains(i),
                "write {i} was acknowledged but is not stored"
            );
        }
        assert_eq!(
            stored.len(),
            acknowledged.len(),
            "every stored write was acknowledged"
        );
        // The writer still works once space is freed.
        db.write(|c| {
            c.execute("DELETE FROM t", [])?;
            c.execute("INSERT INTO t (v) VALUES ('after')", [])?;
            Ok(())
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_failing_job_rolls_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.write(|c| {
            c.execute("INSERT INTO t (v) VALUES ('a')", [])?;
            Ok(())
        })
        .await
        .unwrap();
        let dup = db
            .write(|c| {
                c.execute("INSERT INTO t (v) VALUES ('b')", [])?;
                c.execute("INSERT INTO t (v) VALUES ('a')", [])?;
                Ok(())
            })
            .await;
        assert!(dup.unwrap_err().is_unique_violation());
        let values: Vec<String> = db
            .read(|c| {
                let mut s = c.prepare("SELECT v FROM t ORDER BY v")?;
                let rows = s.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
                Ok(rows)
            })
            .await
            .unwrap();
        assert_eq!(
            values,
            vec!["a".to_string()],
            "the half-done job left nothing"
        );
    }

    #[tokio::test]
    async fn migrations_apply_once_and_refuse_a_newer_file() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        let db = open(dir.path());
        let version: i64 = db
            .read(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(version, 2);
        drop(db);
        let older = Migrations(&TEST_MIGRATIONS.0[..1]);
        let err = Database::open(
            "test",
            &dir.path().join("t.db"),
            older,
            DbOptions::default(),
            StoreMetrics::default(),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            StoreError::SchemaTooNew {
                found: 2,
                known: 1,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn readers_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let err = db
            .read(|c| {
                c.execute("INSERT INTO t (v) VALUES ('x')", [])?;
                Ok(())
            })
            .await;
        assert!(err.is_err());
    }
}
