//! SQLite backend: one file in WAL mode, `synchronous = FULL`, driven synchronously through
//! rusqlite on threads of its own.
//!
//! Every write goes through one writer thread that drains whatever is queued and commits it as
//! one transaction (group commit): requests that arrive while a commit is being fsynced share
//! the next fsync instead of each paying for their own. Each queued operation runs inside its
//! own savepoint, so one failing operation fails alone. A caller is answered only after the
//! commit that holds its write is durable.
//!
//! Why not sqlx here: its SQLite driver runs each connection on a worker thread and every
//! statement is a message there and back (≈ 70 µs of wall time on these machines); a mint's
//! seven statements on the single writer then capped the broker near 3,000 mints/s. The same
//! SQL run synchronously on one thread costs ≈ 27 µs per operation (docs/performance.md).
//!
//! Reads are point lookups on small indexed tables: they run on the calling task with a
//! connection from a small pool (WAL readers never wait for the writer). Scans (audit pages,
//! key records) go to the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use crate::audit::{GENESIS_HASH, canonical, chain_hash};
use crate::{
    Agent, AgentSessionOutcome, ApproveOutcome, AuditEvent, Challenge, ClaimOutcome, GateOutcome,
    Grant, GrantUse, Identity, LiveCheck, LoginClaim, LoginRequest, NewAuditEvent, NotLive,
    PairingRequest, RateWindow, Result, Session, SigningKeyRecord, Store, StoreError,
};
use agentkeys_types::identity::IDENTITY_EMAIL;

/// Most operations one commit carries; bounds the latency a large burst adds to its first caller.
const MAX_BATCH: usize = 512;
const QUEUE_DEPTH: usize = 8192;
/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 8;

/// Schema migrations, applied in order; `PRAGMA user_version` records the last one applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_agents.sql"),
    include_str!("../migrations/sqlite/0003_agent_proofs.sql"),
    include_str!("../migrations/sqlite/0004_logins.sql"),
    include_str!("../migrations/sqlite/0005_grants.sql"),
    include_str!("../migrations/sqlite/0006_bound_logins.sql"),
];

pub struct SqliteStore {
    readers: Arc<Readers>,
    writer: mpsc::Sender<Job>,
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
        std::thread::Builder::new()
            .name("agentkeys-store-writer".into())
            .spawn(move || run_writer(writer_conn, rx))
            .map_err(|e| StoreError::Migrate(format!("starting the writer thread: {e}")))?;
        Ok(Self {
            readers: Arc::new(Readers {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            writer: tx,
        })
    }

    async fn write(&self, op: Op) -> Result<Output> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Job { op, reply })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// A multi-row read, off the async threads.
    async fn scan<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> Result<R> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|_| StoreError::WriterGone)?
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
    if !write {
        conn.pragma_update(None, "query_only", "ON")?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let applied: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if applied as usize > MIGRATIONS.len() {
        return Err(StoreError::Migrate(format!(
            "the database is at schema version {applied}, newer than this binary knows ({}); upgrade the broker",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
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

enum Op {
    Append(NewAuditEvent),
    InsertChallenge(Challenge),
    TakeChallenge(String),
    CreateSession(Session, NewAuditEvent),
    RevokeSession {
        token_hash: String,
        now: i64,
        event: NewAuditEvent,
    },
    RateLimitedAppend {
        live: Option<LiveCheck>,
        buckets: Vec<(String, RateWindow)>,
        grant: Option<GrantUse>,
        now: i64,
        on_allow: NewAuditEvent,
        on_deny: NewAuditEvent,
    },
    InsertKey(SigningKeyRecord, NewAuditEvent),
    UpdateKey {
        kid: String,
        retired_at: Option<i64>,
        withdrawn_at: Option<i64>,
        event: NewAuditEvent,
    },
    Purge {
        requests_before: i64,
        sessions_before: i64,
    },
    CreatePairing(PairingRequest, NewAuditEvent),
    ApprovePairing {
        code: String,
        master: String,
        label: String,
        agent_omni: String,
        now: i64,
        event: NewAuditEvent,
    },
    ClaimPairing {
        id: String,
        proof_ms: i64,
        now: i64,
        session: Session,
        event: NewAuditEvent,
    },
    SetAgentStatus {
        master: String,
        omni: String,
        status: String,
        now: i64,
        event: NewAuditEvent,
    },
    CreateLogin(LoginRequest, Option<NewAuditEvent>),
    CreateGrant(Grant, NewAuditEvent),
    RevokeGrant {
        master: String,
        id: String,
        now: i64,
        event: NewAuditEvent,
    },
    VerifyLogin {
        id_hash: String,
        identity_type: String,
        identity_value: String,
        code_hash: String,
        now: i64,
        event: NewAuditEvent,
    },
    FailLogin {
        id_hash: String,
        now: i64,
        event: NewAuditEvent,
    },
    RedeemLoginCode {
        id_hash: String,
        code_hash: String,
        max_attempts: u32,
        now: i64,
        session: Session,
        event: NewAuditEvent,
    },
    RedeemLoginLink {
        link_token_hash: String,
        now: i64,
        session: Session,
        event: NewAuditEvent,
    },
    Unlink {
        master: String,
        identity_type: String,
        identity_value: String,
        now: i64,
        event: NewAuditEvent,
    },
    AgentSession {
        omni: String,
        proof_ms: i64,
        session: Session,
        event: NewAuditEvent,
    },
    RevokeSessionsOf {
        omni: String,
        keep: Option<String>,
        now: i64,
        event: NewAuditEvent,
    },
}

enum Output {
    Unit,
    Seq(u64),
    Count(u64),
    Flag(bool),
    Challenge(Option<Challenge>),
    Gate(GateOutcome),
    Approve(ApproveOutcome),
    Claim(ClaimOutcome),
    Agent(Option<Agent>),
    Renew(AgentSessionOutcome),
    Login(LoginClaim),
    Unlinked(Option<u64>),
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Output>>,
}

/// The last event of the chain, as seen inside the current transaction.
#[derive(Clone)]
struct Head {
    seq: u64,
    hash: String,
}

fn run_writer(mut conn: Connection, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, std::mem::take(&mut batch));
    }
}

fn commit_batch(conn: &mut Connection, jobs: Vec<Job>) {
    let mut answered = Vec::with_capacity(jobs.len());
    let mut pending = jobs.into_iter();
    let outcome: Result<()> = (|| {
        // IMMEDIATE takes the write lock up front: another process (the `keys` command) may
        // write too, and the chain head must be read under that lock.
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut head = read_head(&tx)?;
        for job in pending.by_ref() {
            let mut savepoint = tx.savepoint()?;
            let mut op_head = head.clone();
            let result = apply(&savepoint, &mut op_head, job.op);
            if result.is_ok() {
                savepoint.commit()?;
                head = op_head;
            } else {
                savepoint.rollback()?;
                savepoint.finish()?;
            }
            answered.push((job.reply, result));
        }
        tx.commit()?;
        Ok(())
    })();
    match outcome {
        Ok(()) => {
            for (reply, result) in answered {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "store.commit_failed");
            let message = e.to_string();
            let replies = answered
                .into_iter()
                .map(|(reply, _)| reply)
                .chain(pending.map(|job| job.reply));
            for reply in replies {
                let _ = reply.send(Err(StoreError::Commit(message.clone())));
            }
        }
    }
}

fn read_head(conn: &Connection) -> rusqlite::Result<Head> {
    let head = conn
        .prepare_cached("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| {
            Ok(Head {
                seq: r.get::<_, i64>(0)? as u64,
                hash: r.get(1)?,
            })
        })
        .optional()?;
    Ok(head.unwrap_or(Head {
        seq: 0,
        hash: GENESIS_HASH.to_owned(),
    }))
}

fn append(conn: &Connection, head: &mut Head, event: &NewAuditEvent) -> rusqlite::Result<u64> {
    let seq = head.seq + 1;
    let hash = chain_hash(&head.hash, &canonical(seq, event));
    conn.prepare_cached(
        "INSERT INTO audit_events (seq, time, kind, actor, master, outcome, details, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        seq as i64,
        event.time,
        event.kind,
        event.actor,
        event.master,
        event.outcome,
        event.details.to_string(),
        head.hash,
        hash
    ])?;
    *head = Head { seq, hash };
    Ok(seq)
}

fn apply(conn: &Connection, head: &mut Head, op: Op) -> Result<Output> {
    Ok(match op {
        Op::Append(event) => Output::Seq(append(conn, head, &event)?),
        Op::InsertChallenge(c) => {
            conn.prepare_cached(
                "INSERT INTO wallet_challenges (id, address, message, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![c.id, c.address, c.message, c.created_at, c.expires_at])?;
            Output::Unit
        }
        Op::TakeChallenge(id) => {
            let taken = conn
                .prepare_cached(
                    "DELETE FROM wallet_challenges WHERE id = ?1 RETURNING id, address, message, created_at, expires_at",
                )?
                .query_row([id], |r| {
                    Ok(Challenge {
                        id: r.get(0)?,
                        address: r.get(1)?,
                        message: r.get(2)?,
                        created_at: r.get(3)?,
                        expires_at: r.get(4)?,
                    })
                })
                .optional()?;
            Output::Challenge(taken)
        }
        Op::CreateSession(s, event) => {
            insert_session(conn, &s)?;
            Output::Seq(append(conn, head, &event)?)
        }
        Op::RevokeSession {
            token_hash,
            now,
            event,
        } => {
            let revoked = conn
                .prepare_cached(
                    "UPDATE sessions SET revoked_at = ?1 WHERE token_hash = ?2 AND revoked_at IS NULL AND expires_at > ?1",
                )?
                .execute(params![now, token_hash])?
                > 0;
            if revoked {
                append(conn, head, &event)?;
            }
            Output::Flag(revoked)
        }
        Op::RateLimitedAppend {
            live,
            buckets,
            grant,
            now,
            on_allow,
            on_deny,
        } => {
            // Gates 1 and 2 again, under the write lock: a logout, suspension or removal that
            // committed after the caller read the session wins.
            if let Some(reason) = live
                .as_ref()
                .map(|l| not_live(conn, l, now))
                .transpose()?
                .flatten()
            {
                let mut denied = on_deny;
                denied.details["reason"] = serde_json::json!(reason.reason());
                let seq = append(conn, head, &denied)?;
                return Ok(Output::Gate(GateOutcome::NotLive { reason, seq }));
            }
            for (actor, w) in &buckets {
                let start = now - now.rem_euclid(w.seconds);
                let used: i64 = conn
                    .prepare_cached(
                        "SELECT count FROM rate_limits WHERE actor = ?1 AND window_secs = ?2 AND window_start = ?3",
                    )?
                    .query_row(params![actor, w.seconds, start], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0);
                if used as u64 >= w.limit {
                    let seq = append(conn, head, &on_deny)?;
                    let retry_after = (start + w.seconds - now).max(1);
                    return Ok(Output::Gate(GateOutcome::Limited {
                        retry_after,
                        window_seconds: w.seconds,
                        seq,
                    }));
                }
            }
            if let Some(g) = &grant {
                let used = conn
                    .prepare_cached(
                        "UPDATE grants SET uses = uses + 1
                         WHERE id = ?1 AND agent = ?2 AND revoked_at IS NULL AND expires_at > ?3
                           AND (max_uses IS NULL OR uses < max_uses)",
                    )?
                    .execute(params![g.grant_id, g.agent, now])?;
                if used == 0 {
                    let mut denied = on_deny;
                    denied.details["reason"] = serde_json::json!("grant_unavailable");
                    let seq = append(conn, head, &denied)?;
                    return Ok(Output::Gate(GateOutcome::GrantUnavailable { seq }));
                }
            }
            let mut bump = conn.prepare_cached(
                "INSERT INTO rate_limits (actor, window_secs, window_start, count) VALUES (?1, ?2, ?3, 1)
                 ON CONFLICT (actor, window_secs) DO UPDATE SET
                   count = CASE WHEN window_start = excluded.window_start THEN count + 1 ELSE 1 END,
                   window_start = excluded.window_start",
            )?;
            for (actor, w) in &buckets {
                bump.execute(params![actor, w.seconds, now - now.rem_euclid(w.seconds)])?;
            }
            Output::Gate(GateOutcome::Allowed {
                seq: append(conn, head, &on_allow)?,
            })
        }
        Op::InsertKey(k, event) => {
            conn.prepare_cached(
                "INSERT INTO signing_keys (kid, public_jwk, certificate, created_at, activates_at, retired_at, withdrawn_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![k.kid, k.public_jwk, k.certificate, k.created_at, k.activates_at, k.retired_at, k.withdrawn_at])?;
            append(conn, head, &event)?;
            Output::Unit
        }
        Op::UpdateKey {
            kid,
            retired_at,
            withdrawn_at,
            event,
        } => {
            let n = conn
                .prepare_cached(
                    "UPDATE signing_keys SET retired_at = ?1, withdrawn_at = ?2 WHERE kid = ?3",
                )?
                .execute(params![retired_at, withdrawn_at, kid])?;
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "no signing key with kid {kid}"
                )));
            }
            append(conn, head, &event)?;
            Output::Unit
        }
        Op::Purge {
            requests_before,
            sessions_before,
        } => {
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
                purged += conn.prepare_cached(sql)?.execute([before])?;
            }
            Output::Count(purged as u64)
        }
        Op::CreatePairing(p, event) => {
            conn.prepare_cached(
                "INSERT INTO pairing_requests (id, code, device_address, created_at, expires_at, last_proof_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![p.id, p.code, p.device_address, p.created_at, p.expires_at, p.last_proof_ms])?;
            append(conn, head, &event)?;
            Output::Unit
        }
        Op::ApprovePairing {
            code,
            master,
            label,
            agent_omni,
            now,
            event,
        } => {
            let pending = conn
                .prepare_cached(
                    "SELECT id, device_address FROM pairing_requests
                     WHERE code = ?1 AND agent IS NULL AND expires_at > ?2",
                )?
                .query_row(params![code, now], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .optional()?;
            let Some((id, device_address)) = pending else {
                return Ok(Output::Approve(ApproveOutcome::UnknownCode));
            };
            let taken = conn
                .prepare_cached("SELECT 1 FROM agents WHERE master = ?1 AND label = ?2")?
                .exists(params![master, label])?;
            if taken {
                return Ok(Output::Approve(ApproveOutcome::LabelTaken));
            }
            let agent = Agent {
                omni: agent_omni,
                master,
                label,
                device_address,
                status: "active".into(),
                created_at: now,
                updated_at: now,
            };
            conn.prepare_cached(
                "INSERT INTO agents (omni, master, label, device_address, status, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                agent.omni,
                agent.master,
                agent.label,
                agent.device_address,
                agent.status,
                agent.created_at,
                agent.updated_at
            ])?;
            conn.prepare_cached("UPDATE pairing_requests SET agent = ?1 WHERE id = ?2")?
                .execute(params![agent.omni, id])?;
            append(conn, head, &event)?;
            Output::Approve(ApproveOutcome::Approved(agent))
        }
        Op::ClaimPairing {
            id,
            proof_ms,
            now,
            mut session,
            event,
        } => {
            let Some(p) = select_pairing(conn, &id)? else {
                return Ok(Output::Claim(ClaimOutcome::Gone));
            };
            // Expiry covers an approved but uncollected session too (SPEC §11.5).
            if now >= p.expires_at {
                return Ok(Output::Claim(ClaimOutcome::Gone));
            }
            if proof_ms <= p.last_proof_ms {
                return Ok(Output::Claim(ClaimOutcome::StaleProof));
            }
            conn.prepare_cached("UPDATE pairing_requests SET last_proof_ms = ?1 WHERE id = ?2")?
                .execute(params![proof_ms, id])?;
            let outcome = match (&p.agent, p.claimed_at) {
                (None, _) => ClaimOutcome::Pending,
                (Some(_), Some(_)) => ClaimOutcome::AlreadyClaimed,
                (Some(agent_omni), None) => match select_agent(conn, agent_omni)? {
                    Some(agent) if agent.status == "active" => {
                        session.omni = agent.omni.clone();
                        session.master = agent.master.clone();
                        session.kind = "agent".into();
                        session.wallet = None;
                        insert_session(conn, &session)?;
                        conn.prepare_cached(
                            "UPDATE pairing_requests SET claimed_at = ?1 WHERE id = ?2",
                        )?
                        .execute(params![now, id])?;
                        append(conn, head, &event)?;
                        ClaimOutcome::Claimed(agent)
                    }
                    _ => ClaimOutcome::Gone,
                },
            };
            Output::Claim(outcome)
        }
        Op::SetAgentStatus {
            master,
            omni,
            status,
            now,
            event,
        } => {
            let updated = conn
                .prepare_cached(
                    "UPDATE agents SET status = ?1, updated_at = ?2
                     WHERE omni = ?3 AND master = ?4 AND status != 'removed'",
                )?
                .execute(params![status, now, omni, master])?;
            if updated == 0 {
                return Ok(Output::Agent(None));
            }
            if status == "removed" {
                conn.prepare_cached(
                    "UPDATE sessions SET revoked_at = ?1 WHERE omni = ?2 AND revoked_at IS NULL",
                )?
                .execute(params![now, omni])?;
            }
            append(conn, head, &event)?;
            Output::Agent(select_agent(conn, &omni)?)
        }
        Op::CreateGrant(g, event) => {
            conn.prepare_cached(
                "INSERT INTO grants (id, master, agent, scope, created_at, expires_at, max_uses)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                g.id,
                g.master,
                g.agent,
                g.scope,
                g.created_at,
                g.expires_at,
                g.max_uses
            ])?;
            append(conn, head, &event)?;
            Output::Unit
        }
        Op::RevokeGrant {
            master,
            id,
            now,
            event,
        } => {
            let n = conn
                .prepare_cached("UPDATE grants SET revoked_at = ?1 WHERE id = ?2 AND master = ?3 AND revoked_at IS NULL")?
                .execute(params![now, id, master])?;
            if n > 0 {
                append(conn, head, &event)?;
            }
            Output::Flag(n > 0)
        }
        Op::CreateLogin(l, event) => {
            conn.prepare_cached(
                "INSERT INTO login_requests (id_hash, method, subject, link_token_hash, state, oidc_nonce,
                   oidc_verifier, link_to, link_to_wallet, created_at, expires_at, client_challenge,
                   code_hash, redirect_uri)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?
            .execute(params![
                l.id_hash,
                l.method,
                l.subject,
                l.link_token_hash,
                l.state,
                l.oidc_nonce,
                l.oidc_verifier,
                l.link_to,
                l.link_to_wallet,
                l.created_at,
                l.expires_at,
                l.client_challenge,
                l.code_hash,
                l.redirect_uri
            ])?;
            if let Some(event) = event {
                append(conn, head, &event)?;
            }
            Output::Unit
        }
        Op::VerifyLogin {
            id_hash,
            identity_type,
            identity_value,
            code_hash,
            now,
            event,
        } => {
            let n = conn
                .prepare_cached(
                    "UPDATE login_requests SET verified_type = ?1, verified_value = ?2, verified_at = ?3,
                       code_hash = ?4
                     WHERE id_hash = ?5 AND verified_at IS NULL AND expires_at > ?3",
                )?
                .execute(params![identity_type, identity_value, now, code_hash, id_hash])?;
            if n > 0 {
                append(conn, head, &event)?;
            }
            Output::Flag(n > 0)
        }
        Op::FailLogin {
            id_hash,
            now,
            event,
        } => {
            let n = conn
                .prepare_cached(
                    "UPDATE login_requests SET expires_at = ?1
                     WHERE id_hash = ?2 AND verified_at IS NULL AND claimed_at IS NULL
                       AND expires_at > ?1",
                )?
                .execute(params![now, id_hash])?;
            if n > 0 {
                append(conn, head, &event)?;
            }
            Output::Flag(n > 0)
        }
        Op::RedeemLoginCode {
            id_hash,
            code_hash,
            max_attempts,
            now,
            session,
            event,
        } => {
            let Some(l) = select_login(conn, "id_hash", &id_hash)? else {
                return Ok(Output::Login(LoginClaim::Gone));
            };
            if l.claimed_at.is_some() {
                return Ok(Output::Login(LoginClaim::AlreadyClaimed));
            }
            if now >= l.expires_at || l.code_attempts >= max_attempts {
                return Ok(Output::Login(LoginClaim::Gone));
            }
            if l.code_hash.as_deref() != Some(code_hash.as_str()) {
                conn.prepare_cached(
                    "UPDATE login_requests SET code_attempts = code_attempts + 1 WHERE id_hash = ?1",
                )?
                .execute([&id_hash])?;
                let attempts_left = max_attempts.saturating_sub(l.code_attempts + 1);
                return Ok(Output::Login(LoginClaim::WrongCode { attempts_left }));
            }
            Output::Login(claim_login(conn, head, l, now, session, event)?)
        }
        Op::RedeemLoginLink {
            link_token_hash,
            now,
            session,
            event,
        } => {
            let Some(l) = select_login(conn, "link_token_hash", &link_token_hash)? else {
                return Ok(Output::Login(LoginClaim::Gone));
            };
            if l.claimed_at.is_some() {
                return Ok(Output::Login(LoginClaim::AlreadyClaimed));
            }
            // A link request completes only with the code typed into the linking master's CLI:
            // a click in the mailbox owner's browser must never link it to someone else.
            if now >= l.expires_at || l.link_to.is_some() {
                return Ok(Output::Login(LoginClaim::Gone));
            }
            Output::Login(claim_login(conn, head, l, now, session, event)?)
        }
        Op::Unlink {
            master,
            identity_type,
            identity_value,
            now,
            mut event,
        } => {
            let n = conn
                .prepare_cached(
                    "DELETE FROM identities WHERE master = ?1 AND identity_type = ?2 AND identity_value = ?3",
                )?
                .execute(params![master, identity_type, identity_value])?;
            if n == 0 {
                return Ok(Output::Unlinked(None));
            }
            let revoked = conn
                .prepare_cached(
                    "UPDATE sessions SET revoked_at = ?1
                     WHERE omni = ?2 AND via_type = ?3 AND via_value = ?4
                       AND revoked_at IS NULL AND expires_at > ?1",
                )?
                .execute(params![now, master, identity_type, identity_value])?
                as u64;
            event.details["sessions_revoked"] = revoked.into();
            append(conn, head, &event)?;
            Output::Unlinked(Some(revoked))
        }
        Op::AgentSession {
            omni,
            proof_ms,
            mut session,
            event,
        } => {
            let last: Option<i64> = conn
                .prepare_cached("SELECT last_proof_ms FROM agents WHERE omni = ?1")?
                .query_row([&omni], |r| r.get(0))
                .optional()?;
            let Some(agent) = select_agent(conn, &omni)? else {
                return Ok(Output::Renew(AgentSessionOutcome::Unknown));
            };
            if agent.status != "active" {
                return Ok(Output::Renew(AgentSessionOutcome::NotActive(agent)));
            }
            if proof_ms <= last.unwrap_or(0) {
                return Ok(Output::Renew(AgentSessionOutcome::StaleProof));
            }
            conn.prepare_cached("UPDATE agents SET last_proof_ms = ?1 WHERE omni = ?2")?
                .execute(params![proof_ms, omni])?;
            session.omni = agent.omni.clone();
            session.master = agent.master.clone();
            session.kind = "agent".into();
            session.wallet = None;
            insert_session(conn, &session)?;
            append(conn, head, &event)?;
            Output::Renew(AgentSessionOutcome::Issued(agent))
        }
        Op::RevokeSessionsOf {
            omni,
            keep,
            now,
            event,
        } => {
            let n = conn
                .prepare_cached(
                    "UPDATE sessions SET revoked_at = ?1
                     WHERE omni = ?2 AND revoked_at IS NULL AND expires_at > ?1 AND token_hash IS NOT ?3",
                )?
                .execute(params![now, omni, keep])?;
            if n > 0 {
                append(conn, head, &event)?;
            }
            Output::Count(n as u64)
        }
    })
}

/// The end of a proved login request: links the identity to the requesting wallet master, or
/// signs in as the master the identity belongs to; marks the request collected.
fn claim_login(
    conn: &Connection,
    head: &mut Head,
    l: LoginRequest,
    now: i64,
    mut session: Session,
    mut event: NewAuditEvent,
) -> Result<LoginClaim> {
    // An email request is proved by its code or link; an OIDC one at the provider callback.
    let (id_type, id_value) = match (l.verified_type.clone(), l.verified_value.clone()) {
        (Some(t), Some(v)) => (t, v),
        _ if l.method == "email" => (IDENTITY_EMAIL.to_owned(), l.subject.clone()),
        _ => return Ok(LoginClaim::WrongCode { attempts_left: 0 }),
    };
    conn.prepare_cached(
        "UPDATE login_requests SET claimed_at = ?1, verified_type = ?2, verified_value = ?3,
           verified_at = COALESCE(verified_at, ?1)
         WHERE id_hash = ?4",
    )?
    .execute(params![now, id_type, id_value, l.id_hash])?;
    let linked = select_identity(conn, &id_type, &id_value)?;
    if let (Some(master), Some(wallet)) = (l.link_to, l.link_to_wallet) {
        let identity = match linked {
            Some(existing) if existing.master != master => return Ok(LoginClaim::LinkedElsewhere),
            Some(existing) => existing,
            None => {
                let identity = Identity {
                    identity_type: id_type,
                    identity_value: id_value,
                    master,
                    master_wallet: wallet,
                    linked_at: now,
                };
                conn.prepare_cached(
                    "INSERT INTO identities (identity_type, identity_value, master, master_wallet, linked_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    identity.identity_type,
                    identity.identity_value,
                    identity.master,
                    identity.master_wallet,
                    identity.linked_at
                ])?;
                identity
            }
        };
        event.actor = Some(identity.master.clone());
        event.master = Some(identity.master.clone());
        append(conn, head, &event)?;
        return Ok(LoginClaim::Linked(identity));
    }
    // A sign-in: as the wallet master the identity is linked to, else as a master of its own
    // (no wallet).
    match linked {
        Some(i) => {
            session.omni = i.master;
            session.wallet = Some(i.master_wallet);
        }
        None => {
            session.omni = agentkeys_types::OmniAccount::derive(&id_type, &id_value).to_string();
            session.wallet = None;
        }
    }
    session.master = session.omni.clone();
    session.kind = "master".into();
    insert_session_via(conn, &session, Some((&id_type, &id_value)))?;
    event.actor = Some(session.omni.clone());
    event.master = Some(session.omni.clone());
    append(conn, head, &event)?;
    Ok(LoginClaim::SignedIn(session))
}

/// Why `live` no longer holds at `now`, if it does not.
fn not_live(conn: &Connection, live: &LiveCheck, now: i64) -> rusqlite::Result<Option<NotLive>> {
    let session_live = conn
        .prepare_cached(
            "SELECT 1 FROM sessions WHERE token_hash = ?1 AND revoked_at IS NULL AND expires_at > ?2",
        )?
        .exists(params![live.session_token_hash, now])?;
    if !session_live {
        return Ok(Some(NotLive::Session));
    }
    let Some(agent) = &live.agent else {
        return Ok(None);
    };
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM agents WHERE omni = ?1")?
        .query_row([agent], |r| r.get(0))
        .optional()?;
    Ok(match status.as_deref() {
        Some("active") => None,
        Some("suspended") => Some(NotLive::AgentSuspended),
        _ => Some(NotLive::AgentRemoved),
    })
}

const SESSION_COLUMNS: &str =
    "token_hash, kind, omni, wallet, master, created_at, expires_at, revoked_at";

fn insert_session(conn: &Connection, s: &Session) -> rusqlite::Result<()> {
    insert_session_via(conn, s, None)
}

/// Stores a session; `via` is the email or OIDC identity it was obtained through.
fn insert_session_via(
    conn: &Connection,
    s: &Session,
    via: Option<(&str, &str)>,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO sessions (token_hash, kind, omni, wallet, master, created_at, expires_at,
           via_type, via_value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        s.token_hash,
        s.kind,
        s.omni,
        s.wallet,
        s.master,
        s.created_at,
        s.expires_at,
        via.map(|v| v.0),
        via.map(|v| v.1)
    ])?;
    Ok(())
}

fn select_pairing(conn: &Connection, id: &str) -> rusqlite::Result<Option<PairingRequest>> {
    conn.prepare_cached(
        "SELECT id, code, device_address, created_at, expires_at, last_proof_ms, agent, claimed_at
         FROM pairing_requests WHERE id = ?1",
    )?
    .query_row([id], |r| {
        Ok(PairingRequest {
            id: r.get(0)?,
            code: r.get(1)?,
            device_address: r.get(2)?,
            created_at: r.get(3)?,
            expires_at: r.get(4)?,
            last_proof_ms: r.get(5)?,
            agent: r.get(6)?,
            claimed_at: r.get(7)?,
        })
    })
    .optional()
}

const LOGIN_COLUMNS: &str = "id_hash, method, subject, link_token_hash, state, oidc_nonce, oidc_verifier, \
     link_to, link_to_wallet, created_at, expires_at, verified_type, verified_value, verified_at, claimed_at, \
     client_challenge, code_hash, code_attempts, redirect_uri";

/// The login request whose `column` (a fixed name from this file) equals `value`.
fn select_login(
    conn: &Connection,
    column: &'static str,
    value: &str,
) -> rusqlite::Result<Option<LoginRequest>> {
    conn.prepare_cached(&format!(
        "SELECT {LOGIN_COLUMNS} FROM login_requests WHERE {column} = ?1"
    ))?
    .query_row([value], |r| {
        Ok(LoginRequest {
            id_hash: r.get(0)?,
            method: r.get(1)?,
            subject: r.get(2)?,
            link_token_hash: r.get(3)?,
            state: r.get(4)?,
            oidc_nonce: r.get(5)?,
            oidc_verifier: r.get(6)?,
            link_to: r.get(7)?,
            link_to_wallet: r.get(8)?,
            created_at: r.get(9)?,
            expires_at: r.get(10)?,
            verified_type: r.get(11)?,
            verified_value: r.get(12)?,
            verified_at: r.get(13)?,
            claimed_at: r.get(14)?,
            client_challenge: r.get(15)?,
            code_hash: r.get(16)?,
            code_attempts: r.get(17)?,
            redirect_uri: r.get(18)?,
        })
    })
    .optional()
}

const IDENTITY_COLUMNS: &str = "identity_type, identity_value, master, master_wallet, linked_at";

fn identity_row(r: &Row<'_>) -> rusqlite::Result<Identity> {
    Ok(Identity {
        identity_type: r.get(0)?,
        identity_value: r.get(1)?,
        master: r.get(2)?,
        master_wallet: r.get(3)?,
        linked_at: r.get(4)?,
    })
}

fn select_identity(
    conn: &Connection,
    identity_type: &str,
    identity_value: &str,
) -> rusqlite::Result<Option<Identity>> {
    conn.prepare_cached(&format!(
        "SELECT {IDENTITY_COLUMNS} FROM identities WHERE identity_type = ?1 AND identity_value = ?2"
    ))?
    .query_row([identity_type, identity_value], identity_row)
    .optional()
}

const GRANT_COLUMNS: &str =
    "id, master, agent, scope, created_at, expires_at, max_uses, uses, revoked_at";

fn grant_row(r: &Row<'_>) -> rusqlite::Result<Grant> {
    Ok(Grant {
        id: r.get(0)?,
        master: r.get(1)?,
        agent: r.get(2)?,
        scope: r.get(3)?,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
        max_uses: r.get(6)?,
        uses: r.get(7)?,
        revoked_at: r.get(8)?,
    })
}

const AGENT_COLUMNS: &str = "omni, master, label, device_address, status, created_at, updated_at";

fn agent_row(r: &Row<'_>) -> rusqlite::Result<Agent> {
    Ok(Agent {
        omni: r.get(0)?,
        master: r.get(1)?,
        label: r.get(2)?,
        device_address: r.get(3)?,
        status: r.get(4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

fn select_agent(conn: &Connection, omni: &str) -> rusqlite::Result<Option<Agent>> {
    conn.prepare_cached(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE omni = ?1"
    ))?
    .query_row([omni], agent_row)
    .optional()
}

fn unexpected() -> StoreError {
    StoreError::Conflict("internal: the writer answered with the wrong kind of result".into())
}

// ---- rows ---------------------------------------------------------------------------------

fn session_row(r: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        token_hash: r.get(0)?,
        kind: r.get(1)?,
        omni: r.get(2)?,
        wallet: r.get(3)?,
        master: r.get(4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        revoked_at: r.get(7)?,
    })
}

fn audit_row(r: &Row<'_>) -> rusqlite::Result<AuditEvent> {
    let details: String = r.get(6)?;
    Ok(AuditEvent {
        seq: r.get::<_, i64>(0)? as u64,
        time: r.get(1)?,
        kind: r.get(2)?,
        actor: r.get(3)?,
        master: r.get(4)?,
        outcome: r.get(5)?,
        // A row whose details no longer parse was tampered with; keep the raw text so
        // verification reports a hash mismatch rather than failing here.
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        prev_hash: r.get(7)?,
        hash: r.get(8)?,
    })
}

fn key_row(r: &Row<'_>) -> rusqlite::Result<SigningKeyRecord> {
    Ok(SigningKeyRecord {
        kid: r.get(0)?,
        public_jwk: r.get(1)?,
        certificate: r.get(2)?,
        created_at: r.get(3)?,
        activates_at: r.get(4)?,
        retired_at: r.get(5)?,
        withdrawn_at: r.get(6)?,
    })
}

// ---- the trait ----------------------------------------------------------------------------

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        self.readers
            .with(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }

    async fn insert_challenge(&self, challenge: Challenge) -> Result<()> {
        match self.write(Op::InsertChallenge(challenge)).await? {
            Output::Unit => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn take_challenge(&self, id: &str) -> Result<Option<Challenge>> {
        match self.write(Op::TakeChallenge(id.to_owned())).await? {
            Output::Challenge(c) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn create_session(&self, session: Session, event: NewAuditEvent) -> Result<u64> {
        match self.write(Op::CreateSession(session, event)).await? {
            Output::Seq(seq) => Ok(seq),
            _ => Err(unexpected()),
        }
    }

    async fn session(&self, token_hash: &str) -> Result<Option<Session>> {
        self.readers.with(|c| {
            c.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = ?1"
            ))?
            .query_row([token_hash], session_row)
            .optional()
        })
    }

    async fn revoke_session(
        &self,
        token_hash: &str,
        now: i64,
        event: NewAuditEvent,
    ) -> Result<bool> {
        match self
            .write(Op::RevokeSession {
                token_hash: token_hash.to_owned(),
                now,
                event,
            })
            .await?
        {
            Output::Flag(done) => Ok(done),
            _ => Err(unexpected()),
        }
    }

    async fn gated_append(
        &self,
        live: Option<&LiveCheck>,
        buckets: &[(String, RateWindow)],
        grant: Option<&GrantUse>,
        now: i64,
        on_allow: NewAuditEvent,
        on_deny: NewAuditEvent,
    ) -> Result<GateOutcome> {
        let op = Op::RateLimitedAppend {
            live: live.cloned(),
            buckets: buckets.to_vec(),
            grant: grant.cloned(),
            now,
            on_allow,
            on_deny,
        };
        match self.write(op).await? {
            Output::Gate(g) => Ok(g),
            _ => Err(unexpected()),
        }
    }

    async fn append_audit(&self, event: NewAuditEvent) -> Result<u64> {
        match self.write(Op::Append(event)).await? {
            Output::Seq(seq) => Ok(seq),
            _ => Err(unexpected()),
        }
    }

    async fn audit_events(&self, after: u64, limit: u32) -> Result<Vec<AuditEvent>> {
        self.scan(move |c| {
            c.prepare_cached(
                "SELECT seq, time, kind, actor, master, outcome, details, prev_hash, hash
                 FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?
            .query_map(params![after as i64, limit as i64], audit_row)?
            .collect()
        })
        .await
    }

    async fn audit_for_master(
        &self,
        master: &str,
        query: crate::AuditQuery,
    ) -> Result<Vec<AuditEvent>> {
        let master = master.to_owned();
        self.scan(move |c| {
            // Walks the (master, seq) index; the filters only discard rows of that range.
            c.prepare_cached(
                "SELECT seq, time, kind, actor, master, outcome, details, prev_hash, hash
                 FROM audit_events
                 WHERE master = ?1 AND seq > ?2
                   AND (?3 IS NULL OR kind = ?3)
                   AND (?4 IS NULL OR actor = ?4)
                   AND (?5 IS NULL OR time >= ?5)
                   AND (?6 IS NULL OR time < ?6)
                 ORDER BY seq LIMIT ?7",
            )?
            .query_map(
                params![
                    master,
                    i64::try_from(query.after_seq).unwrap_or(i64::MAX),
                    query.kind,
                    query.actor,
                    query.since,
                    query.until,
                    query.limit as i64
                ],
                audit_row,
            )?
            .collect()
        })
        .await
    }

    async fn insert_signing_key(&self, key: SigningKeyRecord, event: NewAuditEvent) -> Result<()> {
        match self.write(Op::InsertKey(key, event)).await? {
            Output::Unit => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        self.scan(|c| {
            c.prepare_cached(
                "SELECT kid, public_jwk, certificate, created_at, activates_at, retired_at, withdrawn_at
                 FROM signing_keys ORDER BY activates_at DESC, created_at DESC",
            )?
            .query_map([], key_row)?
            .collect()
        })
        .await
    }

    async fn update_signing_key(
        &self,
        kid: &str,
        retired_at: Option<i64>,
        withdrawn_at: Option<i64>,
        event: NewAuditEvent,
    ) -> Result<()> {
        match self
            .write(Op::UpdateKey {
                kid: kid.to_owned(),
                retired_at,
                withdrawn_at,
                event,
            })
            .await?
        {
            Output::Unit => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn create_pairing(&self, request: PairingRequest, event: NewAuditEvent) -> Result<()> {
        match self.write(Op::CreatePairing(request, event)).await? {
            Output::Unit => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn pairing(&self, id: &str) -> Result<Option<PairingRequest>> {
        self.readers.with(|c| select_pairing(c, id))
    }

    async fn approve_pairing(
        &self,
        code: &str,
        master: &str,
        label: &str,
        agent_omni: &str,
        now: i64,
        event: NewAuditEvent,
    ) -> Result<ApproveOutcome> {
        let op = Op::ApprovePairing {
            code: code.to_owned(),
            master: master.to_owned(),
            label: label.to_owned(),
            agent_omni: agent_omni.to_owned(),
            now,
            event,
        };
        match self.write(op).await? {
            Output::Approve(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    async fn claim_pairing(
        &self,
        id: &str,
        proof_ms: i64,
        now: i64,
        session: Session,
        event: NewAuditEvent,
    ) -> Result<ClaimOutcome> {
        match self
            .write(Op::ClaimPairing {
                id: id.to_owned(),
                proof_ms,
                now,
                session,
                event,
            })
            .await?
        {
            Output::Claim(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    async fn agent(&self, omni: &str) -> Result<Option<Agent>> {
        self.readers.with(|c| select_agent(c, omni))
    }

    async fn agents_of(&self, master: &str) -> Result<Vec<Agent>> {
        let master = master.to_owned();
        self.scan(move |c| {
            c.prepare_cached(&format!(
                "SELECT {AGENT_COLUMNS} FROM agents WHERE master = ?1 ORDER BY created_at, label"
            ))?
            .query_map([master], agent_row)?
            .collect()
        })
        .await
    }

    async fn set_agent_status(
        &self,
        master: &str,
        omni: &str,
        status: &str,
        now: i64,
        event: NewAuditEvent,
    ) -> Result<Option<Agent>> {
        let op = Op::SetAgentStatus {
            master: master.to_owned(),
            omni: omni.to_owned(),
            status: status.to_owned(),
            now,
            event,
        };
        match self.write(op).await? {
            Output::Agent(a) => Ok(a),
            _ => Err(unexpected()),
        }
    }

    async fn agent_session(
        &self,
        omni: &str,
        proof_ms: i64,
        session: Session,
        event: NewAuditEvent,
    ) -> Result<AgentSessionOutcome> {
        let op = Op::AgentSession {
            omni: omni.to_owned(),
            proof_ms,
            session,
            event,
        };
        match self.write(op).await? {
            Output::Renew(o) => Ok(o),
            _ => Err(unexpected()),
        }
    }

    async fn create_login(
        &self,
        request: LoginRequest,
        event: Option<NewAuditEvent>,
    ) -> Result<()> {
        match self.write(Op::CreateLogin(request, event)).await? {
            Output::Unit => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn login(&self, id_hash: &str) -> Result<Option<LoginRequest>> {
        self.readers.with(|c| select_login(c, "id_hash", id_hash))
    }

    async fn login_by_link_token(&self, token_hash: &str) -> Result<Option<LoginRequest>> {
        self.readers
            .with(|c| select_login(c, "link_token_hash", token_hash))
    }

    async fn login_by_state(&self, state: &str) -> Result<Option<LoginRequest>> {
        self.readers.with(|c| select_login(c, "state", state))
    }

    async fn verify_login(
        &self,
        id_hash: &str,
        identity_type: &str,
        identity_value: &str,
        code_hash: &str,
        now: i64,
        event: NewAuditEvent,
    ) -> Result<bool> {
        let op = Op::VerifyLogin {
            id_hash: id_hash.to_owned(),
            identity_type: identity_type.to_owned(),
            identity_value: identity_value.to_owned(),
            code_hash: code_hash.to_owned(),
            now,
            event,
        };
        match self.write(op).await? {
            Output::Flag(done) => Ok(done),
            _ => Err(unexpected()),
        }
    }

    async fn fail_login(&self, id_hash: &str, now: i64, event: NewAuditEvent) -> Result<bool> {
        let op = Op::FailLogin {
            id_hash: id_hash.to_owned(),
            now,
            event,
        };
        match self.write(op).await? {
            Output::Flag(done) => Ok(done),
            _ => Err(unexpected()),
        }
    }

    async fn redeem_login_code(
        &self,
        id_hash: &str,
        code_hash: &str,
        max_attempts: u32,
        now: i64,
        session: Session,
        event: NewAuditEvent,
    ) -> Result<LoginClaim> {
        let op = Op::RedeemLoginCode {
            id_hash: id_hash.to_owned(),
            code_hash: code_hash.to_owned(),
            max_attempts,
            now,
            session,
            event,
        };
        match self.write(op).await? {
            Output::Login(c) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn redeem_login_link(
        &self,
        link_token_hash: &str,
        now: i64,
        session: Session,
        event: NewAuditEvent,
    ) -> Result<LoginClaim> {
        let op = Op::RedeemLoginLink {
            link_token_hash: link_token_hash.to_owned(),
            now,
            session,
            event,
        };
        match self.write(op).await? {
            Output::Login(c) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    async fn identities_of(&self, master: &str) -> Result<Vec<Identity>> {
        let master = master.to_owned();
        self.scan(move |c| {
            c.prepare_cached(&format!(
                "SELECT {IDENTITY_COLUMNS} FROM identities WHERE master = ?1 ORDER BY linked_at"
            ))?
            .query_map([master], identity_row)?
            .collect()
        })
        .await
    }

    async fn unlink_identity(
        &self,
        master: &str,
        identity_type: &str,
        identity_value: &str,
        now: i64,
        event: NewAuditEvent,
    ) -> Result<Option<u64>> {
        let op = Op::Unlink {
            master: master.to_owned(),
            identity_type: identity_type.to_owned(),
            identity_value: identity_value.to_owned(),
            now,
            event,
        };
        match self.write(op).await? {
            Output::Unlinked(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn create_grant(&self, grant: Grant, event: NewAuditEvent) -> Result<()> {
        match self.write(Op::CreateGrant(grant, event)).await? {
            Output::Unit => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn grant(&self, id: &str) -> Result<Option<Grant>> {
        self.readers.with(|c| {
            c.prepare_cached(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = ?1"))?
                .query_row([id], grant_row)
                .optional()
        })
    }

    async fn grants_of(&self, master: Option<&str>, agent: Option<&str>) -> Result<Vec<Grant>> {
        let (master, agent) = (master.map(str::to_owned), agent.map(str::to_owned));
        self.scan(move |c| {
            c.prepare_cached(&format!(
                "SELECT {GRANT_COLUMNS} FROM grants
                 WHERE (?1 IS NULL OR master = ?1) AND (?2 IS NULL OR agent = ?2) ORDER BY created_at, id"
            ))?
            .query_map(params![master, agent], grant_row)?
            .collect()
        })
        .await
    }

    async fn revoke_grant(
        &self,
        master: &str,
        id: &str,
        now: i64,
        event: NewAuditEvent,
    ) -> Result<bool> {
        let op = Op::RevokeGrant {
            master: master.to_owned(),
            id: id.to_owned(),
            now,
            event,
        };
        match self.write(op).await? {
            Output::Flag(done) => Ok(done),
            _ => Err(unexpected()),
        }
    }

    async fn sessions_of(&self, omni: &str, now: i64) -> Result<Vec<Session>> {
        let omni = omni.to_owned();
        self.scan(move |c| {
            c.prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM sessions
                 WHERE omni = ?1 AND revoked_at IS NULL AND expires_at > ?2 ORDER BY created_at"
            ))?
            .query_map(params![omni, now], session_row)?
            .collect()
        })
        .await
    }

    async fn revoke_sessions_of(
        &self,
        omni: &str,
        keep: Option<&str>,
        now: i64,
        event: NewAuditEvent,
    ) -> Result<u64> {
        let op = Op::RevokeSessionsOf {
            omni: omni.to_owned(),
            keep: keep.map(str::to_owned),
            now,
            event,
        };
        match self.write(op).await? {
            Output::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }

    async fn purge_expired(&self, requests_before: i64, sessions_before: i64) -> Result<u64> {
        let op = Op::Purge {
            requests_before,
            sessions_before,
        };
        match self.write(op).await? {
            Output::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }
}
