pub mod access;
pub mod agents;
pub mod audit;
pub mod auth;
pub mod console;
pub mod email;
pub mod grants;
pub mod identities;
pub mod login;
pub mod mint;
pub mod oidc;
pub mod oidc_signin;
pub mod ops;
pub mod session;

use agentkeys_store::NewAuditEvent;
use agentkeys_types::audit::{AuditKind, Outcome};

/// An audit event of a route, at `now`.
pub(crate) fn event(
    now: i64,
    kind: AuditKind,
    actor: Option<&str>,
    master: Option<&str>,
    outcome: Outcome,
    details: serde_json::Value,
) -> NewAuditEvent {
    NewAuditEvent {
        time: now,
        kind,
        actor: actor.map(str::to_owned),
        master: master.map(str::to_owned),
        outcome,
        details,
    }
}
