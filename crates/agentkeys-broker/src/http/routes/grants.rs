//! Grants: a master gives one of its agents a narrow, expiring slice of its own prefix. A mint
//! under a grant carries the `agentkeys_scope` tag, which the bucket policy turns into access
//! to `<master prefix>/<scope>/*` and nothing else of the master's.

use agentkeys_store::Grant;
use agentkeys_types::OmniAccount;
use agentkeys_types::api::{GrantCreateRequest, GrantInfo, GrantList, WorstCaseExposure};
use agentkeys_types::audit::{AuditKind, Outcome};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::json;

use super::event;
use crate::agents::{self, OwnedAgent};
use crate::clock::rfc3339;
use crate::http::error::ApiError;
use crate::http::extract::{AuthSession, Json, MasterSession};
use crate::session::random_id;
use crate::state::AppState;

/// Longest grant, in seconds.
pub(crate) const MAX_GRANT_SECONDS: i64 = 365 * 86_400;

/// `inbox/` or `projects/x` → `inbox` / `projects/x`: segments of letters, digits and `._-`,
/// no `.` or `..`, no leading slash.
pub(crate) fn normalize_scope(scope: &str) -> Option<String> {
    let trimmed = scope.strip_suffix('/').unwrap_or(scope);
    let ok = !trimmed.is_empty()
        && trimmed.len() <= 160
        && trimmed.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    ok.then(|| trimmed.to_owned())
}

/// How long credentials minted under a grant can outlive its revocation, as every grant (and
/// every access request) states it.
pub(crate) fn exposure(state: &AppState) -> WorstCaseExposure {
    let ttl = state.settings.jwt_ttl_seconds;
    let sts = state.settings.sts_max_session_seconds;
    WorstCaseExposure {
        seconds: (ttl + sts) as u64,
        explanation: format!(
            "revocation stops new mints at once, but a JWT minted just before stays valid for up to \
             {ttl} s and the STS credentials bought with it for up to {sts} s (the role's maximum session)"
        ),
    }
}

pub(crate) fn info(state: &AppState, g: &Grant) -> GrantInfo {
    GrantInfo {
        grant_id: g.id.clone(),
        agent: g.agent.to_string(),
        scope: g
            .scope
            .split_once('/')
            .map(|(_, rel)| format!("{rel}/"))
            .unwrap_or_default(),
        scope_tag: g.scope.clone(),
        created_at: rfc3339(g.created_at),
        expires_at: rfc3339(g.expires_at),
        max_uses: g.max_uses.map(|m| m as u32),
        uses: g.uses as u32,
        revoked_at: g.revoked_at.map(rfc3339),
        worst_case_exposure: exposure(state),
    }
}

/// Grant an agent a scope under the master's own prefix.
#[utoipa::path(post, path = "/v1/grants", tag = "grants", security(("bearer" = [])),
    request_body = GrantCreateRequest,
    responses(
        (status = 200, body = GrantInfo),
        (status = 400, body = agentkeys_types::ErrorBody),
        (status = 404, body = agentkeys_types::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
    Json(req): Json<GrantCreateRequest>,
) -> Result<axum::Json<GrantInfo>, ApiError> {
    let scope = normalize_scope(&req.scope).ok_or_else(|| {
        ApiError::BadRequest(
            "scope is a relative path such as inbox/ (letters, digits, ._- and /)".into(),
        )
    })?;
    let now = state.clock.now();
    let expires_at = time::OffsetDateTime::parse(
        &req.expires_at,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|_| {
        ApiError::BadRequest("expires_at is an RFC 3339 time, e.g. 2026-12-01T00:00:00Z".into())
    })?
    .unix_timestamp();
    if expires_at <= now || expires_at > now + MAX_GRANT_SECONDS {
        return Err(ApiError::BadRequest(
            "expires_at must be in the future and at most a year ahead".into(),
        ));
    }
    if req.max_uses == Some(0) {
        return Err(ApiError::BadRequest(
            "max_uses, when given, is at least 1".into(),
        ));
    }
    let no_agent =
        || ApiError::NotFound("you have no live agent with that omni; see GET /v1/agents".into());
    let agent: OmniAccount = req.agent.parse().map_err(|_| no_agent())?;
    // The master's prefix: its wallet, or its omni for a wallet-less master.
    let prefix = master.wallet.as_deref().unwrap_or(master.omni.as_str());
    let grant = Grant {
        id: random_id(),
        master: master.omni.clone(),
        agent,
        scope: format!("{prefix}/{scope}"),
        created_at: now,
        expires_at,
        max_uses: req.max_uses.map(i64::from),
        uses: 0,
        revoked_at: None,
    };
    let m = Some(master.omni.as_str());
    let details = json!({"grant": grant.id, "agent": grant.agent, "scope": grant.scope, "expires_at": expires_at, "max_uses": req.max_uses});
    let created = event(now, AuditKind::GrantCreated, m, m, Outcome::Ok, details);
    let master_omni = master.omni.clone();
    // The agent is checked in the transaction that stores the grant, so a removal that
    // commits first wins.
    let made = state
        .store
        .transact(move |tx| {
            let Some(to) = OwnedAgent::check(tx, &master_omni, &grant.agent)? else {
                return Ok(None);
            };
            agents::give_grant(tx, &to, grant, &created).map(Some)
        })
        .await?;
    let Some(grant) = made else {
        return Err(no_agent());
    };
    Ok(axum::Json(info(&state, &grant)))
}

/// A master's grants, or an agent's own.
#[utoipa::path(get, path = "/v1/grants", tag = "grants", security(("bearer" = [])),
    responses((status = 200, body = GrantList), (status = 401, body = agentkeys_types::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    AuthSession(s): AuthSession,
) -> Result<axum::Json<GrantList>, ApiError> {
    let grants = if s.is_agent() {
        state.store.grants_of(None, Some(&s.omni)).await?
    } else {
        state.store.grants_of(Some(&s.omni), None).await?
    };
    Ok(axum::Json(GrantList {
        grants: grants.iter().map(|g| info(&state, g)).collect(),
        worst_case_exposure: exposure(&state),
    }))
}

/// Revoke a grant: the agent's next mint under it is refused.
#[utoipa::path(delete, path = "/v1/grants/{grant_id}", tag = "grants", security(("bearer" = [])),
    params(("grant_id" = String, Path, description = "The grant's id")),
    responses((status = 204, description = "Revoked"), (status = 404, body = agentkeys_types::ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
    Path(grant_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let now = state.clock.now();
    let m = Some(master.omni.as_str());
    let e = event(
        now,
        AuditKind::GrantRevoked,
        m,
        m,
        Outcome::Ok,
        json!({"grant": grant_id}),
    );
    let revoked = state
        .store
        .transact(move |tx| {
            // Ownership is the primitive's `master` filter: one conditional statement, so
            // there is no separate read to turn into a capability.
            let revoked = tx.revoke_grant(&master.omni, &grant_id, now)?;
            if revoked {
                tx.append(&e)?;
            }
            Ok(revoked)
        })
        .await?;
    if revoked {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(
            "you have no live grant with that id; see GET /v1/grants".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_scope;

    #[test]
    fn scopes() {
        assert_eq!(normalize_scope("inbox/").as_deref(), Some("inbox"));
        assert_eq!(
            normalize_scope("projects/q3-report").as_deref(),
            Some("projects/q3-report")
        );
        for bad in [
            "", "/", "/inbox", "../x", "a/../b", "a//b", "a b", "in*box", "./x",
        ] {
            assert!(normalize_scope(bad).is_none(), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Any string normalises or is refused; what normalises is a path of safe segments,
        /// normalises to itself, and takes a trailing slash; `.`/`..` segments never pass.
        #[test]
        fn scopes_by_property(
            s in ".{0,200}",
            segments in proptest::collection::vec("[A-Za-z0-9_-][A-Za-z0-9._-]{0,15}", 1..6),
            dots in proptest::sample::select(vec![".", ".."]),
            at in 0usize..6,
        ) {
            if let Some(n) = normalize_scope(&s) {
                proptest::prop_assert!(n.len() <= 160 && !n.ends_with('/') && !n.starts_with('/'));
                proptest::prop_assert_eq!(normalize_scope(&n), Some(n.clone()));
                proptest::prop_assert_eq!(normalize_scope(&format!("{n}/")), Some(n.clone()));
                proptest::prop_assert!(n.split('/').all(|seg| seg != "." && seg != ".."));
            }
            let path = segments.join("/");
            proptest::prop_assume!(path.len() <= 160);
            proptest::prop_assert_eq!(normalize_scope(&path), Some(path.clone()));
            let mut with_dots = segments.clone();
            with_dots.insert(at.min(with_dots.len()), dots.to_owned());
            proptest::prop_assert_eq!(normalize_scope(&with_dots.join("/")), None);
            proptest::prop_assert_eq!(normalize_scope(&format!("/{path}")), None);
        }
    }
}
