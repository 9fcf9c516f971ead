//! Agent pairing and lifecycle: device proofs, pairing codes, and the decisions that pair,
//! renew, suspend and remove agents (each one store transaction). The HTTP handlers in
//! `http/routes/agents.rs` call these.

use agentkeys_store::{
    Agent, AgentStatus, Grant, NewAuditEvent, Result as StoreResult, SessionFilter, Tx,
};
use agentkeys_types::pairing::{
    CODE_ALPHABET, CODE_LEN, PROOF_MAX_SKEW_SECONDS, ProofAction, proof_message,
};
use agentkeys_types::{OmniAccount, WalletAddress};

use crate::session::SessionSlot;
use alloy_primitives::Signature;
use rand::Rng;

/// Lifetime of a pairing request.
pub const PAIRING_TTL_SECONDS: i64 = 600;
/// How often a device should poll.
pub const POLL_INTERVAL_SECONDS: u64 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("signature must be 0x followed by 130 hex digits (65 bytes)")]
    Malformed,
    #[error(
        "the proof's timestamp is more than {PROOF_MAX_SKEW_SECONDS} s from the broker's clock; check the device clock"
    )]
    Skewed,
    #[error("the signature is not from the device key")]
    WrongSigner,
}

/// Checks that `device` signed the proof message for `action` at `timestamp_ms`.
pub fn verify_proof(
    issuer: &str,
    action: ProofAction,
    device: &WalletAddress,
    pairing_id: Option<&str>,
    timestamp_ms: i64,
    signature: &str,
    now: i64,
) -> Result<(), ProofError> {
    let bytes = crate::wallet::parse_signature(signature).ok_or(ProofError::Malformed)?;
    if (timestamp_ms / 1000 - now).abs() > PROOF_MAX_SKEW_SECONDS {
        return Err(ProofError::Skewed);
    }
    let sig = Signature::try_from(&bytes[..]).map_err(|_| ProofError::Malformed)?;
    let message = proof_message(issuer, action, device.as_str(), pairing_id, timestamp_ms);
    let signer = sig
        .recover_address_from_msg(message.as_bytes())
        .map_err(|_| ProofError::WrongSigner)?;
    if signer.as_slice() == device.bytes() {
        Ok(())
    } else {
        Err(ProofError::WrongSigner)
    }
}

/// A fresh code a person reads and types (normalised form, no separator): pairing codes, and
/// the one-time codes of email and OIDC sign-ins.
pub fn new_code() -> String {
    let mut rng = rand::rng();
    (0..CODE_LEN)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_use_the_alphabet() {
        let c = new_code();
        assert_eq!(
            agentkeys_types::pairing::normalize_code(&c).as_deref(),
            Some(c.as_str())
        );
        assert_ne!(new_code(), new_code());
    }
}

// ---- decisions, each inside one store transaction -------------------------------------------

/// What approving a pairing code did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApproveOutcome {
    Approved(Agent),
    /// No pending, unexpired request has this code.
    UnknownCode,
    /// The master already has (or had) an agent with this label.
    LabelTaken,
}

/// What a device's poll of its pairing request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// Not approved yet.
    Pending,
    /// Approved; the agent's new session was stored.
    Claimed(Agent),
    /// The session was already handed out.
    AlreadyClaimed,
    /// Unknown, expired, or its agent is no longer active.
    Gone,
    /// The proof's timestamp is not later than the last one seen (a replay).
    StaleProof,
}

/// What a paired agent's request for a new session found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The agent's new session was stored.
    Issued(Agent),
    /// Suspended or removed.
    NotActive(Agent),
    Unknown,
    /// The proof's timestamp is not later than this agent's last one (a replay).
    StaleProof,
}

/// Turns the pending request with `code` into `master`'s agent labelled `label`; the event is
/// written only when it does. The agent's omni is derived from the master and the label, so a
/// label names one identity (and one S3 prefix) forever.
pub fn approve(
    tx: &mut dyn Tx,
    code: &str,
    master: &OmniAccount,
    label: &str,
    now: i64,
    event: &NewAuditEvent,
) -> StoreResult<ApproveOutcome> {
    let Some(request) = tx.pending_pairing(code, now)? else {
        return Ok(ApproveOutcome::UnknownCode);
    };
    if tx.label_taken(master, label)? {
        return Ok(ApproveOutcome::LabelTaken);
    }
    let agent = Agent {
        omni: OmniAccount::for_agent(master, label),
        master: master.clone(),
        label: label.to_owned(),
        device_address: request.device_address,
        status: AgentStatus::Active,
        created_at: now,
        updated_at: now,
    };
    tx.insert_agent(&agent)?;
    if !tx.set_pairing_agent(&request.id, &agent.omni)? {
        return Ok(ApproveOutcome::UnknownCode);
    }
    tx.append(event)?;
    Ok(ApproveOutcome::Approved(agent))
}

/// Refuses the pending request with `code`: the device's polls then find it gone. Whether there
/// was one; the event is written only then.
pub fn deny_pairing(
    tx: &mut dyn Tx,
    code: &str,
    now: i64,
    event: &NewAuditEvent,
) -> StoreResult<bool> {
    let Some(request) = tx.pending_pairing(code, now)? else {
        return Ok(false);
    };
    if !tx.end_pairing(&request.id, now)? {
        return Ok(false);
    }
    let mut event = event.clone();
    event.details["device"] = serde_json::json!(request.device_address);
    event.details["pairing_id"] = serde_json::json!(request.id);
    tx.append(&event)?;
    Ok(true)
}

/// Records a device's proof made at `proof_ms` on its pairing request and, once approved and
/// not yet collected, stores the agent's session (`slot`) with `event`.
pub fn claim(
    tx: &mut dyn Tx,
    pairing_id: &str,
    proof_ms: i64,
    now: i64,
    slot: &SessionSlot,
    event: &NewAuditEvent,
) -> StoreResult<ClaimOutcome> {
    let Some(request) = tx.pairing(pairing_id)? else {
        return Ok(ClaimOutcome::Gone);
    };
    // Expiry covers an approved but uncollected session too (SPEC §11.5).
    if now >= request.expires_at {
        return Ok(ClaimOutcome::Gone);
    }
    if !tx.advance_pairing_proof(pairing_id, proof_ms)? {
        return Ok(ClaimOutcome::StaleProof);
    }
    let Some(agent_omni) = &request.agent else {
        return Ok(ClaimOutcome::Pending);
    };
    if request.claimed_at.is_some() {
        return Ok(ClaimOutcome::AlreadyClaimed);
    }
    match tx.agent(agent_omni)? {
        Some(agent) if agent.status == AgentStatus::Active => {
            if !tx.mark_pairing_claimed(pairing_id, now)? {
                return Ok(ClaimOutcome::AlreadyClaimed);
            }
            tx.insert_session(&slot.for_agent(&agent))?;
            tx.append(event)?;
            Ok(ClaimOutcome::Claimed(agent))
        }
        _ => Ok(ClaimOutcome::Gone),
    }
}

/// Issues a paired, active agent a new session (`slot`) for a device proof made at
/// `proof_ms`, later than any earlier proof of this agent.
pub fn renew(
    tx: &mut dyn Tx,
    omni: &OmniAccount,
    proof_ms: i64,
    slot: &SessionSlot,
    event: &NewAuditEvent,
) -> StoreResult<RenewOutcome> {
    let Some(agent) = tx.agent(omni)? else {
        return Ok(RenewOutcome::Unknown);
    };
    if agent.status != AgentStatus::Active {
        return Ok(RenewOutcome::NotActive(agent));
    }
    if !tx.advance_agent_proof(omni, proof_ms)? {
        return Ok(RenewOutcome::StaleProof);
    }
    tx.insert_session(&slot.for_agent(&agent))?;
    tx.append(event)?;
    Ok(RenewOutcome::Issued(agent))
}

/// An agent of this master that is not removed, read inside the transaction that acts on it:
/// the only way to suspend, resume or remove an agent ([`change_status`]) or to give it a
/// grant. Made only by [`OwnedAgent::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedAgent {
    agent: Agent,
}

impl OwnedAgent {
    /// `master`'s agent `omni`, if it has one that is not removed. Read in `tx`, so a removal
    /// (or anything else) that commits first wins.
    pub fn check(
        tx: &mut dyn Tx,
        master: &OmniAccount,
        omni: &OmniAccount,
    ) -> StoreResult<Option<OwnedAgent>> {
        Ok(tx
            .agent(omni)?
            .filter(|a| &a.master == master && a.status != AgentStatus::Removed)
            .map(|agent| OwnedAgent { agent }))
    }

    /// The agent as read by the check.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }
}

/// Moves the owned agent to `status`; removal also revokes every session of the agent. The
/// agent as it now is.
pub fn change_status(
    tx: &mut dyn Tx,
    owned: OwnedAgent,
    status: AgentStatus,
    now: i64,
    event: &NewAuditEvent,
) -> StoreResult<Option<Agent>> {
    let omni = &owned.agent.omni;
    tx.set_agent_status(omni, status, now)?;
    if status == AgentStatus::Removed {
        tx.revoke_sessions(omni, SessionFilter::AllExcept(None), now)?;
    }
    tx.append(event)?;
    tx.agent(omni)
}

/// Gives the owned agent `grant` (its `agent` and `master` become the owned agent's and its
/// master), with its event; the grant as stored.
pub fn give_grant(
    tx: &mut dyn Tx,
    to: &OwnedAgent,
    mut grant: Grant,
    event: &NewAuditEvent,
) -> StoreResult<Grant> {
    grant.agent = to.agent.omni.clone();
    grant.master = to.agent.master.clone();
    tx.insert_grant(&grant)?;
    tx.append(event)?;
    Ok(grant)
}

/// Moves `master`'s live agent to `status` ([`OwnedAgent::check`], then [`change_status`]).
/// `None` if `master` has no such live agent.
pub fn set_status(
    tx: &mut dyn Tx,
    master: &OmniAccount,
    omni: &OmniAccount,
    status: AgentStatus,
    now: i64,
    event: &NewAuditEvent,
) -> StoreResult<Option<Agent>> {
    match OwnedAgent::check(tx, master, omni)? {
        Some(owned) => change_status(tx, owned, status, now, event),
        None => Ok(None),
    }
}
