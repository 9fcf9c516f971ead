//! Email sign-in, and linking an email address to a wallet master.
//!
//! The mail carries a one-time code that the user types into the CLI that asked (which
//! collects the session with it and its verifier, see `login.rs`), and, for a sign-in, a link
//! that signs in the browser which opens it after a click on its page. Nothing is consumed
//! when the page loads, so a mail scanner that fetches and runs it changes nothing. A link
//! mail names the account that asked and carries only the code: a click by the mailbox owner
//! never links the address to someone else.

use agentkeys_store::{LoginKey, LoginRequest};
use agentkeys_types::api::{
    BrowserSignedIn, ChallengePurpose, EmailLinkRequest, EmailStartRequest, LinkEmailRequest,
    LoginCollectRequest, LoginStartResponse, LoginStatusResponse,
};
use agentkeys_types::audit::{AuditKind, Outcome};
use agentkeys_types::identity::canonical_email;
use agentkeys_types::pairing::display_code;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::event;
use super::login::{LinkingMaster, client_challenge, code_hash, collect};
use crate::clock::rfc3339;
use crate::gate::{Gate, GateOutcome};
use crate::http::client_ip::ClientIp;
use crate::http::error::ApiError;
use crate::http::extract::{Json, MasterSession};
use crate::mailer::SignInMail;
use crate::session::SessionSlot;
use crate::session::{looks_like_secret, new_token, secret, session_ref, token_hash};
use crate::sign_in::{self, LoginClaim};
use crate::state::AppState;

/// The browser session's cookie (HttpOnly, SameSite=Strict), set by the emailed link's page.
pub const SESSION_COOKIE: &str = "agentkeys_session";

async fn start(
    state: &AppState,
    email: &str,
    challenge: &str,
    ip: ClientIp,
    link_to: Option<&LinkingMaster>,
) -> Result<axum::Json<LoginStartResponse>, ApiError> {
    let mailer = state.mailer.clone().ok_or_else(|| {
        ApiError::Unavailable(
            "email sign-in is not configured on this broker (BROKER_SMTP_HOST)".into(),
        )
    })?;
    let email = canonical_email(email).map_err(|e| ApiError::BadRequest(format!("email: {e}")))?;
    let client_challenge = client_challenge(challenge)?;
    let now = state.clock.now();
    let settings = &state.settings;
    let kind = if link_to.is_some() {
        AuditKind::IdentityLinkRequested
    } else {
        AuditKind::SignInEmailRequested
    };
    let actor = link_to.map(|m| m.omni().as_str());
    let buckets = crate::limits::LimitedAction::EmailStart {
        address: &email,
        ip: ip.0,
    }
    .buckets(settings);
    let request_id = secret();
    let code = crate::agents::new_code();
    // A link request has no browser link: only the linking master's CLI completes it.
    let link_token = link_to.is_none().then(secret);
    let details = json!({"email": email, "request": session_ref(&token_hash(&request_id)), "ip": ip.to_string()});
    let allowed = event(now, kind, actor, actor, Outcome::Ok, details.clone());
    let mut denied = event(now, kind, actor, actor, Outcome::Denied, details);
    denied.details["reason"] = json!("rate_limited");
    let expires_at = now + settings.login_ttl_seconds;
    let request = LoginRequest {
        id_hash: token_hash(&request_id),
        method: "email".into(),
        subject: email.clone(),
        link_token_hash: link_token.as_deref().map(token_hash),
        state: None,
        oidc_nonce: None,
        oidc_verifier: None,
        link_to: link_to.map(|m| m.omni().clone()),
        link_to_wallet: link_to.map(|m| m.wallet().to_owned()),
        created_at: now,
        expires_at,
        verified_type: None,
        verified_value: None,
        verified_at: None,
        claimed_at: None,
        client_challenge: Some(client_challenge),
        code_hash: Some(code_hash(&code)),
        code_attempts: 0,
        redirect_uri: None,
    };
    // The request is stored in the transaction that counts it against the limits and audits it.
    let gate = Gate::limits(buckets);
    let outcome = state
        .store
        .transact(move |tx| {
            let outcome = gate.decide(tx, now, &allowed, &denied)?;
            if let GateOutcome::Allowed { .. } = outcome {
                tx.insert_login(&request)?;
            }
            Ok(outcome)
        })
        .await?;
    if let GateOutcome::Limited { retry_after, .. } = outcome {
        return Err(ApiError::RateLimited { retry_after });
    }
    let link = link_token.map(|t| format!("{}/auth/email/landing#token={t}", settings.issuer.url));
    let shown = display_code(&code);
    let mail = SignInMail {
        to: &email,
        code: &shown,
        browser_link: link.as_deref(),
        linking_to: link_to.map(LinkingMaster::wallet),
    };
    if let Err(e) = mailer.send_sign_in(&mail).await {
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

/// Start an email sign-in: a one-time code (and a browser link) is mailed to the address.
#[utoipa::path(post, path = "/v1/auth/email/start", tag = "auth",
    request_body = EmailStartRequest,
    responses(
        (status = 200, body = LoginStartResponse),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 429, body = agentkeys_types::ErrorBody),
        (status = 503, body = agentkeys_types::ErrorBody)))]
pub async fn email_start(
    State(state): State<AppState>,
    ip: ClientIp,
    Json(req): Json<EmailStartRequest>,
) -> Result<axum::Json<LoginStartResponse>, ApiError> {
    start(&state, &req.email, &req.code_challenge, ip, None).await
}

/// Link an email address to the signed-in wallet master. Needs a fresh signature by the
/// master's wallet over a challenge for this address (`purpose: {"link_email": …}`); the mail
/// names the master and carries a code only.
#[utoipa::path(post, path = "/v1/identities/email", tag = "identities", security(("bearer" = [])),
    request_body = LinkEmailRequest,
    responses(
        (status = 200, body = LoginStartResponse),
        (status = 403, body = agentkeys_types::ErrorBody),
        (status = 429, body = agentkeys_types::ErrorBody)))]
pub async fn link_email_start(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
    ip: ClientIp,
    Json(req): Json<LinkEmailRequest>,
) -> Result<axum::Json<LoginStartResponse>, ApiError> {
    let email =
        canonical_email(&req.email).map_err(|e| ApiError::BadRequest(format!("email: {e}")))?;
    let purpose = ChallengePurpose::LinkEmail(email.clone());
    let linking = LinkingMaster::prove(&state, &master, &req.wallet_proof, &purpose).await?;
    start(&state, &email, &req.code_challenge, ip, Some(&linking)).await
}

/// Collect an email sign-in (or link) with the mailed code and the verifier.
#[utoipa::path(post, path = "/v1/auth/email/collect", tag = "auth",
    request_body = LoginCollectRequest,
    responses(
        (status = 200, body = LoginStatusResponse),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 403, body = agentkeys_types::ErrorBody, description = "Another client's request (verifier mismatch)"),
        (status = 404, body = agentkeys_types::ErrorBody),
        (status = 409, body = agentkeys_types::ErrorBody),
        (status = 422, body = agentkeys_types::ErrorBody, description = "Wrong code")))]
pub async fn email_collect(
    State(state): State<AppState>,
    Json(req): Json<LoginCollectRequest>,
) -> Result<axum::Json<LoginStatusResponse>, ApiError> {
    collect(&state, "email", &req).await.map(axum::Json)
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
<h1>AgentKeys</h1>
<p>Signing in the <code>agentkeys</code> command line? Type the code from the email into it;
you do not need this page.</p>
<p>To sign in <strong>this browser</strong> with the emailed link, confirm:</p>
<p><button id="confirm" type="button">Sign in this browser</button></p>
<p id="status" role="status"></p>
<script src="/auth/email/landing.js"></script></body></html>
"#;

/// Nothing happens on load: the token is taken out of the address bar and kept until the user
/// clicks. A scanner that runs the page consumes nothing.
pub const LANDING_JS: &str = r#"(() => {
  const status = document.getElementById("status");
  const button = document.getElementById("confirm");
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  history.replaceState(null, "", location.pathname); // drop the token from the address bar
  if (!token) { status.textContent = "This link has no token. Request a new one."; button.disabled = true; return; }
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const r = await fetch("/v1/auth/email/browser", {
        method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify({token}),
        credentials: "same-origin",
      });
      const body = await r.json();
      if (!r.ok) { status.textContent = "Not signed in: " + body.message; return; }
      status.textContent = "This browser is signed in as " + (body.wallet || body.email) +
        ". The console is at " + location.origin + "/console.";
    } catch (e) { status.textContent = "Not signed in: the broker could not be reached."; }
  });
})();
"#;

/// Sign in the browser that opened the emailed link (after a click on its page): the session
/// goes into an HttpOnly, SameSite=Strict cookie of this browser and to no one else. Single
/// use, together with the code: whichever is used first completes the request.
#[utoipa::path(post, path = "/v1/auth/email/browser", tag = "auth",
    request_body = EmailLinkRequest,
    responses(
        (status = 200, body = BrowserSignedIn, description = "Signed in; the session is in the Set-Cookie header"),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 404, body = agentkeys_types::ErrorBody)))]
pub async fn email_browser(
    State(state): State<AppState>,
    Json(req): Json<EmailLinkRequest>,
) -> Result<Response, ApiError> {
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
    let link_hash = token_hash(&req.token);
    let request = state
        .store
        .login(LoginKey::LinkTokenHash(&link_hash))
        .await?
        .ok_or_else(used)?;
    let now = state.clock.now();
    let token = new_token();
    let ttl = state.settings.session_ttl_seconds;
    let slot = SessionSlot {
        token_hash: token.hash.clone(),
        created_at: now,
        expires_at: now + ttl,
    };
    let mut done = super::login::collected_event(&request, now, &token.hash)?;
    done.details["browser"] = json!(true);
    let claim = state
        .store
        .transact(move |tx| sign_in::redeem_link(tx, &link_hash, now, &slot, done))
        .await?;
    let LoginClaim::SignedIn(session) = claim else {
        return Err(used());
    };
    metrics::counter!(crate::metrics::SIGN_INS, "method" => "email_browser", "outcome" => "ok")
        .increment(1);
    let cookie = super::console::session_cookie(&state, &token.token)?;
    let body = BrowserSignedIn {
        omni_account: session.omni.to_string(),
        wallet: session.wallet,
        email: request.subject,
        expires_at: rfc3339(now + ttl),
    };
    Ok((
        [
            (header::SET_COOKIE, cookie),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        axum::Json(body),
    )
        .into_response())
}
