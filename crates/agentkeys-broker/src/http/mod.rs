//! The HTTP surface: one router, registered through `utoipa_axum::routes!` so the OpenAPI
//! document and the routes cannot drift.

pub mod client_ip;
pub mod error;
pub mod extract;
pub mod limit;
pub mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::error::ApiError;
use self::routes::{
    access, agents, audit, auth, console, email, grants, identities, mint, oidc, oidc_signin, ops,
    session,
};
use crate::state::AppState;
use crate::tls::ReloadingConfig;

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
    let request_timeout = state.settings.request_timeout;
    // Routes anyone may call before proving who they are: each request first takes a token
    // from the client's and the global bucket (SPEC §11.9). Mints without a valid session are
    // limited in the mint handler, since a valid session must not be.
    let anonymous = OpenApiRouter::new()
        .routes(routes!(auth::wallet_challenge))
        .routes(routes!(auth::wallet_verify))
        .routes(routes!(auth::wallet_browser))
        .routes(routes!(email::email_start))
        .routes(routes!(email::email_collect))
        .routes(routes!(email::email_browser))
        .routes(routes!(oidc_signin::oidc_start))
        .routes(routes!(oidc_signin::oidc_collect))
        .routes(routes!(oidc_signin::callback))
        .routes(routes!(agents::pairing_start))
        .routes(routes!(agents::pairing_poll))
        .routes(routes!(agents::agent_session))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit::anonymous,
        ));
    let anonymous_paths: Vec<String> = anonymous
        .get_openapi()
        .paths
        .paths
        .keys()
        .cloned()
        .collect();
    let mut api = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(oidc::openid_configuration))
        .routes(routes!(oidc::jwks))
        .merge(anonymous)
        .routes(routes!(email::landing))
        .routes(routes!(email::landing_js))
        .routes(routes!(console::index))
        .routes(routes!(console::app_js))
        .routes(routes!(console::app_css))
        .routes(routes!(console::session))
        .routes(routes!(email::link_email_start))
        .routes(routes!(oidc_signin::link_oidc_start))
        .routes(routes!(grants::create))
        .routes(routes!(grants::list))
        .routes(routes!(grants::revoke))
        .routes(routes!(access::create, access::list))
        .routes(routes!(access::show))
        .routes(routes!(access::approve))
        .routes(routes!(access::deny))
        .routes(routes!(identities::list))
        .routes(routes!(identities::unlink))
        .routes(routes!(session::whoami))
        .routes(routes!(session::logout))
        .routes(routes!(session::logout_all))
        .routes(routes!(session::list_sessions))
        .routes(routes!(session::revoke_one))
        .routes(routes!(agents::pairing_approve))
        .routes(routes!(agents::pairing_lookup))
        .routes(routes!(agents::pairing_deny))
        .routes(routes!(agents::list_agents))
        .routes(routes!(agents::suspend_agent))
        .routes(routes!(agents::resume_agent))
        .routes(routes!(agents::remove_agent))
        .routes(routes!(audit::list))
        .routes(routes!(audit::chain))
        .routes(routes!(mint::mint_oidc_jwt))
        .routes(routes!(mint::mint_aws_creds_retired))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz));
    // With its own listener, /metrics is not on the public one at all.
    if state.settings.metrics_listen.is_none() {
        api = api.routes(routes!(ops::metrics));
    }
    let (router, mut openapi) = api.with_state(state).split_for_parts();
    document_rate_limit(&mut openapi, &anonymous_paths);
    document_common_errors(&mut openapi);
    let spec = openapi.clone();
    let router = router
        .route(
            "/openapi.json",
            axum::routing::get(move || async move { axum::Json(spec) }),
        )
        .fallback(|| async { ApiError::NotFound("no such route; see /openapi.json".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // A body sent slowly must not hold its connection for ever (the header-read timeout
        // covers only the head); the bare 408 gets the envelope below.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(axum::middleware::map_response(envelope_for_bare_errors))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(TraceLayer::new_for_http());
    (router, openapi)
}

/// Documents the anonymous limiter's 429 on every operation behind it, in one place rather
/// than on each handler.
fn document_rate_limit(openapi: &mut utoipa::openapi::OpenApi, paths: &[String]) {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    use utoipa::openapi::{Content, Header, Ref, ResponseBuilder};
    let retry_after = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)));
    let response = ResponseBuilder::new()
        .description("Too many unauthenticated requests from this client IP, or from all clients")
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .header("Retry-After", Header::new(retry_after))
        .build();
    for path in paths {
        let Some(item) = openapi.paths.paths.get_mut(path) else {
            continue;
        };
        for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
            operation
                .responses
                .responses
                .entry("429".to_owned())
                .or_insert_with(|| response.clone().into());
        }
    }
}

/// Documents the answers the shared extractors give on every operation that uses them, in one
/// place: a JSON body can be malformed (400), too large (413), not JSON (415) or of the wrong
/// shape (422); a bearer-only operation answers 401 without a live session, and, outside the
/// session routes any session may use, 403 to an agent's session where a master's is needed.
fn document_common_errors(openapi: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{Content, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            )
            .build()
    };
    let body_errors = [
        ("400", "The body is not valid JSON, or a field is malformed"),
        ("413", "The body is larger than BROKER_BODY_LIMIT_BYTES"),
        ("415", "The body is not sent as application/json"),
        ("422", "The JSON does not have the documented shape"),
    ];
    for (path, item) in openapi.paths.paths.iter_mut() {
        let any_session = path.starts_with("/v1/session");
        for operation in [&mut item.get, &mut item.post, &mut item.delete]
            .into_iter()
            .flatten()
        {
            let responses = &mut operation.responses.responses;
            if operation.request_body.is_some() {
                for (status, description) in body_errors {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error(description).into());
                }
            }
            let bearer_only = operation.security.as_ref().is_some_and(|alternatives| {
                !alternatives.is_empty()
                    && alternatives.iter().all(|a| {
                        serde_json::to_value(a)
                            .is_ok_and(|v| v.as_object().is_some_and(|o| o.contains_key("bearer")))
                    })
            });
            if bearer_only {
                responses
                    .entry("401".to_owned())
                    .or_insert_with(|| error("No live session in `Authorization: Bearer`").into());
                if !any_session {
                    responses.entry("403".to_owned()).or_insert_with(|| {
                        error("Not allowed to this session (e.g. an agent's, where a master's is needed)").into()
                    });
                }
            }
        }
    }
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
        StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout.into_response(),
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

/// The router of the separate metrics listener (`BROKER_METRICS_LISTEN`): `/metrics` only.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(routes::ops::metrics))
        .with_state(state)
        .fallback(|| async { ApiError::NotFound("this listener serves /metrics only".into()) })
}

/// What one listener allows its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub fn of(state: &AppState) -> Self {
        Self {
            header_read_timeout: state.settings.header_read_timeout,
            max_connections: state.settings.max_connections,
        }
    }
}

/// Serves the API until `shutdown` resolves, then drains in-flight requests: over TLS when the
/// settings name a certificate and key (`--tls-cert`, `--tls-key`).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = ConnectionLimits::of(&state);
    let tls = match &state.settings.tls {
        Some(files) => Some(Arc::new(
            ReloadingConfig::open(files.clone()).map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    serve_router(listener, router(state), limits, tls, shutdown).await
}

/// Serves [`metrics_router`] until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = ConnectionLimits::of(&state);
    serve_router(listener, metrics_router(state), limits, None, shutdown).await
}

/// HTTP/1.1 with hyper directly rather than `axum::serve`, which sets no timer and so no
/// header-read timeout: a client trickling its headers held a connection for as long as it
/// liked. Each connection records its peer address (`ConnectInfo`, read by `ClientIp`).
///
/// Connections beyond `max_connections` are not accepted until one closes: they wait in the
/// kernel's listen queue (and time out on the client's side if it stays full) instead of being
/// accepted and dropped, which would cost the same work per attempt and turn a burst into
/// errors. The header-read timeout bounds how long a silent or trickling client holds a slot,
/// and with `tls` also how long its handshake may take.
pub async fn serve_router(
    mut listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<ReloadingConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // `biased`: shutdown first, so it is polled (and wins) even when a slot or a
        // connection is always ready.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // the semaphore is never closed
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
        };
        let service = app.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                request
            },
        );
        let service = TowerToHyperService::new(service);
        let Some(tls) = tls.clone() else {
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                // Timeouts and resets end here; they are the client's business, not an error
                // of ours.
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, peer = %peer, "http.connection_closed");
                }
                drop(slot);
            });
            continue;
        };
        // The handshake runs in the connection's task, so a slow client cannot stall accepting.
        let http = http.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let stream =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, peer = %peer, "tls.handshake_failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %peer, "tls.handshake_timed_out");
                        return;
                    }
                };
            let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, peer = %peer, "http.connection_closed");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
