pub mod agents;
pub mod auth;
pub mod email;
pub mod identities;
pub mod mint;
pub mod oidc;
pub mod ops;
pub mod session;
