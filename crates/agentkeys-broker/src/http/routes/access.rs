//! Access requests: an agent asks its master for a grant (`grants request` in the CLI) and
//! waits; the master approves or denies. A master with a wallet approves with a fresh signature
//! over a message naming the request, its agent, scope, uses and expiry, so a stolen session
//! cannot approve anything and the approval is audited with its signature; a master without a
//! wallet (email or OIDC) approves with its session.

use std::collections::HashMap;

use agentkeys_store::{AccessDecision, AccessRequest, Agent, Grant, Session};
use agentkeys_types::OmniAccount;
use agentkeys_types::api::{
    AccessApproval, AccessApproveRequest, AccessRequestCreate, AccessRequestInfo,
    AccessRequestList, AccessRequestStatus, ChallengePurpose,
};
use agentkeys_types::audit::{AuditKind, Outcome};
use agentkeys_types::pairing::valid_label;
use axum::extract::{Path, Query, State};
use serde_json::json;

use super::event;
use super::grants::{MAX_GRANT_SECONDS, exposure, info as grant_info, normalize_scope};
use crate::access::{self, OpenOutcome, PendingRequest};
use crate::clock::rfc3339;
use crate::http::error::ApiError;
use crate::http::extract::{AuthSession, Json, MasterSession, OptionalJson};
use crate::session::{random_id, session_ref};
use crate::state::AppState;

/// How far ahead of the broker's clock an approver's may be: it computes the grant's end as its
/// now + the requested TTL before signing.
const CLOCK_SKEW_SECONDS: i64 = 120;

fn status_at(r: &AccessRequest, now: i64) -> AccessRequestStatus {
    match r.decision {
        Some(AccessDecision::Approved) => AccessRequestStatus::Approved,
        Some(AccessDecision::Denied) => AccessRequestStatus::Denied,
        None if now >= r.expires_at => AccessRequestStatus::Expired,
        None => AccessRequestStatus::Pending,
    }
}

/// The master's prefix: its wallet, or its omni for a wallet-less master (as grants use it).
fn prefix(master: &Session) -> &str {
    master.wallet.as_deref().unwrap_or(master.omni.as_str())
}

async fn info(
    state: &AppState,
    r: &AccessRequest,
    agent: Option<&Agent>,
    master: Option<&Session>,
    now: i64,
) -> Result<AccessRequestInfo, ApiError> {
    let grant = match &r.grant_id {
        Some(id) => state.store.grant(id).await?,
        None => None,
    };
    Ok(AccessRequestInfo {
        request_id: r.id.clone(),
        agent: r.agent.to_string(),
        agent_label: agent.map(|a| a.label.clone()).unwrap_or_default(),
        device_address: agent.map(|a| a.device_address.clone()).unwrap_or_default(),
        scope: format!("{}/", r.scope),
        scope_tag: master.map(|m| format!("{}/{}", prefix(m), r.scope)),
        max_uses: r.max_uses.map(|m| m as u32),
        ttl_seconds: r.ttl_seconds as u64,
        reason: r.reason.clone(),
        status: status_at(r, now),
        created_at: rfc3339(r.created_at),
        expires_at: rfc3339(r.expires_at),
        decided_at: r.decided_at.map(rfc3339),
        grant: grant.as_ref().map(|g| grant_info(state, g)),
        worst_case_exposure: exposure(state),
    })
}

fn not_found() -> ApiError {
    ApiError::NotFound("no access request of yours has that id; see GET /v1/access-requests".into())
}

/// Only the shape of a wallet approval's fields, so the challenge's message is well-formed:
/// whether they are the request's own is checked when the signature is used.
pub(crate) fn check_approval_shape(a: &AccessApproval) -> Result<(), ApiError> {
    let bad = |what: &str| ApiError::BadRequest(format!("purpose.approve_access.{what}"));
    if a.request_id.len() != 32 || !a.request_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("request_id is the request's 32-hex id"));
    }
    if a.agent.parse::<OmniAccount>().is_err() {
        return Err(bad("agent is the agent's omni (64 hex)"));
    }
    if !valid_label(&a.agent_label) {
        return Err(bad("agent_label is the agent's label"));
    }
    let tag_ok = (3..=250).contains(&a.scope_tag.len())
        && a.scope_tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if !tag_ok {
        return Err(bad(
            "scope_tag is the request's scope tag, <prefix>/<scope>",
        ));
    }
    if parse_time(&a.expires_at).is_none() {
        return Err(bad("expires_at is an RFC 3339 time"));
    }
    Ok(())
}

fn parse_time(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Agents only: ask the master for a grant of `scope`. The answer's `request_id` is polled with
/// `GET /v1/access-requests/{request_id}` until it is approved (the grant is in it), denied or
/// expired.
#[utoipa::path(post, path = "/v1/access-requests", tag = "access", security(("bearer" = [])),
    request_body = AccessRequestCreate,
    responses(
        (status = 200, body = AccessRequestInfo),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 403, body = agentkeys_types::ErrorBody, description = "Not an agent, or the agent is suspended"),
        (status = 409, body = agentkeys_types::ErrorBody, description = "Too many requests waiting (BROKER_ACCESS_REQUEST_MAX_PENDING)")))]
pub async fn create(
    State(state): State<AppState>,
    AuthSession(s): AuthSession,
    Json(req): Json<AccessRequestCreate>,
) -> Result<axum::Json<AccessRequestInfo>, ApiError> {
    if !s.is_agent() {
        return Err(ApiError::Forbidden {
            kind: agentkeys_types::ErrorKind::AgentsOnly,
            message:
                "only an agent asks for access; a master grants it directly with POST /v1/grants"
                    .into(),
        });
    }
    let limits = state.settings.access_requests;
    let scope = normalize_scope(&req.scope).ok_or_else(|| {
        ApiError::BadRequest(
            "scope is a relative path such as inbox/ (letters, digits, ._- and /)".into(),
        )
    })?;
    if req.ttl_seconds == 0 || req.ttl_seconds > MAX_GRANT_SECONDS as u64 {
        return Err(ApiError::BadRequest(
            "ttl_seconds is the grant's lifetime, 1 s to a year".into(),
        ));
    }
    if req.max_uses == Some(0) {
        return Err(ApiError::BadRequest(
            "max_uses, when given, is at least 1".into(),
        ));
    }
    let reason = req.reason.trim();
    if reason.is_empty() {
        return Err(ApiError::BadRequest(
            "reason is required: say why the agent needs this access".into(),
        ));
    }
    if reason.len() > limits.reason_max_bytes {
        return Err(ApiError::BadRequest(format!(
            "reason is at most {} bytes (BROKER_ACCESS_REQUEST_REASON_MAX_BYTES)",
            limits.reason_max_bytes
        )));
    }
    if reason.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "reason is one line of text, without control characters".into(),
        ));
    }
    let now = state.clock.now();
    let request = AccessRequest {
        id: random_id(),
        agent: s.omni.clone(),
        master: s.master.clone(),
        scope,
        max_uses: req.max_uses.map(i64::from),
        ttl_seconds: req.ttl_seconds as i64,
        reason: reason.to_owned(),
        created_at: now,
        expires_at: now + limits.ttl_seconds,
        decision: None,
        decided_at: None,
        grant_id: None,
    };
    let (a, m) = (Some(s.omni.as_str()), Some(s.master.as_str()));
    let details = json!({
        "request": request.id, "scope": request.scope, "max_uses": req.max_uses,
        "ttl_seconds": req.ttl_seconds, "reason": request.reason,
    });
    let allowed = event(
        now,
        AuditKind::AccessRequested,
        a,
        m,
        Outcome::Ok,
        details.clone(),
    );
    let mut denied = event(
        now,
        AuditKind::AccessRequested,
        a,
        m,
        Outcome::Denied,
        details,
    );
    denied.details["reason_denied"] = json!("too_many_pending");
    let stored = request.clone();
    let max = limits.max_pending;
    let opened = state
        .store
        .transact(move |tx| access::open(tx, &stored, max, &allowed, &denied))
        .await?;
    match opened {
        OpenOutcome::Opened => {
            let agent = state.store.agent(&s.omni).await?;
            Ok(axum::Json(
                info(&state, &request, agent.as_ref(), None, now).await?,
            ))
        }
        OpenOutcome::TooManyPending(n) => Err(ApiError::Conflict(format!(
            "this agent already has {n} access requests waiting for its master \
             (BROKER_ACCESS_REQUEST_MAX_PENDING); wait for a decision or for one to expire"
        ))),
        OpenOutcome::NotActive => Err(ApiError::Forbidden {
            kind: agentkeys_types::ErrorKind::AgentSuspended,
            message: "this agent is suspended or removed; ask its master".into(),
        }),
    }
}

/// A master's access requests (to all its agents), or an agent's own; `status` filters.
#[utoipa::path(get, path = "/v1/access-requests", tag = "access", security(("bearer" = [])),
    params(("status" = Option<String>, Query, description = "Only requests in this status: pending, approved, denied or expired")),
    responses((status = 200, body = AccessRequestList), (status = 400, body = agentkeys_types::ErrorBody),
        (status = 401, body = agentkeys_types::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    AuthSession(s): AuthSession,
    Query(params): Query<HashMap<String, String>>,
) -> Result<axum::Json<AccessRequestList>, ApiError> {
    let wanted = match params.get("status").map(String::as_str) {
        None => None,
        Some("pending") => Some(AccessRequestStatus::Pending),
        Some("approved") => Some(AccessRequestStatus::Approved),
        Some("denied") => Some(AccessRequestStatus::Denied),
        Some("expired") => Some(AccessRequestStatus::Expired),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "status is pending, approved, denied or expired".into(),
            ));
        }
    };
    if let Some(other) = params.keys().find(|k| k.as_str() != "status") {
        return Err(ApiError::BadRequest(format!(
            "unknown query parameter {:?}; only status",
            other.chars().take(40).collect::<String>()
        )));
    }
    let now = state.clock.now();
    let (requests, agents, master) = if s.is_agent() {
        let requests = state.store.access_requests_of(None, Some(&s.omni)).await?;
        let agent = state.store.agent(&s.omni).await?;
        (requests, agent.into_iter().collect::<Vec<_>>(), None)
    } else {
        let requests = state.store.access_requests_of(Some(&s.omni), None).await?;
        (requests, state.store.agents_of(&s.omni).await?, Some(&s))
    };
    let mut out = Vec::new();
    for r in requests
        .iter()
        .filter(|r| wanted.is_none_or(|w| status_at(r, now) == w))
    {
        let agent = agents.iter().find(|a| a.omni == r.agent);
        out.push(info(&state, r, agent, master, now).await?);
    }
    Ok(axum::Json(AccessRequestList { requests: out }))
}

/// One access request: its agent's, or its master's. An agent polls this until it is decided.
#[utoipa::path(get, path = "/v1/access-requests/{request_id}", tag = "access", security(("bearer" = [])),
    params(("request_id" = String, Path, description = "The request's id")),
    responses((status = 200, body = AccessRequestInfo), (status = 404, body = agentkeys_types::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    AuthSession(s): AuthSession,
    Path(request_id): Path<String>,
) -> Result<axum::Json<AccessRequestInfo>, ApiError> {
    let r = state
        .store
        .access_request(&request_id)
        .await?
        .filter(|r| {
            if s.is_agent() {
                r.agent == s.omni
            } else {
                r.master == s.omni
            }
        })
        .ok_or_else(not_found)?;
    let agent = state.store.agent(&r.agent).await?;
    let master = (!s.is_agent()).then_some(&s);
    let now = state.clock.now();
    Ok(axum::Json(
        info(&state, &r, agent.as_ref(), master, now).await?,
    ))
}

/// Approve an access request: it becomes a grant to the agent, which its waiting command
/// receives. A master with a wallet sends `wallet_proof` (a signature over a challenge whose
/// purpose is `approve_access` naming this request's id, agent, label, scope tag, uses and the
/// `expires_at` it also sends); a master without one approves with its session alone.
#[utoipa::path(post, path = "/v1/access-requests/{request_id}/approve", tag = "access", security(("bearer" = [])),
    params(("request_id" = String, Path, description = "The request's id")),
    request_body = AccessApproveRequest,
    responses(
        (status = 200, body = AccessRequestInfo),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 403, body = agentkeys_types::ErrorBody, description = "A wallet master without a valid wallet signature"),
        (status = 404, body = agentkeys_types::ErrorBody),
        (status = 409, body = agentkeys_types::ErrorBody, description = "Already decided, or expired")))]
pub async fn approve(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
    Path(request_id): Path<String>,
    OptionalJson(body): OptionalJson<AccessApproveRequest>,
) -> Result<axum::Json<AccessRequestInfo>, ApiError> {
    let now = state.clock.now();
    let request = pending_of(&state, &master, &request_id, now).await?;
    let agent = state
        .store
        .agent(&request.agent)
        .await?
        .ok_or_else(not_found)?;
    let scope_tag = format!("{}/{}", prefix(&master), request.scope);
    let m = master.omni.as_str();
    let (expires_at, how) = match (master.wallet.as_deref(), body.wallet_proof) {
        (Some(wallet), Some(proof)) => {
            let signed = body.expires_at.ok_or_else(|| {
                ApiError::BadRequest(
                    "expires_at is required with a wallet proof: the time the signed message names"
                        .into(),
                )
            })?;
            let at = parse_time(&signed)
                .filter(|&t| t > now && t <= now + request.ttl_seconds + CLOCK_SKEW_SECONDS)
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "expires_at is an RFC 3339 time in the future, at most the requested \
                         ttl_seconds from now (give or take two minutes of clock skew)"
                            .into(),
                    )
                })?;
            let purpose = ChallengePurpose::ApproveAccess(AccessApproval {
                request_id: request.id.clone(),
                agent_label: agent.label.clone(),
                agent: agent.omni.to_string(),
                scope_tag: scope_tag.clone(),
                max_uses: request.max_uses.map(|n| n as u32),
                expires_at: signed,
            });
            match super::auth::wallet_proof(&state, wallet, &proof, &purpose).await? {
                Ok(message) => (
                    at,
                    json!({"by": "wallet", "wallet": wallet, "challenge_id": proof.challenge_id,
                           "signature": proof.signature, "message": message}),
                ),
                Err(reason) => {
                    let details = json!({"request": request.id, "reason": reason});
                    let failed = event(
                        now,
                        AuditKind::AccessApproved,
                        Some(m),
                        Some(m),
                        Outcome::Failed,
                        details,
                    );
                    state.store.append_audit(failed).await?;
                    return Err(ApiError::Forbidden {
                        kind: agentkeys_types::ErrorKind::StepUpFailed,
                        message: format!(
                            "approving needs a fresh signature by this master's wallet over the \
                             approval message: {reason}"
                        ),
                    });
                }
            }
        }
        (Some(_), None) => {
            return Err(ApiError::Forbidden {
                kind: agentkeys_types::ErrorKind::StepUpFailed,
                message: "a master with a wallet approves with its wallet: sign a challenge from \
                          POST /v1/auth/wallet/challenge with purpose approve_access and send it \
                          as wallet_proof with expires_at"
                    .into(),
            });
        }
        (None, Some(_)) => {
            return Err(ApiError::BadRequest(
                "this master has no wallet; approve with the session alone (no wallet_proof)"
                    .into(),
            ));
        }
        (None, None) => (
            now + request.ttl_seconds,
            json!({"by": "session", "session": session_ref(&master.token_hash)}),
        ),
    };
    let grant = Grant {
        id: random_id(),
        master: master.omni.clone(),
        agent: request.agent.clone(),
        scope: scope_tag,
        created_at: now,
        expires_at,
        max_uses: request.max_uses,
        uses: 0,
        revoked_at: None,
    };
    let created = event(
        now,
        AuditKind::GrantCreated,
        Some(m),
        Some(m),
        Outcome::Ok,
        json!({"grant": grant.id, "agent": grant.agent, "scope": grant.scope,
               "expires_at": expires_at, "max_uses": grant.max_uses, "request": request.id}),
    );
    let mut details = json!({"request": request.id, "agent": request.agent, "scope": grant.scope,
        "max_uses": grant.max_uses, "expires_at": expires_at, "grant": grant.id});
    if let (Some(d), Some(h)) = (details.as_object_mut(), how.as_object()) {
        d.extend(h.clone());
    }
    let approved = event(
        now,
        AuditKind::AccessApproved,
        Some(m),
        Some(m),
        Outcome::Ok,
        details,
    );
    let (master_omni, id) = (master.omni.clone(), request.id.clone());
    let made = state
        .store
        .transact(move |tx| {
            let Some(pending) = PendingRequest::check(tx, &master_omni, &id, now)? else {
                return Ok(None);
            };
            access::approve(tx, pending, grant, now, &created, &approved).map(Some)
        })
        .await?;
    if made.is_none() {
        return Err(ApiError::Conflict(
            "this request was decided, expired, or its agent removed meanwhile".into(),
        ));
    }
    let decided = state
        .store
        .access_request(&request.id)
        .await?
        .ok_or_else(not_found)?;
    Ok(axum::Json(
        info(&state, &decided, Some(&agent), Some(&master), now).await?,
    ))
}

/// The request as read before deciding: this master's and still pending, or the answer to
/// send. The transaction checks both again (`PendingRequest::check`); this gives the error.
async fn pending_of(
    state: &AppState,
    master: &Session,
    request_id: &str,
    now: i64,
) -> Result<AccessRequest, ApiError> {
    let request = state
        .store
        .access_request(request_id)
        .await?
        .filter(|r| r.master == master.omni)
        .ok_or_else(not_found)?;
    undecided(&request, now)?;
    Ok(request)
}

fn undecided(r: &AccessRequest, now: i64) -> Result<(), ApiError> {
    match status_at(r, now) {
        AccessRequestStatus::Pending => Ok(()),
        other => Err(ApiError::Conflict(format!(
            "this request is {}; only a pending request can be decided",
            other.as_str()
        ))),
    }
}

/// Deny an access request; the agent's waiting command says so.
#[utoipa::path(post, path = "/v1/access-requests/{request_id}/deny", tag = "access", security(("bearer" = [])),
    params(("request_id" = String, Path, description = "The request's id")),
    responses(
        (status = 200, body = AccessRequestInfo),
        (status = 404, body = agentkeys_types::ErrorBody),
        (status = 409, body = agentkeys_types::ErrorBody, description = "Already decided, or expired")))]
pub async fn deny(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
    Path(request_id): Path<String>,
) -> Result<axum::Json<AccessRequestInfo>, ApiError> {
    let now = state.clock.now();
    let request = pending_of(&state, &master, &request_id, now).await?;
    let m = master.omni.as_str();
    let denied = event(
        now,
        AuditKind::AccessDenied,
        Some(m),
        Some(m),
        Outcome::Ok,
        json!({"request": request.id, "agent": request.agent, "scope": request.scope,
               "session": session_ref(&master.token_hash)}),
    );
    let (master_omni, id) = (master.omni.clone(), request.id.clone());
    let decided = state
        .store
        .transact(
            move |tx| match PendingRequest::check(tx, &master_omni, &id, now)? {
                Some(pending) => access::deny(tx, pending, now, &denied),
                None => Ok(false),
            },
        )
        .await?;
    if !decided {
        return Err(ApiError::Conflict(
            "this request was decided or expired meanwhile".into(),
        ));
    }
    let r = state
        .store
        .access_request(&request.id)
        .await?
        .ok_or_else(not_found)?;
    let agent = state.store.agent(&r.agent).await?;
    Ok(axum::Json(
        info(&state, &r, agent.as_ref(), Some(&master), now).await?,
    ))
}
