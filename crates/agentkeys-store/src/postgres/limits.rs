//! Fixed-window rate-limit counters.

use super::col;
use super::tx::Db;
use crate::{RateWindow, Result, StoreError};

// Every bucket of a gate in one statement each (arrays of equal length, unnested): the writer
// holds the chain lock while it runs them, so round trips are what a mint pays for.
// One statement per bucket, not one per gate: measured on PostgreSQL 15, a statement that
// unnests arrays of buckets cost more server CPU than the two primary-key probes it replaced
// (1,800 against 2,300 mints/s with two instances, docs/performance.md).
const COUNT: &str =
    "SELECT count FROM rate_limits WHERE actor = $1 AND window_secs = $2 AND window_start = $3";
/// One row per (bucket, window length): a use in a new window restarts the count.
const BUMP: &str = "INSERT INTO rate_limits (actor, window_secs, window_start, count)
     VALUES ($1, $2, $3, 1)
     ON CONFLICT (actor, window_secs) DO UPDATE SET
       count = CASE WHEN rate_limits.window_start = excluded.window_start
                    THEN rate_limits.count + 1 ELSE 1 END,
       window_start = excluded.window_start";

/// Start of the window of `window` holding `now`.
fn window_start(window: RateWindow, now: i64) -> Result<i64> {
    now.checked_rem_euclid(window.seconds)
        .filter(|_| window.seconds > 0)
        .map(|offset| now - offset)
        .ok_or_else(|| {
            StoreError::Database(format!(
                "a rate window must be positive, not {} s",
                window.seconds
            ))
        })
}

pub(super) fn window_counts(
    db: &mut Db<'_, '_>,
    buckets: &[(String, RateWindow)],
    now: i64,
) -> Result<Vec<u64>> {
    let mut counts = Vec::with_capacity(buckets.len());
    for (bucket, window) in buckets {
        let start = window_start(*window, now)?;
        let used: i64 = match db.query_opt(COUNT, &[bucket, &window.seconds, &start])? {
            Some(row) => col(&row, 0)?,
            None => 0,
        };
        counts.push(u64::try_from(used).unwrap_or(0));
    }
    Ok(counts)
}

pub(super) fn count_uses(
    db: &mut Db<'_, '_>,
    buckets: &[(String, RateWindow)],
    now: i64,
) -> Result<()> {
    for (bucket, window) in buckets {
        let start = window_start(*window, now)?;
        db.execute(BUMP, &[bucket, &window.seconds, &start])?;
    }
    Ok(())
}
