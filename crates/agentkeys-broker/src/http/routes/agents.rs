//! Agent pairing (device side and master side) and the agent lifecycle.

use agentkeys_store::{Agent, PairingRequest, Session};
use agentkeys_types::OmniAccount;
use agentkeys_types::WalletAddress;
use agentkeys_types::api::{
    AgentInfo, AgentList, AgentSessionRequest, AgentStatus, PairingApproveRequest,
    PairingCodeRequest, PairingPending, PairingPollRequest, PairingPollResponse,
    PairingStartRequest, PairingStartResponse, PairingStatus, SessionIssued,
};
use agentkeys_types::audit::{AuditKind, Outcome};
use agentkeys_types::pairing::{ProofAction, display_code, normalize_code, valid_label};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::json;

use super::event;
use crate::agents::{self, ApproveOutcome, ClaimOutcome, ProofError, RenewOutcome};
use crate::clock::rfc3339;
use crate::gate::{Gate, GateOutcome};
use crate::http::client_ip::ClientIp;
use crate::http::error::ApiError;
use crate::http::extract::{Json, MasterSession};
use crate::http::limit;
use crate::limits::LimitedAction;
use crate::session::SessionSlot;
use crate::session::{new_token, random_id, session_ref};
use crate::state::AppState;

fn proof_error(e: ProofError) -> ApiError {
    match e {
        ProofError::Malformed => ApiError::BadRequest(e.to_string()),
        ProofError::Skewed | ProofError::WrongSigner => ApiError::SignInFailed(e.to_string()),
    }
}

pub fn agent_info(a: &Agent) -> AgentInfo {
    AgentInfo {
        agent_omni: a.omni.to_string(),
        label: a.label.clone(),
        device_address: a.device_address.clone(),
        status: a.status,
        created_at: rfc3339(a.created_at),
    }
}

/// Device side: open a pairing request with proof of possession of the device key.
#[utoipa::path(post, path = "/v1/agents/pairing", tag = "agents",
    request_body = PairingStartRequest,
    responses(
        (status = 200, body = PairingStartResponse),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 401, body = agentkeys_types::ErrorBody)))]
pub async fn pairing_start(
    State(state): State<AppState>,
    Json(req): Json<PairingStartRequest>,
) -> Result<axum::Json<PairingStartResponse>, ApiError> {
    let device: WalletAddress = req
        .device_address
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("device_address: {e}")))?;
    let now = state.clock.now();
    let issuer = &state.settings.issuer.url;
    agents::verify_proof(
        issuer,
        ProofAction::Pair,
        &device,
        None,
        req.timestamp_ms,
        &req.signature,
        now,
    )
    .map_err(proof_error)?;
    let request = PairingRequest {
        id: random_id(),
        code: agents::new_code(),
        device_address: device.to_string(),
        created_at: now,
        expires_at: now + agents::PAIRING_TTL_SECONDS,
        last_proof_ms: req.timestamp_ms,
        agent: None,
        claimed_at: None,
    };
    let details = json!({"pairing_id": request.id, "device": request.device_address});
    let requested = event(
        now,
        AuditKind::AgentPairingRequested,
        None,
        None,
        Outcome::Ok,
        details,
    );
    let stored = request.clone();
    state
        .store
        .transact(move |tx| {
            tx.insert_pairing(&stored)?;
            tx.append(&requested)
        })
        .await?;
    Ok(axum::Json(PairingStartResponse {
        pairing_id: request.id,
        code: display_code(&request.code),
        expires_at: rfc3339(request.expires_at),
        poll_interval_seconds: agents::POLL_INTERVAL_SECONDS,
    }))
}

/// Master side: approve a device's code under a label; creates the agent.
#[utoipa::path(post, path = "/v1/agents/pairing/approve", tag = "agents", security(("bearer" = [])),
    request_body = PairingApproveRequest,
    responses(
        (status = 200, body = AgentInfo),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 404, body = agentkeys_types::ErrorBody),
        (status = 409, body = agentkeys_types::ErrorBody),
        (status = 429, body = agentkeys_types::ErrorBody)))]
pub async fn pairing_approve(
    State(state): State<AppState>,
    ip: ClientIp,
    MasterSession(master): MasterSession,
    Json(req): Json<PairingApproveRequest>,
) -> Result<axum::Json<AgentInfo>, ApiError> {
    if !valid_label(&req.label) {
        return Err(ApiError::BadRequest(
            "label is 1-32 characters of a-z, 0-9 and '-'".into(),
        ));
    }
    let code = count_attempt(&state, ip, &master, &req.code, json!({"label": req.label})).await?;
    let now = state.clock.now();
    let m = master.omni.as_str();
    let agent_omni = OmniAccount::for_agent(&master.omni, &req.label).to_string();
    let paired = event(
        now,
        AuditKind::AgentPaired,
        Some(m),
        Some(m),
        Outcome::Ok,
        json!({"agent": agent_omni, "label": req.label}),
    );
    let (master_omni, label) = (master.omni.clone(), req.label.clone());
    let approved = state
        .store
        .transact(move |tx| agents::approve(tx, &code, &master_omni, &label, now, &paired))
        .await?;
    match approved {
        ApproveOutcome::Approved(agent) => Ok(axum::Json(agent_info(&agent))),
        ApproveOutcome::UnknownCode => Err(no_pending_code()),
        ApproveOutcome::LabelTaken => Err(ApiError::Conflict(format!(
            "you already have (or had) an agent labelled {:?}; labels name an agent's identity and are never reused",
            req.label
        ))),
    }
}

/// Device side: poll a pairing request; after approval, the first poll returns the agent's
/// session (once).
#[utoipa::path(post, path = "/v1/agents/pairing/poll", tag = "agents",
    request_body = PairingPollRequest,
    responses(
        (status = 200, body = PairingPollResponse, description = "Approved: carries the session"),
        (status = 202, body = PairingPollResponse, description = "Still pending"),
        (status = 401, body = agentkeys_types::ErrorBody),
        (status = 404, body = agentkeys_types::ErrorBody),
        (status = 409, body = agentkeys_types::ErrorBody)))]
pub async fn pairing_poll(
    State(state): State<AppState>,
    Json(req): Json<PairingPollRequest>,
) -> Result<(StatusCode, axum::Json<PairingPollResponse>), ApiError> {
    let gone =
        || ApiError::NotFound("unknown or expired pairing request; start pairing again".into());
    if req.pairing_id.len() != 32 || !req.pairing_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(
            "pairing_id is the 32-hex id returned when pairing started".into(),
        ));
    }
    let request = state
        .store
        .pairing(&req.pairing_id)
        .await?
        .ok_or_else(gone)?;
    let device: WalletAddress = request.device_address.parse().map_err(ApiError::internal)?;
    let now = state.clock.now();
    let issuer = &state.settings.issuer.url;
    agents::verify_proof(
        issuer,
        ProofAction::Poll,
        &device,
        Some(&request.id),
        req.timestamp_ms,
        &req.signature,
        now,
    )
    .map_err(proof_error)?;

    let token = new_token();
    let expires_at = now + state.settings.session_ttl_seconds;
    let slot = SessionSlot {
        token_hash: token.hash.clone(),
        created_at: now,
        expires_at,
    };
    let owner = match &request.agent {
        Some(omni) => state.store.agent(omni).await?.map(|a| a.master.to_string()),
        None => None,
    };
    let issued = event(
        now,
        AuditKind::AgentSessionIssued,
        request.agent.as_ref().map(OmniAccount::as_str),
        owner.as_deref(),
        Outcome::Ok,
        json!({"pairing_id": request.id, "session": session_ref(&token.hash)}),
    );
    let proof_ms = req.timestamp_ms;
    let claimed = state
        .store
        .transact(move |tx| agents::claim(tx, &request.id, proof_ms, now, &slot, &issued))
        .await?;
    match claimed {
        ClaimOutcome::Pending => Ok((
            StatusCode::ACCEPTED,
            axum::Json(PairingPollResponse {
                status: PairingStatus::Pending,
                session: None,
                agent: None,
            }),
        )),
        ClaimOutcome::Claimed(agent) => Ok((
            StatusCode::OK,
            axum::Json(PairingPollResponse {
                status: PairingStatus::Approved,
                session: Some(SessionIssued {
                    session_token: token.token,
                    expires_at: rfc3339(expires_at),
                    omni_account: agent.omni.to_string(),
                    wallet: None,
                }),
                agent: Some(agent_info(&agent)),
            }),
        )),
        ClaimOutcome::AlreadyClaimed => Err(ApiError::Conflict(
            "this pairing's session was already delivered; pair again if it was lost".into(),
        )),
        ClaimOutcome::StaleProof => Err(ApiError::SignInFailed(
            "the proof's timestamp is not later than the previous poll's (a replay?)".into(),
        )),
        ClaimOutcome::Gone => Err(gone()),
    }
}

/// One master's attempt at a pairing code (approve, look up, deny): codes are short, so every
/// attempt counts against the per-master limit and is audited; since masters are free (anyone
/// can make a wallet), attempts are limited per client IP and overall too, in memory, before
/// anything is read or written. The code, normalised.
async fn count_attempt(
    state: &AppState,
    ip: ClientIp,
    master: &Session,
    code: &str,
    mut details: serde_json::Value,
) -> Result<String, ApiError> {
    limit::admit(state, &state.approve_limiter, "pairing_approve", ip)?;
    let code = normalize_code(code).ok_or_else(|| {
        ApiError::BadRequest("code is the 8-character code the agent shows, e.g. ABCD-EFGH".into())
    })?;
    let now = state.clock.now();
    let m = master.omni.as_str();
    details["session"] = json!(session_ref(&master.token_hash));
    let attempt = event(
        now,
        AuditKind::AgentApproveAttempt,
        Some(m),
        Some(m),
        Outcome::Ok,
        details.clone(),
    );
    let mut denied = event(
        now,
        AuditKind::AgentApproveAttempt,
        Some(m),
        Some(m),
        Outcome::Denied,
        details,
    );
    denied.details["reason"] = json!("rate_limited");
    if let GateOutcome::Limited { retry_after, .. } =
        Gate::limits(LimitedAction::PairingApproval { master: m }.buckets(&state.settings))
            .append(&*state.store, now, attempt, denied)
            .await?
    {
        return Err(ApiError::RateLimited { retry_after });
    }
    Ok(code)
}

fn no_pending_code() -> ApiError {
    ApiError::NotFound(
        "no pending pairing request has that code; codes expire after 10 minutes, ask the agent for a new one".into(),
    )
}

/// Master side: which device a pairing code names (its address), before approving or denying.
/// Counted and limited as approvals are.
#[utoipa::path(post, path = "/v1/agents/pairing/lookup", tag = "agents", security(("bearer" = [])),
    request_body = PairingCodeRequest,
    responses(
        (status = 200, body = PairingPending),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 404, body = agentkeys_types::ErrorBody),
        (status = 429, body = agentkeys_types::ErrorBody)))]
pub async fn pairing_lookup(
    State(state): State<AppState>,
    ip: ClientIp,
    MasterSession(master): MasterSession,
    Json(req): Json<PairingCodeRequest>,
) -> Result<axum::Json<PairingPending>, ApiError> {
    let code = count_attempt(&state, ip, &master, &req.code, json!({"action": "lookup"})).await?;
    let now = state.clock.now();
    let found = state
        .store
        .transact(move |tx| tx.pending_pairing(&code, now))
        .await?
        .ok_or_else(no_pending_code)?;
    Ok(axum::Json(PairingPending {
        code: display_code(&found.code),
        device_address: found.device_address,
        created_at: rfc3339(found.created_at),
        expires_at: rfc3339(found.expires_at),
    }))
}

/// Master side: refuse a device's pairing code; its polls then find the request gone.
#[utoipa::path(post, path = "/v1/agents/pairing/deny", tag = "agents", security(("bearer" = [])),
    request_body = PairingCodeRequest,
    responses(
        (status = 204, description = "Refused"),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 404, body = agentkeys_types::ErrorBody),
        (status = 429, body = agentkeys_types::ErrorBody)))]
pub async fn pairing_deny(
    State(state): State<AppState>,
    ip: ClientIp,
    MasterSession(master): MasterSession,
    Json(req): Json<PairingCodeRequest>,
) -> Result<StatusCode, ApiError> {
    let code = count_attempt(&state, ip, &master, &req.code, json!({"action": "deny"})).await?;
    let now = state.clock.now();
    let m = master.omni.as_str();
    let denied = event(
        now,
        AuditKind::AgentPairingDenied,
        Some(m),
        Some(m),
        Outcome::Ok,
        json!({"session": session_ref(&master.token_hash)}),
    );
    let done = state
        .store
        .transact(move |tx| agents::deny_pairing(tx, &code, now, &denied))
        .await?;
    if done {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_pending_code())
    }
}

/// Device side, after pairing: a new session for an existing agent, proved by its device key
/// (the session expired or was logged out). The agent keeps its identity and its prefix.
#[utoipa::path(post, path = "/v1/agents/session", tag = "agents",
    request_body = AgentSessionRequest,
    responses(
        (status = 200, body = SessionIssued),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 401, body = agentkeys_types::ErrorBody),
        (status = 403, body = agentkeys_types::ErrorBody)))]
pub async fn agent_session(
    State(state): State<AppState>,
    Json(req): Json<AgentSessionRequest>,
) -> Result<axum::Json<SessionIssued>, ApiError> {
    let refused =
        || ApiError::SignInFailed("unknown agent, or the proof is not from its device key".into());
    let omni: OmniAccount = req
        .agent_omni
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("agent_omni: {e}")))?;
    let agent = state.store.agent(&omni).await?.ok_or_else(refused)?;
    let device: WalletAddress = agent.device_address.parse().map_err(ApiError::internal)?;
    let now = state.clock.now();
    let issuer = &state.settings.issuer.url;
    agents::verify_proof(
        issuer,
        ProofAction::Session,
        &device,
        Some(omni.as_str()),
        req.timestamp_ms,
        &req.signature,
        now,
    )
    .map_err(|e| match e {
        ProofError::Malformed => ApiError::BadRequest(e.to_string()),
        _ => refused(),
    })?;
    let token = new_token();
    let expires_at = now + state.settings.session_ttl_seconds;
    let slot = SessionSlot {
        token_hash: token.hash.clone(),
        created_at: now,
        expires_at,
    };
    let issued = event(
        now,
        AuditKind::AgentSessionIssued,
        Some(agent.omni.as_str()),
        Some(agent.master.as_str()),
        Outcome::Ok,
        json!({"by": "device_proof", "session": session_ref(&token.hash)}),
    );
    let proof_ms = req.timestamp_ms;
    let renewed = state
        .store
        .transact(move |tx| agents::renew(tx, &omni, proof_ms, &slot, &issued))
        .await?;
    match renewed {
        RenewOutcome::Issued(a) => Ok(axum::Json(SessionIssued {
            session_token: token.token,
            expires_at: rfc3339(expires_at),
            omni_account: a.omni.to_string(),
            wallet: None,
        })),
        RenewOutcome::NotActive(a) => {
            let (kind, status) = if a.status == AgentStatus::Suspended {
                (agentkeys_types::ErrorKind::AgentSuspended, "suspended")
            } else {
                (agentkeys_types::ErrorKind::AgentRemoved, "removed")
            };
            Err(ApiError::Forbidden {
                kind,
                message: format!("this agent is {status}; ask its master"),
            })
        }
        RenewOutcome::StaleProof => Err(ApiError::SignInFailed(
            "the proof's timestamp is not later than this agent's previous proof (a replay?)"
                .into(),
        )),
        RenewOutcome::Unknown => Err(refused()),
    }
}

/// The master's agents, including suspended and removed ones.
#[utoipa::path(get, path = "/v1/agents", tag = "agents", security(("bearer" = [])),
    responses((status = 200, body = AgentList), (status = 401, body = agentkeys_types::ErrorBody), (status = 403, body = agentkeys_types::ErrorBody)))]
pub async fn list_agents(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
) -> Result<axum::Json<AgentList>, ApiError> {
    let agents = state.store.agents_of(&master.omni).await?;
    Ok(axum::Json(AgentList {
        agents: agents.iter().map(agent_info).collect(),
    }))
}

async fn set_status(
    state: &AppState,
    master: &Session,
    agent: &str,
    status: AgentStatus,
    kind: AuditKind,
) -> Result<axum::Json<AgentInfo>, ApiError> {
    let not_found =
        || ApiError::NotFound("you have no live agent with that omni; see GET /v1/agents".into());
    let Ok(omni) = agent.parse::<OmniAccount>() else {
        return Err(not_found());
    };
    let now = state.clock.now();
    let m = master.omni.as_str();
    let e = event(
        now,
        kind,
        Some(m),
        Some(m),
        Outcome::Ok,
        json!({"agent": agent}),
    );
    let master_omni = master.omni.clone();
    let updated = state
        .store
        .transact(move |tx| agents::set_status(tx, &master_omni, &omni, status, now, &e))
        .await?;
    updated
        .map(|a| axum::Json(agent_info(&a)))
        .ok_or_else(not_found)
}

/// Suspend an agent: its next mint is refused.
#[utoipa::path(post, path = "/v1/agents/{agent_omni}/suspend", tag = "agents", security(("bearer" = [])),
    params(("agent_omni" = String, Path, description = "The agent's omni account")),
    responses((status = 200, body = AgentInfo), (status = 404, body = agentkeys_types::ErrorBody)))]
pub async fn suspend_agent(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
    Path(agent_omni): Path<String>,
) -> Result<axum::Json<AgentInfo>, ApiError> {
    set_status(
        &state,
        &master,
        &agent_omni,
        AgentStatus::Suspended,
        AuditKind::AgentSuspended,
    )
    .await
}

/// Resume a suspended agent.
#[utoipa::path(post, path = "/v1/agents/{agent_omni}/resume", tag = "agents", security(("bearer" = [])),
    params(("agent_omni" = String, Path, description = "The agent's omni account")),
    responses((status = 200, body = AgentInfo), (status = 404, body = agentkeys_types::ErrorBody)))]
pub async fn resume_agent(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
    Path(agent_omni): Path<String>,
) -> Result<axum::Json<AgentInfo>, ApiError> {
    set_status(
        &state,
        &master,
        &agent_omni,
        AgentStatus::Active,
        AuditKind::AgentResumed,
    )
    .await
}

/// Remove an agent for good; its sessions are revoked at once.
#[utoipa::path(delete, path = "/v1/agents/{agent_omni}", tag = "agents", security(("bearer" = [])),
    params(("agent_omni" = String, Path, description = "The agent's omni account")),
    responses((status = 200, body = AgentInfo), (status = 404, body = agentkeys_types::ErrorBody)))]
pub async fn remove_agent(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
    Path(agent_omni): Path<String>,
) -> Result<axum::Json<AgentInfo>, ApiError> {
    set_status(
        &state,
        &master,
        &agent_omni,
        AgentStatus::Removed,
        AuditKind::AgentRemoved,
    )
    .await
}
