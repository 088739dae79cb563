//! OneRoster 1.1 CSV import: `orgs.csv`, `users.csv`, `classes.csv`, `enrollments.csv` —
//! the subset of a school information system export that CEREDIS needs.
//!
//! An import first validates every line (errors carry `file:line` and name the column);
//! with any error nothing is written. It then upserts by `sourcedId` in chunks, each chunk
//! one durable write job, so a re-import of the same files changes nothing (every row is
//! counted as unchanged) and progress is visible while a large file runs. A dry run does
//! the same comparisons on a read-only connection and reports what would change.
//!
//! Mapping: OneRoster `administrator` → admin; `teacher` and `aide` → teacher; `student`
//! → student; guardians, parents, relatives and proctors are skipped with a warning.
//! `status = tobedeleted` (delta files) deactivates users, classes and orgs and removes
//! enrolments; `enabledUser = false` deactivates the user. Imported users have no password
//! until the admin issues one-time passwords.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use serde::Serialize;

use super::{Role, TenantHandle, user_problem};
use crate::store::StoreError;
use crate::store::tenant::{self as sql, ClassFields, OrgFields, UserFields};

pub const FILES: [&str; 4] = ["orgs.csv", "users.csv", "classes.csv", "enrollments.csv"];
const CHUNK: usize = 500;

/// Largest total of uncompressed CSV text read from one zip bundle (a guard against zip
/// bombs; a school of 5 000 pupils exports a few MB).
pub const MAX_ZIP_TEXT: u64 = 256 << 20;

/// The CSV texts of one import, by OneRoster file name.
#[derive(Debug, Default, Clone)]
pub struct RosterFiles {
    pub files: HashMap<String, String>,
    /// Files of a zip bundle that this import does not read (courses, sessions, …).
    pub ignored: Vec<String>,
}

impl RosterFiles {
    /// Adds a file by its name (`…/users.csv` → `users.csv`); unknown names are refused.
    pub fn add(&mut self, name: &str, text: String) -> Result<(), String> {
        let base = name
            .rsplit(['/', '\\'])
            .next()
            .unwrap_or(name)
            .to_ascii_lowercase();
        if !FILES.contains(&base.as_str()) {
            return Err(format!(
                "`{name}` is not a OneRoster file this import reads ({})",
                FILES.join(", ")
            ));
        }
        self.files.insert(base, text);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Reads a OneRoster zip bundle as exported by school information systems: the CSV
    /// files this import needs, wherever they sit in the archive; others are listed as
    /// ignored.
    pub fn add_zip(&mut self, name: &str, bytes: &[u8]) -> Result<(), String> {
        use std::io::Read;
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| format!("`{name}` is not a readable zip file: {e}"))?;
        let mut budget = MAX_ZIP_TEXT;
        for i in 0..archive.len() {
            let entry = archive
                .by_index(i)
                .map_err(|e| format!("`{name}`: entry {i} is unreadable: {e}"))?;
            if entry.is_dir() {
                continue;
            }
            let path = entry
                .name()
                .map_err(|e| format!("`{name}`: entry {i} has an unreadable name: {e}"))?
                .to_string();
            let base = path
                .rsplit('/')
                .next()
                .unwrap_or(&path)
                .to_ascii_lowercase();
            if !FILES.contains(&base.as_str()) {
                self.ignored.push(path);
                continue;
            }
            let mut text = String::new();
            let read = entry
                .take(budget + 1)
                .read_to_string(&mut text)
                .map_err(|e| {
                    format!(
                        "`{name}`: {path} is not UTF-8 text ({e}); export the CSV files as UTF-8"
                    )
                })?;
            if read as u64 > budget {
                return Err(format!(
                    "`{name}` holds more than {} MB of CSV text: split the export",
                    MAX_ZIP_TEXT >> 20
                ));
            }
            budget -= read as u64;
            self.files.insert(base, text);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LineMessage {
    pub file: String,
    pub line: u64,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub removed: u64,
    pub skipped: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub orgs: Counts,
    pub users: Counts,
    pub classes: Counts,
    pub enrollments: Counts,
    pub errors: Vec<LineMessage>,
    pub warnings: Vec<LineMessage>,
    /// Whether rows were written (false for a dry run or when errors stopped the import).
    pub applied: bool,
}

/// Progress of a running import, shared with whoever watches it.
#[derive(Debug, Default)]
pub struct Progress {
    pub total: AtomicU64,
    pub done: AtomicU64,
    pub phase: Mutex<String>,
    pub report: Mutex<Option<Report>>,
    pub failure: Mutex<Option<String>>,
}

impl Progress {
    fn set_phase(&self, phase: &str) {
        if let Ok(mut p) = self.phase.lock() {
            *p = phase.to_string();
        }
    }

    pub fn snapshot(&self) -> ProgressView {
        ProgressView {
            total: self.total.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            phase: self.phase.lock().map(|p| p.clone()).unwrap_or_default(),
            report: self.report.lock().ok().and_then(|r| r.clone()),
            failure: self.failure.lock().ok().and_then(|f| f.clone()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgressView {
    pub total: u64,
    pub done: u64,
    pub phase: String,
    pub report: Option<Report>,
    pub failure: Option<String>,
}

impl ProgressView {
    pub fn finished(&self) -> bool {
        self.report.is_some() || self.failure.is_some()
    }
}

/// Imports running or finished in this process, by id; each knows its tenant so that one
/// tenant cannot watch another's import.
#[derive(Debug, Clone, Default)]
pub struct RosterJobs {
    jobs: Arc<Mutex<Vec<JobEntry>>>,
}

/// (tenant slug, job id, progress)
type JobEntry = (String, String, Arc<Progress>);

const KEPT_JOBS: usize = 64;

impl RosterJobs {
    pub fn start(&self, slug: &str, id: &str) -> Arc<Progress> {
        let progress = Arc::new(Progress::default());
        if let Ok(mut jobs) = self.jobs.lock() {
            if jobs.len() >= KEPT_JOBS {
                jobs.remove(0);
            }
            jobs.push((slug.to_string(), id.to_string(), progress.clone()));
        }
        progress
    }

    pub fn get(&self, slug: &str, id: &str) -> Option<Arc<Progress>> {
        self.jobs
            .lock()
            .ok()?
            .iter()
            .find(|(s, i, _)| s == slug && i == id)
            .map(|(_, _, p)| p.clone())
    }
}

#[derive(Debug, Clone)]
enum Op<T> {
    Upsert(T),
    Remove(String),
}

#[derive(Debug, Clone)]
struct EnrolmentRow {
    sourced_id: String,
    class: String,
    user: String,
    role: &'static str,
}

#[derive(Debug, Default)]
struct Parsed {
    orgs: Vec<Op<OrgFields>>,
    users: Vec<Op<UserFields>>,
    /// Line of each user row in users.csv, by sourcedId.
    user_lines: HashMap<String, u64>,
    classes: Vec<Op<ClassFields>>,
    enrollments: Vec<Op<EnrolmentRow>>,
}

impl Parsed {
    fn rows(&self) -> u64 {
        (self.orgs.len() + self.users.len() + self.classes.len() + self.enrollments.len()) as u64
    }
}

struct Sheet<'a> {
    file: &'static str,
    reader: csv::Reader<&'a [u8]>,
    columns: HashMap<String, usize>,
}

fn open_sheet<'a>(
    file: &'static str,
    text: &'a str,
    required: &[&str],
    errors: &mut Vec<LineMessage>,
) -> Option<Sheet<'a>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            errors.push(LineMessage {
                file: file.into(),
                line: 1,
                message: format!("unreadable header: {e}"),
            });
            return None;
        }
    };
    let columns: HashMap<String, usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| (h.trim().to_string(), i))
        .collect();
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|c| !columns.contains_key(*c))
        .collect();
    if !missing.is_empty() {
        errors.push(LineMessage {
            file: file.into(),
            line: 1,
            message: format!("missing column(s): {}", missing.join(", ")),
        });
        return None;
    }
    Some(Sheet {
        file,
        reader,
        columns,
    })
}

/// One data line: its number and a getter by column name (empty when absent).
fn for_each_row(
    sheet: &mut Sheet<'_>,
    errors: &mut Vec<LineMessage>,
    mut f: impl FnMut(u64, &dyn Fn(&str) -> String),
) {
    let file = sheet.file;
    let columns = sheet.columns.clone();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for record in sheet.reader.records() {
        match record {
            Ok(r) => {
                let line = r.position().map(|p| p.line()).unwrap_or(0);
                let get = |col: &str| {
                    columns
                        .get(col)
                        .and_then(|i| r.get(*i))
                        .unwrap_or("")
                        .trim()
                        .to_string()
                };
                let id = get("sourcedId");
                if !id.is_empty()
                    && let Some(first) = seen.insert(id.clone(), line)
                {
                    errors.push(LineMessage {
                        file: file.into(),
                        line,
                        message: format!("sourcedId `{id}` is already used on line {first}"),
                    });
                    continue;
                }
                f(line, &get);
            }
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                errors.push(LineMessage {
                    file: file.into(),
                    line,
                    message: format!("malformed CSV: {e}"),
                });
            }
        }
    }
}

/// Rows that parsed go to `rows`, the others to `errors`.
fn split<T>(out: Vec<Result<T, LineMessage>>, rows: &mut Vec<T>, errors: &mut Vec<LineMessage>) {
    for r in out {
        match r {
            Ok(row) => rows.push(row),
            Err(e) => errors.push(e),
        }
    }
}

fn is_deleted(status: &str) -> Result<bool, String> {
    match status.to_ascii_lowercase().as_str() {
        "" | "active" => Ok(false),
        "tobedeleted" => Ok(true),
        other => Err(format!("status `{other}`: use active or tobedeleted")),
    }
}

fn parse(
    files: &RosterFiles,
    errors: &mut Vec<LineMessage>,
    warnings: &mut Vec<LineMessage>,
) -> Parsed {
    let mut parsed = Parsed::default();
    let err = |file: &str, line: u64, message: String| LineMessage {
        file: file.into(),
        line,
        message,
    };

    if let Some(text) = files.files.get("orgs.csv")
        && let Some(mut sheet) =
            open_sheet("orgs.csv", text, &["sourcedId", "name", "type"], errors)
    {
        let mut out = Vec::new();
        let mut local = Vec::new();
        for_each_row(&mut sheet, &mut local, |line, get| {
            let id = get("sourcedId");
            if id.is_empty() {
                out.push(Err(err("orgs.csv", line, "sourcedId is empty".into())));
                return;
            }
            match is_deleted(&get("status")) {
                Err(m) => out.push(Err(err("orgs.csv", line, m))),
                Ok(true) => out.push(Ok(Op::Remove(id))),
                Ok(false) => {
                    let name = get("name");
                    if name.is_empty() {
                        out.push(Err(err("orgs.csv", line, "name is empty".into())));
                        return;
                    }
                    out.push(Ok(Op::Upsert(OrgFields {
                        sourced_id: id,
                        name,
                        org_type: get("type"),
                        identifier: Some(get("identifier")).filter(|s| !s.is_empty()),
                        parent_sourced_id: Some(get("parentSourcedId")).filter(|s| !s.is_empty()),
                        active: true,
                    })))
                }
            }
        });
        errors.append(&mut local);
        split(out, &mut parsed.orgs, errors);
    }

    if let Some(text) = files.files.get("users.csv")
        && let Some(mut sheet) = open_sheet(
            "users.csv",
            text,
            &[
                "sourcedId",
                "enabledUser",
                "role",
                "username",
                "givenName",
                "familyName",
            ],
            errors,
        )
    {
        let mut out = Vec::new();
        let mut local = Vec::new();
        let mut seen_usernames: HashMap<String, u64> = HashMap::new();
        let mut user_lines: HashMap<String, u64> = HashMap::new();
        for_each_row(&mut sheet, &mut local, |line, get| {
            let id = get("sourcedId");
            if id.is_empty() {
                out.push(Err(err("users.csv", line, "sourcedId is empty".into())));
                return;
            }
            let deleted = match is_deleted(&get("status")) {
                Ok(d) => d,
                Err(m) => {
                    out.push(Err(err("users.csv", line, m)));
                    return;
                }
            };
            if deleted {
                out.push(Ok(Op::Remove(id)));
                return;
            }
            let role = match get("role").to_ascii_lowercase().as_str() {
                "administrator" => Role::Admin,
                "teacher" | "aide" => Role::Teacher,
                "student" => Role::Student,
                "guardian" | "parent" | "relative" | "proctor" => {
                    warnings.push(err(
                        "users.csv",
                        line,
                        format!(
                            "role `{}`: family accounts are not imported; skipped",
                            get("role")
                        ),
                    ));
                    return;
                }
                other => {
                    out.push(Err(err(
                        "users.csv",
                        line,
                        format!("role `{other}` is not a OneRoster 1.1 role"),
                    )));
                    return;
                }
            };
            let active = match get("enabledUser").to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => true,
                "false" | "0" | "no" => false,
                other => {
                    out.push(Err(err(
                        "users.csv",
                        line,
                        format!("enabledUser `{other}`: use true or false"),
                    )));
                    return;
                }
            };
            let fields = UserFields {
                sourced_id: Some(id),
                username: get("username"),
                given_name: get("givenName"),
                family_name: get("familyName"),
                email: Some(get("email")).filter(|s| !s.is_empty()),
                role,
                active,
            };
            if let Some(p) = user_problem(&fields) {
                out.push(Err(err("users.csv", line, p)));
                return;
            }
            if let Some(first) = seen_usernames.insert(fields.username.to_lowercase(), line) {
                out.push(Err(err(
                    "users.csv",
                    line,
                    format!(
                        "username `{}` is already used on line {first}",
                        fields.username
                    ),
                )));
                return;
            }
            if let Some(sid) = &fields.sourced_id {
                user_lines.insert(sid.clone(), line);
            }
            out.push(Ok(Op::Upsert(fields)));
        });
        parsed.user_lines = user_lines;
        errors.append(&mut local);
        split(out, &mut parsed.users, errors);
    }

    if let Some(text) = files.files.get("classes.csv")
        && let Some(mut sheet) = open_sheet("classes.csv", text, &["sourcedId", "title"], errors)
    {
        let mut out = Vec::new();
        let mut local = Vec::new();
        for_each_row(&mut sheet, &mut local, |line, get| {
            let id = get("sourcedId");
            if id.is_empty() {
                out.push(Err(err("classes.csv", line, "sourcedId is empty".into())));
                return;
            }
            match is_deleted(&get("status")) {
                Err(m) => out.push(Err(err("classes.csv", line, m))),
                Ok(true) => out.push(Ok(Op::Remove(id))),
                Ok(false) => {
                    let title = get("title");
                    if title.is_empty() || title.chars().count() > 120 {
                        out.push(Err(err(
                            "classes.csv",
                            line,
                            "title: 1 to 120 characters".into(),
                        )));
                        return;
                    }
                    out.push(Ok(Op::Upsert(ClassFields {
                        sourced_id: Some(id),
                        title,
                        class_code: Some(get("classCode")).filter(|s| !s.is_empty()),
                        org_sourced_id: Some(get("schoolSourcedId")).filter(|s| !s.is_empty()),
                        active: true,
                    })))
                }
            }
        });
        errors.append(&mut local);
        split(out, &mut parsed.classes, errors);
    }

    if let Some(text) = files.files.get("enrollments.csv")
        && let Some(mut sheet) = open_sheet(
            "enrollments.csv",
            text,
            &["sourcedId", "classSourcedId", "userSourcedId", "role"],
            errors,
        )
    {
        let mut out = Vec::new();
        let mut local = Vec::new();
        for_each_row(&mut sheet, &mut local, |line, get| {
            let id = get("sourcedId");
            if id.is_empty() {
                out.push(Err(err(
                    "enrollments.csv",
                    line,
                    "sourcedId is empty".into(),
                )));
                return;
            }
            match is_deleted(&get("status")) {
                Err(m) => out.push(Err(err("enrollments.csv", line, m))),
                Ok(true) => out.push(Ok((line, Op::Remove(id)))),
                Ok(false) => {
                    let role = match get("role").to_ascii_lowercase().as_str() {
                        "teacher" | "aide" => "teacher",
                        "student" => "student",
                        "administrator" | "guardian" | "parent" | "relative" | "proctor" => {
                            warnings.push(err(
                                "enrollments.csv",
                                line,
                                format!(
                                    "role `{}` is not enrolled in classes; skipped",
                                    get("role")
                                ),
                            ));
                            return;
                        }
                        other => {
                            out.push(Err(err(
                                "enrollments.csv",
                                line,
                                format!("role `{other}` is not a OneRoster 1.1 role"),
                            )));
                            return;
                        }
                    };
                    let (class, user) = (get("classSourcedId"), get("userSourcedId"));
                    if class.is_empty() || user.is_empty() {
                        out.push(Err(err(
                            "enrollments.csv",
                            line,
                            "classSourcedId and userSourcedId are required".into(),
                        )));
                        return;
                    }
                    out.push(Ok((
                        line,
                        Op::Upsert(EnrolmentRow {
                            sourced_id: id,
                            class,
                            user,
                            role,
                        }),
                    )))
                }
            }
        });
        errors.append(&mut local);
        split(
            out.into_iter().map(|r| r.map(|(_, op)| op)).collect(),
            &mut parsed.enrollments,
            errors,
        );
    }
    errors.sort_by(|a, b| {
        (FILES.iter().position(|f| *f == a.file), a.line)
            .cmp(&(FILES.iter().position(|f| *f == b.file), b.line))
    });
    parsed
}

/// Enrolments must point at classes and users that exist in the files or the database.
fn check_references(
    conn: &Connection,
    files: &RosterFiles,
    parsed: &Parsed,
    errors: &mut Vec<LineMessage>,
) -> Result<(), StoreError> {
    let classes: HashSet<&str> = parsed
        .classes
        .iter()
        .filter_map(|o| match o {
            Op::Upsert(c) => c.sourced_id.as_deref(),
            _ => None,
        })
        .collect();
    let users: HashSet<&str> = parsed
        .users
        .iter()
        .filter_map(|o| match o {
            Op::Upsert(u) => u.sourced_id.as_deref(),
            _ => None,
        })
        .collect();
    // Line numbers: re-read the enrolment file cheaply by sourcedId order.
    let lines: HashMap<String, u64> = files
        .files
        .get("enrollments.csv")
        .map(|t| {
            let mut r =
                csv::Reader::from_reader(t.strip_prefix('\u{feff}').unwrap_or(t).as_bytes());
            let id_col = r
                .headers()
                .ok()
                .and_then(|h| h.iter().position(|c| c.trim() == "sourcedId"))
                .unwrap_or(0);
            r.records()
                .filter_map(Result::ok)
                .filter_map(|rec| {
                    Some((rec.get(id_col)?.trim().to_string(), rec.position()?.line()))
                })
                .collect()
        })
        .unwrap_or_default();
    for op in &parsed.users {
        if let Op::Upsert(u) = op
            && let Some(existing) = sql::user_by_username(conn, &u.username)?
            && existing.sourced_id != u.sourced_id
        {
            let sid = u.sourced_id.as_deref().unwrap_or_default();
            errors.push(LineMessage {
                file: "users.csv".into(),
                line: parsed.user_lines.get(sid).copied().unwrap_or(0),
                message: format!(
                    "username `{}` already belongs to another user of this school ({}); rename one of them",
                    u.username,
                    existing.sourced_id.as_deref().map(|s| format!("sourcedId {s}")).unwrap_or_else(|| "created by hand".into())
                ),
            });
        }
    }
    for op in &parsed.enrollments {
        if let Op::Upsert(e) = op {
            let line = lines.get(&e.sourced_id).copied().unwrap_or(0);
            if !classes.contains(e.class.as_str())
                && sql::class_by_sourced_id(conn, &e.class)?.is_none()
            {
                errors.push(LineMessage {
                    file: "enrollments.csv".into(),
                    line,
                    message: format!(
                        "classSourcedId `{}` is in neither classes.csv nor the school's classes",
                        e.class
                    ),
                });
            }
            if !users.contains(e.user.as_str()) && sql::user_by_sourced_id(conn, &e.user)?.is_none()
            {
                errors.push(LineMessage {
                    file: "enrollments.csv".into(),
                    line,
                    message: format!(
                        "userSourcedId `{}` is in neither users.csv nor the school's users",
                        e.user
                    ),
                });
            }
        }
    }
    Ok(())
}

fn apply_org(
    conn: &Connection,
    op: &Op<OrgFields>,
    write: bool,
    counts: &mut Counts,
) -> Result<(), StoreError> {
    match op {
        Op::Upsert(org) => match sql::org_by_sourced_id(conn, &org.sourced_id)? {
            Some(existing) if existing == *org => counts.unchanged += 1,
            existing => {
                if existing.is_some() {
                    counts.updated += 1
                } else {
                    counts.created += 1
                }
                if write {
                    sql::upsert_org(conn, org)?;
                }
            }
        },
        Op::Remove(id) => match sql::org_by_sourced_id(conn, id)? {
            Some(existing) if existing.active => {
                counts.removed += 1;
                if write {
                    sql::upsert_org(
                        conn,
                        &OrgFields {
                            active: false,
                            ..existing
                        },
                    )?;
                }
            }
            _ => counts.unchanged += 1,
        },
    }
    Ok(())
}

fn apply_user(
    conn: &Connection,
    op: &Op<UserFields>,
    write: bool,
    counts: &mut Counts,
) -> Result<(), StoreError> {
    match op {
        Op::Upsert(u) => {
            let sid = u.sourced_id.as_deref().unwrap_or_default();
            match sql::user_by_sourced_id(conn, sid)? {
                Some(existing) => {
                    let current = UserFields {
                        sourced_id: existing.sourced_id.clone(),
                        username: existing.username.clone(),
                        given_name: existing.given_name.clone(),
                        family_name: existing.family_name.clone(),
                        email: existing.email.clone(),
                        role: existing.role,
                        active: existing.active,
                    };
                    if current == *u {
                        counts.unchanged += 1;
                    } else {
                        counts.updated += 1;
                        if write {
                            sql::update_user(conn, existing.id, u)?;
                        }
                    }
                }
                None => {
                    if let Some(clash) = sql::user_by_username(conn, &u.username)? {
                        return Err(StoreError::Conflict(format!(
                            "username `{}` already belongs to a user created outside this roster (id {})",
                            u.username, clash.id
                        )));
                    }
                    counts.created += 1;
                    if write {
                        sql::insert_user(conn, u, None, false)?;
                    }
                }
            }
        }
        Op::Remove(id) => match sql::user_by_sourced_id(conn, id)? {
            Some(existing) if existing.active => {
                counts.removed += 1;
                if write {
                    let fields = UserFields {
                        sourced_id: existing.sourced_id.clone(),
                        username: existing.username.clone(),
                        given_name: existing.given_name.clone(),
                        family_name: existing.family_name.clone(),
                        email: existing.email.clone(),
                        role: existing.role,
                        active: false,
                    };
                    sql::update_user(conn, existing.id, &fields)?;
                    crate::store::shared::delete_sessions_of(conn, existing.id)?;
                }
            }
            _ => counts.unchanged += 1,
        },
    }
    Ok(())
}

fn apply_class(
    conn: &Connection,
    op: &Op<ClassFields>,
    write: bool,
    counts: &mut Counts,
) -> Result<(), StoreError> {
    match op {
        Op::Upsert(c) => {
            let sid = c.sourced_id.as_deref().unwrap_or_default();
            match sql::class_by_sourced_id(conn, sid)? {
                Some((existing, org)) => {
                    let current = ClassFields {
                        sourced_id: existing.sourced_id.clone(),
                        title: existing.title.clone(),
                        class_code: existing.class_code.clone(),
                        org_sourced_id: org,
                        active: existing.active,
                    };
                    if current == *c {
                        counts.unchanged += 1;
                    } else {
                        counts.updated += 1;
                        if write {
                            sql::update_class(conn, existing.id, c)?;
                        }
                    }
                }
                None => {
                    counts.created += 1;
                    if write {
                        sql::insert_class(conn, c)?;
                    }
                }
            }
        }
        Op::Remove(id) => match sql::class_by_sourced_id(conn, id)? {
            Some((existing, org)) if existing.active => {
                counts.removed += 1;
                if write {
                    sql::update_class(
                        conn,
                        existing.id,
                        &ClassFields {
                            sourced_id: existing.sourced_id.clone(),
                            title: existing.title.clone(),
                            class_code: existing.class_code.clone(),
                            org_sourced_id: org,
                            active: false,
                        },
                    )?;
                }
            }
            _ => counts.unchanged += 1,
        },
    }
    Ok(())
}

fn apply_enrolment(
    conn: &Connection,
    op: &Op<EnrolmentRow>,
    write: bool,
    counts: &mut Counts,
) -> Result<(), StoreError> {
    match op {
        Op::Upsert(e) => {
            let class = sql::class_by_sourced_id(conn, &e.class)?.map(|(c, _)| c.id);
            let user = sql::user_by_sourced_id(conn, &e.user)?.map(|u| u.id);
            let (Some(class_id), Some(user_id)) = (class, user) else {
                // Only in a dry run: the class or user is created by this same import.
                counts.created += 1;
                return Ok(());
            };
            match sql::enrolment_by_sourced_id(conn, &e.sourced_id)? {
                Some((c, u, r)) if c == class_id && u == user_id && r == e.role => {
                    counts.unchanged += 1
                }
                existing => {
                    if existing.is_some() {
                        counts.updated += 1
                    } else {
                        counts.created += 1
                    }
                    if write {
                        if existing.is_some() {
                            sql::delete_enrolment_by_sourced_id(conn, &e.sourced_id)?;
                        }
                        sql::enrol(conn, Some(&e.sourced_id), class_id, user_id, e.role)?;
                    }
                }
            }
        }
        Op::Remove(id) => {
            if sql::enrolment_by_sourced_id(conn, id)?.is_some() {
                counts.removed += 1;
                if write {
                    sql::delete_enrolment_by_sourced_id(conn, id)?;
                }
            } else {
                counts.unchanged += 1;
            }
        }
    }
    Ok(())
}

/// Runs an import (or a dry run) for one tenant, reporting progress as it goes.
pub async fn run(
    tenant: &TenantHandle,
    files: RosterFiles,
    dry_run: bool,
    progress: Arc<Progress>,
) -> Result<Report, StoreError> {
    let mut report = Report {
        dry_run,
        ..Report::default()
    };
    progress.set_phase("validating");
    let parsed = parse(&files, &mut report.errors, &mut report.warnings);
    for name in &files.ignored {
        report.warnings.push(LineMessage {
            file: name.clone(),
            line: 0,
            message: "not read by this import".into(),
        });
    }
    if files.is_empty() {
        report.errors.push(LineMessage {
            file: "-".into(),
            line: 0,
            message: format!(
                "no roster file given; expected some of {}",
                FILES.join(", ")
            ),
        });
    }
    let parsed = Arc::new(parsed);
    let refs = {
        let (files, parsed) = (files.clone(), parsed.clone());
        tenant
            .db
            .read(move |c| {
                let mut errors = Vec::new();
                check_references(c, &files, &parsed, &mut errors)?;
                Ok(errors)
            })
            .await?
    };
    report.errors.extend(refs);
    progress.total.store(parsed.rows(), Ordering::Relaxed);
    if !report.errors.is_empty() {
        progress.set_phase("refused");
        return Ok(report);
    }

    macro_rules! phase {
        ($name:literal, $field:ident, $apply:ident) => {{
            progress.set_phase($name);
            let len = parsed.$field.len();
            let mut start = 0;
            while start < len {
                let end = (start + CHUNK).min(len);
                let p = parsed.clone();
                let job = move |c: &Connection| {
                    let mut counts = Counts::default();
                    for op in &p.$field[start..end] {
                        $apply(c, op, !dry_run, &mut counts)?;
                    }
                    Ok(counts)
                };
                let counts = if dry_run {
                    tenant.db.read(job).await?
                } else {
                    tenant.db.write(job).await?
                };
                add(&mut report.$field, &counts);
                progress
                    .done
                    .fetch_add((end - start) as u64, Ordering::Relaxed);
                start = end;
            }
        }};
    }
    phase!("orgs", orgs, apply_org);
    phase!("users", users, apply_user);
    phase!("classes", classes, apply_class);
    phase!("enrollments", enrollments, apply_enrolment);
    report.applied = !dry_run;
    progress.set_phase("finished");
    Ok(report)
}

fn add(total: &mut Counts, more: &Counts) {
    total.created += more.created;
    total.updated += more.updated;
    total.unchanged += more.unchanged;
    total.removed += more.removed;
    total.skipped += more.skipped;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> RosterFiles {
        let mut f = RosterFiles::default();
        for (n, t) in pairs {
            f.add(n, t.to_string()).unwrap();
        }
        f
    }

    #[test]
    fn errors_name_the_file_line_and_column() {
        let f = files(&[(
            "users.csv",
            "sourcedId,status,dateLastModified,enabledUser,orgSourcedIds,role,username,userIds,givenName,familyName\n\
             u1,,,true,o1,student,amel.b,,Amel,B\n\
             u2,,,true,o1,wizard,zoe.c,,Zoé,C\n\
             u3,,,maybe,o1,student,leo.d,,Léo,D\n\
             u4,,,true,o1,student,amel.b,,Amel,Bis\n\
             u5,,,true,o1,guardian,mum,,M,B\n",
        )]);
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        let parsed = parse(&f, &mut errors, &mut warnings);
        assert_eq!(parsed.users.len(), 1);
        let lines: Vec<(u64, &str)> = errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        assert_eq!(lines.len(), 3, "{errors:?}");
        assert_eq!(lines[0].0, 3);
        assert!(lines[0].1.contains("wizard"));
        assert_eq!(lines[1].0, 4);
        assert!(lines[1].1.contains("enabledUser"));
        assert_eq!(lines[2].0, 5);
        assert!(lines[2].1.contains("line 2"));
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].line, 6);
    }

    #[test]
    fn a_missing_column_is_reported_on_the_header_line() {
        let f = files(&[("classes.csv", "sourcedId,titel\nc1,6e A\n")]);
        let (mut errors, mut warnings) = (Vec::new(), Vec::new());
        parse(&f, &mut errors, &mut warnings);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 1);
        assert!(errors[0].message.contains("title"));
    }

    #[test]
    fn a_zip_bundle_gives_its_csv_files_and_lists_the_others() {
        use std::io::Write;
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            let opts = zip::write::SimpleFileOptions::default();
            z.start_file("export/users.csv", opts).unwrap();
            z.write_all(b"sourcedId,enabledUser,role,username,givenName,familyName\nu1,true,student,a.b,A,B\n").unwrap();
            z.start_file("export/courses.csv", opts).unwrap();
            z.write_all(b"sourcedId,title\n").unwrap();
            z.start_file("manifest.csv", opts).unwrap();
            z.write_all(b"propertyName,value\n").unwrap();
            z.finish().unwrap();
        }
        let mut f = RosterFiles::default();
        f.add_zip("export.zip", buf.get_ref()).unwrap();
        assert!(f.files["users.csv"].contains("a.b"));
        assert_eq!(
            f.ignored,
            vec!["export/courses.csv".to_string(), "manifest.csv".into()]
        );
        assert!(
            RosterFiles::default()
                .add_zip("x.zip", b"not a zip")
                .unwrap_err()
                .contains("x.zip")
        );
    }

    #[test]
    fn unknown_files_are_refused_by_name() {
        let mut f = RosterFiles::default();
        assert!(f.add("export/users.csv", String::new()).is_ok());
        assert!(
            f.add("demographics.csv", String::new())
                .unwrap_err()
                .contains("demographics.csv")
        );
    }
}
