//! The one [`Tx`] of the SQLite backend: each method is a domain module's statement run on the
//! writer's connection, inside the savepoint of the work being run.

use agentkeys_types::OmniAccount;
use rusqlite::Connection;

use super::audit::{Head, KnownBlocks};
use super::limits::WorkCounts;
use super::standings::Standings;
use super::{access, agents, audit, grants, keys, logins, sessions};
use crate::{
    AccessDecision, AccessRequest, Agent, AgentStatus, Challenge, Grant, Identity, IdentityRef,
    LoginKey, LoginRequest, NewAuditEvent, PairingRequest, RateWindow, Result, Session,
    SessionFilter, SessionStanding, SigningKeyRecord, Tx,
};

pub(super) struct SqliteTx<'a> {
    conn: &'a Connection,
    /// The chain head as this work sees it; the writer keeps it only if the work commits.
    head: &'a mut Head,
    /// The rate-limit windows as this work sees them; likewise kept only if it commits.
    limits: WorkCounts<'a>,
    standings: &'a mut Standings,
    blocks: &'a mut KnownBlocks,
}

impl<'a> SqliteTx<'a> {
    pub(super) fn new(
        conn: &'a Connection,
        head: &'a mut Head,
        limits: WorkCounts<'a>,
        standings: &'a mut Standings,
        blocks: &'a mut KnownBlocks,
    ) -> Self {
        Self {
            conn,
            head,
            limits,
            standings,
            blocks,
        }
    }

    /// The windows this work changed, for its batch to keep should it succeed.
    pub(super) fn into_limits(self) -> WorkCounts<'a> {
        self.limits
    }
}

impl Tx for SqliteTx<'_> {
    fn append(&mut self, event: &NewAuditEvent) -> Result<u64> {
        Ok(audit::append(self.conn, self.head, self.blocks, event)?)
    }

    fn insert_challenge(&mut self, challenge: &Challenge) -> Result<()> {
        Ok(sessions::insert_challenge(self.conn, challenge)?)
    }

    fn take_challenge(&mut self, id: &str) -> Result<Option<Challenge>> {
        Ok(sessions::take_challenge(self.conn, id)?)
    }

    fn insert_session(&mut self, session: &Session) -> Result<()> {
        Ok(sessions::insert(self.conn, session)?)
    }

    fn session_standing(&mut self, token_hash: &str) -> Result<Option<SessionStanding>> {
        Ok(self.standings.get(self.conn, token_hash)?)
    }

    fn revoke_session(&mut self, token_hash: &str, now: i64) -> Result<bool> {
        Ok(sessions::revoke(self.conn, token_hash, now)?)
    }

    fn revoke_sessions(
        &mut self,
        omni: &OmniAccount,
        which: SessionFilter<'_>,
        now: i64,
    ) -> Result<u64> {
        Ok(sessions::revoke_many(self.conn, omni, which, now)?)
    }

    fn agent(&mut self, omni: &OmniAccount) -> Result<Option<Agent>> {
        Ok(agents::get(self.conn, omni)?)
    }

    fn label_taken(&mut self, master: &OmniAccount, label: &str) -> Result<bool> {
        Ok(agents::label_taken(self.conn, master, label)?)
    }

    fn insert_agent(&mut self, agent: &Agent) -> Result<()> {
        Ok(agents::insert(self.conn, agent)?)
    }

    fn set_agent_status(
        &mut self,
        omni: &OmniAccount,
        status: AgentStatus,
        now: i64,
    ) -> Result<bool> {
        Ok(agents::set_status(self.conn, omni, status, now)?)
    }

    fn advance_agent_proof(&mut self, omni: &OmniAccount, proof_ms: i64) -> Result<bool> {
        Ok(agents::advance_proof(self.conn, omni, proof_ms)?)
    }

    fn insert_pairing(&mut self, request: &PairingRequest) -> Result<()> {
        Ok(agents::insert_pairing(self.conn, request)?)
    }

    fn pairing(&mut self, id: &str) -> Result<Option<PairingRequest>> {
        Ok(agents::pairing(self.conn, id)?)
    }

    fn pending_pairing(&mut self, code: &str, now: i64) -> Result<Option<PairingRequest>> {
        Ok(agents::pending_pairing(self.conn, code, now)?)
    }

    fn advance_pairing_proof(&mut self, id: &str, proof_ms: i64) -> Result<bool> {
        Ok(agents::advance_pairing_proof(self.conn, id, proof_ms)?)
    }

    fn set_pairing_agent(&mut self, id: &str, agent: &OmniAccount) -> Result<bool> {
        Ok(agents::set_pairing_agent(self.conn, id, agent)?)
    }

    fn end_pairing(&mut self, id: &str, now: i64) -> Result<bool> {
        Ok(agents::end_pairing(self.conn, id, now)?)
    }

    fn mark_pairing_claimed(&mut self, id: &str, now: i64) -> Result<bool> {
        Ok(agents::mark_pairing_claimed(self.conn, id, now)?)
    }

    fn insert_login(&mut self, request: &LoginRequest) -> Result<()> {
        Ok(logins::insert(self.conn, request)?)
    }

    fn login(&mut self, key: LoginKey<'_>) -> Result<Option<LoginRequest>> {
        Ok(logins::get(self.conn, key)?)
    }

    fn verify_login(
        &mut self,
        id_hash: &str,
        identity: &IdentityRef,
        code_hash: &str,
        now: i64,
    ) -> Result<bool> {
        Ok(logins::verify(
            self.conn, id_hash, identity, code_hash, now,
        )?)
    }

    fn expire_login(&mut self, id_hash: &str, now: i64) -> Result<bool> {
        Ok(logins::expire(self.conn, id_hash, now)?)
    }

    fn count_wrong_code(&mut self, id_hash: &str) -> Result<()> {
        Ok(logins::count_wrong_code(self.conn, id_hash)?)
    }

    fn mark_login_claimed(
        &mut self,
        id_hash: &str,
        identity: &IdentityRef,
        now: i64,
    ) -> Result<bool> {
        Ok(logins::mark_claimed(self.conn, id_hash, identity, now)?)
    }

    fn identity(&mut self, identity: &IdentityRef) -> Result<Option<Identity>> {
        Ok(logins::identity(self.conn, identity)?)
    }

    fn insert_identity(&mut self, identity: &Identity) -> Result<()> {
        Ok(logins::insert_identity(self.conn, identity)?)
    }

    fn delete_identity(&mut self, master: &OmniAccount, identity: &IdentityRef) -> Result<bool> {
        Ok(logins::delete_identity(self.conn, master, identity)?)
    }

    fn insert_grant(&mut self, grant: &Grant) -> Result<()> {
        Ok(grants::insert(self.conn, grant)?)
    }

    fn grant(&mut self, id: &str) -> Result<Option<Grant>> {
        Ok(grants::get(self.conn, id)?)
    }

    fn use_grant(&mut self, id: &str, agent: &OmniAccount, now: i64) -> Result<bool> {
        Ok(grants::use_once(self.conn, id, agent, now)?)
    }

    fn revoke_grant(&mut self, master: &OmniAccount, id: &str, now: i64) -> Result<bool> {
        Ok(grants::revoke(self.conn, master, id, now)?)
    }

    fn insert_access_request(&mut self, request: &AccessRequest) -> Result<()> {
        Ok(access::insert(self.conn, request)?)
    }

    fn access_request(&mut self, id: &str) -> Result<Option<AccessRequest>> {
        Ok(access::get(self.conn, id)?)
    }

    fn pending_access_requests(&mut self, agent: &OmniAccount, now: i64) -> Result<u64> {
        Ok(access::pending_of(self.conn, agent, now)?)
    }

    fn decide_access_request(
        &mut self,
        id: &str,
        decision: AccessDecision,
        grant_id: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        Ok(access::decide(self.conn, id, decision, grant_id, now)?)
    }

    fn insert_signing_key(&mut self, key: &SigningKeyRecord) -> Result<()> {
        Ok(keys::insert(self.conn, key)?)
    }

    fn update_signing_key(
        &mut self,
        kid: &str,
        retired_at: Option<i64>,
        withdrawn_at: Option<i64>,
    ) -> Result<bool> {
        Ok(keys::update(self.conn, kid, retired_at, withdrawn_at)?)
    }

    fn reseal_signing_key(&mut self, kid: &str, sealed_private_key: &[u8]) -> Result<bool> {
        Ok(keys::reseal(self.conn, kid, sealed_private_key)?)
    }

    fn window_counts(&mut self, buckets: &[(String, RateWindow)], now: i64) -> Result<Vec<u64>> {
        buckets
            .iter()
            .map(|(bucket, window)| self.limits.used(bucket, *window, now))
            .collect()
    }

    fn count_uses(&mut self, buckets: &[(String, RateWindow)], now: i64) -> Result<()> {
        buckets
            .iter()
            .try_for_each(|(bucket, window)| self.limits.count(bucket, *window, now))
    }

    fn purge_expired(&mut self, requests_before: i64, sessions_before: i64) -> Result<u64> {
        Ok(super::purge_expired(
            self.conn,
            requests_before,
            sessions_before,
        )?)
    }
}
