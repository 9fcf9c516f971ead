//! The one mint path (SPEC §5.2, §6): claims, tag contract, signature, gates, audit.

use agentkeys_store::{ActorKind, Grant, NewAuditEvent, Session, StoreError};
use agentkeys_types::api::MintRequest;
use agentkeys_types::audit::{AuditKind, Outcome};
use agentkeys_types::aws_tags::AwsSessionTags;
use agentkeys_types::claims::{self, NBF_BACKDATE_SECONDS};
use serde::Serialize;
use serde_json::json;

use crate::gate::{Gate, GateOutcome, GrantUse, LiveCheck, NotLive};
use crate::http::error::ApiError;
use crate::metrics::mint_denied;
use crate::session::{random_id, session_ref};
use crate::state::AppState;

/// Why the mint refused: the `reason` of the denial event and of the
/// `agentkeys_mint_denials_total` label ([`DenyReason::as_str`]), and the error the caller gets
/// (`ApiError::from`). Variants carry what their error message needs.
#[derive(Debug)]
pub enum DenyReason {
    /// No live session: revoked, expired or unknown (gate 1).
    Unauthenticated,
    AgentSuspended,
    /// Removed, or no such agent.
    AgentRemoved,
    /// The request body was refused; the error says why.
    InvalidRequest(ApiError),
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
    pub const RATE_LIMITED: &'static str = "rate_limited";

    /// The reason as written into the denial event and the metrics label.
    pub fn as_str(&self) -> &'static str {
        match self {
            DenyReason::Unauthenticated => "unauthenticated",
            DenyReason::AgentSuspended => "agent_suspended",
            DenyReason::AgentRemoved => "agent_removed",
            DenyReason::InvalidRequest(_) => "invalid_request",
            DenyReason::AudienceNotAllowed { .. } => "audience_not_allowed",
            DenyReason::InvalidRoleArn => "invalid_role_arn",
            DenyReason::GrantNotForMasters | DenyReason::GrantNotYours => "grant_not_yours",
            DenyReason::GrantUnknown => "grant_unknown",
            DenyReason::GrantRevoked => "grant_revoked",
            DenyReason::GrantExpired => "grant_expired",
            DenyReason::GrantExhausted => "grant_exhausted",
            DenyReason::InvalidSessionTag(_) => "invalid_session_tag",
            DenyReason::NoSigningKey => "no_signing_key",
            DenyReason::RateLimited { .. } => Self::RATE_LIMITED,
            DenyReason::GrantUnavailable => "grant_unavailable",
            DenyReason::AuditFailed(_) => "audit_failed",
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<DenyReason> for ApiError {
    fn from(reason: DenyReason) -> Self {
        let kind = reason.as_str();
        let forbidden = |message: &str| ApiError::Forbidden {
            kind,
            message: message.to_owned(),
        };
        match reason {
            DenyReason::Unauthenticated => ApiError::Unauthenticated,
            DenyReason::AgentSuspended | DenyReason::AgentRemoved => {
                forbidden(&format!("this agent cannot mint ({kind}); ask its master"))
            }
            DenyReason::InvalidRequest(e) => e,
            DenyReason::AudienceNotAllowed { allowed } => forbidden(&format!(
                "that audience is not in the broker's allow-list ({})",
                allowed.join(", ")
            )),
            DenyReason::InvalidRoleArn => ApiError::BadRequest(
                "role_arn must look like arn:aws:iam::123456789012:role/NAME (or arn:aws:iam:::role/NAME)".into(),
            ),
            DenyReason::GrantNotForMasters => {
                forbidden("grants are used by the agents they were given to, not by masters")
            }
            DenyReason::GrantUnknown => forbidden("no grant has that id"),
            DenyReason::GrantNotYours => forbidden("that grant was given to another agent"),
            DenyReason::GrantRevoked => forbidden("that grant was revoked by its master"),
            DenyReason::GrantExpired => forbidden("that grant has expired"),
            DenyReason::GrantExhausted => forbidden("that grant has no uses left"),
            DenyReason::InvalidSessionTag(message) => ApiError::Unprocessable { kind, message },
            DenyReason::NoSigningKey => ApiError::Unavailable(
                "no active signing key; see `agentkeys-broker keys list`".into(),
            ),
            DenyReason::RateLimited { retry_after } => ApiError::RateLimited { retry_after },
            DenyReason::GrantUnavailable => {
                forbidden("the grant was revoked, expired or used up just now")
            }
            DenyReason::AuditFailed(e) => ApiError::internal(
                anyhow::Error::new(e).context("mint audit append failed; token withheld"),
            ),
        }
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
    agentkeys_scope: Option<&'a str>,
    #[serde(rename = "https://aws.amazon.com/tags")]
    aws_tags: AwsSessionTags,
    #[serde(
        rename = "https://aws.amazon.com/roles",
        skip_serializing_if = "Option::is_none"
    )]
    aws_roles: Option<&'a str>,
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

fn denied_event(
    now: i64,
    session: Option<&Session>,
    reason: &'static str,
    mut details: serde_json::Value,
) -> NewAuditEvent {
    details["reason"] = json!(reason);
    NewAuditEvent {
        time: now,
        kind: AuditKind::Mint,
        actor: session.map(|s| s.omni.to_string()),
        master: session.map(master_of),
        outcome: Outcome::Denied,
        details,
    }
}

fn master_of(s: &Session) -> String {
    s.master.to_string()
}

fn is_agent(s: &Session) -> bool {
    s.kind == ActorKind::Agent
}

/// Records a refusal durably, then returns the error to send. If even the audit write fails
/// the caller gets a 500: a gate failure must not go unrecorded.
pub async fn deny(state: &AppState, session: Option<&Session>, reason: DenyReason) -> ApiError {
    mint_denied(&reason);
    let now = state.clock.now();
    let details = json!({ "session": session.map(|s| session_ref(&s.token_hash).to_owned()) });
    match state
        .store
        .append_audit(denied_event(now, session, reason.as_str(), details))
        .await
    {
        Ok(_) => {
            metrics::counter!(crate::metrics::AUDIT_WRITES, "outcome" => "ok").increment(1);
            reason.into()
        }
        Err(e) => {
            metrics::counter!(crate::metrics::AUDIT_WRITES, "outcome" => "failed").increment(1);
            ApiError::internal(e)
        }
    }
}

/// Gates 3–5 for an authenticated session, then the signed token.
pub async fn mint(
    state: &AppState,
    session: &Session,
    request: &MintRequest,
) -> Result<Minted, ApiError> {
    let now = state.clock.now();
    let settings = &state.settings;

    // Gate 2: an agent must be active (suspension takes effect at its next mint). Checked here
    // to refuse in the order of SPEC §6, and again (with gate 1) inside the gate's transaction
    // below, so a logout, suspension or removal that commits meanwhile still wins.
    if is_agent(session) {
        let status = state.store.agent(&session.omni).await?.map(|a| a.status);
        if let Some(not_live) = NotLive::of_agent(status) {
            return Err(deny(state, Some(session), not_live.reason()).await);
        }
    }

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
            let reason = DenyReason::AudienceNotAllowed { allowed };
            return Err(deny(state, Some(session), reason).await);
        }
    };
    if let Some(arn) = request.role_arn.as_deref()
        && !valid_role_arn(arn)
    {
        return Err(deny(state, Some(session), DenyReason::InvalidRoleArn).await);
    }
    let grant = match request.grant_id.as_deref() {
        None => None,
        Some(id) => match check_grant(state, session, id, now).await? {
            Ok(g) => Some(g),
            Err(reason) => return Err(deny(state, Some(session), reason).await),
        },
    };

    // Claims, checked against AWS's tag contract before anything is signed. An agent's tags
    // name only the agent: never its master's wallet, so no tenant-wide rule covers an agent.
    let wallet = if is_agent(session) {
        session.omni.as_str()
    } else {
        session.wallet.as_deref().unwrap_or(session.omni.as_str())
    };
    let subject = if is_agent(session) {
        claims::agent_subject(session.omni.as_str())
    } else {
        claims::master_subject(wallet)
    };
    let scope = grant.as_ref().map(|g| g.scope.as_str());
    let mut tag_pairs = vec![
        (claims::USER_WALLET, wallet),
        (claims::ACTOR_OMNI, session.omni.as_str()),
    ];
    if let Some(scope) = scope {
        tag_pairs.push((claims::SCOPE, scope));
    }
    let tags = match AwsSessionTags::new(tag_pairs) {
        Ok(t) => t,
        Err(e) => {
            let reason = DenyReason::InvalidSessionTag(e.to_string());
            return Err(deny(state, Some(session), reason).await);
        }
    };
    let jti = random_id();
    let exp = now + settings.jwt_ttl_seconds;
    let claims = Claims {
        iss: &settings.issuer.url,
        sub: subject,
        aud: audience,
        iat: now,
        nbf: now - NBF_BACKDATE_SECONDS,
        exp,
        jti: jti.clone(),
        agentkeys_user_wallet: wallet,
        agentkeys_actor_omni: session.omni.as_str(),
        agentkeys_scope: scope,
        aws_tags: tags,
        aws_roles: request.role_arn.as_deref(),
    };

    let Some(signer) = state.keys.current().signer(now) else {
        return Err(deny(state, Some(session), DenyReason::NoSigningKey).await);
    };
    let body = serde_json::to_vec(&claims).map_err(ApiError::internal)?;
    let jwt = signer.sign_jwt(&body).map_err(ApiError::internal)?;

    // Gates 4 and 5: rate limit and the durable audit event, one transaction. The token is
    // released only after that commit.
    let details = json!({
        "jti": jti, "aud": audience, "exp": exp, "kid": signer.kid(),
        "role_arn": request.role_arn, "session": session_ref(&session.token_hash),
        "grant": grant.as_ref().map(|g| g.id.clone()),
    });
    let on_allow = NewAuditEvent {
        time: now,
        kind: AuditKind::Mint,
        actor: Some(session.omni.to_string()),
        master: Some(master_of(session)),
        outcome: Outcome::Ok,
        details,
    };
    let on_deny = denied_event(
        now,
        Some(session),
        DenyReason::RATE_LIMITED,
        json!({"session": session_ref(&session.token_hash)}),
    );
    let live = LiveCheck {
        session_token_hash: session.token_hash.clone(),
        agent: is_agent(session).then(|| session.omni.clone()),
    };
    let gate = Gate {
        live: Some(live),
        buckets: state
            .mint_windows
            .iter()
            .map(|w| (session.omni.to_string(), *w))
            .collect(),
        // With a grant, one use is consumed in the same transaction as the audit event.
        grant: grant.as_ref().map(|g| GrantUse {
            grant_id: g.id.clone(),
            agent: session.omni.clone(),
        }),
    };
    let gate = gate.append(&*state.store, now, on_allow, on_deny).await;
    let reason = match gate {
        Ok(GateOutcome::Allowed { .. }) => {
            metrics::counter!(crate::metrics::AUDIT_WRITES, "outcome" => "ok").increment(1);
            metrics::counter!(crate::metrics::MINTS, "outcome" => "ok").increment(1);
            return Ok(Minted {
                jwt,
                expires_at: exp,
                wallet: wallet.to_owned(),
                actor_omni: session.omni.to_string(),
            });
        }
        Ok(GateOutcome::GrantUnavailable { .. }) => {
            metrics::counter!(crate::metrics::AUDIT_WRITES, "outcome" => "ok").increment(1);
            DenyReason::GrantUnavailable
        }
        Ok(GateOutcome::NotLive { reason, .. }) => {
            metrics::counter!(crate::metrics::AUDIT_WRITES, "outcome" => "ok").increment(1);
            reason.reason()
        }
        Ok(GateOutcome::Limited { retry_after, .. }) => {
            metrics::counter!(crate::metrics::AUDIT_WRITES, "outcome" => "ok").increment(1);
            DenyReason::RateLimited { retry_after }
        }
        Err(e) => {
            metrics::counter!(crate::metrics::AUDIT_WRITES, "outcome" => "failed").increment(1);
            DenyReason::AuditFailed(e)
        }
    };
    // Already recorded by the gate's transaction (or, for an audit failure, not at all).
    mint_denied(&reason);
    Err(reason.into())
}

/// Gate 3 for a named grant: it exists, belongs to this agent, and is live. The use itself is
/// consumed later, atomically with the audit event.
async fn check_grant(
    state: &AppState,
    session: &Session,
    id: &str,
    now: i64,
) -> Result<Result<Grant, DenyReason>, ApiError> {
    if !is_agent(session) {
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
        Ok(grant)
    })
}

#[cfg(test)]
mod tests {
    use super::{DenyReason, valid_role_arn};
    use crate::http::error::ApiError;
    use axum::http::StatusCode;

    #[test]
    fn deny_reasons_keep_their_strings_and_errors() {
        let cases = [
            (
                DenyReason::Unauthenticated,
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
            ),
            (
                DenyReason::AgentSuspended,
                StatusCode::FORBIDDEN,
                "agent_suspended",
            ),
            (
                DenyReason::AgentRemoved,
                StatusCode::FORBIDDEN,
                "agent_removed",
            ),
            (
                DenyReason::InvalidRequest(ApiError::BadRequest("x".into())),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                DenyReason::AudienceNotAllowed {
                    allowed: vec!["sts.amazonaws.com".into()],
                },
                StatusCode::FORBIDDEN,
                "audience_not_allowed",
            ),
            (
                DenyReason::InvalidRoleArn,
                StatusCode::BAD_REQUEST,
                "invalid_role_arn",
            ),
            (
                DenyReason::GrantNotForMasters,
                StatusCode::FORBIDDEN,
                "grant_not_yours",
            ),
            (
                DenyReason::GrantUnknown,
                StatusCode::FORBIDDEN,
                "grant_unknown",
            ),
            (
                DenyReason::GrantNotYours,
                StatusCode::FORBIDDEN,
                "grant_not_yours",
            ),
            (
                DenyReason::GrantRevoked,
                StatusCode::FORBIDDEN,
                "grant_revoked",
            ),
            (
                DenyReason::GrantExpired,
                StatusCode::FORBIDDEN,
                "grant_expired",
            ),
            (
                DenyReason::GrantExhausted,
                StatusCode::FORBIDDEN,
                "grant_exhausted",
            ),
            (
                DenyReason::InvalidSessionTag("too long".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_session_tag",
            ),
            (
                DenyReason::NoSigningKey,
                StatusCode::SERVICE_UNAVAILABLE,
                "no_signing_key",
            ),
            (
                DenyReason::RateLimited { retry_after: 7 },
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
            ),
            (
                DenyReason::GrantUnavailable,
                StatusCode::FORBIDDEN,
                "grant_unavailable",
            ),
            (
                DenyReason::AuditFailed(agentkeys_store::StoreError::Database("x".into())),
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit_failed",
            ),
        ];
        for (reason, status, label) in cases {
            assert_eq!(reason.as_str(), label);
            let error = ApiError::from(reason);
            assert_eq!(error.status_and_kind().0, status, "{label}");
            // A 403 or 422 names the reason as its error kind.
            if matches!(
                status,
                StatusCode::FORBIDDEN | StatusCode::UNPROCESSABLE_ENTITY
            ) {
                assert_eq!(error.status_and_kind().1, label);
            }
        }
        assert_eq!(DenyReason::RATE_LIMITED, "rate_limited");
        let e = ApiError::from(DenyReason::AgentSuspended);
        assert_eq!(
            e.to_string(),
            "this agent cannot mint (agent_suspended); ask its master"
        );
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
