//! The hash-chained audit log.

use tokio_postgres::Row;

use super::tx::{Db, Head};
use super::{col, seq_param};
use crate::audit::{GENESIS_HASH, canonical, chain_hash};
use crate::{AuditEvent, NewAuditEvent, Result, StoreError};

macro_rules! event_columns {
    () => {
        "seq, time, kind, actor, master, outcome, details, prev_hash, hash"
    };
}

/// Read under the writers' lock, so it is the head every instance appends to.
const HEAD: &str = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1";
const INSERT: &str = concat!(
    "INSERT INTO audit_events (",
    event_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
);
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

pub(super) fn head(db: &mut Db<'_, '_>) -> Result<Head> {
    Ok(match db.query_opt(HEAD, &[])? {
        Some(row) => Head {
            seq: u64::try_from(col::<i64>(&row, 0)?)
                .map_err(|_| StoreError::Database("a negative audit seq".into()))?,
            hash: col(&row, 1)?,
        },
        None => Head {
            seq: 0,
            hash: GENESIS_HASH.to_owned(),
        },
    })
}

pub(super) fn append(db: &mut Db<'_, '_>, head: &mut Head, event: &NewAuditEvent) -> Result<u64> {
    let seq = head.seq + 1;
    let hash = chain_hash(&head.hash, &canonical(seq, event.hashed()));
    // The JSON text as written: the hash covers its canonical form, which is recomputed from
    // this text on verification.
    let details = event.details.to_string();
    db.execute(
        INSERT,
        &[
            &seq_param(seq),
            &event.time,
            &event.kind.as_str(),
            &event.actor,
            &event.master,
            &event.outcome.as_str(),
            &details,
            &head.hash,
            &hash,
        ],
    )?;
    *head = Head { seq, hash };
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
    })
}
