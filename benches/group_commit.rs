//! Group commit against one COMMIT per request, side by side in one run.
//!
//! 32 concurrent writers insert rows durably (WAL, `synchronous = FULL`, on the real disk):
//! - `group commit`: through `ceredis::store::Database`, whose one writer thread shares each
//!   transaction among every job waiting (what the appliance does);
//! - `commit per request`: 32 threads, each with its own connection, each insert its own
//!   transaction (what a naive server does).
//!
//! Run: `cargo bench --bench group_commit` (set `BENCH_DIR` to measure another disk).
//! Prints writes/s for both and the ratio; target ≥ 3 000 writes/s for group commit.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ceredis::store::{Database, DbOptions, Migrations, StoreMetrics};

const WRITERS: usize = 32;
const SECONDS: u64 = 5;
const SCHEMA: Migrations = Migrations(&[
    "CREATE TABLE w (id INTEGER PRIMARY KEY, writer INTEGER NOT NULL, n INTEGER NOT NULL, body TEXT NOT NULL);",
]);

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("BENCH_DIR is writable"),
        None => {
            tempfile::tempdir_in(std::env::current_dir().expect("cwd")).expect("cwd is writable")
        }
    }
}

fn group_commit() -> (u64, f64) {
    let dir = bench_dir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let db = Database::open("bench", &dir.path().join("g.db"), SCHEMA, DbOptions::default(), StoreMetrics::default()).expect("open");
        let deadline = Instant::now() + Duration::from_secs(SECONDS);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    db.write(move |c| {
                        c.execute("INSERT INTO w (writer, n, body) VALUES (?1, ?2, 'a class title of ordinary length')", rusqlite::params![w as i64, n as i64])?;
                        Ok(())
                    })
                    .await
                    .expect("durable write");
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.expect("writer");
        }
        (total, started.elapsed().as_secs_f64())
    })
}

fn commit_per_request() -> (u64, f64) {
    let dir = bench_dir();
    let path = dir.path().join("p.db");
    {
        let c = rusqlite::Connection::open(&path).expect("open");
        c.pragma_update(None, "journal_mode", "WAL").expect("wal");
        c.execute_batch(SCHEMA.0[0]).expect("schema");
    }
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let started = Instant::now();
    let path = Arc::new(path);
    let threads: Vec<_> = (0..WRITERS)
        .map(|w| {
            let path = path.clone();
            std::thread::spawn(move || {
                let c = rusqlite::Connection::open(path.as_path()).expect("open");
                c.busy_timeout(Duration::from_secs(30)).expect("timeout");
                c.pragma_update(None, "synchronous", "FULL").expect("sync");
                let mut n = 0u64;
                while Instant::now() < deadline {
                    c.execute("INSERT INTO w (writer, n, body) VALUES (?1, ?2, 'a class title of ordinary length')", rusqlite::params![w as i64, n as i64])
                        .expect("durable write");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total = threads.into_iter().map(|t| t.join().expect("writer")).sum();
    (total, started.elapsed().as_secs_f64())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list: nothing to list.
    }
    println!("{WRITERS} concurrent writers, {SECONDS} s each, durable (WAL + synchronous=FULL)");
    let (peer_n, peer_s) = commit_per_request();
    let peer = peer_n as f64 / peer_s;
    println!("commit per request : {peer_n:>8} writes in {peer_s:.2} s = {peer:>9.0} writes/s");
    let (ours_n, ours_s) = group_commit();
    let ours = ours_n as f64 / ours_s;
    println!("group commit       : {ours_n:>8} writes in {ours_s:.2} s = {ours:>9.0} writes/s");
    println!(
        "ratio group/per-request: {:.1}x (target: >= 3000 writes/s for group commit: {})",
        ours / peer,
        if ours >= 3000.0 { "met" } else { "NOT met" }
    );
}
