//! SQLite backend: one file in WAL mode, `synchronous = FULL`.
//!
//! Reads use a small connection pool. Every write goes through one writer task that drains
//! whatever is queued and commits it as one transaction (group commit): requests that arrive
//! while a commit is being fsynced share the next fsync instead of each paying for their own.
//! Each queued operation runs inside its own savepoint, so one failing operation fails alone.
//! A caller is answered only after the commit that holds its write is durable.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use crate::audit::{GENESIS_HASH, canonical, chain_hash};
use crate::{
    AuditEvent, Challenge, GateOutcome, NewAuditEvent, RateWindow, Result, Session,
    SigningKeyRecord, Store, StoreError,
};

/// Most operations one commit carries; bounds the latency a large burst adds to its first caller.
const MAX_BATCH: usize = 512;
const QUEUE_DEPTH: usize = 8192;

pub struct SqliteStore {
    pool: SqlitePool,
    writer: mpsc::Sender<Job>,
}

impl SqliteStore {
    /// Opens (creating if missing) and migrates the database at `url` (`sqlite://PATH`).
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let conn = SqliteConnection::connect_with(&options).await?;
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run_writer(conn, rx));
        Ok(Self { pool, writer: tx })
    }

    async fn write(&self, op: Op) -> Result<Output> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Job { op, reply })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
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
        actor: String,
        windows: Vec<RateWindow>,
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
        before: i64,
    },
}

enum Output {
    Unit,
    Seq(u64),
    Count(u64),
    Flag(bool),
    Challenge(Option<Challenge>),
    Gate(GateOutcome),
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

async fn run_writer(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let jobs = std::mem::take(&mut batch);
        commit_batch(&mut conn, jobs).await;
    }
}

async fn commit_batch(conn: &mut SqliteConnection, jobs: Vec<Job>) {
    let mut results = Vec::with_capacity(jobs.len());
    let mut replies = Vec::with_capacity(jobs.len());
    let outcome: Result<()> = async {
        // IMMEDIATE takes the write lock up front: another process (the `keys` CLI) may write
        // too, and a deferred transaction could not upgrade its lock after reading the head.
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut head = read_head(&mut tx).await?;
        for job in jobs {
            let mut savepoint = tx.begin().await?;
            let mut op_head = head.clone();
            let result = apply(&mut savepoint, &mut op_head, job.op).await;
            if result.is_ok() {
                savepoint.commit().await?;
                head = op_head;
            } else {
                savepoint.rollback().await?;
            }
            results.push(result);
            replies.push(job.reply);
        }
        tx.commit().await?;
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "store.commit_failed");
            let message = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(StoreError::Commit(message.clone())));
            }
            // Jobs never reached (the failure came before their turn) are dropped here; their
            // callers see `WriterGone` and answer 500, which is right: nothing was written.
        }
    }
}

async fn read_head(conn: &mut SqliteConnection) -> Result<Head> {
    let row = sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some(row) => Head {
            seq: row.get::<i64, _>(0) as u64,
            hash: row.get(1),
        },
        None => Head {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        },
    })
}

async fn append(
    conn: &mut SqliteConnection,
    head: &mut Head,
    event: &NewAuditEvent,
) -> Result<u64> {
    let seq = head.seq + 1;
    let hash = chain_hash(&head.hash, &canonical(seq, event));
    sqlx::query(
        "INSERT INTO audit_events (seq, time, kind, actor, master, outcome, details, prev_hash, hash)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(seq as i64)
    .bind(event.time)
    .bind(&event.kind)
    .bind(&event.actor)
    .bind(&event.master)
    .bind(&event.outcome)
    .bind(event.details.to_string())
    .bind(&head.hash)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    *head = Head { seq, hash };
    Ok(seq)
}

async fn apply(conn: &mut SqliteConnection, head: &mut Head, op: Op) -> Result<Output> {
    match op {
        Op::Append(event) => Ok(Output::Seq(append(conn, head, &event).await?)),
        Op::InsertChallenge(c) => {
            sqlx::query(
                "INSERT INTO wallet_challenges (id, address, message, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&c.id)
            .bind(&c.address)
            .bind(&c.message)
            .bind(c.created_at)
            .bind(c.expires_at)
            .execute(&mut *conn)
            .await?;
            Ok(Output::Unit)
        }
        Op::TakeChallenge(id) => {
            let row = sqlx::query(
                "DELETE FROM wallet_challenges WHERE id = ? RETURNING id, address, message, created_at, expires_at",
            )
            .bind(&id)
            .fetch_optional(&mut *conn)
            .await?;
            Ok(Output::Challenge(row.map(|r| Challenge {
                id: r.get(0),
                address: r.get(1),
                message: r.get(2),
                created_at: r.get(3),
                expires_at: r.get(4),
            })))
        }
        Op::CreateSession(s, event) => {
            sqlx::query(
                "INSERT INTO sessions (token_hash, kind, omni, wallet, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(&s.token_hash)
            .bind(&s.kind)
            .bind(&s.omni)
            .bind(&s.wallet)
            .bind(s.created_at)
            .bind(s.expires_at)
            .execute(&mut *conn)
            .await?;
            Ok(Output::Seq(append(conn, head, &event).await?))
        }
        Op::RevokeSession {
            token_hash,
            now,
            event,
        } => {
            let done = sqlx::query(
                "UPDATE sessions SET revoked_at = ? WHERE token_hash = ? AND revoked_at IS NULL AND expires_at > ?",
            )
            .bind(now)
            .bind(&token_hash)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                > 0;
            if done {
                append(conn, head, &event).await?;
            }
            Ok(Output::Flag(done))
        }
        Op::RateLimitedAppend {
            actor,
            windows,
            now,
            on_allow,
            on_deny,
        } => {
            for w in &windows {
                let start = now - now.rem_euclid(w.seconds);
                let used: i64 = sqlx::query_scalar(
                    "SELECT count FROM rate_limits WHERE actor = ? AND window_secs = ? AND window_start = ?",
                )
                .bind(&actor)
                .bind(w.seconds)
                .bind(start)
                .fetch_optional(&mut *conn)
                .await?
                .unwrap_or(0);
                if used as u64 >= w.limit {
                    let seq = append(conn, head, &on_deny).await?;
                    return Ok(Output::Gate(GateOutcome::Limited {
                        retry_after: (start + w.seconds - now).max(1),
                        window_seconds: w.seconds,
                        seq,
                    }));
                }
            }
            for w in &windows {
                let start = now - now.rem_euclid(w.seconds);
                sqlx::query(
                    "INSERT INTO rate_limits (actor, window_secs, window_start, count) VALUES (?, ?, ?, 1)
                     ON CONFLICT (actor, window_secs) DO UPDATE SET
                       count = CASE WHEN window_start = excluded.window_start THEN count + 1 ELSE 1 END,
                       window_start = excluded.window_start",
                )
                .bind(&actor)
                .bind(w.seconds)
                .bind(start)
                .execute(&mut *conn)
                .await?;
            }
            let seq = append(conn, head, &on_allow).await?;
            Ok(Output::Gate(GateOutcome::Allowed { seq }))
        }
        Op::InsertKey(k, event) => {
            sqlx::query(
                "INSERT INTO signing_keys (kid, public_jwk, certificate, created_at, activates_at, retired_at, withdrawn_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&k.kid)
            .bind(&k.public_jwk)
            .bind(&k.certificate)
            .bind(k.created_at)
            .bind(k.activates_at)
            .bind(k.retired_at)
            .bind(k.withdrawn_at)
            .execute(&mut *conn)
            .await?;
            append(conn, head, &event).await?;
            Ok(Output::Unit)
        }
        Op::UpdateKey {
            kid,
            retired_at,
            withdrawn_at,
            event,
        } => {
            let n = sqlx::query(
                "UPDATE signing_keys SET retired_at = ?, withdrawn_at = ? WHERE kid = ?",
            )
            .bind(retired_at)
            .bind(withdrawn_at)
            .bind(&kid)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(StoreError::Conflict(format!(
                    "no signing key with kid {kid}"
                )));
            }
            append(conn, head, &event).await?;
            Ok(Output::Unit)
        }
        Op::Purge { before } => {
            let a = sqlx::query("DELETE FROM wallet_challenges WHERE expires_at < ?")
                .bind(before)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            let b = sqlx::query("DELETE FROM sessions WHERE expires_at < ?")
                .bind(before)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            Ok(Output::Count(a + b))
        }
    }
}

fn unexpected() -> StoreError {
    StoreError::Conflict("internal: the writer answered with the wrong kind of result".into())
}

// ---- the trait ----------------------------------------------------------------------------

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
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
        let row = sqlx::query(
            "SELECT token_hash, kind, omni, wallet, created_at, expires_at, revoked_at FROM sessions WHERE token_hash = ?",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Session {
            token_hash: r.get(0),
            kind: r.get(1),
            omni: r.get(2),
            wallet: r.get(3),
            created_at: r.get(4),
            expires_at: r.get(5),
            revoked_at: r.get(6),
        }))
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

    async fn rate_limited_append(
        &self,
        actor: &str,
        windows: &[RateWindow],
        now: i64,
        on_allow: NewAuditEvent,
        on_deny: NewAuditEvent,
    ) -> Result<GateOutcome> {
        let op = Op::RateLimitedAppend {
            actor: actor.to_owned(),
            windows: windows.to_vec(),
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
        let rows = sqlx::query(
            "SELECT seq, time, kind, actor, master, outcome, details, prev_hash, hash
             FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let details: String = r.get(6);
                Ok(AuditEvent {
                    seq: r.get::<i64, _>(0) as u64,
                    time: r.get(1),
                    kind: r.get(2),
                    actor: r.get(3),
                    master: r.get(4),
                    outcome: r.get(5),
                    // A row whose details no longer parse was tampered with; keep the raw text
                    // so verification reports it as a hash mismatch rather than failing here.
                    details: serde_json::from_str(&details)
                        .unwrap_or(serde_json::Value::String(details)),
                    prev_hash: r.get(7),
                    hash: r.get(8),
                })
            })
            .collect()
    }

    async fn insert_signing_key(&self, key: SigningKeyRecord, event: NewAuditEvent) -> Result<()> {
        match self.write(Op::InsertKey(key, event)).await? {
            Output::Unit => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        let rows = sqlx::query(
            "SELECT kid, public_jwk, certificate, created_at, activates_at, retired_at, withdrawn_at
             FROM signing_keys ORDER BY activates_at DESC, created_at DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| SigningKeyRecord {
                kid: r.get(0),
                public_jwk: r.get(1),
                certificate: r.get(2),
                created_at: r.get(3),
                activates_at: r.get(4),
                retired_at: r.get(5),
                withdrawn_at: r.get(6),
            })
            .collect())
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

    async fn purge_expired(&self, before: i64) -> Result<u64> {
        match self.write(Op::Purge { before }).await? {
            Output::Count(n) => Ok(n),
            _ => Err(unexpected()),
        }
    }
}
