//! The one error type of the HTTP surface, mapped to a status in one `match`. Causes of 5xx are
//! logged here once and never sent to the client.

use agentkeys_types::{ErrorBody, ErrorKind};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; the message says which part.
    #[error("{0}")]
    BadRequest(String),
    /// 401: one message for unknown, expired and revoked sessions, to leak nothing.
    #[error("the session is missing, unknown, expired or revoked; sign in again")]
    Unauthenticated,
    /// 401 for a failed sign-in proof (signature, challenge).
    #[error("{0}")]
    SignInFailed(String),
    /// 401: `/metrics` without the operator's bearer token.
    #[error("GET /metrics needs the bearer token configured in BROKER_METRICS_TOKEN")]
    MetricsTokenRequired,
    /// 403 with a stable kind.
    #[error("{message}")]
    Forbidden { kind: ErrorKind, message: String },
    #[error("{0}")]
    NotFound(String),
    /// 404 for the retired server-side AWS mint.
    #[error(
        "POST /v1/mint-aws-creds is retired: mint a JWT with POST /v1/mint-oidc-jwt and call \
         sts:AssumeRoleWithWebIdentity from the client (the `agentkeys` CLI does this)"
    )]
    Retired,
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("the request body is larger than the broker's limit (BROKER_BODY_LIMIT_BYTES)")]
    PayloadTooLarge,
    #[error("send the body as JSON with Content-Type: application/json")]
    UnsupportedMediaType,
    /// 408: the request (body included) took longer than BROKER_REQUEST_TIMEOUT_SECONDS.
    #[error("the request took too long to arrive or to answer (BROKER_REQUEST_TIMEOUT_SECONDS)")]
    RequestTimeout,
    /// 422: well-formed JSON whose values are not acceptable.
    #[error("{message}")]
    Unprocessable { kind: ErrorKind, message: String },
    #[error("too many requests; retry after {retry_after} seconds")]
    RateLimited { retry_after: i64 },
    /// 503: not ready (no active signing key, store down).
    #[error("{0}")]
    Unavailable(String),
    /// 500: logged, never shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::Internal(e.into())
    }

    pub fn status_and_kind(&self) -> (StatusCode, ErrorKind) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorKind::InvalidRequest),
            Self::Unauthenticated => (StatusCode::UNAUTHORIZED, ErrorKind::Unauthenticated),
            Self::SignInFailed(_) => (StatusCode::UNAUTHORIZED, ErrorKind::SignInFailed),
            Self::MetricsTokenRequired => (StatusCode::UNAUTHORIZED, ErrorKind::Unauthenticated),
            Self::Forbidden { kind, .. } => (StatusCode::FORBIDDEN, *kind),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, ErrorKind::NotFound),
            Self::Retired => (StatusCode::NOT_FOUND, ErrorKind::RouteRetired),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, ErrorKind::MethodNotAllowed),
            Self::Conflict(_) => (StatusCode::CONFLICT, ErrorKind::Conflict),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::PayloadTooLarge),
            Self::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorKind::UnsupportedMediaType,
            ),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, ErrorKind::RequestTimeout),
            Self::Unprocessable { kind, .. } => (StatusCode::UNPROCESSABLE_ENTITY, *kind),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimited),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unavailable),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Internal),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status_and_kind();
        if let Self::Internal(cause) = &self {
            tracing::error!(error = %format!("{cause:#}"), "http.internal_error");
        }
        let body = ErrorBody {
            error: kind.as_str().to_owned(),
            message: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        if let Self::RateLimited { retry_after } = self
            && let Ok(v) = HeaderValue::from_str(&retry_after.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let Self::MetricsTokenRequired = self {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"metrics\""),
            );
        }
        response
    }
}

impl From<agentkeys_store::StoreError> for ApiError {
    fn from(e: agentkeys_store::StoreError) -> Self {
        Self::Internal(e.into())
    }
}
