//! The master's console: static pages embedded in the binary (plain HTML, JavaScript and CSS, no
//! build step) that call the same JSON API as the CLI, authenticated by the HttpOnly session
//! cookie that a browser sign-in sets (wallet: `POST /v1/auth/wallet/browser`; email: the
//! emailed link's page). Changes made with the cookie carry the session's CSRF token.

use agentkeys_types::api::ConsoleSession;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::email::SESSION_COOKIE;
use crate::clock::rfc3339;
use crate::http::error::ApiError;
use crate::http::extract::{AuthSession, bearer_of, csrf_token, session_cookie as cookie_of};
use crate::state::AppState;

/// No inline script or style, nothing from elsewhere, never framed, no referrer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../../../console/index.html");
const APP_JS: &str = include_str!("../../../console/app.js");
const APP_CSS: &str = include_str!("../../../console/app.css");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

/// The console (one page; its sections are chosen by the URL fragment).
#[utoipa::path(get, path = "/console", tag = "console",
    responses((status = 200, description = "HTML page", content_type = "text/html")))]
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The console's script.
#[utoipa::path(get, path = "/console/app.js", tag = "console",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript")))]
pub async fn app_js() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// The console's style sheet.
#[utoipa::path(get, path = "/console/app.css", tag = "console",
    responses((status = 200, description = "CSS", content_type = "text/css")))]
pub async fn app_css() -> impl IntoResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// The console's own session: who is signed in in this browser, and the CSRF token its changes
/// carry in `X-CSRF-Token`. 204 when this browser has no live session (the console then shows
/// its sign-in page; a 401 would be an error in the browser's console on every visit).
/// Signing in is therefore optional here (an empty security alternative in the OpenAPI).
#[utoipa::path(get, path = "/v1/console/session", tag = "console", security((), ("bearer" = [])),
    responses((status = 200, body = ConsoleSession), (status = 204, description = "Not signed in")))]
pub async fn session(
    headers: HeaderMap,
    signed_in: Result<AuthSession, ApiError>,
) -> Result<Response, ApiError> {
    let s = match signed_in {
        Ok(AuthSession(s)) => s,
        Err(ApiError::Unauthenticated) => return Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => return Err(e),
    };
    // The token the extractor accepted: the bearer first, as there.
    let token = bearer_of(&headers)
        .or_else(|| cookie_of(&headers))
        .ok_or(ApiError::Unauthenticated)?;
    let body = ConsoleSession {
        omni_account: s.omni.to_string(),
        wallet: s.wallet,
        kind: s.kind,
        expires_at: rfc3339(s.expires_at),
        via: s
            .via
            .map(|v| format!("{}:{}", v.identity_type, v.identity_value)),
        csrf_token: csrf_token(token),
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response())
}

/// The `Set-Cookie` value that puts `token` in this browser: HttpOnly (no script reads it),
/// SameSite=Strict (no other site's request carries it), Secure behind an https issuer.
pub fn session_cookie(state: &AppState, token: &str) -> Result<HeaderValue, ApiError> {
    let ttl = state.settings.session_ttl_seconds;
    let secure = if state.settings.issuer.url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={ttl}{secure}"
    ))
    .map_err(|e| ApiError::internal(anyhow::anyhow!("session cookie: {e}")))
}

/// The `Set-Cookie` value that removes the session cookie (logout).
pub const CLEAR_COOKIE: &str = "agentkeys_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0";
