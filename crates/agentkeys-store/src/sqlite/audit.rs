//! The audit chain: its head, appends, and reads.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::seq_param;
use crate::audit::{GENESIS_HASH, HashFormat, canonical_text, chain_hash};
use crate::{AuditEvent, AuditQuery, NewAuditEvent};

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

/// Appends `event` after `head` and advances it; the new seq.
pub(super) fn append(
    conn: &Connection,
    head: &mut Head,
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
    *head = Head { seq, hash };
    Ok(seq_u64)
}

const COLUMNS: &str =
    "seq, time, kind, actor, master, outcome, details, prev_hash, hash, hash_format";

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
        "SELECT {COLUMNS} FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?
    .query_map(params![seq_param(after), limit], row)?
    .collect()
}

pub(super) fn for_master(
    conn: &Connection,
    master: &str,
    query: &AuditQuery,
) -> rusqlite::Result<Vec<AuditEvent>> {
    // Walks the (master, seq) index; the filters only discard rows of that range.
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit_events
         WHERE master = ?1 AND seq > ?2
           AND (?3 IS NULL OR kind = ?3)
           AND (?4 IS NULL OR actor = ?4)
           AND (?5 IS NULL OR time >= ?5)
           AND (?6 IS NULL OR time < ?6)
         ORDER BY seq LIMIT ?7"
    ))?
    .query_map(
        params![
            master,
            seq_param(query.after_seq),
            query.kind,
            query.actor,
            query.since,
            query.until,
            query.limit
        ],
        row,
    )?
    .collect()
}
