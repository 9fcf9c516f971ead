//! Agents' access requests to their masters.

use agentkeys_types::OmniAccount;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{bad_value, omni};
use crate::{AccessDecision, AccessRequest};

const COLUMNS: &str = "id, agent, master, scope, max_uses, ttl_seconds, reason, created_at, \
                       expires_at, decision, decided_at, grant_id";

fn row(r: &Row<'_>) -> rusqlite::Result<AccessRequest> {
    let decision =
        match r.get_ref(9)?.as_str_or_null() {
            Ok(None) => None,
            Ok(Some(s)) => Some(AccessDecision::parse(s).ok_or_else(|| {
                bad_value(9, Type::Text, format!("unknown access decision {s:?}"))
            })?),
            Err(e) => return Err(bad_value(9, Type::Text, e)),
        };
    Ok(AccessRequest {
        id: r.get(0)?,
        agent: omni(r, 1)?,
        master: omni(r, 2)?,
        scope: r.get(3)?,
        max_uses: r.get(4)?,
        ttl_seconds: r.get(5)?,
        reason: r.get(6)?,
        created_at: r.get(7)?,
        expires_at: r.get(8)?,
        decision,
        decided_at: r.get(10)?,
        grant_id: r.get(11)?,
    })
}

pub(super) fn insert(conn: &Connection, a: &AccessRequest) -> rusqlite::Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO access_requests ({COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    ))?
    .execute(params![
        a.id,
        a.agent.as_str(),
        a.master.as_str(),
        a.scope,
        a.max_uses,
        a.ttl_seconds,
        a.reason,
        a.created_at,
        a.expires_at,
        a.decision.map(AccessDecision::as_str),
        a.decided_at,
        a.grant_id,
    ])?;
    Ok(())
}

pub(super) fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<AccessRequest>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM access_requests WHERE id = ?1"
    ))?
    .query_row([id], row)
    .optional()
}

pub(super) fn of(
    conn: &Connection,
    master: Option<&OmniAccount>,
    agent: Option<&OmniAccount>,
) -> rusqlite::Result<Vec<AccessRequest>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM access_requests
         WHERE (?1 IS NULL OR master = ?1) AND (?2 IS NULL OR agent = ?2)
         ORDER BY created_at, id"
    ))?
    .query_map(
        params![
            master.map(OmniAccount::as_str),
            agent.map(OmniAccount::as_str)
        ],
        row,
    )?
    .collect()
}

pub(super) fn pending_of(
    conn: &Connection,
    agent: &OmniAccount,
    now: i64,
) -> rusqlite::Result<u64> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM access_requests
             WHERE agent = ?1 AND decision IS NULL AND expires_at > ?2",
        )?
        .query_row(params![agent.as_str(), now], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub(super) fn decide(
    conn: &Connection,
    id: &str,
    decision: AccessDecision,
    grant_id: Option<&str>,
    now: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE access_requests SET decision = ?1, grant_id = ?2, decided_at = ?3
             WHERE id = ?4 AND decision IS NULL AND expires_at > ?3",
        )?
        .execute(params![decision.as_str(), grant_id, now, id])?;
    Ok(n > 0)
}
