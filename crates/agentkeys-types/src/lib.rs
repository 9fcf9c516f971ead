//! Wire types and rules shared by the AgentKeys broker and its clients.
//!
//! Nothing here does I/O: the broker and the `agentkeys` client both depend on this crate so the
//! JSON they exchange, the identity derivation that names every S3 prefix, and the claim rules
//! that AWS STS enforces are written down once.

pub mod api;
pub mod audit;
pub mod aws_tags;
pub mod claims;
pub mod error_kind;
pub mod identity;
pub mod login;
pub mod pairing;

pub use api::ErrorBody;
pub use error_kind::ErrorKind;
pub use identity::{OmniAccount, WalletAddress};

#[cfg(test)]
mod properties;
