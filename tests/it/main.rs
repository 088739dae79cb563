#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The one integration-test binary: every test boots real `ceredis` processes.

mod acme;
mod api;
mod app_attacks;
mod apps;
mod assessment;
mod durability;
mod federation;
mod isolation;
mod lrs;
mod operations;
mod postgres;
mod research;
mod roster;
mod support;
