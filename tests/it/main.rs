//! Integration suite: the seed matrix (`../shared/seeds/000_daa870a8e339852a.txt`)
//! against a real Samba share and a real Postgres, with the coordinator called
//! over HTTP and the downstream services faked in this process.

mod fakes;
mod gate;
mod helpers;
// Parts are used only by the unit tests of src/auth/oidc.rs (which
// include this file too).
#[allow(dead_code)]
mod idp;
mod remitter;

mod access;
mod api;
mod archive_races;
mod audit_chain;
mod duplicates;
mod extraction_failures;
mod faults;
mod happy_path;
mod integrity;
mod itm_failure;
mod openapi;
mod operate;
mod operator;
mod outages;
mod outbox;
mod policy_a;
mod process;
mod read_integrity;
mod shared_runs;
mod status_page;
mod superseded;
mod temp_files;
mod tls;
mod versions;
