//! The in-memory limiters applied to HTTP requests: a route layer for the unauthenticated
//! routes, and [`admit`] for handlers that limit only some of their requests (mints without a
//! valid session, pairing approvals).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::client_ip::ClientIp;
use super::error::ApiError;
use crate::limiter::Limiter;
use crate::state::AppState;

/// Takes one token for `ip` from `limiter` (named `name` in metrics), or answers 429 with
/// `Retry-After`. Nothing is written anywhere on refusal but a metric.
pub fn admit(
    state: &AppState,
    limiter: &Limiter,
    name: &'static str,
    ip: ClientIp,
) -> Result<(), ApiError> {
    limiter.check(ip.0, state.clock.now_ms()).map_err(|limited| {
        metrics::counter!(crate::metrics::RATE_LIMITED, "limiter" => name, "scope" => limited.scope.as_str())
            .increment(1);
        ApiError::RateLimited {
            retry_after: limited.retry_after,
        }
    })
}

/// Route layer of the unauthenticated routes: a refused request never reaches its handler,
/// so it costs no store read or write.
pub async fn anonymous(
    State(state): State<AppState>,
    ip: ClientIp,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    admit(&state, &state.anonymous_limiter, "anonymous", ip)?;
    Ok(next.run(request).await)
}
