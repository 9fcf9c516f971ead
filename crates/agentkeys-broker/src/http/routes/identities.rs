//! A wallet master's linked identities (email, OIDC).

use agentkeys_store::IdentityRef;
use agentkeys_types::api::{IdentityInfo, IdentityList, UnlinkResult};
use agentkeys_types::audit::{AuditKind, Outcome};
use axum::extract::{Path, State};
use serde_json::json;

use super::event;
use crate::clock::rfc3339;
use crate::http::error::ApiError;
use crate::http::extract::MasterSession;
use crate::sign_in;
use crate::state::AppState;

/// Identities linked to the signed-in master.
#[utoipa::path(get, path = "/v1/identities", tag = "identities", security(("bearer" = [])),
    responses((status = 200, body = IdentityList), (status = 401, body = agentkeys_types::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
) -> Result<axum::Json<IdentityList>, ApiError> {
    let identities = state.store.identities_of(&master.omni).await?;
    Ok(axum::Json(IdentityList {
        identities: identities
            .into_iter()
            .map(|i| IdentityInfo {
                identity_type: i.identity_type,
                identity_value: i.identity_value,
                linked_at: rfc3339(i.linked_at),
            })
            .collect(),
    }))
}

/// Unlink an identity: sign-ins by it then make a master of its own again, and the sessions
/// obtained through it are revoked (the one making this call too, if it was).
#[utoipa::path(delete, path = "/v1/identities/{identity_type}/{identity_value}", tag = "identities",
    security(("bearer" = [])),
    params(("identity_type" = String, Path, description = "email or oauth2_<provider>"),
           ("identity_value" = String, Path, description = "The address or subject, URL-encoded")),
    responses((status = 200, body = UnlinkResult), (status = 404, body = agentkeys_types::ErrorBody)))]
pub async fn unlink(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
    Path((identity_type, identity_value)): Path<(String, String)>,
) -> Result<axum::Json<UnlinkResult>, ApiError> {
    let now = state.clock.now();
    let audit = event(
        now,
        AuditKind::IdentityUnlinked,
        Some(master.omni.as_str()),
        Some(master.omni.as_str()),
        Outcome::Ok,
        json!({"identity_type": identity_type, "identity_value": identity_value}),
    );
    let identity = IdentityRef {
        identity_type,
        identity_value,
    };
    let unlinked = state
        .store
        .transact(move |tx| sign_in::unlink(tx, &master.omni, &identity, now, audit))
        .await?;
    match unlinked {
        Some(sessions_revoked) => Ok(axum::Json(UnlinkResult { sessions_revoked })),
        None => Err(ApiError::NotFound(
            "no such identity is linked to you; see GET /v1/identities".into(),
        )),
    }
}
