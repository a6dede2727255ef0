//! The store suite on PostgreSQL, each test in a fresh schema. Skipped, with
//! the reason printed, when nothing listens on 127.0.0.1:5432 and
//! `CUSTOS_TEST_POSTGRES_URL` is unset.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[macro_use]
mod suite;

use suite::Ctx;

scenarios!(Ctx::postgres);
