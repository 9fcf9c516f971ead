//! Fixed-window rate-limit counters of the SQLite backend: counted in the writer's memory, made
//! durable by a journal written in each commit.
//!
//! Why not a row per window, updated by every use as PostgreSQL does: a mint's two windows were
//! then a read and an update on pages of their own (≈ 22,000 instructions, and about half the
//! pages each commit wrote, on the one writer every mint goes through; docs/performance.md).
//! Here a use is a map lookup. What keeps it durable:
//! - each commit that changed a window appends one `rate_journal` row in its own transaction:
//!   the new count of every window it changed. So a use is durable exactly when the write it
//!   counts is (the mint's audit event), and a rolled-back work or a failed commit counts none;
//! - every [`FOLD_EVERY`] (sooner after many journal rows or changed buckets) a fold starts:
//!   the buckets changed until then are written to `rate_limits`, at most [`FOLD_CHUNK`] in
//!   each commit (so no one commit waits for thousands of row writes), and once all are, the
//!   journal rows written before the fold started are deleted;
//! - the counts are loaded from `rate_limits` and the journal replayed in order (each row holds
//!   absolute counts, so the last one of a window wins) when the writer starts, and again
//!   whenever another connection committed to the file since the last batch (`PRAGMA
//!   data_version`): the `keys` command, or a second process on the same file.
//!
//! Only the writer thread touches these counts, so they need no lock.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use crate::{RateWindow, Result, StoreError};

/// How long after a fold finished the next one starts, at the latest.
const FOLD_EVERY: Duration = Duration::from_secs(1);
/// Journal rows after which the windows are folded sooner: bounds the replay at start.
pub(super) const FOLD_AFTER_ROWS: usize = 256;
/// Changed buckets after which the windows are folded sooner: bounds the memory and the replay.
const FOLD_AFTER_BUCKETS: usize = 4096;
/// Buckets a fold writes in one commit, at most: a commit carrying a fold's chunk waits for
/// its row writes (≈ 1 ms for 128 buckets of two windows on pages of their own).
const FOLD_CHUNK: usize = 128;

/// The count of one window instance of a bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Count {
    /// The window's length.
    secs: i64,
    /// Its current instance's start.
    start: i64,
    used: u64,
}

impl Count {
    /// Uses counted in the instance starting at `start`: none if this count is of another.
    fn used_since(&self, start: i64) -> u64 {
        if self.start == start { self.used } else { 0 }
    }
}

/// One bucket's windows, one per length (a mint's bucket has two).
type Windows = Vec<Count>;

fn window_of(windows: &[Count], secs: i64) -> Option<Count> {
    windows.iter().copied().find(|c| c.secs == secs)
}

fn set_window(windows: &mut Windows, count: Count) {
    match windows.iter_mut().find(|c| c.secs == count.secs) {
        Some(old) => *old = count,
        None => windows.push(count),
    }
}

/// The committed counts, as the writer keeps them between batches. std's `HashMap` (SipHash)
/// on purpose: bucket keys hold addresses that anyone may choose.
#[derive(Debug)]
pub(super) struct Limits {
    committed: HashMap<Box<str>, Windows>,
    /// Buckets whose latest counts are not all in `rate_limits` yet: the journal holds them.
    unfolded: HashSet<Box<str>>,
    /// The fold under way, if one is.
    fold: Option<Fold>,
    /// Rows in the journal, and the id of the last one written (ids only grow while a fold
    /// that compares them is under way: a fold deletes only rows older than its start).
    journal_rows: usize,
    last_journal_id: i64,
    /// When the last fold finished.
    folded_at: Instant,
    /// `PRAGMA data_version` when `committed` was last known current; `None` before the first
    /// load and after a failed batch.
    version: Option<i64>,
    /// The latest window start counted: a lower bound of the clock, to drop ended windows.
    latest_start: i64,
}

/// A fold under way: the buckets unfolded when it started, written a chunk per commit; then
/// the journal rows up to `mark` (all written before it started) are deleted.
#[derive(Debug, Clone)]
pub(super) struct Fold {
    mark: i64,
    /// Journal rows up to `mark`.
    rows: usize,
    /// Buckets not written yet; chunks are taken from the end.
    pending: Vec<Box<str>>,
}

/// Writes one window's count to its row.
fn fold_window(upsert: &mut rusqlite::CachedStatement<'_>, bucket: &str, c: &Count) -> Result<()> {
    // A count past i64::MAX uses is past every limit: saturating keeps it so.
    let used = i64::try_from(c.used).unwrap_or(i64::MAX);
    upsert.execute(params![bucket, c.secs, c.start, used])?;
    Ok(())
}

/// What a batch's transaction wrote, for [`Limits::committed`] to follow once it commits.
#[derive(Debug, Default)]
pub(super) struct Written {
    /// The journal row of the batch's changes.
    journal_id: Option<i64>,
    /// A fold this batch started.
    started: Option<Fold>,
    /// Buckets of the fold written (the last ones of its `pending`), and whether that was all.
    folded: usize,
    finished: bool,
}

impl Limits {
    pub(super) fn new() -> Self {
        Self {
            committed: HashMap::new(),
            unfolded: HashSet::new(),
            fold: None,
            journal_rows: 0,
            last_journal_id: 0,
            folded_at: Instant::now(),
            version: None,
            latest_start: i64::MIN,
        }
    }

    /// Brings the counts up to date with the file, inside the batch's write transaction: loads
    /// them if this is the first batch, a commit failed, or another connection committed since
    /// the last one; whether it did.
    pub(super) fn refresh(&mut self, conn: &Connection) -> Result<bool> {
        let version: i64 = conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if self.version != Some(version) {
            // Half-loaded counts are never used: a failed load is tried again next batch.
            self.version = None;
            self.load(conn)?;
            self.version = Some(version);
            return Ok(true);
        }
        Ok(false)
    }

    fn load(&mut self, conn: &Connection) -> Result<()> {
        self.committed.clear();
        self.unfolded.clear();
        self.fold = None;
        self.journal_rows = 0;
        self.last_journal_id = 0;
        let mut rows = conn.prepare(
            "SELECT actor, window_secs, window_start, count FROM rate_limits ORDER BY actor",
        )?;
        let mut rows = rows.query([])?;
        while let Some(r) = rows.next()? {
            let bucket: String = r.get(0)?;
            let count = Count {
                secs: r.get(1)?,
                start: r.get(2)?,
                used: super::unsigned(r, 3)?,
            };
            set_window(self.committed.entry(bucket.into()).or_default(), count);
        }
        let mut journal = conn.prepare("SELECT id, windows FROM rate_journal ORDER BY id")?;
        let mut journal = journal.query([])?;
        while let Some(r) = journal.next()? {
            let id: i64 = r.get(0)?;
            let text: String = r.get(1)?;
            let entries: Vec<(String, i64, i64, u64)> =
                serde_json::from_str(&text).map_err(|e| {
                    StoreError::Database(format!("rate_journal row {id} is unreadable: {e}"))
                })?;
            for (bucket, secs, start, used) in entries {
                let count = Count { secs, start, used };
                let bucket: Box<str> = bucket.into();
                set_window(self.committed.entry(bucket.clone()).or_default(), count);
                self.unfolded.insert(bucket);
            }
            self.journal_rows += 1;
            self.last_journal_id = id;
        }
        Ok(())
    }

    /// Writes what makes `batch`'s counts durable, inside its transaction, before the commit:
    /// a journal row of its changes, and the next chunk of a fold under way or due.
    pub(super) fn write(&self, conn: &Connection, batch: &BatchCounts) -> Result<Written> {
        let mut written = Written::default();
        if !batch.changed.is_empty() {
            let entries: Vec<(&str, i64, i64, u64)> = batch
                .changed
                .iter()
                .flat_map(|(bucket, windows)| {
                    windows.iter().map(|c| (&**bucket, c.secs, c.start, c.used))
                })
                .collect();
            let text = serde_json::to_string(&entries)
                .map_err(|e| StoreError::Database(format!("a rate_journal row: {e}")))?;
            conn.prepare_cached("INSERT INTO rate_journal (windows) VALUES (?1)")?
                .execute([text])?;
            written.journal_id = Some(conn.last_insert_rowid());
        }
        let due = self.journal_rows > 0
            && (self.journal_rows >= FOLD_AFTER_ROWS
                || self.unfolded.len() >= FOLD_AFTER_BUCKETS
                || self.folded_at.elapsed() >= FOLD_EVERY);
        let fold = match &self.fold {
            Some(fold) => fold,
            None if due => written.started.insert(Fold {
                mark: self.last_journal_id,
                rows: self.journal_rows,
                pending: self.unfolded.iter().cloned().collect(),
            }),
            None => return Ok(written),
        };
        let chunk = &fold.pending[fold.pending.len().saturating_sub(FOLD_CHUNK)..];
        let mut upsert = conn.prepare_cached(
            "INSERT INTO rate_limits (actor, window_secs, window_start, count)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (actor, window_secs) DO UPDATE SET
               window_start = excluded.window_start, count = excluded.count",
        )?;
        for bucket in chunk {
            // Each window's latest count: this batch's, else the committed one.
            let newer = batch.changed.get(bucket).map_or(&[][..], |w| &w[..]);
            let committed = self.committed.get(bucket).map_or(&[][..], |w| &w[..]);
            let older = committed
                .iter()
                .filter(|c| window_of(newer, c.secs).is_none());
            for c in newer.iter().chain(older) {
                fold_window(&mut upsert, bucket, c)?;
            }
        }
        written.folded = chunk.len();
        written.finished = chunk.len() == fold.pending.len();
        if written.finished {
            conn.prepare_cached("DELETE FROM rate_journal WHERE id <= ?1")?
                .execute([fold.mark])?;
        }
        Ok(written)
    }

    /// After a batch that failed anywhere (its commit or before): the file's state is loaded
    /// again before the next batch.
    pub(super) fn forget(&mut self) {
        self.version = None;
    }

    /// Follows a batch whose commit succeeded, having written `written`.
    pub(super) fn committed(&mut self, batch: BatchCounts, written: Written) {
        for (bucket, windows) in batch.changed {
            let mine = self.committed.entry(bucket.clone()).or_default();
            for c in windows {
                self.latest_start = self.latest_start.max(c.start);
                set_window(mine, c);
            }
            self.unfolded.insert(bucket);
        }
        if let Some(id) = written.journal_id {
            self.journal_rows += 1;
            self.last_journal_id = id;
        }
        if let Some(started) = written.started {
            self.fold = Some(started);
        }
        let Some(fold) = &mut self.fold else { return };
        // Written with this batch's counts: the rows hold their latest.
        let done = fold.pending.len().saturating_sub(written.folded);
        for bucket in fold.pending.drain(done..) {
            self.unfolded.remove(&bucket);
        }
        if written.finished {
            self.journal_rows = self.journal_rows.saturating_sub(fold.rows);
            self.fold = None;
            self.folded_at = Instant::now();
            // Windows that ended count nothing: drop them (their rows stay, as good as
            // absent); a bucket is kept while any of its windows runs.
            let now = self.latest_start;
            self.committed
                .retain(|_, windows| windows.iter().any(|c| c.start + c.secs > now));
        }
    }
}

/// The windows a batch's committed works changed, over [`Limits`]' counts.
#[derive(Debug, Default)]
pub(super) struct BatchCounts {
    changed: HashMap<Box<str>, Windows>,
}

impl BatchCounts {
    /// Takes in the changes of a work that succeeded.
    pub(super) fn absorb(&mut self, work: WorkChanges) {
        for (bucket, count) in work.0 {
            set_window(self.changed.entry(bucket).or_default(), count);
        }
    }
}

/// The windows one work changed, once its view is dropped.
#[derive(Debug)]
pub(super) struct WorkChanges(Vec<(Box<str>, Count)>);

/// One work's view of the counts: its own changes, then its batch's, then the committed ones.
/// A work that fails is rolled back by dropping this.
#[derive(Debug)]
pub(super) struct WorkCounts<'a> {
    limits: &'a Limits,
    batch: &'a BatchCounts,
    /// Few: a mint changes two windows of one bucket.
    changed: Vec<(Box<str>, Count)>,
}

impl<'a> WorkCounts<'a> {
    pub(super) fn new(limits: &'a Limits, batch: &'a BatchCounts) -> Self {
        Self {
            limits,
            batch,
            changed: Vec::new(),
        }
    }

    pub(super) fn into_changes(self) -> WorkChanges {
        WorkChanges(self.changed)
    }

    fn latest(&self, bucket: &str, secs: i64) -> Option<Count> {
        self.changed
            .iter()
            .find(|(b, c)| &**b == bucket && c.secs == secs)
            .map(|(_, c)| *c)
            .or_else(|| window_of(self.batch.changed.get(bucket)?, secs))
            .or_else(|| window_of(self.limits.committed.get(bucket)?, secs))
    }

    /// Uses counted in `window`'s instance holding `now`.
    pub(super) fn used(&self, bucket: &str, window: RateWindow, now: i64) -> Result<u64> {
        let start = window.start(now)?;
        Ok(self
            .latest(bucket, window.seconds)
            .map_or(0, |c| c.used_since(start)))
    }

    /// Counts one use in `window`'s instance holding `now`.
    pub(super) fn count(&mut self, bucket: &str, window: RateWindow, now: i64) -> Result<()> {
        let start = window.start(now)?;
        let used = self
            .latest(bucket, window.seconds)
            .map_or(0, |c| c.used_since(start));
        let count = Count {
            secs: window.seconds,
            start,
            used: used + 1,
        };
        match self
            .changed
            .iter_mut()
            .find(|(b, c)| &**b == bucket && c.secs == count.secs)
        {
            Some((_, old)) => *old = count,
            None => self.changed.push((bucket.into(), count)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;
    use crate::sqlite::{SqliteStore, connect};

    fn data_version(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA data_version", [], |r| r.get(0))
            .unwrap()
    }

    /// The counts are reloaded when `data_version` moves: it must move for another
    /// connection's commit, and not for the checkpointer's copying (else every batch reloads).
    #[test]
    fn data_version_moves_for_other_commits_not_for_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let writer = connect(&path, true).unwrap();
        writer.execute_batch("CREATE TABLE t (x)").unwrap();
        let checkpointer = connect(&path, true).unwrap();
        let seen = data_version(&writer);
        // PASSIVE, as the checkpointer runs it, each time after the writer restarted the WAL.
        // (A TRUNCATE checkpoint does move it; nothing here runs one.)
        for round in 0..3 {
            writer.execute("INSERT INTO t VALUES (1)", []).unwrap();
            checkpointer
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .unwrap();
            assert_eq!(data_version(&writer), seen, "after checkpoint {round}");
        }
        checkpointer
            .execute("INSERT INTO t VALUES (2)", [])
            .unwrap();
        assert_ne!(
            data_version(&writer),
            seen,
            "after another connection's commit"
        );
    }

    /// Uses counted across many folds, each written in several chunks while other commits go
    /// on counting, with the store stopped and reopened every so often (mid-fold, too): every
    /// bucket's count is exact after each reopen.
    #[test]
    fn a_fold_in_chunks_loses_no_use_whenever_the_store_stops() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let hour = RateWindow {
            seconds: 3600,
            limit: 1_000_000,
        };
        let buckets = 3 * FOLD_CHUNK + 7;
        let mut expected = vec![0_u64; buckets];
        rt.block_on(async {
            let mut opened = SqliteStore::open(&url).await.unwrap();
            for commit in 0..1_200_usize {
                // Eight buckets a commit, walking through all of them.
                let keys: Vec<_> = (0..8).map(|k| (commit * 8 + k) % buckets).collect();
                for &k in &keys {
                    expected[k] += 1;
                }
                let named: Vec<_> = keys.iter().map(|k| (format!("k{k}"), hour)).collect();
                let store: &dyn Store = &opened;
                store
                    .transact(move |t| t.count_uses(&named, 60))
                    .await
                    .unwrap();
                if commit % 97 == 96 {
                    drop(opened);
                    opened = SqliteStore::open(&url).await.unwrap();
                    let store: &dyn Store = &opened;
                    let all: Vec<_> = (0..buckets).map(|k| (format!("k{k}"), hour)).collect();
                    let counts = store
                        .transact(move |t| t.window_counts(&all, 60))
                        .await
                        .unwrap();
                    assert_eq!(counts, expected, "after commit {commit}");
                }
            }
        });
    }

    /// Many commits later, the windows are in their rows and the journal holds only the
    /// commits since the last fold.
    #[test]
    fn the_journal_is_folded_into_the_rows_and_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let commits = 2 * FOLD_AFTER_ROWS + 10;
        rt.block_on(async {
            let opened = SqliteStore::open(&format!("sqlite://{}", path.display()))
                .await
                .unwrap();
            let store: &dyn Store = &opened;
            let minute = RateWindow {
                seconds: 60,
                limit: 10,
            };
            for i in 0..commits {
                store
                    .transact(move |t| t.count_use(&format!("k{i}"), minute, 60))
                    .await
                    .unwrap();
            }
        });
        let conn = connect(&path, false).unwrap();
        let count = |sql: &str| -> usize {
            conn.query_row(sql, [], |r| r.get::<_, i64>(0))
                .unwrap()
                .try_into()
                .unwrap()
        };
        let journal = count("SELECT count(*) FROM rate_journal");
        let rows = count("SELECT count(*) FROM rate_limits WHERE count = 1");
        assert!(journal < FOLD_AFTER_ROWS, "{journal} journal rows");
        assert!(
            rows >= commits - journal,
            "{rows} rows for {commits} commits"
        );
        assert_eq!(
            rows + journal,
            commits,
            "each use in a row or in the journal"
        );
    }
}
