//! Sign-in (and identity linking) with an external OpenID Connect provider: authorization code
//! with PKCE, a random state that names the login request, and a nonce. The provider sends the
//! browser back to `/auth/oidc/callback`; the broker verifies the ID token and then hands a
//! one-time code to the requesting CLI only: by an RFC 8252 loopback redirect to the CLI's own
//! listener, or on a page for the user to paste into the CLI. The CLI collects the session
//! with that code and its verifier (`login.rs`); a request id or a provider login alone
//! releases nothing.

use agentkeys_types::audit::{AuditKind, Outcome};
use std::collections::HashMap;

use agentkeys_store::{IdentityRef, LoginKey, LoginRequest};
use agentkeys_types::OmniAccount;
use agentkeys_types::api::{
    ChallengePurpose, LinkOidcRequest, LoginCollectRequest, LoginStartResponse,
    LoginStatusResponse, OidcStartRequest,
};
use agentkeys_types::login::check_loopback_redirect;
use agentkeys_types::pairing::display_code;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::event;
use super::login::{LinkingMaster, client_challenge, code_hash, collect};
use crate::clock::rfc3339;
use crate::http::error::ApiError;
use crate::http::extract::{Json, MasterSession};
use crate::session::{looks_like_secret, secret, session_ref, token_hash};
use crate::sign_in;
use crate::state::AppState;

/// Longest provider `error` code kept in the audit log (RFC 6749 codes are short ASCII words).
const MAX_ERROR_CODE: usize = 64;

async fn start(
    state: &AppState,
    provider_name: &str,
    challenge: &str,
    redirect_uri: Option<&str>,
    link_to: Option<&LinkingMaster>,
) -> Result<axum::Json<LoginStartResponse>, ApiError> {
    let provider = state.oidc.get(provider_name).cloned().ok_or_else(|| {
        let mut names: Vec<&str> = state.oidc.keys().map(String::as_str).collect();
        names.sort();
        ApiError::NotFound(format!(
            "no OIDC provider by that name here (configured: {})",
            names.join(", ")
        ))
    })?;
    let client_challenge = client_challenge(challenge)?;
    if let Some(uri) = redirect_uri {
        check_loopback_redirect(uri)
            .map_err(|why| ApiError::BadRequest(format!("redirect_uri: {why}")))?;
    }
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
        link_to: link_to.map(|m| m.omni().clone()),
        link_to_wallet: link_to.map(|m| m.wallet().to_owned()),
        created_at: now,
        expires_at,
        verified_type: None,
        verified_value: None,
        verified_at: None,
        claimed_at: None,
        client_challenge: Some(client_challenge),
        code_hash: None,
        code_attempts: 0,
        redirect_uri: redirect_uri.map(str::to_owned),
    };
    let kind = if link_to.is_some() {
        AuditKind::IdentityLinkRequested
    } else {
        AuditKind::SignInOidcRequested
    };
    let actor = link_to.map(|m| m.omni().as_str());
    let details = json!({
        "provider": provider_name, "request": session_ref(&request.id_hash),
        "loopback": redirect_uri.is_some(),
    });
    let requested = event(now, kind, actor, actor, Outcome::Ok, details);
    state
        .store
        .transact(move |tx| {
            tx.insert_login(&request)?;
            tx.append(&requested)
        })
        .await?;
    Ok(axum::Json(LoginStartResponse {
        request_id,
        expires_at: rfc3339(expires_at),
        authorization_url: Some(start.authorization_url),
    }))
}

/// Start a sign-in with an OpenID Connect provider: open `authorization_url` in a browser;
/// the one-time code comes back to `redirect_uri` (or is shown to paste), then collect.
#[utoipa::path(post, path = "/v1/auth/oidc/start", tag = "auth",
    request_body = OidcStartRequest,
    responses(
        (status = 200, body = LoginStartResponse),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 404, body = agentkeys_types::ErrorBody)))]
pub async fn oidc_start(
    State(state): State<AppState>,
    Json(req): Json<OidcStartRequest>,
) -> Result<axum::Json<LoginStartResponse>, ApiError> {
    start(
        &state,
        &req.provider,
        &req.code_challenge,
        req.redirect_uri.as_deref(),
        None,
    )
    .await
}

/// Link an OpenID Connect identity to the signed-in wallet master. Needs a fresh signature by
/// the master's wallet over a challenge for this provider (`purpose: {"link_oidc": …}`).
#[utoipa::path(post, path = "/v1/identities/oidc", tag = "identities", security(("bearer" = [])),
    request_body = LinkOidcRequest,
    responses(
        (status = 200, body = LoginStartResponse),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 403, body = agentkeys_types::ErrorBody),
        (status = 404, body = agentkeys_types::ErrorBody, description = "No OIDC provider by that name on this broker")))]
pub async fn link_oidc_start(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
    Json(req): Json<LinkOidcRequest>,
) -> Result<axum::Json<LoginStartResponse>, ApiError> {
    if !state.oidc.contains_key(&req.provider) {
        return Err(ApiError::NotFound(
            "no OIDC provider by that name here".into(),
        ));
    }
    let purpose = ChallengePurpose::LinkOidc(req.provider.clone());
    let linking = LinkingMaster::prove(&state, &master, &req.wallet_proof, &purpose).await?;
    start(
        &state,
        &req.provider,
        &req.code_challenge,
        req.redirect_uri.as_deref(),
        Some(&linking),
    )
    .await
}

/// Collect an OIDC sign-in (or link) with the one-time code and the verifier.
#[utoipa::path(post, path = "/v1/auth/oidc/collect", tag = "auth",
    request_body = LoginCollectRequest,
    responses(
        (status = 200, body = LoginStatusResponse),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 403, body = agentkeys_types::ErrorBody, description = "Another client's request (verifier mismatch)"),
        (status = 404, body = agentkeys_types::ErrorBody),
        (status = 409, body = agentkeys_types::ErrorBody),
        (status = 422, body = agentkeys_types::ErrorBody, description = "Wrong code, or not finished at the provider")))]
pub async fn oidc_collect(
    State(state): State<AppState>,
    Json(req): Json<LoginCollectRequest>,
) -> Result<axum::Json<LoginStatusResponse>, ApiError> {
    collect(&state, "oidc", &req).await.map(axum::Json)
}

/// A page with one message, escaped.
fn page(status: StatusCode, message: &str) -> Response {
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    html(status, &format!("<p>{escaped}</p>"))
}

/// The page that hands the code to a user whose CLI has no loopback listener (`--no-browser`).
fn code_page(code: &str, linking: bool) -> Response {
    let what = if linking {
        "link this sign-in to your AgentKeys account"
    } else {
        "sign in"
    };
    html(
        StatusCode::OK,
        &format!(
            "<p>To {what}, type this code into the <code>agentkeys</code> command that is waiting \
             for it:</p><p style=\"font-size: 2em; font-family: monospace\" id=\"code\">{code}</p>\
             <p>Only into a command you started yourself, on your own machine. Never send this \
             code to anyone and never type it into a web page: whoever has it, and started this \
             sign-in, gets your account.</p>"
        ),
    )
}

/// The broker's callback pages: no script, nothing cached, no referrer.
fn html(status: StatusCode, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>AgentKeys sign-in</title></head>\
         <body style=\"font-family: sans-serif; max-width: 36em; margin: 4em auto\"><h1>AgentKeys</h1>{body}</body></html>"
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

/// An RFC 6749 error code as stored: ASCII letters, digits and `_` only, bounded. The rest of
/// what the caller sent (`error_description`, `error_uri`) is never stored.
fn error_code(raw: &str) -> String {
    let kept: String = raw
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(MAX_ERROR_CODE)
        .collect();
    if kept.is_empty() {
        "unknown".into()
    } else {
        kept
    }
}

/// Where the provider sends the browser back (`code`, `state`, `iss`, or `error`). On success
/// the browser is redirected to the requesting CLI's loopback listener with a one-time code,
/// or shown the code to paste.
#[utoipa::path(get, path = "/auth/oidc/callback", tag = "auth",
    params(
        ("state" = String, Query, description = "The state the broker sent the provider"),
        ("code" = Option<String>, Query, description = "The provider's authorization code"),
        ("iss" = Option<String>, Query, description = "The provider's issuer (RFC 9207)"),
        ("error" = Option<String>, Query, description = "The provider's error code instead of a code"),
    ),
    responses(
        (status = 200, description = "HTML page (the code to paste, or why it failed)", content_type = "text/html"),
        (status = 303, description = "To the CLI's loopback redirect URI, with `code`"),
        (status = 400, description = "HTML page: the sign-in link is unknown, used or expired, or the answer came from another issuer", content_type = "text/html"),
        (status = 401, description = "HTML page: the provider's answer could not be verified", content_type = "text/html"),
        (status = 403, description = "HTML page: the provider did not sign the user in", content_type = "text/html")))]
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
    let request = match state.store.login(LoginKey::State(login_state)).await {
        Ok(Some(r)) if r.verified_at.is_none() && now < r.expires_at => r,
        Ok(_) => return bad_state(),
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(provider) = state.oidc.get(&request.subject).cloned() else {
        return bad_state();
    };
    // A failure ends the request, so one started request writes at most one failure event.
    let fail = |reason: String| {
        let actor = request.link_to.as_ref().map(ToString::to_string);
        let store = state.store.clone();
        let id_hash = request.id_hash.clone();
        let details = json!({"provider": request.subject, "reason": reason});
        async move {
            let failed = event(
                now,
                AuditKind::SignInOidcVerified,
                actor.as_deref(),
                actor.as_deref(),
                Outcome::Failed,
                details,
            );
            let failing = store.transact(move |tx| sign_in::fail(tx, &id_hash, now, &failed));
            if let Err(e) = failing.await {
                tracing::error!(error = %e, "sign_in.oidc.fail_not_recorded");
            }
        }
    };
    if let Some(error) = q.get("error") {
        fail(format!("provider said {}", error_code(error))).await;
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
    let linking = request.link_to.as_ref().map(OmniAccount::as_str);
    let verified = event(
        now,
        AuditKind::SignInOidcVerified,
        linking,
        linking,
        Outcome::Ok,
        details,
    );
    let one_time = crate::agents::new_code();
    let proved = IdentityRef {
        identity_type,
        identity_value: identity.subject.clone(),
    };
    let (id_hash, one_time_hash) = (request.id_hash.clone(), code_hash(&one_time));
    let verifying = state
        .store
        .transact(move |tx| sign_in::verify(tx, &id_hash, &proved, &one_time_hash, now, &verified));
    match verifying.await {
        Ok(true) => {}
        Ok(false) => return bad_state(),
        Err(e) => return ApiError::from(e).into_response(),
    }
    let shown = display_code(&one_time);
    match &request.redirect_uri {
        // Checked at the start to be a loopback URI with no query: the code goes to the
        // requesting machine's own listener and nowhere else.
        Some(uri) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, format!("{uri}?code={shown}")),
                (header::CACHE_CONTROL, "no-store".to_owned()),
                (header::REFERRER_POLICY, "no-referrer".to_owned()),
            ],
        )
            .into_response(),
        None => code_page(&shown, request.link_to.is_some()),
    }
}
