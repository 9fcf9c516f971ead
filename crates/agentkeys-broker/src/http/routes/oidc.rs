//! OpenID Connect discovery and the JWKS (SPEC §5.1).

use agentkeys_types::claims::CLAIMS_SUPPORTED;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::state::AppState;

/// The discovery document. `claims_supported` is exactly what the mint can emit.
pub fn discovery(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "claims_supported": CLAIMS_SUPPORTED,
        "scopes_supported": ["openid"],
    })
}

/// OpenID Connect discovery document.
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "oidc",
    responses((status = 200, description = "Discovery document", body = Object)))]
pub async fn openid_configuration(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CACHE_CONTROL,
            format!("public, max-age={}", state.settings.jwks_max_age_seconds),
        )],
        Json(discovery(&state.settings.issuer.url)),
    )
}

/// Public signing keys: the active key first, then keys still inside their publication window.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "oidc",
    responses((status = 200, description = "JWK Set (EC P-256, ES256, with x5c)", body = Object)))]
pub async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    let now = state.clock.now();
    let body = state.keys.current().lifecycle.jwks(now);
    (
        [(
            header::CACHE_CONTROL,
            format!("public, max-age={}", state.settings.jwks_max_age_seconds),
        )],
        Json(body),
    )
}
