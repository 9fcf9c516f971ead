//! `POST /v1/mint-oidc-jwt`, and the retired server-side AWS mint.

use std::time::Instant;

use agentkeys_types::api::{MintRequest, MintResponse};
use axum::extract::State;
use serde_json::value::RawValue;

use crate::clock::rfc3339;
use crate::denials::DenialKind;
use crate::http::client_ip::ClientIp;
use crate::http::error::ApiError;
use crate::http::extract::{MintSession, OptionalJson};
use crate::http::limit;
use crate::metrics::mint_denied;
use crate::mint::{self, DenyReason, MintError};
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
    auth: Result<MintSession, ApiError>,
    body: Result<OptionalJson<MintRequest>, ApiError>,
) -> Result<axum::Json<MintBody>, ApiError> {
    let started = Instant::now();
    // Gate 1: a live session. Without one the caller proved nothing, so the refusal is limited
    // per client IP and audited in aggregate (one `anonymous.denied` per IP per window), not
    // one chained event per request.
    let session = match auth {
        Ok(MintSession(s)) => s,
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
            return Err(
                match mint::deny(&state, &session, DenyReason::InvalidRequest).await {
                    MintError::Denied(DenyReason::InvalidRequest) => e,
                    // No longer live: refused as such (gates 1 and 2 come first).
                    other => other.into(),
                },
            );
        }
    };
    let minted = mint::mint(&state, &session, &request).await?;
    metrics::histogram!(crate::metrics::MINT_DURATION).record(started.elapsed().as_secs_f64());
    Ok(axum::Json(MintBody::of(minted)?))
}

/// [`MintResponse`] as it is sent, with the token copied in as it is. A JWT is three base64url
/// segments joined by dots, so no byte of it needs escaping; serde_json's byte-by-byte escaping
/// of its ≈ 1 KB was ≈ 3 % of a mint's instructions.
#[derive(serde::Serialize)]
pub struct MintBody {
    jwt: Box<RawValue>,
    expiration: String,
    wallet: String,
    actor_omni: String,
}

impl MintBody {
    fn of(minted: mint::Minted) -> Result<Self, ApiError> {
        // Checked, not assumed: the parse refuses what would break the string (a quote, a
        // control byte); a backslash, the one byte that could parse yet read back otherwise, is
        // looked for first (a vectorized search).
        let unsafe_token =
            || ApiError::internal(anyhow::anyhow!("the signed token is not JSON-safe"));
        if minted.jwt.contains('\\') {
            return Err(unsafe_token());
        }
        let jwt =
            RawValue::from_string(format!("\"{}\"", minted.jwt)).map_err(|_| unsafe_token())?;
        Ok(Self {
            jwt,
            expiration: rfc3339(minted.expires_at),
            wallet: minted.wallet,
            actor_omni: minted.actor_omni,
        })
    }
}

/// Retired: the broker holds no AWS credentials. Mint a JWT and call STS from the client.
#[utoipa::path(post, path = "/v1/mint-aws-creds", tag = "mint",
    responses((status = 404, body = agentkeys_types::ErrorBody, description = "Always: the route is retired")))]
pub async fn mint_aws_creds_retired() -> ApiError {
    ApiError::Retired
}

/// The one mapping of a mint's refusals to HTTP.
impl From<DenyReason> for ApiError {
    fn from(reason: DenyReason) -> Self {
        let kind = reason.kind();
        let forbidden = |message: &str| ApiError::Forbidden {
            kind,
            message: message.to_owned(),
        };
        match reason {
            DenyReason::Unauthenticated => ApiError::Unauthenticated,
            DenyReason::AgentSuspended | DenyReason::AgentRemoved => {
                forbidden(&format!("this agent cannot mint ({kind}); ask its master"))
            }
            // The route answers with the body's own error; this is only the fallback.
            DenyReason::InvalidRequest => ApiError::BadRequest("the request body was refused".into()),
            DenyReason::AudienceNotAllowed { allowed } => forbidden(&format!(
                "that audience is not in the broker's allow-list ({})",
                allowed.join(", ")
            )),
            DenyReason::InvalidRoleArn => ApiError::BadRequest(
                "role_arn must look like arn:aws:iam::123456789012:role/NAME (or arn:aws:iam:::role/NAME)".into(),
            ),
            DenyReason::GrantNotForMasters => {
                forbidden("grants are used by the agents they were given to, not by masters")
            }
            DenyReason::GrantUnknown => forbidden("no grant has that id"),
            DenyReason::GrantNotYours => forbidden("that grant was given to another agent"),
            DenyReason::GrantRevoked => forbidden("that grant was revoked by its master"),
            DenyReason::GrantExpired => forbidden("that grant has expired"),
            DenyReason::GrantExhausted => forbidden("that grant has no uses left"),
            DenyReason::InvalidSessionTag(message) => ApiError::Unprocessable { kind, message },
            DenyReason::NoSigningKey => ApiError::Unavailable(
                "no active signing key; see `agentkeys-broker keys list`".into(),
            ),
            DenyReason::RateLimited { retry_after } => ApiError::RateLimited { retry_after },
            DenyReason::GrantUnavailable => {
                forbidden("the grant was revoked, expired or used up just now")
            }
            // Fail closed with an answer a client can act on: a full disk or a lost database
            // is transient, and the operator finds the cause in the log.
            DenyReason::AuditFailed(e) => {
                tracing::error!(error = %e, token_issued = false, "mint.audit_failed");
                ApiError::Unavailable(
                    "no token was issued: its audit event could not be stored; retry later \
                     (the broker log has the cause)"
                        .into(),
                )
            }
        }
    }
}

impl From<MintError> for ApiError {
    fn from(e: MintError) -> Self {
        match e {
            MintError::Denied(reason) => reason.into(),
            MintError::Store(e) => e.into(),
            MintError::Signing(e) => {
                ApiError::internal(e.context("signing an allowed mint failed; token withheld"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{DenyReason, MintBody, MintResponse};
    use crate::http::error::ApiError;
    use crate::mint::Minted;
    use axum::http::StatusCode;

    /// The body sent is a [`MintResponse`] as the API documents it and clients read it, the token
    /// included byte for byte; a token that would need escaping is refused, not sent.
    #[test]
    fn the_mint_body_is_the_documented_response() {
        let minted = |jwt: &str| Minted {
            jwt: jwt.to_owned(),
            expires_at: 1_700_000_900,
            wallet: "0xabc".to_owned(),
            actor_omni: "5f".repeat(32),
        };
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_";
        let sent = serde_json::to_string(&MintBody::of(minted(jwt)).unwrap()).unwrap();
        let read: MintResponse = serde_json::from_str(&sent).unwrap();
        let expected = MintResponse {
            jwt: jwt.to_owned(),
            expiration: crate::clock::rfc3339(1_700_000_900),
            wallet: "0xabc".to_owned(),
            actor_omni: "5f".repeat(32),
        };
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::to_value(&expected).unwrap()
        );
        assert_eq!(sent, serde_json::to_string(&expected).unwrap());
        for unsafe_jwt in ["a\"b", "a\\b", "a\nb"] {
            assert!(MintBody::of(minted(unsafe_jwt)).is_err(), "{unsafe_jwt:?}");
        }
    }

    #[test]
    fn deny_reasons_keep_their_strings_and_errors() {
        let cases = [
            (
                DenyReason::Unauthenticated,
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
            ),
            (
                DenyReason::AgentSuspended,
                StatusCode::FORBIDDEN,
                "agent_suspended",
            ),
            (
                DenyReason::AgentRemoved,
                StatusCode::FORBIDDEN,
                "agent_removed",
            ),
            (
                DenyReason::InvalidRequest,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                DenyReason::AudienceNotAllowed {
                    allowed: vec!["sts.amazonaws.com".into()],
                },
                StatusCode::FORBIDDEN,
                "audience_not_allowed",
            ),
            (
                DenyReason::InvalidRoleArn,
                StatusCode::BAD_REQUEST,
                "invalid_role_arn",
            ),
            (
                DenyReason::GrantNotForMasters,
                StatusCode::FORBIDDEN,
                "grant_not_yours",
            ),
            (
                DenyReason::GrantUnknown,
                StatusCode::FORBIDDEN,
                "grant_unknown",
            ),
            (
                DenyReason::GrantNotYours,
                StatusCode::FORBIDDEN,
                "grant_not_yours",
            ),
            (
                DenyReason::GrantRevoked,
                StatusCode::FORBIDDEN,
                "grant_revoked",
            ),
            (
                DenyReason::GrantExpired,
                StatusCode::FORBIDDEN,
                "grant_expired",
            ),
            (
                DenyReason::GrantExhausted,
                StatusCode::FORBIDDEN,
                "grant_exhausted",
            ),
            (
                DenyReason::InvalidSessionTag("too long".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_session_tag",
            ),
            (
                DenyReason::NoSigningKey,
                StatusCode::SERVICE_UNAVAILABLE,
                "no_signing_key",
            ),
            (
                DenyReason::RateLimited { retry_after: 7 },
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
            ),
            (
                DenyReason::GrantUnavailable,
                StatusCode::FORBIDDEN,
                "grant_unavailable",
            ),
            (
                DenyReason::AuditFailed(agentkeys_store::StoreError::Database("x".into())),
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_failed",
            ),
        ];
        for (reason, status, label) in cases {
            assert_eq!(reason.as_str(), label);
            let error = ApiError::from(reason);
            assert_eq!(error.status_and_kind().0, status, "{label}");
            // A 403 or 422 names the reason as its error kind.
            if matches!(
                status,
                StatusCode::FORBIDDEN | StatusCode::UNPROCESSABLE_ENTITY
            ) {
                assert_eq!(error.status_and_kind().1, label);
            }
        }
        assert_eq!(DenyReason::RATE_LIMITED, "rate_limited");
        let e = ApiError::from(DenyReason::AgentSuspended);
        assert_eq!(
            e.to_string(),
            "this agent cannot mint (agent_suspended); ask its master"
        );
    }
}
