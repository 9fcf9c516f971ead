//! Rows and values that cross the [`crate::Store`] boundary.

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
    /// `master` or `agent`.
    pub kind: String,
    pub omni: String,
    pub wallet: Option<String>,
    /// The master this session acts for: itself for a master, the owner for an agent.
    pub master: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

impl Session {
    /// A new session whose owner (omni, master, wallet) the store fills in when it learns it:
    /// at pairing, at email/OIDC collection, at an agent's device proof.
    pub fn unowned(token_hash: String, kind: &str, created_at: i64, expires_at: i64) -> Self {
        Self {
            token_hash,
            kind: kind.to_owned(),
            omni: String::new(),
            wallet: None,
            master: String::new(),
            created_at,
            expires_at,
            revoked_at: None,
        }
    }
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
            .finish()
    }
}

/// An audit event before the store gives it a place in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    pub time: i64,
    pub kind: String,
    /// Omni of the actor, when known.
    pub actor: Option<String>,
    /// Omni of the master the event concerns, when known.
    pub master: Option<String>,
    /// `ok`, or `denied` / `failed` with the reason in `details`.
    pub outcome: String,
    pub details: serde_json::Value,
}

/// A stored audit event. `hash = SHA-256(prev_hash ‖ canonical(event))`, see [`crate::audit`].
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOutcome {
    /// Allowed; the audit event has this seq.
    Allowed { seq: u64 },
    /// A window is full; retry after this many seconds.
    Limited {
        retry_after: i64,
        window_seconds: i64,
        seq: u64,
    },
    /// The grant named for this use was revoked, expired or used up meanwhile; the denial
    /// (reason `grant_unavailable`) has this seq.
    GrantUnavailable { seq: u64 },
    /// The session or its agent stopped being live between the caller's read and this
    /// transaction (logout, revocation, expiry, suspension, removal); the denial (reason
    /// [`NotLive::reason`]) has this seq.
    NotLive { reason: NotLive, seq: u64 },
}

/// What a gated append re-checks inside its transaction, so a revocation that commits first
/// always wins over a mint that read the session before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveCheck {
    /// The session must exist, be unrevoked and unexpired at `now`.
    pub session_token_hash: String,
    /// For an agent's session: this agent must be `active`.
    pub agent: Option<String>,
}

/// Why a [`LiveCheck`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotLive {
    /// Revoked, expired or gone: answered like any unknown session.
    Session,
    AgentSuspended,
    /// Removed, or no such agent.
    AgentRemoved,
}

impl NotLive {
    /// The `reason` written into the denial event.
    pub fn reason(self) -> &'static str {
        match self {
            NotLive::Session => "unauthenticated",
            NotLive::AgentSuspended => "agent_suspended",
            NotLive::AgentRemoved => "agent_removed",
        }
    }
}

/// An agent paired to a master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub omni: String,
    pub master: String,
    pub label: String,
    pub device_address: String,
    /// `active`, `suspended` or `removed`.
    pub status: String,
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
    pub agent: Option<String>,
    /// Set when the agent's session was handed out.
    pub claimed_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApproveOutcome {
    Approved(Agent),
    /// No pending, unexpired request has this code.
    UnknownCode,
    /// The master already has (or had) an agent with this label.
    LabelTaken,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Not approved yet.
    Pending,
    /// Approved; the session passed in was stored for this agent.
    Claimed(Agent),
    /// The session was already handed out.
    AlreadyClaimed,
    /// Unknown, expired, or its agent is no longer active.
    Gone,
    /// The proof's timestamp is not later than the last one seen (a replay).
    StaleProof,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentSessionOutcome {
    /// The session passed in was stored for this agent.
    Issued(Agent),
    /// Suspended or removed.
    NotActive(Agent),
    Unknown,
    /// The proof's timestamp is not later than this agent's last one (a replay).
    StaleProof,
}

/// An email or OIDC identity linked to a wallet master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `email` or `oauth2_<provider>`.
    pub identity_type: String,
    pub identity_value: String,
    pub master: String,
    pub master_wallet: String,
    pub linked_at: i64,
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
    pub link_to: Option<String>,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginClaim {
    /// The code does not match (or none was issued yet); the request dies when no attempts
    /// are left.
    WrongCode { attempts_left: u32 },
    /// The session passed in was stored: as the linked wallet master, or as the identity's
    /// own master.
    SignedIn(Session),
    /// The identity is now linked to the requesting wallet master.
    Linked(Identity),
    /// The result was already collected (by the code, or by the emailed link in a browser).
    AlreadyClaimed,
    /// Unknown, expired, or dead after too many wrong codes.
    Gone,
    /// Linking refused: the identity is linked to another master.
    LinkedElsewhere,
}

/// A master's grant of `scope` (a path under its own prefix) to one of its agents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub master: String,
    pub agent: String,
    pub scope: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_uses: Option<i64>,
    pub uses: i64,
    pub revoked_at: Option<i64>,
}

/// A use of a grant, consumed in the same transaction as the mint's audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantUse {
    pub grant_id: String,
    pub agent: String,
}
