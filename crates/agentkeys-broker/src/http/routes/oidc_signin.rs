//! Sign-in (and identity linking) with an external OpenID Connect provider: authorization code
//! with PKCE, a random state that names the login request, and a nonce; the provider sends the
//! browser back to `/auth/oidc/callback`, the requester polls for its session.

use std::collections::HashMap;

use agentkeys_store::LoginRequest;
use agentkeys_types::api::{LoginStartResponse, LoginStatusResponse};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::email::collect;
use super::event;
use crate::clock::rfc3339;
use crate::http::error::ApiError;
use crate::http::extract::{Json, MasterSession};
use crate::session::{looks_like_secret, secret, session_ref, token_hash};
use crate::state::AppState;

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OidcStartRequest {
    /// A provider configured on the broker (BROKER_OIDC_PROVIDERS_FILE), e.g. `google`.
    pub provider: String,
}

async fn start(
    state: &AppState,
    provider_name: &str,
    link_to: Option<(&str, &str)>,
) -> Result<axum::Json<LoginStartResponse>, ApiError> {
    let provider = state.oidc.get(provider_name).cloned().ok_or_else(|| {
        let mut names: Vec<&str> = state.oidc.keys().map(String::as_str).collect();
        names.sort();
        ApiError::NotFound(format!(
            "no OIDC provider named {provider_name:?} here (configured: {})",
            names.join(", ")
        ))
    })?;
    let now = state.clock.now();
    let request_id = secret();
    let login_state = secret();
    let start = provider.start_with_state(&login_state);
    let expires_at = now + state.settings.login_ttl_seconds;
    let request = LoginRequest {
        id_hash: token_hash(&request_id),
        method: "oidc".into(),
        subject: provider_name.to_owned(),
        link_token_hash: None,
        state: Some(login_state),
        oidc_nonce: Some(start.nonce.clone()),
        oidc_verifier: Some(start.pkce_verifier.clone()),
        link_to: link_to.map(|(m, _)| m.to_owned()),
        link_to_wallet: link_to.map(|(_, w)| w.to_owned()),
        created_at: now,
        expires_at,
        verified_type: None,
        verified_value: None,
        verified_at: None,
        claimed_at: None,
    };
    let kind = if link_to.is_some() {
        "identity.link_requested"
    } else {
        "sign_in.oidc.requested"
    };
    let actor = link_to.map(|(m, _)| m);
    let details = json!({"provider": provider_name, "request": session_ref(&request.id_hash)});
    state
        .store
        .create_login(request, Some(event(now, kind, actor, actor, "ok", details)))
        .await?;
    Ok(axum::Json(LoginStartResponse {
        request_id,
        expires_at: rfc3339(expires_at),
        authorization_url: Some(start.authorization_url),
    }))
}

/// Start a sign-in with an OpenID Connect provider: open `authorization_url` in a browser,
/// then poll the status.
#[utoipa::path(post, path = "/v1/auth/oidc/start", tag = "auth",
    request_body = OidcStartRequest,
    responses((status = 200, body = LoginStartResponse), (status = 404, body = agentkeys_types::ErrorBody)))]
pub async fn oidc_start(
    State(state): State<AppState>,
    Json(req): Json<OidcStartRequest>,
) -> Result<axum::Json<LoginStartResponse>, ApiError> {
    start(&state, &req.provider, None).await
}

/// Link an OpenID Connect identity to the signed-in wallet master.
#[utoipa::path(post, path = "/v1/identities/oidc", tag = "identities", security(("bearer" = [])),
    request_body = OidcStartRequest,
    responses((status = 200, body = LoginStartResponse), (status = 403, body = agentkeys_types::ErrorBody)))]
pub async fn link_oidc_start(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
    Json(req): Json<OidcStartRequest>,
) -> Result<axum::Json<LoginStartResponse>, ApiError> {
    let Some(wallet) = master.wallet.as_deref() else {
        return Err(ApiError::Forbidden {
            kind: "wallet_master_only",
            message: "only a master signed in with a wallet can link identities".into(),
        });
    };
    start(&state, &req.provider, Some((&master.omni, wallet))).await
}

/// Poll an OIDC sign-in (or link): pending, then the session (or the link), once.
#[utoipa::path(get, path = "/v1/auth/oidc/status/{request_id}", tag = "auth",
    params(("request_id" = String, Path, description = "From /v1/auth/oidc/start")),
    responses(
        (status = 200, body = LoginStatusResponse),
        (status = 202, body = LoginStatusResponse, description = "Pending"),
        (status = 404, body = agentkeys_types::ErrorBody)))]
pub async fn oidc_status(
    State(state): State<AppState>,
    Path(request_id): Path<String>,
) -> Result<(StatusCode, axum::Json<LoginStatusResponse>), ApiError> {
    collect(&state, &request_id).await
}

fn page(status: StatusCode, message: &str) -> Response {
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>AgentKeys sign-in</title></head>\
         <body style=\"font-family: sans-serif; max-width: 36em; margin: 4em auto\"><h1>AgentKeys</h1><p>{escaped}</p></body></html>"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        html,
    )
        .into_response()
}

/// Where the provider sends the browser back (`code`, `state`, `iss`, or `error`).
#[utoipa::path(get, path = "/auth/oidc/callback", tag = "auth",
    responses((status = 200, description = "HTML result page", content_type = "text/html")))]
pub async fn callback(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let now = state.clock.now();
    let bad_state = || {
        page(
            StatusCode::BAD_REQUEST,
            "This sign-in link is unknown, used or expired. Start again from your terminal.",
        )
    };
    let Some(login_state) = q.get("state").filter(|s| looks_like_secret(s)) else {
        return bad_state();
    };
    let request = match state.store.login_by_state(login_state).await {
        Ok(Some(r)) if r.verified_at.is_none() && now < r.expires_at => r,
        Ok(_) => return bad_state(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(provider) = state.oidc.get(&request.subject).cloned() else {
        return bad_state();
    };
    let fail = |reason: String| {
        let actor = request.link_to.clone();
        let store = state.store.clone();
        let details = json!({"provider": request.subject, "reason": reason});
        async move {
            let _ = store
                .append_audit(event(
                    now,
                    "sign_in.oidc.verified",
                    actor.as_deref(),
                    actor.as_deref(),
                    "failed",
                    details,
                ))
                .await;
        }
    };
    if let Some(error) = q.get("error") {
        fail(format!("provider said {error}")).await;
        return page(
            StatusCode::FORBIDDEN,
            "The provider did not sign you in. Start again from your terminal.",
        );
    }
    if !provider.issuer_matches(q.get("iss").map(String::as_str)) {
        fail("iss mismatch".into()).await;
        return page(
            StatusCode::BAD_REQUEST,
            "The answer came from another issuer. Start again from your terminal.",
        );
    }
    let (Some(code), Some(verifier), Some(nonce)) =
        (q.get("code"), &request.oidc_verifier, &request.oidc_nonce)
    else {
        return bad_state();
    };
    let identity = match provider.finish_at(code, verifier, nonce, now).await {
        Ok(i) => i,
        Err(e) => {
            fail(e.kind().to_owned()).await;
            tracing::warn!(provider = %request.subject, error = %e, "sign_in.oidc.failed");
            return page(
                StatusCode::UNAUTHORIZED,
                "The provider's answer could not be verified. Start again from your terminal.",
            );
        }
    };
    let identity_type = provider.identity_type();
    let details = json!({"provider": request.subject, "subject": identity.subject});
    let verified = event(
        now,
        "sign_in.oidc.verified",
        request.link_to.as_deref(),
        request.link_to.as_deref(),
        "ok",
        details,
    );
    match state
        .store
        .verify_login(
            &request.id_hash,
            &identity_type,
            &identity.subject,
            now,
            verified,
        )
        .await
    {
        Ok(true) => page(
            StatusCode::OK,
            "Signed in. Return to your terminal; you can close this page.",
        ),
        Ok(false) => bad_state(),
        Err(e) => ApiError::from(e).into_response(),
    }
}
