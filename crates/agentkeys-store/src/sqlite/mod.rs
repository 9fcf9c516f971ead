//! SQLite backend: one file in WAL mode, `synchronous = FULL`, driven synchronously through
//! rusqlite on threads of its own.
//!
//! Every write goes through one writer thread that drains whatever is queued and commits it as
//! one transaction (group commit): works that arrive while a commit is being fsynced share the
//! next fsync instead of each paying for their own. Each work runs inside its own savepoint, so
//! one failing work fails alone. A caller is answered only after the commit that holds its
//! write is durable. Between batches the writer keeps some of the file's state in memory
//! (`memory.rs`: rate-limit counts, session standings, the masters recorded in the current
//! audit block), each forgotten or reloaded whenever it may no longer be the file's.
//!
//! Why not sqlx here: its SQLite driver runs each connection on a worker thread and every
//! statement is a message there and back (≈ 70 µs of wall time on these machines); a mint's
//! seven statements on the single writer then capped the broker near 3,000 mints/s. The same
//! SQL run synchronously on one thread costs ≈ 27 µs per operation (docs/performance.md).
//!
//! Reads are point lookups on small indexed tables: they run on the calling task with a
//! connection from a small pool (WAL readers never wait for the writer). Scans (lists, audit
//! pages, key records) go to the blocking pool.
//!
//! The SQL lives in one module per domain as free functions over a [`Connection`]; the same
//! function serves the writer's [`Tx`](crate::Tx) (see `tx.rs`) and the reads below.

mod access;
mod agents;
mod audit;
mod grants;
mod keys;
mod limits;
mod logins;
mod memory;
mod sessions;
mod standings;
mod tx;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentkeys_types::OmniAccount;
use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::types::Type;
use rusqlite::{Connection, ErrorCode, OpenFlags, Row, TransactionBehavior};
use tokio::sync::mpsc;

use crate::{
    AccessRequest, ActorKind, Agent, AgentStatus, AuditEvent, AuditListing, AuditQuery, Grant,
    Identity, LoginKey, LoginRequest, PairingRequest, Result, Session, SigningKeyRecord, Store,
    StoreError, Work,
};

/// Most works one commit carries; bounds the latency a large burst adds to its first caller.
const MAX_BATCH: usize = 512;
const QUEUE_DEPTH: usize = 8192;
/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 8;
/// How often the checkpointer copies the WAL's new frames into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);
/// WAL pages after which the writer checkpoints itself, should the checkpointer fall behind
/// (≈ 40 MB): SQLite's default is 1,000, run on the committing thread.
const WRITER_CHECKPOINT_PAGES: i64 = 10_000;

/// Schema migrations, applied in order; `PRAGMA user_version` records the last one applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_init.sql"),
    include_str!("../../migrations/sqlite/0002_agents.sql"),
    include_str!("../../migrations/sqlite/0003_agent_proofs.sql"),
    include_str!("../../migrations/sqlite/0004_logins.sql"),
    include_str!("../../migrations/sqlite/0005_grants.sql"),
    include_str!("../../migrations/sqlite/0006_bound_logins.sql"),
    include_str!("../../migrations/sqlite/0007_sealed_keys.sql"),
    include_str!("../../migrations/sqlite/0008_audit_hash_format.sql"),
    include_str!("../../migrations/sqlite/0009_access_requests.sql"),
    include_str!("../../migrations/sqlite/0010_audit_master_blocks.sql"),
    include_str!("../../migrations/sqlite/0011_rate_journal.sql"),
];

pub struct SqliteStore {
    readers: Arc<Readers>,
    writer: mpsc::Sender<Box<dyn Work>>,
    audit: Arc<crate::AuditCounter>,
    /// Dropped with the store, which ends the checkpointer.
    _checkpointer: std::sync::mpsc::Sender<()>,
}

impl SqliteStore {
    /// Opens (creating if missing) and migrates the database at `url` (`sqlite://PATH`).
    pub async fn open(url: &str) -> Result<Self> {
        let path = path_of(url)?;
        let path_for_setup = path.clone();
        let writer_conn = tokio::task::spawn_blocking(move || -> Result<Connection> {
            create_private(&path_for_setup)?;
            let mut conn = connect(&path_for_setup, true)?;
            migrate(&mut conn)?;
            // The checkpointer thread copies the WAL into the database; the writer's commits
            // only append to it (see run_checkpointer).
            conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
            // The WAL and shared-memory files exist now; older ones may predate 0600.
            for sidecar in ["-wal", "-shm", "-journal"] {
                let mut p = path_for_setup.clone().into_os_string();
                p.push(sidecar);
                make_private(Path::new(&p))?;
            }
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::Migrate(e.to_string()))??;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let audit = Arc::new(crate::AuditCounter::default());
        std::thread::Builder::new()
            .name("agentkeys-store-writer".into())
            .spawn({
                let audit = audit.clone();
                move || run_writer(writer_conn, rx, audit)
            })
            .map_err(|e| StoreError::Migrate(format!("starting the writer thread: {e}")))?;
        let (checkpointer, stop) = std::sync::mpsc::channel();
        let checkpoint_conn = connect(&path, true)?;
        std::thread::Builder::new()
            .name("agentkeys-store-checkpointer".into())
            .spawn(move || run_checkpointer(checkpoint_conn, stop))
            .map_err(|e| StoreError::Migrate(format!("starting the checkpointer thread: {e}")))?;
        Ok(Self {
            readers: Arc::new(Readers {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            writer: tx,
            audit,
            _checkpointer: checkpointer,
        })
    }

    /// A multi-row read, off the async threads.
    async fn scan<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| StoreError::Database(format!("a read task failed: {e}")))?
    }
}

impl SqliteStore {
    /// Writes a consistent copy of the database at `url` to `dest` while brokers keep using it
    /// (`VACUUM INTO` reads one snapshot). `dest` must not exist; it is created 0600 first, as
    /// the database itself is. Returns the copy's size in bytes.
    pub async fn backup(url: &str, dest: &Path) -> Result<u64> {
        let source = path_of(url)?;
        let dest = dest.to_owned();
        tokio::task::spawn_blocking(move || -> Result<u64> {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options.open(&dest).map_err(|e| {
                StoreError::Database(format!("cannot create the backup {}: {e}", dest.display()))
            })?;
            // Read-write without create (a missing database is an error, not a new one), and
            // not `query_only`: SQLite counts VACUUM INTO as a write, though it reads one
            // snapshot of this database and writes only the new file.
            let conn = Connection::open_with_flags(
                &source,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&dest);
            })?;
            conn.busy_timeout(Duration::from_secs(10))?;
            let target = dest.to_string_lossy().into_owned();
            let copied = conn.execute("VACUUM INTO ?1", [&target]);
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&dest);
                return Err(e.into());
            }
            std::fs::metadata(&dest)
                .map(|m| m.len())
                .map_err(|e| StoreError::Database(format!("the backup {}: {e}", dest.display())))
        })
        .await
        .map_err(|e| StoreError::Database(format!("the backup task failed: {e}")))?
    }
}

/// `sqlite://PATH`, `sqlite:PATH` (relative or absolute).
fn path_of(url: &str) -> Result<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::UnsupportedUrl(url.to_owned()))?;
    let rest = rest.split('?').next().unwrap_or_default();
    if rest.is_empty() {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    }
    Ok(PathBuf::from(rest))
}

/// The database holds emails, IP addresses and PKCE verifiers: owner-only whatever the umask.
/// Created 0600 before SQLite opens it (SQLite gives its `-wal` and `-shm` files the mode of
/// the database file), and an existing file is made 0600.
fn create_private(path: &Path) -> Result<()> {
    if path == Path::new(":memory:") {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|e| {
        StoreError::Migrate(format!(
            "cannot create the database {}: {e}",
            path.display()
        ))
    })?;
    make_private(path)
}

/// chmod 0600 (not subject to the umask); a missing file is fine.
fn make_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::Migrate(format!(
                    "cannot make {} readable by its owner only (chmod 600): {e}",
                    path.display()
                )));
            }
            _ => {}
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn connect(path: &Path, write: bool) -> Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if write {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Without the query planner stability guarantee, a statement whose plan could depend on a
    // bound value (here: any query on `sessions`, which has a partial index) is marked expired
    // at every new binding and parsed again at its next step: the mint's session read cost more
    // than the rest of the mint. Our queries are point lookups whose plan never depends on the
    // value, so each prepared statement is planned once.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    if !write {
        conn.pragma_update(None, "query_only", "ON")?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let applied: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let applied = usize::try_from(applied)
        .map_err(|_| StoreError::Migrate(format!("invalid schema version {applied}")))?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Migrate(format!(
            "the database is at schema version {applied}, newer than this binary knows ({}); upgrade the broker",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Migrate(format!("migration {}: {e}", i + 1)))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}

/// Read connections, opened on demand and kept for reuse.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn with<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R> {
        let pooled = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
        let conn = match pooled {
            Some(c) => c,
            None => connect(&self.path, false)?,
        };
        let result = f(&conn);
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE_READERS
        {
            idle.push(conn);
        }
        Ok(result?)
    }
}

// ---- the writer ---------------------------------------------------------------------------

/// Copies the WAL's committed frames into the database file every [`CHECKPOINT_EVERY`], until
/// the store is dropped. Left to SQLite, the checkpoint runs on the committing thread every
/// 1,000 pages: one batch in ≈ 100 then waits for ≈ 1,000 page writes and an fsync of the
/// database, and every mint queued behind it waits too. A PASSIVE checkpoint runs beside the
/// writer (it never blocks it, nor waits for it or for readers); once it has copied every
/// frame, the writer's next commit starts the WAL over from its beginning.
fn run_checkpointer(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "store.checkpoint_failed");
        }
    }
}

fn run_writer(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn Work>>,
    audit: Arc<crate::AuditCounter>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut memory = match memory::Memory::new(&mut conn) {
        Ok(memory) => memory,
        Err(e) => {
            // Every work is answered with the failure, as a failed commit would be.
            tracing::error!(error = %e, "store.writer_failed");
            while let Some(work) = rx.blocking_recv() {
                work.finish(Err(StoreError::Commit(e.to_string())));
            }
            return;
        }
    };
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(work) => batch.push(work),
                Err(_) => break,
            }
        }
        let mut appended = 0;
        let committed = run_batch(&mut conn, &mut batch, &mut appended, &mut memory).map_err(|e| {
            tracing::error!(error = %e, works = batch.len(), "store.commit_failed");
            memory.batch_failed();
            e.to_string()
        });
        audit.record(appended, committed.is_ok());
        // Only now, after the commit (or its failure), does any caller hear back.
        for work in batch.drain(..) {
            work.finish(committed.clone().map_err(StoreError::Commit));
        }
    }
}

/// Runs every work of the batch in its own savepoint of one IMMEDIATE transaction and commits.
/// `appended` is set to the events the batch appended, before its commit is tried.
fn run_batch(
    conn: &mut Connection,
    batch: &mut [Box<dyn Work>],
    appended: &mut u64,
    memory: &mut memory::Memory,
) -> Result<()> {
    // IMMEDIATE takes the write lock up front: another process (the `keys` command) may write
    // too, and the chain head and the rate-limit counts must be read under that lock.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut head = audit::head(&tx)?;
    memory.refresh(&tx)?;
    let start = head.seq;
    let mut counts = limits::BatchCounts::default();
    for work in batch.iter_mut() {
        // Prepared once and reused: rusqlite's `Transaction::savepoint` parses its SQL anew
        // each time, which cost a mint more than all its own statements together.
        tx.prepare_cached("SAVEPOINT work")?.execute([])?;
        // A work rolled back must not advance the head nor count a use: it runs on copies.
        let mut work_head = head.clone();
        let (ran, work_counts) = {
            let work_counts = limits::WorkCounts::new(&memory.limits, &counts);
            let mut stx = tx::SqliteTx::new(
                &tx,
                &mut work_head,
                work_counts,
                &mut memory.standings,
                &mut memory.blocks,
            );
            (work.run(&mut stx), stx.into_limits().into_changes())
        };
        if ran.is_ok() {
            head = work_head;
            counts.absorb(work_counts);
        } else {
            tx.prepare_cached("ROLLBACK TO work")?.execute([])?;
            memory.work_rolled_back();
        }
        tx.prepare_cached("RELEASE work")?.execute([])?;
    }
    *appended = u64::try_from(head.seq - start).unwrap_or(0);
    let written = memory.limits.write(&tx, &counts)?;
    tx.commit()?;
    memory.limits.committed(counts, written);
    Ok(())
}

/// Deletes expired requests and sessions; audit events stay.
fn purge_expired(
    conn: &Connection,
    requests_before: i64,
    sessions_before: i64,
) -> rusqlite::Result<u64> {
    let mut purged = 0;
    for (sql, before) in [
        (
            "DELETE FROM wallet_challenges WHERE expires_at < ?1",
            requests_before,
        ),
        (
            "DELETE FROM pairing_requests WHERE expires_at < ?1",
            requests_before,
        ),
        (
            "DELETE FROM login_requests WHERE expires_at < ?1",
            requests_before,
        ),
        (
            "DELETE FROM sessions WHERE expires_at < ?1",
            sessions_before,
        ),
    ] {
        purged += conn.prepare_cached(sql)?.execute([before])? as u64;
    }
    Ok(purged)
}

// ---- errors -------------------------------------------------------------------------------

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        let rusqlite::Error::SqliteFailure(failure, _) = &e else {
            return StoreError::Database(e.to_string());
        };
        match failure.code {
            ErrorCode::ConstraintViolation
                if matches!(
                    failure.extended_code,
                    rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                        | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                ) =>
            {
                StoreError::Conflict(format!("already exists: {e}"))
            }
            ErrorCode::DiskFull => StoreError::Database(format!(
                "the disk holding the database is full; nothing was written ({e})"
            )),
            ErrorCode::SystemIoFailure => StoreError::Database(format!(
                "the database file could not be read or written (I/O error): {e}"
            )),
            _ => StoreError::Database(e.to_string()),
        }
    }
}

// ---- typed columns ------------------------------------------------------------------------

/// A stored value that is not what its column must hold: an error for this read, not a panic.
fn bad_value(
    column: usize,
    ty: Type,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, ty, e.into())
}

fn omni(r: &Row<'_>, column: usize) -> rusqlite::Result<OmniAccount> {
    text(r, column)?
        .parse()
        .map_err(|e| bad_value(column, Type::Text, e))
}

fn omni_opt(r: &Row<'_>, column: usize) -> rusqlite::Result<Option<OmniAccount>> {
    r.get::<_, Option<String>>(column)?
        .map(|s| s.parse().map_err(|e| bad_value(column, Type::Text, e)))
        .transpose()
}

/// A count or seq: stored as SQLite's i64, never negative.
fn unsigned(r: &Row<'_>, column: usize) -> rusqlite::Result<u64> {
    u64::try_from(r.get::<_, i64>(column)?).map_err(|e| bad_value(column, Type::Integer, e))
}

fn kind_str(kind: ActorKind) -> &'static str {
    match kind {
        ActorKind::Master => "master",
        ActorKind::Agent => "agent",
    }
}

/// The text of a column, with the column named if it is not text.
fn text<'r>(r: &'r Row<'_>, column: usize) -> rusqlite::Result<&'r str> {
    r.get_ref(column)?
        .as_str()
        .map_err(|e| bad_value(column, Type::Text, e))
}

fn actor_kind(r: &Row<'_>, column: usize) -> rusqlite::Result<ActorKind> {
    match text(r, column)? {
        "master" => Ok(ActorKind::Master),
        "agent" => Ok(ActorKind::Agent),
        other => Err(bad_value(
            column,
            Type::Text,
            format!("unknown actor kind {other:?}"),
        )),
    }
}

fn status_str(status: AgentStatus) -> &'static str {
    match status {
        AgentStatus::Active => "active",
        AgentStatus::Suspended => "suspended",
        AgentStatus::Removed => "removed",
    }
}

fn agent_status(r: &Row<'_>, column: usize) -> rusqlite::Result<AgentStatus> {
    match text(r, column)? {
        "active" => Ok(AgentStatus::Active),
        "suspended" => Ok(AgentStatus::Suspended),
        "removed" => Ok(AgentStatus::Removed),
        other => Err(bad_value(
            column,
            Type::Text,
            format!("unknown agent status {other:?}"),
        )),
    }
}

/// SQLite integers are i64; a cursor past i64::MAX simply finds nothing.
fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

// ---- the trait ----------------------------------------------------------------------------

#[async_trait]
impl Store for SqliteStore {
    fn audit_counter(&self) -> &crate::AuditCounter {
        &self.audit
    }

    async fn ping(&self) -> Result<()> {
        self.readers
            .with(|c| c.prepare_cached("SELECT 1")?.query_row([], |_| Ok(())))
    }

    async fn run(&self, work: Box<dyn Work>) -> Result<()> {
        // A work refused here is dropped, and its dropped reply answers `WriterGone`.
        self.writer
            .send(work)
            .await
            .map_err(|_| StoreError::WriterGone)
    }

    async fn session(&self, token_hash: &str) -> Result<Option<Session>> {
        self.readers.with(|c| sessions::get(c, token_hash))
    }

    async fn sessions_of(&self, omni: &OmniAccount, now: i64) -> Result<Vec<Session>> {
        let omni = omni.clone();
        self.scan(move |c| sessions::live_of(c, &omni, now)).await
    }

    async fn agent(&self, omni: &OmniAccount) -> Result<Option<Agent>> {
        self.readers.with(|c| agents::get(c, omni))
    }

    async fn agents_of(&self, master: &OmniAccount) -> Result<Vec<Agent>> {
        let master = master.clone();
        self.scan(move |c| agents::of_master(c, &master)).await
    }

    async fn pairing(&self, id: &str) -> Result<Option<PairingRequest>> {
        self.readers.with(|c| agents::pairing(c, id))
    }

    async fn login(&self, key: LoginKey<'_>) -> Result<Option<LoginRequest>> {
        self.readers.with(|c| logins::get(c, key))
    }

    async fn identities_of(&self, master: &OmniAccount) -> Result<Vec<Identity>> {
        let master = master.clone();
        self.scan(move |c| logins::identities_of(c, &master)).await
    }

    async fn grant(&self, id: &str) -> Result<Option<Grant>> {
        self.readers.with(|c| grants::get(c, id))
    }

    async fn grants_of(
        &self,
        master: Option<&OmniAccount>,
        agent: Option<&OmniAccount>,
    ) -> Result<Vec<Grant>> {
        let (master, agent) = (master.cloned(), agent.cloned());
        self.scan(move |c| grants::of(c, master.as_ref(), agent.as_ref()))
            .await
    }

    async fn access_request(&self, id: &str) -> Result<Option<AccessRequest>> {
        self.readers.with(|c| access::get(c, id))
    }

    async fn access_requests_of(
        &self,
        master: Option<&OmniAccount>,
        agent: Option<&OmniAccount>,
    ) -> Result<Vec<AccessRequest>> {
        let (master, agent) = (master.cloned(), agent.cloned());
        self.scan(move |c| access::of(c, master.as_ref(), agent.as_ref()))
            .await
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        self.scan(keys::all).await
    }

    async fn audit_events(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>> {
        self.scan(move |c| audit::events(c, after, limit)).await
    }

    async fn audit_for_master(&self, master: &str, query: AuditQuery) -> Result<AuditListing> {
        let master = master.to_owned();
        self.scan(move |c| audit::for_master(c, &master, &query, audit::MAX_BLOCKS_PER_PAGE))
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rusqlite::ffi;

    fn failure(code: std::os::raw::c_int) -> StoreError {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None).into()
    }

    #[test]
    fn only_uniqueness_violations_are_conflicts() {
        assert!(matches!(
            failure(ffi::SQLITE_CONSTRAINT_UNIQUE),
            StoreError::Conflict(_)
        ));
        assert!(matches!(
            failure(ffi::SQLITE_CONSTRAINT_PRIMARYKEY),
            StoreError::Conflict(_)
        ));
        // A missing referenced row or a failed CHECK is a bug in the caller, not a duplicate.
        assert!(matches!(
            failure(ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
            StoreError::Database(_)
        ));
        assert!(matches!(
            failure(ffi::SQLITE_CONSTRAINT_CHECK),
            StoreError::Database(_)
        ));
        match failure(ffi::SQLITE_FULL) {
            StoreError::Database(m) => assert!(m.contains("full"), "{m}"),
            other => panic!("{other:?}"),
        }
        match failure(ffi::SQLITE_IOERR_FSYNC) {
            StoreError::Database(m) => assert!(m.contains("I/O"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// Committed pages reach the database file while the store runs, well before the writer's
    /// own checkpoint threshold: the checkpointer thread copies them from the WAL.
    #[test]
    fn the_checkpointer_copies_commits_into_the_database_file() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let url = format!("sqlite://{}", path.display());
        rt.block_on(async {
            let opened = SqliteStore::open(&url).await.unwrap();
            let store: &dyn Store = &opened;
            let empty = std::fs::metadata(&path).unwrap().len();
            // ≈ 2 MB of events: ≈ 500 pages, far below WRITER_CHECKPOINT_PAGES.
            let details = serde_json::json!({ "pad": "x".repeat(2_000) });
            store
                .transact(move |tx| {
                    for n in 0..1_000 {
                        tx.append(&crate::NewAuditEvent {
                            time: n,
                            kind: agentkeys_types::audit::AuditKind::Mint,
                            actor: None,
                            master: None,
                            outcome: agentkeys_types::audit::Outcome::Ok,
                            details: details.clone(),
                        })?;
                    }
                    Ok(())
                })
                .await
                .unwrap();
            // Bounded wait (the checkpointer runs every 50 ms); no timing is asserted.
            let mut size = empty;
            for _ in 0..200 {
                size = std::fs::metadata(&path).unwrap().len();
                if size > empty + 1_000_000 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(
                size > empty + 1_000_000,
                "the database file stayed at {size} bytes (from {empty}) while the store ran"
            );
            drop(opened);
        });
    }

    /// A migrated database holding `events` mint events, seq 1 on, each of master "sparse"
    /// where `sparse(seq)` says so, else of master "dense".
    fn log_of(events: i64, sparse: impl Fn(i64) -> bool) -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&dir.path().join("t.db"), true).unwrap();
        migrate(&mut conn).unwrap();
        let tx = conn.transaction().unwrap();
        let mut head = audit::head(&tx).unwrap();
        let mut known = audit::KnownBlocks::default();
        for seq in 1..=events {
            let master = if sparse(seq) { "sparse" } else { "dense" };
            let event = crate::NewAuditEvent {
                time: seq,
                kind: agentkeys_types::audit::AuditKind::Mint,
                actor: None,
                master: Some(master.to_owned()),
                outcome: agentkeys_types::audit::Outcome::Ok,
                details: serde_json::json!({}),
            };
            audit::append(&tx, &mut head, &mut known, &event).unwrap();
        }
        tx.commit().unwrap();
        (dir, conn)
    }

    /// A listing's work grows with the blocks it lists, not with the log before them: for a
    /// master with one event at the end of every block of a 40-block log, listing 30 events
    /// reads about three times what listing 10 does (starting each block's scan at the cursor
    /// instead would read 465 blocks against 55).
    #[test]
    fn a_listing_reads_only_the_blocks_it_lists() {
        let (_dir, conn) = log_of(40 * 1024, |seq| seq % 1024 == 1023);
        let steps = |limit: u32| {
            let query = AuditQuery {
                limit,
                ..AuditQuery::default()
            };
            let listed = audit::for_master(&conn, "sparse", &query, 40)
                .unwrap()
                .events;
            assert_eq!(listed.len(), limit as usize);
            let statement = conn.prepare_cached(&audit::for_master_sql()).unwrap();
            let steps = statement.get_status(rusqlite::StatementStatus::VmStep);
            statement.reset_status(rusqlite::StatementStatus::VmStep);
            steps
        };
        let (ten, thirty) = (steps(10), steps(30));
        assert!(
            thirty < 4 * ten,
            "listing 30 took {thirty} steps, listing 10 took {ten}"
        );
    }

    /// A page scans at most so many of the master's blocks: a filter that matches nothing, on a
    /// master with a few events spread over a long log, ends the page at the last block scanned
    /// (`searched_to`) instead of reading on to the log's end; following it lists everything.
    #[test]
    fn a_page_stops_after_its_blocks_and_says_where() {
        // "sparse" has one event in each of blocks 0, 3, 7 and 11 of a 12-block log.
        let sparse = [5, 3 * 1024 + 2, 7 * 1024, 11 * 1024 + 1_000];
        let (_dir, conn) = log_of(12 * 1024, |seq| sparse.contains(&seq));
        let page = |after: u64, kind: Option<&str>| {
            let query = AuditQuery {
                after_seq: after,
                limit: 10,
                kind: kind.map(str::to_owned),
                ..AuditQuery::default()
            };
            let listing = audit::for_master(&conn, "sparse", &query, 2).unwrap();
            let seqs: Vec<u64> = listing.events.iter().map(|e| e.seq).collect();
            (seqs, listing.searched_to)
        };
        // Nothing matches: two blocks per page, then the end.
        assert_eq!(
            page(0, Some("sign_in.wallet")),
            (vec![], Some(4 * 1024 - 1))
        );
        assert_eq!(page(4 * 1024 - 1, Some("sign_in.wallet")), (vec![], None));
        // Everything matches: the same pages, with their events.
        assert_eq!(page(0, None), (vec![5, 3 * 1024 + 2], Some(4 * 1024 - 1)));
        assert_eq!(
            page(4 * 1024 - 1, None),
            (vec![7 * 1024, 11 * 1024 + 1_000], None)
        );
        // A cursor on a block's last seq starts the page at the next block.
        assert_eq!(
            page(1_023, None),
            (vec![3 * 1024 + 2, 7 * 1024], Some(8 * 1024 - 1))
        );
    }

    /// A database written before the per-block index (migration 0010) gets one entry per master
    /// and block of the events it already holds, so its masters' listings find them.
    #[test]
    fn the_per_block_index_is_built_from_the_events_already_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&dir.path().join("t.db"), true).unwrap();
        let before = MIGRATIONS
            .iter()
            .position(|sql| sql.contains("CREATE TABLE audit_master_blocks"))
            .unwrap();
        for sql in &MIGRATIONS[..before] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", before as i64)
            .unwrap();
        for (seq, master) in [
            (1, Some("m1")),
            (2, None),
            (1_023, Some("m2")),
            (1_024, Some("m1")),
            (1_025, Some("m1")),
            (5_000, Some("m2")),
        ] {
            conn.execute(
                "INSERT INTO audit_events (seq, time, kind, actor, master, outcome, details,
                     prev_hash, hash) VALUES (?1, 0, 'mint', 'a', ?2, 'ok', '{}', '', '')",
                rusqlite::params![seq, master],
            )
            .unwrap();
        }
        migrate(&mut conn).unwrap();
        let blocks: Vec<(String, i64)> = conn
            .prepare("SELECT master, block FROM audit_master_blocks ORDER BY master, block")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let expected = [("m1", 0), ("m1", 1), ("m2", 0), ("m2", 4)];
        assert_eq!(blocks, expected.map(|(m, b)| (m.to_owned(), b)));
        let query = AuditQuery {
            limit: 10,
            ..AuditQuery::default()
        };
        let seqs: Vec<u64> = audit::for_master(&conn, "m1", &query, 10)
            .unwrap()
            .events
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 1_024, 1_025]);
    }

    /// Each cached statement is planned once: reading sessions by different tokens (the mint's
    /// hot read, on a table with a partial index) parses nothing again.
    #[test]
    fn bound_values_do_not_re_prepare_statements() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&dir.path().join("t.db"), true).unwrap();
        migrate(&mut conn).unwrap();
        for i in 0..5 {
            assert!(
                sessions::get(&conn, &format!("token-{i}"))
                    .unwrap()
                    .is_none()
            );
        }
        let cached = conn.prepare_cached(&sessions::get_sql()).unwrap();
        assert_eq!(
            cached.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "the session read was parsed again after a new binding"
        );
    }

    #[test]
    fn sqlite_urls_name_a_path() {
        assert_eq!(
            path_of("sqlite:///var/lib/a.db").unwrap(),
            PathBuf::from("/var/lib/a.db")
        );
        assert_eq!(
            path_of("sqlite:rel.db?mode=rwc").unwrap(),
            PathBuf::from("rel.db")
        );
        for bad in ["sqlite://", "sqlite:", "postgres://x/y"] {
            assert!(
                matches!(path_of(bad), Err(StoreError::UnsupportedUrl(_))),
                "{bad}"
            );
        }
    }
}
