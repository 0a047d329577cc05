//! coordinator: takes remittance files from an SMB share into the finance
//! back office. A run flows scan → plan → process → archive; see `engine`.

pub mod app;
pub mod archive;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod domain;
pub mod downstream;
pub mod engine;
pub mod hash;
pub mod http;
pub mod instance;
pub mod metrics;
pub mod plan;
pub mod process;
pub mod scan;
pub mod source;
pub mod spool;
pub mod store;
pub mod telemetry;
#[cfg(test)]
pub mod testing;
