//! The page shell and small form helpers shared by every page. No inline script or style:
//! the CSP forbids them; `/assets/app.css` and `/assets/app.js` carry both.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::i18n::Lang;

/// Who is signed in, for the header.
pub struct Viewer<'a> {
    pub name: &'a str,
    pub role_label: &'a str,
    pub logout_action: String,
    pub csrf: &'a str,
}

pub fn page(lang: Lang, title: &str, viewer: Option<Viewer<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (lang.t("app.name")) }
                link rel="icon" href="/assets/favicon.svg" type="image/svg+xml";
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body {
                a.skip href="#main" { (PreEscaped("&darr;")) " " (title) }
                header.top {
                    a.brand href="/" { (lang.t("app.name")) }
                    nav {
                        a href={ "/lang/" (lang.other().code()) } hreflang=(lang.other().code()) {
                            (lang.t("nav.switch_lang"))
                        }
                        @if let Some(v) = &viewer {
                            span.who { (v.name) " · " (v.role_label) }
                            form.inline method="post" action=(v.logout_action) {
                                (csrf_field(v.csrf))
                                button type="submit" { (lang.t("nav.logout")) }
                            }
                        }
                    }
                }
                main id="main" { h1 { (title) } (body) }
                footer { a href="/ca.crt" { (lang.t("nav.ca")) } }
            }
        }
    }
}

pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="_csrf" value=(token); }
}

/// A labelled input, keyboard-accessible.
pub fn field(id: &str, label: &str, kind: &str, required: bool, autocomplete: &str) -> Markup {
    html! {
        div.field {
            label for=(id) { (label) }
            input id=(id) name=(id) type=(kind) required[required] autocomplete=(autocomplete);
        }
    }
}

pub fn notice(text: &str) -> Markup {
    html! { p.notice role="status" { (text) } }
}

pub fn alert(text: &str) -> Markup {
    html! { p.alert role="alert" { (text) } }
}
