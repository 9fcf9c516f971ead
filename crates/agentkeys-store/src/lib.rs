//! The AgentKeys store: everything the broker persists, behind one [`Store`] trait.
//!
//! The store holds data; the broker decides. Every change is a closure the broker passes to
//! [`Store::transact`](trait.Store.html#method.transact): it runs against a [`Tx`], whose
//! methods are small conditional primitives ("revoke this session if it is still live",
//! "use this grant if it has uses left") that report what they did, and everything it wrote,
//! audit events included, commits together or not at all. Backends implement [`Tx`] and the
//! reads once each (SQLite, PostgreSQL) and pass the same conformance tests. Time is always
//! an argument: the store never reads a clock.

pub mod audit;
mod limits;
mod model;
mod postgres;
mod sqlite;
mod work;

pub use audit::{AuditListing, AuditQuery};
pub use model::*;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use work::Work;

use std::sync::Arc;

use agentkeys_types::OmniAccount;
use async_trait::async_trait;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What went wrong in a backend, in terms that do not depend on which one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    /// The database cannot be reached (connection refused or lost).
    #[error("the database is unreachable: {0}")]
    Unavailable(String),
    #[error("cannot prepare the store: {0}")]
    Migrate(String),
    #[error("the store's writer has stopped")]
    WriterGone,
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// A uniqueness rule refused the write (duplicate id, code or label).
    #[error("{0}")]
    Conflict(String),
    /// The transaction holding this write could not commit; nothing of it was written.
    #[error("commit failed: {0}")]
    Commit(String),
}

/// One open transaction. Each method is a single statement's worth of work; the conditional
/// ones say in their name and doc what must hold, and return whether it did (and so whether
/// they changed anything). Nothing here decides who may do what: the broker does, before and
/// between these calls, inside the same transaction.
pub trait Tx {
    // -- audit --
    /// Appends `event` to the hash chain; returns its seq.
    fn append(&mut self, event: &NewAuditEvent) -> Result<u64>;

    // -- wallet challenges --
    fn insert_challenge(&mut self, challenge: &Challenge) -> Result<()>;
    /// Removes and returns the challenge: a second take of the same id returns `None`.
    fn take_challenge(&mut self, id: &str) -> Result<Option<Challenge>>;

    // -- sessions --
    fn insert_session(&mut self, session: &Session) -> Result<()>;
    /// The standing of the session, as this transaction sees it.
    fn session_standing(&mut self, token_hash: &str) -> Result<Option<SessionStanding>>;
    /// Revokes the session if it is live at `now`; whether it was.
    fn revoke_session(&mut self, token_hash: &str, now: i64) -> Result<bool>;
    /// Revokes the live sessions of `omni` that `which` selects; how many.
    fn revoke_sessions(
        &mut self,
        omni: &OmniAccount,
        which: SessionFilter<'_>,
        now: i64,
    ) -> Result<u64>;

    // -- agents --
    fn agent(&mut self, omni: &OmniAccount) -> Result<Option<Agent>>;
    /// Whether `master` has, or ever had, an agent labelled `label`.
    fn label_taken(&mut self, master: &OmniAccount, label: &str) -> Result<bool>;
    fn insert_agent(&mut self, agent: &Agent) -> Result<()>;
    /// Sets the agent's status; whether the agent exists.
    fn set_agent_status(
        &mut self,
        omni: &OmniAccount,
        status: AgentStatus,
        now: i64,
    ) -> Result<bool>;
    /// Records a device proof made at `proof_ms` if it is later than every earlier one of this
    /// agent; whether it was (a replayed proof is not).
    fn advance_agent_proof(&mut self, omni: &OmniAccount, proof_ms: i64) -> Result<bool>;

    // -- pairing --
    fn insert_pairing(&mut self, request: &PairingRequest) -> Result<()>;
    fn pairing(&mut self, id: &str) -> Result<Option<PairingRequest>>;
    /// The request with `code` that is unexpired at `now` and not yet approved.
    fn pending_pairing(&mut self, code: &str, now: i64) -> Result<Option<PairingRequest>>;
    /// As [`Tx::advance_agent_proof`], for a pairing request's polls.
    fn advance_pairing_proof(&mut self, id: &str, proof_ms: i64) -> Result<bool>;
    /// Records the agent a request became, if it had none yet; whether it had none.
    fn set_pairing_agent(&mut self, id: &str, agent: &OmniAccount) -> Result<bool>;
    /// Ends a request that is unapproved and unexpired at `now` (its expiry becomes `now`): a
    /// master refused the device; whether it was pending.
    fn end_pairing(&mut self, id: &str, now: i64) -> Result<bool>;
    /// Marks the agent's session handed out, if it was not yet; whether it was not.
    fn mark_pairing_claimed(&mut self, id: &str, now: i64) -> Result<bool>;

    // -- email / OIDC sign-in --
    fn insert_login(&mut self, request: &LoginRequest) -> Result<()>;
    fn login(&mut self, key: LoginKey<'_>) -> Result<Option<LoginRequest>>;
    /// Records that the request proved `identity` and the hash of the code that now collects
    /// it, if the request is unverified and unexpired at `now`; whether it was.
    fn verify_login(
        &mut self,
        id_hash: &str,
        identity: &IdentityRef,
        code_hash: &str,
        now: i64,
    ) -> Result<bool>;
    /// Ends a request that is live, unverified and uncollected at `now` (its expiry becomes
    /// `now`); whether it was.
    fn expire_login(&mut self, id_hash: &str, now: i64) -> Result<bool>;
    /// Counts one wrong code against the request.
    fn count_wrong_code(&mut self, id_hash: &str) -> Result<()>;
    /// Marks the request collected with the identity it proved, if it was not collected yet;
    /// whether it was not.
    fn mark_login_claimed(
        &mut self,
        id_hash: &str,
        identity: &IdentityRef,
        now: i64,
    ) -> Result<bool>;

    // -- identities --
    fn identity(&mut self, identity: &IdentityRef) -> Result<Option<Identity>>;
    fn insert_identity(&mut self, identity: &Identity) -> Result<()>;
    /// Deletes the link if it belongs to `master`; whether it did.
    fn delete_identity(&mut self, master: &OmniAccount, identity: &IdentityRef) -> Result<bool>;

    // -- grants --
    fn insert_grant(&mut self, grant: &Grant) -> Result<()>;
    fn grant(&mut self, id: &str) -> Result<Option<Grant>>;
    /// Consumes one use of the grant if it is `agent`'s, unrevoked, unexpired at `now` and
    /// not used up; whether it was.
    fn use_grant(&mut self, id: &str, agent: &OmniAccount, now: i64) -> Result<bool>;
    /// Revokes the grant if it is `master`'s and unrevoked; whether it was.
    fn revoke_grant(&mut self, master: &OmniAccount, id: &str, now: i64) -> Result<bool>;

    // -- access requests --
    fn insert_access_request(&mut self, request: &AccessRequest) -> Result<()>;
    fn access_request(&mut self, id: &str) -> Result<Option<AccessRequest>>;
    /// How many of `agent`'s requests are undecided and unexpired at `now`.
    fn pending_access_requests(&mut self, agent: &OmniAccount, now: i64) -> Result<u64>;
    /// Records `decision` (and the grant an approval made) if the request is undecided and
    /// unexpired at `now`; whether it was.
    fn decide_access_request(
        &mut self,
        id: &str,
        decision: AccessDecision,
        grant_id: Option<&str>,
        now: i64,
    ) -> Result<bool>;

    // -- signing keys --
    fn insert_signing_key(&mut self, key: &SigningKeyRecord) -> Result<()>;
    /// Sets `retired_at` and `withdrawn_at` of one key; whether it exists.
    fn update_signing_key(
        &mut self,
        kid: &str,
        retired_at: Option<i64>,
        withdrawn_at: Option<i64>,
    ) -> Result<bool>;
    /// Replaces a key's sealed private key (a key-encryption-key rotation); whether it exists.
    fn reseal_signing_key(&mut self, kid: &str, sealed_private_key: &[u8]) -> Result<bool>;

    // -- rate limits: fixed windows --
    /// Uses counted in each bucket's current window (the one holding `now`), in order. The
    /// buckets of one call are distinct.
    fn window_counts(&mut self, buckets: &[(String, RateWindow)], now: i64) -> Result<Vec<u64>>;
    /// Counts one use in each bucket's current window.
    fn count_uses(&mut self, buckets: &[(String, RateWindow)], now: i64) -> Result<()>;
    /// [`Tx::window_counts`] of one bucket.
    fn window_count(&mut self, bucket: &str, window: RateWindow, now: i64) -> Result<u64> {
        let counts = self.window_counts(&[(bucket.to_owned(), window)], now)?;
        Ok(counts.first().copied().unwrap_or(0))
    }
    /// [`Tx::count_uses`] of one bucket.
    fn count_use(&mut self, bucket: &str, window: RateWindow, now: i64) -> Result<()> {
        self.count_uses(&[(bucket.to_owned(), window)], now)
    }

    // -- housekeeping --
    /// Deletes wallet challenges, pairing requests and login requests that expired before
    /// `requests_before`, and sessions that expired before `sessions_before`; how many rows
    /// went. Audit events are never purged.
    fn purge_expired(&mut self, requests_before: i64, sessions_before: i64) -> Result<u64>;
}

/// Audit events this process's writer appended: committed, and lost with a batch whose commit
/// failed. Counted where the appends happen, so every kind of event is in it.
#[derive(Debug, Default)]
pub struct AuditCounter {
    committed: std::sync::atomic::AtomicU64,
    lost: std::sync::atomic::AtomicU64,
    /// Unix seconds of the last batch that failed to commit while no batch has committed
    /// since; 0 when the last batch committed.
    failing_since: std::sync::atomic::AtomicI64,
}

impl AuditCounter {
    pub fn committed(&self) -> u64 {
        self.committed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn lost(&self) -> u64 {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// When the writer's last batch failed to commit (unix seconds), if it did: the store
    /// cannot take writes (a full disk, a lost database) until a batch commits again.
    pub fn failing_since(&self) -> Option<i64> {
        match self
            .failing_since
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            t => Some(t),
        }
    }

    /// A batch that appended `events` committed, or did not.
    pub(crate) fn record(&self, events: u64, committed: bool) {
        let counter = if committed {
            &self.committed
        } else {
            &self.lost
        };
        counter.fetch_add(events, std::sync::atomic::Ordering::Relaxed);
        let failing = if committed {
            0
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() as i64)
                .max(1)
        };
        self.failing_since
            .store(failing, std::sync::atomic::Ordering::Relaxed);
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip for readiness checks.
    async fn ping(&self) -> Result<()>;

    /// What this process's writer appended to the audit chain.
    fn audit_counter(&self) -> &AuditCounter;

    /// Runs `work` in a transaction and tells it whether that committed. Callers use
    /// [`transact`](#method.transact), which wraps a typed closure.
    async fn run(&self, work: Box<dyn Work>) -> Result<()>;

    // -- reads outside a transaction (each sees the last committed state) --
    async fn session(&self, token_hash: &str) -> Result<Option<Session>>;
    /// Live sessions (not revoked, not expired at `now`) of one actor.
    async fn sessions_of(&self, omni: &OmniAccount, now: i64) -> Result<Vec<Session>>;
    async fn agent(&self, omni: &OmniAccount) -> Result<Option<Agent>>;
    async fn agents_of(&self, master: &OmniAccount) -> Result<Vec<Agent>>;
    async fn pairing(&self, id: &str) -> Result<Option<PairingRequest>>;
    async fn login(&self, key: LoginKey<'_>) -> Result<Option<LoginRequest>>;
    async fn identities_of(&self, master: &OmniAccount) -> Result<Vec<Identity>>;
    async fn grant(&self, id: &str) -> Result<Option<Grant>>;
    /// Grants made by `master`, or (with `agent`) to that agent.
    async fn grants_of(
        &self,
        master: Option<&OmniAccount>,
        agent: Option<&OmniAccount>,
    ) -> Result<Vec<Grant>>;
    async fn access_request(&self, id: &str) -> Result<Option<AccessRequest>>;
    /// Requests to `master`'s agents, or (with `agent`) of that agent, oldest first.
    async fn access_requests_of(
        &self,
        master: Option<&OmniAccount>,
        agent: Option<&OmniAccount>,
    ) -> Result<Vec<AccessRequest>>;
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>>;
    /// Events with `seq > after`, oldest first, at most `limit`.
    async fn audit_events(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>>;
    /// The events whose `master` is `master` (its own and its agents'), oldest first, filtered
    /// and paged as [`AuditQuery`] says.
    async fn audit_for_master(&self, master: &str, query: AuditQuery) -> Result<AuditListing>;
}

impl dyn Store {
    /// Runs `f` in one transaction and returns what it returned once that has committed
    /// durably. If `f` fails, nothing it wrote is kept; if the commit fails, the caller gets
    /// [`StoreError::Commit`] and nothing was written. `f` runs on the store's writer: it must
    /// only decide and call the [`Tx`], never block on anything else.
    pub async fn transact<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut dyn Tx) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (work, answer) = work::typed(f);
        self.run(work).await?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Appends one audit event durably; returns its seq.
    pub async fn append_audit(&self, event: NewAuditEvent) -> Result<u64> {
        self.transact(move |tx| tx.append(&event)).await
    }
}

/// Opens the backend a URL names: `sqlite://PATH` or `postgres://…` (`postgresql://…`).
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PostgresStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

/// A consistent online copy of the store at `url` into the new file `dest` (SQLite); its size.
/// PostgreSQL is backed up with its own tools (`pg_dump`), which know its roles and types.
pub async fn backup(url: &str, dest: &std::path::Path) -> Result<u64> {
    if url.starts_with("sqlite:") {
        SqliteStore::backup(url, dest).await
    } else {
        Err(StoreError::UnsupportedUrl(format!(
            "{}: back up PostgreSQL with pg_dump (docs/deploy.md)",
            redact_url(url)
        )))
    }
}

/// The URL with any password replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _password)) = userinfo.split_once(':')
    {
        out = format!("{scheme}://{user}:***@{host}");
    }
    if let Some((base, query)) = out.clone().split_once('?') {
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{base}?{}", query.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacted_urls_keep_everything_but_the_password() {
        use super::redact_url;
        assert_eq!(
            redact_url("postgres://ak:s3cret@db:5432/agentkeys?sslmode=disable"),
            "postgres://ak:***@db:5432/agentkeys?sslmode=disable"
        );
        assert_eq!(
            redact_url("postgres://ak@db/x?password=s3cret&application_name=b"),
            "postgres://ak@db/x?password=***&application_name=b"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/ak/broker.db"),
            "sqlite:///var/lib/ak/broker.db"
        );
    }

    #[test]
    fn a_failed_commit_marks_the_store_failing_until_one_commits() {
        let c = super::AuditCounter::default();
        assert_eq!(c.failing_since(), None);
        c.record(2, false);
        assert!(c.failing_since().is_some_and(|t| t > 0));
        assert_eq!((c.committed(), c.lost()), (0, 2));
        c.record(0, false);
        assert!(c.failing_since().is_some());
        c.record(1, true);
        assert_eq!(c.failing_since(), None);
        assert_eq!((c.committed(), c.lost()), (1, 2));
    }
}
