//! A throwaway PostgreSQL cluster for the test run: Debian's PostgreSQL binaries, a
//! private data directory and a Unix socket only (no TCP), run as the `postgres` user when
//! the tests run as root. A watchdog stops it when the test process ends.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Cluster {
    bin: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    as_postgres: bool,
    /// The shell that runs the server and stops it when this process ends.
    _watchdog: Option<std::process::Child>,
}

/// The newest `/usr/lib/postgresql/<version>/bin`.
fn bindir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: `apt-get install postgresql` (scripts/test does it)")
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no PostgreSQL server binaries").1
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Cluster {
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("ceredis-pg-")
            .tempdir()
            .unwrap()
            .keep();
        let as_postgres = is_root();
        let mut cluster = Cluster {
            bin: bindir(),
            socket_dir: dir.clone(),
            port: 5432,
            as_postgres,
            _watchdog: None,
        };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown of the PostgreSQL test directory failed");
        }
        let data = dir.join("data");
        let out = cluster
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The server lives as long as this process: the shell stops it when we are gone.
        let server = format!(
            "{} -D '{}' -k '{}' -p {} -c listen_addresses='' -c max_connections=200",
            cluster.bin.join("postgres").display(),
            data.display(),
            dir.display(),
            cluster.port
        );
        let server = if as_postgres {
            format!("runuser -u postgres -- {server}")
        } else {
            server
        };
        let stop = format!(
            "{} -D '{}' stop -m fast",
            cluster.bin.join("pg_ctl").display(),
            data.display()
        );
        let stop = if as_postgres {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        };
        let watchdog = format!(
            "{server} >'{log}' 2>&1 & while kill -0 {parent} 2>/dev/null; do sleep 0.5; done; \
             {stop} >/dev/null 2>&1; wait; rm -rf '{dir}'",
            log = dir.join("postgres.log").display(),
            parent = std::process::id(),
            dir = dir.display(),
        );
        cluster._watchdog = Some(
            Command::new("sh")
                .args(["-c", &watchdog])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = cluster
                .command("pg_isready")
                .arg("-h")
                .arg(&cluster.socket_dir)
                .args(["-p", &cluster.port.to_string()])
                .stdout(Stdio::null())
                .status()
                .unwrap()
                .success();
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start; see {}",
                dir.join("postgres.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// A fresh, empty database; its connection string.
    pub fn database(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("hub_{}", N.fetch_add(1, Ordering::SeqCst));
        let out = self
            .command("psql")
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args([
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("CREATE DATABASE {name}"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!(
            "host={} port={} user=postgres dbname={name}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// Runs `sql` with psql on the database of `conninfo`; its unaligned output.
    pub fn psql(&self, conninfo: &str, sql: &str) -> String {
        let out = self
            .command("psql")
            .args(["-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The whole database as `pg_dump` writes it (plain SQL).
    pub fn dump(&self, conninfo: &str) -> Vec<u8> {
        let out = self
            .command("pg_dump")
            .args(["-d", conninfo])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

/// The cluster of this test run, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(Cluster::start)
}
