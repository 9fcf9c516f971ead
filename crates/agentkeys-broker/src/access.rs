//! Access requests: an agent asks its master for a grant, and the master approves (the request
//! becomes a grant) or denies it. Each decision is one store transaction; the HTTP handlers in
//! `http/routes/access.rs` call these.

use agentkeys_store::{
    AccessDecision, AccessRequest, Agent, AgentStatus, Grant, NewAuditEvent, Result as StoreResult,
    StoreError, Tx,
};
use agentkeys_types::OmniAccount;

use crate::agents::{self, OwnedAgent};

/// What an agent's request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenOutcome {
    /// Stored, and its event written.
    Opened,
    /// The agent already has this many requests waiting (the limit); a denial was written.
    TooManyPending(u64),
    /// The agent is suspended or removed (or unknown): nothing was written.
    NotActive,
}

/// Stores `request` for its agent if the agent is active and has fewer than `max_pending`
/// requests waiting; `allowed` or `denied` is written accordingly.
pub fn open(
    tx: &mut dyn Tx,
    request: &AccessRequest,
    max_pending: u64,
    allowed: &NewAuditEvent,
    denied: &NewAuditEvent,
) -> StoreResult<OpenOutcome> {
    match tx.agent(&request.agent)? {
        Some(a) if a.status == AgentStatus::Active && a.master == request.master => {}
        _ => return Ok(OpenOutcome::NotActive),
    }
    let pending = tx.pending_access_requests(&request.agent, request.created_at)?;
    if pending >= max_pending {
        tx.append(denied)?;
        return Ok(OpenOutcome::TooManyPending(pending));
    }
    tx.insert_access_request(request)?;
    tx.append(allowed)?;
    Ok(OpenOutcome::Opened)
}

/// A request to one of this master's live agents that is still undecided and unexpired, read
/// inside the transaction that decides it: the only way to approve or deny one. Made only by
/// [`PendingRequest::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRequest {
    request: AccessRequest,
    agent: OwnedAgent,
}

impl PendingRequest {
    /// `master`'s pending request `id` at `now`, if its agent is still `master`'s and not
    /// removed.
    pub fn check(
        tx: &mut dyn Tx,
        master: &OmniAccount,
        id: &str,
        now: i64,
    ) -> StoreResult<Option<PendingRequest>> {
        let Some(request) = tx
            .access_request(id)?
            .filter(|r| &r.master == master && r.is_pending(now))
        else {
            return Ok(None);
        };
        Ok(OwnedAgent::check(tx, master, &request.agent)?
            .map(|agent| PendingRequest { request, agent }))
    }

    pub fn request(&self) -> &AccessRequest {
        &self.request
    }

    pub fn agent(&self) -> &Agent {
        self.agent.agent()
    }
}

/// Approves the pending request: it becomes `grant` (given to the request's agent with
/// `created`), and `approved` is written. The grant as stored.
pub fn approve(
    tx: &mut dyn Tx,
    pending: PendingRequest,
    grant: Grant,
    now: i64,
    created: &NewAuditEvent,
    approved: &NewAuditEvent,
) -> StoreResult<Grant> {
    // The grant first: the request names it. `pending` was read in this transaction, so the
    // decision cannot lose; if it did, the error rolls the grant back too.
    let grant = agents::give_grant(tx, &pending.agent, grant, created)?;
    if !tx.decide_access_request(
        &pending.request.id,
        AccessDecision::Approved,
        Some(&grant.id),
        now,
    )? {
        return Err(StoreError::Conflict(
            "the access request was decided in the same transaction".into(),
        ));
    }
    tx.append(approved)?;
    Ok(grant)
}

/// Denies the pending request, with `denied`; whether it was still pending.
pub fn deny(
    tx: &mut dyn Tx,
    pending: PendingRequest,
    now: i64,
    denied: &NewAuditEvent,
) -> StoreResult<bool> {
    if !tx.decide_access_request(&pending.request.id, AccessDecision::Denied, None, now)? {
        return Ok(false);
    }
    tx.append(denied)?;
    Ok(true)
}
