//! The vocabulary of the audit log (SPEC §7): what happened ([`AuditKind`]) and how it ended
//! ([`Outcome`]).
//!
//! The strings are part of the hash chain: every event's hash covers `kind` and `outcome` as
//! written, so `as_str` must keep giving exactly these bytes. Stored events are read back as
//! strings (a log may hold kinds written by other versions); these types are for writing.

use std::fmt;

/// Every kind of audit event the broker writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// `access.requested`: an agent asked its master for a grant (denied: too many pending).
    AccessRequested,
    /// `access.approved`: the master approved a request (failed: a wallet proof that did not
    /// verify); the details carry the signature of a wallet approval.
    AccessApproved,
    /// `access.denied`: the master denied a request.
    AccessDenied,
    /// `agent.pairing_requested`: an agent asked to be paired.
    AgentPairingRequested,
    /// `agent.approve_attempt`: a master tried to approve a pairing (rate limited).
    AgentApproveAttempt,
    /// `agent.paired`
    AgentPaired,
    /// `agent.pairing_denied`: a master refused a device's pairing code.
    AgentPairingDenied,
    /// `agent.session_issued`
    AgentSessionIssued,
    /// `agent.suspended`
    AgentSuspended,
    /// `agent.resumed`
    AgentResumed,
    /// `agent.removed`
    AgentRemoved,
    /// `anonymous.denied`: refusals of unauthenticated requests, aggregated per client.
    AnonymousDenied,
    /// `grant.created`
    GrantCreated,
    /// `grant.revoked`
    GrantRevoked,
    /// `identity.link_requested`
    IdentityLinkRequested,
    /// `identity.linked`
    IdentityLinked,
    /// `identity.unlinked`
    IdentityUnlinked,
    /// `identity.step_up`
    IdentityStepUp,
    /// `key.generate`
    KeyGenerate,
    /// `key.rotate`
    KeyRotate,
    /// `key.retire`
    KeyRetire,
    /// `key.withdraw`
    KeyWithdraw,
    /// `key.rotate_kek`
    KeyRotateKek,
    /// `mint`: every mint attempt.
    Mint,
    /// `session.logout`
    SessionLogout,
    /// `session.logout_all`
    SessionLogoutAll,
    /// `session.revoked`
    SessionRevoked,
    /// `sign_in.wallet`
    SignInWallet,
    /// `sign_in.email`
    SignInEmail,
    /// `sign_in.email.requested`
    SignInEmailRequested,
    /// `sign_in.oidc`
    SignInOidc,
    /// `sign_in.oidc.requested`
    SignInOidcRequested,
    /// `sign_in.oidc.verified`
    SignInOidcVerified,
}

impl AuditKind {
    /// Every kind, in the order of [`AuditKind::as_str`]'s table.
    pub const ALL: [AuditKind; 33] = [
        AuditKind::AccessRequested,
        AuditKind::AccessApproved,
        AuditKind::AccessDenied,
        AuditKind::AgentPairingRequested,
        AuditKind::AgentApproveAttempt,
        AuditKind::AgentPaired,
        AuditKind::AgentPairingDenied,
        AuditKind::AgentSessionIssued,
        AuditKind::AgentSuspended,
        AuditKind::AgentResumed,
        AuditKind::AgentRemoved,
        AuditKind::AnonymousDenied,
        AuditKind::GrantCreated,
        AuditKind::GrantRevoked,
        AuditKind::IdentityLinkRequested,
        AuditKind::IdentityLinked,
        AuditKind::IdentityUnlinked,
        AuditKind::IdentityStepUp,
        AuditKind::KeyGenerate,
        AuditKind::KeyRotate,
        AuditKind::KeyRetire,
        AuditKind::KeyWithdraw,
        AuditKind::KeyRotateKek,
        AuditKind::Mint,
        AuditKind::SessionLogout,
        AuditKind::SessionLogoutAll,
        AuditKind::SessionRevoked,
        AuditKind::SignInWallet,
        AuditKind::SignInEmail,
        AuditKind::SignInEmailRequested,
        AuditKind::SignInOidc,
        AuditKind::SignInOidcRequested,
        AuditKind::SignInOidcVerified,
    ];

    /// The kind as written into the log (and hashed): these bytes never change.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuditKind::AccessRequested => "access.requested",
            AuditKind::AccessApproved => "access.approved",
            AuditKind::AccessDenied => "access.denied",
            AuditKind::AgentPairingRequested => "agent.pairing_requested",
            AuditKind::AgentApproveAttempt => "agent.approve_attempt",
            AuditKind::AgentPaired => "agent.paired",
            AuditKind::AgentPairingDenied => "agent.pairing_denied",
            AuditKind::AgentSessionIssued => "agent.session_issued",
            AuditKind::AgentSuspended => "agent.suspended",
            AuditKind::AgentResumed => "agent.resumed",
            AuditKind::AgentRemoved => "agent.removed",
            AuditKind::AnonymousDenied => "anonymous.denied",
            AuditKind::GrantCreated => "grant.created",
            AuditKind::GrantRevoked => "grant.revoked",
            AuditKind::IdentityLinkRequested => "identity.link_requested",
            AuditKind::IdentityLinked => "identity.linked",
            AuditKind::IdentityUnlinked => "identity.unlinked",
            AuditKind::IdentityStepUp => "identity.step_up",
            AuditKind::KeyGenerate => "key.generate",
            AuditKind::KeyRotate => "key.rotate",
            AuditKind::KeyRetire => "key.retire",
            AuditKind::KeyWithdraw => "key.withdraw",
            AuditKind::KeyRotateKek => "key.rotate_kek",
            AuditKind::Mint => "mint",
            AuditKind::SessionLogout => "session.logout",
            AuditKind::SessionLogoutAll => "session.logout_all",
            AuditKind::SessionRevoked => "session.revoked",
            AuditKind::SignInWallet => "sign_in.wallet",
            AuditKind::SignInEmail => "sign_in.email",
            AuditKind::SignInEmailRequested => "sign_in.email.requested",
            AuditKind::SignInOidc => "sign_in.oidc",
            AuditKind::SignInOidcRequested => "sign_in.oidc.requested",
            AuditKind::SignInOidcVerified => "sign_in.oidc.verified",
        }
    }

    /// The completed sign-in of a login request's `method` (`sign_in.<method>`), for the
    /// methods that have login requests: `email` and `oidc`.
    pub fn sign_in(method: &str) -> Option<AuditKind> {
        match method {
            "email" => Some(AuditKind::SignInEmail),
            "oidc" => Some(AuditKind::SignInOidc),
            _ => None,
        }
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an audited action ended: allowed, refused by a rule (the reason in `details`), or
/// failed (a proof that did not verify, a provider that said no).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    Denied,
    Failed,
}

impl Outcome {
    /// The outcome as written into the log (and hashed): these bytes never change.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strings_are_the_hashed_bytes_of_every_version() {
        let kinds: Vec<&str> = AuditKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "access.requested",
                "access.approved",
                "access.denied",
                "agent.pairing_requested",
                "agent.approve_attempt",
                "agent.paired",
                "agent.pairing_denied",
                "agent.session_issued",
                "agent.suspended",
                "agent.resumed",
                "agent.removed",
                "anonymous.denied",
                "grant.created",
                "grant.revoked",
                "identity.link_requested",
                "identity.linked",
                "identity.unlinked",
                "identity.step_up",
                "key.generate",
                "key.rotate",
                "key.retire",
                "key.withdraw",
                "key.rotate_kek",
                "mint",
                "session.logout",
                "session.logout_all",
                "session.revoked",
                "sign_in.wallet",
                "sign_in.email",
                "sign_in.email.requested",
                "sign_in.oidc",
                "sign_in.oidc.requested",
                "sign_in.oidc.verified",
            ]
        );
        for k in AuditKind::ALL {
            assert_eq!(k.to_string(), k.as_str());
        }
        assert_eq!(AuditKind::sign_in("email"), Some(AuditKind::SignInEmail));
        assert_eq!(AuditKind::sign_in("oidc"), Some(AuditKind::SignInOidc));
        assert_eq!(AuditKind::sign_in("wallet"), None);
        let outcomes = [Outcome::Ok, Outcome::Denied, Outcome::Failed].map(|o| o.to_string());
        assert_eq!(outcomes, ["ok", "denied", "failed"]);
    }
}
