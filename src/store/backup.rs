//! Online backup and verified restore of a whole data directory.
//!
//! A backup copies every database with SQLite's online backup API in one step per file, so
//! each copy is a consistent snapshot taken while the server keeps writing (WAL readers do
//! not block the writer). The local CA travels with the backup so school PCs that trust it
//! keep trusting the restored appliance; the site identity key does not: a restored copy
//! always gets a new identity (see `cli`), so two copies never sync as one.

use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use super::{StoreError, integrity_problems, now};

pub const MANIFEST: &str = "backup.json";

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub created_at: i64,
    pub site_id: Option<String>,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not empty: restore refuses to overwrite an existing appliance")]
    TargetNotEmpty(PathBuf),
    #[error("{0} has no {MANIFEST}: not a ceredis backup")]
    NoManifest(PathBuf),
    #[error("backup manifest is unreadable: {0}")]
    BadManifest(String),
    #[error("{path} does not match the manifest (expected sha256 {expected}, found {found})")]
    Tampered {
        path: String,
        expected: String,
        found: String,
    },
    #[error("{path} failed its integrity check: {problems}")]
    Corrupt { path: String, problems: String },
    #[error("manifest names a path outside the backup: {0}")]
    UnsafePath(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Database files of a data directory, relative to it: `system.db` first, then every
/// `tenants/<slug>/tenant.db`.
pub fn database_files(data_dir: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let mut files = vec![PathBuf::from("system.db")];
    let tenants = data_dir.join("tenants");
    if tenants.is_dir() {
        let mut slugs: Vec<PathBuf> = fs::read_dir(&tenants)
            .map_err(io(&tenants))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join("tenant.db").is_file())
            .collect();
        slugs.sort();
        for dir in slugs {
            if let Some(slug) = dir.file_name() {
                files.push(Path::new("tenants").join(slug).join("tenant.db"));
            }
        }
    }
    Ok(files)
}

/// Copies one live database into `dst` as a consistent snapshot.
pub fn snapshot(src: &Path, dst: &Path) -> Result<(), BackupError> {
    let source = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(StoreError::from)?;
    source
        .busy_timeout(std::time::Duration::from_secs(30))
        .map_err(StoreError::from)?;
    let mut target = Connection::open(dst).map_err(StoreError::from)?;
    {
        let backup =
            rusqlite::backup::Backup::new(&source, &mut target).map_err(StoreError::from)?;
        // One step copies every page under one read transaction: a consistent snapshot even
        // while the server commits (a paged copy would restart on every foreign write).
        backup.step(-1).map_err(StoreError::from)?;
    }
    target
        .pragma_update(None, "journal_mode", "DELETE")
        .map_err(StoreError::from)?;
    Ok(())
}

fn sha256_file(path: &Path) -> Result<(String, u64), BackupError> {
    let bytes = fs::read(path).map_err(io(path))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    Ok((hex(digest.as_ref()), bytes.len() as u64))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Backs up `data_dir` into the new directory `out`. `extra` names non-database files
/// (relative to `data_dir`) copied as they are. Returns the manifest written.
pub fn backup(
    data_dir: &Path,
    out: &Path,
    extra: &[&str],
    site_id: Option<String>,
    mut progress: impl FnMut(&Path),
) -> Result<Manifest, BackupError> {
    if out.exists() && fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(BackupError::TargetNotEmpty(out.to_path_buf()));
    }
    fs::create_dir_all(out).map_err(io(out))?;
    let mut files = Vec::new();
    for rel in database_files(data_dir)? {
        progress(&rel);
        let dst = out.join(&rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        snapshot(&data_dir.join(&rel), &dst)?;
        files.push(rel);
    }
    for rel in extra {
        let src = data_dir.join(rel);
        if src.is_file() {
            let dst = out.join(rel);
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent).map_err(io(parent))?;
            }
            fs::copy(&src, &dst).map_err(io(&src))?;
            files.push(PathBuf::from(rel));
        }
    }
    let mut manifest = Manifest {
        format: 1,
        created_at: now(),
        site_id,
        files: Vec::new(),
    };
    for rel in files {
        let (sha256, bytes) = sha256_file(&out.join(&rel))?;
        manifest.files.push(ManifestFile {
            path: rel.to_string_lossy().into_owned(),
            sha256,
            bytes,
        });
    }
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| BackupError::BadManifest(e.to_string()))?;
    let path = out.join(MANIFEST);
    fs::write(&path, text).map_err(io(&path))?;
    // The backup is reported done only once it is on disk.
    for file in &manifest.files {
        sync(&out.join(&file.path))?;
    }
    sync(&path)?;
    for dir in [out.join("tenants"), out.join("tls"), out.to_path_buf()] {
        if dir.is_dir() {
            sync(&dir)?;
        }
    }
    Ok(manifest)
}

fn sync(path: &Path) -> Result<(), BackupError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

/// Checks a backup without touching any appliance: every file matches its manifest hash
/// and every database passes `PRAGMA integrity_check`.
pub fn verify(backup_dir: &Path) -> Result<Manifest, BackupError> {
    let path = backup_dir.join(MANIFEST);
    if !path.is_file() {
        return Err(BackupError::NoManifest(backup_dir.to_path_buf()));
    }
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| BackupError::BadManifest(e.to_string()))?;
    if !manifest.files.iter().any(|f| f.path == "system.db") {
        return Err(BackupError::BadManifest(
            "it lists no system.db: not a whole appliance".into(),
        ));
    }
    for file in &manifest.files {
        let rel = Path::new(&file.path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(BackupError::UnsafePath(file.path.clone()));
        }
        let (found, _) = sha256_file(&backup_dir.join(rel))?;
        if found != file.sha256 {
            return Err(BackupError::Tampered {
                path: file.path.clone(),
                expected: file.sha256.clone(),
                found,
            });
        }
        if file.path.ends_with(".db") {
            let conn =
                Connection::open_with_flags(backup_dir.join(rel), OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .map_err(StoreError::from)?;
            let problems = integrity_problems(&conn)?;
            if !problems.is_empty() {
                return Err(BackupError::Corrupt {
                    path: file.path.clone(),
                    problems: problems.join("; "),
                });
            }
        }
    }
    Ok(manifest)
}

/// Verifies `backup_dir`, then copies it into `data_dir`, which must be empty or absent.
pub fn restore(backup_dir: &Path, data_dir: &Path) -> Result<Manifest, BackupError> {
    let manifest = verify(backup_dir)?;
    if data_dir.join("system.db").exists() {
        return Err(BackupError::TargetNotEmpty(data_dir.to_path_buf()));
    }
    let mut copied = Vec::new();
    let result = (|| {
        for file in &manifest.files {
            let src = backup_dir.join(&file.path);
            let dst = data_dir.join(&file.path);
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent).map_err(io(parent))?;
            }
            fs::copy(&src, &dst).map_err(io(&src))?;
            copied.push(dst.clone());
            sync(&dst)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Leave no half-restored appliance behind: a retry must find the directory empty.
        for path in copied {
            let _ = fs::remove_file(path);
        }
        return Err(e);
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appliance(dir: &Path) {
        fs::create_dir_all(dir.join("tenants/ecole")).unwrap();
        for db in ["system.db", "tenants/ecole/tenant.db"] {
            let c = Connection::open(dir.join(db)).unwrap();
            c.execute_batch("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('x');")
                .unwrap();
        }
    }

    #[test]
    fn a_failed_restore_leaves_nothing_behind_and_can_be_retried() {
        let root = tempfile::tempdir().unwrap();
        let (data, out, target) = (
            root.path().join("data"),
            root.path().join("b"),
            root.path().join("new"),
        );
        appliance(&data);
        backup(&data, &out, &[], Some("site-1".into()), |_| {}).unwrap();
        // `tenants` is a file in the target: the tenant database cannot be copied.
        fs::create_dir_all(&target).unwrap();
        fs::write(target.join("tenants"), b"in the way").unwrap();
        assert!(restore(&out, &target).is_err());
        assert!(
            !target.join("system.db").exists(),
            "no half-restored appliance"
        );
        fs::remove_file(target.join("tenants")).unwrap();
        let manifest = restore(&out, &target).unwrap();
        assert_eq!(manifest.files.len(), 2);
        assert!(target.join("tenants/ecole/tenant.db").exists());
    }

    #[test]
    fn a_backup_without_the_system_database_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let (data, out) = (root.path().join("data"), root.path().join("b"));
        appliance(&data);
        backup(&data, &out, &[], None, |_| {}).unwrap();
        let text = fs::read_to_string(out.join(MANIFEST)).unwrap();
        let mut m: Manifest = serde_json::from_str(&text).unwrap();
        m.files.retain(|f| f.path != "system.db");
        fs::write(out.join(MANIFEST), serde_json::to_string(&m).unwrap()).unwrap();
        let err = verify(&out).unwrap_err().to_string();
        assert!(err.contains("system.db"), "{err}");
    }
}
