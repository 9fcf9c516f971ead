//! Fixed-window rate-limit counters, one row per (bucket, window length).
//!
//! The SQL of `crate::limits`: one statement reads every window of a key, one counts a use in
//! two windows of a key (a mint's minute and hour). Each statement saved is ≈ 1.5 µs on the
//! single writer.

use rusqlite::{Connection, params};

use crate::RateWindow;
use crate::limits::WindowRow;

/// Every window row of `bucket`: (window length, window start, uses counted).
pub(super) fn windows(conn: &Connection, bucket: &str) -> rusqlite::Result<Vec<WindowRow>> {
    conn.prepare_cached(
        "SELECT window_secs, window_start, count FROM rate_limits WHERE actor = ?1",
    )?
    .query_map([bucket], |r| {
        Ok((r.get(0)?, r.get(1)?, super::unsigned(r, 2)?))
    })?
    .collect()
}

/// One row per (bucket, window length): a use in a new window restarts the count.
macro_rules! bump {
    ($values:literal) => {
        concat!(
            "INSERT INTO rate_limits (actor, window_secs, window_start, count) VALUES ",
            $values,
            " ON CONFLICT (actor, window_secs) DO UPDATE SET
               count = CASE WHEN window_start = excluded.window_start THEN count + 1 ELSE 1 END,
               window_start = excluded.window_start"
        )
    };
}

/// One more use in the window of `window` starting at `start`.
pub(super) fn count_use(
    conn: &Connection,
    bucket: &str,
    window: RateWindow,
    start: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(bump!("(?1, ?2, ?3, 1)"))?
        .execute(params![bucket, window.seconds, start])?;
    Ok(())
}

/// One more use in two windows of different lengths of one bucket: one statement updates both
/// rows, as they usually exist (≈ half the work of an upsert, which checks for the conflict and
/// then updates); the first use of a window inserts its row.
pub(super) fn count_use_twice(
    conn: &Connection,
    bucket: &str,
    (first, first_start): (RateWindow, i64),
    (second, second_start): (RateWindow, i64),
) -> rusqlite::Result<()> {
    let values = params![
        bucket,
        first.seconds,
        first_start,
        second.seconds,
        second_start
    ];
    // `+window_secs`: the rows are found by their bucket alone (both are adjacent in the key),
    // then filtered; an IN on the key column would build a temporary table per execution.
    let updated = conn
        .prepare_cached(
            "UPDATE rate_limits SET
               count = CASE WHEN window_start = (CASE window_secs WHEN ?2 THEN ?3 ELSE ?5 END)
                            THEN count + 1 ELSE 1 END,
               window_start = CASE window_secs WHEN ?2 THEN ?3 ELSE ?5 END
             WHERE actor = ?1 AND (+window_secs = ?2 OR +window_secs = ?4)",
        )?
        .execute(values)?;
    if updated < 2 {
        // A row the update found is counted; only a missing one is inserted.
        conn.prepare_cached(
            "INSERT OR IGNORE INTO rate_limits (actor, window_secs, window_start, count)
             VALUES (?1, ?2, ?3, 1), (?1, ?4, ?5, 1)",
        )?
        .execute(values)?;
    }
    Ok(())
}
