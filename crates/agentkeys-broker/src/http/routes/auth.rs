//! Wallet sign-in (EIP-4361 / EIP-191).

use agentkeys_store::{Challenge, NewAuditEvent};
use agentkeys_types::api::{
    ActorKind, ChallengePurpose, ConsoleSession, SessionIssued, WalletChallengeRequest,
    WalletChallengeResponse, WalletProof, WalletVerifyRequest,
};
use agentkeys_types::audit::{AuditKind, Outcome};
use agentkeys_types::identity::canonical_email;
use agentkeys_types::login::{SIGN_IN_STATEMENT, challenge_statement};
use agentkeys_types::{OmniAccount, WalletAddress};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::clock::rfc3339;
use crate::denials::DenialKind;
use crate::http::client_ip::ClientIp;
use crate::http::error::ApiError;
use crate::http::extract::{Json, csrf_token};
use crate::session::SessionSlot;
use crate::session::{new_token, random_id, session_ref};
use crate::state::AppState;
use crate::wallet::{self, SignInError};

/// Start a wallet sign-in (or, with `purpose`, a step-up for linking an identity): returns
/// the EIP-4361 message to sign.
#[utoipa::path(post, path = "/v1/auth/wallet/challenge", tag = "auth",
    request_body = WalletChallengeRequest,
    responses(
        (status = 200, body = WalletChallengeResponse),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 422, body = agentkeys_types::ErrorBody)))]
pub async fn wallet_challenge(
    State(state): State<AppState>,
    Json(req): Json<WalletChallengeRequest>,
) -> Result<axum::Json<WalletChallengeResponse>, ApiError> {
    let address: WalletAddress = req
        .address
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("address: {e}")))?;
    let chain_id = req.chain_id.unwrap_or(1);
    // EIP-2294 bounds chain ids to 1..=2^63-1 (the documented int64).
    if chain_id == 0 || chain_id > i64::MAX as u64 {
        return Err(ApiError::BadRequest(
            "chain_id must be a positive EIP-155 chain id (at most 2^63-1)".into(),
        ));
    }
    let purpose = match req.purpose {
        None => None,
        Some(ChallengePurpose::LinkEmail(email)) => Some(ChallengePurpose::LinkEmail(
            canonical_email(&email).map_err(|e| ApiError::BadRequest(format!("email: {e}")))?,
        )),
        Some(ChallengePurpose::LinkOidc(provider)) => {
            if !state.oidc.contains_key(&provider) {
                return Err(ApiError::BadRequest(
                    "purpose.link_oidc names no OIDC provider configured here".into(),
                ));
            }
            Some(ChallengePurpose::LinkOidc(provider))
        }
        Some(ChallengePurpose::ApproveAccess(a)) => {
            // Only the shape: the broker accepts the signature at approval only if every field
            // is the request's own (see `routes::access::approve`).
            super::access::check_approval_shape(&a)?;
            Some(ChallengePurpose::ApproveAccess(a))
        }
    };
    let now = state.clock.now();
    let expires_at = now + state.settings.challenge_ttl_seconds;
    let message = wallet::message(
        &state.settings.issuer,
        &address,
        challenge_statement(purpose.as_ref()),
        chain_id,
        &wallet::nonce(),
        now,
        expires_at,
    )
    .map_err(|e| ApiError::internal(anyhow::anyhow!("building the SIWE message: {e}")))?;
    let challenge = Challenge {
        id: random_id(),
        address: address.to_string(),
        message,
        created_at: now,
        expires_at,
    };
    let stored = challenge.clone();
    state
        .store
        .transact(move |tx| tx.insert_challenge(&stored))
        .await?;
    Ok(axum::Json(WalletChallengeResponse {
        challenge_id: challenge.id,
        message: challenge.message,
        expires_at: rfc3339(expires_at),
    }))
}

/// Finish a wallet sign-in with the signature over the challenge message.
#[utoipa::path(post, path = "/v1/auth/wallet/verify", tag = "auth",
    request_body = WalletVerifyRequest,
    responses(
        (status = 200, body = SessionIssued),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 401, body = agentkeys_types::ErrorBody)))]
pub async fn wallet_verify(
    State(state): State<AppState>,
    ip: ClientIp,
    Json(req): Json<WalletVerifyRequest>,
) -> Result<axum::Json<SessionIssued>, ApiError> {
    sign_in(&state, ip, &req, "cli").await.map(axum::Json)
}

/// Sign in this browser with a wallet (the console): the same challenge and signature as
/// `POST /v1/auth/wallet/verify`, but the session goes into an HttpOnly, SameSite=Strict cookie
/// and never into the page; the answer carries the console's CSRF token.
#[utoipa::path(post, path = "/v1/auth/wallet/browser", tag = "auth",
    request_body = WalletVerifyRequest,
    responses(
        (status = 200, body = ConsoleSession, description = "Signed in; the session is in the Set-Cookie header"),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 401, body = agentkeys_types::ErrorBody)))]
pub async fn wallet_browser(
    State(state): State<AppState>,
    ip: ClientIp,
    Json(req): Json<WalletVerifyRequest>,
) -> Result<Response, ApiError> {
    let issued = sign_in(&state, ip, &req, "browser").await?;
    let body = ConsoleSession {
        omni_account: issued.omni_account,
        wallet: issued.wallet,
        kind: ActorKind::Master,
        expires_at: issued.expires_at,
        via: None,
        csrf_token: csrf_token(&issued.session_token),
    };
    let cookie = super::console::session_cookie(&state, &issued.session_token)?;
    Ok((
        [
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        axum::Json(body),
    )
        .into_response())
}

/// Checks the signature over a taken challenge and stores the new master session.
async fn sign_in(
    state: &AppState,
    ip: ClientIp,
    req: &WalletVerifyRequest,
    client: &str,
) -> Result<SessionIssued, ApiError> {
    let signature = check_shape(&req.challenge_id, &req.signature)?;
    let now = state.clock.now();
    let Some(challenge) = take_challenge(state, &req.challenge_id).await? else {
        // A made-up (or spent) id names no address: nobody's sign-in was attempted, so it is
        // counted in aggregate rather than chained one event per guess.
        metrics::counter!(crate::metrics::SIGN_INS, "method" => "wallet", "outcome" => "failed")
            .increment(1);
        state
            .denials
            .record(ip.0, DenialKind::WalletUnknownChallenge, now);
        return Err(ApiError::SignInFailed(
            SignInError::UnknownChallenge.to_string(),
        ));
    };
    let wallet = match wallet::verify(&challenge, SIGN_IN_STATEMENT, &signature, now) {
        Ok(w) => w,
        Err(reason) => {
            // A failed answer to a real challenge is an attempt on a real address: audited.
            metrics::counter!(crate::metrics::SIGN_INS, "method" => "wallet", "outcome" => "failed").increment(1);
            let event = NewAuditEvent {
                time: now,
                kind: AuditKind::SignInWallet,
                actor: challenge
                    .address
                    .parse()
                    .ok()
                    .map(|w| OmniAccount::for_wallet(&w).to_string()),
                master: None,
                outcome: Outcome::Failed,
                details: json!({
                    "reason": reason.to_string(), "address": challenge.address,
                    "challenge_id": req.challenge_id, "ip": ip.to_string(),
                }),
            };
            state.store.append_audit(event).await?;
            return Err(ApiError::SignInFailed(reason.to_string()));
        }
    };
    let omni = OmniAccount::for_wallet(&wallet);
    let token = new_token();
    let expires_at = now + state.settings.session_ttl_seconds;
    let session = SessionSlot {
        token_hash: token.hash.clone(),
        created_at: now,
        expires_at,
    }
    .for_master(omni.clone(), Some(wallet.to_string()), None);
    let event = NewAuditEvent {
        time: now,
        kind: AuditKind::SignInWallet,
        actor: Some(omni.to_string()),
        master: Some(omni.to_string()),
        outcome: Outcome::Ok,
        details: json!({"wallet": wallet.as_str(), "session": session_ref(&token.hash), "expires_at": expires_at, "client": client}),
    };
    state
        .store
        .transact(move |tx| {
            tx.insert_session(&session)?;
            tx.append(&event)
        })
        .await?;
    metrics::counter!(crate::metrics::SIGN_INS, "method" => "wallet", "outcome" => "ok")
        .increment(1);
    tracing::info!(omni = %omni, session = session_ref(&token.hash), "sign_in.wallet.ok");
    Ok(SessionIssued {
        session_token: token.token,
        expires_at: rfc3339(expires_at),
        omni_account: omni.to_string(),
        wallet: Some(wallet.to_string()),
    })
}

/// Removes the challenge and returns it: each is answered at most once.
async fn take_challenge(state: &AppState, id: &str) -> Result<Option<Challenge>, ApiError> {
    let id = id.to_owned();
    Ok(state
        .store
        .transact(move |tx| tx.take_challenge(&id))
        .await?)
}

/// Shape checks of a challenge answer, before the challenge is taken, so a typo does not burn
/// it.
fn check_shape(challenge_id: &str, signature: &str) -> Result<[u8; 65], ApiError> {
    let signature = wallet::parse_signature(signature).ok_or_else(|| {
        ApiError::BadRequest("signature must be 0x followed by 130 hex digits (65 bytes)".into())
    })?;
    if challenge_id.len() != 32 || !challenge_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(
            "challenge_id must be the 32-hex id returned by the challenge".into(),
        ));
    }
    Ok(signature)
}

/// A step-up: a fresh signature by the master's own wallet over a challenge issued for exactly
/// `purpose`. Whoever holds only a master's bearer session cannot pass it. A failure is
/// audited against the master. Only [`super::login::LinkingMaster::prove`] calls it.
pub(super) async fn step_up(
    state: &AppState,
    master_omni: &str,
    master_wallet: &str,
    proof: &WalletProof,
    purpose: &ChallengePurpose,
) -> Result<(), ApiError> {
    let now = state.clock.now();
    let reason = match wallet_proof(state, master_wallet, proof, purpose).await? {
        Ok(_) => return Ok(()),
        Err(reason) => reason,
    };
    let details = json!({"reason": reason, "purpose": purpose});
    state
        .store
        .append_audit(NewAuditEvent {
            time: now,
            kind: AuditKind::IdentityStepUp,
            actor: Some(master_omni.to_owned()),
            master: Some(master_omni.to_owned()),
            outcome: Outcome::Failed,
            details,
        })
        .await?;
    Err(ApiError::Forbidden {
        kind: agentkeys_types::ErrorKind::StepUpFailed,
        message: format!(
            "linking an identity needs a fresh signature by this master's wallet over a challenge \
             for this identity: {reason}"
        ),
    })
}

/// Checks a fresh signature by `master_wallet` over a challenge issued for exactly `purpose`;
/// the challenge is spent whatever the outcome. `Ok(message)`: the signed EIP-4361 message;
/// `Err(reason)`: why it does not prove anything.
pub(super) async fn wallet_proof(
    state: &AppState,
    master_wallet: &str,
    proof: &WalletProof,
    purpose: &ChallengePurpose,
) -> Result<Result<String, String>, ApiError> {
    let signature = check_shape(&proof.challenge_id, &proof.signature)?;
    let now = state.clock.now();
    let challenge = take_challenge(state, &proof.challenge_id).await?;
    let verified = match &challenge {
        None => Err(SignInError::UnknownChallenge),
        Some(c) => wallet::verify(c, &challenge_statement(Some(purpose)), &signature, now),
    };
    Ok(match (verified, challenge) {
        (Ok(w), Some(c)) if w.as_str().eq_ignore_ascii_case(master_wallet) => Ok(c.message),
        (Ok(_), _) => Err("the signature is not from this master's wallet".to_owned()),
        (Err(e), _) => Err(e.to_string()),
    })
}
