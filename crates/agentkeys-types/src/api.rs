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
    #[schema(pattern = "^0x[0-9a-fA-F]{40}$")]
    pub address: String,
    /// EIP-155 chain id placed in the message; defaults to 1.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    pub chain_id: Option<u64>,
    /// What the signature will be for: absent for a sign-in; a step-up names the identity a
    /// signed-in wallet master is about to link, and the message's statement names it too.
    #[serde(default)]
    pub purpose: Option<ChallengePurpose>,
}

/// A wallet challenge that is not a sign-in: the statement of the message names the action,
/// and the broker accepts the signature only for that action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ChallengePurpose {
    /// Linking this email address (canonical form) to the signing wallet's master.
    LinkEmail(String),
    /// Linking an identity at this OIDC provider (by name) to the signing wallet's master.
    LinkOidc(String),
    /// Approving an agent's access request: the grant it becomes, field by field.
    ApproveAccess(AccessApproval),
}

/// A fresh signature by the master's wallet over a challenge issued for one purpose.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WalletProof {
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    pub challenge_id: String,
    /// The 65-byte EIP-191 signature as `0x` + 130 hex.
    #[schema(pattern = "^0x[0-9a-fA-F]{130}$")]
    pub signature: String,
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
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    pub challenge_id: String,
    /// The 65-byte EIP-191 signature as `0x` + 130 hex.
    #[schema(pattern = "^0x[0-9a-fA-F]{130}$")]
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

/// The console's view of its own session (`GET /v1/console/session`): who it is, and the CSRF
/// token its changes must carry in `X-CSRF-Token`. The session token itself stays in its
/// HttpOnly cookie.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsoleSession {
    pub omni_account: String,
    pub wallet: Option<String>,
    pub kind: ActorKind,
    pub expires_at: String,
    /// The email or OIDC identity the session was signed in with, if any (`type:value`).
    pub via: Option<String>,
    pub csrf_token: String,
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
    /// Mint under this grant (agents only): the token gains the `agentkeys_scope` tag and one
    /// use of the grant is consumed.
    #[serde(default)]
    pub grant_id: Option<String>,
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
    /// `ok` when the store answers and its last write committed (a failed write, e.g. on a
    /// full disk, makes it `unavailable` until a write commits or for 10 s).
    pub store: String,
    /// `ok` when an active signing key is loaded.
    pub signing_key: String,
}

// ---- agents ------------------------------------------------------------------------------

/// A device proof: an EIP-191 signature by the device key over
/// [`crate::pairing::proof_message`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairingStartRequest {
    /// The device key's address, `0x` + 40 hex.
    #[schema(pattern = "^0x[0-9a-fA-F]{40}$")]
    pub device_address: String,
    /// Milliseconds since the Unix epoch; within two minutes of the broker's clock.
    pub timestamp_ms: i64,
    /// `0x` + 130 hex.
    #[schema(pattern = "^0x[0-9a-fA-F]{130}$")]
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PairingStartResponse {
    /// Identifies the request when polling (not a secret: polls need a device proof).
    pub pairing_id: String,
    /// What the master types into `agentkeys agents approve`, e.g. `ABCD-EFGH`.
    pub code: String,
    pub expires_at: String,
    /// How often to poll.
    pub poll_interval_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairingApproveRequest {
    /// The code the agent shows; case, `-` and spaces do not matter.
    pub code: String,
    /// `^[a-z0-9-]{1,32}$`, unique per master; part of the agent's identity.
    #[schema(pattern = "^[a-z0-9-]{1,32}$")]
    pub label: String,
}

/// A pairing code the master read from the device, to look up or to refuse.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairingCodeRequest {
    pub code: String,
}

/// The pending pairing a code names: which device asks, so the master can compare the address
/// with the one the device shows before approving.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PairingPending {
    pub code: String,
    /// The device key's address, as the device proved it.
    pub device_address: String,
    pub created_at: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PairingPollRequest {
    #[schema(pattern = "^[0-9a-fA-F]{32}$")]
    pub pairing_id: String,
    /// Milliseconds since the epoch; must be later than the previous poll's.
    pub timestamp_ms: i64,
    #[schema(pattern = "^0x[0-9a-fA-F]{130}$")]
    pub signature: String,
}

/// A paired agent's request for a new session, proved by its device key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSessionRequest {
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub agent_omni: String,
    /// Milliseconds since the epoch; must be later than this agent's previous proof.
    pub timestamp_ms: i64,
    /// EIP-191 signature by the device key over the `session` proof message.
    #[schema(pattern = "^0x[0-9a-fA-F]{130}$")]
    pub signature: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PairingStatus {
    /// Waiting for the master.
    Pending,
    /// Approved; this answer carries the agent's session, once.
    Approved,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct PairingPollResponse {
    pub status: PairingStatus,
    /// Present once, in the first answer after approval.
    pub session: Option<SessionIssued>,
    pub agent: Option<AgentInfo>,
}

impl std::fmt::Debug for PairingPollResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairingPollResponse")
            .field("status", &self.status)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Active,
    /// Cannot mint until resumed.
    Suspended,
    /// Gone for good; its sessions were revoked.
    Removed,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentInfo {
    pub agent_omni: String,
    pub label: String,
    pub device_address: String,
    pub status: AgentStatus,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentInfo>,
}

// ---- sessions ------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    /// A non-secret reference to the session (a prefix of its hash).
    pub id: String,
    pub kind: ActorKind,
    pub created_at: String,
    pub expires_at: String,
    /// Whether this is the session making the request.
    pub current: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionInfo>,
}

// ---- email sign-in and identity links -----------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailStartRequest {
    pub email: String,
    /// PKCE-style (RFC 7636, S256): base64url, unpadded, of SHA-256 of a verifier that only the
    /// requester holds and reveals when it collects the session.
    #[schema(pattern = "^[A-Za-z0-9_-]{43}$")]
    pub code_challenge: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcStartRequest {
    /// A provider configured on the broker (BROKER_OIDC_PROVIDERS_FILE), e.g. `google`.
    pub provider: String,
    /// As for email: S256 of the requester's verifier.
    #[schema(pattern = "^[A-Za-z0-9_-]{43}$")]
    pub code_challenge: String,
    /// RFC 8252 loopback redirect of the requesting CLI, `http://127.0.0.1:<port>/<path>` or
    /// `http://[::1]:<port>/<path>`. After the provider, the broker sends the browser there with
    /// a one-time code. Absent: the broker shows the code for the user to paste.
    #[serde(default)]
    pub redirect_uri: Option<String>,
}

/// Linking an email address: like a sign-in start, plus a fresh wallet signature over a
/// challenge whose purpose names this address.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkEmailRequest {
    pub email: String,
    #[schema(pattern = "^[A-Za-z0-9_-]{43}$")]
    pub code_challenge: String,
    pub wallet_proof: WalletProof,
}

/// Linking an OIDC identity: like a sign-in start, plus a fresh wallet signature over a
/// challenge whose purpose names this provider.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkOidcRequest {
    pub provider: String,
    #[schema(pattern = "^[A-Za-z0-9_-]{43}$")]
    pub code_challenge: String,
    #[serde(default)]
    pub redirect_uri: Option<String>,
    pub wallet_proof: WalletProof,
}

/// The request id names the request; on its own it releases nothing.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginStartResponse {
    pub request_id: String,
    pub expires_at: String,
    /// For OIDC: where the user's browser must go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
}

impl std::fmt::Debug for LoginStartResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginStartResponse")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Collecting a sign-in (or link): the one-time code the user saw (in the email, or from the
/// provider's redirect) and the verifier whose S256 was sent at the start.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginCollectRequest {
    pub request_id: String,
    pub code: String,
    #[schema(pattern = "^[A-Za-z0-9._~-]{43,128}$")]
    pub code_verifier: String,
}

impl std::fmt::Debug for LoginCollectRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginCollectRequest")
            .finish_non_exhaustive()
    }
}

/// The emailed link's token, posted by the landing page after the user clicks.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailLinkRequest {
    /// The token from the link's fragment.
    #[schema(pattern = "^[A-Za-z0-9_-]{43}$")]
    pub token: String,
}

/// What a browser learns when the emailed link signed it in (the session is in a cookie).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BrowserSignedIn {
    pub omni_account: String,
    pub wallet: Option<String>,
    pub email: String,
    pub expires_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoginStatus {
    /// Proved: this answer carries the session, once.
    Approved,
    /// Proved, and the identity is now linked to the requesting wallet master.
    Linked,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginStatusResponse {
    pub status: LoginStatus,
    pub session: Option<SessionIssued>,
    pub identity: Option<IdentityInfo>,
}

impl std::fmt::Debug for LoginStatusResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginStatusResponse")
            .field("status", &self.status)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IdentityInfo {
    /// `email` or `oauth2_<provider>`.
    pub identity_type: String,
    pub identity_value: String,
    pub linked_at: String,
}

/// What unlinking an identity did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UnlinkResult {
    /// Live sessions that had been obtained through the identity, now revoked.
    pub sessions_revoked: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IdentityList {
    pub identities: Vec<IdentityInfo>,
}

/// One audit event as a master sees it (`GET /v1/audit`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEventInfo {
    /// Position in the broker's log (global, so a master's events have gaps).
    pub seq: u64,
    /// RFC 3339.
    pub time: String,
    pub kind: String,
    /// Omni of the master or the agent that acted, when known.
    pub actor: Option<String>,
    /// `ok`, or `denied` / `failed` with the reason in `details`.
    pub outcome: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// The event's chain hash, comparable with an operator's export or checkpoint.
    pub hash: String,
}

/// Whether the audit hash chain verifies from its first event to its head.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditChainStatus {
    pub intact: bool,
    /// Events verified (all of them when intact).
    pub verified_events: u64,
    /// Seq and hash of the last verified event (0 and the genesis hash for an empty log).
    pub head_seq: u64,
    pub head_hash: String,
    /// The first bad or missing seq, and why, when broken.
    pub broken_at: Option<u64>,
    pub reason: Option<String>,
}

/// A page of audit events, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub events: Vec<AuditEventInfo>,
    /// Pass as `after` for the next page; `null` when this page is the last. A page may hold
    /// fewer events than `limit` (even none) and still have a `next`: the broker bounds how much
    /// of a long log one page searches.
    pub next: Option<u64>,
}

// ---- grants ------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantCreateRequest {
    /// The agent's omni.
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub agent: String,
    /// A path under the master's own prefix, e.g. `inbox/` (letters, digits, `._-` and `/`).
    pub scope: String,
    /// RFC 3339; at most a year ahead.
    #[schema(format = DateTime)]
    pub expires_at: String,
    /// Mints allowed under the grant; unlimited when absent.
    #[serde(default)]
    pub max_uses: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WorstCaseExposure {
    /// How long credentials minted under the grant can outlive its revocation.
    pub seconds: u64,
    pub explanation: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GrantInfo {
    pub grant_id: String,
    pub agent: String,
    pub scope: String,
    /// The `agentkeys_scope` tag value tokens minted under it carry: `<master prefix>/<scope>`.
    pub scope_tag: String,
    pub created_at: String,
    pub expires_at: String,
    pub max_uses: Option<u32>,
    pub uses: u32,
    pub revoked_at: Option<String>,
    pub worst_case_exposure: WorstCaseExposure,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GrantList {
    pub grants: Vec<GrantInfo>,
    /// What a grant made now would state as its worst case (shown before creating one).
    pub worst_case_exposure: WorstCaseExposure,
}

// ---- access requests ---------------------------------------------------------------------------

/// An agent asks its master for a grant (`POST /v1/access-requests`, agents only).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRequestCreate {
    /// A path under the master's prefix, e.g. `inbox/` (letters, digits, `._-` and `/`).
    pub scope: String,
    /// Mints the grant would allow; unlimited until it expires when absent.
    #[serde(default)]
    pub max_uses: Option<u32>,
    /// How long the grant would last once approved, in seconds (at most a year).
    pub ttl_seconds: u64,
    /// Why the agent needs it, shown to the master (size limited by the broker).
    pub reason: String,
}

/// What the master decided, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessDecision {
    Approved,
    Denied,
}

impl AccessDecision {
    pub const fn as_str(self) -> &'static str {
        match self {
            AccessDecision::Approved => "approved",
            AccessDecision::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approved" => Some(AccessDecision::Approved),
            "denied" => Some(AccessDecision::Denied),
            _ => None,
        }
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessRequestStatus {
    /// Waiting for the master.
    Pending,
    /// Approved: `grant` is the grant it became.
    Approved,
    Denied,
    /// Nobody decided before `expires_at`.
    Expired,
}

impl AccessRequestStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            AccessRequestStatus::Pending => "pending",
            AccessRequestStatus::Approved => "approved",
            AccessRequestStatus::Denied => "denied",
            AccessRequestStatus::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessRequestInfo {
    pub request_id: String,
    /// The asking agent's omni.
    pub agent: String,
    pub agent_label: String,
    /// The agent's device key, as paired.
    pub device_address: String,
    /// Relative to the master's prefix, e.g. `inbox/`.
    pub scope: String,
    /// The `agentkeys_scope` tag value the grant would carry, `<master prefix>/<scope>`: in
    /// the master's view (an agent does not know its master's prefix).
    pub scope_tag: Option<String>,
    pub max_uses: Option<u32>,
    pub ttl_seconds: u64,
    pub reason: String,
    pub status: AccessRequestStatus,
    pub created_at: String,
    /// The request's own expiry: undecided after this, it is `expired`.
    pub expires_at: String,
    pub decided_at: Option<String>,
    /// The grant an approval made.
    pub grant: Option<GrantInfo>,
    /// What approving would expose at worst, as grants state it.
    pub worst_case_exposure: WorstCaseExposure,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccessRequestList {
    pub requests: Vec<AccessRequestInfo>,
}

/// The master's approval. A master with a wallet proves it with a fresh signature over a
/// challenge whose purpose is [`ChallengePurpose::ApproveAccess`] naming exactly this request,
/// its agent, scope, uses and the grant's `expires_at`; a master without a wallet (email or
/// OIDC) approves with its session and sends neither field.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessApproveRequest {
    #[serde(default)]
    pub wallet_proof: Option<WalletProof>,
    /// RFC 3339 end of the grant, as signed; at most `ttl_seconds` from now. Without a wallet
    /// proof the broker sets it to now + `ttl_seconds`.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// What a wallet approval of an access request signs: the statement of the EIP-4361 message
/// names every field (see `login::challenge_statement`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessApproval {
    pub request_id: String,
    /// The agent's label and omni.
    pub agent_label: String,
    pub agent: String,
    /// The scope tag, `<master prefix>/<scope>`.
    pub scope_tag: String,
    /// Absent: unlimited until `expires_at`.
    #[serde(default)]
    pub max_uses: Option<u32>,
    /// RFC 3339 end of the grant.
    pub expires_at: String,
}
