//! `ceredis doctor`: checks what an operator can fix — data directory and key permissions,
//! free disk, certificate expiry, and `PRAGMA integrity_check` of every database — and says
//! how to fix each problem. [`quick`] (no database scan) also feeds the operator console.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use time::OffsetDateTime;

use crate::config::Config;
use crate::store::backup::database_files;
use crate::store::integrity_problems;
use crate::{identity, tls};

#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

fn check(name: &str, ok: bool, detail: String, fix: Option<String>) -> Check {
    Check {
        name: name.to_string(),
        ok,
        detail,
        fix: if ok { None } else { fix },
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

#[cfg(not(unix))]
fn mode(_: &Path) -> Option<u32> {
    None
}

const MIN_FREE_BYTES: u64 = 1 << 30;

/// Checks that need no database access.
pub fn quick(config: &Config) -> Vec<Check> {
    let dir = &config.data_dir;
    let mut out = Vec::new();
    if !dir.is_dir() {
        out.push(check(
            "data directory",
            false,
            format!("{} does not exist", dir.display()),
            Some(format!("run `ceredis init --data-dir {}`", dir.display())),
        ));
        return out;
    }
    match mode(dir) {
        Some(m) => out.push(check(
            "data directory",
            m & 0o077 == 0,
            format!("{} (mode {m:o})", dir.display()),
            Some(format!("chmod 700 {}", dir.display())),
        )),
        None => out.push(check(
            "data directory",
            true,
            dir.display().to_string(),
            None,
        )),
    }
    for key in [identity::SITE_KEY, tls::CA_KEY, tls::SERVER_KEY] {
        let path = dir.join(key);
        match mode(&path) {
            Some(m) => out.push(check(
                key,
                m & 0o077 == 0,
                format!("mode {m:o}"),
                Some(format!("chmod 600 {}", path.display())),
            )),
            None if key == tls::SERVER_KEY => {}
            None => out.push(check(
                key,
                false,
                "missing".into(),
                Some("run `ceredis init` on this data directory".into()),
            )),
        }
    }
    match rustix::fs::statvfs(dir.as_path()) {
        Ok(s) => {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            let total = s.f_blocks.saturating_mul(s.f_frsize).max(1);
            let pct = free * 100 / total;
            out.push(check(
                "free disk",
                free >= MIN_FREE_BYTES && pct >= 5,
                format!("{} MiB free ({pct} %)", free >> 20),
                Some("free space on the data disk or grow it: SQLite needs room for its WAL and backups".into()),
            ));
        }
        Err(e) => out.push(check(
            "free disk",
            false,
            format!("cannot measure: {e}"),
            None,
        )),
    }
    let mut certificates = vec![
        (
            "site CA certificate",
            tls::CA_CERT,
            "the local CA expires: plan a new CA (`ceredis init` on a new data directory) and redistribute it to school PCs",
        ),
        (
            "server certificate",
            tls::SERVER_CERT,
            "restart `ceredis serve`: it re-issues the server certificate from the local CA",
        ),
    ];
    if !config.tls.acme.domain.is_empty() {
        certificates.push((
            "ACME certificate",
            crate::acme::CERT,
            "renewal is failing: read the log (`could not obtain an ACME certificate`); the domain must reach this appliance on port 443",
        ));
    }
    for (name, rel, fix) in certificates {
        let path = dir.join(rel);
        let Ok(pem) = std::fs::read_to_string(&path) else {
            if rel == tls::CA_CERT && !config.insecure_http && config.tls.acme.domain.is_empty() {
                out.push(check(
                    name,
                    false,
                    "missing".into(),
                    Some("run `ceredis init`".into()),
                ));
            }
            continue;
        };
        match tls::inspect(&pem) {
            Some((not_after, _)) => {
                let days = (not_after - OffsetDateTime::now_utc()).whole_days();
                out.push(check(
                    name,
                    days > 30,
                    if days >= 0 {
                        format!("expires in {days} days")
                    } else {
                        format!("expired {} days ago", -days)
                    },
                    Some(fix.into()),
                ));
            }
            None => out.push(check(
                name,
                false,
                "unreadable".into(),
                Some(format!("remove {} and restart", path.display())),
            )),
        }
    }
    out
}

/// Every check, including an integrity check of every database.
pub fn full(config: &Config) -> Vec<Check> {
    let mut out = quick(config);
    if !config.data_dir.is_dir() {
        return out;
    }
    let files = match database_files(&config.data_dir) {
        Ok(f) => f,
        Err(e) => {
            out.push(check("databases", false, e.to_string(), None));
            return out;
        }
    };
    for rel in files {
        let path = config.data_dir.join(&rel);
        let name = rel.display().to_string();
        if !path.exists() {
            out.push(check(
                &name,
                false,
                "missing".into(),
                Some("run `ceredis init`".into()),
            ));
            continue;
        }
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(crate::store::StoreError::from);
        let result = conn
            .as_ref()
            .map_err(|e| crate::store::StoreError::Conflict(e.to_string()))
            .and_then(integrity_problems);
        if let (Ok(conn), true) = (&conn, rel.starts_with("tenants")) {
            out.push(journal_check(&name, conn));
        }
        match result {
            Ok(problems) if problems.is_empty() => out.push(check(&name, true, "integrity ok".into(), None)),
            Ok(problems) => out.push(check(
                &name,
                false,
                format!("integrity check failed: {}", problems.join("; ")),
                Some("stop the service and restore the last good backup: `ceredis restore --from BACKUP --data-dir NEW_DIR`".into()),
            )),
            Err(e) => out.push(check(
                &name,
                false,
                format!("cannot read: {e}"),
                Some("if the file is damaged, stop the service and restore the last good backup (`ceredis restore --from BACKUP --data-dir NEW_DIR`); otherwise check its owner and mode".into()),
            )),
        }
    }
    out
}

/// The tenant's assessment journal: its chain, and whether replaying it gives the stored
/// estimates. Says how many entries it checked, never what they hold.
fn journal_check(name: &str, conn: &Connection) -> Check {
    let label = format!("{name}: assessment journal");
    match crate::store::competency::verify_journal(conn) {
        Ok(r) if r.problems.is_empty() => check(
            &label,
            true,
            format!(
                "{} entries chained, {} recalculations replayed to the stored estimates",
                r.entries, r.recalculations
            ),
            None,
        ),
        Ok(r) => check(
            &label,
            false,
            format!("{} problem(s): {}", r.problems.len(), r.problems.join("; ")),
            Some("the journal or the estimates were changed outside the appliance: stop the service, keep this file for inspection, and restore the last good backup (`ceredis restore --from BACKUP --data-dir NEW_DIR`)".into()),
        ),
        Err(e) => check(&label, false, format!("cannot read: {e}"), None),
    }
}
