//! The merge under random histories: two copies of a tenant write while apart, then
//! exchange their batches, each delivered any number of times and interleaved in any order
//! the protocol permits (one origin's batches in order). Every copy, and a third that only
//! receives, must end with the same records and the same recorded conflicts.

use std::collections::BTreeSet;
use std::path::Path;

use proptest::prelude::*;
use rusqlite::Connection;
use serde_json::json;

use super::*;
use crate::lrs::statement::Storer;
use crate::store::tenant::{self, UserFields};
use crate::store::{lrs as sql, migrate};
use crate::tenant::Role;

const HOME: &str = "https://ecole.example/";

fn base() -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    migrate(&mut conn, Path::new("test"), tenant::MIGRATIONS).unwrap();
    tenant::seed(&conn).unwrap();
    sql::home_page(&conn, HOME).unwrap();
    for i in 0..3 {
        tenant::insert_user(&conn, &fields(&format!("eleve{i}"), "Élève"), None, false).unwrap();
    }
    for title in ["6e A", "6e B"] {
        tenant::insert_class(
            &conn,
            &tenant::ClassFields {
                sourced_id: None,
                title: title.into(),
                class_code: None,
                org_sourced_id: None,
                active: true,
            },
        )
        .unwrap();
    }
    conn
}

fn fields(username: &str, family: &str) -> UserFields {
    UserFields {
        sourced_id: None,
        username: username.into(),
        given_name: username.into(),
        family_name: family.into(),
        email: None,
        role: Role::Student,
        active: true,
    }
}

/// A copy of `conn`, as a restore from its continuity copy would make.
fn copy(conn: &Connection) -> Connection {
    let mut out = Connection::open_in_memory().unwrap();
    rusqlite::backup::Backup::new(conn, &mut out)
        .unwrap()
        .run_to_completion(64, std::time::Duration::ZERO, None)
        .unwrap();
    out
}

#[derive(Debug, Clone)]
enum Op {
    Rename {
        user: usize,
        field: usize,
        value: u8,
    },
    Enrol {
        class: i64,
        user: usize,
        teacher: bool,
    },
    Unenrol {
        class: i64,
        user: usize,
    },
    Statement {
        user: usize,
    },
    Document {
        user: usize,
        value: u8,
    },
    NewUser,
    Erase {
        user: usize,
    },
    /// A teacher's observation of the pupil on one skill.
    Observe {
        user: usize,
        value: u8,
    },
    /// A correction (or, `value` 0, a withdrawal) of the pupil's latest evidence in effect.
    Correct {
        user: usize,
        value: u8,
    },
    /// A setting of the tenant (`value` 0 removes it).
    Setting {
        value: u8,
    },
    /// An organisation of the roster renamed, made, or (`value` 0) deleted.
    Org {
        value: u8,
    },
    /// A framework imported (again, `value` in its names): two competencies, a level, a
    /// relation, and an activity aligned to the second.
    Framework {
        value: u8,
    },
    /// The app installed (`value` its version; 0 removes it), one of its keys and one
    /// under the pupil's pseudonym written.
    App {
        user: usize,
        value: u8,
    },
    /// The pupil made a member of the research project (made if need be).
    Research {
        user: usize,
    },
    Cut,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..3usize, 0..4u8).prop_map(|(user, field, value)| Op::Rename { user, field, value }),
        2 => (1..3i64, 0..3usize, any::<bool>()).prop_map(|(class, user, teacher)| Op::Enrol { class, user, teacher }),
        1 => (1..3i64, 0..3usize).prop_map(|(class, user)| Op::Unenrol { class, user }),
        3 => (0..3usize).prop_map(|user| Op::Statement { user }),
        2 => (0..3usize, 0..4u8).prop_map(|(user, value)| Op::Document { user, value }),
        1 => Just(Op::NewUser),
        1 => (0..3usize).prop_map(|user| Op::Erase { user }),
        3 => (0..3usize, 0..5u8).prop_map(|(user, value)| Op::Observe { user, value }),
        2 => (0..3usize, 0..5u8).prop_map(|(user, value)| Op::Correct { user, value }),
        2 => (0..4u8).prop_map(|value| Op::Setting { value }),
        2 => (0..4u8).prop_map(|value| Op::Org { value }),
        1 => (0..3u8).prop_map(|value| Op::Framework { value }),
        2 => (0..3usize, 0..3u8).prop_map(|(user, value)| Op::App { user, value }),
        1 => (0..3usize).prop_map(|user| Op::Research { user }),
        2 => Just(Op::Cut),
    ]
}

struct Site {
    name: &'static str,
    conn: Connection,
    sent: i64,
    outbox: Vec<Batch>,
    erased: Vec<usize>,
    made: usize,
}

impl Site {
    /// A copy made from the base: it holds every site's changes up to now.
    fn new(name: &'static str, conn: Connection) -> Site {
        // Site A made the base; the others are copies of it, restored from its
        // continuity copy: what A wrote is A's there.
        let through = replica::last_change(&conn).unwrap();
        if name != "site-a" {
            replica::adopt_from(&conn, "site-a").unwrap();
        }
        for other in ["site-a", "site-b"] {
            replica::set_cursor(&conn, other, through).unwrap();
        }
        Site {
            name,
            sent: replica::last_change(&conn).unwrap(),
            conn,
            outbox: Vec::new(),
            erased: Vec::new(),
            made: 0,
        }
    }

    fn cut(&mut self) {
        while let Some(b) = build(&self.conn, self.name, self.sent, i64::MAX).unwrap() {
            self.sent = b.last;
            self.outbox.push(b);
        }
    }

    fn agent(&self, user: usize) -> String {
        self.conn
            .query_row(
                "SELECT agent_name FROM users WHERE id = ?1",
                [user as i64 + 1],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn run(&mut self, op: &Op) {
        let user = match op {
            Op::Rename { user, .. }
            | Op::Enrol { user, .. }
            | Op::Unenrol { user, .. }
            | Op::Statement { user }
            | Op::Document { user, .. }
            | Op::Observe { user, .. }
            | Op::Correct { user, .. }
            | Op::App { user, .. }
            | Op::Research { user }
            | Op::Erase { user } => Some(*user),
            _ => None,
        };
        if user.is_some_and(|u| self.erased.contains(&u)) {
            return;
        }
        let c = &self.conn;
        let id = user.map_or(0, |u| u as i64 + 1);
        match op {
            Op::Rename { field, value, .. } => {
                let mut f = tenant::user_by_id(c, id).unwrap().unwrap();
                let v = format!("{}{value}", ["Léa", "Martin", "l@"][*field]);
                match field {
                    0 => f.given_name = v,
                    1 => f.family_name = v,
                    _ => f.email = Some(v),
                }
                let fields = UserFields {
                    sourced_id: f.sourced_id,
                    username: f.username,
                    given_name: f.given_name,
                    family_name: f.family_name,
                    email: f.email,
                    role: f.role,
                    active: f.active,
                };
                tenant::update_user(c, id, &fields).unwrap();
            }
            Op::Enrol { class, teacher, .. } => {
                tenant::enrol(
                    c,
                    None,
                    *class,
                    id,
                    if *teacher { "teacher" } else { "student" },
                )
                .unwrap();
            }
            Op::Unenrol { class, .. } => {
                tenant::unenrol(c, *class, id).unwrap();
            }
            Op::Statement { .. } => {
                let s = json!({
                    "id": uuid::Uuid::new_v4().to_string(),
                    "actor": crate::lrs::learner(HOME, &self.agent(id as usize - 1)),
                    "verb": {"id": "http://adlnet.gov/expapi/verbs/answered"},
                    "object": {"id": format!("{HOME}quiz/{}", self.name)},
                });
                let storer = Storer {
                    authority: json!({"objectType": "Agent", "account": {"homePage": HOME, "name": "lrs"}}),
                    key: "k".into(),
                };
                let p = prepare(s, &storer, Version::V2, String::new);
                sql::insert_statements(c, &[p], &[], crate::lrs::now_ms())
                    .unwrap()
                    .unwrap();
            }
            Op::Document { value, .. } => {
                let key = DocumentKey {
                    kind: "state",
                    activity_id: format!("{HOME}quiz"),
                    agent: crate::lrs::statement::agent_key(&crate::lrs::learner(
                        HOME,
                        &self.agent(id as usize - 1),
                    ))
                    .unwrap(),
                    registration: String::new(),
                };
                let body = format!("{{\"page\":{value},\"by\":\"{}\"}}", self.name);
                sql::put_document(
                    c,
                    &key,
                    "bookmark",
                    &sql::Document {
                        content_type: "application/json".into(),
                        etag: format!("{:x}", md5_like(&body)),
                        content: body.into_bytes(),
                        updated: crate::lrs::now_ms(),
                    },
                )
                .unwrap();
            }
            Op::NewUser => {
                self.made += 1;
                let name = format!("{}-{}", self.name, self.made);
                tenant::insert_user(c, &fields(&name, "Nouveau"), None, false).unwrap();
            }
            Op::Erase { user } => {
                let u = tenant::user_by_id(c, id).unwrap().unwrap();
                crate::store::erasure::erase_user(c, &u, HOME, &Actor::System, 1)
                    .unwrap()
                    .unwrap();
                self.erased.push(*user);
            }
            Op::Observe { value, .. } => {
                let competency: i64 = c
                    .query_row(
                        "SELECT id FROM competencies WHERE uri LIKE '%reception:B1:1%'",
                        [],
                        |r| r.get(0),
                    )
                    .unwrap();
                crate::store::competency::add_evidence(
                    c,
                    &crate::competency::NewEvidence {
                        pupil_id: id,
                        competency_id: competency,
                        source: crate::competency::Source::Observation,
                        value_bp: i64::from(*value) * 2500,
                        scale_level: None,
                        comment: self.name.into(),
                        statement_id: None,
                        actor: Actor::System,
                    },
                    crate::store::now(),
                )
                .unwrap();
            }
            Op::Correct { value, .. } => {
                let latest: Option<i64> = c
                    .query_row(
                        "SELECT max(e.id) FROM evidence e WHERE e.pupil_id = ?1
                         AND e.kind <> 'withdrawal'
                         AND NOT EXISTS (SELECT 1 FROM evidence x WHERE x.supersedes = e.id)",
                        [id],
                        |r| r.get(0),
                    )
                    .unwrap();
                if let Some(e) = latest {
                    let replacement = (*value > 0).then(|| (i64::from(*value) * 2500, None));
                    crate::store::competency::supersede(
                        c,
                        e,
                        replacement,
                        self.name,
                        &Actor::System,
                        crate::store::now(),
                    )
                    .unwrap()
                    .unwrap();
                }
            }
            Op::Setting { value: 0 } => {
                c.execute(
                    "DELETE FROM tenant_settings WHERE key = 'retention.statements_days'",
                    [],
                )
                .unwrap();
            }
            Op::Setting { value } => {
                sql::put_setting(c, "retention.statements_days", &format!("{value}00")).unwrap();
            }
            Op::Org { value: 0 } => {
                c.execute("DELETE FROM orgs WHERE sourced_id = 'org-1'", [])
                    .unwrap();
            }
            Op::Org { value } => {
                c.execute(
                    "INSERT INTO orgs (sourced_id, name, org_type, updated_at)
                     VALUES ('org-1', ?1, 'school', 1)
                     ON CONFLICT (sourced_id) DO UPDATE SET name = excluded.name",
                    [format!("Collège {value}")],
                )
                .unwrap();
            }
            Op::Framework { value } => {
                let text = |what: &str| crate::competency::Text::same(&format!("{what} {value}"));
                let competency = |n: u8| crate::competency::FrameworkCompetency {
                    uri: format!("{HOME}fw/c{n}"),
                    code: format!("C{n}"),
                    name: text("compétence"),
                    description: text("décrite"),
                    level_code: None,
                    levels: vec![crate::competency::FrameworkLevel {
                        uri: format!("{HOME}fw/c{n}/l"),
                        code: "L".into(),
                        name: text("niveau"),
                        description: text("atteint"),
                    }],
                };
                let f = crate::competency::Framework {
                    uri: format!("{HOME}fw"),
                    version: value.to_string(),
                    name: text("référentiel"),
                    description: text("local"),
                    source: "local".into(),
                    competencies: vec![competency(1), competency(2)],
                    relations: vec![crate::competency::Relation {
                        uri: None,
                        source: format!("{HOME}fw/c2"),
                        target: format!("{HOME}fw/c1"),
                        kind: crate::competency::RelationKind::Narrows,
                    }],
                };
                crate::store::competency::store_framework(c, &f, 1).unwrap();
                let second: i64 = c
                    .query_row(
                        "SELECT id FROM competencies WHERE uri = ?1",
                        [format!("{HOME}fw/c2")],
                        |r| r.get(0),
                    )
                    .unwrap();
                crate::store::competency::align(c, &format!("{HOME}quiz/{value}"), second).unwrap();
            }
            Op::App { value: 0, .. } => {
                crate::store::apps::remove(c, "quiz", self.name, 1).unwrap();
            }
            Op::App { value, .. } => {
                crate::store::apps::install(
                    c,
                    &crate::store::apps::NewApp {
                        name: "quiz".into(),
                        version: value.to_string(),
                        manifest: "{}".into(),
                        sha256: format!("{value:064}"),
                        component: vec![0, *value, 0xff],
                        grants: vec!["kv".into()],
                        actor: self.name.into(),
                    },
                    1,
                )
                .unwrap();
                let secret = crate::store::ai::pseudonym_key(c).unwrap();
                let mine = crate::store::apps::user_pseudonym(
                    &secret,
                    "quiz",
                    &self.agent(id as usize - 1),
                );
                for key in ["progress".to_string(), format!("u/{mine}/score")] {
                    crate::store::apps::kv_set(c, "quiz", &key, &[*value, 0], 1 << 20).unwrap();
                }
            }
            Op::Research { .. } => {
                c.execute(
                    "INSERT OR IGNORE INTO research_projects (name, title, quasi_identifiers, k,
                                                             max_suppressed, pseudonym_key,
                                                             created_by, created_at)
                     VALUES ('étude', 'Lecture', '[]', 5, 0.1, x'00ff', ?1, 1)",
                    [id],
                )
                .unwrap();
                c.execute(
                    "INSERT OR IGNORE INTO research_members (project_id, user_id)
                     SELECT id, ?1 FROM research_projects WHERE name = 'étude'",
                    [id],
                )
                .unwrap();
            }
            Op::Cut => self.cut(),
        }
    }

    fn apply(&self, b: &Batch) {
        let tx = self.conn.unchecked_transaction().unwrap();
        apply(&tx, b, self.name, 1).unwrap();
        tx.commit().unwrap();
    }
}

fn md5_like(text: &str) -> u64 {
    text.bytes().fold(1469598103934665603u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    })
}

/// Every record the merge must agree on, keyed by global names.
fn dump(conn: &Connection) -> Vec<String> {
    let rows = |sql: &str| -> Vec<String> {
        let mut stmt = conn.prepare(sql).unwrap();
        let mut out: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        out.sort();
        out
    };
    [
        rows("SELECT json_array(agent_name, username, given_name, family_name, email, role, active) FROM users"),
        rows("SELECT json_array(uid, title, active) FROM classes"),
        rows("SELECT json_array(c.uid, u.agent_name, e.role) FROM enrolments e
              JOIN classes c ON c.id = e.class_id JOIN users u ON u.id = e.user_id"),
        rows("SELECT id FROM xapi_statements"),
        rows("SELECT json_array(agent, doc_id, etag, CAST(content AS TEXT)) FROM xapi_documents"),
        rows("SELECT json_array(e.uid, u.agent_name, c.uri, e.kind, s.uid, e.value_bp, e.at)
              FROM evidence e JOIN users u ON u.id = e.pupil_id
              JOIN competencies c ON c.id = e.competency_id
              LEFT JOIN evidence s ON s.id = e.supersedes"),
        rows("SELECT json_array(key, value) FROM tenant_settings
              WHERE key NOT IN ('sync.hlc', 'xapi.index_merged_through',
                                'federation.adopted_through')"),
        rows("SELECT json_array(sourced_id, name, org_type, active) FROM orgs"),
        rows("SELECT json_array(u.agent_name, c.uri, s.mastery_bp, s.evidence_count)
              FROM scores s JOIN users u ON u.id = s.pupil_id
              JOIN competencies c ON c.id = s.competency_id"),
        rows("SELECT json_array(uri, version, name, description, source) FROM frameworks"),
        rows("SELECT json_array(c.uri, f.uri, c.code, c.name, c.level_code, c.position)
              FROM competencies c JOIN frameworks f ON f.id = c.framework_id"),
        rows("SELECT json_array(s.uri, t.uri, r.kind, r.uri) FROM competency_relations r
              JOIN competencies s ON s.id = r.source_id JOIN competencies t ON t.id = r.target_id"),
        rows("SELECT json_array(c.uri, l.code, l.name, l.rank) FROM competency_levels l
              JOIN competencies c ON c.id = l.competency_id"),
        rows("SELECT json_array(a.activity_iri, c.uri) FROM activity_alignments a
              JOIN competencies c ON c.id = a.competency_id"),
        rows("SELECT json_array(key_id, hex(secret_sha256), label, scopes, u.agent_name,
                                revoked_at) FROM api_credentials a
              LEFT JOIN users u ON u.id = a.created_by"),
        rows("SELECT json_array(name, title, k, hex(pseudonym_key), u.agent_name)
              FROM research_projects p LEFT JOIN users u ON u.id = p.created_by"),
        rows("SELECT json_array(p.name, u.agent_name) FROM research_members m
              JOIN research_projects p ON p.id = m.project_id JOIN users u ON u.id = m.user_id"),
        rows("SELECT json_array(name, version, sha256, hex(component), grants, enabled)
              FROM apps"),
        rows("SELECT json_array(app, key, hex(value)) FROM app_kv"),
        rows("SELECT json_array(at, app, action, version, actor) FROM app_history"),
    ]
    .concat()
}

fn conflicts(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT json_array(entity, key, field, kept, kept_origin, lost, lost_origin) FROM sync_conflicts ORDER BY 1")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The fields a conflict was recorded on.
fn conflicted(conn: &Connection) -> BTreeSet<(String, String, String)> {
    replica::conflicts(conn)
        .unwrap()
        .into_iter()
        .filter(|c| c.entity != "evidence")
        .map(|c| (c.entity, c.key, c.field))
        .collect()
}

/// The fields a site's batches changed, minus those of users erased anywhere.
fn written(batches: &[Batch]) -> BTreeSet<(String, String, String)> {
    batches
        .iter()
        .flat_map(|b| b.items.iter())
        .filter_map(|i| match i {
            Item::Field { op } | Item::Document { op, .. } => {
                Some((op.e.clone(), op.k.clone(), op.f.clone()))
            }
            _ => None,
        })
        .collect()
}

fn erased(batches: &[&Batch]) -> BTreeSet<String> {
    batches
        .iter()
        .flat_map(|b| b.items.iter())
        .filter_map(|i| match i {
            Item::Erase { agent, .. } => Some(agent.clone()),
            _ => None,
        })
        .collect()
}

/// Delivers `batches` with repeats: each one 1 to 3 times, and now and then an older
/// one again.
fn with_repeats(batches: &[Batch], picks: &[u8]) -> Vec<Batch> {
    let mut out = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        let pick = picks.get(i).copied().unwrap_or(0);
        for _ in 0..=(pick % 3) {
            out.push(b.clone());
        }
        if pick > 200 && i > 0 {
            out.push(batches[usize::from(pick) % i].clone());
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn copies_that_exchange_their_batches_in_any_permitted_order_agree(
        ops_a in prop::collection::vec(op(), 1..30),
        ops_b in prop::collection::vec(op(), 1..30),
        picks in prop::collection::vec(any::<u8>(), 64),
        interleave in prop::collection::vec(any::<bool>(), 128),
    ) {
        let origin = base();
        let mut a = Site::new("site-a", copy(&origin));
        let mut b = Site::new("site-b", copy(&origin));
        let c = Site::new("site-c", copy(&origin));
        for op in &ops_a { a.run(op); }
        for op in &ops_b { b.run(op); }
        a.cut();
        b.cut();
        for x in with_repeats(&a.outbox, &picks) { b.apply(&x); }
        for x in with_repeats(&b.outbox, &picks[32..]) { a.apply(&x); }
        // The third copy gets both streams interleaved at random, each in its order.
        // A fourth gets the same interleaving without the repeats.
        let once = Site::new("site-d", copy(&origin));
        let (mut from_a, mut from_b) = (with_repeats(&a.outbox, &picks[16..]).into_iter(), with_repeats(&b.outbox, &picks[8..]).into_iter());
        let mut turns = interleave.iter().cycle();
        loop {
            let next = if *turns.next().unwrap() { from_a.next().or_else(|| from_b.next()) } else { from_b.next().or_else(|| from_a.next()) };
            let Some(x) = next else { break };
            c.apply(&x);
            if replica::cursor(&once.conn, &x.origin).unwrap() < x.last {
                once.apply(&x);
            }
        }
        let (da, db, dc) = (dump(&a.conn), dump(&b.conn), dump(&c.conn));
        prop_assert_eq!(&da, &db, "the two sites differ");
        prop_assert_eq!(&da, &dc, "the copy that only received differs");
        prop_assert_eq!(&dc, &dump(&once.conn), "repeats changed the result");
        prop_assert_eq!(conflicts(&c.conn), conflicts(&once.conn), "repeats recorded conflicts again");
        // Every field both sites changed has a conflict on record everywhere, and no other.
        // An erased pupil is named by their agent name, and in an app by their pseudonym.
        let secret = crate::store::ai::pseudonym_key(&a.conn).unwrap();
        let gone: Vec<String> = erased(&a.outbox.iter().chain(&b.outbox).collect::<Vec<_>>())
            .into_iter()
            .flat_map(|g| [format!("u/{}/", crate::store::apps::user_pseudonym(&secret, "quiz", &g)), g])
            .collect();
        let both: BTreeSet<_> = written(&a.outbox)
            .intersection(&written(&b.outbox))
            .filter(|(_, k, _)| !gone.iter().any(|g| k.contains(g.as_str())))
            .cloned()
            .collect();
        for site in [&a, &b, &c] {
            prop_assert_eq!(&conflicted(&site.conn), &both, "conflicts recorded at {}", site.name);
        }
        // Nothing merged comes back out as this copy's own change: the next batch only
        // steps over it.
        if let Some(next) = build(&a.conn, "site-a", a.sent, i64::MAX).unwrap() {
            prop_assert!(next.items.is_empty(), "{:?}", next.items);
            prop_assert!(build(&a.conn, "site-a", next.last, i64::MAX).unwrap().is_none());
        }
    }
}

#[test]
fn a_field_changed_on_both_sides_keeps_the_later_value_and_records_the_loser() {
    let origin = base();
    let mut a = Site::new("site-a", copy(&origin));
    let mut b = Site::new("site-b", copy(&origin));
    a.run(&Op::Rename {
        user: 0,
        field: 0,
        value: 1,
    });
    b.run(&Op::Rename {
        user: 0,
        field: 0,
        value: 2,
    });
    a.run(&Op::Rename {
        user: 1,
        field: 1,
        value: 3,
    });
    a.cut();
    b.cut();
    for x in &a.outbox {
        b.apply(x);
    }
    for x in &b.outbox {
        a.apply(x);
    }
    assert_eq!(dump(&a.conn), dump(&b.conn));
    assert_eq!(conflicts(&a.conn), conflicts(&b.conn));
    let given: String = a
        .conn
        .query_row("SELECT given_name FROM users WHERE id = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(given, "Léa2", "site B wrote last");
    let conflicts = replica::conflicts(&a.conn).unwrap();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(
        (conflicts[0].kept.as_str(), conflicts[0].lost.as_str()),
        (Some("Léa2"), Some("Léa1"))
    );
    assert_eq!(
        (
            conflicts[0].kept_origin.as_str(),
            conflicts[0].lost_origin.as_str()
        ),
        ("site-b", "site-a")
    );
    assert_eq!(replica::conflicts(&b.conn).unwrap(), conflicts);
    let family: String = b
        .conn
        .query_row("SELECT family_name FROM users WHERE id = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        family, "Martin3",
        "a change made on one side only follows without a conflict"
    );
}

#[test]
fn a_batch_from_another_key_or_altered_or_renamed_does_not_open() {
    let origin = base();
    let mut a = Site::new("site-a", copy(&origin));
    a.run(&Op::Statement { user: 0 });
    a.cut();
    let batch = a.outbox[0].clone();
    let key = [7u8; 32];
    let sealed = seal(&key, "uid", &batch).unwrap();
    assert!(
        !sealed.windows(5).any(|w| w == b"quiz/"),
        "no plaintext in a sealed batch"
    );
    assert_eq!(
        open(&key, "uid", "site-a", batch.after, batch.last, &sealed),
        Some(batch.clone())
    );
    assert_eq!(
        open(
            &[8u8; 32],
            "uid",
            "site-a",
            batch.after,
            batch.last,
            &sealed
        ),
        None
    );
    assert_eq!(
        open(&key, "other", "site-a", batch.after, batch.last, &sealed),
        None
    );
    assert_eq!(
        open(&key, "uid", "site-b", batch.after, batch.last, &sealed),
        None
    );
    assert_eq!(
        open(&key, "uid", "site-a", batch.after, batch.last + 1, &sealed),
        None
    );
    let mut altered = sealed.clone();
    altered[20] ^= 1;
    assert_eq!(
        open(&key, "uid", "site-a", batch.after, batch.last, &altered),
        None
    );
}

#[test]
fn a_batch_that_skips_ahead_is_refused_and_changes_nothing() {
    let origin = base();
    let mut a = Site::new("site-a", copy(&origin));
    let b = Site::new("site-b", copy(&origin));
    a.run(&Op::Statement { user: 0 });
    a.cut();
    a.run(&Op::Statement { user: 1 });
    a.cut();
    let before = dump(&b.conn);
    let tx = b.conn.unchecked_transaction().unwrap();
    let refused = apply(&tx, &a.outbox[1], "site-b", 1).unwrap_err();
    drop(tx);
    assert!(refused.to_string().contains("does not follow"), "{refused}");
    assert_eq!(dump(&b.conn), before);
    b.apply(&a.outbox[0]);
    b.apply(&a.outbox[1]);
    let held: i64 = b
        .conn
        .query_row("SELECT count(*) FROM xapi_statements", [], |r| r.get(0))
        .unwrap();
    assert_eq!(held, 2);
}

#[test]
fn every_table_of_a_tenant_database_is_carried_derived_or_local() {
    let conn = base();
    let tables: BTreeSet<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let lists = [replica::CARRIED, replica::DERIVED, replica::LOCAL];
    let mut classified = BTreeSet::new();
    for t in lists.concat() {
        assert!(classified.insert(t.to_string()), "{t} is in two lists");
    }
    assert_eq!(
        tables, classified,
        "each table says how it reaches another copy of the tenant"
    );
    for t in replica::row_tables() {
        let triggers: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?1
                 AND name LIKE '%\\_sync\\_%' ESCAPE '\\'",
                [t],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(triggers, 3, "{t} logs its rows' changes");
    }
    // What only a generation carries: assessment rows deleted by an old retention run.
    let marking: Vec<String> = conn
        .prepare(
            "SELECT DISTINCT tbl_name FROM sqlite_master WHERE type = 'trigger'
             AND name LIKE '%needs_generation%' ORDER BY tbl_name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(marking, ["evidence", "level_decisions"]);
}

fn observe(site: &Site, value_bp: i64) -> i64 {
    let (pupil, competency): (i64, i64) = site
        .conn
        .query_row(
            "SELECT (SELECT id FROM users LIMIT 1),
                    (SELECT id FROM competencies WHERE uri LIKE '%reception:B1:1%')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    crate::store::competency::add_evidence(
        &site.conn,
        &crate::competency::NewEvidence {
            pupil_id: pupil,
            competency_id: competency,
            source: crate::competency::Source::Observation,
            value_bp,
            scale_level: Some(3),
            comment: "lit seule".into(),
            statement_id: None,
            actor: Actor::System,
        },
        1,
    )
    .unwrap()
    .0
}

#[test]
fn a_change_that_batches_do_not_carry_makes_the_next_push_a_generation() {
    let conn = base();
    let mut site = Site::new("site-a", copy(&conn));
    let other = Site::new("site-b", copy(&conn));
    let after = |s: &Site| build(&s.conn, s.name, s.sent, i64::MAX).unwrap();
    let marks = |b: &Batch| -> Vec<String> {
        b.items
            .iter()
            .filter_map(|i| match i {
                Item::Generation { what } => Some(what.clone()),
                _ => None,
            })
            .collect()
    };
    assert!(after(&site).is_none());
    // The sync clock moves with every stamp, the statement index merges now and then:
    // bookkeeping, not changes of the tenant's. Nor is a setting written again as it was.
    replica::tick(&site.conn).unwrap();
    for sql in [
        "INSERT OR REPLACE INTO tenant_settings (key, value)
         VALUES ('xapi.index_merged_through', '7')",
        "UPDATE tenant_settings SET value = value WHERE key = 'ai.pseudonym_key'",
    ] {
        site.conn.execute(sql, []).unwrap();
    }
    assert!(after(&site).is_none());
    // A statement, and the evidence derived from it, go in a batch; so does a teacher's
    // observation.
    site.run(&Op::Statement { user: 0 });
    observe(&site, 7500);
    let batch = after(&site).unwrap();
    assert!(!batch.needs_generation(), "{batch:?}");
    assert!(
        batch
            .items
            .iter()
            .any(|i| matches!(i, Item::Evidence { .. }))
    );
    site.cut();
    assert!(after(&site).is_none());
    // A framework's alignment travels too, as a row named by the activity and the
    // competency's URI.
    let align = "INSERT OR IGNORE INTO activity_alignments
                 SELECT 'https://ecole.example/quiz/' || ?1, id FROM competencies LIMIT 1";
    site.conn.execute(align, ["1"]).unwrap();
    let batch = after(&site).unwrap();
    assert!(!batch.needs_generation(), "{batch:?}");
    assert!(
        batch.items.iter().any(|i| matches!(i, Item::Field { op }
            if op.e == "activity_alignment" && op.k.starts_with("[\"https://ecole.example/quiz/1\",\"")
               && op.v == json!({}))),
        "{batch:?}"
    );
    site.cut();
    // A setting of the tenant travels in the batch, as a row: no generation.
    site.conn
        .execute(
            "INSERT INTO tenant_settings (key, value) VALUES ('retention.statements_days', '400')",
            [],
        )
        .unwrap();
    let batch = after(&site).unwrap();
    assert!(!batch.needs_generation(), "{batch:?}");
    assert!(
        batch.items.iter().any(|i| matches!(i, Item::Field { op }
            if op.e == "setting" && op.k == "retention.statements_days"
               && op.v == json!({"value": "400"}))),
        "{batch:?}"
    );
    site.cut();
    // Another copy that applies these batches has the statement, the observation and its
    // estimate, and is told what it lacks.
    let mut lacking = Vec::new();
    for b in &site.outbox {
        let tx = other.conn.unchecked_transaction().unwrap();
        lacking.extend(apply(&tx, b, "site-b", 1).unwrap().lacking);
        tx.commit().unwrap();
    }
    assert!(lacking.is_empty(), "{lacking:?}");
    let setting = |c: &Connection| -> Option<String> {
        sql::setting(c, "retention.statements_days").unwrap()
    };
    assert_eq!(setting(&other.conn).as_deref(), Some("400"));
    assert_eq!(dump(&site.conn), dump(&other.conn));
    // Evidence deleted otherwise than by an erasure (an old retention run, which named
    // nothing) is not carried: the batch marks it, and the next push seals a generation.
    let forget = "DELETE FROM evidence WHERE id = (SELECT max(id) FROM evidence)";
    site.conn.execute(forget, []).unwrap();
    let batch = after(&site).unwrap();
    assert!(batch.needs_generation());
    assert_eq!(marks(&batch), ["evidence"]);
    // Once that batch is sent, the next such change is marked again (regression: a mark
    // skipped because the last row was the same mark, already at the hub).
    site.cut();
    observe(&site, 5000);
    site.cut();
    site.conn.execute(forget, []).unwrap();
    assert_eq!(marks(&after(&site).unwrap()), ["evidence"]);
}

#[test]
fn a_retention_run_deletes_the_same_records_in_every_copy() {
    let conn = base();
    let mut a = Site::new("site-a", copy(&conn));
    let b = Site::new("site-b", copy(&conn));
    for user in 0..3 {
        a.run(&Op::Statement { user });
        observe(&a, 2500 * user as i64);
    }
    a.cut();
    for x in &a.outbox {
        b.apply(x);
    }
    assert_eq!(dump(&a.conn), dump(&b.conn));
    let count = |c: &Connection, table: &str| -> i64 {
        c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&b.conn, "xapi_statements"), 3);
    assert_eq!(count(&b.conn, "evidence"), 3);
    // A keeps nothing older than today, and runs its retention.
    crate::store::retention::set_policy(
        &a.conn,
        &crate::store::retention::Policy {
            statements_days: Some(0),
            evidence_days: Some(0),
        },
    )
    .unwrap();
    let report =
        crate::store::retention::run(&a.conn, false, &Actor::System, crate::store::now() + 10)
            .unwrap();
    assert_eq!(report["statements"], 3, "{report}");
    let sent = a.outbox.len();
    a.cut();
    let retained: Vec<&Item> = a.outbox[sent..]
        .iter()
        .flat_map(|x| &x.items)
        .filter(|i| matches!(i, Item::Retain { .. }))
        .collect();
    assert_eq!(retained.len(), 1, "{:?}", a.outbox[sent..].to_vec());
    for x in &a.outbox[sent..] {
        b.apply(x);
        // Applied again: nothing more goes.
        b.apply(x);
    }
    assert_eq!(count(&b.conn, "xapi_statements"), 0);
    assert_eq!(count(&b.conn, "evidence"), 0);
    assert_eq!(dump(&a.conn), dump(&b.conn));
    // Both journals still verify, each with its own run.
    for site in [&a, &b] {
        let report = crate::store::competency::verify_journal(&site.conn).unwrap();
        assert!(
            report.problems.is_empty(),
            "{}: {:?}",
            site.name,
            report.problems
        );
    }
}

#[test]
fn a_setting_changed_in_two_copies_keeps_the_later_value_and_records_the_other() {
    let conn = base();
    let mut a = Site::new("site-a", copy(&conn));
    let mut b = Site::new("site-b", copy(&conn));
    let key = "retention.statements_days";
    sql::put_setting(&a.conn, key, "400").unwrap();
    sql::put_setting(&b.conn, key, "200").unwrap();
    a.cut();
    b.cut();
    for x in &a.outbox {
        b.apply(x);
    }
    for x in &b.outbox {
        a.apply(x);
    }
    let value = |s: &Site| sql::setting(&s.conn, key).unwrap();
    // B wrote last: its value stays in both copies, and A's is on record as the loser.
    assert_eq!(value(&a).as_deref(), Some("200"));
    assert_eq!(value(&b).as_deref(), Some("200"));
    for s in [&a, &b] {
        let recorded = replica::conflicts(&s.conn).unwrap();
        assert_eq!(recorded.len(), 1, "{}: {recorded:?}", s.name);
        let c = &recorded[0];
        assert_eq!((c.entity.as_str(), c.key.as_str()), ("setting", key));
        assert_eq!(c.kept, json!({"value": "200"}));
        assert_eq!(
            (c.lost.clone(), c.lost_origin.as_str()),
            (json!({"value": "400"}), "site-a")
        );
    }
    // A's removal of it follows B's value: no conflict, gone in both.
    a.conn
        .execute("DELETE FROM tenant_settings WHERE key = ?1", [key])
        .unwrap();
    let sent = a.outbox.len();
    a.cut();
    for x in &a.outbox[sent..] {
        b.apply(x);
    }
    assert_eq!(value(&b), None);
    assert_eq!(replica::conflicts(&b.conn).unwrap().len(), 1);
    assert_eq!(dump(&a.conn), dump(&b.conn));
}

#[test]
fn a_batch_cannot_set_a_copys_own_bookkeeping_or_carry_a_row_that_is_not_one() {
    let conn = base();
    let b = Site::new("site-b", copy(&conn));
    let op = |k: &str, v: serde_json::Value| FieldOp {
        e: "setting".into(),
        k: k.into(),
        f: replica::ROW_FIELD.into(),
        v,
        h: 1 << 60,
        p: 0,
        po: String::new(),
    };
    let batch = |ops: Vec<FieldOp>| Batch {
        format: FORMAT,
        origin: "site-a".into(),
        after: replica::cursor(&b.conn, "site-a").unwrap(),
        last: replica::cursor(&b.conn, "site-a").unwrap() + 1,
        items: ops.into_iter().map(|op| Item::Field { op }).collect(),
    };
    let listed: Vec<String> = replica::LOCAL_SETTINGS
        .iter()
        .map(|k| format!("'{k}'"))
        .collect();
    assert_eq!(replica::LOCAL_SETTINGS_SQL, listed.join(", "));
    for local in replica::LOCAL_SETTINGS {
        b.apply(&batch(vec![op(local, json!({"value": "0"}))]));
    }
    assert_eq!(
        sql::setting(&b.conn, "xapi.index_merged_through").unwrap(),
        None
    );
    assert_eq!(
        sql::setting(&b.conn, "federation.adopted_through").unwrap(),
        None
    );
    assert_ne!(
        sql::setting(&b.conn, "sync.hlc").unwrap().as_deref(),
        Some("0")
    );
    // A row that is not an object is refused, and the batch changes nothing.
    let before = dump(&b.conn);
    let tx = b.conn.unchecked_transaction().unwrap();
    let refused = apply(
        &tx,
        &batch(vec![
            op("retention.statements_days", json!({"value": "9"})),
            op("ai.model", json!("9")),
        ]),
        "site-b",
        1,
    )
    .unwrap_err();
    drop(tx);
    assert!(refused.to_string().contains("not an object"), "{refused}");
    assert_eq!(dump(&b.conn), before);
}

#[test]
fn a_row_that_arrives_before_the_one_it_names_waits_for_it_and_an_erasure_clears_it() {
    let origin = base();
    let mut a = Site::new("site-a", copy(&origin));
    let mut b = Site::new("site-b", copy(&origin));
    let c = Site::new("site-c", copy(&origin));
    let d = Site::new("site-d", copy(&origin));
    // A creates a project; B, once it has it, adds two pupils.
    a.conn
        .execute(
            "INSERT INTO research_projects (name, title, quasi_identifiers, k, max_suppressed,
                                            pseudonym_key, created_by, created_at)
             VALUES ('lecture', 'Lecture', '[]', 5, 0.1, x'00ff', NULL, 1)",
            [],
        )
        .unwrap();
    a.cut();
    for x in &a.outbox {
        b.apply(x);
    }
    for user in [1, 2] {
        b.conn
            .execute(
                "INSERT INTO research_members (project_id, user_id)
                 SELECT id, ?1 FROM research_projects WHERE name = 'lecture'",
                [user],
            )
            .unwrap();
    }
    b.cut();
    let members = |s: &Site| -> Vec<String> {
        let mut stmt = s
            .conn
            .prepare(
                "SELECT u.username FROM research_members m JOIN users u ON u.id = m.user_id
                 ORDER BY 1",
            )
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let waiting = |s: &Site| -> i64 {
        s.conn
            .query_row("SELECT count(*) FROM sync_waiting", [], |r| r.get(0))
            .unwrap()
    };
    // C gets B's batches first: the memberships wait, and C says what it lacks.
    let apply = |s: &Site, x: &Batch| -> Vec<String> {
        let tx = s.conn.unchecked_transaction().unwrap();
        let done = apply(&tx, x, s.name, 1).unwrap();
        tx.commit().unwrap();
        assert!(done.lacking.is_empty(), "{:?}", done.lacking);
        done.awaiting
    };
    let lacking: Vec<String> = b.outbox.iter().flat_map(|x| apply(&c, x)).collect();
    assert_eq!(lacking, ["research_projects \"lecture\""]);
    assert_eq!(replica::awaited(&c.conn).unwrap(), lacking);
    assert!(members(&c).is_empty());
    assert_eq!(waiting(&c), 2);
    // A's batch brings the project: both memberships follow, nothing waits.
    let lacking: Vec<String> = a.outbox.iter().flat_map(|x| apply(&c, x)).collect();
    assert!(lacking.is_empty(), "{lacking:?}");
    assert_eq!(members(&c), ["eleve0", "eleve1"]);
    assert_eq!(members(&c), members(&b));
    assert_eq!(waiting(&c), 0);
    // D gets B's batches, then B erases one of the two pupils: the erasure clears what
    // waited for them, and the project brings only the other membership.
    for x in &b.outbox {
        apply(&d, x);
    }
    let pupil = tenant::user_by_id(&b.conn, 2).unwrap().unwrap();
    crate::store::erasure::erase_user(&b.conn, &pupil, HOME, &Actor::System, 1)
        .unwrap()
        .unwrap();
    let sent = b.outbox.len();
    b.cut();
    for x in &b.outbox[sent..] {
        apply(&d, x);
    }
    assert_eq!(waiting(&d), 1);
    let held: String = d
        .conn
        .query_row("SELECT op FROM sync_waiting", [], |r| r.get(0))
        .unwrap();
    assert!(!held.contains(&pupil.agent_name), "{held}");
    for x in &a.outbox {
        apply(&d, x);
    }
    assert_eq!(members(&d), ["eleve0"]);
    assert_eq!(members(&d), members(&b));
    assert_eq!(waiting(&d), 0);
}
