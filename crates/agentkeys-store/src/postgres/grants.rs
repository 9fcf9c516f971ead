//! A master's grants to its agents.

use tokio_postgres::Row;

use super::tx::Db;
use super::{col, omni};
use crate::{Grant, Result};
use agentkeys_types::OmniAccount;

macro_rules! grant_columns {
    () => {
        "id, master, agent, scope, created_at, expires_at, max_uses, uses, revoked_at"
    };
}

const INSERT: &str = concat!(
    "INSERT INTO grants (",
    grant_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
);
pub(super) const SELECT: &str = concat!("SELECT ", grant_columns!(), " FROM grants WHERE id = $1");
pub(super) const SELECT_OF: &str = concat!(
    "SELECT ",
    grant_columns!(),
    " FROM grants WHERE ($1::text IS NULL OR master = $1) AND ($2::text IS NULL OR agent = $2)
     ORDER BY created_at, id"
);
/// One statement decides and consumes, so concurrent uses (from any instance) never exceed
/// `max_uses`.
const USE: &str = "UPDATE grants SET uses = uses + 1
     WHERE id = $1 AND agent = $2 AND revoked_at IS NULL AND expires_at > $3
       AND (max_uses IS NULL OR uses < max_uses)";
const REVOKE: &str =
    "UPDATE grants SET revoked_at = $1 WHERE id = $2 AND master = $3 AND revoked_at IS NULL";

pub(super) fn insert_grant(db: &mut Db<'_, '_>, g: &Grant) -> Result<()> {
    db.execute(
        INSERT,
        &[
            &g.id,
            &g.master.as_str(),
            &g.agent.as_str(),
            &g.scope,
            &g.created_at,
            &g.expires_at,
            &g.max_uses,
            &g.uses,
            &g.revoked_at,
        ],
    )?;
    Ok(())
}

pub(super) fn grant(db: &mut Db<'_, '_>, id: &str) -> Result<Option<Grant>> {
    db.query_opt(SELECT, &[&id])?
        .as_ref()
        .map(grant_row)
        .transpose()
}

pub(super) fn use_grant(
    db: &mut Db<'_, '_>,
    id: &str,
    agent: &OmniAccount,
    now: i64,
) -> Result<bool> {
    Ok(db.execute(USE, &[&id, &agent.as_str(), &now])? > 0)
}

pub(super) fn revoke_grant(
    db: &mut Db<'_, '_>,
    master: &OmniAccount,
    id: &str,
    now: i64,
) -> Result<bool> {
    Ok(db.execute(REVOKE, &[&now, &id, &master.as_str()])? > 0)
}

pub(super) fn grant_row(row: &Row) -> Result<Grant> {
    Ok(Grant {
        id: col(row, 0)?,
        master: omni(col(row, 1)?)?,
        agent: omni(col(row, 2)?)?,
        scope: col(row, 3)?,
        created_at: col(row, 4)?,
        expires_at: col(row, 5)?,
        max_uses: col(row, 6)?,
        uses: col(row, 7)?,
        revoked_at: col(row, 8)?,
    })
}
