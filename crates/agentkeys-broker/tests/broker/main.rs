//! In-process HTTP tests of the broker: the real router served on a port-0 listener, a real
//! SQLite store in a temp dir, real secp256k1 wallets, and tokens checked by jsonwebtoken
//! against the JWKS fetched over HTTP. One test binary for the crate.

// Test code: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod access;
mod agents;
mod anonymous;
mod app;
mod audit;
mod audit_api;
mod bad_input;
mod binary;
mod connections;
mod console;
mod data_dir;
mod docs;
mod email;
mod grants;
mod metrics_access;
mod mint;
mod oidc;
#[path = "../oidc_op/harness.rs"]
#[allow(dead_code)]
mod oidc_op;
mod rate_limit;
mod revocation_race;
mod rotation;
mod sign_in;
mod tls;
mod transactions;
mod two_instances;
