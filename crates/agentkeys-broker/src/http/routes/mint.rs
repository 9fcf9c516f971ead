//! `POST /v1/mint-oidc-jwt`, and the retired server-side AWS mint.

use std::time::Instant;

use agentkeys_types::api::{MintRequest, MintResponse};
use axum::extract::State;

use crate::clock::rfc3339;
use crate::http::error::ApiError;
use crate::http::extract::{AuthSession, OptionalJson};
use crate::mint;
use crate::state::AppState;

/// Mint a short-lived ES256 JWT for the bearer's session, for `AssumeRoleWithWebIdentity`.
#[utoipa::path(post, path = "/v1/mint-oidc-jwt", tag = "mint", security(("bearer" = [])),
    request_body(content = MintRequest, description = "Optional; an empty body means the defaults"),
    responses(
        (status = 200, body = MintResponse),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 401, body = agentkeys_types::ErrorBody),
        (status = 403, body = agentkeys_types::ErrorBody),
        (status = 422, body = agentkeys_types::ErrorBody),
        (status = 429, body = agentkeys_types::ErrorBody, headers(("Retry-After" = i64))),
        (status = 503, body = agentkeys_types::ErrorBody)))]
pub async fn mint_oidc_jwt(
    State(state): State<AppState>,
    auth: Result<AuthSession, ApiError>,
    body: Result<OptionalJson<MintRequest>, ApiError>,
) -> Result<axum::Json<MintResponse>, ApiError> {
    let started = Instant::now();
    // Gate 1: a live session. A refusal is audited like every other gate.
    let session = match auth {
        Ok(AuthSession(s)) => s,
        Err(e) => return Err(mint::deny(&state, None, "unauthenticated", e).await),
    };
    let request = match body {
        Ok(OptionalJson(r)) => r,
        Err(e) => return Err(mint::deny(&state, Some(&session), "invalid_request", e).await),
    };
    let minted = mint::mint(&state, &session, &request).await?;
    metrics::histogram!(crate::metrics::MINT_DURATION).record(started.elapsed().as_secs_f64());
    Ok(axum::Json(MintResponse {
        jwt: minted.jwt,
        expiration: rfc3339(minted.expires_at),
        wallet: minted.wallet,
        actor_omni: minted.actor_omni,
    }))
}

/// Retired: the broker holds no AWS credentials. Mint a JWT and call STS from the client.
#[utoipa::path(post, path = "/v1/mint-aws-creds", tag = "mint",
    responses((status = 404, body = agentkeys_types::ErrorBody, description = "Always: the route is retired")))]
pub async fn mint_aws_creds_retired() -> ApiError {
    ApiError::Retired
}
