//! A master's audit log: the events about itself and its agents (SPEC §7).

use std::collections::HashMap;

use agentkeys_store::audit::ChainVerifier;
use agentkeys_store::{AuditEvent, AuditQuery};
use agentkeys_types::api::{AuditChainStatus, AuditEventInfo, AuditPage};
use axum::extract::{Query, State};

use crate::clock::rfc3339;
use crate::http::error::ApiError;
use crate::http::extract::MasterSession;
use crate::state::AppState;

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;
const MAX_KIND_LEN: usize = 64;

/// The signed-in master's audit events (its own and its agents'), oldest first.
#[utoipa::path(get, path = "/v1/audit", tag = "audit", security(("bearer" = [])),
    params(
        ("after" = Option<u64>, Query, minimum = 0, maximum = 9_223_372_036_854_775_807_i64, description = "Only events with a larger seq (the previous page's `next`)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "At most this many events, 1-1000 (default 100)"),
        ("kind" = Option<String>, Query, pattern = "^[a-z0-9._-]{1,64}$", description = "Only this kind, e.g. `mint`"),
        ("agent" = Option<String>, Query, pattern = "^[0-9a-f]{64}$", description = "Only events whose actor is this omni (an agent's, or your own)"),
        ("since" = Option<String>, Query, description = "RFC 3339; only events at or after it"),
        ("until" = Option<String>, Query, description = "RFC 3339; only events before it"),
    ),
    responses((status = 200, body = AuditPage), (status = 400, body = agentkeys_types::ErrorBody),
        (status = 401, body = agentkeys_types::ErrorBody), (status = 403, body = agentkeys_types::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    MasterSession(master): MasterSession,
    Query(params): Query<HashMap<String, String>>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    let query = parse(&params)?;
    let limit = query.limit;
    // One extra row tells whether another page follows.
    let listing = state
        .store
        .audit_for_master(
            master.omni.as_str(),
            AuditQuery {
                limit: limit + 1,
                ..query
            },
        )
        .await?;
    let mut events = listing.events;
    let more = events.len() > limit as usize;
    events.truncate(limit as usize);
    // A page may also stop short where the store bounded its search (SQLite, a master with
    // few events spread over a long log): the next one goes on from there.
    let next = if more {
        events.last().map(|e| e.seq)
    } else {
        listing.searched_to
    };
    Ok(axum::Json(AuditPage {
        events: events.into_iter().map(info).collect(),
        next,
    }))
}

/// Serialises verifications: each reads the whole log, so concurrent callers wait for one
/// another instead of scanning it side by side.
static VERIFYING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether the whole audit chain (every master's events: the chain is one) verifies, as
/// `agentkeys-broker audit verify` checks it.
#[utoipa::path(get, path = "/v1/audit/chain", tag = "audit", security(("bearer" = [])),
    responses((status = 200, body = AuditChainStatus), (status = 401, body = agentkeys_types::ErrorBody),
        (status = 403, body = agentkeys_types::ErrorBody)))]
pub async fn chain(
    State(state): State<AppState>,
    MasterSession(_master): MasterSession,
) -> Result<axum::Json<AuditChainStatus>, ApiError> {
    let _one_at_a_time = VERIFYING.lock().await;
    let mut verifier = ChainVerifier::default();
    let mut after = 0;
    let mut broken = None;
    'pages: loop {
        let page = state.store.audit_events(after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for event in &page {
            if let Err(e) = verifier.check(event) {
                broken = Some(e);
                break 'pages;
            }
        }
    }
    Ok(axum::Json(AuditChainStatus {
        intact: broken.is_none(),
        verified_events: verifier.verified(),
        head_seq: verifier.verified(),
        head_hash: verifier.head_hash().to_owned(),
        broken_at: broken.as_ref().map(|b| b.seq),
        reason: broken.map(|b| b.reason),
    }))
}

fn info(e: AuditEvent) -> AuditEventInfo {
    AuditEventInfo {
        seq: e.seq,
        time: rfc3339(e.time),
        kind: e.kind,
        actor: e.actor,
        outcome: e.outcome,
        details: e.details,
        hash: e.hash,
    }
}

fn bad(message: String) -> ApiError {
    ApiError::BadRequest(message)
}

/// The query string, checked; every problem is a 400 naming the parameter.
pub fn parse(params: &HashMap<String, String>) -> Result<AuditQuery, ApiError> {
    let mut q = AuditQuery {
        limit: DEFAULT_LIMIT,
        ..Default::default()
    };
    for (name, value) in params {
        match name.as_str() {
            "after" => {
                // Seqs are int64, as documented: one past it is not a seq.
                q.after_seq = value
                    .parse()
                    .ok()
                    .filter(|n: &u64| i64::try_from(*n).is_ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "after must be a seq (an integer from 0 to 2^63-1), got {value:?}"
                        ))
                    })?
            }
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "limit must be an integer from 1 to {MAX_LIMIT}, got {value:?}"
                        ))
                    })?
            }
            "kind" => {
                let ok = !value.is_empty()
                    && value.len() <= MAX_KIND_LEN
                    && value.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    });
                if !ok {
                    return Err(bad(format!(
                        "kind must be an event kind such as mint or sign_in.wallet, got {value:?}"
                    )));
                }
                q.kind = Some(value.clone());
            }
            "agent" => {
                let ok = value.len() == 64
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !ok {
                    return Err(bad(format!(
                        "agent must be an omni account (64 lowercase hex digits), got {value:?}"
                    )));
                }
                q.actor = Some(value.clone());
            }
            "since" => q.since = Some(time_param("since", value)?),
            "until" => q.until = Some(time_param("until", value)?),
            other => {
                return Err(bad(format!(
                    "unknown query parameter {other:?}; use after, limit, kind, agent, since, until"
                )));
            }
        }
    }
    if let (Some(since), Some(until)) = (q.since, q.until)
        && since >= until
    {
        return Err(bad("since must be earlier than until".into()));
    }
    Ok(q)
}

fn time_param(name: &str, value: &str) -> Result<i64, ApiError> {
    time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| {
            bad(format!(
                "{name} must be an RFC 3339 time such as 2025-01-31T12:00:00Z, got {value:?}"
            ))
        })
}
