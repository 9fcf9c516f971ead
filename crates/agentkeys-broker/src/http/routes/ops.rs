//! Liveness, readiness, metrics.

use agentkeys_types::api::{Health, Readiness};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;

use crate::http::error::ApiError;
use crate::http::extract::bearer_of;
use crate::state::AppState;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// How long a failed store write keeps `/readyz` not-ready when no write commits after it.
pub const WRITE_FAILURE_HOLD_SECONDS: i64 = 10;

/// Readiness: the store answers and takes writes, and an active signing key is loaded.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    // A store that answers reads but failed its last write (a full disk) is not ready either:
    // until a write commits, or for WRITE_FAILURE_HOLD_SECONDS after the failure, so that a
    // balancer that stopped sending traffic lets some through again to find out.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let writes_failing = state
        .store
        .audit_counter()
        .failing_since()
        .is_some_and(|t| now - t < WRITE_FAILURE_HOLD_SECONDS);
    let store_ok = !writes_failing && state.store.ping().await.is_ok();
    let key_ok = state.keys.current().signer(state.clock.now()).is_some();
    let word = |ok: bool| if ok { "ok" } else { "unavailable" }.to_owned();
    let status = if store_ok && key_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: word(store_ok && key_ok),
            store: word(store_ok),
            signing_key: word(key_ok),
        }),
    )
}

/// Prometheus text exposition. With `BROKER_METRICS_TOKEN` set it needs that bearer token;
/// with `BROKER_METRICS_LISTEN` set it is served only on that address.
#[utoipa::path(get, path = "/metrics", tag = "ops", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus metrics", content_type = "text/plain"),
        (status = 401, body = agentkeys_types::ErrorBody, description = "A metrics token is configured and the request lacks it")))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(token) = &state.settings.metrics_token
        && !bearer_of(&headers).is_some_and(|presented| token.matches(presented))
    {
        return Err(ApiError::MetricsTokenRequired);
    }
    // Audit writes are counted by the store's writer, where every append happens.
    let audit = state.store.audit_counter();
    metrics::counter!(crate::metrics::AUDIT_WRITES, "outcome" => "ok").absolute(audit.committed());
    metrics::counter!(crate::metrics::AUDIT_WRITES, "outcome" => "failed").absolute(audit.lost());
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    ))
}
