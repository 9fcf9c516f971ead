//! The caller's own session.

use agentkeys_types::api::{SessionInfo, SessionList, WhoAmI};
use agentkeys_types::audit::{AuditKind, Outcome};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::event;
use crate::clock::rfc3339;
use crate::http::error::ApiError;
use crate::http::extract::AuthSession;
use crate::session::{self, OwnSession, session_ref};
use crate::state::AppState;

/// Who the bearer is.
#[utoipa::path(get, path = "/v1/session", tag = "session", security(("bearer" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = agentkeys_types::ErrorBody)))]
pub async fn whoami(AuthSession(s): AuthSession) -> axum::Json<WhoAmI> {
    axum::Json(WhoAmI {
        omni_account: s.omni.to_string(),
        wallet: s.wallet,
        kind: s.kind,
        expires_at: rfc3339(s.expires_at),
    })
}

/// Revoke the bearer's session.
#[utoipa::path(post, path = "/v1/session/logout", tag = "session", security(("bearer" = [])),
    responses((status = 204, description = "Revoked"), (status = 401, body = agentkeys_types::ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    AuthSession(s): AuthSession,
) -> Result<impl IntoResponse, ApiError> {
    let now = state.clock.now();
    let audit = event(
        now,
        AuditKind::SessionLogout,
        Some(s.omni.as_str()),
        Some(s.master.as_str()),
        Outcome::Ok,
        json!({"session": session_ref(&s.token_hash)}),
    );
    state
        .store
        .transact(move |tx| session::revoke(tx, &s.token_hash, now, &audit))
        .await?;
    // A console's cookie goes with the session it named.
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, super::console::CLEAR_COOKIE)],
    ))
}

/// The caller's live sessions.
#[utoipa::path(get, path = "/v1/sessions", tag = "session", security(("bearer" = [])),
    responses((status = 200, body = SessionList), (status = 401, body = agentkeys_types::ErrorBody)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    AuthSession(s): AuthSession,
) -> Result<axum::Json<SessionList>, ApiError> {
    let sessions = state.store.sessions_of(&s.omni, state.clock.now()).await?;
    Ok(axum::Json(SessionList {
        sessions: sessions
            .iter()
            .map(|o| SessionInfo {
                id: session_ref(&o.token_hash).to_owned(),
                kind: o.kind,
                created_at: rfc3339(o.created_at),
                expires_at: rfc3339(o.expires_at),
                current: o.token_hash == s.token_hash,
            })
            .collect(),
    }))
}

/// Revoke one of the caller's sessions by its id (from `GET /v1/sessions`).
#[utoipa::path(post, path = "/v1/sessions/{id}/revoke", tag = "session", security(("bearer" = [])),
    params(("id" = String, Path, description = "Session id from GET /v1/sessions")),
    responses((status = 204, description = "Revoked"), (status = 404, body = agentkeys_types::ErrorBody)))]
pub async fn revoke_one(
    State(state): State<AppState>,
    AuthSession(s): AuthSession,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let now = state.clock.now();
    let Some(target) = OwnSession::find(&*state.store, &s, &id, now).await? else {
        return Err(ApiError::NotFound(
            "you have no live session with that id; see GET /v1/sessions".into(),
        ));
    };
    let audit = event(
        now,
        AuditKind::SessionRevoked,
        Some(s.omni.as_str()),
        Some(s.master.as_str()),
        Outcome::Ok,
        json!({"session": id, "by": session_ref(&s.token_hash)}),
    );
    state
        .store
        .transact(move |tx| target.revoke(tx, now, &audit))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revoke every session of the caller, this one included.
#[utoipa::path(post, path = "/v1/session/logout-all", tag = "session", security(("bearer" = [])),
    responses((status = 204, description = "All revoked"), (status = 401, body = agentkeys_types::ErrorBody)))]
pub async fn logout_all(
    State(state): State<AppState>,
    AuthSession(s): AuthSession,
) -> Result<StatusCode, ApiError> {
    let now = state.clock.now();
    let audit = event(
        now,
        AuditKind::SessionLogoutAll,
        Some(s.omni.as_str()),
        Some(s.master.as_str()),
        Outcome::Ok,
        json!({"by": session_ref(&s.token_hash)}),
    );
    state
        .store
        .transact(move |tx| session::revoke_all(tx, &s.omni, None, now, &audit))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
