//! The claims a minted JWT carries (SPEC §5.2). Discovery's `claims_supported` is built from
//! [`CLAIMS_SUPPORTED`], and a broker test holds it equal to the keys of a real minted token.

pub const ISS: &str = "iss";
pub const SUB: &str = "sub";
pub const AUD: &str = "aud";
pub const IAT: &str = "iat";
pub const NBF: &str = "nbf";
pub const EXP: &str = "exp";
pub const JTI: &str = "jti";
pub const USER_WALLET: &str = "agentkeys_user_wallet";
pub const ACTOR_OMNI: &str = "agentkeys_actor_omni";
pub const SCOPE: &str = "agentkeys_scope";
/// The claim AWS STS turns into session tags (`aws:PrincipalTag/...`).
pub const AWS_TAGS: &str = "https://aws.amazon.com/tags";
/// Pins a token to one role ARN.
pub const AWS_ROLES: &str = "https://aws.amazon.com/roles";
/// The actor, as the STS session's source identity: CloudTrail names it on every call made with
/// the session, and it survives role chaining.
pub const AWS_SOURCE_IDENTITY: &str = "https://aws.amazon.com/source_identity";

/// Every claim the broker can emit, in a stable order.
pub const CLAIMS_SUPPORTED: &[&str] = &[
    ISS,
    SUB,
    AUD,
    IAT,
    NBF,
    EXP,
    JTI,
    USER_WALLET,
    ACTOR_OMNI,
    SCOPE,
    AWS_TAGS,
    AWS_ROLES,
    AWS_SOURCE_IDENTITY,
];

/// The default audience: AWS STS.
pub const AUDIENCE_STS: &str = "sts.amazonaws.com";

/// `nbf` is back-dated by this much so verifiers with a slightly slow clock accept a fresh token.
pub const NBF_BACKDATE_SECONDS: i64 = 60;

/// Bounds on the JWT lifetime, in seconds.
pub const JWT_TTL_MIN_SECONDS: u64 = 60;
pub const JWT_TTL_MAX_SECONDS: u64 = 3600;

/// `sub` for a master: `agentkeys:user:<wallet or master omni>`.
pub fn master_subject(wallet_or_omni: &str) -> String {
    format!("agentkeys:user:{wallet_or_omni}")
}

/// `sub` for an agent: `agentkeys:agent:<agent omni>`.
pub fn agent_subject(agent_omni: &str) -> String {
    format!("agentkeys:agent:{agent_omni}")
}
