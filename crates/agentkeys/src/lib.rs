//! The AgentKeys client: sign in to a broker with a wallet key, an emailed link or an OIDC
//! provider (a master) or pair a device key with a master (an agent), link identities to a
//! wallet master, keep the session in a profile, manage agents and sessions, mint
//! short-lived OIDC JWTs for cloud federation, and trade them for temporary AWS credentials with
//! an unsigned STS call of its own (SPEC §8).
//!
//! The binary `agentkeys` is a thin wrapper over [`run`]; every failure is one [`Error`].

pub mod account;
pub mod agent;
pub mod agents;
pub mod audit;
pub mod aws;
pub mod cache;
pub mod cli;
pub mod client;
pub mod cloud;
pub mod config;
pub mod context;
pub mod endpoint;
pub mod error;
pub mod exec;
mod fsutil;
pub mod grant_terms;
pub mod grants;
pub mod identities;
pub mod isolation;
pub mod key;
pub mod keyfile;
pub mod login;
mod loopback;
pub mod mcp;
pub mod output;
pub mod pairing;
pub mod poll;
pub mod refresh;
pub mod renew;
pub mod requests;
pub mod s3;
pub mod secret;
pub mod sessions;
pub mod signin;
pub mod siwe_check;
mod sts_http;
#[cfg(test)]
mod testutil;
pub mod token;

/// The profile used without `--profile`.
pub const DEFAULT_PROFILE: &str = "default";

pub use cli::Cli;
pub use cli::run;
pub use error::{Error, Result};
