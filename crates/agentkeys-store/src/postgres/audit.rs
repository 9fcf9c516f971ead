//! The hash-chained audit log.

use tokio_postgres::Row;

use super::batch::{Batch, EventRow};
use super::{col, no_nul, seq_param};
use crate::audit::{HashFormat, canonical_text, chain_hash};
use crate::{AuditEvent, NewAuditEvent, Result, StoreError};

macro_rules! event_columns {
    () => {
        "seq, time, kind, actor, master, outcome, details, prev_hash, hash, hash_format"
    };
}

pub(super) const SELECT_AFTER: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
);
/// Walks the (master, seq) index; the filters only discard rows of that range.
pub(super) const SELECT_FOR_MASTER: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM audit_events
     WHERE master = $1 AND seq > $2
       AND ($3::text IS NULL OR kind = $3)
       AND ($4::text IS NULL OR actor = $4)
       AND ($5::bigint IS NULL OR time >= $5)
       AND ($6::bigint IS NULL OR time < $6)
     ORDER BY seq LIMIT $7"
);

/// Appends to the batch's chain head; the row is written with the batch.
pub(super) fn append(batch: &mut Batch<'_>, event: &NewAuditEvent) -> Result<u64> {
    // Refused here, for this work alone, rather than by the batch's INSERT (serde_json
    // escapes control characters, so the details text cannot hold one).
    for text in [&event.actor, &event.master].into_iter().flatten() {
        no_nul(text)?;
    }
    let seq = batch.head.seq + 1;
    let canonical = canonical_text(HashFormat::CURRENT, seq, event.hashed());
    let hash = chain_hash(&batch.head.hash, &canonical.text);
    let prev_hash = std::mem::replace(&mut batch.head.hash, hash.clone());
    batch.head.seq = seq;
    batch.events.push(EventRow {
        seq: seq_param(seq),
        time: event.time,
        kind: event.kind.as_str(),
        actor: event.actor.clone(),
        master: event.master.clone(),
        outcome: event.outcome.as_str(),
        // The JSON text as written: the hash covers its canonical form, which is recomputed
        // from this text on verification. Usually that form itself, already in the hashed text.
        details: canonical.details_json(&event.details).into_owned(),
        prev_hash,
        hash,
    });
    Ok(seq)
}

pub(super) fn event_row(row: &Row) -> Result<AuditEvent> {
    let details: String = col(row, 6)?;
    Ok(AuditEvent {
        seq: u64::try_from(col::<i64>(row, 0)?)
            .map_err(|_| StoreError::Database("a negative audit seq".into()))?,
        time: col(row, 1)?,
        kind: col(row, 2)?,
        actor: col(row, 3)?,
        master: col(row, 4)?,
        outcome: col(row, 5)?,
        // A row whose details no longer parse was tampered with; keep the raw text so
        // verification reports a hash mismatch rather than failing here.
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        prev_hash: col(row, 7)?,
        hash: col(row, 8)?,
        hash_format: HashFormat::from_stored(i64::from(col::<i16>(row, 9)?))
            .ok_or_else(|| StoreError::Database("an unknown audit hash format".into()))?,
    })
}
