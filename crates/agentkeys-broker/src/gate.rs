//! The gated append: rate limits, a grant's use, and the session's liveness decided in the
//! same store transaction as the audit event that records the decision (SPEC §6, gates 1, 2,
//! 4 and 5). The mint, email sign-in starts and pairing approvals all pass through here.

use agentkeys_store::{AgentStatus, NewAuditEvent, RateWindow, Result, SessionStanding, Store, Tx};
use agentkeys_types::OmniAccount;

use crate::mint::{DenyReason, LiveGrant};
use serde_json::json;

/// One fixed-window counter: a bucket key (an actor, an address, an IP) and its window.
pub type Bucket = (String, RateWindow);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOutcome {
    /// Allowed; the audit event has this seq.
    Allowed { seq: u64 },
    /// A window is full; retry after this many seconds.
    Limited {
        retry_after: i64,
        window_seconds: i64,
        seq: u64,
    },
    /// The grant named for this use was revoked, expired or used up meanwhile; the denial
    /// (reason `grant_unavailable`) has this seq.
    GrantUnavailable { seq: u64 },
    /// The session or its agent stopped being live between the caller's read and this
    /// transaction (logout, revocation, expiry, suspension, removal); the denial (reason
    /// [`NotLive::reason`]) has this seq.
    NotLive { reason: NotLive, seq: u64 },
}

/// What a gated append re-checks inside its transaction, so a revocation that commits first
/// always wins over a mint that read the session before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveCheck {
    /// The session must exist, be unrevoked and unexpired at `now`, and, if it is an agent's,
    /// its agent must be active (read with the session, in one statement).
    pub session_token_hash: String,
}

/// Why a [`LiveCheck`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotLive {
    /// Revoked, expired or gone: answered like any unknown session.
    Session,
    AgentSuspended,
    /// Removed, or no such agent.
    AgentRemoved,
}

impl NotLive {
    /// Why the mint refuses: the `reason` written into the denial event.
    pub fn reason(self) -> DenyReason {
        match self {
            NotLive::Session => DenyReason::Unauthenticated,
            NotLive::AgentSuspended => DenyReason::AgentSuspended,
            NotLive::AgentRemoved => DenyReason::AgentRemoved,
        }
    }

    /// Why an agent of this status cannot act, if it cannot.
    pub fn of_agent(status: Option<AgentStatus>) -> Option<NotLive> {
        match status {
            Some(AgentStatus::Active) => None,
            Some(AgentStatus::Suspended) => Some(NotLive::AgentSuspended),
            Some(AgentStatus::Removed) | None => Some(NotLive::AgentRemoved),
        }
    }

    /// Why the session's agent (for an agent's session) is not live; `None` for a master's.
    pub fn of_standing(standing: &SessionStanding) -> Option<NotLive> {
        if standing.is_agent() {
            NotLive::of_agent(standing.agent_status)
        } else {
            None
        }
    }
}

/// A use of a grant, consumed in the same transaction as the mint's audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantUse {
    pub grant_id: String,
    pub agent: OmniAccount,
}

impl GrantUse {
    /// The use of a grant the mint found live. The transaction re-checks all of it
    /// ([`Tx::use_grant`]: this agent's, unrevoked, unexpired, not used up), so a `GrantUse`
    /// built by hand (as the store-level tests do) can consume nothing a [`LiveGrant`] could
    /// not.
    pub fn of(grant: &LiveGrant) -> Self {
        GrantUse {
            grant_id: grant.id().to_owned(),
            agent: grant.agent().clone(),
        }
    }
}

/// Everything a gated append checks, in order.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    pub live: Option<LiveCheck>,
    /// All must have room, or none is counted.
    pub buckets: Vec<Bucket>,
    pub grant: Option<GrantUse>,
}

impl Gate {
    /// Only rate limits.
    pub fn limits(buckets: Vec<Bucket>) -> Self {
        Self {
            buckets,
            ..Self::default()
        }
    }

    /// Decides inside `tx`: liveness, then every window, then the grant's use; writes
    /// `on_allow` (and counts one use in every bucket) or `on_deny` with the reason.
    pub fn decide(
        &self,
        tx: &mut dyn Tx,
        now: i64,
        on_allow: &NewAuditEvent,
        on_deny: &NewAuditEvent,
    ) -> Result<GateOutcome> {
        let deny = |tx: &mut dyn Tx, reason: Option<&str>| {
            let mut denied = on_deny.clone();
            if let Some(reason) = reason {
                denied.details["reason"] = json!(reason);
            }
            tx.append(&denied)
        };
        if let Some(live) = &self.live
            && let Some(reason) = not_live(tx, live, now)?
        {
            let seq = deny(tx, Some(reason.reason().as_str()))?;
            return Ok(GateOutcome::NotLive { reason, seq });
        }
        let counts = tx.window_counts(&self.buckets, now)?;
        let full = self
            .buckets
            .iter()
            .zip(counts)
            .find(|((_, window), used)| *used >= window.limit)
            .map(|((_, window), _)| *window);
        if let Some(window) = full {
            let seq = deny(tx, None)?;
            let start = now - now.rem_euclid(window.seconds);
            return Ok(GateOutcome::Limited {
                retry_after: (start + window.seconds - now).max(1),
                window_seconds: window.seconds,
                seq,
            });
        }
        if let Some(g) = &self.grant
            && !tx.use_grant(&g.grant_id, &g.agent, now)?
        {
            let seq = deny(tx, Some(DenyReason::GrantUnavailable.as_str()))?;
            return Ok(GateOutcome::GrantUnavailable { seq });
        }
        tx.count_uses(&self.buckets, now)?;
        Ok(GateOutcome::Allowed {
            seq: tx.append(on_allow)?,
        })
    }

    /// [`Gate::decide`] in a transaction of its own.
    pub async fn append(
        self,
        store: &dyn Store,
        now: i64,
        on_allow: NewAuditEvent,
        on_deny: NewAuditEvent,
    ) -> Result<GateOutcome> {
        store
            .transact(move |tx| self.decide(tx, now, &on_allow, &on_deny))
            .await
    }
}

impl LiveCheck {
    /// Records `denied`, a refusal decided before the transaction (the mint's gate 3), if the
    /// session is still live in it; else records, and returns, why it is not (gates 1 and 2
    /// come first). Returns the event's seq.
    pub async fn record_refusal(
        self,
        store: &dyn Store,
        now: i64,
        mut denied: NewAuditEvent,
    ) -> Result<(Option<NotLive>, u64)> {
        store
            .transact(move |tx| {
                let not_live = not_live(tx, &self, now)?;
                if let Some(reason) = not_live {
                    denied.details["reason"] = json!(reason.reason().as_str());
                }
                Ok((not_live, tx.append(&denied)?))
            })
            .await
    }
}

/// Why `live` no longer holds at `now`, if it does not.
fn not_live(tx: &mut dyn Tx, live: &LiveCheck, now: i64) -> Result<Option<NotLive>> {
    Ok(match tx.session_standing(&live.session_token_hash)? {
        Some(standing) if standing.is_live(now) => NotLive::of_standing(&standing),
        _ => Some(NotLive::Session),
    })
}
