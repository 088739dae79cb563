//! Classes and enrolments, and the role home pages built on them: a teacher sees their
//! classes and pupils, a student their classes.

use super::extract::{Form, Json, Path};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::i18n::Lang;
use super::layout;
use super::users::viewer;
use crate::auth::{AdminOnly, AnyRole, Member, Staff, StudentOnly, TeacherOnly};
use crate::error::ApiError;
use crate::store::StoreError;
use crate::store::tenant::{self as sql, Class, ClassFields, User};
use crate::tenant::Role;

pub async fn home(lang: Lang, m: Member<AnyRole>) -> Result<Response, ApiError> {
    match m.user.role {
        Role::Admin => Ok(Redirect::to(&format!("/t/{}/admin", m.tenant.slug)).into_response()),
        Role::Researcher => {
            Ok(Redirect::to(&format!("/t/{}/research", m.tenant.slug)).into_response())
        }
        Role::Teacher => teacher_home(lang, m).await,
        Role::Student => student_home(lang, m).await,
    }
}

async fn teacher_home(lang: Lang, m: Member<AnyRole>) -> Result<Response, ApiError> {
    let user_id = m.user.id;
    let classes = m
        .tenant
        .db
        .read(move |c| {
            let classes = sql::classes_of(c, user_id, "teacher")?;
            classes
                .into_iter()
                .map(|class| {
                    let members = sql::members(c, class.id)?;
                    Ok((class, members))
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await?;
    let slug = &m.tenant.slug;
    let apps = super::apps::home_section(lang, &m.tenant, m.user.role).await?;
    let body = html! {
        nav.sections {
            a href={ "/t/" (slug) "/statements" } { (lang.t("browse.link")) }
            " "
            a href={ "/t/" (slug) "/dashboard" } { (lang.t("dash.school_link")) }
        }
        @if classes.is_empty() { p { (lang.t("teacher.none")) } }
        @for (class, members) in &classes {
            section.card {
                h2 { a href={ "/t/" (slug) "/classes/" (class.id) } { (class.title) } }
                p {
                    a href={ "/t/" (slug) "/classes/" (class.id) "/assessment" } { (lang.t("assess.link")) }
                    " · "
                    a href={ "/t/" (slug) "/classes/" (class.id) "/dashboard" } { (lang.t("dash.link")) }
                }
                (pupil_list(lang, members))
            }
        }
        (apps)
    };
    let name = m.user.display_name();
    let v = viewer(lang, &m.user, slug, &m.csrf, &name);
    Ok(layout::page(lang, lang.t("teacher.title"), Some(v), body).into_response())
}

fn pupil_list(lang: Lang, members: &[(User, String)]) -> maud::Markup {
    let pupils: Vec<&User> = members
        .iter()
        .filter(|(_, r)| r == "student")
        .map(|(u, _)| u)
        .collect();
    html! {
        h3 { (lang.t("teacher.pupils")) " (" (pupils.len()) ")" }
        ol.pupils {
            @for p in &pupils { li { (p.family_name) " " (p.given_name) } }
        }
    }
}

async fn student_home(lang: Lang, m: Member<AnyRole>) -> Result<Response, ApiError> {
    let user_id = m.user.id;
    let classes = m
        .tenant
        .db
        .read(move |c| {
            sql::classes_of(c, user_id, "student")?
                .into_iter()
                .map(|class| {
                    let teachers: Vec<User> = sql::members(c, class.id)?
                        .into_iter()
                        .filter(|(_, r)| r == "teacher")
                        .map(|(u, _)| u)
                        .collect();
                    Ok((class, teachers))
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await?;
    let slug = &m.tenant.slug;
    let apps = super::apps::home_section(lang, &m.tenant, m.user.role).await?;
    let body = html! {
        nav.sections {
            a href={ "/t/" (slug) "/progress" } { (lang.t("progress.link")) }
            " "
            a href={ "/t/" (slug) "/history" } { (lang.t("history.link")) }
        }
        h2 { (lang.t("student.classes")) }
        @if classes.is_empty() { p { (lang.t("student.none")) } }
        ul.cards {
            @for (class, teachers) in &classes {
                li {
                    strong { (class.title) }
                    @for t in teachers { br; span.small { (t.given_name) " " (t.family_name) } }
                }
            }
        }
        (apps)
    };
    let name = m.user.display_name();
    let v = viewer(lang, &m.user, slug, &m.csrf, &name);
    Ok(layout::page(lang, lang.t("student.title"), Some(v), body).into_response())
}

/// A class as seen by staff: admins see every class, teachers only those they teach
/// (another class is "not found", not "forbidden").
async fn visible_class(m: &Member<Staff>, class_id: i64) -> Result<Class, ApiError> {
    let (user_id, is_admin) = (m.user.id, m.user.role == Role::Admin);
    m.tenant
        .db
        .read(move |c| {
            let class = sql::class_by_id(c, class_id)?.ok_or(StoreError::NotFound)?;
            if is_admin || sql::teaches(c, user_id, class_id)? {
                Ok(class)
            } else {
                Err(StoreError::NotFound)
            }
        })
        .await
        .map_err(ApiError::from)
}

pub async fn class_page(
    lang: Lang,
    m: Member<Staff>,
    Path((_, class_id)): Path<(String, i64)>,
) -> Result<Response, ApiError> {
    let class = visible_class(&m, class_id).await?;
    let members = m.tenant.db.read(move |c| sql::members(c, class_id)).await?;
    let teachers: Vec<&User> = members
        .iter()
        .filter(|(_, r)| r == "teacher")
        .map(|(u, _)| u)
        .collect();
    let body = html! {
        p { (lang.t("teacher.teachers")) " : "
            @for (i, t) in teachers.iter().enumerate() { @if i > 0 { ", " } (t.given_name) " " (t.family_name) }
        }
        (pupil_list(lang, &members))
    };
    let name = m.user.display_name();
    let v = viewer(lang, &m.user, &m.tenant.slug, &m.csrf, &name);
    Ok(layout::page(lang, &class.title, Some(v), body).into_response())
}

pub async fn list(m: Member<Staff>) -> Result<Json<Vec<Class>>, ApiError> {
    let (user_id, is_admin) = (m.user.id, m.user.role == Role::Admin);
    Ok(Json(
        m.tenant
            .db
            .read(move |c| {
                if is_admin {
                    sql::classes(c)
                } else {
                    sql::classes_of(c, user_id, "teacher")
                }
            })
            .await?,
    ))
}

pub async fn teaching(m: Member<TeacherOnly>) -> Result<Json<Vec<Class>>, ApiError> {
    let user_id = m.user.id;
    Ok(Json(
        m.tenant
            .db
            .read(move |c| sql::classes_of(c, user_id, "teacher"))
            .await?,
    ))
}

pub async fn my_classes(m: Member<StudentOnly>) -> Result<Json<Vec<Class>>, ApiError> {
    let user_id = m.user.id;
    Ok(Json(
        m.tenant
            .db
            .read(move |c| sql::classes_of(c, user_id, "student"))
            .await?,
    ))
}

#[derive(serde::Serialize)]
pub struct MemberView {
    user: User,
    role_in_class: String,
}

pub async fn members(
    m: Member<Staff>,
    Path((_, class_id)): Path<(String, i64)>,
) -> Result<Json<Vec<MemberView>>, ApiError> {
    visible_class(&m, class_id).await?;
    let rows = m.tenant.db.read(move |c| sql::members(c, class_id)).await?;
    Ok(Json(
        rows.into_iter()
            .map(|(user, role_in_class)| MemberView {
                user,
                role_in_class,
            })
            .collect(),
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClass {
    title: String,
    #[serde(default)]
    class_code: Option<String>,
}

async fn create_class(
    m: &Member<AdminOnly>,
    title: String,
    class_code: Option<String>,
) -> Result<Class, ApiError> {
    let title = title.trim().to_string();
    if title.is_empty() || title.chars().count() > 120 {
        return Err(ApiError::bad_request(
            "invalid_class",
            "title: 1 to 120 characters",
        ));
    }
    let fields = ClassFields {
        sourced_id: None,
        title,
        class_code: class_code.filter(|c| !c.trim().is_empty()),
        org_sourced_id: None,
        active: true,
    };
    Ok(m.tenant
        .db
        .write(move |c| {
            let id = sql::insert_class(c, &fields)?;
            sql::class_by_id(c, id)?.ok_or(StoreError::NotFound)
        })
        .await?)
}

pub async fn create(
    m: Member<AdminOnly>,
    Json(n): Json<NewClass>,
) -> Result<(StatusCode, Json<Class>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(create_class(&m, n.title, n.class_code).await?),
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEnrolment {
    user_id: i64,
    /// `teacher` or `student`; by default the user's own role.
    #[serde(default)]
    role: Option<String>,
}

async fn enrol_user(
    m: &Member<AdminOnly>,
    class_id: i64,
    user_id: i64,
    role: Option<String>,
) -> Result<(), ApiError> {
    m.tenant
        .db
        .write(move |c| {
            sql::class_by_id(c, class_id)?.ok_or(StoreError::Conflict(format!(
                "class {class_id} does not exist"
            )))?;
            let user = sql::user_by_id(c, user_id)?.ok_or(StoreError::Conflict(format!(
                "user {user_id} does not exist"
            )))?;
            let role = match role.as_deref() {
                Some(r @ ("teacher" | "student")) => r.to_string(),
                Some(other) => {
                    return Err(StoreError::Conflict(format!(
                        "role `{other}`: use teacher or student"
                    )));
                }
                None => match user.role {
                    Role::Teacher | Role::Admin => "teacher".into(),
                    Role::Student => "student".into(),
                    Role::Researcher => {
                        return Err(StoreError::Conflict(
                            "researchers are not enrolled in classes".into(),
                        ));
                    }
                },
            };
            sql::enrol(c, None, class_id, user_id, &role)
        })
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) => ApiError::bad_request("invalid_enrolment", m),
            e => e.into(),
        })
}

pub async fn enrol(
    m: Member<AdminOnly>,
    Path((_, class_id)): Path<(String, i64)>,
    Json(e): Json<NewEnrolment>,
) -> Result<StatusCode, ApiError> {
    enrol_user(&m, class_id, e.user_id, e.role).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
pub struct NewClassForm {
    title: String,
}

pub async fn create_form(
    m: Member<AdminOnly>,
    Form(f): Form<NewClassForm>,
) -> Result<Response, ApiError> {
    create_class(&m, f.title, None).await?;
    Ok(Redirect::to(&format!("/t/{}/admin#classes", m.tenant.slug)).into_response())
}

#[derive(serde::Deserialize)]
pub struct EnrolForm {
    user_id: i64,
    class_id: i64,
}

pub async fn enrol_form(
    m: Member<AdminOnly>,
    Form(f): Form<EnrolForm>,
) -> Result<Response, ApiError> {
    enrol_user(&m, f.class_id, f.user_id, None).await?;
    Ok(Redirect::to(&format!("/t/{}/admin#classes", m.tenant.slug)).into_response())
}
