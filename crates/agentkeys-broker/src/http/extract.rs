//! Extractors: our JSON body (so bad JSON gets our error envelope) and the bearer session
//! (handlers never parse headers).

use std::sync::Arc;

use agentkeys_store::Session;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::routes::email::SESSION_COOKIE;
use crate::session::token_hash;
use crate::state::AppState;

/// `axum::Json` with rejections mapped to [`ApiError`].
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::BadRequest(format!("the body is not valid JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => ApiError::Unprocessable {
            kind: agentkeys_types::ErrorKind::InvalidField,
            message: e.body_text(),
        },
        JsonRejection::BytesRejection(e) => bytes_rejection(e),
        other => ApiError::BadRequest(other.body_text()),
    }
}

fn bytes_rejection(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else {
        ApiError::BadRequest(format!("could not read the body: {}", e.body_text()))
    }
}

/// A JSON body that may be absent: an empty body means `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let body = Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        // No body, or JSON `null` (what the documented optional body allows): the defaults.
        let trimmed = body.trim_ascii();
        if trimmed.is_empty() || (trimmed == b"null" && is_json(&headers)) {
            return Ok(OptionalJson(T::default()));
        }
        if !is_json(&headers) {
            return Err(ApiError::UnsupportedMediaType);
        }
        // serde would also accept an array for a struct; the API takes objects only.
        if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(ApiError::Unprocessable {
                kind: agentkeys_types::ErrorKind::InvalidField,
                message: "the body must be a JSON object".into(),
            });
        }
        let de = &mut serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(de)
            .map(OptionalJson)
            .map_err(|e| {
                let inner = e.inner();
                if inner.is_data() {
                    ApiError::Unprocessable {
                        kind: agentkeys_types::ErrorKind::InvalidField,
                        message: format!("invalid body at `{}`: {inner}", e.path()),
                    }
                } else {
                    ApiError::BadRequest(format!("the body is not valid JSON: {inner}"))
                }
            })
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// The bearer token of the request, if the header is well-formed.
pub fn bearer(parts: &Parts) -> Option<&str> {
    bearer_of(&parts.headers)
}

/// The bearer token in `headers`, if the header is well-formed.
pub fn bearer_of(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The console's session cookie in `headers`, if there is one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(name, value)| (name == SESSION_COOKIE).then_some(value))
}

/// The header a cookie-authenticated change must carry (`GET /v1/console/session` gives it).
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The CSRF token of a session: derived from its secret, so only a page that could read the
/// session's own answer (same origin) knows it, and it dies with the session.
pub fn csrf_token(session_token: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"agentkeys-console-csrf\0");
    h.update(session_token.as_bytes());
    agentkeys_types::lower_hex(&h.finalize())
}

/// A live session: the bearer token (or, for the console, the session cookie) names a stored
/// session that is neither expired nor revoked. Checked against the store on every request, so
/// revocation is immediate. A request authenticated by the cookie that changes anything (any
/// method but GET and HEAD) must also carry the session's CSRF token in `X-CSRF-Token`: a
/// cross-site page can make the browser send the cookie, but cannot read the token.
#[derive(Debug, Clone)]
pub struct AuthSession(pub Session);

impl FromRequestParts<AppState> for AuthSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let hash = presented_token_hash(parts)?;
        Ok(AuthSession(live_session(state, &hash).await?))
    }
}

/// The hash of the session token the request presents: the bearer token, or the console's
/// cookie (with its CSRF token on a change). Shape-checked, not yet looked up.
fn presented_token_hash(parts: &Parts) -> Result<String, ApiError> {
    let token = match bearer(parts) {
        Some(token) => token,
        None => {
            let token = session_cookie(&parts.headers).ok_or(ApiError::Unauthenticated)?;
            let safe = matches!(parts.method, Method::GET | Method::HEAD);
            let sent = parts.headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if !safe && sent.is_none_or(|s| !constant_time_eq(s, &csrf_token(token))) {
                return Err(ApiError::Forbidden {
                    kind: agentkeys_types::ErrorKind::CsrfFailed,
                    message: "a change made with the console's session cookie needs its \
                              X-CSRF-Token header; reload the console"
                        .into(),
                });
            }
            token
        }
    };
    if !crate::session::looks_like_token(token) {
        return Err(ApiError::Unauthenticated);
    }
    Ok(token_hash(token))
}

/// The stored session with this hash, if it is unrevoked and unexpired now.
async fn live_session(state: &AppState, hash: &str) -> Result<Session, ApiError> {
    let session = state
        .store
        .session(hash)
        .await?
        .ok_or(ApiError::Unauthenticated)?;
    if !session.is_live(state.clock.now()) {
        return Err(ApiError::Unauthenticated);
    }
    Ok(session)
}

/// The session of a mint: as [`AuthSession`], but a session this broker has already seen live
/// comes from [`crate::session_cache`] without a store read. Only its unchanging facts may be
/// used; the mint decides liveness (gates 1 and 2) inside its transaction.
#[derive(Debug, Clone)]
pub struct MintSession(pub Arc<Session>);

impl FromRequestParts<AppState> for MintSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let hash = presented_token_hash(parts)?;
        let now = state.clock.now();
        if let Some(session) = state.mint_sessions.get(&hash, now) {
            return Ok(MintSession(session));
        }
        let session = Arc::new(live_session(state, &hash).await?);
        state.mint_sessions.insert(session.clone(), now);
        Ok(MintSession(session))
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A live session of a master (not an agent): the only kind that may pair and manage agents.
#[derive(Debug, Clone)]
pub struct MasterSession(pub Session);

impl FromRequestParts<AppState> for MasterSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let AuthSession(session) = AuthSession::from_request_parts(parts, state).await?;
        if session.kind != agentkeys_store::ActorKind::Master {
            return Err(ApiError::Forbidden {
                kind: agentkeys_types::ErrorKind::MastersOnly,
                message: "only a master's session can do this; an agent cannot manage agents"
                    .into(),
            });
        }
        Ok(MasterSession(session))
    }
}
