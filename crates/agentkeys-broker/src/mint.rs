//! The one mint path (SPEC §5.2, §6): claims, tag contract, signature, gates, audit.

use agentkeys_store::{Grant, NewAuditEvent, Session, StoreError};
use agentkeys_types::api::MintRequest;
use agentkeys_types::audit::{AuditKind, Outcome};
use agentkeys_types::aws_tags::{AwsSessionTags, check_source_identity};
use agentkeys_types::claims::{self, NBF_BACKDATE_SECONDS};
use agentkeys_types::{ErrorKind, OmniAccount};
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;

use crate::gate::{Gate, GateOutcome, GrantUse, LiveCheck};
use crate::keys::SigningKey;
use crate::metrics::mint_denied;
use crate::session::{random_id, session_ref};
use crate::state::AppState;

/// Why the mint refused: the `reason` of the denial event and of the
/// `agentkeys_mint_denials_total` label ([`DenyReason::as_str`]); the HTTP edge maps it, once,
/// to the error the caller gets. Variants carry what their error message needs.
#[derive(Debug)]
pub enum DenyReason {
    /// No live session: revoked, expired or unknown (gate 1).
    Unauthenticated,
    AgentSuspended,
    /// Removed, or no such agent.
    AgentRemoved,
    /// The request body was refused (the caller gets the body's own error).
    InvalidRequest,
    /// The audience is not in the broker's allow-list, listed here.
    AudienceNotAllowed {
        allowed: Vec<String>,
    },
    InvalidRoleArn,
    /// A master named a grant: grants are used by the agents they were given to.
    GrantNotForMasters,
    GrantUnknown,
    /// The grant was given to another agent.
    GrantNotYours,
    GrantRevoked,
    GrantExpired,
    GrantExhausted,
    /// The claims break AWS's session-tag contract; the message says how.
    InvalidSessionTag(String),
    NoSigningKey,
    /// A mint window is full.
    RateLimited {
        retry_after: i64,
    },
    /// The grant was revoked, expired or used up between the check and its use.
    GrantUnavailable,
    /// The audit append failed, so the token is withheld. Counted, not recorded.
    AuditFailed(StoreError),
}

impl DenyReason {
    /// [`DenyReason::RateLimited`]'s reason, for the denial written before the wait is known.
    pub const RATE_LIMITED: &'static str = ErrorKind::RateLimited.as_str();

    /// The error kind the caller gets.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DenyReason::Unauthenticated => ErrorKind::Unauthenticated,
            DenyReason::AgentSuspended => ErrorKind::AgentSuspended,
            DenyReason::AgentRemoved => ErrorKind::AgentRemoved,
            DenyReason::InvalidRequest => ErrorKind::InvalidRequest,
            DenyReason::AudienceNotAllowed { .. } => ErrorKind::AudienceNotAllowed,
            DenyReason::InvalidRoleArn => ErrorKind::InvalidRoleArn,
            DenyReason::GrantNotForMasters | DenyReason::GrantNotYours => ErrorKind::GrantNotYours,
            DenyReason::GrantUnknown => ErrorKind::GrantUnknown,
            DenyReason::GrantRevoked => ErrorKind::GrantRevoked,
            DenyReason::GrantExpired => ErrorKind::GrantExpired,
            DenyReason::GrantExhausted => ErrorKind::GrantExhausted,
            DenyReason::InvalidSessionTag(_) => ErrorKind::InvalidSessionTag,
            DenyReason::NoSigningKey => ErrorKind::NoSigningKey,
            DenyReason::RateLimited { .. } => ErrorKind::RateLimited,
            DenyReason::GrantUnavailable => ErrorKind::GrantUnavailable,
            DenyReason::AuditFailed(_) => ErrorKind::AuditFailed,
        }
    }

    /// The reason as written into the denial event and the metrics label.
    pub fn as_str(&self) -> &'static str {
        self.kind().as_str()
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a mint produced no token: a refusal, or a failure of the store or of signing.
#[derive(Debug)]
pub enum MintError {
    Denied(DenyReason),
    Store(StoreError),
    /// Signing failed after the mint was allowed and recorded: the token is withheld.
    Signing(anyhow::Error),
}

impl From<DenyReason> for MintError {
    fn from(reason: DenyReason) -> Self {
        MintError::Denied(reason)
    }
}

impl From<StoreError> for MintError {
    fn from(e: StoreError) -> Self {
        MintError::Store(e)
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: String,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
    jti: String,
    agentkeys_user_wallet: &'a str,
    agentkeys_actor_omni: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    agentkeys_scope: Option<String>,
    #[serde(rename = "https://aws.amazon.com/tags")]
    aws_tags: AwsSessionTags,
    #[serde(
        rename = "https://aws.amazon.com/roles",
        skip_serializing_if = "Option::is_none"
    )]
    aws_roles: Option<&'a str>,
    #[serde(rename = "https://aws.amazon.com/source_identity")]
    aws_source_identity: &'a str,
}

/// A signed token, not yet released.
pub struct Minted {
    pub jwt: String,
    pub expires_at: i64,
    pub wallet: String,
    pub actor_omni: String,
}

/// `arn:aws:iam::<12 digits>:role/<path/name>` or the account-less `arn:aws:iam:::role/<name>`
/// of S3-compatible clouds (Ceph RGW). Other partitions (`aws-cn`, `aws-us-gov`) too.
pub fn valid_role_arn(arn: &str) -> bool {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let partition_ok = matches!(partition, "aws" | "aws-cn" | "aws-us-gov");
    let account_ok =
        account.is_empty() || (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()));
    let Some(name) = resource.strip_prefix("role/") else {
        return false;
    };
    let name_ok = !name.is_empty()
        && name.len() <= 512
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
        && !name.ends_with('/');
    partition_ok && account_ok && name_ok
}

/// A refused mint of `session`'s, for `reason`.
fn denied_event(now: i64, session: &Session, reason: &'static str) -> NewAuditEvent {
    NewAuditEvent {
        time: now,
        kind: AuditKind::Mint,
        actor: Some(session.omni.to_string()),
        master: Some(master_of(session)),
        outcome: Outcome::Denied,
        details: json!({ "session": session_ref(&session.token_hash), "reason": reason }),
    }
}

fn master_of(s: &Session) -> String {
    s.master.to_string()
}

/// Records a refusal of `session`'s mint durably, then returns it. The session's liveness is
/// checked in the same transaction first (gates 1 and 2 come before the rest): a session that
/// is no longer live is refused as such, and forgotten by the mint's session cache, so a
/// revoked bearer leaves one recorded refusal, not one per request. If even the audit write
/// fails the caller gets the store's failure (a 500): a gate failure must not go unrecorded.
pub async fn deny(state: &AppState, session: &Session, reason: DenyReason) -> MintError {
    let now = state.clock.now();
    let live = LiveCheck {
        session_token_hash: session.token_hash.clone(),
    };
    let recorded = live
        .record_refusal(
            &*state.store,
            now,
            denied_event(now, session, reason.as_str()),
        )
        .await;
    match recorded {
        Ok((None, _)) => refused(state, session, reason),
        Ok((Some(not_live), _)) => refused(state, session, not_live.reason()),
        Err(e) => MintError::Store(e),
    }
}

/// A refusal already recorded: counted, and a session found not live is forgotten.
fn refused(state: &AppState, session: &Session, reason: DenyReason) -> MintError {
    if matches!(reason, DenyReason::Unauthenticated) {
        state.mint_sessions.forget(&session.token_hash);
    }
    mint_denied(&reason);
    MintError::Denied(reason)
}

/// A mint gate 3 allowed before the transaction: its claims, checked against AWS's tag
/// contract, and the key that will sign them. Made only by [`authorize`]; signed only by
/// [`Permit::commit`], after the gate's transaction has allowed it and recorded it.
pub struct Permit<'a> {
    session: &'a Session,
    claims: Claims<'a>,
    signer: Arc<SigningKey>,
    grant: Option<LiveGrant>,
}

/// Gate 3 and the claims for an authenticated session, decided before anything is
/// signed or counted: a permit, or why the mint is refused (not yet recorded).
pub async fn authorize<'a>(
    state: &'a AppState,
    session: &'a Session,
    request: &'a MintRequest,
    now: i64,
) -> Result<Result<Permit<'a>, DenyReason>, StoreError> {
    let settings = &state.settings;

    // Gates 1 and 2 (a live session; an agent must be active, so a suspension takes effect at
    // its next mint) are decided inside the transaction that records the outcome, before
    // anything decided here: `session` may be the mint's cached copy, whose revocation and
    // agent status are not to be trusted (crate::session_cache).

    // Gate 3: intent.
    let audience = match request.audience.as_deref() {
        None => settings
            .audiences
            .first()
            .map(String::as_str)
            .unwrap_or(claims::AUDIENCE_STS),
        Some(a) if settings.audiences.iter().any(|x| x == a) => a,
        Some(_) => {
            let allowed = settings.audiences.clone();
            return Ok(Err(DenyReason::AudienceNotAllowed { allowed }));
        }
    };
    if let Some(arn) = request.role_arn.as_deref()
        && !valid_role_arn(arn)
    {
        return Ok(Err(DenyReason::InvalidRoleArn));
    }
    let grant = match request.grant_id.as_deref() {
        None => None,
        Some(id) => match check_grant(state, session, id, now).await? {
            Ok(g) => Some(g),
            Err(reason) => return Ok(Err(reason)),
        },
    };

    // Claims, checked against AWS's tag contract before anything is signed. An agent's tags
    // name only the agent: never its master's wallet, so no tenant-wide rule covers an agent.
    let wallet = if session.is_agent() {
        session.omni.as_str()
    } else {
        session.wallet.as_deref().unwrap_or(session.omni.as_str())
    };
    let subject = if session.is_agent() {
        claims::agent_subject(session.omni.as_str())
    } else {
        claims::master_subject(wallet)
    };
    let mut tag_pairs = vec![
        (claims::USER_WALLET, wallet),
        (claims::ACTOR_OMNI, session.omni.as_str()),
    ];
    if let Some(g) = &grant {
        tag_pairs.push((claims::SCOPE, g.scope()));
    }
    let tags = match AwsSessionTags::new(tag_pairs) {
        Ok(t) => t,
        Err(e) => return Ok(Err(DenyReason::InvalidSessionTag(e.to_string()))),
    };
    // The actor is the session's source identity (CloudTrail's `sourceIdentity`), checked like
    // the tags: a value AWS would refuse is a 4xx here, never a token STS rejects.
    let source_identity = session.omni.as_str();
    if let Err(e) = check_source_identity(source_identity) {
        return Ok(Err(DenyReason::InvalidSessionTag(e.to_string())));
    }

    // The key is picked now, so its kid goes into the audit event; it signs only after the
    // gate's transaction has allowed the mint.
    let Some(signer) = state.keys.current().signer(now) else {
        return Ok(Err(DenyReason::NoSigningKey));
    };
    let claims = Claims {
        iss: &settings.issuer.url,
        sub: subject,
        aud: audience,
        iat: now,
        nbf: now - NBF_BACKDATE_SECONDS,
        exp: now + settings.jwt_ttl_seconds,
        jti: random_id(),
        agentkeys_user_wallet: wallet,
        agentkeys_actor_omni: session.omni.as_str(),
        agentkeys_scope: grant.as_ref().map(|g| g.scope().to_owned()),
        aws_tags: tags,
        aws_roles: request.role_arn.as_deref(),
        aws_source_identity: source_identity,
    };
    Ok(Ok(Permit {
        session,
        claims,
        signer,
        grant,
    }))
}

impl Permit<'_> {
    /// Gates 1, 2, 4 and 5 in one transaction: liveness, the rate limits, the grant's
    /// use and the durable audit event, which names the token's jti, exp and kid. Only if that
    /// transaction allowed the mint and committed is the token signed and released. The
    /// outer error is a signing failure after the commit (the token is withheld).
    pub async fn commit(
        self,
        state: &AppState,
        now: i64,
    ) -> Result<Result<Minted, DenyReason>, MintError> {
        let Permit {
            session,
            claims,
            signer,
            grant,
        } = self;
        let details = json!({
            "jti": claims.jti, "aud": claims.aud, "exp": claims.exp, "kid": signer.kid(),
            "role_arn": claims.aws_roles, "session": session_ref(&session.token_hash),
            "grant": grant.as_ref().map(|g| g.id().to_owned()),
        });
        let on_allow = NewAuditEvent {
            time: now,
            kind: AuditKind::Mint,
            actor: Some(session.omni.to_string()),
            master: Some(master_of(session)),
            outcome: Outcome::Ok,
            details,
        };
        let on_deny = denied_event(now, session, DenyReason::RATE_LIMITED);
        let live = LiveCheck {
            session_token_hash: session.token_hash.clone(),
        };
        let gate = Gate {
            live: Some(live),
            buckets: crate::limits::LimitedAction::Mint {
                actor: session.omni.as_str(),
            }
            .buckets(&state.settings),
            // With a grant, one use is consumed in the same transaction as the audit event.
            grant: grant.as_ref().map(GrantUse::of),
        };
        let gate = gate.append(&*state.store, now, on_allow, on_deny).await;

        match gate {
            Ok(GateOutcome::Allowed { .. }) => {}
            Ok(GateOutcome::GrantUnavailable { .. }) => {
                return Ok(Err(DenyReason::GrantUnavailable));
            }
            Ok(GateOutcome::NotLive { reason, .. }) => return Ok(Err(reason.reason())),
            Ok(GateOutcome::Limited { retry_after, .. }) => {
                return Ok(Err(DenyReason::RateLimited { retry_after }));
            }
            Err(e) => return Ok(Err(DenyReason::AuditFailed(e))),
        }
        // Allowed and recorded: only now is the token signed.
        let body = serde_json::to_vec(&claims).map_err(|e| MintError::Signing(e.into()))?;
        let jwt = signer
            .sign_jwt(&body)
            .map_err(|e| MintError::Signing(e.into()))?;
        metrics::counter!(crate::metrics::MINTS, "outcome" => "ok").increment(1);
        Ok(Ok(Minted {
            jwt,
            expires_at: claims.exp,
            wallet: claims.agentkeys_user_wallet.to_owned(),
            actor_omni: session.omni.to_string(),
        }))
    }
}

/// The mint: [`authorize`], then [`Permit::commit`]. A refusal before the transaction is
/// recorded by [`deny`]; one inside it was recorded by the transaction itself.
pub async fn mint(
    state: &AppState,
    session: &Session,
    request: &MintRequest,
) -> Result<Minted, MintError> {
    let now = state.clock.now();
    let permit = match authorize(state, session, request, now).await? {
        Ok(permit) => permit,
        Err(reason) => return Err(deny(state, session, reason).await),
    };
    match permit.commit(state, now).await? {
        Ok(minted) => Ok(minted),
        // Already recorded by the gate's transaction (or, for an audit failure, not at all).
        Err(reason) => Err(refused(state, session, reason)),
    }
}

/// A grant that, when the mint checked it, existed, was given to this agent, and was
/// unrevoked, unexpired and not used up. Made only by [`check_grant`]; the only way to a
/// [`GrantUse`] in the mint (the gate's transaction consumes the use, re-checking all of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveGrant {
    grant: Grant,
}

impl LiveGrant {
    pub fn id(&self) -> &str {
        &self.grant.id
    }

    /// The `agentkeys_scope` tag: `<master prefix>/<scope>`.
    pub fn scope(&self) -> &str {
        &self.grant.scope
    }

    /// The agent it was given to.
    pub fn agent(&self) -> &OmniAccount {
        &self.grant.agent
    }
}

/// Gate 3 for a named grant: it exists, belongs to this agent, and is live. The use itself is
/// consumed later, atomically with the audit event.
async fn check_grant(
    state: &AppState,
    session: &Session,
    id: &str,
    now: i64,
) -> Result<Result<LiveGrant, DenyReason>, StoreError> {
    if !session.is_agent() {
        return Ok(Err(DenyReason::GrantNotForMasters));
    }
    let Some(grant) = state.store.grant(id).await? else {
        return Ok(Err(DenyReason::GrantUnknown));
    };
    Ok(if grant.agent != session.omni {
        Err(DenyReason::GrantNotYours)
    } else if grant.revoked_at.is_some() {
        Err(DenyReason::GrantRevoked)
    } else if now >= grant.expires_at {
        Err(DenyReason::GrantExpired)
    } else if grant.max_uses.is_some_and(|m| grant.uses >= m) {
        Err(DenyReason::GrantExhausted)
    } else {
        Ok(LiveGrant { grant })
    })
}

#[cfg(test)]
mod tests {
    use super::valid_role_arn;

    proptest::proptest! {
        /// Arbitrary strings never panic; every well-formed ARN of the three partitions, with
        /// or without an account, passes; changing its service, resource type or account
        /// width makes it fail.
        #[test]
        fn role_arns_by_property(
            s in ".{0,120}",
            partition in proptest::sample::select(vec!["aws", "aws-cn", "aws-us-gov"]),
            account in proptest::option::of("[0-9]{12}"),
            name in "([A-Za-z0-9+=,.@_-]{1,16}/){0,3}[A-Za-z0-9+=,.@_-]{1,32}",
            short in "[0-9]{1,11}",
        ) {
            let _ = valid_role_arn(&s);
            let account = account.unwrap_or_default();
            let arn = format!("arn:{partition}:iam::{account}:role/{name}");
            proptest::prop_assert!(valid_role_arn(&arn), "{}", arn);
            let as_user = format!("arn:{partition}:iam::{account}:user/{name}");
            proptest::prop_assert!(!valid_role_arn(&as_user));
            let other_service = format!("arn:{partition}:s3::{account}:role/{name}");
            proptest::prop_assert!(!valid_role_arn(&other_service));
            let short_account = format!("arn:{partition}:iam::{short}:role/{name}");
            proptest::prop_assert!(!valid_role_arn(&short_account));
            let empty_name = format!("arn:{partition}:iam::{account}:role/");
            proptest::prop_assert!(!valid_role_arn(&empty_name));
            proptest::prop_assert!(!valid_role_arn(&format!("{arn}/")), "a path is not a role");
        }
    }

    #[test]
    fn role_arns() {
        for ok in [
            "arn:aws:iam::123456789012:role/agentkeys-data",
            "arn:aws:iam::123456789012:role/path/to/name",
            "arn:aws:iam:::role/agentkeys-data",
            "arn:aws-cn:iam::123456789012:role/x",
        ] {
            assert!(valid_role_arn(ok), "{ok}");
        }
        for bad in [
            "",
            "arn:aws:iam::123:role/x",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:s3:::bucket",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/a b",
            "arn:evil:iam::123456789012:role/x",
        ] {
            assert!(!valid_role_arn(bad), "{bad}");
        }
    }
}
