//! Test helpers for Custos: scripted mock upstreams on `127.0.0.1:0`, and a
//! handle on the real `custos` binary. Used only by tests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support code fails loudly"
)]

mod process;
mod upstream;

pub use process::{CustosProcess, create_key, temp_dir};
pub use upstream::{MockUpstream, Received, Reply, StreamEnd, closed_port, resetting_server};
