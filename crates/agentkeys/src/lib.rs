//! The AgentKeys client: sign in to a broker with a wallet key, keep the session in a profile,
//! and mint short-lived OIDC JWTs for cloud federation (SPEC §8).
//!
//! The binary `agentkeys` is a thin wrapper over [`run`]; every failure is one [`Error`].

pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod error;
mod fsutil;
pub mod keyfile;

pub use cli::Cli;
pub use commands::run;
pub use error::{Error, Result};
