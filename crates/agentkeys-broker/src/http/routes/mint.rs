//! `POST /v1/mint-oidc-jwt`, and the retired server-side AWS mint.

use std::time::Instant;

use agentkeys_types::api::{MintRequest, MintResponse};
use axum::extract::State;

use crate::clock::rfc3339;
use crate::denials::DenialKind;
use crate::http::client_ip::ClientIp;
use crate::http::error::ApiError;
use crate::http::extract::{AuthSession, OptionalJson};
use crate::http::limit;
use crate::metrics::mint_denied;
use crate::mint::{self, DenyReason};
use crate::state::AppState;

/// Mint a short-lived ES256 JWT for the bearer's session, for `AssumeRoleWithWebIdentity`.
#[utoipa::path(post, path = "/v1/mint-oidc-jwt", tag = "mint", security(("bearer" = [])),
    request_body(content = Option<MintRequest>, description = "Optional; an empty body means the defaults"),
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
    ip: ClientIp,
    auth: Result<AuthSession, ApiError>,
    body: Result<OptionalJson<MintRequest>, ApiError>,
) -> Result<axum::Json<MintResponse>, ApiError> {
    let started = Instant::now();
    // Gate 1: a live session. Without one the caller proved nothing, so the refusal is limited
    // per client IP and audited in aggregate (one `anonymous.denied` per IP per window), not
    // one chained event per request.
    let session = match auth {
        Ok(AuthSession(s)) => s,
        Err(e) => {
            limit::admit(&state, &state.anonymous_limiter, "anonymous", ip)?;
            mint_denied(&DenyReason::Unauthenticated);
            state
                .denials
                .record(ip.0, DenialKind::MintUnauthenticated, state.clock.now());
            return Err(e);
        }
    };
    let request = match body {
        Ok(OptionalJson(r)) => r,
        Err(e) => {
            let reason = DenyReason::InvalidRequest(e);
            return Err(mint::deny(&state, Some(&session), reason).await);
        }
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
