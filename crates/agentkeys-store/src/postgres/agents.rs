//! Agents and the pairing requests that create them.

use tokio_postgres::Row;

use super::tx::Db;
use super::{col, omni, opt_omni};
use crate::{Agent, AgentStatus, PairingRequest, Result, StoreError};
use agentkeys_types::OmniAccount;

macro_rules! agent_columns {
    () => {
        "omni, master, label, device_address, status, created_at, updated_at"
    };
}

pub(super) const SELECT: &str =
    concat!("SELECT ", agent_columns!(), " FROM agents WHERE omni = $1");
pub(super) const SELECT_OF: &str = concat!(
    "SELECT ",
    agent_columns!(),
    " FROM agents WHERE master = $1 ORDER BY created_at, label"
);
const INSERT: &str = concat!(
    "INSERT INTO agents (",
    agent_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
);
const LABEL_TAKEN: &str = "SELECT EXISTS (SELECT 1 FROM agents WHERE master = $1 AND label = $2)";
const SET_STATUS: &str = "UPDATE agents SET status = $1, updated_at = $2 WHERE omni = $3";
/// Strictly later than every earlier proof: a replayed proof changes nothing.
const ADVANCE_PROOF: &str =
    "UPDATE agents SET last_proof_ms = $1 WHERE omni = $2 AND last_proof_ms < $1";

macro_rules! pairing_columns {
    () => {
        "id, code, device_address, created_at, expires_at, last_proof_ms, agent, claimed_at"
    };
}

const INSERT_PAIRING: &str = concat!(
    "INSERT INTO pairing_requests (",
    pairing_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
);
pub(super) const SELECT_PAIRING: &str = concat!(
    "SELECT ",
    pairing_columns!(),
    " FROM pairing_requests WHERE id = $1"
);
const PENDING_PAIRING: &str = concat!(
    "SELECT ",
    pairing_columns!(),
    " FROM pairing_requests WHERE code = $1 AND agent IS NULL AND expires_at > $2"
);
const ADVANCE_PAIRING_PROOF: &str =
    "UPDATE pairing_requests SET last_proof_ms = $1 WHERE id = $2 AND last_proof_ms < $1";
const END_PAIRING: &str = "UPDATE pairing_requests SET expires_at = $1
     WHERE id = $2 AND agent IS NULL AND expires_at > $1";
const SET_PAIRING_AGENT: &str =
    "UPDATE pairing_requests SET agent = $1 WHERE id = $2 AND agent IS NULL";
const MARK_PAIRING_CLAIMED: &str =
    "UPDATE pairing_requests SET claimed_at = $1 WHERE id = $2 AND claimed_at IS NULL";
pub(super) const PURGE_PAIRINGS: &str = "DELETE FROM pairing_requests WHERE expires_at < $1";

pub(super) fn agent(db: &mut Db<'_, '_>, omni: &OmniAccount) -> Result<Option<Agent>> {
    db.query_opt(SELECT, &[&omni.as_str()])?
        .as_ref()
        .map(agent_row)
        .transpose()
}

pub(super) fn label_taken(db: &mut Db<'_, '_>, master: &OmniAccount, label: &str) -> Result<bool> {
    match db.query_opt(LABEL_TAKEN, &[&master.as_str(), &label])? {
        Some(row) => col(&row, 0),
        None => Ok(false),
    }
}

pub(super) fn insert_agent(db: &mut Db<'_, '_>, a: &Agent) -> Result<()> {
    db.execute(
        INSERT,
        &[
            &a.omni.as_str(),
            &a.master.as_str(),
            &a.label,
            &a.device_address,
            &status_str(a.status),
            &a.created_at,
            &a.updated_at,
        ],
    )?;
    Ok(())
}

pub(super) fn set_agent_status(
    db: &mut Db<'_, '_>,
    omni: &OmniAccount,
    status: AgentStatus,
    now: i64,
) -> Result<bool> {
    Ok(db.execute(SET_STATUS, &[&status_str(status), &now, &omni.as_str()])? > 0)
}

pub(super) fn advance_agent_proof(
    db: &mut Db<'_, '_>,
    omni: &OmniAccount,
    proof_ms: i64,
) -> Result<bool> {
    Ok(db.execute(ADVANCE_PROOF, &[&proof_ms, &omni.as_str()])? > 0)
}

pub(super) fn insert_pairing(db: &mut Db<'_, '_>, p: &PairingRequest) -> Result<()> {
    let agent = p.agent.as_ref().map(OmniAccount::as_str);
    db.execute(
        INSERT_PAIRING,
        &[
            &p.id,
            &p.code,
            &p.device_address,
            &p.created_at,
            &p.expires_at,
            &p.last_proof_ms,
            &agent,
            &p.claimed_at,
        ],
    )?;
    Ok(())
}

pub(super) fn pairing(db: &mut Db<'_, '_>, id: &str) -> Result<Option<PairingRequest>> {
    db.query_opt(SELECT_PAIRING, &[&id])?
        .as_ref()
        .map(pairing_row)
        .transpose()
}

pub(super) fn pending_pairing(
    db: &mut Db<'_, '_>,
    code: &str,
    now: i64,
) -> Result<Option<PairingRequest>> {
    db.query_opt(PENDING_PAIRING, &[&code, &now])?
        .as_ref()
        .map(pairing_row)
        .transpose()
}

pub(super) fn advance_pairing_proof(db: &mut Db<'_, '_>, id: &str, proof_ms: i64) -> Result<bool> {
    Ok(db.execute(ADVANCE_PAIRING_PROOF, &[&proof_ms, &id])? > 0)
}

pub(super) fn set_pairing_agent(
    db: &mut Db<'_, '_>,
    id: &str,
    agent: &OmniAccount,
) -> Result<bool> {
    Ok(db.execute(SET_PAIRING_AGENT, &[&agent.as_str(), &id])? > 0)
}

pub(super) fn end_pairing(db: &mut Db<'_, '_>, id: &str, now: i64) -> Result<bool> {
    Ok(db.execute(END_PAIRING, &[&now, &id])? > 0)
}

pub(super) fn mark_pairing_claimed(db: &mut Db<'_, '_>, id: &str, now: i64) -> Result<bool> {
    Ok(db.execute(MARK_PAIRING_CLAIMED, &[&now, &id])? > 0)
}

fn status_str(status: AgentStatus) -> &'static str {
    match status {
        AgentStatus::Active => "active",
        AgentStatus::Suspended => "suspended",
        AgentStatus::Removed => "removed",
    }
}

pub(super) fn status_of(s: &str) -> Result<AgentStatus> {
    match s {
        "active" => Ok(AgentStatus::Active),
        "suspended" => Ok(AgentStatus::Suspended),
        "removed" => Ok(AgentStatus::Removed),
        other => Err(StoreError::Database(format!(
            "a stored agent status is unknown: {other:?}"
        ))),
    }
}

pub(super) fn agent_row(row: &Row) -> Result<Agent> {
    let status: String = col(row, 4)?;
    Ok(Agent {
        omni: omni(col(row, 0)?)?,
        master: omni(col(row, 1)?)?,
        label: col(row, 2)?,
        device_address: col(row, 3)?,
        status: status_of(&status)?,
        created_at: col(row, 5)?,
        updated_at: col(row, 6)?,
    })
}

pub(super) fn pairing_row(row: &Row) -> Result<PairingRequest> {
    Ok(PairingRequest {
        id: col(row, 0)?,
        code: col(row, 1)?,
        device_address: col(row, 2)?,
        created_at: col(row, 3)?,
        expires_at: col(row, 4)?,
        last_proof_ms: col(row, 5)?,
        agent: opt_omni(col(row, 6)?)?,
        claimed_at: col(row, 7)?,
    })
}
