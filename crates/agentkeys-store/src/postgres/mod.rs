//! PostgreSQL backend: several broker instances may share one database.
//!
//! Writes mirror the SQLite backend: one std thread per instance owns the writer connection
//! and commits whatever is queued as one transaction (group commit); a unit of work that fails
//! fails alone. The batch begins with `LOCK TABLE audit_events IN EXCLUSIVE MODE`, which
//! serialises the writers of every instance (the audit chain head is read under it, so the
//! chain stays gapless and linear) while plain SELECTs, which take only ACCESS SHARE, go on.
//! Callers are answered after the commit. How a batch keeps its round trips and statements
//! few while it holds that lock: [`batch`].
//!
//! Why these drivers: tokio-postgres, because it pipelines requests issued together, which the
//! writer uses to send the writes nobody waits for with the next statement. The writer runs it
//! on a current-thread runtime of its own thread, so the broker's closures run there as they
//! do on SQLite's writer thread, never on a tokio worker. Reads run on the caller's task with
//! a small deadpool pool, statements prepared once per connection. sqlx was not used: its
//! statement-per-message design is what made the old SQLite backend slow, and it adds a second
//! query layer for no gain here.
//!
//! TLS: connections use `NoTls`. The database is assumed to be on loopback or a private
//! network; a URL asking for `sslmode=require` fails to connect rather than silently
//! downgrading.

mod access;
mod agents;
mod audit;
mod batch;
mod grants;
mod keys;
mod limits;
mod logins;
mod sessions;
mod tx;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row, Statement};

use crate::{
    AccessRequest, Agent, AuditEvent, AuditListing, AuditQuery, Grant, Identity, LoginKey,
    LoginRequest, PairingRequest, Result, Session, SigningKeyRecord, Store, StoreError, Work,
};
use agentkeys_types::OmniAccount;
use batch::{Batch, Conn};
use tx::PgTx;

/// Most units of work one commit carries; bounds the latency a burst adds to its first caller.
const MAX_BATCH: usize = 512;
const QUEUE_DEPTH: usize = 8192;
/// Read connections per instance.
const READ_POOL: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Reconnect attempts per batch when the writer's connection is lost, waiting 100 ms, 200 ms,
/// … between them (about 6 s in all); the batch then fails as unavailable and the next one
/// tries again.
const RECONNECT_ATTEMPTS: u32 = 7;
/// No new attempt starts after this long; the batch waiting on them then fails.
const RECONNECT_BUDGET: Duration = Duration::from_secs(15);

/// Schema migrations, applied in order; `schema_migrations` records the versions applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_init.sql"),
    include_str!("../../migrations/postgres/0002_audit_hash_format.sql"),
    include_str!("../../migrations/postgres/0003_access_requests.sql"),
];

type Statements = HashMap<&'static str, Statement>;
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

pub struct PostgresStore {
    readers: Pool,
    writer: mpsc::Sender<Box<dyn Work>>,
    audit: Arc<crate::AuditCounter>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://…` or `postgresql://…`), applies any pending migrations
    /// and starts this instance's writer.
    pub async fn open(url: &str) -> Result<Self> {
        let config = config_of(url)?;
        migrate(&config).await?;
        let readers = pool(&config)?;
        let audit = Arc::new(crate::AuditCounter::default());
        let writer = start_writer(config, audit.clone()).await?;
        Ok(Self {
            readers,
            writer,
            audit,
        })
    }

    /// Applies pending migrations and returns (for a `migrate` command).
    pub async fn migrate_only(url: &str) -> Result<()> {
        migrate(&config_of(url)?).await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.readers.get().await.map_err(pool_err)
    }

    async fn query_opt(&self, sql: &'static str, params: Params<'_>) -> Result<Option<Row>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(db_err)?;
        client.query_opt(&stmt, params).await.map_err(db_err)
    }

    async fn query(&self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(db_err)?;
        client.query(&stmt, params).await.map_err(db_err)
    }
}

/// Only the URL forms: a key=value string would also parse, but `open` dispatches on the scheme.
fn config_of(url: &str) -> Result<tokio_postgres::Config> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    }
    let mut config = tokio_postgres::Config::from_str(url)
        .map_err(|e| StoreError::UnsupportedUrl(format!("{url}: {e}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("agentkeys");
    }
    Ok(config)
}

fn pool(config: &tokio_postgres::Config) -> Result<Pool> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(READ_POOL)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(CONNECT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| StoreError::Migrate(format!("read pool: {e}")))
}

// ---- migrations ---------------------------------------------------------------------------

async fn migrate(config: &tokio_postgres::Config) -> Result<()> {
    let (mut client, connection) = config.connect(NoTls).await.map_err(db_err)?;
    let driver = tokio::spawn(connection);
    let outcome = migrate_on(&mut client).await;
    drop(client);
    let _ = driver.await;
    outcome
}

async fn migrate_on(client: &mut tokio_postgres::Client) -> Result<()> {
    let fail = |e: tokio_postgres::Error| match db_err(e) {
        StoreError::Database(m) | StoreError::Conflict(m) => StoreError::Migrate(m),
        other => other,
    };
    let schema: Option<String> = client
        .query_one("SELECT current_schema()", &[])
        .await
        .map_err(fail)?
        .try_get(0)
        .map_err(fail)?;
    let Some(schema) = schema else {
        return Err(StoreError::Migrate(
            "the search_path names no existing schema: create it first".into(),
        ));
    };
    let tx = client.transaction().await.map_err(fail)?;
    // Two instances starting together: the second waits here, then finds the work done. The
    // key is per schema, so databases holding several schemas (tests) do not queue up.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('agentkeys-migrate:' || $1::text))",
        &[&schema],
    )
    .await
    .map_err(fail)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version     BIGINT PRIMARY KEY,
             applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(fail)?;
    let applied: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::bigint FROM schema_migrations",
            &[],
        )
        .await
        .map_err(fail)?
        .try_get(0)
        .map_err(fail)?;
    let known = MIGRATIONS.len() as i64;
    let applied = usize::try_from(applied)
        .map_err(|_| StoreError::Migrate(format!("schema_migrations holds version {applied}")))?;
    if applied as i64 > known {
        return Err(StoreError::Migrate(format!(
            "the database is at schema version {applied}, newer than this binary knows ({known}); upgrade the broker"
        )));
    }
    for (version, sql) in (1..).zip(MIGRATIONS).skip(applied) {
        let version: i64 = version;
        tx.batch_execute(sql)
            .await
            .map_err(|e| StoreError::Migrate(format!("migration {version}: {e}")))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(fail)?;
    }
    tx.commit().await.map_err(fail)
}

// ---- the writer ---------------------------------------------------------------------------

/// Connects the writer: tokio-postgres on a runtime of the writer thread's own (a current-thread
/// runtime runs the connection only while the writer waits on it, which is when it must).
fn connect_writer(config: &tokio_postgres::Config) -> Result<Conn> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::Unavailable(format!("the writer's runtime: {e}")))?;
    let (client, connection) = rt.block_on(config.connect(NoTls)).map_err(db_err)?;
    rt.spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "store.writer_connection_closed");
        }
    });
    Ok(Conn {
        rt,
        client,
        stmts: HashMap::new(),
    })
}

/// Starts the writer thread once its first connection is up, so `open` fails early on a bad URL.
async fn start_writer(
    config: tokio_postgres::Config,
    audit: Arc<crate::AuditCounter>,
) -> Result<mpsc::Sender<Box<dyn Work>>> {
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let (ready, connected) = oneshot::channel();
    std::thread::Builder::new()
        .name("agentkeys-pg-writer".into())
        .spawn(move || {
            // Named apart from the readers, so an operator can tell the one writer per instance.
            let mut config = config;
            let name = format!(
                "{}-writer",
                config.get_application_name().unwrap_or("agentkeys")
            );
            config.application_name(&name);
            match connect_writer(&config) {
                Ok(conn) => {
                    let _ = ready.send(Ok(()));
                    run_writer(&config, Some(conn), rx, &audit);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        })
        .map_err(|e| StoreError::Migrate(format!("starting the writer thread: {e}")))?;
    connected.await.map_err(|_| StoreError::WriterGone)??;
    Ok(tx)
}

fn run_writer(
    config: &tokio_postgres::Config,
    mut conn: Option<Conn>,
    mut rx: mpsc::Receiver<Box<dyn Work>>,
    audit: &crate::AuditCounter,
) {
    let mut batch: Vec<Box<dyn Work>> = Vec::with_capacity(MAX_BATCH);
    let mut failures: Vec<Option<StoreError>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(work) => batch.push(work),
                Err(_) => break,
            }
        }
        if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            conn = reconnect(config);
        }
        let Some(c) = conn.as_mut() else {
            for work in batch.drain(..) {
                work.finish(Err(StoreError::Unavailable(
                    "the store's writer cannot reach the database".into(),
                )));
            }
            continue;
        };
        failures.clear();
        failures.resize_with(batch.len(), || None);
        let mut appended = 0;
        let committed = commit_batch(c, &mut batch, &mut failures, &mut appended);
        audit.record(appended, committed.is_ok());
        if let Err(e) = &committed {
            tracing::error!(error = %e, "store.commit_failed");
            if c.rollback().is_err() {
                // The next batch starts from a fresh connection.
                conn = None;
            }
        }
        // Nothing of a failed batch was written (or, if the connection died during COMMIT, it
        // is unknown): every work in it hears that its commit failed.
        let committed = committed.map_err(|e| e.to_string());
        for (work, failure) in batch.drain(..).zip(failures.iter_mut()) {
            work.finish(match failure.take() {
                Some(e) => Err(e),
                None => committed.clone().map_err(StoreError::Commit),
            });
        }
    }
}

fn reconnect(config: &tokio_postgres::Config) -> Option<Conn> {
    let mut delay = Duration::from_millis(100);
    let started = std::time::Instant::now();
    for attempt in 1..=RECONNECT_ATTEMPTS {
        // A host that drops packets costs a connect timeout per attempt: stop waiting early.
        if started.elapsed() > RECONNECT_BUDGET {
            break;
        }
        match connect_writer(config) {
            Ok(conn) => {
                tracing::info!(attempt, "store.writer_reconnected");
                return Some(conn);
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "store.writer_reconnect_failed");
                if attempt < RECONNECT_ATTEMPTS {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
    None
}

/// Runs every work of the batch in one transaction (see [`batch`]); an error is the
/// transaction's own. A work whose closure succeeded but whose statements did not gets its
/// own error in `failures`. `appended` is set to the events the batch appended, before its
/// commit is tried.
fn commit_batch(
    conn: &mut Conn,
    works: &mut [Box<dyn Work>],
    failures: &mut [Option<StoreError>],
    appended: &mut u64,
) -> Result<()> {
    let mut batch = Batch::begin(conn)?;
    let start = batch.head.seq;
    for (work, failure) in works.iter_mut().zip(failures.iter_mut()) {
        let mark = batch.mark();
        let result = work.run(&mut PgTx::new(&mut batch));
        *failure = batch.end_work(result.is_ok(), mark);
    }
    *appended = batch.head.seq - start;
    batch.commit()
}

// ---- errors -------------------------------------------------------------------------------

/// Maps a driver error to the backend-neutral kinds the broker acts on.
pub(super) fn db_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            return StoreError::Conflict(db.message().to_owned());
        }
        // Class 08 (connection exception), and the server shutting down or starting up.
        if code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
            ]
            .contains(code)
        {
            return StoreError::Unavailable(e.to_string());
        }
        return StoreError::Database(e.to_string());
    }
    // No server answer at all: the socket failed, closed, or never connected.
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io || e.to_string().starts_with("error connecting") {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Database(e.to_string())
    }
}

fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => db_err(e),
        other => StoreError::Unavailable(other.to_string()),
    }
}

// ---- rows ---------------------------------------------------------------------------------

/// Column `i` of `row`, as `T`.
pub(super) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i).map_err(db_err)
}

pub(super) fn omni(value: String) -> Result<OmniAccount> {
    value
        .parse()
        .map_err(|_| StoreError::Database(format!("a stored omni is malformed: {value:?}")))
}

pub(super) fn opt_omni(value: Option<String>) -> Result<Option<OmniAccount>> {
    value.map(omni).transpose()
}

/// Times and counts are BIGINT; seqs are u64 in Rust.
pub(super) fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// PostgreSQL's text cannot hold a NUL byte.
pub(super) fn no_nul(text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(StoreError::Database(
            "text with a NUL byte cannot be stored".into(),
        ));
    }
    Ok(())
}

pub(super) fn all<T>(rows: Vec<Row>, f: fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

// ---- the trait ----------------------------------------------------------------------------

#[async_trait]
impl Store for PostgresStore {
    fn audit_counter(&self) -> &crate::AuditCounter {
        &self.audit
    }

    async fn ping(&self) -> Result<()> {
        self.query_opt("SELECT 1", &[]).await.map(|_| ())
    }

    async fn run(&self, work: Box<dyn Work>) -> Result<()> {
        self.writer
            .send(work)
            .await
            .map_err(|_| StoreError::WriterGone)
    }

    async fn session(&self, token_hash: &str) -> Result<Option<Session>> {
        let row = self.query_opt(sessions::SELECT, &[&token_hash]).await?;
        row.as_ref().map(sessions::session_row).transpose()
    }

    async fn sessions_of(&self, omni: &OmniAccount, now: i64) -> Result<Vec<Session>> {
        let rows = self
            .query(sessions::SELECT_LIVE_OF, &[&omni.as_str(), &now])
            .await?;
        all(rows, sessions::session_row)
    }

    async fn agent(&self, omni: &OmniAccount) -> Result<Option<Agent>> {
        let row = self.query_opt(agents::SELECT, &[&omni.as_str()]).await?;
        row.as_ref().map(agents::agent_row).transpose()
    }

    async fn agents_of(&self, master: &OmniAccount) -> Result<Vec<Agent>> {
        let rows = self.query(agents::SELECT_OF, &[&master.as_str()]).await?;
        all(rows, agents::agent_row)
    }

    async fn pairing(&self, id: &str) -> Result<Option<PairingRequest>> {
        let row = self.query_opt(agents::SELECT_PAIRING, &[&id]).await?;
        row.as_ref().map(agents::pairing_row).transpose()
    }

    async fn login(&self, key: LoginKey<'_>) -> Result<Option<LoginRequest>> {
        let (sql, value) = logins::select(key);
        let row = self.query_opt(sql, &[&value]).await?;
        row.as_ref().map(logins::login_row).transpose()
    }

    async fn identities_of(&self, master: &OmniAccount) -> Result<Vec<Identity>> {
        let rows = self
            .query(logins::SELECT_IDENTITIES_OF, &[&master.as_str()])
            .await?;
        all(rows, logins::identity_row)
    }

    async fn grant(&self, id: &str) -> Result<Option<Grant>> {
        let row = self.query_opt(grants::SELECT, &[&id]).await?;
        row.as_ref().map(grants::grant_row).transpose()
    }

    async fn grants_of(
        &self,
        master: Option<&OmniAccount>,
        agent: Option<&OmniAccount>,
    ) -> Result<Vec<Grant>> {
        let master = master.map(OmniAccount::as_str);
        let agent = agent.map(OmniAccount::as_str);
        let rows = self.query(grants::SELECT_OF, &[&master, &agent]).await?;
        all(rows, grants::grant_row)
    }

    async fn access_request(&self, id: &str) -> Result<Option<AccessRequest>> {
        let row = self.query_opt(access::SELECT, &[&id]).await?;
        row.as_ref().map(access::row).transpose()
    }

    async fn access_requests_of(
        &self,
        master: Option<&OmniAccount>,
        agent: Option<&OmniAccount>,
    ) -> Result<Vec<AccessRequest>> {
        let master = master.map(OmniAccount::as_str);
        let agent = agent.map(OmniAccount::as_str);
        let rows = self.query(access::SELECT_OF, &[&master, &agent]).await?;
        all(rows, access::row)
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        let rows = self.query(keys::SELECT_ALL, &[]).await?;
        all(rows, keys::key_row)
    }

    async fn audit_events(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>> {
        let rows = self
            .query(audit::SELECT_AFTER, &[&seq_param(after), &i64::from(limit)])
            .await?;
        all(rows, audit::event_row)
    }

    async fn audit_for_master(&self, master: &str, query: AuditQuery) -> Result<AuditListing> {
        let rows = self
            .query(
                audit::SELECT_FOR_MASTER,
                &[
                    &master,
                    &seq_param(query.after_seq),
                    &query.kind,
                    &query.actor,
                    &query.since,
                    &query.until,
                    &i64::from(query.limit),
                ],
            )
            .await?;
        // The (master, seq) index finds exactly the master's rows: a page never stops short.
        Ok(AuditListing {
            events: all(rows, audit::event_row)?,
            searched_to: None,
        })
    }
}
