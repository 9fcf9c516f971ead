//! A master's grants of a slice of its prefix to its agents.

use agentkeys_types::OmniAccount;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::omni;
use crate::Grant;

const COLUMNS: &str =
    "id, master, agent, scope, created_at, expires_at, max_uses, uses, revoked_at";

fn row(r: &Row<'_>) -> rusqlite::Result<Grant> {
    Ok(Grant {
        id: r.get(0)?,
        master: omni(r, 1)?,
        agent: omni(r, 2)?,
        scope: r.get(3)?,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
        max_uses: r.get(6)?,
        uses: r.get(7)?,
        revoked_at: r.get(8)?,
    })
}

pub(super) fn insert(conn: &Connection, g: &Grant) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO grants (id, master, agent, scope, created_at, expires_at, max_uses, uses,
           revoked_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        g.id,
        g.master.as_str(),
        g.agent.as_str(),
        g.scope,
        g.created_at,
        g.expires_at,
        g.max_uses,
        g.uses,
        g.revoked_at
    ])?;
    Ok(())
}

pub(super) fn get(conn: &Connection, id: &str) -> rusqlite::Result<Option<Grant>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM grants WHERE id = ?1"))?
        .query_row([id], row)
        .optional()
}

pub(super) fn of(
    conn: &Connection,
    master: Option<&OmniAccount>,
    agent: Option<&OmniAccount>,
) -> rusqlite::Result<Vec<Grant>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM grants
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

pub(super) fn use_once(
    conn: &Connection,
    id: &str,
    agent: &OmniAccount,
    now: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE grants SET uses = uses + 1
             WHERE id = ?1 AND agent = ?2 AND revoked_at IS NULL AND expires_at > ?3
               AND (max_uses IS NULL OR uses < max_uses)",
        )?
        .execute(params![id, agent.as_str(), now])?;
    Ok(n > 0)
}

pub(super) fn revoke(
    conn: &Connection,
    master: &OmniAccount,
    id: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE grants SET revoked_at = ?1 WHERE id = ?2 AND master = ?3 AND revoked_at IS NULL",
        )?
        .execute(params![now, id, master.as_str()])?;
    Ok(n > 0)
}
