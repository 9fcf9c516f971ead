//! Email magic-link sign-in, and linking an email to a wallet master.
//!
//! The requester gets a `request_id` (256 random bits, stored only as a hash) and polls
//! `GET /v1/auth/email/status/{request_id}`. The email carries a link to the broker's landing
//! page with a single-use token in the URL fragment (fragments are not sent to servers, so the
//! token stays out of every access log); the page posts it to `/v1/auth/email/consume`. The
//! session is created when the requester collects it, so no session token is ever stored.

use std::net::SocketAddr;

use agentkeys_store::{LoginClaim, LoginRequest, RateWindow, Session};
use agentkeys_types::api::{
    EmailConsumeRequest, EmailStartRequest, IdentityInfo, LoginStartResponse, LoginStatus,
    LoginStatusResponse, SessionIssued,
};
use agentkeys_types::identity::{IDENTITY_EMAIL, canonical_email};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::event;
use crate::clock::rfc3339;
use crate::http::error::ApiError;
use crate::http::extract::{Json, MasterSession};
use crate::session::{looks_like_secret, new_token, secret, session_ref, token_hash};
use crate::state::AppState;

async fn start(
    state: &AppState,
    email: &str,
    peer: SocketAddr,
    link_to: Option<(&str, &str)>,
) -> Result<axum::Json<LoginStartResponse>, ApiError> {
    let mailer = state.mailer.clone().ok_or_else(|| {
        ApiError::Unavailable(
            "email sign-in is not configured on this broker (BROKER_SMTP_HOST)".into(),
        )
    })?;
    let email = canonical_email(email).map_err(|e| ApiError::BadRequest(format!("email: {e}")))?;
    let now = state.clock.now();
    let settings = &state.settings;
    let kind = if link_to.is_some() {
        "identity.link_requested"
    } else {
        "sign_in.email.requested"
    };
    let actor = link_to.map(|(m, _)| m);
    let buckets = [
        (
            format!("email:{email}"),
            RateWindow {
                seconds: 3600,
                limit: settings.email_rate_per_address_per_hour,
            },
        ),
        (
            format!("ip:{}", peer.ip()),
            RateWindow {
                seconds: 3600,
                limit: settings.email_rate_per_ip_per_hour,
            },
        ),
    ];
    let request_id = secret();
    let link_token = secret();
    let details = json!({"email": email, "request": session_ref(&token_hash(&request_id)), "ip": peer.ip().to_string()});
    let mut denied = event(now, kind, actor, actor, "denied", details.clone());
    denied.details["reason"] = json!("rate_limited");
    if let agentkeys_store::GateOutcome::Limited { retry_after, .. } = state
        .store
        .rate_limited_append_buckets(
            &buckets,
            None,
            now,
            event(now, kind, actor, actor, "ok", details),
            denied,
        )
        .await?
    {
        return Err(ApiError::RateLimited { retry_after });
    }
    let expires_at = now + settings.login_ttl_seconds;
    let request = LoginRequest {
        id_hash: token_hash(&request_id),
        method: "email".into(),
        subject: email.clone(),
        link_token_hash: Some(token_hash(&link_token)),
        state: None,
        oidc_nonce: None,
        oidc_verifier: None,
        link_to: link_to.map(|(m, _)| m.to_owned()),
        link_to_wallet: link_to.map(|(_, w)| w.to_owned()),
        created_at: now,
        expires_at,
        verified_type: None,
        verified_value: None,
        verified_at: None,
        claimed_at: None,
    };
    // The rate-limit gate above wrote this request's audit event.
    state.store.create_login(request, None).await?;
    let link = format!(
        "{}/auth/email/landing#token={link_token}",
        settings.issuer.url
    );
    if let Err(e) = mailer
        .send_sign_in_link(&email, &link, link_to.is_some())
        .await
    {
        tracing::error!(error = %e, "email.send_failed");
        return Err(ApiError::Unavailable(
            "the sign-in email could not be sent; try again later".into(),
        ));
    }
    Ok(axum::Json(LoginStartResponse {
        request_id,
        expires_at: rfc3339(expires_at),
        authorization_url: None,
    }))
}

/// Start an email sign-in: a link is mailed to the address.
#[utoipa::path(post, path = "/v1/auth/email/start", tag = "auth",
    request_body = EmailStartRequest,
    responses(
        (status = 200, body = LoginStartResponse),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 429, body = agentkeys_types::ErrorBody),
        (status = 503, body = agentkeys_types::ErrorBody)))]
pub async fn email_start(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<EmailStartRequest>,
) -> Result<axum::Json<LoginStartResponse>, ApiError> {
    start(&state, &req.email, peer, None).await
}

/// Link an email address to the signed-in wallet master: a link is mailed to the address.
#[utoipa::path(post, path = "/v1/identities/email", tag = "identities", security(("bearer" = [])),
    request_body = EmailStartRequest,
    responses(
        (status = 200, body = LoginStartResponse),
        (status = 403, body = agentkeys_types::ErrorBody),
        (status = 429, body = agentkeys_types::ErrorBody)))]
pub async fn link_email_start(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<EmailStartRequest>,
) -> Result<axum::Json<LoginStartResponse>, ApiError> {
    let Some(wallet) = master.wallet.as_deref() else {
        return Err(ApiError::Forbidden {
            kind: "wallet_master_only",
            message: "only a master signed in with a wallet can link identities".into(),
        });
    };
    start(&state, &req.email, peer, Some((&master.omni, wallet))).await
}

/// The page an emailed link opens; its script posts the fragment's token to the broker.
#[utoipa::path(get, path = "/auth/email/landing", tag = "auth",
    responses((status = 200, description = "HTML page", content_type = "text/html")))]
pub async fn landing() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'",
            ),
        ],
        LANDING_HTML,
    )
}

/// The landing page's script, served from the broker so the page needs no inline script.
#[utoipa::path(get, path = "/auth/email/landing.js", tag = "auth",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript")))]
pub async fn landing_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        LANDING_JS,
    )
}

pub const LANDING_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>AgentKeys sign-in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 36em; margin: 4em auto">
<h1>AgentKeys</h1><p id="status">Confirming your sign-in…</p>
<script src="/auth/email/landing.js"></script></body></html>
"#;

pub const LANDING_JS: &str = r#"(async () => {
  const status = document.getElementById("status");
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  history.replaceState(null, "", location.pathname); // drop the token from the address bar
  if (!token) { status.textContent = "This link has no token. Request a new one."; return; }
  try {
    const r = await fetch("/v1/auth/email/consume", {
      method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify({token}),
    });
    const body = await r.json();
    status.textContent = r.ok ? "Confirmed. Return to your terminal; you can close this page."
                              : "Not confirmed: " + body.message;
  } catch (e) { status.textContent = "Not confirmed: the broker could not be reached."; }
})();
"#;

/// Consume an emailed link's token (single use).
#[utoipa::path(post, path = "/v1/auth/email/consume", tag = "auth",
    request_body = EmailConsumeRequest,
    responses(
        (status = 200, description = "Verified", body = Object),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 404, body = agentkeys_types::ErrorBody)))]
pub async fn email_consume(
    State(state): State<AppState>,
    Json(req): Json<EmailConsumeRequest>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let used = || {
        ApiError::NotFound(
            "this link is unknown, expired or already used; request a new one".into(),
        )
    };
    if !looks_like_secret(&req.token) {
        return Err(ApiError::BadRequest(
            "token is the 43-character value from the link".into(),
        ));
    }
    let request = state
        .store
        .login_by_link_token(&token_hash(&req.token))
        .await?
        .ok_or_else(used)?;
    let now = state.clock.now();
    let actor = request.link_to.as_deref();
    let verified = event(
        now,
        "sign_in.email.verified",
        actor,
        actor,
        "ok",
        json!({"email": request.subject}),
    );
    if !state
        .store
        .verify_login(
            &request.id_hash,
            IDENTITY_EMAIL,
            &request.subject,
            now,
            verified,
        )
        .await?
    {
        return Err(used());
    }
    Ok(axum::Json(json!({"status": "verified"})))
}

/// Poll an email sign-in (or link): pending, then the session (or the link), once.
#[utoipa::path(get, path = "/v1/auth/email/status/{request_id}", tag = "auth",
    params(("request_id" = String, Path, description = "From /v1/auth/email/start")),
    responses(
        (status = 200, body = LoginStatusResponse),
        (status = 202, body = LoginStatusResponse, description = "Pending"),
        (status = 404, body = agentkeys_types::ErrorBody),
        (status = 409, body = agentkeys_types::ErrorBody)))]
pub async fn email_status(
    State(state): State<AppState>,
    Path(request_id): Path<String>,
) -> Result<(StatusCode, axum::Json<LoginStatusResponse>), ApiError> {
    collect(&state, &request_id).await
}

/// Collects a login request (email or OIDC) for its requester.
pub async fn collect(
    state: &AppState,
    request_id: &str,
) -> Result<(StatusCode, axum::Json<LoginStatusResponse>), ApiError> {
    let gone = || ApiError::NotFound("unknown or expired sign-in request; start again".into());
    if !looks_like_secret(request_id) {
        return Err(gone());
    }
    let id_hash = token_hash(request_id);
    let request = state.store.login(&id_hash).await?.ok_or_else(gone)?;
    let now = state.clock.now();
    let token = new_token();
    let expires_at = now + state.settings.session_ttl_seconds;
    let template = Session::unowned(token.hash.clone(), "master", now, expires_at);
    let kind = if request.link_to.is_some() {
        "identity.linked".to_owned()
    } else {
        format!("sign_in.{}", request.method)
    };
    let details = json!({
        "identity_type": request.verified_type, "identity_value": request.verified_value,
        "session": request.link_to.is_none().then(|| session_ref(&token.hash).to_owned()),
    });
    let done = event(now, &kind, None, None, "ok", details);
    let pending = || LoginStatusResponse {
        status: LoginStatus::Pending,
        session: None,
        identity: None,
    };
    match state
        .store
        .claim_login(&id_hash, now, template, done)
        .await?
    {
        LoginClaim::Pending => Ok((StatusCode::ACCEPTED, axum::Json(pending()))),
        LoginClaim::SignedIn(s) => {
            metrics::counter!(crate::metrics::SIGN_INS, "method" => request.method, "outcome" => "ok").increment(1);
            Ok((
                StatusCode::OK,
                axum::Json(LoginStatusResponse {
                    status: LoginStatus::Approved,
                    session: Some(SessionIssued {
                        session_token: token.token,
                        expires_at: rfc3339(expires_at),
                        omni_account: s.omni,
                        wallet: s.wallet,
                    }),
                    identity: None,
                }),
            ))
        }
        LoginClaim::Linked(i) => Ok((
            StatusCode::OK,
            axum::Json(LoginStatusResponse {
                status: LoginStatus::Linked,
                session: None,
                identity: Some(IdentityInfo {
                    identity_type: i.identity_type,
                    identity_value: i.identity_value,
                    linked_at: rfc3339(i.linked_at),
                }),
            }),
        )),
        LoginClaim::AlreadyClaimed => Err(ApiError::Conflict(
            "this sign-in was already collected".into(),
        )),
        LoginClaim::LinkedElsewhere => Err(ApiError::Conflict(
            "that identity is linked to another master; unlink it there first".into(),
        )),
        LoginClaim::Gone => Err(gone()),
    }
}
