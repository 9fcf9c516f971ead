//! The caller's own session.

use agentkeys_store::NewAuditEvent;
use agentkeys_types::api::{ActorKind, WhoAmI};
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;

use crate::clock::rfc3339;
use crate::http::error::ApiError;
use crate::http::extract::AuthSession;
use crate::session::session_ref;
use crate::state::AppState;

/// Who the bearer is.
#[utoipa::path(get, path = "/v1/session", tag = "session", security(("bearer" = [])),
    responses((status = 200, body = WhoAmI), (status = 401, body = agentkeys_types::ErrorBody)))]
pub async fn whoami(AuthSession(s): AuthSession) -> axum::Json<WhoAmI> {
    axum::Json(WhoAmI {
        omni_account: s.omni,
        wallet: s.wallet,
        kind: if s.kind == "agent" {
            ActorKind::Agent
        } else {
            ActorKind::Master
        },
        expires_at: rfc3339(s.expires_at),
    })
}

/// Revoke the bearer's session.
#[utoipa::path(post, path = "/v1/session/logout", tag = "session", security(("bearer" = [])),
    responses((status = 204, description = "Revoked"), (status = 401, body = agentkeys_types::ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    AuthSession(s): AuthSession,
) -> Result<StatusCode, ApiError> {
    let now = state.clock.now();
    let event = NewAuditEvent {
        time: now,
        kind: "session.logout".into(),
        actor: Some(s.omni.clone()),
        master: Some(s.omni.clone()),
        outcome: "ok".into(),
        details: json!({"session": session_ref(&s.token_hash)}),
    };
    state
        .store
        .revoke_session(&s.token_hash, now, event)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
