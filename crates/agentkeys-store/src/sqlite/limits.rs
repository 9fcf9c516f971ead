//! Fixed-window rate-limit counters, one row per (bucket, window length).
//!
//! A gate's buckets usually share one key (a mint counts its actor per minute and per hour):
//! one statement reads every window of a key, and one counts a use in two windows of a key,
//! as the PostgreSQL backend does. Each statement saved is ≈ 1.5 µs on the single writer.

use rusqlite::{Connection, params};

use crate::RateWindow;

/// The start of the window of `seconds` holding `now`; `None` for a window shorter than a
/// second, which has no start.
pub(super) fn window_start(now: i64, seconds: i64) -> Option<i64> {
    if seconds <= 0 {
        return None;
    }
    Some(now - now.rem_euclid(seconds))
}

/// Every window row of `bucket`: (window length, window start, uses counted).
pub(super) fn windows(conn: &Connection, bucket: &str) -> rusqlite::Result<Vec<(i64, i64, u64)>> {
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

/// One more use in two windows of different lengths of one bucket.
pub(super) fn count_use_twice(
    conn: &Connection,
    bucket: &str,
    (first, first_start): (RateWindow, i64),
    (second, second_start): (RateWindow, i64),
) -> rusqlite::Result<()> {
    conn.prepare_cached(bump!("(?1, ?2, ?3, 1), (?1, ?4, ?5, 1)"))?
        .execute(params![
            bucket,
            first.seconds,
            first_start,
            second.seconds,
            second_start
        ])?;
    Ok(())
}
