//! One group-committed transaction on the writer's connection, with its statements pipelined.
//!
//! The batch holds the chain lock from `BEGIN` to `COMMIT`, so what it costs is round trips,
//! and the server's work per statement. Three things keep both down:
//!
//! * **Deferred writes.** A write whose result nobody reads (a rate-limit count, the release
//!   of a savepoint) is queued and sent in the same round trip as the next statement that is
//!   waited for, or with the `COMMIT`. tokio-postgres pipelines requests issued together: they
//!   go out in order on one socket write and run in order, so a later read sees them.
//! * **Audit rows written once per batch.** The chain head lives here; each append computes
//!   its seq and hash at once and the rows go in as one `INSERT … SELECT unnest(…)` just
//!   before `COMMIT`.
//! * **Savepoints only where they are needed.** A unit of work that fails must leave nothing
//!   behind. Work whose writes were all still queued when it failed is undone by dropping them,
//!   so a savepoint is opened only before a work's first write that has to be sent (an
//!   immediate write, or a read that would carry its queued writes along). A mint that only
//!   reads and counts pays none; PostgreSQL subtransactions are not free (each one that writes
//!   takes a subtransaction id, and more than 64 in one transaction make every other
//!   session's snapshots slower).
//!
//! A statement that fails outside a savepoint aborts the transaction: the batch is then
//! *broken*, every later statement fails at once, and the whole batch rolls back (each of its
//! works hears that its commit failed), as when the `COMMIT` itself fails.

use std::future::Future;
use std::mem;
use std::pin::Pin;

use futures_util::future::join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::{Params, Statements, db_err};
use crate::audit::GENESIS_HASH;
use crate::{Result, StoreError};

/// Serialises the writers of every instance sharing the database; SELECTs are not blocked.
const BEGIN: &str = "BEGIN; LOCK TABLE audit_events IN EXCLUSIVE MODE";
/// Read under the writers' lock, so it is the head every instance appends to.
const HEAD: &str = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1";
const INSERT_EVENTS: &str = "INSERT INTO audit_events
     (seq, time, kind, actor, master, outcome, details, prev_hash, hash, hash_format)
     SELECT *, $10::smallint FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[],
                                         $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])";
const SAVEPOINT: &str = "SAVEPOINT work";
const RELEASE: &str = "RELEASE SAVEPOINT work";
const UNDO: &str = "ROLLBACK TO SAVEPOINT work; RELEASE SAVEPOINT work";

/// The writer's connection: the client, the runtime that drives it on the writer thread, and
/// the statements prepared on it.
pub(super) struct Conn {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) client: Client,
    /// Named statements are per connection, not per transaction: one prepared in a batch that
    /// rolled back stays usable.
    pub(super) stmts: Statements,
}

impl Conn {
    fn stmt(&mut self, sql: &'static str) -> Result<Statement> {
        if let Some(stmt) = self.stmts.get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = self.rt.block_on(self.client.prepare(sql)).map_err(db_err)?;
        self.stmts.insert(sql, stmt.clone());
        Ok(stmt)
    }

    /// Best effort: a connection that cannot even roll back is dropped by the writer.
    pub(super) fn rollback(&mut self) -> Result<()> {
        self.rt
            .block_on(self.client.batch_execute("ROLLBACK"))
            .map_err(db_err)
    }
}

/// A write sent with the next round trip.
enum Deferred {
    Statement {
        stmt: Statement,
        params: Vec<Box<dyn ToSql + Sync + Send>>,
    },
    Simple(&'static str),
}

/// A statement waited for.
enum Request<'p> {
    Query(Statement, Params<'p>),
    Execute(Statement, Params<'p>),
    Simple(&'static str),
}

enum Reply {
    Rows(Vec<Row>),
    Count(u64),
    Done,
}

type Pending<'a> = Pin<Box<dyn Future<Output = Result<Reply, tokio_postgres::Error>> + 'a>>;

/// The last event of the chain, as seen inside the batch.
#[derive(Clone)]
pub(super) struct Head {
    pub(super) seq: u64,
    pub(super) hash: String,
}

/// An appended event, written with the batch.
pub(super) struct EventRow {
    pub(super) seq: i64,
    pub(super) time: i64,
    pub(super) kind: &'static str,
    pub(super) actor: Option<String>,
    pub(super) master: Option<String>,
    pub(super) outcome: &'static str,
    pub(super) details: String,
    pub(super) prev_hash: String,
    pub(super) hash: String,
}

/// Where a work started: what to restore when it fails.
pub(super) struct Mark {
    events: usize,
    head: Head,
}

pub(super) struct Batch<'c> {
    conn: &'c mut Conn,
    pending: Vec<Deferred>,
    /// The current work's queued writes start here (those before belong to earlier works).
    work_start: usize,
    /// The current work runs in a savepoint.
    savepoint: bool,
    /// A statement of the current work failed inside its savepoint.
    work_failed: Option<String>,
    /// A statement failed outside any savepoint: the transaction is aborted.
    broken: Option<String>,
    pub(super) head: Head,
    pub(super) events: Vec<EventRow>,
}

impl<'c> Batch<'c> {
    /// `BEGIN`, the writers' lock and the chain head, in one round trip.
    pub(super) fn begin(conn: &'c mut Conn) -> Result<Self> {
        let head_stmt = conn.stmt(HEAD)?;
        let Conn { rt, client, .. } = &mut *conn;
        let (begun, head) = rt.block_on(pipeline(
            client,
            &[Deferred::Simple(BEGIN)],
            Request::Query(head_stmt, &[]),
        ));
        begun.map_err(|(_, e)| db_err(e))?;
        let rows = match head.map_err(db_err)? {
            Reply::Rows(rows) => rows,
            _ => Vec::new(),
        };
        let head = match rows.first() {
            Some(row) => Head {
                seq: u64::try_from(super::col::<i64>(row, 0)?)
                    .map_err(|_| StoreError::Database("a negative audit seq".into()))?,
                hash: super::col(row, 1)?,
            },
            None => Head {
                seq: 0,
                hash: GENESIS_HASH.to_owned(),
            },
        };
        Ok(Self {
            conn,
            pending: Vec::new(),
            work_start: 0,
            savepoint: false,
            work_failed: None,
            broken: None,
            head,
            events: Vec::new(),
        })
    }

    pub(super) fn mark(&self) -> Mark {
        Mark {
            events: self.events.len(),
            head: self.head.clone(),
        }
    }

    /// Ends the current work: keeps what it did if it succeeded, else undoes it (`mark` is
    /// where it started). Returns the failure of a work whose closure succeeded but one of
    /// whose statements did not (it must not be answered as committed).
    pub(super) fn end_work(&mut self, succeeded: bool, mark: Mark) -> Option<StoreError> {
        let failed = self.work_failed.take();
        let savepoint = mem::take(&mut self.savepoint);
        let outcome = if succeeded && failed.is_none() {
            if savepoint {
                self.pending.push(Deferred::Simple(RELEASE));
            }
            None
        } else {
            // Its queued writes were never sent; anything it sent is after its savepoint.
            self.pending.truncate(self.work_start);
            self.events.truncate(mark.events);
            self.head = mark.head;
            if savepoint && self.broken.is_none() {
                // Every write queued before the savepoint went out when it was opened.
                if let Err(e) = self.round_trip(Request::Simple(UNDO), None) {
                    self.broken.get_or_insert(e.to_string());
                }
            }
            failed.map(StoreError::Database)
        };
        self.work_start = self.pending.len();
        outcome
    }

    /// Sends what is queued, the batch's audit rows and `COMMIT`, in one round trip.
    pub(super) fn commit(mut self) -> Result<()> {
        if let Some(broken) = self.broken.take() {
            return Err(StoreError::Commit(broken));
        }
        if !self.events.is_empty() {
            let stmt = self.conn.stmt(INSERT_EVENTS)?;
            let events = mem::take(&mut self.events);
            self.pending.push(Deferred::Statement {
                stmt,
                params: event_arrays(events),
            });
        }
        let pending = mem::take(&mut self.pending);
        let Conn { rt, client, .. } = &mut *self.conn;
        let (sent, committed) = rt.block_on(pipeline(client, &pending, Request::Simple("COMMIT")));
        // After a failed statement PostgreSQL answers COMMIT with a rollback, not an error.
        sent.map_err(|(_, e)| db_err(e))?;
        committed.map_err(db_err)?;
        Ok(())
    }

    /// Queues a write whose result nobody reads; its failure breaks the batch.
    pub(super) fn defer(
        &mut self,
        sql: &'static str,
        params: Vec<Box<dyn ToSql + Sync + Send>>,
    ) -> Result<()> {
        self.check()?;
        let stmt = self.conn.stmt(sql)?;
        self.pending.push(Deferred::Statement { stmt, params });
        Ok(())
    }

    pub(super) fn query(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
        writes: bool,
    ) -> Result<Vec<Row>> {
        let stmt = self.conn.stmt(sql)?;
        match self.immediate(Request::Query(stmt, params), writes)? {
            Reply::Rows(rows) => Ok(rows),
            _ => Err(StoreError::Database("a query answered without rows".into())),
        }
    }

    pub(super) fn execute(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64> {
        let stmt = self.conn.stmt(sql)?;
        match self.immediate(Request::Execute(stmt, params), true)? {
            Reply::Count(n) => Ok(n),
            _ => Err(StoreError::Database(
                "a write answered without a count".into(),
            )),
        }
    }

    fn check(&self) -> Result<()> {
        match &self.broken {
            Some(e) => Err(StoreError::Database(format!(
                "an earlier statement of this transaction failed: {e}"
            ))),
            None => Ok(()),
        }
    }

    /// Sends `request` with everything queued and waits for it. A work's first statement
    /// that writes, or that carries the work's own queued writes, opens its savepoint first.
    fn immediate(&mut self, request: Request<'_>, writes: bool) -> Result<Reply> {
        self.check()?;
        let mut opened_at = None;
        if !self.savepoint && (writes || self.pending.len() > self.work_start) {
            self.pending
                .insert(self.work_start, Deferred::Simple(SAVEPOINT));
            opened_at = Some(self.work_start);
            self.savepoint = true;
        }
        let reply = self.round_trip(request, opened_at);
        if let Err(e) = &reply {
            // Inside the savepoint the work fails alone; outside it, the transaction is lost.
            if self.savepoint && self.broken.is_none() {
                self.work_failed.get_or_insert(e.to_string());
            } else {
                self.broken.get_or_insert(e.to_string());
            }
        }
        reply
    }

    /// One round trip: the queue, then `request`. A failure of a queued write that precedes
    /// the current work's savepoint (or of the `SAVEPOINT` itself, queued at `opened_at` by
    /// this call) breaks the batch.
    fn round_trip(&mut self, request: Request<'_>, opened_at: Option<usize>) -> Result<Reply> {
        let pending = mem::take(&mut self.pending);
        let own_from = match opened_at {
            Some(i) => i + 1,
            // Opened by an earlier round trip, which sent everything queued before it.
            None if self.savepoint => 0,
            None => pending.len(),
        };
        self.work_start = 0;
        let Conn { rt, client, .. } = &mut *self.conn;
        let (sent, reply) = rt.block_on(pipeline(client, &pending, request));
        if let Err((i, e)) = sent {
            let e = db_err(e);
            if i < own_from {
                self.broken.get_or_insert(e.to_string());
            }
            return Err(e);
        }
        reply.map_err(db_err)
    }
}

/// Sends `pending` then `last`, pipelined, and waits for all of them. The first failure among
/// `pending` is returned with its index.
async fn pipeline(
    client: &Client,
    pending: &[Deferred],
    last: Request<'_>,
) -> (
    std::result::Result<(), (usize, tokio_postgres::Error)>,
    std::result::Result<Reply, tokio_postgres::Error>,
) {
    let params: Vec<Vec<&(dyn ToSql + Sync)>> = pending
        .iter()
        .map(|d| match d {
            Deferred::Statement { params, .. } => {
                params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect()
            }
            Deferred::Simple(_) => Vec::new(),
        })
        .collect();
    let mut futures: Vec<Pending<'_>> = Vec::with_capacity(pending.len() + 1);
    for (d, params) in pending.iter().zip(&params) {
        futures.push(match d {
            Deferred::Statement { stmt, .. } => {
                Box::pin(async move { client.execute(stmt, params).await.map(Reply::Count) })
            }
            Deferred::Simple(sql) => {
                Box::pin(async move { client.batch_execute(sql).await.map(|()| Reply::Done) })
            }
        });
    }
    futures.push(match last {
        Request::Query(stmt, params) => {
            Box::pin(async move { client.query(&stmt, params).await.map(Reply::Rows) })
        }
        Request::Execute(stmt, params) => {
            Box::pin(async move { client.execute(&stmt, params).await.map(Reply::Count) })
        }
        Request::Simple(sql) => {
            Box::pin(async move { client.batch_execute(sql).await.map(|()| Reply::Done) })
        }
    });
    // join_all polls in order, and each request is written to the socket on its first poll.
    let mut replies = join_all(futures).await;
    let last = replies.pop().unwrap_or(Ok(Reply::Done));
    let sent = replies
        .into_iter()
        .enumerate()
        .find_map(|(i, r)| r.err().map(|e| (i, e)))
        .map_or(Ok(()), Err);
    (sent, last)
}

/// The columns of `events` as the nine arrays of [`INSERT_EVENTS`], and the hash format they
/// were all hashed in.
fn event_arrays(events: Vec<EventRow>) -> Vec<Box<dyn ToSql + Sync + Send>> {
    let n = events.len();
    let (mut seq, mut time, mut kind, mut actor, mut master) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut outcome, mut details, mut prev_hash, mut hash) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for e in events {
        seq.push(e.seq);
        time.push(e.time);
        kind.push(e.kind);
        actor.push(e.actor);
        master.push(e.master);
        outcome.push(e.outcome);
        details.push(e.details);
        prev_hash.push(e.prev_hash);
        hash.push(e.hash);
    }
    vec![
        Box::new(seq),
        Box::new(time),
        Box::new(kind),
        Box::new(actor),
        Box::new(master),
        Box::new(outcome),
        Box::new(details),
        Box::new(prev_hash),
        Box::new(hash),
        Box::new(i64::from(crate::audit::HashFormat::CURRENT) as i16),
    ]
}
