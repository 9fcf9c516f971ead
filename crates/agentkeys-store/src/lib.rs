//! The AgentKeys store: everything the broker persists, behind one [`Store`] trait.
//!
//! Backends implement the trait once each (SQLite here; PostgreSQL later) and pass the same
//! conformance tests. Every method that changes state and must be audited takes its audit
//! event, so the change and its event commit in one transaction. Time is always an argument:
//! the store never reads a clock.

pub mod audit;
mod model;
mod sqlite;

pub use audit::AuditQuery;
pub use model::*;
pub use sqlite::SqliteStore;

use std::sync::Arc;

use async_trait::async_trait;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("cannot prepare the store: {0}")]
    Migrate(String),
    #[error("the store's writer has stopped")]
    WriterGone,
    #[error("unsupported database URL {0:?}: use sqlite://PATH")]
    UnsupportedUrl(String),
    /// The operation contradicts what is stored (unknown key, duplicate id).
    #[error("{0}")]
    Conflict(String),
    /// The transaction holding this write could not commit; nothing of it was written.
    #[error("commit failed: {0}")]
    Commit(String),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip for readiness checks.
    async fn ping(&self) -> Result<()>;

    // -- wallet challenges: single use --
    async fn insert_challenge(&self, challenge: Challenge) -> Result<()>;
    /// Removes and returns the challenge. A second call for the same id returns `None`.
    async fn take_challenge(&self, id: &str) -> Result<Option<Challenge>>;

    // -- sessions --
    /// Stores a new session and its sign-in audit event atomically.
    async fn create_session(&self, session: Session, event: NewAuditEvent) -> Result<u64>;
    async fn session(&self, token_hash: &str) -> Result<Option<Session>>;
    /// Marks a session revoked; returns whether a live session was revoked.
    async fn revoke_session(
        &self,
        token_hash: &str,
        now: i64,
        event: NewAuditEvent,
    ) -> Result<bool>;

    // -- the mint gate --
    /// Counts one use against every window for `actor` and appends `on_allow`, or, if any
    /// window is full, appends `on_deny` and reports when to retry. One transaction.
    async fn rate_limited_append(
        &self,
        actor: &str,
        windows: &[RateWindow],
        now: i64,
        on_allow: NewAuditEvent,
        on_deny: NewAuditEvent,
    ) -> Result<GateOutcome> {
        let buckets: Vec<(String, RateWindow)> =
            windows.iter().map(|w| (actor.to_owned(), *w)).collect();
        self.rate_limited_append_buckets(&buckets, None, now, on_allow, on_deny)
            .await
    }

    /// The same over several counters at once, each `(key, window)`: e.g. one per email
    /// address and one per client IP. All must have room, or none is counted. With `grant`,
    /// one use of that grant is consumed in the same transaction if it is still live for that
    /// agent; otherwise `on_deny` is written with reason `grant_unavailable`.
    async fn rate_limited_append_buckets(
        &self,
        buckets: &[(String, RateWindow)],
        grant: Option<&GrantUse>,
        now: i64,
        on_allow: NewAuditEvent,
        on_deny: NewAuditEvent,
    ) -> Result<GateOutcome> {
        self.gated_append(None, buckets, grant, now, on_allow, on_deny)
            .await
    }

    /// The mint's gate, one transaction: with `live`, first re-checks that the session is
    /// unrevoked and unexpired at `now` and, for an agent, that the agent is active (else
    /// `on_deny` is written with that reason and [`GateOutcome::NotLive`] returned); then the
    /// rate limit and the grant as in [`Store::rate_limited_append_buckets`].
    async fn gated_append(
        &self,
        live: Option<&LiveCheck>,
        buckets: &[(String, RateWindow)],
        grant: Option<&GrantUse>,
        now: i64,
        on_allow: NewAuditEvent,
        on_deny: NewAuditEvent,
    ) -> Result<GateOutcome>;

    // -- audit --
    /// Appends one event durably; returns its seq.
    async fn append_audit(&self, event: NewAuditEvent) -> Result<u64>;
    /// Events with `seq > after`, oldest first, at most `limit`.
    async fn audit_events(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>>;
    /// The events whose `master` is `master` (its own and its agents'), oldest first, filtered
    /// and paged as [`AuditQuery`] says.
    async fn audit_for_master(&self, master: &str, query: AuditQuery) -> Result<Vec<AuditEvent>>;

    // -- signing keys --
    async fn insert_signing_key(&self, key: SigningKeyRecord, event: NewAuditEvent) -> Result<()>;
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>>;
    /// Sets `retired_at` / `withdrawn_at` of one key; `Conflict` if the key is unknown.
    async fn update_signing_key(
        &self,
        kid: &str,
        retired_at: Option<i64>,
        withdrawn_at: Option<i64>,
        event: NewAuditEvent,
    ) -> Result<()>;

    // -- agents and pairing --
    async fn create_pairing(&self, request: PairingRequest, event: NewAuditEvent) -> Result<()>;
    async fn pairing(&self, id: &str) -> Result<Option<PairingRequest>>;
    /// Turns the pending request with `code` into agent `agent_omni` of `master`, labelled
    /// `label`. The event is written only when it succeeds.
    async fn approve_pairing(
        &self,
        code: &str,
        master: &str,
        label: &str,
        agent_omni: &str,
        now: i64,
        event: NewAuditEvent,
    ) -> Result<ApproveOutcome>;
    /// Records a device proof made at `proof_ms` and, if the request is approved and not yet
    /// claimed, stores `session` (omni and master are filled in from the agent) with `event`.
    async fn claim_pairing(
        &self,
        id: &str,
        proof_ms: i64,
        now: i64,
        session: Session,
        event: NewAuditEvent,
    ) -> Result<ClaimOutcome>;
    async fn agent(&self, omni: &str) -> Result<Option<Agent>>;
    async fn agents_of(&self, master: &str) -> Result<Vec<Agent>>;
    /// Moves `master`'s agent to `status`. Removal also revokes every session of the agent.
    /// Returns the updated agent, or `None` if `master` has no such live agent.
    async fn set_agent_status(
        &self,
        master: &str,
        omni: &str,
        status: &str,
        now: i64,
        event: NewAuditEvent,
    ) -> Result<Option<Agent>>;

    /// Issues `session` to a paired, active agent whose device proved itself at `proof_ms`
    /// (later than any earlier proof of this agent), with `event`.
    async fn agent_session(
        &self,
        omni: &str,
        proof_ms: i64,
        session: Session,
        event: NewAuditEvent,
    ) -> Result<AgentSessionOutcome>;

    // -- email / OIDC sign-in and identity links --
    /// Stores a new login request, with its audit event unless the caller already wrote it
    /// (the rate-limit gate in front of an email start does).
    async fn create_login(&self, request: LoginRequest, event: Option<NewAuditEvent>)
    -> Result<()>;
    async fn login(&self, id_hash: &str) -> Result<Option<LoginRequest>>;
    async fn login_by_link_token(&self, token_hash: &str) -> Result<Option<LoginRequest>>;
    async fn login_by_state(&self, state: &str) -> Result<Option<LoginRequest>>;
    /// Records that the request's identity was proved, and the hash of the one-time code that
    /// now collects it; `false` if it was already verified or has expired (single use).
    async fn verify_login(
        &self,
        id_hash: &str,
        identity_type: &str,
        identity_value: &str,
        code_hash: &str,
        now: i64,
        event: NewAuditEvent,
    ) -> Result<bool>;
    /// Ends a request that failed at the provider (denied, bad answer) before it was verified,
    /// with its audit event; `false` if it was not live. A request fails once, so a repeated
    /// failing callback writes nothing more.
    async fn fail_login(&self, id_hash: &str, now: i64, event: NewAuditEvent) -> Result<bool>;
    /// Collects a request once with its one-time code: an email request is verified by the
    /// code itself, an OIDC request must have been verified at the callback. A wrong code
    /// counts one of `max_attempts`. On success it links the identity (a link request) or
    /// stores `session` for the identity's master (omni, wallet and master filled in by the
    /// store, and the identity recorded as the session's origin). `event`'s actor and master
    /// are filled in too.
    async fn redeem_login_code(
        &self,
        id_hash: &str,
        code_hash: &str,
        max_attempts: u32,
        now: i64,
        session: Session,
        event: NewAuditEvent,
    ) -> Result<LoginClaim>;
    /// Collects an email sign-in request (never a link request) once by its emailed link's
    /// token: the browser that opened the link gets `session`.
    async fn redeem_login_link(
        &self,
        link_token_hash: &str,
        now: i64,
        session: Session,
        event: NewAuditEvent,
    ) -> Result<LoginClaim>;
    async fn identities_of(&self, master: &str) -> Result<Vec<Identity>>;
    /// Unlinks the identity from `master` and revokes the live sessions obtained through it;
    /// `None` if it was not linked to `master`, else how many sessions were revoked (also put
    /// into `event.details.sessions_revoked`).
    async fn unlink_identity(
        &self,
        master: &str,
        identity_type: &str,
        identity_value: &str,
        now: i64,
        event: NewAuditEvent,
    ) -> Result<Option<u64>>;

    // -- grants --
    async fn create_grant(&self, grant: Grant, event: NewAuditEvent) -> Result<()>;
    async fn grant(&self, id: &str) -> Result<Option<Grant>>;
    /// Grants made by `master`, or (with `agent`) to that agent.
    async fn grants_of(&self, master: Option<&str>, agent: Option<&str>) -> Result<Vec<Grant>>;
    /// Revokes `master`'s live grant; `false` if there is none with that id.
    async fn revoke_grant(
        &self,
        master: &str,
        id: &str,
        now: i64,
        event: NewAuditEvent,
    ) -> Result<bool>;

    // -- more on sessions --
    /// Live sessions (not revoked, not expired at `now`) of one actor.
    async fn sessions_of(&self, omni: &str, now: i64) -> Result<Vec<Session>>;
    /// Revokes every live session of `omni` except `keep`; returns how many.
    async fn revoke_sessions_of(
        &self,
        omni: &str,
        keep: Option<&str>,
        now: i64,
        event: NewAuditEvent,
    ) -> Result<u64>;

    /// Deletes wallet challenges, pairing requests and login requests that expired before
    /// `requests_before`, and sessions that expired before `sessions_before`; returns how many
    /// rows went. Audit events are never purged.
    async fn purge_expired(&self, requests_before: i64, sessions_before: i64) -> Result<u64>;
}

/// Opens the backend a URL names. Only `sqlite://` exists today.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}
