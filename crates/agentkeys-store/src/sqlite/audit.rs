//! The audit chain: its head, appends, and reads.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::seq_param;
use crate::audit::{GENESIS_HASH, HashFormat, canonical_text, chain_hash};
use crate::{AuditEvent, AuditListing, AuditQuery, NewAuditEvent};

/// The last event of the chain, as seen inside the current transaction.
#[derive(Debug, Clone)]
pub(super) struct Head {
    pub seq: i64,
    pub hash: String,
}

/// Must be read under the write lock (the writer's IMMEDIATE transaction): another process
/// sharing the file may have appended since the last batch.
pub(super) fn head(conn: &Connection) -> rusqlite::Result<Head> {
    let head = conn
        .prepare_cached("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| {
            Ok(Head {
                seq: r.get(0)?,
                hash: r.get(1)?,
            })
        })
        .optional()?;
    Ok(head.unwrap_or(Head {
        seq: 0,
        hash: GENESIS_HASH.to_owned(),
    }))
}

/// Appends `event` after `head` and advances it; the new seq. `known` saves the index entry's
/// write when this master's block is known to be recorded.
pub(super) fn append(
    conn: &Connection,
    head: &mut Head,
    known: &mut KnownBlocks,
    event: &NewAuditEvent,
) -> rusqlite::Result<u64> {
    let seq = head.seq + 1;
    let seq_u64 =
        u64::try_from(seq).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
    let format = HashFormat::CURRENT;
    let canonical = canonical_text(format, seq_u64, event.hashed());
    let hash = chain_hash(&head.hash, &canonical.text);
    // Usually inside the canonical text already: no second serialization.
    let details = canonical.details_json(&event.details);
    conn.prepare_cached(
        "INSERT INTO audit_events
             (seq, time, kind, actor, master, outcome, details, prev_hash, hash, hash_format)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        seq,
        event.time,
        event.kind.as_str(),
        event.actor,
        event.master,
        event.outcome.as_str(),
        details.as_ref(),
        head.hash,
        hash,
        i64::from(format)
    ])?;
    if let Some(master) = &event.master {
        index_master(conn, known, master, seq)?;
    }
    *head = Head { seq, hash };
    Ok(seq_u64)
}

/// An event's columns, of `audit_events` read as `e`.
const COLUMNS: &str = "e.seq, e.time, e.kind, e.actor, e.master, e.outcome, e.details, \
     e.prev_hash, e.hash, e.hash_format";

fn row(r: &Row<'_>) -> rusqlite::Result<AuditEvent> {
    let details: String = r.get(6)?;
    Ok(AuditEvent {
        seq: super::unsigned(r, 0)?,
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
        hash_format: HashFormat::from_stored(r.get(9)?).ok_or_else(|| {
            super::bad_value(
                9,
                rusqlite::types::Type::Integer,
                "unknown audit hash format".to_owned(),
            )
        })?,
    })
}

pub(super) fn events(
    conn: &Connection,
    after: u64,
    limit: u32,
) -> rusqlite::Result<Vec<AuditEvent>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit_events e WHERE e.seq > ?1 ORDER BY e.seq LIMIT ?2"
    ))?
    .query_map(params![seq_param(after), limit], row)?
    .collect()
}

/// The per-master index records, per master, the blocks of `1 << BLOCK_SHIFT` consecutive
/// seqs holding at least one of its events (`audit_master_blocks`; migration 0010 wrote blocks
/// of this size, so changing it needs a migration). A master's first event in a block writes an
/// entry; the rest find it there and write nothing, so a batch of mints by many masters no
/// longer dirties one index page per master. A listing scans the rows of each of the master's
/// blocks: at most 1,024 per block, and only a sparse master's listing pays that much.
const BLOCK_SHIFT: u32 = 10;

/// Records that `master` has an event at `seq`, if its block is not recorded yet.
fn index_master(
    conn: &Connection,
    known: &mut KnownBlocks,
    master: &str,
    seq: i64,
) -> rusqlite::Result<()> {
    let block = seq >> BLOCK_SHIFT;
    if known.block != block {
        known.block = block;
        known.masters.clear();
    }
    if known.masters.contains(master) {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT OR IGNORE INTO audit_master_blocks (master, block) VALUES (?1, ?2)",
    )?
    .execute(params![master, block])?;
    known.masters.insert(master.to_owned());
    Ok(())
}

/// The masters the writer knows have an entry for the current block: most of a block's events
/// are by masters already recorded in it, and each skips an `INSERT OR IGNORE` (≈ 4,000
/// instructions). Entries are never deleted, so another connection's writes cannot make this
/// wrong; a rolled-back work or a failed batch can undo an insert, and then it is forgotten.
#[derive(Debug, Default)]
pub(super) struct KnownBlocks {
    block: i64,
    masters: std::collections::HashSet<String>,
}

impl KnownBlocks {
    pub(super) fn forget(&mut self) {
        self.masters.clear();
    }
}

/// At most this many of a master's blocks are scanned for one page (≈ 262,000 rows). A master
/// whose events are one per block, listed with a filter that matches none of them, would
/// otherwise have one page read the whole log.
pub(super) const MAX_BLOCKS_PER_PAGE: i64 = 256;

/// A master's listing: its blocks from the cursor's on, up to the last block the page may scan
/// (`?8`), each scanned by seq. Each block's scan starts at the later of the block's start and
/// the cursor, as one bound: with the two as separate conditions SQLite may start every block's
/// scan at the cursor, reading the whole log from it for each block. The nested loop yields
/// rows in seq order, so LIMIT stops the walk early (no sort of the whole range).
pub(super) fn for_master_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM audit_master_blocks b
         JOIN audit_events e
           ON e.seq >= max(b.block << {BLOCK_SHIFT}, ?2 + 1)
          AND e.seq < (b.block + 1) << {BLOCK_SHIFT}
         WHERE b.master = ?1 AND b.block >= (?2 + 1) >> {BLOCK_SHIFT} AND b.block <= ?8
           AND e.master = ?1
           AND (?3 IS NULL OR e.kind = ?3)
           AND (?4 IS NULL OR e.actor = ?4)
           AND (?5 IS NULL OR e.time >= ?5)
           AND (?6 IS NULL OR e.time < ?6)
         ORDER BY b.block, e.seq LIMIT ?7"
    )
}

/// A page of `master`'s events, scanning at most `max_blocks` of its blocks.
pub(super) fn for_master(
    conn: &Connection,
    master: &str,
    query: &AuditQuery,
    max_blocks: i64,
) -> rusqlite::Result<AuditListing> {
    let after = seq_param(query.after_seq);
    // The master's blocks from the cursor's on, one more than the page may scan: whether the
    // page has to stop short.
    let blocks: Vec<i64> = conn
        .prepare_cached(&format!(
            "SELECT block FROM audit_master_blocks
             WHERE master = ?1 AND block >= (?2 + 1) >> {BLOCK_SHIFT} ORDER BY block LIMIT ?3"
        ))?
        .query_map(params![master, after, max_blocks + 1], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let max_blocks_len = usize::try_from(max_blocks).unwrap_or(usize::MAX);
    let Some(&last) = blocks[..blocks.len().min(max_blocks_len)].last() else {
        return Ok(AuditListing::default());
    };
    let cut = blocks.len() > max_blocks_len;
    let events: Vec<AuditEvent> = conn
        .prepare_cached(&for_master_sql())?
        .query_map(
            params![
                master,
                after,
                query.kind,
                query.actor,
                query.since,
                query.until,
                query.limit,
                last
            ],
            row,
        )?
        .collect::<rusqlite::Result<_>>()?;
    let full = events.len() >= usize::try_from(query.limit).unwrap_or(usize::MAX);
    // The last seq of the last block scanned: every block scanned holds seqs after the cursor,
    // so the cursor moves on.
    let searched_to = (cut && !full)
        .then(|| u64::try_from(((last + 1) << BLOCK_SHIFT) - 1).ok())
        .flatten();
    Ok(AuditListing {
        events,
        searched_to,
    })
}
