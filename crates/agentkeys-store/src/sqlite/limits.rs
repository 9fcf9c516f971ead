//! Fixed-window rate-limit counters, one row per (bucket, window length).

use rusqlite::{Connection, OptionalExtension, params};

use crate::RateWindow;

/// The start of the window of `seconds` holding `now`; `None` for a window shorter than a
/// second, which has no start.
pub(super) fn window_start(now: i64, seconds: i64) -> Option<i64> {
    if seconds <= 0 {
        return None;
    }
    Some(now - now.rem_euclid(seconds))
}

/// Uses counted in the window starting at `start`; a row left from an earlier window counts 0.
pub(super) fn count(
    conn: &Connection,
    bucket: &str,
    window: RateWindow,
    start: i64,
) -> rusqlite::Result<u64> {
    let used = conn
        .prepare_cached(
            "SELECT count FROM rate_limits WHERE actor = ?1 AND window_secs = ?2 AND window_start = ?3",
        )?
        .query_row(params![bucket, window.seconds, start], |r| super::unsigned(r, 0))
        .optional()?;
    Ok(used.unwrap_or(0))
}

/// One more use in the window starting at `start`; a row from an earlier window restarts at 1.
pub(super) fn count_use(
    conn: &Connection,
    bucket: &str,
    window: RateWindow,
    start: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO rate_limits (actor, window_secs, window_start, count) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT (actor, window_secs) DO UPDATE SET
           count = CASE WHEN window_start = excluded.window_start THEN count + 1 ELSE 1 END,
           window_start = excluded.window_start",
    )?
    .execute(params![bucket, window.seconds, start])?;
    Ok(())
}
