//! CEREDIS Edge: the school-site appliance in one binary.
//!
//! # Layout (the same map as ARCHITECTURE.md)
//! - [`cli`] — the command line (`init`, `serve`, `demo`, `tenant`, `user`, `config`,
//!   `doctor`, `backup`, `restore`); the only place that uses `anyhow`.
//! - [`config`] — defaults < `ceredis.toml` < `CEREDIS_*` < flags; secrets redacted.
//! - [`app`] — `AppState` (cheap clonable handles) and the router.
//! - [`server`] — HTTPS listener, HTTP→HTTPS redirect, graceful shutdown.
//! - [`tls`] — the site's local CA and server certificate; [`acme`] — certificates from an
//!   ACME directory for a public domain.
//! - [`identity`] — the site's Ed25519 identity.
//! - [`federation`] — the hub (`ceredis hub`), enrolment and signed site ↔ hub requests.
//! - [`http`] — one file per resource; every route and the access it needs in one table.
//! - [`auth`] — sessions, CSRF, throttling, passwords, machine credentials, and the
//!   extractors that make access control a type.
//! - [`tenant`] — tenants, roles, OneRoster import.
//! - [`lrs`] — the built-in xAPI learning record store (1.0.3 and 2.0.0), one per tenant.
//! - [`competency`] — frameworks, evidence, mastery estimates and their journal, CEFR level
//!   decisions, and what each role may see of them.
//! - [`store`] — the only module that touches SQLite: group-commit writers, read pools,
//!   add-only migrations, backup.
//! - [`metrics`], [`doctor`], [`error`].

pub mod acme;
pub mod app;
pub mod apps;
pub mod auth;
pub mod cli;
pub mod competency;
pub mod config;
pub mod doctor;
pub mod error;
pub mod federation;
pub mod http;
pub mod identity;
pub mod lrs;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tenant;
pub mod tls;
