//! Rows and values that cross the [`crate::Store`] boundary.

use agentkeys_types::OmniAccount;
pub use agentkeys_types::api::{AccessDecision, ActorKind, AgentStatus};
pub use agentkeys_types::audit::{AuditKind, Outcome};
use serde::{Deserialize, Serialize};

/// A pending wallet sign-in: the exact message the wallet must sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub id: String,
    pub address: String,
    pub message: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    /// Hex SHA-256 of the bearer token; the token itself is never stored.
    pub token_hash: String,
    pub kind: ActorKind,
    pub omni: OmniAccount,
    pub wallet: Option<String>,
    /// The master this session acts for: itself for a master, the owner for an agent.
    pub master: OmniAccount,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    /// The email or OIDC identity the session was obtained through: unlinking it revokes the
    /// session.
    pub via: Option<IdentityRef>,
    /// For an agent's session, its agent's status, read in the same statement as the session
    /// (so a check of both is one read); `None` for a master's. Not a column of the session:
    /// inserting ignores it.
    pub agent_status: Option<AgentStatus>,
}

impl Session {
    pub fn is_agent(&self) -> bool {
        self.kind == ActorKind::Agent
    }

    /// Unrevoked and unexpired at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.standing().is_live(now)
    }

    /// What of the session decides whether it may still act.
    pub fn standing(&self) -> SessionStanding {
        SessionStanding {
            kind: self.kind,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            agent_status: self.agent_status,
        }
    }
}

/// The part of a [`Session`] that can change after the session was read (revocation, its agent's
/// status) and decides whether it may still act: all that a gate's transaction re-reads, in one
/// statement that builds no strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionStanding {
    pub kind: ActorKind,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    /// As [`Session::agent_status`].
    pub agent_status: Option<AgentStatus>,
}

impl SessionStanding {
    pub fn is_agent(&self) -> bool {
        self.kind == ActorKind::Agent
    }

    /// Unrevoked and unexpired at `now`.
    pub fn is_live(&self, now: i64) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// Names an email or OIDC identity: `email` or `oauth2_<provider>`, and its canonical value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentityRef {
    pub identity_type: String,
    pub identity_value: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field(
                "token_hash",
                &format_args!("{}…", self.token_hash.get(..8).unwrap_or_default()),
            )
            .field("kind", &self.kind)
            .field("omni", &self.omni)
            .field("wallet", &self.wallet)
            .field("master", &self.master)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .field("via", &self.via)
            .finish()
    }
}

/// An audit event before the store gives it a place in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    pub time: i64,
    pub kind: AuditKind,
    /// Omni of the actor, when known.
    pub actor: Option<String>,
    /// Omni of the master the event concerns, when known.
    pub master: Option<String>,
    /// `ok`, or `denied` / `failed` with the reason in `details`.
    pub outcome: Outcome,
    pub details: serde_json::Value,
}

impl NewAuditEvent {
    /// The fields the hash covers, as they will be stored.
    pub fn hashed(&self) -> crate::audit::Hashed<'_> {
        crate::audit::Hashed {
            time: self.time,
            kind: self.kind.as_str(),
            actor: self.actor.as_deref(),
            master: self.master.as_deref(),
            outcome: self.outcome.as_str(),
            details: &self.details,
        }
    }
}

/// A stored audit event. `hash = SHA-256(prev_hash ‖ canonical(event))`, see [`crate::audit`].
///
/// `kind` and `outcome` stay strings: this is the record as hashed, and a log may hold kinds
/// written by other versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub seq: u64,
    pub time: i64,
    pub kind: String,
    pub actor: Option<String>,
    pub master: Option<String>,
    pub outcome: String,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
    /// How `canonical(event)` was made when the event was written.
    #[serde(default = "crate::audit::HashFormat::legacy")]
    pub hash_format: crate::audit::HashFormat,
}

impl AuditEvent {
    /// The fields the hash covers, as stored.
    pub fn hashed(&self) -> crate::audit::Hashed<'_> {
        crate::audit::Hashed {
            time: self.time,
            kind: &self.kind,
            actor: self.actor.as_deref(),
            master: self.master.as_deref(),
            outcome: &self.outcome,
            details: &self.details,
        }
    }
}

/// The public half and the lifecycle of a signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// Public JWK as JSON (with `x5c`).
    pub public_jwk: String,
    /// Base64 DER of a self-signed certificate over the key.
    pub certificate: String,
    /// The private key sealed under the key-encryption key, when keys live in the store; the
    /// store keeps these bytes and never opens them.
    pub sealed_private_key: Option<Vec<u8>>,
    pub created_at: i64,
    /// When the key may start signing; it is published from `created_at`.
    pub activates_at: i64,
    /// When it was told to stop signing, if ever.
    pub retired_at: Option<i64>,
    /// When it was pulled from the JWKS at once (compromise), if ever.
    pub withdrawn_at: Option<i64>,
}

/// One fixed window of a rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    pub seconds: i64,
    pub limit: u64,
}

/// An agent paired to a master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub omni: OmniAccount,
    pub master: OmniAccount,
    pub label: String,
    pub device_address: String,
    pub status: AgentStatus,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A device's request to be paired, until a master approves it and the device collects its
/// session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairingRequest {
    pub id: String,
    /// Normalised code (no separator).
    pub code: String,
    pub device_address: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_proof_ms: i64,
    /// Set when approved.
    pub agent: Option<OmniAccount>,
    /// Set when the agent's session was handed out.
    pub claimed_at: Option<i64>,
}

/// An email or OIDC identity linked to a wallet master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `email` or `oauth2_<provider>`.
    pub identity_type: String,
    pub identity_value: String,
    pub master: OmniAccount,
    pub master_wallet: String,
    pub linked_at: i64,
}

impl Identity {
    pub fn key(&self) -> IdentityRef {
        IdentityRef {
            identity_type: self.identity_type.clone(),
            identity_value: self.identity_value.clone(),
        }
    }
}

/// A sign-in (or link) in progress, by email link or OIDC login.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// SHA-256 of the request id the requester polls with.
    pub id_hash: String,
    /// `email` or `oidc`.
    pub method: String,
    /// The email address, or the OIDC provider's name.
    pub subject: String,
    pub link_token_hash: Option<String>,
    pub state: Option<String>,
    pub oidc_nonce: Option<String>,
    pub oidc_verifier: Option<String>,
    /// Set when a signed-in wallet master is linking this identity instead of signing in.
    pub link_to: Option<OmniAccount>,
    pub link_to_wallet: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub verified_type: Option<String>,
    pub verified_value: Option<String>,
    pub verified_at: Option<i64>,
    pub claimed_at: Option<i64>,
    /// S256 of the requester's verifier (base64url); collecting needs the verifier.
    pub client_challenge: Option<String>,
    /// SHA-256 of the one-time code the user sees: set at the start for email, when the
    /// provider's answer is verified for OIDC.
    pub code_hash: Option<String>,
    /// Wrong codes tried so far.
    pub code_attempts: u32,
    /// OIDC: the requesting CLI's loopback redirect (RFC 8252), if it has one.
    pub redirect_uri: Option<String>,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("method", &self.method)
            .field("subject", &self.subject)
            .field("link_to", &self.link_to)
            .field("expires_at", &self.expires_at)
            .field("verified_type", &self.verified_type)
            .field("verified_at", &self.verified_at)
            .field("claimed_at", &self.claimed_at)
            .finish_non_exhaustive()
    }
}

/// A master's grant of `scope` (a path under its own prefix) to one of its agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub master: OmniAccount,
    pub agent: OmniAccount,
    pub scope: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_uses: Option<i64>,
    pub uses: i64,
    pub revoked_at: Option<i64>,
}

/// An agent's request for a grant of `scope` under its master's prefix, until the master
/// decides (or it expires).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    pub id: String,
    pub agent: OmniAccount,
    pub master: OmniAccount,
    /// Relative to the master's prefix, normalised (e.g. `inbox`).
    pub scope: String,
    pub max_uses: Option<i64>,
    /// The grant's lifetime once approved.
    pub ttl_seconds: i64,
    pub reason: String,
    pub created_at: i64,
    /// Undecided after this, the request is expired.
    pub expires_at: i64,
    pub decision: Option<AccessDecision>,
    pub decided_at: Option<i64>,
    /// The grant an approval made.
    pub grant_id: Option<String>,
}

impl AccessRequest {
    /// Undecided and unexpired at `now`.
    pub fn is_pending(&self, now: i64) -> bool {
        self.decision.is_none() && now < self.expires_at
    }
}

/// How a login request is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginKey<'a> {
    /// SHA-256 of the request id the requester holds.
    IdHash(&'a str),
    /// SHA-256 of the emailed link's token.
    LinkTokenHash(&'a str),
    /// The OIDC `state` parameter.
    State(&'a str),
}

/// Which of an actor's live sessions [`crate::Tx::revoke_sessions`] revokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionFilter<'a> {
    /// All of them but the one with this token hash, if given.
    AllExcept(Option<&'a str>),
    /// Those obtained through this identity.
    Via(&'a IdentityRef),
}
