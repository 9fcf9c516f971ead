//! The stable kinds of the broker's error answers (`ErrorBody.error`): the broker's `ApiError`
//! and mint denials name one, and the `agentkeys` client matches them to give advice.

use serde::{Deserialize, Serialize};

/// Every error kind the broker sends, spelled on the wire as [`ErrorKind::as_str`]. A kind this
/// build does not know (a newer broker's) parses as [`ErrorKind::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidRequest,
    InvalidField,
    Unauthenticated,
    SignInFailed,
    StepUpFailed,
    NotFound,
    RouteRetired,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    RequestTimeout,
    RateLimited,
    Unavailable,
    Internal,
    MastersOnly,
    WalletMasterOnly,
    VerifierMismatch,
    WrongCode,
    AgentSuspended,
    AgentRemoved,
    AudienceNotAllowed,
    InvalidRoleArn,
    GrantNotYours,
    GrantUnknown,
    GrantRevoked,
    GrantExpired,
    GrantExhausted,
    GrantUnavailable,
    InvalidSessionTag,
    NoSigningKey,
    AuditFailed,
    /// Only an agent's session can do this (ask for access).
    AgentsOnly,
    /// A change made with the console's cookie without its CSRF token.
    CsrfFailed,
    /// A kind this build does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    /// Every known kind, [`ErrorKind::Unknown`] excluded.
    pub const ALL: [ErrorKind; 34] = [
        Self::InvalidRequest,
        Self::InvalidField,
        Self::Unauthenticated,
        Self::SignInFailed,
        Self::StepUpFailed,
        Self::NotFound,
        Self::RouteRetired,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::RequestTimeout,
        Self::RateLimited,
        Self::Unavailable,
        Self::Internal,
        Self::MastersOnly,
        Self::WalletMasterOnly,
        Self::VerifierMismatch,
        Self::WrongCode,
        Self::AgentSuspended,
        Self::AgentRemoved,
        Self::AudienceNotAllowed,
        Self::InvalidRoleArn,
        Self::GrantNotYours,
        Self::GrantUnknown,
        Self::GrantRevoked,
        Self::GrantExpired,
        Self::GrantExhausted,
        Self::GrantUnavailable,
        Self::InvalidSessionTag,
        Self::NoSigningKey,
        Self::AuditFailed,
        Self::AgentsOnly,
        Self::CsrfFailed,
    ];

    /// The kind as sent in `ErrorBody.error` (and as a mint denial's reason).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidField => "invalid_field",
            Self::Unauthenticated => "unauthenticated",
            Self::SignInFailed => "sign_in_failed",
            Self::StepUpFailed => "step_up_failed",
            Self::NotFound => "not_found",
            Self::RouteRetired => "route_retired",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RequestTimeout => "request_timeout",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::MastersOnly => "masters_only",
            Self::WalletMasterOnly => "wallet_master_only",
            Self::VerifierMismatch => "verifier_mismatch",
            Self::WrongCode => "wrong_code",
            Self::AgentSuspended => "agent_suspended",
            Self::AgentRemoved => "agent_removed",
            Self::AudienceNotAllowed => "audience_not_allowed",
            Self::InvalidRoleArn => "invalid_role_arn",
            Self::GrantNotYours => "grant_not_yours",
            Self::GrantUnknown => "grant_unknown",
            Self::GrantRevoked => "grant_revoked",
            Self::GrantExpired => "grant_expired",
            Self::GrantExhausted => "grant_exhausted",
            Self::GrantUnavailable => "grant_unavailable",
            Self::InvalidSessionTag => "invalid_session_tag",
            Self::NoSigningKey => "no_signing_key",
            Self::AuditFailed => "audit_failed",
            Self::AgentsOnly => "agents_only",
            Self::CsrfFailed => "csrf_failed",
            Self::Unknown => "unknown",
        }
    }

    /// The kind a wire string names; [`ErrorKind::Unknown`] for one this build does not know.
    pub fn parse(s: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or(Self::Unknown)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for ErrorKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ErrorKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_spelling_is_as_str_and_unknown_kinds_parse() {
        for k in ErrorKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<ErrorKind>(&json).unwrap(), k);
            assert_eq!(ErrorKind::parse(k.as_str()), k);
        }
        assert_eq!(
            serde_json::from_str::<ErrorKind>("\"from_a_newer_broker\"").unwrap(),
            ErrorKind::Unknown
        );
        assert_eq!(ErrorKind::parse("from_a_newer_broker"), ErrorKind::Unknown);
    }
}
