//! The one `impl Tx` of this backend: each primitive is a domain function whose statements go
//! to the writer's current [`Batch`].

use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::batch::Batch;
use super::{Params, access, agents, audit, grants, keys, limits, logins, sessions};
use crate::{
    AccessDecision, AccessRequest, Agent, AgentStatus, Challenge, Grant, Identity, IdentityRef,
    LoginKey, LoginRequest, NewAuditEvent, PairingRequest, RateWindow, Result, Session,
    SessionFilter, SessionStanding, SigningKeyRecord, Tx,
};
use agentkeys_types::OmniAccount;

/// The batch a domain function's statements go to.
pub(super) struct Db<'a, 'c> {
    batch: &'a mut Batch<'c>,
}

impl<'a, 'c> Db<'a, 'c> {
    pub(super) fn new(batch: &'a mut Batch<'c>) -> Self {
        Self { batch }
    }

    pub(super) fn batch(&mut self) -> &mut Batch<'c> {
        self.batch
    }

    /// Rows changed.
    pub(super) fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64> {
        self.batch.execute(sql, params)
    }

    /// At most one row; a statement that is not a SELECT (`DELETE … RETURNING`) writes.
    pub(super) fn query_opt(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
    ) -> Result<Option<Row>> {
        let writes = !sql.trim_start().starts_with("SELECT");
        Ok(self.batch.query(sql, params, writes)?.into_iter().next())
    }

    pub(super) fn query(&mut self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        self.batch.query(sql, params, false)
    }

    /// A write whose result nobody reads: sent with the next statement (see [`Batch`]).
    pub(super) fn defer(
        &mut self,
        sql: &'static str,
        params: Vec<Box<dyn ToSql + Sync + Send>>,
    ) -> Result<()> {
        self.batch.defer(sql, params)
    }
}

pub(super) struct PgTx<'a, 'c> {
    db: Db<'a, 'c>,
}

impl<'a, 'c> PgTx<'a, 'c> {
    pub(super) fn new(batch: &'a mut Batch<'c>) -> Self {
        Self { db: Db::new(batch) }
    }
}

impl Tx for PgTx<'_, '_> {
    fn append(&mut self, event: &NewAuditEvent) -> Result<u64> {
        audit::append(self.db.batch(), event)
    }

    fn insert_challenge(&mut self, challenge: &Challenge) -> Result<()> {
        sessions::insert_challenge(&mut self.db, challenge)
    }

    fn take_challenge(&mut self, id: &str) -> Result<Option<Challenge>> {
        sessions::take_challenge(&mut self.db, id)
    }

    fn insert_session(&mut self, session: &Session) -> Result<()> {
        sessions::insert_session(&mut self.db, session)
    }

    fn session_standing(&mut self, token_hash: &str) -> Result<Option<SessionStanding>> {
        sessions::standing(&mut self.db, token_hash)
    }

    fn revoke_session(&mut self, token_hash: &str, now: i64) -> Result<bool> {
        sessions::revoke_session(&mut self.db, token_hash, now)
    }

    fn revoke_sessions(
        &mut self,
        omni: &OmniAccount,
        which: SessionFilter<'_>,
        now: i64,
    ) -> Result<u64> {
        sessions::revoke_sessions(&mut self.db, omni, which, now)
    }

    fn agent(&mut self, omni: &OmniAccount) -> Result<Option<Agent>> {
        agents::agent(&mut self.db, omni)
    }

    fn label_taken(&mut self, master: &OmniAccount, label: &str) -> Result<bool> {
        agents::label_taken(&mut self.db, master, label)
    }

    fn insert_agent(&mut self, agent: &Agent) -> Result<()> {
        agents::insert_agent(&mut self.db, agent)
    }

    fn set_agent_status(
        &mut self,
        omni: &OmniAccount,
        status: AgentStatus,
        now: i64,
    ) -> Result<bool> {
        agents::set_agent_status(&mut self.db, omni, status, now)
    }

    fn advance_agent_proof(&mut self, omni: &OmniAccount, proof_ms: i64) -> Result<bool> {
        agents::advance_agent_proof(&mut self.db, omni, proof_ms)
    }

    fn insert_pairing(&mut self, request: &PairingRequest) -> Result<()> {
        agents::insert_pairing(&mut self.db, request)
    }

    fn pairing(&mut self, id: &str) -> Result<Option<PairingRequest>> {
        agents::pairing(&mut self.db, id)
    }

    fn pending_pairing(&mut self, code: &str, now: i64) -> Result<Option<PairingRequest>> {
        agents::pending_pairing(&mut self.db, code, now)
    }

    fn advance_pairing_proof(&mut self, id: &str, proof_ms: i64) -> Result<bool> {
        agents::advance_pairing_proof(&mut self.db, id, proof_ms)
    }

    fn set_pairing_agent(&mut self, id: &str, agent: &OmniAccount) -> Result<bool> {
        agents::set_pairing_agent(&mut self.db, id, agent)
    }

    fn end_pairing(&mut self, id: &str, now: i64) -> Result<bool> {
        agents::end_pairing(&mut self.db, id, now)
    }

    fn mark_pairing_claimed(&mut self, id: &str, now: i64) -> Result<bool> {
        agents::mark_pairing_claimed(&mut self.db, id, now)
    }

    fn insert_login(&mut self, request: &LoginRequest) -> Result<()> {
        logins::insert_login(&mut self.db, request)
    }

    fn login(&mut self, key: LoginKey<'_>) -> Result<Option<LoginRequest>> {
        logins::login(&mut self.db, key)
    }

    fn verify_login(
        &mut self,
        id_hash: &str,
        identity: &IdentityRef,
        code_hash: &str,
        now: i64,
    ) -> Result<bool> {
        logins::verify_login(&mut self.db, id_hash, identity, code_hash, now)
    }

    fn expire_login(&mut self, id_hash: &str, now: i64) -> Result<bool> {
        logins::expire_login(&mut self.db, id_hash, now)
    }

    fn count_wrong_code(&mut self, id_hash: &str) -> Result<()> {
        logins::count_wrong_code(&mut self.db, id_hash)
    }

    fn mark_login_claimed(
        &mut self,
        id_hash: &str,
        identity: &IdentityRef,
        now: i64,
    ) -> Result<bool> {
        logins::mark_login_claimed(&mut self.db, id_hash, identity, now)
    }

    fn identity(&mut self, identity: &IdentityRef) -> Result<Option<Identity>> {
        logins::identity(&mut self.db, identity)
    }

    fn insert_identity(&mut self, identity: &Identity) -> Result<()> {
        logins::insert_identity(&mut self.db, identity)
    }

    fn delete_identity(&mut self, master: &OmniAccount, identity: &IdentityRef) -> Result<bool> {
        logins::delete_identity(&mut self.db, master, identity)
    }

    fn insert_grant(&mut self, grant: &Grant) -> Result<()> {
        grants::insert_grant(&mut self.db, grant)
    }

    fn grant(&mut self, id: &str) -> Result<Option<Grant>> {
        grants::grant(&mut self.db, id)
    }

    fn use_grant(&mut self, id: &str, agent: &OmniAccount, now: i64) -> Result<bool> {
        grants::use_grant(&mut self.db, id, agent, now)
    }

    fn revoke_grant(&mut self, master: &OmniAccount, id: &str, now: i64) -> Result<bool> {
        grants::revoke_grant(&mut self.db, master, id, now)
    }

    fn insert_access_request(&mut self, request: &AccessRequest) -> Result<()> {
        access::insert(&mut self.db, request)
    }

    fn access_request(&mut self, id: &str) -> Result<Option<AccessRequest>> {
        access::get(&mut self.db, id)
    }

    fn pending_access_requests(&mut self, agent: &OmniAccount, now: i64) -> Result<u64> {
        access::pending_of(&mut self.db, agent, now)
    }

    fn decide_access_request(
        &mut self,
        id: &str,
        decision: AccessDecision,
        grant_id: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        access::decide(&mut self.db, id, decision, grant_id, now)
    }

    fn insert_signing_key(&mut self, key: &SigningKeyRecord) -> Result<()> {
        keys::insert_signing_key(&mut self.db, key)
    }

    fn update_signing_key(
        &mut self,
        kid: &str,
        retired_at: Option<i64>,
        withdrawn_at: Option<i64>,
    ) -> Result<bool> {
        keys::update_signing_key(&mut self.db, kid, retired_at, withdrawn_at)
    }

    fn reseal_signing_key(&mut self, kid: &str, sealed_private_key: &[u8]) -> Result<bool> {
        keys::reseal_signing_key(&mut self.db, kid, sealed_private_key)
    }

    fn window_counts(&mut self, buckets: &[(String, RateWindow)], now: i64) -> Result<Vec<u64>> {
        limits::window_counts(&mut self.db, buckets, now)
    }

    fn count_uses(&mut self, buckets: &[(String, RateWindow)], now: i64) -> Result<()> {
        limits::count_uses(&mut self.db, buckets, now)
    }

    fn purge_expired(&mut self, requests_before: i64, sessions_before: i64) -> Result<u64> {
        let mut purged = 0;
        for (sql, before) in [
            (sessions::PURGE_CHALLENGES, requests_before),
            (agents::PURGE_PAIRINGS, requests_before),
            (logins::PURGE_LOGINS, requests_before),
            (sessions::PURGE_SESSIONS, sessions_before),
        ] {
            purged += self.db.execute(sql, &[&before])?;
        }
        Ok(purged)
    }
}
