//! The HTTP surface: one router, registered through `utoipa_axum::routes!` so the OpenAPI
//! document and the routes cannot drift.

pub mod error;
pub mod extract;
pub mod routes;

use std::future::Future;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::error::ApiError;
use self::routes::{
    agents, audit, auth, email, grants, identities, mint, oidc, oidc_signin, ops, session,
};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "AgentKeys broker", description = "OpenID Connect issuer and credential broker for AI agents."),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The routes and the OpenAPI document built from them.
pub fn router_and_openapi(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let body_limit = state.settings.body_limit_bytes;
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(oidc::openid_configuration))
        .routes(routes!(oidc::jwks))
        .routes(routes!(auth::wallet_challenge))
        .routes(routes!(auth::wallet_verify))
        .routes(routes!(email::email_start))
        .routes(routes!(email::email_collect))
        .routes(routes!(email::email_browser))
        .routes(routes!(email::landing))
        .routes(routes!(email::landing_js))
        .routes(routes!(email::link_email_start))
        .routes(routes!(oidc_signin::oidc_start))
        .routes(routes!(oidc_signin::oidc_collect))
        .routes(routes!(oidc_signin::callback))
        .routes(routes!(oidc_signin::link_oidc_start))
        .routes(routes!(grants::create))
        .routes(routes!(grants::list))
        .routes(routes!(grants::revoke))
        .routes(routes!(identities::list))
        .routes(routes!(identities::unlink))
        .routes(routes!(session::whoami))
        .routes(routes!(session::logout))
        .routes(routes!(session::logout_all))
        .routes(routes!(session::list_sessions))
        .routes(routes!(session::revoke_one))
        .routes(routes!(agents::pairing_start))
        .routes(routes!(agents::pairing_approve))
        .routes(routes!(agents::pairing_poll))
        .routes(routes!(agents::agent_session))
        .routes(routes!(agents::list_agents))
        .routes(routes!(agents::suspend_agent))
        .routes(routes!(agents::resume_agent))
        .routes(routes!(agents::remove_agent))
        .routes(routes!(audit::list))
        .routes(routes!(mint::mint_oidc_jwt))
        .routes(routes!(mint::mint_aws_creds_retired))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .with_state(state)
        .split_for_parts();
    let spec = openapi.clone();
    let router = router
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { axum::Json(spec) }),
        )
        .fallback(|| async { ApiError::NotFound("no such route; see /openapi.json".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(axum::middleware::map_response(envelope_for_bare_errors))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(TraceLayer::new_for_http());
    (router, openapi)
}

pub fn router(state: AppState) -> Router {
    router_and_openapi(state).0
}

/// Errors produced by layers (for example the body limit's bare 413) get the JSON envelope.
async fn envelope_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    // Bare errors from axum and tower layers are plain text (or empty); our own answers are
    // JSON, or HTML for the pages a browser sees, and pass untouched.
    let bare = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("text/plain"));
    if !bare || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge.into_response(),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed.into_response(),
        StatusCode::NOT_FOUND => {
            ApiError::NotFound("no such route; see /openapi.json".into()).into_response()
        }
        s if s.is_client_error() => {
            let message = s.canonical_reason().unwrap_or("bad request").to_owned();
            ApiError::BadRequest(message).into_response()
        }
        _ => ApiError::internal(anyhow::anyhow!("layer error {status}")).into_response(),
    }
}

/// Serves until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // The peer address feeds per-IP limits (email sign-in).
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
