//! Learning-analytics dashboards: for a class (its teachers) and for the school (staff):
//! level distribution per skill, evidence per week, and evidence coverage, drawn as SVG on
//! the server (no script, readable on a projector and a phone) with the figures in tables
//! beside them; the same figures as JSON, and for a school's own Grafana as Prometheus text
//! at `/t/{tenant}/metrics` (a tenant API credential with `analytics/read`).

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use maud::{Markup, PreEscaped, html};

use super::assessment::taught_class;
use super::extract::{Json, Path};
use super::i18n::Lang;
use super::users::member_page;
use crate::app::AppState;
use crate::auth::{ApiClient, Member, Staff, TeacherOnly};
use crate::error::ApiError;
use crate::store::StoreError;
use crate::store::analytics::{self as sql, Figures};
use crate::store::tenant as tenant_sql;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Stacked horizontal bars: one per skill, one segment per level (and the undecided).
fn levels_chart(lang: Lang, f: &Figures) -> Markup {
    let row = 14.0;
    let height = row * f.skills.len() as f64;
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 100 {height}\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{}\">",
        escape(lang.t("dash.levels"))
    );
    for (i, s) in f.skills.iter().enumerate() {
        let total = f.pupils.max(1) as f64;
        let mut x = 0.0;
        let y = i as f64 * row + 2.0;
        let segments = s
            .levels
            .iter()
            .enumerate()
            .map(|(j, (code, n))| (format!("lv{j}"), code.as_str(), *n))
            .chain([("lv-none".to_string(), lang.t("dash.undecided"), s.undecided)]);
        for (class, code, n) in segments {
            if n == 0 {
                continue;
            }
            let w = 100.0 * n as f64 / total;
            let _ = write!(
                svg,
                "<rect class=\"{class}\" x=\"{x:.2}\" y=\"{y}\" width=\"{w:.2}\" height=\"{}\"><title>{} · {}: {n}</title></rect>",
                row - 4.0,
                escape(s.name.get(lang.code())),
                escape(code)
            );
            x += w;
        }
    }
    svg.push_str("</svg>");
    html! { (PreEscaped(svg)) }
}

/// Twelve weekly slots, the latest on the right: columns for the evidence recorded, marks
/// for its mean result (0 at the bottom, 100 % at the top).
fn weekly_chart(lang: Lang, f: &Figures) -> Markup {
    let max = f
        .weekly_evidence
        .iter()
        .map(|(_, n, _)| *n)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut svg = format!(
        "<svg class=\"chart weekly\" viewBox=\"0 0 120 50\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{}\">",
        escape(lang.t("dash.weekly"))
    );
    let offset = 12usize.saturating_sub(f.weekly_evidence.len());
    for (i, (week, n, mean)) in f.weekly_evidence.iter().enumerate() {
        let x = (offset + i) as f64 * 10.0 + 1.0;
        let h = 48.0 * *n as f64 / max;
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{x:.1}\" y=\"{:.2}\" width=\"8\" height=\"{h:.2}\"><title>{}: {n}</title></rect>\
             <rect class=\"mean\" x=\"{x:.1}\" y=\"{:.2}\" width=\"8\" height=\"1.5\"><title>{}: {}</title></rect>",
            50.0 - h,
            week_label(*week),
            48.5 - 47.0 * *mean as f64 / 10_000.0,
            escape(lang.t("dash.mean")),
            percent(*mean)
        );
    }
    svg.push_str("</svg>");
    html! { (PreEscaped(svg)) }
}

fn percent(bp: i64) -> String {
    format!("{} %", (bp + 50) / 100)
}

fn week_label(at: i64) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]");
    time::OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&f).ok())
        .unwrap_or_default()
}

fn dashboard_body(lang: Lang, f: &Figures) -> Markup {
    let code = lang.code();
    let level_codes: Vec<&str> = f
        .skills
        .first()
        .map(|s| s.levels.iter().map(|(c, _)| c.as_str()).collect())
        .unwrap_or_default();
    html! {
        p.small { (lang.t("dash.pupils")) " : " (f.pupils) " · " (lang.t("dash.evidence")) " : " (f.evidence_total) }
        section.card {
            h2 { (lang.t("dash.levels")) }
            div.chart-with-labels {
                ul.chart-labels { @for s in &f.skills { li { (s.name.get(code)) } } }
                (levels_chart(lang, f))
            }
            ul.legend {
                @for (j, c) in level_codes.iter().enumerate() { li { span class={ "swatch lv" (j) } {} " " (c) } }
                li { span.swatch.lv-none {} " " (lang.t("dash.undecided")) }
            }
            table.grid.figures {
                thead { tr { th scope="col" { (lang.t("pupil.skill")) } @for c in &level_codes { th scope="col" { (c) } } th scope="col" { (lang.t("dash.undecided")) } } }
                tbody { @for s in &f.skills { tr {
                    th scope="row" { (s.name.get(code)) }
                    @for (_, n) in &s.levels { td { (n) } }
                    td { (s.undecided) }
                } } }
            }
        }
        section.card {
            h2 { (lang.t("dash.weekly")) }
            @if f.weekly_evidence.is_empty() { p { (lang.t("pupil.no_evidence")) } } @else { (weekly_chart(lang, f)) }
            table.grid.figures {
                thead { tr { th scope="col" { (lang.t("dash.week")) } th scope="col" { (lang.t("dash.evidence")) } th scope="col" { (lang.t("dash.mean")) } } }
                tbody { @for (w, n, mean) in &f.weekly_evidence { tr {
                    td { (week_label(*w)) } td { (n) } td { (percent(*mean)) }
                } } }
            }
        }
        section.card {
            h2 { (lang.t("dash.coverage")) }
            table.grid.figures {
                thead { tr { th scope="col" { (lang.t("pupil.skill")) } th scope="col" { (lang.t("dash.covered")) } } }
                tbody { @for s in &f.skills { tr {
                    th scope="row" { (s.name.get(code)) }
                    td { meter min="0" max=(f.pupils.max(1)) value=(s.covered) {} " " (s.covered) " / " (f.pupils) }
                } } }
            }
        }
    }
}

async fn class_figures(m: &Member<TeacherOnly>, class_id: i64) -> Result<Figures, ApiError> {
    taught_class(m, class_id).await?;
    Ok(m.tenant
        .db
        .read(move |c| sql::figures(c, Some(class_id)))
        .await?)
}

pub async fn class_dashboard(
    lang: Lang,
    m: Member<TeacherOnly>,
    Path((_, class_id)): Path<(String, i64)>,
) -> Result<Response, ApiError> {
    let figures = class_figures(&m, class_id).await?;
    let class = m
        .tenant
        .db
        .read(move |c| tenant_sql::class_by_id(c, class_id)?.ok_or(StoreError::NotFound))
        .await?;
    let title = format!("{} — {}", class.title, lang.t("dash.title"));
    Ok(member_page(
        lang,
        &m,
        &title,
        dashboard_body(lang, &figures),
    ))
}

pub async fn class_dashboard_json(
    m: Member<TeacherOnly>,
    Path((_, class_id)): Path<(String, i64)>,
) -> Result<Json<Figures>, ApiError> {
    Ok(Json(class_figures(&m, class_id).await?))
}

pub async fn school_dashboard(lang: Lang, m: Member<Staff>) -> Result<Response, ApiError> {
    let figures = m.tenant.db.read(|c| sql::figures(c, None)).await?;
    let title = format!("{} — {}", m.tenant.name, lang.t("dash.title"));
    Ok(member_page(
        lang,
        &m,
        &title,
        dashboard_body(lang, &figures),
    ))
}

pub async fn school_dashboard_json(m: Member<Staff>) -> Result<Json<Figures>, ApiError> {
    Ok(Json(m.tenant.db.read(|c| sql::figures(c, None)).await?))
}

/// The school's figures in the Prometheus text format, for its own Grafana.
pub async fn tenant_metrics(
    State(state): State<AppState>,
    client: ApiClient,
) -> Result<Response, ApiError> {
    if !client.allows("analytics/read") {
        return Err(ApiError::forbidden(
            "scope_required",
            "this credential does not hold the `analytics/read` scope",
        ));
    }
    let (f, storage) = client
        .tenant
        .db
        .read(|c| {
            Ok((
                sql::figures(c, None)?,
                crate::store::apps::kv_usage_by_app(c)?,
            ))
        })
        .await?;
    let mut out = String::new();
    let label = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let _ = writeln!(
        out,
        "# HELP ceredis_school_pupils Active pupils.\n# TYPE ceredis_school_pupils gauge"
    );
    let _ = writeln!(out, "ceredis_school_pupils {}", f.pupils);
    let _ = writeln!(
        out,
        "# HELP ceredis_school_evidence Rows of evidence recorded.\n# TYPE ceredis_school_evidence gauge"
    );
    let _ = writeln!(out, "ceredis_school_evidence {}", f.evidence_total);
    let _ = writeln!(
        out,
        "# HELP ceredis_school_level_pupils Pupils per decided level and skill.\n# TYPE ceredis_school_level_pupils gauge"
    );
    for s in &f.skills {
        for (level, n) in &s.levels {
            let _ = writeln!(
                out,
                "ceredis_school_level_pupils{{skill=\"{}\",level=\"{}\"}} {n}",
                label(&s.code),
                label(level)
            );
        }
        let _ = writeln!(
            out,
            "ceredis_school_level_pupils{{skill=\"{}\",level=\"none\"}} {}",
            label(&s.code),
            s.undecided
        );
    }
    let _ = writeln!(
        out,
        "# HELP ceredis_school_skill_covered_pupils Pupils with evidence on a skill.\n# TYPE ceredis_school_skill_covered_pupils gauge"
    );
    for s in &f.skills {
        let _ = writeln!(
            out,
            "ceredis_school_skill_covered_pupils{{skill=\"{}\"}} {}",
            label(&s.code),
            s.covered
        );
    }
    let _ = writeln!(
        out,
        "# HELP ceredis_school_app_requests_total Requests to each app since the appliance started, by outcome.\n# TYPE ceredis_school_app_requests_total counter"
    );
    let usage = state.apps.usage(&client.tenant.slug);
    for ((app, outcome), u) in &usage {
        let _ = writeln!(
            out,
            "ceredis_school_app_requests_total{{app=\"{}\",outcome=\"{outcome}\"}} {}",
            label(app),
            u.requests
        );
    }
    let _ = writeln!(
        out,
        "# HELP ceredis_school_app_request_seconds_total Time spent serving each app's requests, by outcome.\n# TYPE ceredis_school_app_request_seconds_total counter"
    );
    for ((app, outcome), u) in &usage {
        let _ = writeln!(
            out,
            "ceredis_school_app_request_seconds_total{{app=\"{}\",outcome=\"{outcome}\"}} {:.6}",
            label(app),
            u.seconds
        );
    }
    let _ = writeln!(
        out,
        "# HELP ceredis_school_app_storage_bytes Bytes each app keeps in its storage.\n# TYPE ceredis_school_app_storage_bytes gauge"
    );
    for (app, bytes) in &storage {
        let _ = writeln!(
            out,
            "ceredis_school_app_storage_bytes{{app=\"{}\"}} {bytes}",
            label(app)
        );
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}
