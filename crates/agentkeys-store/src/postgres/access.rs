//! Agents' access requests to their masters.

use agentkeys_types::OmniAccount;
use tokio_postgres::Row;

use super::tx::Db;
use super::{col, omni};
use crate::{AccessDecision, AccessRequest, Result, StoreError};

macro_rules! columns {
    () => {
        "id, agent, master, scope, max_uses, ttl_seconds, reason, created_at, expires_at, \
         decision, decided_at, grant_id"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO access_requests (",
    columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
);
pub(super) const SELECT: &str =
    concat!("SELECT ", columns!(), " FROM access_requests WHERE id = $1");
pub(super) const SELECT_OF: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM access_requests WHERE ($1::text IS NULL OR master = $1) AND ($2::text IS NULL OR agent = $2)
     ORDER BY created_at, id"
);
const PENDING: &str = "SELECT COUNT(*) FROM access_requests
     WHERE agent = $1 AND decision IS NULL AND expires_at > $2";
/// One statement decides, so two deciders (from any instance) cannot both win.
const DECIDE: &str = "UPDATE access_requests SET decision = $1, grant_id = $2, decided_at = $3
     WHERE id = $4 AND decision IS NULL AND expires_at > $3";

pub(super) fn insert(db: &mut Db<'_, '_>, a: &AccessRequest) -> Result<()> {
    db.execute(
        INSERT,
        &[
            &a.id,
            &a.agent.as_str(),
            &a.master.as_str(),
            &a.scope,
            &a.max_uses,
            &a.ttl_seconds,
            &a.reason,
            &a.created_at,
            &a.expires_at,
            &a.decision.map(AccessDecision::as_str),
            &a.decided_at,
            &a.grant_id,
        ],
    )?;
    Ok(())
}

pub(super) fn get(db: &mut Db<'_, '_>, id: &str) -> Result<Option<AccessRequest>> {
    db.query_opt(SELECT, &[&id])?.as_ref().map(row).transpose()
}

pub(super) fn pending_of(db: &mut Db<'_, '_>, agent: &OmniAccount, now: i64) -> Result<u64> {
    let n: i64 = match db.query_opt(PENDING, &[&agent.as_str(), &now])? {
        Some(r) => col(&r, 0)?,
        None => 0,
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

pub(super) fn decide(
    db: &mut Db<'_, '_>,
    id: &str,
    decision: AccessDecision,
    grant_id: Option<&str>,
    now: i64,
) -> Result<bool> {
    Ok(db.execute(DECIDE, &[&decision.as_str(), &grant_id, &now, &id])? > 0)
}

pub(super) fn row(row: &Row) -> Result<AccessRequest> {
    let decision: Option<String> = col(row, 9)?;
    let decision = decision
        .map(|s| {
            AccessDecision::parse(&s).ok_or_else(|| {
                StoreError::Database(format!("a stored access decision is unknown: {s:?}"))
            })
        })
        .transpose()?;
    Ok(AccessRequest {
        id: col(row, 0)?,
        agent: omni(col(row, 1)?)?,
        master: omni(col(row, 2)?)?,
        scope: col(row, 3)?,
        max_uses: col(row, 4)?,
        ttl_seconds: col(row, 5)?,
        reason: col(row, 6)?,
        created_at: col(row, 7)?,
        expires_at: col(row, 8)?,
        decision,
        decided_at: col(row, 10)?,
        grant_id: col(row, 11)?,
    })
}
