//! Tests of the assessment engine's storage: recalculation and its journal, the rules the
//! database enforces, the AI principal's limits, and replay under random histories.

use std::path::Path;

use proptest::prelude::*;
use rusqlite::Connection;

use super::*;
use crate::competency::mastery;
use crate::store::ai::{self, AiHandle, Suggestion};
use crate::store::migrate;
use crate::store::tenant::{self, UserFields};
use crate::tenant::Role;

fn setup(conn: &mut Connection) {
    migrate(conn, Path::new("test"), tenant::MIGRATIONS).unwrap();
    tenant::seed(conn).unwrap();
}

fn memory() -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    setup(&mut conn);
    conn
}

fn user(conn: &Connection, name: &str, role: Role) -> i64 {
    tenant::insert_user(
        conn,
        &UserFields {
            sourced_id: None,
            username: name.into(),
            given_name: name.into(),
            family_name: "Durand".into(),
            email: None,
            role,
            active: true,
        },
        None,
        false,
    )
    .unwrap()
}

/// A school: one class taught by `prof`, with `n` pupils; a second class taught by `other`.
struct School {
    prof: i64,
    other: i64,
    admin: i64,
    pupils: Vec<i64>,
    outsider: i64,
}

fn school(conn: &Connection, n: usize) -> School {
    let prof = user(conn, "prof", Role::Teacher);
    let other = user(conn, "autre", Role::Teacher);
    let admin = user(conn, "admin", Role::Admin);
    let class = tenant::insert_class(
        conn,
        &tenant::ClassFields {
            sourced_id: None,
            title: "4e B".into(),
            class_code: None,
            org_sourced_id: None,
            active: true,
        },
    )
    .unwrap();
    let other_class = tenant::insert_class(
        conn,
        &tenant::ClassFields {
            sourced_id: None,
            title: "3e A".into(),
            class_code: None,
            org_sourced_id: None,
            active: true,
        },
    )
    .unwrap();
    tenant::enrol(conn, None, class, prof, "teacher").unwrap();
    tenant::enrol(conn, None, other_class, other, "teacher").unwrap();
    let pupils: Vec<i64> = (0..n)
        .map(|i| {
            let p = user(conn, &format!("eleve{i}"), Role::Student);
            tenant::enrol(conn, None, class, p, "student").unwrap();
            p
        })
        .collect();
    let outsider = user(conn, "dehors", Role::Student);
    tenant::enrol(conn, None, other_class, outsider, "student").unwrap();
    School {
        prof,
        other,
        admin,
        pupils,
        outsider,
    }
}

fn cefr(conn: &Connection, uri_suffix: &str) -> i64 {
    competency_id(conn, &format!("urn:ceredis:cefr:{uri_suffix}"))
        .unwrap()
        .unwrap()
}

fn observation(pupil: i64, competency: i64, level: i64, by: i64) -> NewEvidence {
    NewEvidence {
        pupil_id: pupil,
        competency_id: competency,
        source: Source::Observation,
        value_bp: crate::competency::rubric_value(level).unwrap(),
        scale_level: Some(level),
        comment: String::new(),
        statement_id: None,
        actor: Actor::User(by),
    }
}

fn stored_bp(conn: &Connection, pupil: i64, competency: i64) -> Option<i64> {
    scores_of(conn, pupil)
        .unwrap()
        .into_iter()
        .find(|s| s.competency_id == competency)
        .map(|s| s.mastery_bp)
}

fn journal_bodies(conn: &Connection) -> Vec<Value> {
    let mut stmt = conn
        .prepare("SELECT body FROM assessment_journal ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| r.get::<_, Option<String>>(0))
        .unwrap()
        .map(|b| {
            b.unwrap()
                .map(|b| serde_json::from_str(&b).unwrap())
                .unwrap_or(Value::Null)
        })
        .collect()
}

#[test]
fn every_tenant_gets_the_cefr_framework_once() {
    let conn = memory();
    tenant::seed(&conn).unwrap();
    let all = frameworks(&conn).unwrap();
    assert_eq!(all.len(), 1);
    let f = load_framework(&conn, crate::competency::cefr::URI)
        .unwrap()
        .unwrap();
    assert_eq!(f, crate::competency::cefr::framework().unwrap());
    let reception = competencies(&conn, all[0].id)
        .unwrap()
        .into_iter()
        .find(|c| c.code == "reception")
        .unwrap();
    let codes: Vec<&str> = reception.levels.iter().map(|l| l.code.as_str()).collect();
    assert_eq!(codes, crate::competency::cefr::LEVELS);
    assert_eq!(reception.levels[3].name.fr, "B1 — seuil");
}

#[test]
fn every_change_of_evidence_is_a_journaled_recalculation() {
    let conn = memory();
    let s = school(&conn, 1);
    let pupil = s.pupils[0];
    let b1 = cefr(&conn, "reception:B1:1");
    let (first, r1) = add_evidence(&conn, &observation(pupil, b1, 3, s.prof), 100).unwrap();
    assert_eq!(r1.old_bp, None);
    let xapi = NewEvidence {
        source: Source::Xapi,
        value_bp: 9_000,
        scale_level: None,
        statement_id: Some("6b3c6b9e-0000-4000-8000-000000000001".into()),
        actor: Actor::Client("ck_quiz".into()),
        ..observation(pupil, b1, 1, s.prof)
    };
    let (second, r2) = add_evidence(&conn, &xapi, 101).unwrap();
    assert_eq!(r2.old_bp, r1.new_bp);
    let (corrected, r3) = supersede(
        &conn,
        first,
        Some((10_000, Some(4))),
        "revu",
        &Actor::User(s.prof),
        102,
    )
    .unwrap()
    .unwrap();
    let (_, r4) = supersede(&conn, second, None, "pas lui", &Actor::User(s.prof), 103)
        .unwrap()
        .unwrap();
    // Only the corrected observation is left in effect.
    let uid: String = conn
        .query_row("SELECT uid FROM evidence WHERE id = ?1", [corrected], |r| {
            r.get(0)
        })
        .unwrap();
    let expected = mastery::estimate(&[mastery::Item {
        id: corrected,
        source: Source::Observation,
        value_bp: 10_000,
        uid,
    }]);
    assert_eq!(r4.new_bp, expected.mastery_bp);
    assert_eq!(stored_bp(&conn, pupil, b1), r4.new_bp);

    let bodies = journal_bodies(&conn);
    assert_eq!(bodies.len(), 4, "one entry per recalculation");
    let triggers: Vec<&str> = bodies
        .iter()
        .map(|b| b["trigger"].as_str().unwrap())
        .collect();
    assert_eq!(triggers, ["record", "record", "correction", "withdrawal"]);
    assert_eq!(bodies[1]["actor"], "client:ck_quiz");
    assert_eq!(bodies[3]["actor"], format!("user:{}", s.prof));
    for (b, r) in bodies.iter().zip([r1, r2, r3, r4]) {
        assert_eq!(b["algorithm"], mastery::ALGORITHM);
        assert_eq!(b["old"].as_i64(), r.old_bp);
        assert_eq!(b["new"].as_i64(), r.new_bp);
        assert_eq!(b["inputs"].as_str().unwrap().len(), 64);
    }
    let report = verify_journal(&conn).unwrap();
    assert_eq!(report.problems, Vec::<String>::new());
    assert_eq!((report.entries, report.recalculations), (4, 4));
}

#[test]
fn evidence_is_never_edited_only_superseded_once() {
    let conn = memory();
    let s = school(&conn, 1);
    let b1 = cefr(&conn, "reception:B1:1");
    let (id, _) = add_evidence(&conn, &observation(s.pupils[0], b1, 2, s.prof), 1).unwrap();
    let edit = conn.execute("UPDATE evidence SET value_bp = 10000 WHERE id = ?1", [id]);
    assert!(edit.unwrap_err().to_string().contains("append-only"));
    let (w, _) = supersede(&conn, id, None, "", &Actor::User(s.prof), 2)
        .unwrap()
        .unwrap();
    let again = supersede(&conn, id, Some((0, Some(1))), "", &Actor::User(s.prof), 3).unwrap();
    assert_eq!(again.unwrap_err().code, "evidence_superseded");
    let of_withdrawal = supersede(&conn, w, None, "", &Actor::User(s.prof), 3).unwrap();
    assert_eq!(of_withdrawal.unwrap_err().code, "evidence_withdrawn");
    // A direct second correction of the same row is refused by the database too.
    let twice = conn.execute(
        "INSERT INTO evidence (pupil_id, competency_id, source, kind, supersedes, value_bp,
                               comment, actor, at)
         VALUES (?1, ?2, 'observation', 'correction', ?3, 0, '', 'user:1', 4)",
        params![s.pupils[0], b1, id],
    );
    assert!(twice.is_err());
    let edit_journal = conn.execute("UPDATE assessment_journal SET at = 0", []);
    assert!(
        edit_journal
            .unwrap_err()
            .to_string()
            .contains("append-only")
    );
    let delete_journal = conn.execute("DELETE FROM assessment_journal", []);
    assert!(
        delete_journal
            .unwrap_err()
            .to_string()
            .contains("append-only")
    );
    let rewrite = conn.execute("UPDATE assessment_journal SET body = '{}'", []);
    assert!(rewrite.unwrap_err().to_string().contains("redacted"));
}

fn decision(s: &School, pupil: i64, competency: i64, by: i64, evidence: Vec<i64>) -> Decision {
    let _ = s;
    Decision {
        pupil_id: pupil,
        competency_id: competency,
        level_code: "B1".into(),
        decided_by: by,
        justification: "Suit un exposé clair ; lettre personnelle comprise.".into(),
        evidence_ids: evidence,
        suggestion_id: None,
    }
}

#[test]
fn only_a_teacher_of_the_pupil_decides_a_level_citing_their_evidence() {
    let conn = memory();
    let s = school(&conn, 2);
    let (pupil, classmate) = (s.pupils[0], s.pupils[1]);
    let skill = cefr(&conn, "reception");
    let descriptor = cefr(&conn, "reception:B1:2");
    let elsewhere = cefr(&conn, "production:B1:1");
    let (ev, _) = add_evidence(&conn, &observation(pupil, descriptor, 3, s.prof), 1).unwrap();
    let (theirs, _) =
        add_evidence(&conn, &observation(classmate, descriptor, 3, s.prof), 1).unwrap();
    let (off_skill, _) = add_evidence(&conn, &observation(pupil, elsewhere, 3, s.prof), 1).unwrap();

    let refused = |d: Decision| decide_level(&conn, &d, 5).unwrap().unwrap_err().code;
    assert_eq!(
        refused(decision(&s, pupil, skill, s.other, vec![ev])),
        "not_their_teacher"
    );
    assert_eq!(
        refused(decision(&s, pupil, skill, s.admin, vec![ev])),
        "not_their_teacher"
    );
    assert_eq!(
        refused(decision(&s, pupil, skill, pupil, vec![ev])),
        "not_their_teacher"
    );
    assert_eq!(
        refused(decision(&s, pupil, skill, s.prof, vec![theirs])),
        "evidence_not_citable"
    );
    assert_eq!(
        refused(decision(&s, pupil, skill, s.prof, vec![off_skill])),
        "evidence_not_citable"
    );
    assert_eq!(
        refused(decision(&s, pupil, skill, s.prof, vec![])),
        "evidence_required"
    );
    assert_eq!(
        refused(decision(&s, pupil, descriptor, s.prof, vec![ev])),
        "not_levelled"
    );
    assert_eq!(
        refused(Decision {
            justification: "  ".into(),
            ..decision(&s, pupil, skill, s.prof, vec![ev])
        }),
        "justification_required"
    );
    assert_eq!(
        refused(Decision {
            level_code: "D4".into(),
            ..decision(&s, pupil, skill, s.prof, vec![ev])
        }),
        "unknown_level"
    );
    assert!(current_levels(&conn, pupil).unwrap().is_empty());

    decide_level(&conn, &decision(&s, pupil, skill, s.prof, vec![ev]), 6)
        .unwrap()
        .unwrap();
    let levels = current_levels(&conn, pupil).unwrap();
    assert_eq!(levels.len(), 1);
    assert_eq!(
        (levels[0].level_code.as_str(), levels[0].decided_by),
        ("B1", s.prof)
    );
    let entry = journal_bodies(&conn).pop().unwrap();
    assert_eq!(entry["principal"], "human");
    assert_eq!(entry["actor"], format!("user:{}", s.prof));

    // Below the checks, the database refuses any author who is not the pupil's teacher.
    for by in [s.other, s.admin, pupil, s.outsider, 0] {
        let direct = conn.execute(
            "INSERT INTO level_decisions (pupil_id, competency_id, level_code, decided_by,
                 justification, evidence_ids, journal_seq, at)
             VALUES (?1, ?2, 'C2', ?3, 'x', '[1]', 1, 1)",
            params![pupil, skill, by],
        );
        assert!(
            direct.unwrap_err().to_string().contains("only a teacher"),
            "decided_by {by}"
        );
    }
    let rewrite = conn.execute("UPDATE level_decisions SET level_code = 'C2'", []);
    assert!(rewrite.unwrap_err().to_string().contains("final"));
    assert_eq!(
        verify_journal(&conn).unwrap().problems,
        Vec::<String>::new()
    );
}

// ---------------------------------------------------------------------------------------
// The AI principal

/// A tenant database file with a school, evidence, a level and a suggestion-free state.
fn file_db(dir: &Path) -> (std::path::PathBuf, School) {
    let path = dir.join("tenant.db");
    let mut conn = Connection::open(&path).unwrap();
    setup(&mut conn);
    let s = school(&conn, 3);
    let skill = cefr(&conn, "interaction");
    let d = cefr(&conn, "interaction:A2:1");
    let mut cited = Vec::new();
    for (i, p) in s.pupils.iter().enumerate() {
        let mut e = observation(*p, d, 1 + i as i64, s.prof);
        e.comment = "Très timide à l'oral, voir avec la famille".into();
        cited.push(add_evidence(&conn, &e, 10).unwrap().0);
    }
    let mut d1 = decision(&s, s.pupils[0], skill, s.prof, vec![cited[0]]);
    d1.level_code = "A2".into();
    decide_level(&conn, &d1, 11).unwrap().unwrap();
    (path, s)
}

fn snapshot(path: &Path) -> Vec<(String, i64)> {
    let conn = Connection::open(path).unwrap();
    [
        "evidence",
        "scores",
        "assessment_journal",
        "level_decisions",
        "level_suggestions",
        "competencies",
        "users",
        "tenant_settings",
    ]
    .iter()
    .map(|t| {
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            .unwrap();
        (t.to_string(), n)
    })
    .collect()
}

#[test]
fn the_ai_principal_cannot_write_the_evaluative_base_or_read_raw_data() {
    let dir = tempfile::tempdir().unwrap();
    let (path, s) = file_db(dir.path());
    let before = snapshot(&path);
    let ai = AiHandle::open(&path).unwrap();
    let pupil = s.pupils[0];
    let skill_uri = "urn:ceredis:cefr:interaction";

    let writes = [
        format!(
            "INSERT INTO evidence (pupil_id, competency_id, source, kind, value_bp, comment, actor, at)
             VALUES ({pupil}, 1, 'observation', 'record', 10000, '', 'ai', 1)"
        ),
        "UPDATE evidence SET comment = ''".to_string(),
        "DELETE FROM evidence".to_string(),
        format!(
            "INSERT INTO scores VALUES ({pupil}, 1, 10000, 1, 'ai', 1, 1)"
        ),
        "UPDATE scores SET mastery_bp = 10000".to_string(),
        "DELETE FROM scores".to_string(),
        format!(
            "INSERT INTO level_decisions (pupil_id, competency_id, level_code, decided_by,
                 justification, evidence_ids, journal_seq, at)
             VALUES ({pupil}, 1, 'C2', {}, 'model says so', '[1]', 1, 1)",
            s.prof
        ),
        "UPDATE level_decisions SET level_code = 'C2'".to_string(),
        "DELETE FROM level_decisions".to_string(),
        "INSERT INTO assessment_journal (at, kind, body_sha256, prev_hash, hash)
             VALUES (1, 'level', x'00', x'00', x'00')"
            .to_string(),
        "UPDATE assessment_journal SET body = NULL".to_string(),
        "UPDATE level_suggestions SET level_code = 'C2'".to_string(),
        "DELETE FROM level_suggestions".to_string(),
        "UPDATE users SET role = 'teacher'".to_string(),
        "INSERT INTO competencies (framework_id, uri, code, name, description, position)
             VALUES (1, 'x', 'x', 'x', 'x', 0)"
            .to_string(),
        "UPDATE tenant_settings SET value = 'x'".to_string(),
        "INSERT INTO xapi_statements (id, stored, stamp, has_timestamp, full)
             VALUES ('x', 1, 1, 0, '{}')"
            .to_string(),
        "CREATE TABLE leak AS SELECT * FROM evidence".to_string(),
        "CREATE TEMP TABLE scratch (x)".to_string(),
        "CREATE TEMP VIEW v AS SELECT 1".to_string(),
        "CREATE TEMP TRIGGER t AFTER INSERT ON level_suggestions BEGIN DELETE FROM scores; END"
            .to_string(),
        "DROP TABLE ai_features".to_string(),
        "DELETE FROM ai_features".to_string(),
        "UPDATE ai_features SET mastery_bp = 0".to_string(),
        "DROP TRIGGER level_decisions_by_a_teacher_of_the_pupil".to_string(),
        "ALTER TABLE scores ADD COLUMN x".to_string(),
        "ATTACH DATABASE ':memory:' AS other".to_string(),
        "PRAGMA writable_schema = ON".to_string(),
        "PRAGMA foreign_keys = OFF".to_string(),
        "VACUUM INTO '/tmp/ceredis-ai-copy.db'".to_string(),
    ];
    for sql in &writes {
        let e = ai.execute(sql).unwrap_err();
        assert!(ai::is_denied(&e), "{sql}: {e}");
    }
    let reads = [
        "SELECT * FROM evidence",
        "SELECT comment FROM evidence",
        "SELECT given_name, family_name FROM users",
        "SELECT pupil_id, mastery_bp FROM scores",
        "SELECT body FROM assessment_journal",
        "SELECT justification FROM level_decisions",
        "SELECT full FROM xapi_statements",
        "SELECT value FROM tenant_settings",
        "SELECT sql FROM sqlite_master",
        "SELECT f.pupil_key FROM ai_features f JOIN users u ON u.id = 1",
        "WITH ai_features AS (SELECT comment FROM evidence) SELECT * FROM ai_features",
        "WITH RECURSIVE ai_levels(x) AS (SELECT pupil_id FROM scores) SELECT * FROM ai_levels",
        "SELECT * FROM ai_features UNION ALL SELECT pupil_id, '', 0, 0, 0 FROM scores",
        "SELECT * FROM ai_features WHERE (SELECT count(*) FROM evidence) > 0",
        "SELECT * FROM pragma_table_info('users')",
    ];
    for sql in reads {
        let e = ai.query(sql).unwrap_err();
        assert!(ai::is_denied(&e), "{sql}: {e:?}");
    }
    assert_eq!(snapshot(&path), before, "nothing changed");

    // What it may do: read derived, pseudonymised features and suggest.
    let features = ai.features().unwrap();
    assert_eq!(features.len(), 3);
    let key = pseudonym_key(&Connection::open(&path).unwrap());
    let expected = ai::pseudonym(&key, pupil);
    assert!(features.iter().any(|f| f.pupil_key == expected));
    let everything = ai
        .query("SELECT * FROM ai_features, ai_levels, ai_competencies")
        .unwrap();
    let text = serde_json::to_string(&everything).unwrap();
    for secret in ["eleve0", "Durand", "timide"] {
        assert!(!text.contains(secret), "{secret} reached the AI");
    }
    let id = ai
        .suggest(&Suggestion {
            pupil_key: expected.clone(),
            competency_uri: skill_uri.into(),
            level_code: "B1".into(),
            rationale: "steady A2 interaction evidence".into(),
            source: "onnx:kt-small@1".into(),
        })
        .unwrap();
    assert!(id > 0);
    let conn = Connection::open(&path).unwrap();
    let (decisions, suggestions): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM level_decisions), (SELECT count(*) FROM level_suggestions)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (decisions, suggestions),
        (1, 1),
        "a suggestion is not a decision"
    );
}

fn pseudonym_key(conn: &Connection) -> Vec<u8> {
    ai::pseudonym_key(conn).unwrap()
}

#[test]
fn a_trigger_cannot_write_for_the_ai_principal() {
    let dir = tempfile::tempdir().unwrap();
    let (path, s) = file_db(dir.path());
    // Someone with the schema adds a trigger that would turn a suggestion into a score.
    Connection::open(&path)
        .unwrap()
        .execute_batch(&format!(
            "CREATE TRIGGER smuggle AFTER INSERT ON level_suggestions BEGIN
                 UPDATE scores SET mastery_bp = 10000 WHERE pupil_id = {};
             END;",
            s.pupils[0]
        ))
        .unwrap();
    let before = snapshot(&path);
    let ai = AiHandle::open(&path).unwrap();
    let e = ai
        .suggest(&Suggestion {
            pupil_key: "p_x".into(),
            competency_uri: "urn:ceredis:cefr:interaction".into(),
            level_code: "C2".into(),
            rationale: String::new(),
            source: "test".into(),
        })
        .unwrap_err();
    assert!(ai::is_denied(&e), "{e}");
    assert_eq!(snapshot(&path), before);
}

// ---------------------------------------------------------------------------------------
// Replay under random histories

#[derive(Debug, Clone)]
enum Op {
    Observe {
        pupil: usize,
        competency: usize,
        level: i64,
    },
    Xapi {
        pupil: usize,
        competency: usize,
        value: i64,
    },
    SelfAssess {
        pupil: usize,
        competency: usize,
        answer: i64,
    },
    Correct {
        pick: usize,
        level: i64,
    },
    Withdraw {
        pick: usize,
    },
    Erase {
        pupil: usize,
    },
    /// Retention of evidence recorded more than `back` steps ago.
    Retain {
        back: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..3usize, 1..=4i64)
            .prop_map(|(pupil, competency, level)| Op::Observe { pupil, competency, level }),
        3 => (0..3usize, 0..3usize, 0..=10_000i64)
            .prop_map(|(pupil, competency, value)| Op::Xapi { pupil, competency, value }),
        2 => (0..3usize, 0..3usize, 1..=3i64)
            .prop_map(|(pupil, competency, answer)| Op::SelfAssess { pupil, competency, answer }),
        2 => (any::<usize>(), 1..=4i64).prop_map(|(pick, level)| Op::Correct { pick, level }),
        2 => any::<usize>().prop_map(|pick| Op::Withdraw { pick }),
        1 => (0..3usize).prop_map(|pupil| Op::Erase { pupil }),
        1 => (0..15i64).prop_map(|back| Op::Retain { back }),
    ]
}

const COMPETENCIES: [&str; 3] = ["reception:A1:1", "reception:A1:2", "mediation:B2:1"];

/// Applies a history; returns the connection and the school.
fn apply(ops: &[Op]) -> (Connection, School) {
    let conn = memory();
    let s = school(&conn, 3);
    let comps: Vec<i64> = COMPETENCIES.iter().map(|c| cefr(&conn, c)).collect();
    for (t, op) in ops.iter().enumerate() {
        let at = t as i64;
        let in_effect: Vec<i64> = conn
            .prepare(
                "SELECT id FROM evidence e WHERE kind != 'withdrawal'
                 AND NOT EXISTS (SELECT 1 FROM evidence s WHERE s.supersedes = e.id) ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        match *op {
            Op::Observe {
                pupil,
                competency,
                level,
            } => {
                add_evidence(
                    &conn,
                    &observation(s.pupils[pupil], comps[competency], level, s.prof),
                    at,
                )
                .unwrap();
            }
            Op::Xapi {
                pupil,
                competency,
                value,
            } => {
                let e = NewEvidence {
                    source: Source::Xapi,
                    value_bp: value,
                    scale_level: None,
                    statement_id: Some(format!("00000000-0000-4000-8000-{t:012}")),
                    actor: Actor::Client("ck_app".into()),
                    ..observation(s.pupils[pupil], comps[competency], 1, s.prof)
                };
                add_evidence(&conn, &e, at).unwrap();
            }
            Op::SelfAssess {
                pupil,
                competency,
                answer,
            } => {
                let e = NewEvidence {
                    source: Source::SelfAssessment,
                    value_bp: crate::competency::self_value(answer).unwrap(),
                    scale_level: Some(answer),
                    actor: Actor::User(s.pupils[pupil]),
                    ..observation(s.pupils[pupil], comps[competency], 1, s.prof)
                };
                add_evidence(&conn, &e, at).unwrap();
            }
            Op::Correct { pick, level } if !in_effect.is_empty() => {
                let id = in_effect[pick % in_effect.len()];
                let value = crate::competency::rubric_value(level).unwrap();
                supersede(
                    &conn,
                    id,
                    Some((value, Some(level))),
                    "",
                    &Actor::User(s.prof),
                    at,
                )
                .unwrap()
                .unwrap();
            }
            Op::Withdraw { pick } if !in_effect.is_empty() => {
                let id = in_effect[pick % in_effect.len()];
                supersede(&conn, id, None, "", &Actor::User(s.prof), at)
                    .unwrap()
                    .unwrap();
            }
            Op::Erase { pupil } => {
                let counts = erase_assessment(&conn, s.pupils[pupil]).unwrap();
                erasure_tombstone(
                    &conn,
                    &format!("agent{pupil}"),
                    &Actor::User(s.admin),
                    &serde_json::to_value(&counts).unwrap(),
                    at,
                )
                .unwrap();
            }
            Op::Retain { back } => {
                crate::store::retention::set_policy(
                    &conn,
                    &crate::store::retention::Policy {
                        statements_days: None,
                        evidence_days: Some(0),
                    },
                )
                .unwrap();
                crate::store::retention::run(&conn, false, &Actor::User(s.admin), at - back)
                    .unwrap();
            }
            _ => {}
        }
    }
    (conn, s)
}

/// The estimates recomputed directly from the evidence table, independently of the journal.
fn recomputed(conn: &Connection) -> Vec<(i64, i64, i64)> {
    let mut pairs: Vec<(i64, i64)> = conn
        .prepare("SELECT DISTINCT pupil_id, competency_id FROM evidence ORDER BY 1, 2")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    pairs.sort();
    pairs
        .into_iter()
        .filter_map(|(p, c)| {
            let rows = pair_rows(conn, p, c).unwrap();
            mastery::estimate(&mastery::effective(&rows))
                .mastery_bp
                .map(|bp| (p, c, bp))
        })
        .collect()
}

/// Tampering as someone with the file would: past the triggers.
fn tamper(conn: &Connection, seq: i64, how: usize) {
    conn.execute_batch(
        "DROP TRIGGER assessment_journal_no_delete;
         DROP TRIGGER assessment_journal_chain_is_final;
         DROP TRIGGER assessment_journal_only_redacted;",
    )
    .unwrap();
    let sql = match how {
        0 => "UPDATE assessment_journal SET at = at + 1 WHERE seq = ?1",
        1 => "UPDATE assessment_journal SET kind = 'level' WHERE seq = ?1",
        2 => "UPDATE assessment_journal SET body = body || ' ' WHERE seq = ?1 AND body IS NOT NULL",
        3 => "UPDATE assessment_journal SET body = '{}', salt = x'00' WHERE seq = ?1",
        4 => "UPDATE assessment_journal SET salt = randomblob(16) WHERE seq = ?1",
        5 => "UPDATE assessment_journal SET body_sha256 = randomblob(32) WHERE seq = ?1",
        6 => "UPDATE assessment_journal SET prev_hash = randomblob(32) WHERE seq = ?1",
        7 => "UPDATE assessment_journal SET hash = randomblob(32) WHERE seq = ?1",
        8 => "UPDATE assessment_journal SET seq = seq + 1000 WHERE seq = ?1",
        9 => "DELETE FROM assessment_journal WHERE seq = ?1",
        _ => "UPDATE assessment_journal SET subject_id = 424242 WHERE seq = ?1",
    };
    let changed = conn.execute(sql, [seq]).unwrap();
    if changed == 0 {
        // Case 2 on a redacted entry: give it a body instead.
        conn.execute(
            "UPDATE assessment_journal SET body = '{}' WHERE seq = ?1",
            [seq],
        )
        .unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn replaying_the_journal_gives_the_stored_estimates(ops in prop::collection::vec(op(), 1..60)) {
        let (conn, _) = apply(&ops);
        let report = verify_journal(&conn).unwrap();
        prop_assert_eq!(&report.problems, &Vec::<String>::new());
        let stored: Vec<(i64, i64, i64)> = all_scores(&conn)
            .unwrap()
            .into_iter()
            .map(|s| (s.pupil_id, s.competency_id, s.mastery_bp))
            .collect();
        prop_assert_eq!(stored, recomputed(&conn));
    }

    #[test]
    fn tampering_with_any_journal_row_is_detected(
        ops in prop::collection::vec(op(), 1..40),
        pick in any::<usize>(),
        how in 0..11usize,
    ) {
        let (conn, _) = apply(&ops);
        let n: i64 = conn.query_row("SELECT count(*) FROM assessment_journal", [], |r| r.get(0)).unwrap();
        prop_assume!(n > 0);
        let seq = 1 + (pick % n as usize) as i64;
        tamper(&conn, seq, how);
        let report = verify_journal(&conn).unwrap();
        prop_assert!(!report.problems.is_empty(), "tampering {} of entry {} went unseen", how, seq);
    }
}

#[test]
fn an_erased_pupil_leaves_only_a_tombstone_and_a_verifiable_chain() {
    let conn = memory();
    let s = school(&conn, 2);
    let c = cefr(&conn, "reception:A1:1");
    let skill = cefr(&conn, "reception");
    let (ev, _) = add_evidence(&conn, &observation(s.pupils[0], c, 3, s.prof), 1).unwrap();
    add_evidence(&conn, &observation(s.pupils[1], c, 2, s.prof), 2).unwrap();
    let mut d = decision(&s, s.pupils[0], skill, s.prof, vec![ev]);
    d.level_code = "A1".into();
    decide_level(&conn, &d, 3).unwrap().unwrap();
    let erased = erase_assessment(&conn, s.pupils[0]).unwrap();
    assert_eq!(
        (
            erased.evidence,
            erased.scores,
            erased.levels,
            erased.journal_entries_redacted
        ),
        (1, 1, 1, 2)
    );
    erasure_tombstone(&conn, "agent0", &Actor::User(s.admin), &json!({}), 4).unwrap();
    let left: i64 = conn
        .query_row(
            "SELECT count(*) FROM assessment_journal WHERE body LIKE ?1 OR subject_id = ?2",
            params![format!("%\"pupil\":{}%", s.pupils[0]), s.pupils[0]],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "nothing of the pupil is left in the journal");
    let report = verify_journal(&conn).unwrap();
    assert_eq!(report.problems, Vec::<String>::new());
    assert_eq!((report.entries, report.redacted), (4, 2));
    assert!(
        stored_bp(&conn, s.pupils[1], c).is_some(),
        "the classmate keeps theirs"
    );
}
