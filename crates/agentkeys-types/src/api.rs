//! JSON bodies of the broker's HTTP API. The broker derives its OpenAPI document from these
//! types and the `agentkeys` client deserialises the same types, so the two cannot drift.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error response: a stable snake_case kind and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable kind, e.g. `invalid_request`, `unauthenticated`, `rate_limited`.
    pub error: String,
    /// What went wrong and what to do about it.
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WalletChallengeRequest {
    /// The wallet that will sign, `0x` + 40 hex (any case).
    pub address: String,
    /// EIP-155 chain id placed in the message; defaults to 1.
    #[serde(default)]
    pub chain_id: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WalletChallengeResponse {
    pub challenge_id: String,
    /// The EIP-4361 message to sign with EIP-191 `personal_sign`, byte for byte.
    pub message: String,
    /// RFC 3339 time after which the challenge is refused.
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WalletVerifyRequest {
    pub challenge_id: String,
    /// The 65-byte EIP-191 signature as `0x` + 130 hex.
    pub signature: String,
}

/// A new session. The token is returned once and never again.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionIssued {
    /// Bearer token for `Authorization: Bearer …`.
    pub session_token: String,
    pub expires_at: String,
    pub omni_account: String,
    /// Lowercase wallet of the master, when it has one.
    pub wallet: Option<String>,
}

impl std::fmt::Debug for SessionIssued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionIssued")
            .field("session_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("omni_account", &self.omni_account)
            .field("wallet", &self.wallet)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Master,
    Agent,
}

/// `GET /v1/session`: who the bearer is.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub omni_account: String,
    pub wallet: Option<String>,
    pub kind: ActorKind,
    pub expires_at: String,
}

/// Optional intent of a mint. An empty body means the defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    /// Audience of the token; must be in the broker's allow-list. Default `sts.amazonaws.com`.
    #[serde(default)]
    pub audience: Option<String>,
    /// Pins the token to this role (`https://aws.amazon.com/roles`). AWS
    /// (`arn:aws:iam::123456789012:role/name`) and account-less (`arn:aws:iam:::role/name`) forms.
    #[serde(default)]
    pub role_arn: Option<String>,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct MintResponse {
    /// The ES256 JWT, for `AssumeRoleWithWebIdentity`.
    pub jwt: String,
    /// RFC 3339 expiry of the JWT.
    pub expiration: String,
    /// The `agentkeys_user_wallet` tag the token carries.
    pub wallet: String,
    pub actor_omni: String,
}

impl std::fmt::Debug for MintResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintResponse")
            .field("jwt", &"<redacted>")
            .field("expiration", &self.expiration)
            .field("wallet", &self.wallet)
            .field("actor_omni", &self.actor_omni)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub status: String,
    /// `ok` when the store answers.
    pub store: String,
    /// `ok` when an active signing key is loaded.
    pub signing_key: String,
}
