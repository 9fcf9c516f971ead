//! Agents paired to masters, and the pairing requests that create them.

use agentkeys_types::OmniAccount;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{agent_status, omni, omni_opt, status_str};
use crate::{Agent, AgentStatus, PairingRequest};

const AGENT_COLUMNS: &str = "omni, master, label, device_address, status, created_at, updated_at";

fn agent_row(r: &Row<'_>) -> rusqlite::Result<Agent> {
    Ok(Agent {
        omni: omni(r, 0)?,
        master: omni(r, 1)?,
        label: r.get(2)?,
        device_address: r.get(3)?,
        status: agent_status(r, 4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

pub(super) fn get(conn: &Connection, omni: &OmniAccount) -> rusqlite::Result<Option<Agent>> {
    conn.prepare_cached(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE omni = ?1"
    ))?
    .query_row([omni.as_str()], agent_row)
    .optional()
}

pub(super) fn of_master(conn: &Connection, master: &OmniAccount) -> rusqlite::Result<Vec<Agent>> {
    conn.prepare_cached(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE master = ?1 ORDER BY created_at, label"
    ))?
    .query_map([master.as_str()], agent_row)?
    .collect()
}

/// Removed agents keep their row, so a removed label stays taken.
pub(super) fn label_taken(
    conn: &Connection,
    master: &OmniAccount,
    label: &str,
) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM agents WHERE master = ?1 AND label = ?2")?
        .exists(params![master.as_str(), label])
}

pub(super) fn insert(conn: &Connection, a: &Agent) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO agents (omni, master, label, device_address, status, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        a.omni.as_str(),
        a.master.as_str(),
        a.label,
        a.device_address,
        status_str(a.status),
        a.created_at,
        a.updated_at
    ])?;
    Ok(())
}

pub(super) fn set_status(
    conn: &Connection,
    omni: &OmniAccount,
    status: AgentStatus,
    now: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached("UPDATE agents SET status = ?1, updated_at = ?2 WHERE omni = ?3")?
        .execute(params![status_str(status), now, omni.as_str()])?;
    Ok(n > 0)
}

pub(super) fn advance_proof(
    conn: &Connection,
    omni: &OmniAccount,
    proof_ms: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE agents SET last_proof_ms = ?1 WHERE omni = ?2 AND last_proof_ms < ?1",
        )?
        .execute(params![proof_ms, omni.as_str()])?;
    Ok(n > 0)
}

// ---- pairing requests ---------------------------------------------------------------------

const PAIRING_COLUMNS: &str =
    "id, code, device_address, created_at, expires_at, last_proof_ms, agent, claimed_at";

fn pairing_row(r: &Row<'_>) -> rusqlite::Result<PairingRequest> {
    Ok(PairingRequest {
        id: r.get(0)?,
        code: r.get(1)?,
        device_address: r.get(2)?,
        created_at: r.get(3)?,
        expires_at: r.get(4)?,
        last_proof_ms: r.get(5)?,
        agent: omni_opt(r, 6)?,
        claimed_at: r.get(7)?,
    })
}

pub(super) fn insert_pairing(conn: &Connection, p: &PairingRequest) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO pairing_requests (id, code, device_address, created_at, expires_at,
           last_proof_ms, agent, claimed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        p.id,
        p.code,
        p.device_address,
        p.created_at,
        p.expires_at,
        p.last_proof_ms,
        p.agent.as_ref().map(OmniAccount::as_str),
        p.claimed_at
    ])?;
    Ok(())
}

pub(super) fn pairing(conn: &Connection, id: &str) -> rusqlite::Result<Option<PairingRequest>> {
    conn.prepare_cached(&format!(
        "SELECT {PAIRING_COLUMNS} FROM pairing_requests WHERE id = ?1"
    ))?
    .query_row([id], pairing_row)
    .optional()
}

pub(super) fn pending_pairing(
    conn: &Connection,
    code: &str,
    now: i64,
) -> rusqlite::Result<Option<PairingRequest>> {
    conn.prepare_cached(&format!(
        "SELECT {PAIRING_COLUMNS} FROM pairing_requests
         WHERE code = ?1 AND agent IS NULL AND expires_at > ?2"
    ))?
    .query_row(params![code, now], pairing_row)
    .optional()
}

pub(super) fn advance_pairing_proof(
    conn: &Connection,
    id: &str,
    proof_ms: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE pairing_requests SET last_proof_ms = ?1 WHERE id = ?2 AND last_proof_ms < ?1",
        )?
        .execute(params![proof_ms, id])?;
    Ok(n > 0)
}

pub(super) fn set_pairing_agent(
    conn: &Connection,
    id: &str,
    agent: &OmniAccount,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached("UPDATE pairing_requests SET agent = ?1 WHERE id = ?2 AND agent IS NULL")?
        .execute(params![agent.as_str(), id])?;
    Ok(n > 0)
}

pub(super) fn end_pairing(conn: &Connection, id: &str, now: i64) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE pairing_requests SET expires_at = ?1
             WHERE id = ?2 AND agent IS NULL AND expires_at > ?1",
        )?
        .execute(params![now, id])?;
    Ok(n > 0)
}

pub(super) fn mark_pairing_claimed(
    conn: &Connection,
    id: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE pairing_requests SET claimed_at = ?1 WHERE id = ?2 AND claimed_at IS NULL",
        )?
        .execute(params![now, id])?;
    Ok(n > 0)
}
